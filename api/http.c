/* The api's HTTP layer on CivetWeb: routing, the JSON error shape, and the endpoints of
 * DESIGN §2. */
#include "http.h"

#include <civetweb.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "callback_url.h"
#include "deadletters.h"
#include "in_doubt.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "routes.h"
#include "sign.h"
#include "webhook.h"
#include "util.h"

/* Compiled in from api/static/ by cmake/embed.cmake. */
extern const char static_openapi_json[], static_docs_html[];
extern const size_t static_openapi_json_len, static_docs_html_len;

/* How long a request waits for the broker's confirm before answering 503. */
#define CONFIRM_WAIT_MS 5000
#define RETRY_AFTER_S "1"

/* Idempotency keys whose first request is still waiting for its confirm. A repeat that
 * arrives meanwhile waits for it instead of publishing a second job. */
struct idem_claim {
  struct idem_claim *next;
  char key[JOB_IDEMPOTENCY_KEY_MAX + 1];
};

/* Statuses counted by their own label value; anything else counts as "other". */
static const int COUNTED_STATUSES[] = {200, 202, 400, 401, 404, 405, 409, 413, 415, 422, 500, 503,
                                       504};
#define N_STATUSES (sizeof COUNTED_STATUSES / sizeof COUNTED_STATUSES[0] + 1)
/* The route slot of requests that matched no route. */
#define ROUTE_UNMATCHED ROUTE_COUNT

enum publish_outcome { PUBLISH_ACK, PUBLISH_REJECTED, PUBLISH_TIMEOUT, PUBLISH_UNAVAILABLE,
                       PUBLISH_LOST, PUBLISH_OUTCOMES };
static const char *const PUBLISH_OUTCOME_NAMES[] = {"ack", "rejected", "timeout", "unavailable",
                                                    "lost"};
/* The metric label of each publisher result. */
static const enum publish_outcome OUTCOME[] = {
  [PUB_OK] = PUBLISH_ACK, [PUB_UNAVAILABLE] = PUBLISH_UNAVAILABLE,
  [PUB_TIMEOUT] = PUBLISH_TIMEOUT, [PUB_REJECTED] = PUBLISH_REJECTED,
  [PUB_UNKNOWN] = PUBLISH_LOST};

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

struct http_server {
  struct http_deps deps;
  struct http_metrics metrics;
  struct mg_context *ctx;
  int64_t started_ms;
  atomic_int draining;
  atomic_llong last_request_ms; /* monotonic; when the latest request started */
  pthread_mutex_t idem_lock; /* guards claims */
  pthread_cond_t idem_done;
  struct idem_claim *claims;
  struct in_doubt *in_doubt;
};

/* Whether CivetWeb keeps the connection open after this answer (its should_keep_alive(), less
 * the server-side reasons this file avoids): HTTP/1.1 unless the client says close, HTTP/1.0
 * only when it asks for keep-alive. A 413 is answered without reading the body, so that
 * connection always closes. */
/* Set once a stop signal came: answers then close their connections, so clients reconnect to
 * another replica instead of keeping this one busy. One server per process. */
static atomic_int shutting_down;

static int keeps_alive(const struct mg_connection *conn, int status)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *c = mg_get_header(conn, "Connection");
  if(status == 413 || atomic_load(&shutting_down))
    return 0;
  if(c)
    return strcasecmp(c, "close") && (strcmp(ri->http_version, "1.0") || !strcasecmp(c, "keep-alive"));
  return strcmp(ri->http_version, "1.0") != 0;
}

/* Sends status line, headers and body in one write: CivetWeb's mg_response_header_* functions
 * make one send() per header line, which cost a large share of the accept path's CPU. */
static void send_response(struct mg_connection *conn, int status, const char *type,
                          const char *cache, const char *body, size_t len,
                          const char *extra_name, const char *extra_value)
{
  int head_only = !strcmp(mg_get_request_info(conn)->request_method, "HEAD");
  char head[512];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: %s\r\n%s%s%s%sConnection: %s\r\n\r\n",
                   status, mg_get_response_code_text(conn, status), type, len, cache,
                   extra_name ? extra_name : "", extra_name ? ": " : "",
                   extra_name ? extra_value : "", extra_name ? "\r\n" : "",
                   keeps_alive(conn, status) ? "keep-alive" : "close");
  char *msg;
  if(n < 0 || (size_t)n >= sizeof head)
    return;
  if(head_only || !len) {
    mg_write(conn, head, (size_t)n);
    return;
  }
  msg = malloc((size_t)n + len);
  if(!msg) {
    /* Out of memory: two writes still answer correctly. */
    mg_write(conn, head, (size_t)n);
    mg_write(conn, body, len);
    return;
  }
  memcpy(msg, head, (size_t)n);
  memcpy(msg + n, body, len);
  mg_write(conn, msg, (size_t)n + len);
  free(msg);
}

static void send_json(struct mg_connection *conn, int status, const char *body,
                      const char *extra_name, const char *extra_value)
{
  send_response(conn, status, "application/json; charset=utf-8", "no-store", body,
                strlen(body), extra_name, extra_value);
}

static int send_static(struct mg_connection *conn, const char *type, const char *body,
                       size_t len)
{
  send_response(conn, 200, type, "no-cache", body, len, NULL, NULL);
  return 200;
}

/* Sends a json_t (stolen) as the body. */
static int reply(struct mg_connection *conn, int status, json_t *doc, const char *extra_name,
                 const char *extra_value)
{
  char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  if(!body) {
    send_json(conn, 500,
              "{\"success\":false,\"error\":{\"code\":\"internal\",\"message\":\"out of "
              "memory\"}}",
              NULL, NULL);
    return 500;
  }
  send_json(conn, status, body, extra_name, extra_value);
  free(body);
  return status;
}

static int reply_error(struct mg_connection *conn, int status, const char *code,
                       const char *message, const char *field, const char *extra_name,
                       const char *extra_value)
{
  json_t *err = json_pack("{s:s, s:s}", "code", code, "message", message);
  if(err && field && *field)
    json_object_set_new(err, "field", json_string(field));
  return reply(conn, status, err ? json_pack("{s:b, s:o}", "success", 0, "error", err) : NULL,
               extra_name, extra_value);
}

static int is_json_type(const char *ct)
{
  size_t n = strlen("application/json");
  if(!ct)
    return 0;
  while(*ct == ' ')
    ct++;
  return !strncasecmp(ct, "application/json", n) &&
         (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* Reads the whole body into a malloc'd buffer, refusing more than max bytes without reading it
 * all. Returns 0 and the buffer, or an HTTP status (413, 400) for the caller to answer. */
static int read_body(struct mg_connection *conn, size_t max, char **out, size_t *out_len)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *expect = mg_get_header(conn, "Expect");
  size_t cap, len = 0;
  char *buf;
  int n = 0;
  if(ri->content_length > 0 && (unsigned long long)ri->content_length > max)
    return 413;
  /* CivetWeb sends no automatic 100 Continue to request handlers: a client that asked for it
   * would wait about a second before sending the body. */
  if(expect && !strcasecmp(expect, "100-continue"))
    mg_printf(conn, "HTTP/1.1 100 Continue\r\n\r\n");
  cap = ri->content_length >= 0 ? (size_t)ri->content_length + 1 : max + 1;
  buf = malloc(cap);
  if(!buf)
    return 503;
  while(len < cap && (n = mg_read(conn, buf + len, cap - len)) > 0)
    len += (size_t)n;
  if(n < 0) {
    free(buf);
    return 400;
  }
  if(len > max) {
    free(buf);
    return 413;
  }
  *out = buf;
  *out_len = len;
  return 0;
}

/* Reads a JSON request body of at most `max` bytes. Returns 0 with the body (caller frees), or
 * the status of the error answer it already sent (415 not JSON, 413 too large, 400, 503). */
static int read_json_request(struct mg_connection *conn, size_t max, char **body, size_t *len)
{
  int rc;
  if(!is_json_type(mg_get_header(conn, "Content-Type")))
    return reply_error(conn, 415, "unsupported_media_type",
                       "the request body must be JSON (Content-Type: application/json)", NULL,
                       NULL, NULL);
  rc = read_body(conn, max, body, len);
  if(rc == 413) {
    char msg[128];
    /* The rest of the body is not read, so the connection cannot be reused. */
    mg_disable_connection_keep_alive(conn);
    snprintf(msg, sizeof msg, "the request body is larger than %zu bytes", max);
    return reply_error(conn, 413, "payload_too_large", msg, NULL, NULL, NULL);
  }
  if(rc)
    return reply_error(conn, rc, rc == 400 ? "bad_request" : "unavailable",
                       rc == 400 ? "the request body could not be read" : "out of memory",
                       NULL, NULL, NULL);
  return 0;
}

/* A job's callback_url must point at an allowed host (callbacks.allow_hosts), so the service
 * cannot be used to reach internal addresses. Returns 0, or -1 with *err filled for `field`. */
static int check_callback(const struct cfg *cfg, const struct job *job, const char *field,
                          struct request_error *err)
{
  if(!job->callback_url)
    return 0;
  err->status = 422;
  err->code = "invalid_field";
  snprintf(err->field, sizeof err->field, "%s", field);
  if(!cfg->callbacks.secret[0]) {
    snprintf(err->message, sizeof err->message,
             "status callbacks are not enabled on this server (callbacks.secret)");
    return -1;
  }
  return callback_url_check(job->callback_url, cfg->callbacks.allow_hosts,
                            cfg->callbacks.n_allow_hosts, err->message, sizeof err->message);
}

static struct idem_claim **find_claim(struct http_server *srv, const char *key)
{
  struct idem_claim **pp = &srv->claims;
  while(*pp && strcmp((*pp)->key, key))
    pp = &(*pp)->next;
  return pp;
}

/* Claims `key` for this request, waiting (bounded) while another request holds it. Returns 1
 * when claimed (release with idem_release), 0 when the wait timed out. */
static int idem_claim(struct http_server *srv, struct idem_claim *claim, const char *key)
{
  struct timespec deadline;
  int ok = 1;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += CONFIRM_WAIT_MS / 1000 + 1;
  snprintf(claim->key, sizeof claim->key, "%s", key);
  claim->next = NULL;
  pthread_mutex_lock(&srv->idem_lock);
  while(*find_claim(srv, key))
    if(pthread_cond_timedwait(&srv->idem_done, &srv->idem_lock, &deadline)) {
      ok = 0;
      break;
    }
  if(ok) {
    claim->next = srv->claims;
    srv->claims = claim;
  }
  pthread_mutex_unlock(&srv->idem_lock);
  return ok;
}

static void idem_release(struct http_server *srv, struct idem_claim *claim)
{
  struct idem_claim **pp;
  pthread_mutex_lock(&srv->idem_lock);
  pp = find_claim(srv, claim->key);
  if(*pp)
    *pp = claim->next;
  pthread_cond_broadcast(&srv->idem_done);
  pthread_mutex_unlock(&srv->idem_lock);
}

/* The 202 of a repeat answered from the first request with its Idempotency-Key. */
static int reply_replayed(struct mg_connection *conn, struct http_server *srv,
                          const char *task_id, enum task_status status)
{
  atomic_fetch_add(&srv->metrics.replays, 1);
  return reply(conn, 202,
               json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "message",
                         "Message already accepted with this Idempotency-Key", "task_id", task_id,
                         "status", status_name(status)),
               "Idempotent-Replayed", "true");
}

/* Answers a repeat of an earlier request with the same Idempotency-Key: the first task's id,
 * or 422 when the key was used for a different request. Returns 0 when the key is new. */
static int replay_idempotent(struct mg_connection *conn, struct http_server *srv,
                             const struct job *job)
{
  char task_id[UTIL_UUID_LEN];
  uint64_t hash;
  enum task_status status;
  if(!task_cache_find_idempotent(srv->deps.cache, job->idempotency_key, task_id, &hash, &status))
    return 0;
  if(hash && hash != job_request_hash(job))
    return reply_error(conn, 422, "idempotency_key_reused",
                       "this Idempotency-Key was used for a different request", "Idempotency-Key",
                       NULL, NULL);
  return reply_replayed(conn, srv, task_id, status);
}

/* The 504 of a request whose outcome is unknown. */
static int reply_outcome_unknown(struct mg_connection *conn, const char *task_id)
{
  char location[UTIL_UUID_LEN + 8];
  snprintf(location, sizeof location, "/tasks/%s", task_id);
  return reply(conn, 504,
               json_pack("{s:b, s:s, s:{s:s, s:s}}", "success", 0, "task_id", task_id, "error",
                         "code", "outcome_unknown", "message", OUTCOME_UNKNOWN_MESSAGE),
               "Location", location);
}

/* A repeat of a request whose outcome was unknown (in_doubt.h): 504 again while its confirm is
 * still awaited, 202 with its task id once it came; after a refusal or a lost connection the
 * job goes out again with the same task id (job->task_id is set, 0 returned). */
static int repeat_in_doubt(struct mg_connection *conn, struct http_server *srv, struct job *job)
{
  enum in_doubt_state state;
  uint64_t hash;
  char known[UTIL_UUID_LEN];
  if(!in_doubt_get(srv->in_doubt, job->idempotency_key, known, &hash, &state))
    return 0;
  if(hash != job_request_hash(job))
    return reply_error(conn, 422, "idempotency_key_reused",
                       "this Idempotency-Key was used for a different request", "Idempotency-Key",
                       NULL, NULL);
  if(state == IN_DOUBT_PENDING)
    return reply_outcome_unknown(conn, known);
  if(state == IN_DOUBT_CONFIRMED) {
    enum task_status status = TASK_PENDING;
    int attempt;
    task_cache_status(srv->deps.cache, known, &status, &attempt);
    return reply_replayed(conn, srv, known, status);
  }
  memcpy(job->task_id, known, UTIL_UUID_LEN);
  return 0;
}

/* The publisher's late word on a job whose request was answered 504 (publisher thread). */
static void on_late_outcome(const char *task_id, enum pub_result result, void *ctx)
{
  struct http_server *srv = ctx;
  in_doubt_settle(srv->in_doubt, task_id,
                  result == PUB_OK         ? IN_DOUBT_CONFIRMED
                  : result == PUB_REJECTED ? IN_DOUBT_REFUSED
                                           : IN_DOUBT_LOST);
  log_event(CFG_LOG_INFO, "late outcome of a job answered 504", "task_id", task_id, "outcome",
            result == PUB_OK ? "confirmed" : result == PUB_REJECTED ? "refused" : "lost", NULL);
}

static int handle_post_message(struct mg_connection *conn, struct http_server *srv)
{
  const struct cfg *cfg = srv->deps.cfg;
  struct request_error rerr;
  struct job job;
  struct status_event ev;
  struct idem_claim *claim = NULL;
  const char *idem = mg_get_header(conn, "Idempotency-Key");
  char *body = NULL;
  size_t len = 0;
  int rc, status;
  json_t *doc;

  if((rc = read_json_request(conn, cfg->api.max_body, &body, &len)))
    return rc;
  if(idem && job_check_idempotency_key(idem) != JOB_FIELD_OK) {
    free(body);
    return reply_error(conn, 422, "invalid_header",
                       "Idempotency-Key must be 1 to 255 printable ASCII characters",
                       "Idempotency-Key", NULL, NULL);
  }
  memset(&job, 0, sizeof job);
  rc = request_parse_message(body, len, cfg->evolution.instance, &job, &rerr);
  free(body);
  if(!rc && check_callback(cfg, &job, "callback_url", &rerr)) {
    free(job.message);
    free(job.instance_name);
    free(job.callback_url);
    rc = -1;
  }
  if(rc)
    return reply_error(conn, rerr.status, rerr.code, rerr.message, rerr.field, NULL, NULL);
  if(util_uuid4(job.task_id)) {
    free(job.message);
    free(job.instance_name);
    free(job.callback_url);
    return reply_error(conn, 503, "unavailable", "no randomness for a task id", NULL, "Retry-After",
                       RETRY_AFTER_S);
  }
  job.created_at_ms = util_now_ms();
  if(idem) {
    job.idempotency_key = strdup(idem);
    claim = malloc(sizeof *claim);
    if(!job.idempotency_key || !claim) {
      free(claim);
      claim = NULL;
      status = reply_error(conn, 503, "unavailable", "out of memory", NULL, "Retry-After",
                           RETRY_AFTER_S);
      goto out;
    }
    if(!idem_claim(srv, claim, idem)) {
      free(claim);
      claim = NULL;
      status = reply_error(conn, 503, "broker_unavailable",
                           "an earlier request with this Idempotency-Key is still in progress",
                           NULL, "Retry-After", RETRY_AFTER_S);
      goto out;
    }
    if((status = replay_idempotent(conn, srv, &job)))
      goto out;
    if((status = repeat_in_doubt(conn, srv, &job)))
      goto out;
  }

  {
    int64_t t0 = util_mono_us();
    enum pub_result pr = publisher_submit(srv->deps.publisher, &job, CONFIRM_WAIT_MS);
    atomic_fetch_add(&srv->metrics.publishes[OUTCOME[pr]], 1);
    if(pr != PUB_UNAVAILABLE)
      metrics_observe(&srv->metrics.confirm, (double)(util_mono_us() - t0) / 1e6);
    rc = (int)pr;
  }
  switch((enum pub_result)rc) {
  case PUB_OK:
    if(idem)
      in_doubt_forget(srv->in_doubt, idem);
    break;
  case PUB_TIMEOUT:
  case PUB_UNKNOWN: {
    /* Not "retry later": a retry without this task's key could send the message twice. */
    log_event(CFG_LOG_WARN, "outcome of a job unknown: no confirm", "task_id", job.task_id,
              "reason", rc == PUB_TIMEOUT ? "timeout" : "connection lost", NULL);
    if(idem && in_doubt_put(srv->in_doubt, idem, job.task_id, job_request_hash(&job),
                            rc == PUB_TIMEOUT ? IN_DOUBT_PENDING : IN_DOUBT_LOST))
      log_event(CFG_LOG_ERROR, "out of memory remembering an unknown outcome", "task_id",
                job.task_id, NULL);
    status = reply_outcome_unknown(conn, job.task_id);
    goto out;
  }
  case PUB_REJECTED:
    log_event(CFG_LOG_ERROR, "broker refused a job", "task_id", job.task_id, NULL);
    /* fall through */
  default:
    status = reply_error(conn, 503, "broker_unavailable",
                         "the message broker could not confirm the message; retry later", NULL,
                         "Retry-After", RETRY_AFTER_S);
    goto out;
  }
  /* The local cache learns of the task now, so a GET right after the 202 finds it even before
   * the PENDING event comes back through the stream (and a repeat finds its key). */
  status_pending_event(&job, &ev);
  task_cache_apply(srv->deps.cache, &ev);
  log_event(CFG_LOG_DEBUG, "message accepted", "task_id", job.task_id, "instance",
            job.instance_name, NULL);
  doc = json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "message",
                  job.send_at_ms ? "Message scheduled for delivery" : "Message queued for delivery",
                  "task_id", job.task_id, "status", status_name(ev.status));
  status = reply(conn, 202, doc, NULL, NULL);
out:
  if(claim) {
    idem_release(srv, claim);
    free(claim);
  }
  free(job.message);
  free(job.instance_name);
  free(job.idempotency_key);
  free(job.callback_url);
  return status;
}

/* POST /messages/batch: up to BATCH_MAX messages validated one by one; the valid ones are
 * handed to the publisher together, so their confirms come back in one round. Answers 200
 * with one result per item, in order (a task id, or the item's error), or 503 when the broker
 * could not confirm some of them (their results say so). */
#define BATCH_MAX 1000
static int handle_post_batch(struct mg_connection *conn, struct http_server *srv)
{
  const struct cfg *cfg = srv->deps.cfg;
  struct request_error rerr;
  struct request_item *items = NULL;
  const struct job **jobs = NULL;
  enum pub_result *results = NULL;
  size_t n = 0, valid = 0, accepted = 0, unknown = 0, k = 0;
  char *body = NULL;
  size_t len = 0;
  int rc, status;
  json_t *list = NULL;

  if((rc = read_json_request(conn, cfg->api.max_batch_body, &body, &len)))
    return rc;
  rc = request_parse_batch(body, len, cfg->evolution.instance, BATCH_MAX, &items, &n, &rerr);
  free(body);
  if(rc)
    return reply_error(conn, rerr.status, rerr.code, rerr.message, rerr.field, NULL, NULL);
  jobs = calloc(n, sizeof *jobs);
  results = calloc(n, sizeof *results);
  list = json_array();
  if(!jobs || !results || !list) {
    status = reply_error(conn, 503, "unavailable", "out of memory", NULL, "Retry-After",
                         RETRY_AFTER_S);
    goto out;
  }
  for(size_t i = 0; i < n; i++) {
    char field[48];
    if(!items[i].ok)
      continue;
    snprintf(field, sizeof field, "messages[%zu].callback_url", i);
    if(check_callback(cfg, &items[i].job, field, &items[i].err)) {
      items[i].ok = 0;
      continue;
    }
    if(util_uuid4(items[i].job.task_id)) {
      items[i].ok = 0;
      items[i].err.code = "unavailable";
      snprintf(items[i].err.message, sizeof items[i].err.message, "no randomness for a task id");
      items[i].err.field[0] = '\0';
      continue;
    }
    items[i].job.created_at_ms = util_now_ms();
    jobs[valid++] = &items[i].job;
  }
  if(valid) {
    int64_t t0 = util_mono_us();
    publisher_submit_many(srv->deps.publisher, jobs, valid, results, CONFIRM_WAIT_MS);
    metrics_observe(&srv->metrics.confirm, (double)(util_mono_us() - t0) / 1e6);
  }
  for(size_t i = 0; i < n; i++) {
    json_t *res;
    if(items[i].ok) {
      enum pub_result pr = results[k++];
      atomic_fetch_add(&srv->metrics.publishes[OUTCOME[pr]], 1);
      if(pr == PUB_OK) {
        struct status_event ev;
        status_pending_event(&items[i].job, &ev);
        task_cache_apply(srv->deps.cache, &ev);
        res = json_pack("{s:I, s:s, s:s}", "index", (json_int_t)i, "task_id",
                        items[i].job.task_id, "status", status_name(ev.status));
        accepted++;
      }
      else if(pr == PUB_TIMEOUT || pr == PUB_UNKNOWN) {
        unknown++;
        res = json_pack("{s:I, s:s, s:{s:s, s:s}}", "index", (json_int_t)i, "task_id",
                        items[i].job.task_id, "error", "code", "outcome_unknown", "message",
                        OUTCOME_UNKNOWN_MESSAGE);
      }
      else
        res = json_pack("{s:I, s:{s:s, s:s}}", "index", (json_int_t)i, "error", "code",
                        "broker_unavailable", "message",
                        "the message broker could not confirm the message; retry later");
    }
    else {
      json_t *e = json_pack("{s:s, s:s}", "code", items[i].err.code, "message",
                            items[i].err.message);
      if(e && items[i].err.field[0])
        json_object_set_new(e, "field", json_string(items[i].err.field));
      res = e ? json_pack("{s:I, s:o}", "index", (json_int_t)i, "error", e) : NULL;
    }
    if(!res || json_array_append_new(list, res)) {
      status = reply_error(conn, 503, "unavailable", "out of memory", NULL, "Retry-After",
                           RETRY_AFTER_S);
      goto out;
    }
  }
  {
    char counts[48];
    snprintf(counts, sizeof counts, "%zu of %zu", accepted, n);
    log_event(CFG_LOG_INFO, "batch handled", "accepted", counts, NULL);
  }
  /* 504 when some outcome is unknown (look those tasks up), 503 when some were refused. */
  status = reply(conn, accepted == valid ? 200 : unknown ? 504 : 503,
                 json_pack("{s:b, s:I, s:I, s:o}", "success", accepted == n, "accepted",
                           (json_int_t)accepted, "rejected", (json_int_t)(n - accepted),
                           "results", list),
                 accepted == valid ? NULL : "Retry-After", RETRY_AFTER_S);
  list = NULL; /* stolen by json_pack's "o" */
out:
  json_decref(list);
  free(jobs);
  free(results);
  request_items_free(items, n);
  return status;
}

/* GET /dead-letters?limit=N: the parked jobs, oldest first, left parked. */
static int handle_dead_letters(struct mg_connection *conn, struct http_server *srv)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  char value[16], err[512];
  long limit = DEAD_PEEK_DEFAULT;
  json_t *doc;
  if(ri->query_string && mg_get_var(ri->query_string, strlen(ri->query_string), "limit", value,
                                    sizeof value) > 0) {
    char *end;
    limit = strtol(value, &end, 10);
    if(*end || limit < 1 || limit > DEAD_PEEK_MAX)
      return reply_error(conn, 422, "invalid_field", "limit must be 1 to 1000", "limit", NULL,
                         NULL);
  }
  doc = dead_peek(srv->deps.cfg, (size_t)limit, err, sizeof err);
  if(!doc)
    return reply_error(conn, 503, "broker_unavailable", err, NULL, "Retry-After", RETRY_AFTER_S);
  return reply(conn, 200, doc, NULL, NULL);
}

/* POST /dead-letters/redrive {"max", "reason", "instance", "task_ids", "rate"}: parked jobs
 * back to delivery, each confirmed before its parked copy is removed. */
static int handle_redrive(struct mg_connection *conn, struct http_server *srv)
{
  struct redrive_filter f = {.max = DEAD_REDRIVE_DEFAULT};
  const char **ids = NULL;
  char *body = NULL, err[512];
  size_t len = 0;
  json_t *root = NULL, *v, *doc;
  json_error_t je;
  const char *key;
  int rc, status;
  if((rc = read_json_request(conn, srv->deps.cfg->api.max_batch_body, &body, &len)))
    return rc;
  root = len ? json_loadb(body, len, JSON_REJECT_DUPLICATES, &je) : json_object();
  free(body);
  if(!root || !json_is_object(root)) {
    json_decref(root);
    return reply_error(conn, root ? 422 : 400, root ? "invalid_body" : "invalid_json",
                       "the body must be a JSON object", NULL, NULL, NULL);
  }
  json_object_foreach(root, key, v) {
    const char *bad = NULL;
    if(!strcmp(key, "max")) {
      if(!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > DEAD_REDRIVE_MAX)
        bad = "max must be an integer from 1 to 100000";
      else
        f.max = (size_t)json_integer_value(v);
    }
    else if(!strcmp(key, "rate")) {
      if(!json_is_number(v) || json_number_value(v) < 0)
        bad = "rate must be a number of jobs per second, 0 for no limit";
      else
        f.rate = json_number_value(v);
    }
    else if(!strcmp(key, "reason") || !strcmp(key, "instance")) {
      if(!json_is_string(v))
        bad = "must be a string";
      else if(!strcmp(key, "reason"))
        f.reason = json_string_value(v);
      else
        f.instance = json_string_value(v);
    }
    else if(!strcmp(key, "task_ids")) {
      size_t i;
      json_t *id;
      if(!json_is_array(v) || json_array_size(v) > 100000)
        bad = "task_ids must be an array of task ids";
      else if(!(ids = calloc(json_array_size(v) + 1, sizeof *ids)))
        bad = "out of memory";
      else
        json_array_foreach(v, i, id) {
          if(!json_is_string(id) || !util_is_uuid(json_string_value(id))) {
            bad = "task_ids must be an array of task ids";
            break;
          }
          ids[f.n_task_ids++] = json_string_value(id);
        }
      f.task_ids = ids;
    }
    else
      bad = "unknown field";
    if(bad) {
      char msg[128];
      snprintf(msg, sizeof msg, "%.40s: %s", key, bad);
      status = reply_error(conn, 422, !strcmp(bad, "unknown field") ? "unknown_field"
                                                                    : "invalid_field",
                           msg, key, NULL, NULL);
      goto out;
    }
  }
  doc = dead_redrive(srv->deps.cfg, &f, err, sizeof err);
  if(!doc)
    status = reply_error(conn, 503, "broker_unavailable", err, NULL, "Retry-After",
                         RETRY_AFTER_S);
  else
    status = reply(conn, 200, doc, NULL, NULL);
out:
  free(ids);
  json_decref(root);
  return status;
}

static int handle_get_task(struct mg_connection *conn, struct http_server *srv, const char *id)
{
  char *doc;
  if(!util_is_uuid(id))
    return reply_error(conn, 404, "task_not_found", "no task with this id", NULL, NULL, NULL);
  doc = task_cache_render(srv->deps.cache, id);
  if(!doc)
    return reply_error(conn, 404, "task_not_found", "no task with this id", NULL, NULL, NULL);
  send_json(conn, 200, doc, NULL, NULL);
  free(doc);
  return 200;
}

/* DELETE /tasks/{id}: a task not yet taken (PENDING) or waiting for a retry (RETRY) is
 * cancelled by a CANCELLED event on the status stream, which every consumer and replica reads;
 * consumers then drop the job instead of sending it. */
static int handle_cancel_task(struct mg_connection *conn, struct http_server *srv, const char *id)
{
  enum task_status status;
  struct status_event ev;
  int attempt;
  if(!util_is_uuid(id) || !task_cache_status(srv->deps.cache, id, &status, &attempt))
    return reply_error(conn, 404, "task_not_found", "no task with this id", NULL, NULL, NULL);
  if(status != TASK_CANCELLED) {
    if(status != TASK_PENDING && status != TASK_RETRY && status != TASK_SCHEDULED) {
      char msg[96];
      snprintf(msg, sizeof msg, "the task is %s: only PENDING, SCHEDULED or RETRY tasks can be "
               "cancelled",
               status_name(status));
      return reply_error(conn, 409, "not_cancellable", msg, NULL, NULL, NULL);
    }
    memset(&ev, 0, sizeof ev);
    memcpy(ev.task_id, id, UTIL_UUID_LEN);
    ev.status = TASK_CANCELLED;
    ev.attempt = attempt;
    ev.at_ms = util_now_ms();
    ev.error_code = "cancelled";
    ev.error_message = "cancelled by DELETE /tasks/{task_id}";
    if(publisher_submit_event(srv->deps.publisher, &ev, CONFIRM_WAIT_MS) != PUB_OK)
      return reply_error(conn, 503, "broker_unavailable",
                         "the message broker could not confirm the cancel; retry later", NULL,
                         "Retry-After", RETRY_AFTER_S);
    task_cache_apply(srv->deps.cache, &ev);
    log_event(CFG_LOG_INFO, "task cancelled", "task_id", id, NULL);
  }
  return handle_get_task(conn, srv, id); /* the task document, now CANCELLED */
}

/* Evolution API signs nothing: the webhook carries a shared secret in a header of our
 * choosing (webhook.headers), or, from 2.3 on, an HS256 JWT made with jwt_key. */
#define WEBHOOK_JWT_LEEWAY_S 60
static int webhook_authorized(struct mg_connection *conn, const struct cfg *cfg)
{
  const char *given = mg_get_header(conn, cfg->webhooks.header);
  const char *auth = mg_get_header(conn, "Authorization");
  char why[128];
  if(cfg->webhooks.secret[0] && given &&
     sign_equal(cfg->webhooks.secret, strlen(cfg->webhooks.secret), given, strlen(given)))
    return 1;
  if(cfg->webhooks.jwt_key[0] && auth && !strncasecmp(auth, "Bearer ", 7) &&
     !sign_jwt_hs256_verify(auth + 7, cfg->webhooks.jwt_key, util_now_ms() / 1000,
                            WEBHOOK_JWT_LEEWAY_S, why, sizeof why))
    return 1;
  return 0;
}

/* One receipt: onto the status stream (every replica applies it), and to the task's callback
 * URL when it tells something new. Returns 0, or -1 when the broker did not confirm. */
static int publish_receipt(struct http_server *srv, const struct webhook_receipt *r,
                           int *applied)
{
  struct status_event ev;
  char *url = NULL;
  int known, news = 0, rc = 0;
  memset(&ev, 0, sizeof ev);
  ev.status = TASK_RECEIPT;
  ev.delivery = r->state;
  ev.at_ms = r->at_ms;
  ev.evolution_key = (char *)r->key;
  ev.instance = r->instance[0] ? (char *)r->instance : NULL;
  known = task_cache_find_by_key(srv->deps.cache, r->key, ev.task_id);
  if(known)
    news = task_cache_receipt_is_news(srv->deps.cache, ev.task_id, r->state, &url);
  else
    ev.task_id[0] = '\0'; /* before its SUCCESS: every replica keeps it by key */
  /* A repeat of what the task already shows is dropped here: Evolution repeats and reorders. */
  if(known && !news)
    return 0;
  /* The callback goes first: once the event is on the stream the receipt is no longer news,
   * so a callback that failed after it would never be sent; the other way round, a failed
   * event makes Evolution retry and the receiver sees the same event id twice at worst. */
  if(url && publisher_submit_callback(srv->deps.publisher, &ev, url, CONFIRM_WAIT_MS) != PUB_OK)
    rc = -1;
  else if(publisher_submit_event(srv->deps.publisher, &ev, CONFIRM_WAIT_MS) != PUB_OK)
    rc = -1;
  if(!rc) {
    task_cache_apply(srv->deps.cache, &ev);
    ++*applied;
  }
  if(!rc && !known) {
    /* Before its SUCCESS here: the callback is owed, and paid when the task shows up, or now
     * if it showed up meanwhile. */
    int now = task_cache_owe_callback(srv->deps.cache, r->key, r->state, ev.task_id, &url);
    if(now > 0 && url &&
       publisher_submit_callback(srv->deps.publisher, &ev, url, CONFIRM_WAIT_MS) != PUB_OK)
      rc = -1;
  }
  free(url);
  return rc;
}

/* POST /webhooks/evolution: Evolution API's webhook events. Delivery receipts are recorded;
 * other events are answered 200 and ignored. 5xx only when the broker failed us: Evolution
 * drops an event on a 4xx, and retries it on a 5xx. */
static int handle_webhook(struct mg_connection *conn, struct http_server *srv)
{
  const struct cfg *cfg = srv->deps.cfg;
  struct webhook_receipt *receipts;
  char *body = NULL, why[160];
  size_t len = 0;
  int rc, n, applied = 0;
  if(!cfg->webhooks.secret[0] && !cfg->webhooks.jwt_key[0])
    return reply_error(conn, 404, "webhooks_disabled",
                       "Evolution API webhooks are not configured (webhooks.secret or "
                       "webhooks.jwt_key)",
                       NULL, NULL, NULL);
  if(!webhook_authorized(conn, cfg)) {
    atomic_fetch_add(&srv->metrics.webhooks_refused, 1);
    log_event(CFG_LOG_WARN, "webhook refused: wrong or missing secret", NULL);
    return reply_error(conn, 401, "unauthorized",
                       "a valid webhook secret or JWT is required", NULL, "WWW-Authenticate",
                       "Bearer realm=\"msg-api webhooks\"");
  }
  if((rc = read_json_request(conn, cfg->api.max_body, &body, &len)))
    return rc;
  receipts = malloc(WEBHOOK_MAX_RECEIPTS * sizeof *receipts); /* small stacks: on the heap */
  if(!receipts) {
    free(body);
    return reply_error(conn, 503, "unavailable", "out of memory", NULL, "Retry-After",
                       RETRY_AFTER_S);
  }
  n = webhook_parse(body, len, util_now_ms(), receipts, WEBHOOK_MAX_RECEIPTS, why, sizeof why);
  free(body);
  if(n < 0) {
    free(receipts);
    return reply_error(conn, 400, "invalid_webhook", why, NULL, NULL, NULL);
  }
  for(int i = 0; i < n; i++)
    if(publish_receipt(srv, &receipts[i], &applied)) {
      free(receipts);
      return reply_error(conn, 503, "broker_unavailable",
                         "the message broker could not confirm the receipt; retry later", NULL,
                         "Retry-After", RETRY_AFTER_S);
    }
  free(receipts);
  atomic_fetch_add(&srv->metrics.receipts, (long long)applied);
  return reply(conn, 200,
               json_pack("{s:b, s:i, s:i}", "success", 1, "receipts", n, "applied", applied),
               NULL, NULL);
}

static int is_ready(struct http_server *srv)
{
  return !atomic_load(&srv->draining) && publisher_ready(srv->deps.publisher) &&
         status_reader_ready(srv->deps.reader);
}

static int handle_health(struct mg_connection *conn, struct http_server *srv)
{
  int pub = publisher_ready(srv->deps.publisher), rd = status_reader_ready(srv->deps.reader);
  int ready = is_ready(srv);
  json_t *doc = json_pack(
    "{s:s, s:s, s:s, s:I, s:{s:b}, s:{s:b, s:I}, s:{s:b, s:I, s:I}, s:{s:I}}", "status",
    ready ? "ok" : (atomic_load(&srv->draining) ? "draining" : "unavailable"), "service",
    "msg-api", "version", MSG_VERSION, "uptime_seconds",
    (json_int_t)((util_mono_ms() - srv->started_ms) / 1000), "broker", "connected", pub,
    "publisher", "ready", pub, "in_flight", (json_int_t)publisher_in_flight(srv->deps.publisher),
    "status_stream", "caught_up", rd, "events_applied",
    (json_int_t)status_reader_events(srv->deps.reader), "offset",
    (json_int_t)status_reader_offset(srv->deps.reader), "cache", "tasks",
    (json_int_t)task_cache_size(srv->deps.cache));
  int64_t last = status_reader_last_event_ms(srv->deps.reader);
  /* How stale the cache may be: seconds since the stream last delivered an event. */
  if(doc)
    json_object_set_new(json_object_get(doc, "status_stream"), "last_event_age_seconds",
                        last ? json_real((double)(util_now_ms() - last) / 1000.0) : json_null());
  return reply(conn, ready ? 200 : 503, doc, NULL, NULL);
}

/* Compares a presented key with every configured key in time that depends only on the lengths,
 * so a client cannot find a key byte by byte from response times. */
static int key_matches(const struct cfg *cfg, const char *given)
{
  size_t glen = strlen(given);
  int found = 0;
  for(size_t i = 0; i < cfg->api.n_api_keys; i++)
    found |= sign_equal(cfg->api.api_keys[i], strlen(cfg->api.api_keys[i]), given, glen);
  return found;
}

/* 1 when the request may go on: no keys configured, or a valid key in
 * "Authorization: Bearer <key>" or "X-API-Key: <key>". */
static int authorized(struct mg_connection *conn, const struct cfg *cfg)
{
  const char *auth = mg_get_header(conn, "Authorization");
  const char *key = mg_get_header(conn, "X-API-Key");
  if(!cfg->api.n_api_keys)
    return 1;
  if(auth && !strncasecmp(auth, "Bearer ", 7) && key_matches(cfg, auth + 7))
    return 1;
  return key && key_matches(cfg, key);
}

static void route_label(char *buf, size_t len, int route_slot, const char *extra)
{
  snprintf(buf, len, "route=\"%s\"%s", route_slot == ROUTE_UNMATCHED ? "unmatched"
                                                                      : ROUTES[route_slot].pattern,
           extra);
}

static int handle_metrics(struct mg_connection *conn, struct http_server *srv)
{
  struct http_metrics *m = &srv->metrics;
  struct metrics_out o = {0};
  char labels[128];
  int64_t last = status_reader_last_event_ms(srv->deps.reader);
  int status;
  metrics_family(&o, "msg_api_http_requests_total", "counter",
                 "HTTP requests answered, by route and status.");
  for(int r = 0; r <= ROUTE_COUNT; r++)
    for(size_t i = 0; i < N_STATUSES; i++) {
      unsigned long long n = atomic_load(&m->requests[r][i]);
      char status_label[48];
      if(!n)
        continue;
      if(i < N_STATUSES - 1)
        snprintf(status_label, sizeof status_label, ",status=\"%d\"", COUNTED_STATUSES[i]);
      else
        snprintf(status_label, sizeof status_label, ",status=\"other\"");
      route_label(labels, sizeof labels, r, status_label);
      metrics_sample(&o, "msg_api_http_requests_total", labels, (double)n);
    }
  metrics_family(&o, "msg_api_http_request_duration_seconds", "histogram",
                 "Time to answer an HTTP request, by route.");
  for(int r = 0; r <= ROUTE_COUNT; r++)
    if(atomic_load(&m->duration[r].count)) {
      route_label(labels, sizeof labels, r, "");
      metrics_hist_samples(&o, "msg_api_http_request_duration_seconds", labels, &m->duration[r]);
    }
  metrics_family(&o, "msg_api_publishes_total", "counter",
                 "Jobs handed to the publisher, by outcome (ack = confirmed by the broker).");
  for(int i = 0; i < PUBLISH_OUTCOMES; i++) {
    snprintf(labels, sizeof labels, "outcome=\"%s\"", PUBLISH_OUTCOME_NAMES[i]);
    metrics_sample(&o, "msg_api_publishes_total", labels, (double)atomic_load(&m->publishes[i]));
  }
  metrics_family(&o, "msg_api_publish_confirm_duration_seconds", "histogram",
                 "Time from handing a job to the publisher to its confirm (or the give-up).");
  metrics_hist_samples(&o, "msg_api_publish_confirm_duration_seconds", "", &m->confirm);
  metrics_family(&o, "msg_api_idempotent_replays_total", "counter",
                 "Requests answered from an earlier one with the same Idempotency-Key.");
  metrics_sample(&o, "msg_api_idempotent_replays_total", "", (double)atomic_load(&m->replays));
  metrics_family(&o, "msg_api_delivery_receipts_total", "counter",
                 "Delivery receipts from Evolution API webhooks that told something new.");
  metrics_sample(&o, "msg_api_delivery_receipts_total", "", (double)atomic_load(&m->receipts));
  metrics_family(&o, "msg_api_webhooks_refused_total", "counter",
                 "Webhook requests refused for a wrong or missing secret or JWT.");
  metrics_sample(&o, "msg_api_webhooks_refused_total", "",
                 (double)atomic_load(&m->webhooks_refused));
  metrics_family(&o, "msg_api_publish_in_flight", "gauge", "Jobs waiting for their confirm.");
  metrics_sample(&o, "msg_api_publish_in_flight", "",
                 (double)publisher_in_flight(srv->deps.publisher));
  metrics_family(&o, "msg_api_broker_connections_total", "counter",
                 "Successful broker connections, by connection (more than 1 = reconnects).");
  metrics_sample(&o, "msg_api_broker_connections_total", "connection=\"publisher\"",
                 (double)publisher_connects(srv->deps.publisher));
  metrics_sample(&o, "msg_api_broker_connections_total", "connection=\"status\"",
                 (double)status_reader_connects(srv->deps.reader));
  metrics_family(&o, "msg_api_ready", "gauge", "1 when ready to accept messages.");
  metrics_sample(&o, "msg_api_ready", "", is_ready(srv));
  metrics_family(&o, "msg_api_task_cache_tasks", "gauge", "Tasks held in the status cache.");
  metrics_sample(&o, "msg_api_task_cache_tasks", "", (double)task_cache_size(srv->deps.cache));
  metrics_family(&o, "msg_api_status_events_total", "counter",
                 "Status events read from the stream.");
  metrics_sample(&o, "msg_api_status_events_total", "",
                 (double)status_reader_events(srv->deps.reader));
  metrics_family(&o, "msg_api_status_stream_last_event_age_seconds", "gauge",
                 "Seconds since the status stream last delivered an event (-1 before any).");
  metrics_sample(&o, "msg_api_status_stream_last_event_age_seconds", "",
                 last ? (double)(util_now_ms() - last) / 1000.0 : -1);
  metrics_family(&o, "msg_api_uptime_seconds", "gauge", "Seconds since start.");
  metrics_sample(&o, "msg_api_uptime_seconds", "",
                 (double)(util_mono_ms() - srv->started_ms) / 1000.0);
  if(o.oom) {
    metrics_out_free(&o);
    return reply_error(conn, 500, "internal", "out of memory", NULL, NULL, NULL);
  }
  status = send_static(conn, "text/plain; version=0.0.4; charset=utf-8", o.buf, o.len);
  metrics_out_free(&o);
  return status;
}

static size_t status_slot(int status)
{
  for(size_t i = 0; i < N_STATUSES - 1; i++)
    if(COUNTED_STATUSES[i] == status)
      return i;
  return N_STATUSES - 1;
}

static int dispatch(struct mg_connection *conn, struct http_server *srv, int *route_slot);

/* Every request comes here: counted and timed by route and status, then dispatched. */
static int route(struct mg_connection *conn, void *arg)
{
  struct http_server *srv = arg;
  int64_t t0 = util_mono_us();
  int slot = ROUTE_UNMATCHED;
  atomic_store_explicit(&srv->last_request_ms, t0 / 1000, memory_order_relaxed);
  int status = dispatch(conn, srv, &slot);
  atomic_fetch_add_explicit(&srv->metrics.requests[slot][status_slot(status)], 1,
                            memory_order_relaxed);
  metrics_observe(&srv->metrics.duration[slot], (double)(util_mono_us() - t0) / 1e6);
  return status;
}

/* The routing table (routes.c) decides 404, 405 and authentication in one place. */
static int dispatch(struct mg_connection *conn, struct http_server *srv, int *route_slot)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *path = ri->local_uri ? ri->local_uri : "/", *param = NULL;
  char allow[64];
  int id = route_find(path, ri->request_method, &param, allow, sizeof allow);
  if(id == ROUTE_NO_PATH)
    return reply_error(conn, 404, "not_found", "no such endpoint", NULL, NULL, NULL);
  if(id == ROUTE_NO_METHOD) {
    char msg[96];
    snprintf(msg, sizeof msg, "use %s", allow);
    return reply_error(conn, 405, "method_not_allowed", msg, NULL, "Allow", allow);
  }
  *route_slot = id;
  /* Once stopping, no new work: clients retry elsewhere (Retry-After) while what is in flight
   * finishes. Reads and probes are still answered. */
  if(atomic_load(&srv->draining) &&
     (id == ROUTE_MESSAGES || id == ROUTE_BATCH || id == ROUTE_TASK_CANCEL || id == ROUTE_REDRIVE))
    /* Long enough for mg_stop to close the listener before the client is back: a client that
     * returns while it closes would be reset rather than refused. */
    return reply_error(conn, 503, "shutting_down", "this server is stopping; retry", NULL,
                       "Retry-After", "5");
  /* Probes, the banner and the documentation stay open so orchestrators and readers need no
   * key. */
  if(!ROUTES[id].open && !authorized(conn, srv->deps.cfg))
    return reply_error(conn, 401, "unauthorized",
                       "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                       NULL, "WWW-Authenticate", "Bearer realm=\"msg-api\"");
  switch((enum route_id)id) {
  case ROUTE_ROOT:
    return reply(conn, 200,
                 json_pack("{s:s, s:s, s:s}", "service", "msg-api", "version", MSG_VERSION,
                           "status", "ok"),
                 NULL, NULL);
  case ROUTE_LIVEZ: return reply(conn, 200, json_pack("{s:s}", "status", "ok"), NULL, NULL);
  case ROUTE_READYZ:
    if(is_ready(srv))
      return reply(conn, 200, json_pack("{s:s}", "status", "ready"), NULL, NULL);
    return reply_error(conn, 503, "not_ready", "not connected to the broker or not caught up",
                       NULL, "Retry-After", RETRY_AFTER_S);
  case ROUTE_HEALTH: return handle_health(conn, srv);
  case ROUTE_OPENAPI:
    return send_static(conn, "application/json; charset=utf-8", static_openapi_json,
                       static_openapi_json_len);
  case ROUTE_DOCS:
    return send_static(conn, "text/html; charset=utf-8", static_docs_html, static_docs_html_len);
  case ROUTE_MESSAGES: return handle_post_message(conn, srv);
  case ROUTE_BATCH: return handle_post_batch(conn, srv);
  case ROUTE_TASK: return handle_get_task(conn, srv, param);
  case ROUTE_TASK_CANCEL: return handle_cancel_task(conn, srv, param);
  case ROUTE_METRICS: return handle_metrics(conn, srv);
  case ROUTE_DEAD_LETTERS: return handle_dead_letters(conn, srv);
  case ROUTE_REDRIVE: return handle_redrive(conn, srv);
  case ROUTE_WEBHOOK: return handle_webhook(conn, srv);
  case ROUTE_COUNT: break;
  }
  return reply_error(conn, 404, "not_found", "no such endpoint", NULL, NULL, NULL);
}

static int on_log(const struct mg_connection *conn, const char *message)
{
  (void)conn;
  log_event(CFG_LOG_WARN, "http server", "detail", message, NULL);
  return 1;
}

struct http_server *http_start(const struct http_deps *deps, char *err, size_t errlen)
{
  struct http_server *srv = calloc(1, sizeof *srv);
  struct mg_callbacks cb;
  struct mg_init_data init;
  struct mg_error_data error;
  char threads[16], etext[256] = "";
  unsigned ecode = 0;
  const char *opts[] = {"listening_ports", deps->cfg->api.listen, "num_threads", threads,
                        "enable_keep_alive", "yes", "keep_alive_timeout_ms", "5000",
                        "request_timeout_ms", "10000", "tcp_nodelay", "1",
                        "listen_backlog", "1024", NULL};
  if(!srv) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  srv->deps = *deps;
  srv->started_ms = util_mono_ms();
  srv->in_doubt = in_doubt_new(IN_DOUBT_MAX);
  if(!srv->in_doubt) {
    snprintf(err, errlen, "out of memory");
    free(srv);
    return NULL;
  }
  pthread_mutex_init(&srv->idem_lock, NULL);
  pthread_cond_init(&srv->idem_done, NULL);
  snprintf(threads, sizeof threads, "%u", deps->cfg->api.threads);
  memset(&cb, 0, sizeof cb);
  cb.log_message = on_log;
  init.callbacks = &cb;
  init.user_data = srv;
  init.configuration_options = opts;
  error.code = &ecode;
  error.text = etext;
  error.text_buffer_size = sizeof etext;
  srv->ctx = mg_start2(&init, &error);
  if(!srv->ctx) {
    snprintf(err, errlen, "cannot listen on %s: %s", deps->cfg->api.listen, etext);
    in_doubt_free(srv->in_doubt);
    free(srv);
    return NULL;
  }
  mg_set_request_handler(srv->ctx, "/", route, srv);
  publisher_on_late_outcome(deps->publisher, on_late_outcome, srv);
  return srv;
}

void http_drain(struct http_server *srv, int quiet_ms, int max_ms)
{
  int64_t start = util_mono_ms();
  atomic_store(&srv->draining, 1);
  atomic_store(&shutting_down, 1);
  /* CivetWeb's mg_stop drops connections accepted but not yet read: keep answering (503 for new
   * work, with Retry-After, on closing connections) while requests still come, and stop once
   * clients have backed off (load balancers also see /readyz fail and move away). */
  while(util_mono_ms() - start < max_ms &&
        util_mono_ms() - atomic_load(&srv->last_request_ms) < quiet_ms) {
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
}

void http_stop(struct http_server *srv)
{
  if(!srv)
    return;
  mg_stop(srv->ctx);
  /* The publisher outlives the server: it must not report into a freed table. */
  publisher_on_late_outcome(srv->deps.publisher, NULL, NULL);
  pthread_mutex_destroy(&srv->idem_lock);
  pthread_cond_destroy(&srv->idem_done);
  in_doubt_free(srv->in_doubt);
  free(srv);
}
