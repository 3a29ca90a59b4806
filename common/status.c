/* Status events (DESIGN §3) and the rule that a task's status only moves forward. */
#include "status.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

static const char *const NAMES[] = {"PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE",
                                     "CANCELLED", "SCHEDULED", "RECEIPT"};
static const char *const DELIVERY_NAMES[DELIVERY_STATES] = {"",          "sent", "server_ack",
                                                            "delivered", "read", "error"};

const char *delivery_name(enum delivery_state s)
{
  return (unsigned)s < DELIVERY_STATES ? DELIVERY_NAMES[s] : "";
}

int delivery_from_name(const char *name, enum delivery_state *out)
{
  for(int i = 1; i < DELIVERY_STATES; i++)
    if(!strcmp(name, DELIVERY_NAMES[i])) {
      *out = (enum delivery_state)i;
      return 0;
    }
  return -1;
}

const char *status_name(enum task_status s)
{
  return NAMES[s];
}

int status_from_name(const char *name, enum task_status *out)
{
  for(size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++)
    if(!strcmp(name, NAMES[i])) {
      *out = (enum task_status)i;
      return 0;
    }
  return -1;
}

int64_t status_rank(enum task_status s, int attempt)
{
  /* Attempt n goes STARTED then RETRY, and attempt n+1 starts after that RETRY. */
  switch(s) {
  case TASK_PENDING:
  case TASK_SCHEDULED: return 0; /* both say "accepted, not yet taken" */
  case TASK_STARTED: return (int64_t)attempt * 2 + 1;
  case TASK_RETRY: return (int64_t)attempt * 2 + 2;
  case TASK_SUCCESS:
  case TASK_FAILURE: return STATUS_RANK_FINAL;
  case TASK_CANCELLED: return STATUS_RANK_FINAL - 1;
  case TASK_RECEIPT: return -1;
  }
  return 0;
}

void status_pending_event(const struct job *job, struct status_event *ev)
{
  memset(ev, 0, sizeof *ev);
  memcpy(ev->task_id, job->task_id, UTIL_UUID_LEN);
  ev->status = job->send_at_ms > job->created_at_ms ? TASK_SCHEDULED : TASK_PENDING;
  ev->generation = job->generation;
  ev->at_ms = ev->created_at_ms = job->created_at_ms;
  ev->phone = (char *)job->phone;
  ev->instance = job->instance_name;
  ev->callback_url = job->callback_url;
  ev->tenant = job->tenant;
  ev->request_id = job->request_id;
  ev->idempotency_key = job->idempotency_key;
  if(job->idempotency_key)
    ev->request_hash = job_request_hash(job);
}

int64_t status_rank_in(enum task_status s, int attempt, int generation)
{
  return ((int64_t)generation << 40) + status_rank(s, attempt);
}

static int set_str(json_t *o, const char *key, const char *v)
{
  return v ? json_object_set_new(o, key, json_string(v)) : 0;
}

static int set_time(json_t *o, const char *key, int64_t ms)
{
  char buf[UTIL_TIME_LEN];
  return ms ? json_object_set_new(o, key, json_string(util_format_time(ms, buf))) : 0;
}

char *status_event_encode(const struct status_event *ev, size_t *len)
{
  char at[UTIL_TIME_LEN];
  json_t *o = json_pack("{s:i, s:s, s:i, s:s}", "v", STATUS_SCHEMA_VERSION, "status",
                        status_name(ev->status), "attempt", ev->attempt, "at",
                        util_format_time(ev->at_ms, at));
  char *out = NULL;
  if(!o)
    return NULL;
  if(ev->task_id[0] && json_object_set_new(o, "task_id", json_string(ev->task_id)))
    goto done;
  if(ev->status == TASK_RECEIPT) {
    /* A receipt names the message; the task is found by it when task_id is missing. */
    if(set_str(o, "evolution_key", ev->evolution_key) ||
       set_str(o, "delivery", delivery_name(ev->delivery)) || set_str(o, "instance", ev->instance))
      goto done;
    goto dump;
  }
  if((ev->generation && json_object_set_new(o, "generation", json_integer(ev->generation))) ||
     set_time(o, "created_at", ev->created_at_ms) || set_str(o, "phone", ev->phone) ||
     set_str(o, "instance", ev->instance) || set_str(o, "callback_url", ev->callback_url) ||
     set_str(o, "idempotency_key", ev->idempotency_key) ||
     set_time(o, "next_retry_at", ev->next_retry_at_ms))
    goto done;
  if(set_str(o, "tenant", ev->tenant) || set_str(o, "request_id", ev->request_id))
    goto done;
  if(ev->request_hash) {
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)ev->request_hash);
    if(json_object_set_new(o, "request_hash", json_string(hex)))
      goto done;
  }
  if(ev->evolution_key) {
    json_t *r = json_pack("{s:b, s:s?, s:s}", "success", 1, "phone", ev->phone, "evolution_key",
                          ev->evolution_key);
    if(!r || (ev->reconciled && json_object_set_new(r, "reconciled", json_true())) ||
       json_object_set_new(o, "result", r))
      goto done;
  }
  if(ev->error_code) {
    json_t *e = json_pack("{s:s, s:s}", "code", ev->error_code, "message",
                          ev->error_message ? ev->error_message : "");
    if(!e || json_object_set_new(o, "error", e))
      goto done;
  }
dump:
  out = json_dumps(o, JSON_COMPACT);
  if(out)
    *len = strlen(out);
done:
  json_decref(o);
  return out;
}

char *status_callback_body(const struct status_event *ev, char id[STATUS_EVENT_ID_LEN],
                           size_t *len)
{
  char at[UTIL_TIME_LEN];
  int receipt = ev->status == TASK_RECEIPT;
  json_t *o;
  char *out = NULL;
  if(receipt)
    snprintf(id, STATUS_EVENT_ID_LEN, "%s.delivery.%s", ev->task_id, delivery_name(ev->delivery));
  else
    snprintf(id, STATUS_EVENT_ID_LEN, "%s.%s.%d.%d", ev->task_id, status_name(ev->status),
             ev->attempt, ev->generation);
  o = json_pack("{s:s, s:s, s:s, s:s}", "event_id", id, "type",
                receipt ? "task.delivery" : "task.status", "task_id", ev->task_id, "at",
                util_format_time(ev->at_ms, at));
  if(!o)
    return NULL;
  if(receipt) {
    if(set_str(o, "delivery", delivery_name(ev->delivery)) ||
       set_str(o, "evolution_key", ev->evolution_key))
      goto done;
  }
  else {
    if(json_object_set_new(o, "status", json_string(status_name(ev->status))) ||
       json_object_set_new(o, "attempt", json_integer(ev->attempt)) ||
       set_time(o, "next_retry_at", ev->next_retry_at_ms))
      goto done;
    if(ev->evolution_key &&
       json_object_set_new(o, "result",
                           ev->reconciled ? json_pack("{s:s, s:b}", "evolution_key",
                                                      ev->evolution_key, "reconciled", 1)
                                          : json_pack("{s:s}", "evolution_key", ev->evolution_key)))
      goto done;
    if(ev->error_code &&
       json_object_set_new(o, "error", json_pack("{s:s, s:s}", "code", ev->error_code, "message",
                                                 ev->error_message ? ev->error_message : "")))
      goto done;
  }
  out = json_dumps(o, JSON_COMPACT);
  if(out)
    *len = strlen(out);
done:
  json_decref(o);
  return out;
}

void status_event_clear(struct status_event *ev)
{
  free(ev->phone);
  free(ev->instance);
  free(ev->callback_url);
  free(ev->evolution_key);
  free(ev->error_code);
  free(ev->error_message);
  free(ev->idempotency_key);
  free(ev->tenant);
  free(ev->request_id);
  memset(ev, 0, sizeof *ev);
}

static int dup_opt(const char *src, char **dst)
{
  if(!src)
    return 0;
  *dst = strdup(src);
  return *dst ? 0 : -1;
}

/* Decodes one event object (borrowed); fills *ev or returns -1 with a reason. */
static int decode_object(json_t *root, struct status_event *ev, char *err, size_t errlen)
{
  json_error_t je;
  const char *task_id = NULL, *status, *at, *callback = NULL, *delivery = NULL,
             *receipt_key = NULL, *created = NULL, *phone = NULL, *idem = NULL,
             *instance = NULL, *next = NULL, *key = NULL, *code = NULL, *emsg = NULL, *hash = NULL;
  const char *tenant;
  json_int_t version, attempt, generation = 0;
  int reconciled = 0;
  memset(ev, 0, sizeof *ev);
  if(json_unpack_ex(root, &je, 0, "{s:I, s?s, s:s, s:I, s:s, s?I, s?s, s?s, s?s, s?s, s?s, s?s, s?{s?s, s?b}, s?{s?s, s?s}, s?s, s?s, s?s}",
                    "v", &version, "task_id", &task_id, "status", &status, "attempt", &attempt,
                    "at", &at, "generation", &generation, "created_at", &created, "phone", &phone, "instance", &instance, "idempotency_key",
                    &idem, "request_hash", &hash, "next_retry_at", &next, "result", "evolution_key", &key, "reconciled", &reconciled, "error",
                    "code", &code, "message", &emsg, "callback_url", &callback, "delivery",
                    &delivery, "evolution_key", &receipt_key)) {
    snprintf(err, errlen, "bad status event: %s", je.text);
    goto fail;
  }
  if(version != STATUS_SCHEMA_VERSION || status_from_name(status, &ev->status) ||
     (task_id ? !util_is_uuid(task_id) : ev->status != TASK_RECEIPT) || attempt < 0 || attempt > 1000000 ||
     generation < 0 || generation > STATUS_MAX_GENERATION ||
     util_parse_time(at, &ev->at_ms) || (created && util_parse_time(created, &ev->created_at_ms)) ||
     (next && util_parse_time(next, &ev->next_retry_at_ms))) {
    snprintf(err, errlen, "bad status event: a field is out of range");
    goto fail;
  }
  if(hash) {
    char *end;
    unsigned long long h = strtoull(hash, &end, 16);
    if(*end || end == hash || strlen(hash) != 16) {
      snprintf(err, errlen, "bad status event: request_hash is not 16 hex digits");
      goto fail;
    }
    ev->request_hash = h;
  }
  if(ev->status == TASK_RECEIPT) {
    if(!receipt_key || !*receipt_key || strlen(receipt_key) > STATUS_KEY_MAX || !delivery ||
       delivery_from_name(delivery, &ev->delivery)) {
      snprintf(err, errlen, "bad status event: a receipt needs evolution_key and delivery");
      goto fail;
    }
    key = receipt_key;
  }
  if(callback && strlen(callback) > STATUS_URL_MAX) {
    snprintf(err, errlen, "bad status event: callback_url is too long");
    goto fail;
  }
  if(task_id)
    memcpy(ev->task_id, task_id, UTIL_UUID_LEN);
  ev->attempt = (int)attempt;
  ev->generation = (int)generation;
  ev->reconciled = reconciled && key;
  if(instance && job_check_instance(instance)) {
    snprintf(err, errlen, "bad status event: instance is not an instance name");
    goto fail;
  }
  /* Read apart from the unpack above: events of older versions have none. */
  tenant = json_string_value(json_object_get(root, "tenant"));
  if(tenant && job_check_instance(tenant)) {
    snprintf(err, errlen, "bad status event: tenant is not a tenant name");
    goto fail;
  }
  {
    /* One that is not a request id is dropped: the event still counts. */
    const char *rid = json_string_value(json_object_get(root, "request_id"));
    if(rid && trace_request_id_ok(rid) && dup_opt(rid, &ev->request_id)) {
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
  }
  if(dup_opt(tenant, &ev->tenant) || dup_opt(phone, &ev->phone) ||
     dup_opt(instance, &ev->instance) ||
     dup_opt(callback, &ev->callback_url) || dup_opt(idem, &ev->idempotency_key) ||
     dup_opt(key, &ev->evolution_key) || dup_opt(code, &ev->error_code) ||
     dup_opt(emsg, &ev->error_message)) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  return 0;
fail:
  status_event_clear(ev);
  return -1;
}

int status_event_decode(const char *body, size_t len, struct status_event *ev, char *err,
                        size_t errlen)
{
  json_error_t je;
  json_t *root = json_loadb(body, len, 0, &je);
  int rc;
  if(!root) {
    memset(ev, 0, sizeof *ev);
    snprintf(err, errlen, "not JSON: line %d column %d: %s", je.line, je.column, je.text);
    return -1;
  }
  rc = decode_object(root, ev, err, errlen);
  json_decref(root);
  return rc;
}

int status_message_decode(const char *body, size_t len, status_event_fn fn, void *ctx,
                          char *err, size_t errlen)
{
  json_error_t je;
  json_t *root = json_loadb(body, len, 0, &je), *events;
  struct status_event ev;
  int bad = 0;
  if(!root) {
    snprintf(err, errlen, "not JSON: line %d column %d: %s", je.line, je.column, je.text);
    return -1;
  }
  events = json_object_get(root, "events");
  if(json_is_array(events)) {
    size_t i;
    json_t *item;
    json_array_foreach(events, i, item) {
      if(decode_object(item, &ev, err, errlen)) {
        bad++;
        continue;
      }
      fn(&ev, ctx);
      status_event_clear(&ev);
    }
  }
  else if(decode_object(root, &ev, err, errlen))
    bad++;
  else {
    fn(&ev, ctx);
    status_event_clear(&ev);
  }
  json_decref(root);
  return bad ? -1 : 0;
}

char *status_batch_join(char *const *bodies, const size_t *lens, size_t n, size_t *len)
{
  static const char head[] = "{\"v\":1,\"events\":[", tail[] = "]}";
  size_t total = sizeof head - 1 + sizeof tail - 1 + (n ? n - 1 : 0), off;
  char *out;
  for(size_t i = 0; i < n; i++)
    total += lens[i];
  out = malloc(total + 1);
  if(!out)
    return NULL;
  memcpy(out, head, sizeof head - 1);
  off = sizeof head - 1;
  for(size_t i = 0; i < n; i++) {
    if(i)
      out[off++] = ',';
    memcpy(out + off, bodies[i], lens[i]);
    off += lens[i];
  }
  memcpy(out + off, tail, sizeof tail);
  *len = total;
  return out;
}
