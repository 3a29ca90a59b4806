/* Status events (DESIGN §3) and the rule that a task's status only moves forward. */
#ifndef MSG_STATUS_H
#define MSG_STATUS_H

#include <stddef.h>
#include <stdint.h>

#include "job.h"
#include "util.h"

#define STATUS_SCHEMA_VERSION 1
/* Longest Evolution message id and callback URL an event may carry. */
#define STATUS_KEY_MAX 128
#define STATUS_URL_MAX 2048

enum task_status {
  TASK_PENDING,
  TASK_STARTED,
  TASK_RETRY,
  TASK_SUCCESS,
  TASK_FAILURE,
  TASK_CANCELLED, /* DELETE /tasks/{id} before sending */
  TASK_SCHEDULED, /* accepted with a send_at in the future: held until then */
  TASK_RECEIPT    /* not a status: a delivery receipt (Evolution API webhook) for the task */
};

/* How far a sent message got, from Evolution API webhooks (messages.update); it only moves
 * up, except DELIVERY_ERROR, which is recorded beside the state reached. */
enum delivery_state {
  DELIVERY_NONE,
  DELIVERY_SENT,       /* Evolution API accepted it (SUCCESS, or a send.message webhook) */
  DELIVERY_SERVER_ACK, /* WhatsApp's server has it */
  DELIVERY_DELIVERED,  /* on the recipient's phone (DELIVERY_ACK) */
  DELIVERY_READ,       /* read (READ, or PLAYED for media) */
  DELIVERY_ERROR       /* WhatsApp reported an error */
};
#define DELIVERY_STATES 6

/* "sent", "server_ack", "delivered", "read", "error" ("" for DELIVERY_NONE). */
const char *delivery_name(enum delivery_state s);

/* Parses a delivery state name; returns 0 and writes *out, or -1. */
int delivery_from_name(const char *name, enum delivery_state *out);

/* One state change of a task. Strings are owned by the event (free with status_event_clear);
 * optional ones are NULL when absent, optional times 0. */
struct status_event {
  char task_id[UTIL_UUID_LEN];
  enum task_status status;
  int attempt;            /* 0 for PENDING, 1 for the first delivery attempt, ... */
  int64_t at_ms;          /* when the change happened */
  int64_t created_at_ms;  /* when the api accepted the job, 0 if unknown */
  char *phone;            /* canonical phone */
  char *instance;         /* PENDING/SCHEDULED: the Evolution instance (consumers open its
                             rate-limited lane from it) */
  char *evolution_key;    /* SUCCESS: Evolution API's message id (key.id) */
  int reconciled;         /* SUCCESS: an in-doubt send found in Evolution's findMessages, not
                             sent again (DESIGN §4) */
  char *error_code;       /* RETRY/FAILURE: machine code, e.g. "evolution_http_500" */
  char *error_message;    /* RETRY/FAILURE: human sentence */
  int64_t next_retry_at_ms; /* RETRY */
  char *idempotency_key;
  uint64_t request_hash;  /* PENDING with an idempotency key: job_request_hash; 0 when absent */
  int generation;         /* 0, then +1 each time the parked job is redriven */
  char *callback_url;     /* PENDING/SCHEDULED: where status callbacks go, or NULL */
  char *tenant;           /* PENDING/SCHEDULED: the tenant of the key that sent it, or NULL */
  char *request_id;       /* any status: the X-Request-Id of the request that made the task */
  enum delivery_state delivery; /* RECEIPT: the state the receipt reports; evolution_key says
                                   which message, task_id is "" when the api could not tell */
};

/* Ranks within one generation stay below this; a task's full rank is generation * 2^40 plus
 * its rank, so a redriven task starts over as PENDING above its old FAILURE. */
#define STATUS_RANK_FINAL ((INT64_C(1) << 40) - 1)
#define STATUS_MAX_GENERATION 1000000

/* The status name used on the wire and in task documents ("PENDING", ...). */
const char *status_name(enum task_status s);

/* Parses a status name; returns 0 and writes *out, or -1. */
int status_from_name(const char *name, enum task_status *out);

/* Where an event sits in a task's life: later events have larger ranks (RECEIPT: -1, it is
 * no status). SUCCESS and FAILURE
 * rank above everything, so a late or duplicate event never moves a finished task back.
 * CANCELLED ranks just below them: if a send raced the cancel, what really happened wins. */
int64_t status_rank(enum task_status s, int attempt);

/* The rank across redrives: generation * 2^40 + status_rank. */
int64_t status_rank_in(enum task_status s, int attempt, int generation);

/* Fills *ev with the PENDING (or, with a future send_at, SCHEDULED) event of a job just
 * accepted. The strings are borrowed from the
 * job: do not status_event_clear it. */
void status_pending_event(const struct job *job, struct status_event *ev);

/* Encodes an event as JSON. Returns a malloc'd string (caller frees) and its length, or NULL. */
char *status_event_encode(const struct status_event *ev, size_t *len);

/* Decodes an event. On success returns 0 and fills *ev (caller calls status_event_clear);
 * on failure returns -1, leaves *ev empty and writes a reason into err[errlen]. */
int status_event_decode(const char *body, size_t len, struct status_event *ev, char *err,
                        size_t errlen);

/* Called for each event of a status message; the event is borrowed for the call. */
typedef void (*status_event_fn)(const struct status_event *ev, void *ctx);

/* Decodes a status message: one event, or a batch {"v": 1, "events": [event, ...]} that a
 * publisher sends to put many events in one stream message. Calls fn for each valid event.
 * Returns 0, or -1 when the message or any event in it was bad (reason in err; the valid
 * events of a batch are still delivered). */
int status_message_decode(const char *body, size_t len, status_event_fn fn, void *ctx,
                          char *err, size_t errlen);

/* Joins n encoded events (status_event_encode's output) into one batch message. Returns a
 * malloc'd string (caller frees) and its length, or NULL when out of memory. */
char *status_batch_join(char *const *bodies, const size_t *lens, size_t n, size_t *len);

/* Status callbacks: the body POSTed to a task's callback_url for `ev` (RETRY, SUCCESS, FAILURE
 * or RECEIPT), and its event id, the same for every repeat of the same change, so receivers
 * can drop duplicates: "<task_id>.<STATUS>.<attempt>.<generation>", or for a receipt
 * "<task_id>.delivery.<state>". The body:
 *   {"event_id", "type": "task.status" | "task.delivery", "task_id", "status"?, "attempt"?,
 *    "at", "result"?: {"evolution_key"}, "error"?: {"code", "message"}, "next_retry_at"?,
 *    "delivery"?: "server_ack" | "delivered" | "read" | "error", "evolution_key"?}
 * Returns a malloc'd body (caller frees) and its length, or NULL when out of memory. */
#define STATUS_EVENT_ID_LEN (UTIL_UUID_LEN + 48)
char *status_callback_body(const struct status_event *ev, char id[STATUS_EVENT_ID_LEN],
                           size_t *len);

/* Frees the strings of an event and zeroes it; safe on a zeroed event. */
void status_event_clear(struct status_event *ev);

#endif
