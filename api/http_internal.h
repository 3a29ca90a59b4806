/* Cross-file internals of msg-api's HTTP layer: the server state every part shares, and the
 * functions one part offers the others (http.c routes; reply.c frames requests and answers;
 * auth.c, idempotency.c, handlers.c and metrics_render.c do what their names say). */
#ifndef MSG_HTTP_INTERNAL_H
#define MSG_HTTP_INTERNAL_H

#include <civetweb.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "in_doubt.h"
#include "job.h"
#include "metrics.h"
#include "routes.h"
#include "snapshots.h"
#include "trace.h"
#include "task_cache.h"

/* How long a request waits for the broker's confirm before answering 503. */
#define CONFIRM_WAIT_MS 5000
#define RETRY_AFTER_S "1"

/* Idempotency keys whose first request is still waiting for its confirm. A repeat that
 * arrives meanwhile waits for it instead of publishing a second job. */
struct idem_claim {
  struct idem_claim *next;
  char key[TASK_CACHE_IDEM_MAX]; /* scoped by tenant (task_cache_idem_key) */
};

/* Per-tenant counters (/metrics), one slot per tenant name ever configured. */
#define TENANT_STATS_MAX 1024
struct tenant_stats {
  char name[JOB_TENANT_MAX + 1];
  atomic_ullong requests; /* requests its keys made */
  atomic_ullong accepted; /* messages accepted (202, or an accepted batch item) */
  atomic_ullong refused;  /* refused at the tenant's bounds: 403, or another tenant's task */
};

/* One API key and what it may do (auth.c). Immutable once published. */
struct api_key {
  char *key;
  size_t len;
  char tenant[JOB_TENANT_MAX + 1]; /* "" = no tenant (api.api_keys, or no keys at all) */
  unsigned scopes;                 /* CFG_SCOPE_* */
  int all_instances;
  char **instances;
  size_t n_instances;
  struct tenant_stats *stats;      /* NULL: not counted */
};
struct keyset;

/* Statuses counted by their own label value (metrics_render.c), plus one slot for "other". */
#define N_COUNTED_STATUSES 14
#define N_STATUSES (N_COUNTED_STATUSES + 1)
/* The route slot of requests that matched no route. */
#define ROUTE_UNMATCHED ROUTE_COUNT

enum publish_outcome { PUBLISH_ACK, PUBLISH_REJECTED, PUBLISH_TIMEOUT, PUBLISH_UNAVAILABLE,
                       PUBLISH_LOST, PUBLISH_OUTCOMES };
/* The metric label of each publisher result (metrics_render.c). */
extern const enum publish_outcome PUBLISH_OUTCOME_OF[];

/* Requests whose job may or may not be queued (see in_doubt.h), remembered by key. */
#define IN_DOUBT_MAX 4096
#define OUTCOME_UNKNOWN_MESSAGE \
  "the message broker did not confirm the message in time: it may still be delivered. Look " \
  "the task up, or repeat the request with the same Idempotency-Key, which never sends it twice"

struct http_metrics {
  atomic_ullong requests[ROUTE_COUNT + 1][N_STATUSES];
  struct metrics_hist duration[ROUTE_COUNT + 1];
  atomic_ullong publishes[PUBLISH_OUTCOMES];
  struct metrics_hist confirm; /* hand-over to confirm, as the HTTP worker waits for it */
  atomic_ullong replays;       /* Idempotency-Key repeats answered without publishing */
  atomic_llong receipts;         /* delivery receipts recorded from webhooks */
  atomic_llong webhooks_refused; /* webhooks with a wrong or missing secret */
};

/* What msg-api knows of the request being answered, for its answer (X-Request-Id), the job it
 * makes (request id and trace context) and its access log line. Lives on route()'s stack and
 * is reached from the worker thread answering it while the request runs. */
struct http_request_ctx {
  char request_id[TRACE_REQUEST_ID_MAX + 1];
  char traceparent[TRACE_PARENT_LEN];
  char tenant[JOB_TENANT_MAX + 1]; /* of the key that was let in; never the key */
  char task_id[UTIL_UUID_LEN];     /* the task the request made or named, or "" */
  size_t bytes;                    /* answer bytes written */
};

/* The request context of conn, or NULL outside route(). */
struct http_request_ctx *http_request_ctx(struct mg_connection *conn);

struct http_server {
  struct http_deps deps;
  struct http_metrics metrics;
  struct mg_context *ctx;
  int64_t started_ms;
  atomic_int draining;
  atomic_llong last_request_ms; /* monotonic; when the latest request started */
  atomic_int in_flight;         /* requests being handled now */
  pthread_mutex_t idem_lock; /* guards claims */
  pthread_cond_t idem_done;
  struct idem_claim *claims;
  struct in_doubt *in_doubt;
  _Atomic(struct keyset *) keys; /* the keys now; replaced whole by http_keys_load */
  pthread_mutex_t keys_lock;     /* serialises http_keys_load */
  struct tenant_stats tenant_stats[TENANT_STATS_MAX];
  atomic_size_t n_tenant_stats;
};

/* reply.c: framing and answers. Every answer is one write with Content-Length. */

/* Set once a stop signal came: answers then close their connections. */
void http_set_shutting_down(void);
/* The flag http_set_shutting_down sets, for work that must end when the server stops. */
const atomic_int *http_stop_flag(void);
/* The limits of http_check_framing and http_read_json (api.max_header_size, api.body_timeout);
 * called once before the server starts. */
void http_framing_setup(size_t max_header_size, uint64_t body_timeout_ms);
/* Refuses, with the connection closed, a request CivetWeb may have framed wrongly: 64 header
 * lines or more (it drops those past the 64th unseen), headers over api.max_header_size (431),
 * Content-Length not a plain number or given twice with different values, Transfer-Encoding
 * with Content-Length or twice (400). Returns 0 when the request may go on, else the status
 * already answered. */
int http_check_framing(struct mg_connection *conn);
void http_send_json(struct mg_connection *conn, int status, const char *body,
                    const char *extra_name, const char *extra_value);
int http_send_static(struct mg_connection *conn, const char *type, const char *body, size_t len);
/* Sends `doc` (stolen; NULL answers 500) with one optional extra header. Returns status. */
int http_reply(struct mg_connection *conn, int status, json_t *doc, const char *extra_name,
               const char *extra_value);
/* The error shape {"success": false, "error": {code, message, field}}. Returns status. */
int http_reply_error(struct mg_connection *conn, int status, const char *code,
                     const char *message, const char *field, const char *extra_name,
                     const char *extra_value);
/* Reads a JSON request body of at most `max` bytes. Returns 0 with the body (caller frees), or
 * the status of the error answer it already sent (415 not JSON, 413 too large, 400, 503). */
int http_read_json(struct mg_connection *conn, size_t max, char **body, size_t *len);

/* auth.c */
/* Builds the keys of cfg (api.api_keys, api.keys) and makes them the ones in force; the cfg
 * is not kept. Returns 0, or -1 when out of memory (the keys in force stay). */
int http_keys_load(struct http_server *srv, const struct cfg *cfg);
void http_keys_free(struct http_server *srv);
/* The key of the request ("Authorization: Bearer <key>" or "X-API-Key: <key>"), or a key with
 * every scope when none is configured; NULL when refused. Borrowed until the server stops. */
const struct api_key *http_authenticate(struct mg_connection *conn, struct http_server *srv);
/* 1 when `who` may see a task of `tenant` (its own, or any with the admin scope). */
int http_may_see(const struct api_key *who, const char *tenant);
/* 1 when `who` may send through Evolution instance `instance`. */
int http_may_use(const struct api_key *who, const char *instance);
/* Counts messages accepted and requests refused at the tenant's bounds. */
void http_count_tenant(const struct api_key *who, int accepted, int refused);
/* 1 when a webhook carries the configured secret or a valid JWT. */
int http_webhook_authorized(struct mg_connection *conn, const struct cfg *cfg);

/* idempotency.c: see each function. */
int idem_claim(struct http_server *srv, struct idem_claim *claim, const char *key);
void idem_release(struct http_server *srv, struct idem_claim *claim);
int idem_reply_replayed(struct mg_connection *conn, struct http_server *srv,
                        const char *task_id, enum task_status status);
/* `scoped` is the request's Idempotency-Key within its tenant (task_cache_idem_key). */
int idem_replay(struct mg_connection *conn, struct http_server *srv, const struct job *job,
                const char *scoped);
int idem_reply_outcome_unknown(struct mg_connection *conn, const char *task_id);
int idem_repeat_in_doubt(struct mg_connection *conn, struct http_server *srv, struct job *job,
                         const char *scoped);
void idem_on_late_outcome(const char *task_id, enum pub_result result, void *ctx);

/* handlers.c: one function per endpoint; each answers and returns the status. */
int http_is_ready(struct http_server *srv);
int http_handle_post_message(struct mg_connection *conn, struct http_server *srv,
                          const struct api_key *who);
int http_handle_post_batch(struct mg_connection *conn, struct http_server *srv,
                          const struct api_key *who);
int http_handle_dead_letters(struct mg_connection *conn, struct http_server *srv);
int http_handle_workers(struct mg_connection *conn, struct http_server *srv);
int http_handle_search_tasks(struct mg_connection *conn, struct http_server *srv,
                             const struct api_key *who);
int http_handle_stats(struct mg_connection *conn, struct http_server *srv,
                      const struct api_key *who);
int http_handle_redrive(struct mg_connection *conn, struct http_server *srv);
int http_handle_get_task(struct mg_connection *conn, struct http_server *srv,
                         const struct api_key *who, const char *id);
int http_handle_cancel_task(struct mg_connection *conn, struct http_server *srv,
                            const struct api_key *who, const char *id);
int http_handle_webhook(struct mg_connection *conn, struct http_server *srv);
int http_handle_health(struct mg_connection *conn, struct http_server *srv);

/* metrics_render.c */
int http_handle_metrics(struct mg_connection *conn, struct http_server *srv);
/* The slot of `status` in http_metrics.requests. */
size_t http_status_slot(int status);

#endif
