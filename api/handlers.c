/* The endpoints of msg-api (README "HTTP API"): one function each, called by http.c's router
 * once the path, method and key are known good. */
#include "http_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "callback_url.h"
#include "deadletters.h"
#include "log.h"
#include "request.h"
#include "trace.h"
#include "util.h"
#include "workers.h"
#include "webhook.h"

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

int http_handle_post_message(struct mg_connection *conn, struct http_server *srv,
                             const struct api_key *who)
{
  const struct cfg *cfg = srv->deps.cfg;
  struct request_error rerr;
  struct job job;
  struct status_event ev;
  struct idem_claim *claim = NULL;
  const char *idem = mg_get_header(conn, "Idempotency-Key");
  char *body = NULL, scoped[TASK_CACHE_IDEM_MAX] = "";
  size_t len = 0;
  int rc, status;
  json_t *doc;

  if((rc = http_read_json(conn, cfg->api.max_body, &body, &len)))
    return rc;
  if(idem && job_check_idempotency_key(idem) != JOB_FIELD_OK) {
    free(body);
    return http_reply_error(conn, 422, "invalid_header",
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
  if(!rc && !http_may_use(who, job.instance_name)) {
    free(job.message);
    free(job.instance_name);
    free(job.callback_url);
    http_count_tenant(who, 0, 1);
    return http_reply_error(conn, 403, "instance_not_allowed",
                            "this API key may not send through this instance", "instance_name",
                            NULL, NULL);
  }
  if(rc)
    return http_reply_error(conn, rerr.status, rerr.code, rerr.message, rerr.field, NULL, NULL);
  if(who->tenant[0] && !(job.tenant = strdup(who->tenant))) {
    free(job.message);
    free(job.instance_name);
    free(job.callback_url);
    return http_reply_error(conn, 503, "unavailable", "out of memory", NULL, "Retry-After",
                            RETRY_AFTER_S);
  }
  if(util_uuid4(job.task_id)) {
    free(job.tenant);
    free(job.message);
    free(job.instance_name);
    free(job.callback_url);
    return http_reply_error(conn, 503, "unavailable", "no randomness for a task id", NULL, "Retry-After",
                       RETRY_AFTER_S);
  }
  job.created_at_ms = util_now_ms();
  {
    /* Borrowed from the request: the job carries them to every status event, the consumer's
     * lines, the Evolution call and the callbacks. */
    struct http_request_ctx *ctx = http_request_ctx(conn);
    if(ctx) {
      job.request_id = ctx->request_id;
      job.traceparent = ctx->traceparent;
      memcpy(ctx->task_id, job.task_id, UTIL_UUID_LEN);
    }
  }
  if(idem) {
    /* Idempotency-Keys are per tenant: the same key of two tenants is two requests. */
    task_cache_idem_key(job.tenant, idem, scoped);
    job.idempotency_key = strdup(idem);
    claim = malloc(sizeof *claim);
    if(!job.idempotency_key || !claim) {
      free(claim);
      claim = NULL;
      status = http_reply_error(conn, 503, "unavailable", "out of memory", NULL, "Retry-After",
                           RETRY_AFTER_S);
      goto out;
    }
    if(!idem_claim(srv, claim, scoped)) {
      free(claim);
      claim = NULL;
      status = http_reply_error(conn, 503, "broker_unavailable",
                           "an earlier request with this Idempotency-Key is still in progress",
                           NULL, "Retry-After", RETRY_AFTER_S);
      goto out;
    }
    if((status = idem_replay(conn, srv, &job, scoped)))
      goto out;
    if((status = idem_repeat_in_doubt(conn, srv, &job, scoped)))
      goto out;
  }

  {
    int64_t t0 = util_mono_us();
    enum pub_result pr = publisher_submit(srv->deps.publisher, &job, CONFIRM_WAIT_MS);
    atomic_fetch_add(&srv->metrics.publishes[PUBLISH_OUTCOME_OF[pr]], 1);
    if(pr != PUB_UNAVAILABLE)
      metrics_observe(&srv->metrics.confirm, (double)(util_mono_us() - t0) / 1e6);
    rc = (int)pr;
  }
  switch((enum pub_result)rc) {
  case PUB_OK:
    if(idem)
      in_doubt_forget(srv->in_doubt, scoped);
    break;
  case PUB_TIMEOUT:
  case PUB_UNKNOWN: {
    /* Not "retry later": a retry without this task's key could send the message twice. */
    log_event(CFG_LOG_WARN, "outcome of a job unknown: no confirm", "task_id", job.task_id,
              "reason", rc == PUB_TIMEOUT ? "timeout" : "connection lost", NULL);
    if(idem && in_doubt_put(srv->in_doubt, scoped, job.task_id, job_request_hash(&job),
                            rc == PUB_TIMEOUT ? IN_DOUBT_PENDING : IN_DOUBT_LOST))
      log_event(CFG_LOG_ERROR, "out of memory remembering an unknown outcome", "task_id",
                job.task_id, NULL);
    status = idem_reply_outcome_unknown(conn, job.task_id);
    goto out;
  }
  case PUB_REJECTED:
    log_event(CFG_LOG_ERROR, "broker refused a job", "task_id", job.task_id, NULL);
    /* fall through */
  default:
    status = http_reply_error(conn, 503, "broker_unavailable",
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
  status = http_reply(conn, 202, doc, NULL, NULL);
  http_count_tenant(who, 1, 0);
out:
  if(claim) {
    idem_release(srv, claim);
    free(claim);
  }
  free(job.message);
  free(job.instance_name);
  free(job.idempotency_key);
  free(job.callback_url);
  free(job.tenant);
  return status;
}

/* POST /messages/batch: up to BATCH_MAX messages validated one by one; the valid ones are
 * handed to the publisher together, so their confirms come back in one round. Answers 200
 * with one result per item, in order (a task id, or the item's error), or 503 when the broker
 * could not confirm some of them (their results say so). */
#define BATCH_MAX 1000
int http_handle_post_batch(struct mg_connection *conn, struct http_server *srv,
                           const struct api_key *who)
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

  if((rc = http_read_json(conn, cfg->api.max_batch_body, &body, &len)))
    return rc;
  rc = request_parse_batch(body, len, cfg->evolution.instance, BATCH_MAX, &items, &n, &rerr);
  free(body);
  if(rc)
    return http_reply_error(conn, rerr.status, rerr.code, rerr.message, rerr.field, NULL, NULL);
  jobs = calloc(n, sizeof *jobs);
  results = calloc(n, sizeof *results);
  list = json_array();
  if(!jobs || !results || !list) {
    status = http_reply_error(conn, 503, "unavailable", "out of memory", NULL, "Retry-After",
                         RETRY_AFTER_S);
    goto out;
  }
  for(size_t i = 0; i < n; i++) {
    char field[48];
    if(!items[i].ok)
      continue;
    if(!http_may_use(who, items[i].job.instance_name)) {
      items[i].ok = 0;
      items[i].err.status = 403;
      items[i].err.code = "instance_not_allowed";
      snprintf(items[i].err.message, sizeof items[i].err.message,
               "this API key may not send through this instance");
      snprintf(items[i].err.field, sizeof items[i].err.field, "messages[%zu].instance_name", i);
      http_count_tenant(who, 0, 1);
      continue;
    }
    snprintf(field, sizeof field, "messages[%zu].callback_url", i);
    if(check_callback(cfg, &items[i].job, field, &items[i].err)) {
      items[i].ok = 0;
      continue;
    }
    if(http_request_ctx(conn)) {
      /* One request: every item carries its id and trace context (borrowed). */
      items[i].job.request_id = http_request_ctx(conn)->request_id;
      items[i].job.traceparent = http_request_ctx(conn)->traceparent;
    }
    if(who->tenant[0] && !(items[i].job.tenant = strdup(who->tenant))) {
      items[i].ok = 0;
      items[i].err.code = "unavailable";
      snprintf(items[i].err.message, sizeof items[i].err.message, "out of memory");
      items[i].err.field[0] = '\0';
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
      atomic_fetch_add(&srv->metrics.publishes[PUBLISH_OUTCOME_OF[pr]], 1);
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
      json_t *e;
      util_utf8_sanitize(items[i].err.message); /* cut texts must not fail the whole answer */
      util_utf8_sanitize(items[i].err.field);
      e = json_pack("{s:s, s:s}", "code", items[i].err.code, "message", items[i].err.message);
      if(e && items[i].err.field[0])
        json_object_set_new(e, "field", json_string(items[i].err.field));
      res = e ? json_pack("{s:I, s:o}", "index", (json_int_t)i, "error", e) : NULL;
    }
    if(!res || json_array_append_new(list, res)) {
      status = http_reply_error(conn, 503, "unavailable", "out of memory", NULL, "Retry-After",
                           RETRY_AFTER_S);
      goto out;
    }
  }
  {
    char counts[48];
    snprintf(counts, sizeof counts, "%zu of %zu", accepted, n);
    log_event(CFG_LOG_INFO, "batch handled", "accepted", counts, NULL);
  }
  http_count_tenant(who, (int)accepted, 0);
  /* 504 when some outcome is unknown (look those tasks up), 503 when some were refused. */
  status = http_reply(conn, accepted == valid ? 200 : unknown ? 504 : 503,
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
int http_handle_dead_letters(struct mg_connection *conn, struct http_server *srv)
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
      return http_reply_error(conn, 422, "invalid_field", "limit must be 1 to 1000", "limit", NULL,
                         NULL);
  }
  doc = dead_peek(srv->deps.cfg, (size_t)limit, err, sizeof err);
  if(!doc)
    return http_reply_error(conn, 503, "broker_unavailable", err, NULL, "Retry-After", RETRY_AFTER_S);
  return http_reply(conn, 200, doc, NULL, NULL);
}

/* A query parameter of GET /tasks (the first occurrence when nth is 0): 1 when present (and it
 * fit), 0 when absent, -1 when longer than the room. */
static int query_var(const struct mg_request_info *ri, const char *name, int nth, char *buf,
                     size_t len)
{
  int n;
  if(!ri->query_string)
    return 0;
  n = mg_get_var2(ri->query_string, strlen(ri->query_string), name, buf, len, (size_t)nth);
  return n >= 0 ? 1 : n == -1 ? 0 : -1;
}

/* GET /tasks?status=&instance=&phone=&since=&until=&limit=&cursor=: the cache searched, newest
 * first; a key with a tenant sees only its tenant's tasks (admin: every one). */
int http_handle_search_tasks(struct mg_connection *conn, struct http_server *srv,
                             const struct api_key *who)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  struct task_query q;
  char value[256], instance[JOB_INSTANCE_MAX + 1], phone[JOB_PHONE_LEN], *doc;
  char request_id[TRACE_REQUEST_ID_MAX + 1];
  memset(&q, 0, sizeof q);
  q.limit = 50;
  /* status: repeated or comma-separated names. */
  for(int i = 0; i < 16; i++) {
    int got = query_var(ri, "status", i, value, sizeof value);
    char *save = NULL;
    if(!got)
      break;
    if(got < 0)
      return http_reply_error(conn, 422, "invalid_field", "status is too long", "status", NULL,
                              NULL);
    for(char *name = strtok_r(value, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
      enum task_status st;
      if(status_from_name(name, &st) || st == TASK_RECEIPT)
        return http_reply_error(conn, 422, "invalid_field",
                                "status must be PENDING, SCHEDULED, STARTED, RETRY, SUCCESS, "
                                "FAILURE or CANCELLED",
                                "status", NULL, NULL);
      q.statuses |= 1u << st;
    }
  }
  if(query_var(ri, "instance", 0, instance, sizeof instance)) {
    if(job_check_instance(instance))
      return http_reply_error(conn, 422, "invalid_field", "instance is not an instance name",
                              "instance", NULL, NULL);
    q.instance = instance;
  }
  if(query_var(ri, "phone", 0, value, sizeof value)) {
    if(job_normalize_phone(value, phone) != JOB_FIELD_OK)
      return http_reply_error(conn, 422, "invalid_field", "phone is not a phone number", "phone",
                              NULL, NULL);
    q.phone = phone;
  }
  if(query_var(ri, "request_id", 0, request_id, sizeof request_id)) {
    if(!trace_request_id_ok(request_id))
      return http_reply_error(conn, 422, "invalid_field",
                              "request_id must be 1-64 characters from A-Z a-z 0-9 . _ : -",
                              "request_id", NULL, NULL);
    q.request_id = request_id;
  }
  if(query_var(ri, "since", 0, value, sizeof value) && util_parse_time(value, &q.since_ms))
    return http_reply_error(conn, 422, "invalid_field", "since must be an RFC 3339 time",
                            "since", NULL, NULL);
  if(query_var(ri, "until", 0, value, sizeof value) && util_parse_time(value, &q.until_ms))
    return http_reply_error(conn, 422, "invalid_field", "until must be an RFC 3339 time",
                            "until", NULL, NULL);
  if(query_var(ri, "limit", 0, value, sizeof value)) {
    char *end;
    long limit = strtol(value, &end, 10);
    if(*end || end == value || limit < 1 || limit > TASK_QUERY_MAX_LIMIT)
      return http_reply_error(conn, 422, "invalid_field", "limit must be 1 to 500", "limit",
                              NULL, NULL);
    q.limit = (size_t)limit;
  }
  if(query_var(ri, "cursor", 0, value, sizeof value) && task_cache_parse_cursor(value, &q))
    return http_reply_error(conn, 422, "invalid_field", "cursor is not a next_cursor of GET /tasks",
                            "cursor", NULL, NULL);
  /* Only the caller's tenant's tasks, unless it is admin (as for a single task). */
  if(!(who->scopes & CFG_SCOPE_ADMIN))
    q.tenant = who->tenant;
  if(!(doc = task_cache_search(srv->deps.cache, &q)))
    return http_reply_error(conn, 500, "internal_error", "out of memory", NULL, NULL, NULL);
  http_send_json(conn, 200, doc, NULL, NULL);
  free(doc);
  return 200;
}

/* GET /stats: counts, rates and 202→SUCCESS percentiles of the cached tasks (the caller's
 * tenant's, unless admin). */
int http_handle_stats(struct mg_connection *conn, struct http_server *srv,
                      const struct api_key *who)
{
  char *doc = task_cache_stats(srv->deps.cache,
                               (who->scopes & CFG_SCOPE_ADMIN) ? NULL : who->tenant);
  if(!doc)
    return http_reply_error(conn, 500, "internal_error", "out of memory", NULL, NULL, NULL);
  http_send_json(conn, 200, doc, NULL, NULL);
  free(doc);
  return 200;
}

/* GET /workers: the consumers whose heartbeats this replica read lately (api/workers.h). */
int http_handle_workers(struct mg_connection *conn, struct http_server *srv)
{
  char *text = workers_json(status_reader_workers(srv->deps.reader), util_now_ms());
  json_t *doc = text ? json_loads(text, 0, NULL) : NULL;
  free(text);
  if(!doc)
    return http_reply_error(conn, 500, "internal_error", "out of memory", NULL, NULL, NULL);
  return http_reply(conn, 200, doc, NULL, NULL);
}

/* POST /dead-letters/redrive {"max", "reason", "instance", "task_ids", "rate"}: parked jobs
 * back to delivery, each confirmed before its parked copy is removed. A worker is held for at
 * most REQUEST_REDRIVE_MAX_MS: the body is refused when its rate cannot finish in time, and
 * the redrive stops at that deadline (or at once when the server stops), reporting so. */
int http_handle_redrive(struct mg_connection *conn, struct http_server *srv)
{
  struct request_redrive r;
  struct request_error rerr;
  char *body = NULL, err[512];
  size_t len = 0;
  json_t *doc;
  int rc;
  if((rc = http_read_json(conn, srv->deps.cfg->api.max_batch_body, &body, &len)))
    return rc;
  rc = request_parse_redrive(body, len, &r, &rerr);
  free(body);
  if(rc)
    return http_reply_error(conn, rerr.status, rerr.code, rerr.message, rerr.field, NULL, NULL);
  r.filter.deadline_ms = util_mono_ms() + REQUEST_REDRIVE_MAX_MS;
  r.filter.stop = http_stop_flag();
  doc = dead_redrive(srv->deps.cfg, &r.filter, err, sizeof err);
  request_redrive_free(&r);
  if(!doc)
    return http_reply_error(conn, 503, "broker_unavailable", err, NULL, "Retry-After",
                            RETRY_AFTER_S);
  return http_reply(conn, 200, doc, NULL, NULL);
}

/* 1 when `who` may see task `id` (it exists, and is its tenant's or `who` is an admin); a
 * task of another tenant is as unknown as one that never was. */
static int visible(struct http_server *srv, const struct api_key *who, const char *id)
{
  char tenant[JOB_TENANT_MAX + 1], instance[JOB_INSTANCE_MAX + 1];
  if(!util_is_uuid(id) || !task_cache_owner(srv->deps.cache, id, tenant, instance))
    return 0;
  if(http_may_see(who, tenant))
    return 1;
  http_count_tenant(who, 0, 1);
  return 0;
}

int http_handle_get_task(struct mg_connection *conn, struct http_server *srv,
                         const struct api_key *who, const char *id)
{
  char *doc;
  struct http_request_ctx *ctx = http_request_ctx(conn);
  if(ctx && util_is_uuid(id))
    memcpy(ctx->task_id, id, UTIL_UUID_LEN);
  if(!visible(srv, who, id))
    return http_reply_error(conn, 404, "task_not_found", "no task with this id", NULL, NULL, NULL);
  doc = task_cache_render(srv->deps.cache, id);
  if(!doc)
    return http_reply_error(conn, 404, "task_not_found", "no task with this id", NULL, NULL, NULL);
  http_send_json(conn, 200, doc, NULL, NULL);
  free(doc);
  return 200;
}

/* DELETE /tasks/{id}: a task not yet taken (PENDING) or waiting for a retry (RETRY) is
 * cancelled by a CANCELLED event on the status stream, which every consumer and replica reads;
 * consumers then drop the job instead of sending it. */
int http_handle_cancel_task(struct mg_connection *conn, struct http_server *srv,
                            const struct api_key *who, const char *id)
{
  enum task_status status;
  struct status_event ev;
  int attempt;
  if(!visible(srv, who, id) || !task_cache_status(srv->deps.cache, id, &status, &attempt))
    return http_reply_error(conn, 404, "task_not_found", "no task with this id", NULL, NULL, NULL);
  if(status != TASK_CANCELLED) {
    if(status != TASK_PENDING && status != TASK_RETRY && status != TASK_SCHEDULED) {
      char msg[96];
      snprintf(msg, sizeof msg, "the task is %s: only PENDING, SCHEDULED or RETRY tasks can be "
               "cancelled",
               status_name(status));
      return http_reply_error(conn, 409, "not_cancellable", msg, NULL, NULL, NULL);
    }
    memset(&ev, 0, sizeof ev);
    memcpy(ev.task_id, id, UTIL_UUID_LEN);
    ev.status = TASK_CANCELLED;
    ev.attempt = attempt;
    ev.at_ms = util_now_ms();
    ev.error_code = "cancelled";
    ev.error_message = "cancelled by DELETE /tasks/{task_id}";
    if(publisher_submit_event(srv->deps.publisher, &ev, CONFIRM_WAIT_MS) != PUB_OK)
      return http_reply_error(conn, 503, "broker_unavailable",
                         "the message broker could not confirm the cancel; retry later", NULL,
                         "Retry-After", RETRY_AFTER_S);
    task_cache_apply(srv->deps.cache, &ev);
    log_event(CFG_LOG_INFO, "task cancelled", "task_id", id, NULL);
  }
  return http_handle_get_task(conn, srv, who, id); /* the task document, now CANCELLED */
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
  if(known && r->instance[0]) {
    /* Evolution's message ids are unique within an instance: a receipt naming another
     * instance than the task's is not about this task. */
    char tenant[JOB_TENANT_MAX + 1], instance[JOB_INSTANCE_MAX + 1];
    if(task_cache_owner(srv->deps.cache, ev.task_id, tenant, instance) && instance[0] &&
       strcmp(instance, r->instance))
      return 0;
  }
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
int http_handle_webhook(struct mg_connection *conn, struct http_server *srv)
{
  const struct cfg *cfg = srv->deps.cfg;
  struct webhook_receipt *receipts;
  char *body = NULL, why[160];
  size_t len = 0;
  int rc, n, applied = 0;
  if(!cfg->webhooks.secret[0] && !cfg->webhooks.jwt_key[0])
    return http_reply_error(conn, 404, "webhooks_disabled",
                       "Evolution API webhooks are not configured (webhooks.secret or "
                       "webhooks.jwt_key)",
                       NULL, NULL, NULL);
  if(!http_webhook_authorized(conn, cfg)) {
    atomic_fetch_add(&srv->metrics.webhooks_refused, 1);
    log_event(CFG_LOG_WARN, "webhook refused: wrong or missing secret", NULL);
    return http_reply_error(conn, 401, "unauthorized",
                       "a valid webhook secret or JWT is required", NULL, "WWW-Authenticate",
                       "Bearer realm=\"msg-api webhooks\"");
  }
  if((rc = http_read_json(conn, cfg->api.max_body, &body, &len)))
    return rc;
  receipts = malloc(WEBHOOK_MAX_RECEIPTS * sizeof *receipts); /* small stacks: on the heap */
  if(!receipts) {
    free(body);
    return http_reply_error(conn, 503, "unavailable", "out of memory", NULL, "Retry-After",
                       RETRY_AFTER_S);
  }
  n = webhook_parse(body, len, util_now_ms(), receipts, WEBHOOK_MAX_RECEIPTS, why, sizeof why);
  free(body);
  if(n < 0) {
    free(receipts);
    return http_reply_error(conn, 400, "invalid_webhook", why, NULL, NULL, NULL);
  }
  for(int i = 0; i < n; i++)
    if(publish_receipt(srv, &receipts[i], &applied)) {
      free(receipts);
      return http_reply_error(conn, 503, "broker_unavailable",
                         "the message broker could not confirm the receipt; retry later", NULL,
                         "Retry-After", RETRY_AFTER_S);
    }
  free(receipts);
  atomic_fetch_add(&srv->metrics.receipts, (long long)applied);
  return http_reply(conn, 200,
               json_pack("{s:b, s:i, s:i}", "success", 1, "receipts", n, "applied", applied),
               NULL, NULL);
}

int http_is_ready(struct http_server *srv)
{
  return !atomic_load(&srv->draining) && publisher_ready(srv->deps.publisher) &&
         status_reader_ready(srv->deps.reader);
}

/* /health "snapshots": what this replica loaded at start-up and what it writes. */
static json_t *snapshots_doc(struct http_server *srv)
{
  struct snapshot_loaded l;
  struct snapshot_writer_stats w;
  char at[UTIL_TIME_LEN];
  json_t *loaded = json_null(), *last = json_null();
  status_reader_loaded(srv->deps.reader, &l);
  snapshot_writer_stats(srv->deps.snapshots, &w);
  if(l.id[0])
    loaded = json_pack("{s:s, s:I, s:I, s:I, s:f, s:s?}", "snapshot", l.id, "status_offset",
                       (json_int_t)l.status_offset, "tasks", (json_int_t)l.tasks, "events",
                       (json_int_t)l.events, "seconds", l.seconds, "written_at",
                       l.written_ms ? util_format_time(l.written_ms, at) : NULL);
  if(w.written)
    last = json_pack("{s:s, s:I, s:I, s:f}", "at", util_format_time(w.last_ms, at),
                     "status_offset", (json_int_t)w.last_status_offset, "tasks",
                     (json_int_t)w.last_tasks, "seconds", w.last_seconds);
  return json_pack("{s:b, s:b, s:I, s:I, s:o, s:o}", "enabled", srv->deps.snapshots != NULL,
                   "writer", w.holder, "written", (json_int_t)w.written, "failed",
                   (json_int_t)w.failed, "last_written", last, "loaded", loaded);
}

int http_handle_health(struct mg_connection *conn, struct http_server *srv)
{
  int pub = publisher_ready(srv->deps.publisher), rd = status_reader_ready(srv->deps.reader);
  int ready = http_is_ready(srv);
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
  if(doc) {
    json_object_set_new(json_object_get(doc, "status_stream"), "last_event_age_seconds",
                        last ? json_real((double)(util_now_ms() - last) / 1000.0) : json_null());
    json_object_set_new(doc, "snapshots", snapshots_doc(srv));
  }
  return http_reply(conn, ready ? 200 : 503, doc, NULL, NULL);
}
