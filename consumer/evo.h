/* Evolution API client: sends texts through sendText with libcurl's multi interface, so many
 * requests are in flight from one thread, and classifies every answer (research §4.2). */
#ifndef MSG_EVO_H
#define MSG_EVO_H

#include <stddef.h>

#include "cfg.h"
#include "job.h"

enum evo_class {
  EVO_SUCCESS,      /* accepted; key_id holds the message id */
  EVO_TRANSIENT,    /* not sent; worth retrying later */
  EVO_PERMANENT,    /* refused for good; park the job */
  EVO_ALREADY_SENT  /* Evolution failed after sending: treat as sent, never resend */
};

/* What became of one send. */
struct evo_outcome {
  enum evo_class cls;
  long http_status;     /* 0 when no HTTP answer came */
  int config_fault;     /* 401/403: our API key or instance is wrong; logged loudly */
  char key_id[101];     /* SUCCESS: Evolution's key.id (at most 100 characters) */
  char code[48];        /* machine code, e.g. "evolution_http_500", "number_not_on_whatsapp" */
  char message[256];    /* human sentence, from Evolution's body where it had one */
};

/* Transport failures before any HTTP answer, as evo_classify takes them. */
enum evo_transport { EVO_NET_OK, EVO_NET_TIMEOUT, EVO_NET_CONNECT, EVO_NET_OTHER };

/* Classifies one answer: the HTTP status (0 with a transport failure) and the body. Pure
 * function; the table of research §4.2 in code. */
void evo_classify(enum evo_transport net, long http_status, const char *body, size_t len,
                  struct evo_outcome *out);

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

/* Aborts every transfer in flight, calling abort_fn(owner, ctx) for each. */
void evo_abort_all(struct evo_client *client, void (*abort_fn)(void *owner, void *ctx),
                   void *ctx);

/* Transfers in flight. */
size_t evo_in_flight(const struct evo_client *client);

#endif
