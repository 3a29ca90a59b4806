/* Evolution API client: sends texts through sendText with libcurl's multi interface, so many
 * requests are in flight from one thread, and classifies every answer (research §4.2). It also
 * asks findMessages whether an in-doubt send went out (research §5) and connectionState whether
 * a server or instance answers again (the hold-off probes). */
#ifndef MSG_EVO_H
#define MSG_EVO_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "job.h"

enum evo_class {
  EVO_SUCCESS,      /* accepted; key_id holds the message id */
  EVO_TRANSIENT,    /* not sent; worth retrying later */
  EVO_PERMANENT,    /* refused for good; park the job */
  EVO_ALREADY_SENT  /* Evolution failed after sending: treat as sent, never resend */
};

/* Whose fault a transient failure is (hold-off, DESIGN §4): the message's own (retry it), its
 * instance's (a closed WhatsApp session: hold that instance's jobs), or the server's (refused,
 * reset, timed out, 5xx: hold every job). */
enum evo_scope { EVO_SCOPE_MESSAGE, EVO_SCOPE_INSTANCE, EVO_SCOPE_SERVER };

/* What a request was for. */
enum evo_request {
  EVO_REQ_SEND,  /* sendText */
  EVO_REQ_FIND,  /* findMessages: did this job's text go out already? */
  EVO_REQ_STATE  /* connectionState: does the server, or the instance, answer? */
};

/* What became of one request. */
struct evo_outcome {
  enum evo_request request;
  enum evo_class cls;   /* FIND, STATE: EVO_SUCCESS when Evolution answered as documented */
  enum evo_scope scope; /* EVO_TRANSIENT: whose fault */
  int ambiguous;        /* the request may have been carried out although no answer said so
                           (a timeout or reset after it was sent, a gateway timeout): in doubt */
  int found;            /* FIND: a fromMe message with the job's text; key_id is its key.id */
  char state[16];       /* STATE: the instance's state ("open", "close", ...; "" if none) */
  long http_status;     /* 0 when no HTTP answer came */
  int config_fault;     /* 401/403: our API key or instance is wrong; logged loudly */
  char key_id[101];     /* SUCCESS: Evolution's key.id (at most 100 characters) */
  char code[48];        /* machine code, e.g. "evolution_http_500", "number_not_on_whatsapp" */
  char message[256];    /* human sentence, from Evolution's body where it had one */
};

/* Transport failures before any HTTP answer, as evo_classify takes them. */
enum evo_transport { EVO_NET_OK, EVO_NET_TIMEOUT, EVO_NET_CONNECT, EVO_NET_OTHER };

/* Classifies one sendText answer: the HTTP status (0 with a transport failure) and the body.
 * `sent` says whether the request was written out, on any connection (only then can a
 * transport failure be ambiguous). Pure function; the table of research §4.2 in code. */
void evo_classify(enum evo_transport net, long http_status, const char *body, size_t len,
                  int sent, struct evo_outcome *out);

/* Reads one findMessages answer page (research §5): sets out->found and out->key_id when a
 * record is a fromMe message whose text is `text`; returns the number of pages the answer says
 * there are (at least 1), or -1 when the body is not a findMessages answer. Pure function. */
int evo_find_parse(const char *body, size_t len, const char *text, struct evo_outcome *out);

/* Turns the digits of a number into those of the JID Evolution stores for it (research §2.3,
 * createJid): 13-digit Mexican and Argentinian numbers lose their 3rd digit, Brazilian mobiles
 * of area code 31 and above their 9. In place. */
void evo_jid_digits(char *digits);

/* Builds the findMessages request body: fromMe messages to `phone` (canonical form) between
 * the two times (ms since the epoch), page `page` of `per_page`. Malloc'd; NULL when out of
 * memory. */
char *evo_find_body(const char *phone, int64_t from_ms, int64_t to_ms, int page, int per_page);

/* Builds the sendText request body for `job` in the shape of `version`. Returns a malloc'd
 * string (caller frees) or NULL when out of memory. */
char *evo_request_body(const struct job *job, enum cfg_api_version version);

struct evo_client;

/* Called for each finished send with the owner given to evo_send. */
typedef void (*evo_done_fn)(void *owner, const struct evo_outcome *outcome, void *ctx);

/* Creates a client for cfg->evolution (borrowed; must outlive the client). NULL when out of
 * memory. Call curl_global_init once in main before. */
struct evo_client *evo_client_new(const struct cfg *cfg, evo_done_fn done, void *ctx);

/* Aborts every transfer (without calling done) and frees the client. NULL is a no-op. */
void evo_client_free(struct evo_client *client);

/* Starts sending `job` (borrowed only for the call); `done` reports the outcome later from
 * evo_run. Returns 0, or -1 when the transfer could not be started (out of memory). */
int evo_send(struct evo_client *client, const struct job *job, void *owner);

/* Waits up to timeout_ms for network activity on the transfers or on the extra descriptors
 * (POLLIN), drives the transfers, and calls `done` for each one that finished. */
void evo_run(struct evo_client *client, const int *extra_fds, int n_extra, int timeout_ms);

/* Asks findMessages whether `job` (borrowed for the call) went out between from_ms and to_ms;
 * `done` reports an EVO_REQ_FIND outcome (the pages are read here, up to a bound). Returns 0
 * or -1. */
int evo_find(struct evo_client *client, const struct job *job, int64_t from_ms, int64_t to_ms,
             void *owner);

/* Asks GET /instance/connectionState/{instance}; `done` reports an EVO_REQ_STATE outcome: cls
 * EVO_SUCCESS with state set when Evolution answered 200, else the failure classified like a
 * send's (any HTTP answer means the server is up). Returns 0 or -1. */
int evo_connection_state(struct evo_client *client, const char *instance, void *owner);

/* Aborts every transfer in flight, calling abort_fn(owner, ctx) for each. */
void evo_abort_all(struct evo_client *client, void (*abort_fn)(void *owner, void *ctx),
                   void *ctx);

/* Transfers in flight. */
size_t evo_in_flight(const struct evo_client *client);

#endif
