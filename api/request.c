/* Validation of the POST bodies (/messages, /messages/batch, /dead-letters/redrive), separate
 * from HTTP so they can be unit tested and fuzzed. */
#include "request.h"

#include "cfg.h"
#include "util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(struct request_error *err, int status, const char *code, const char *field,
                const char *message)
{
  err->status = status;
  err->code = code;
  snprintf(err->field, sizeof err->field, "%s", field ? field : "");
  snprintf(err->message, sizeof err->message, "%s", message);
  return -1;
}

int request_too_deep(const char *s, size_t len)
{
  int depth = 0, in_string = 0;
  for(size_t i = 0; i < len; i++) {
    char c = s[i];
    if(in_string) {
      if(c == '\\')
        i++;
      else if(c == '"')
        in_string = 0;
    }
    else if(c == '"')
      in_string = 1;
    else if(c == '{' || c == '[') {
      if(++depth > REQUEST_MAX_DEPTH)
        return 1;
    }
    else if(c == '}' || c == ']')
      depth--;
  }
  return 0;
}

static int field_error(struct request_error *err, const char *field, enum job_field_error fe)
{
  char msg[256];
  snprintf(msg, sizeof msg, "%s %s", field, job_field_error_text(fe));
  return fail(err, 422, fe == JOB_FIELD_MISSING ? "missing_field" : "invalid_field", field, msg);
}

/* Reads the optional expires_at (RFC 3339) or ttl (a duration such as "10m", or seconds) into
 * job->expires_at_ms. Returns 0, or -1 with *err filled. */
static int parse_expiry(json_t *root, struct job *job, struct request_error *err)
{
  json_t *at = json_object_get(root, "expires_at"), *ttl = json_object_get(root, "ttl");
  int64_t now = util_now_ms(), when = 0;
  if(json_is_null(at))
    at = NULL;
  if(json_is_null(ttl))
    ttl = NULL;
  if(at && ttl)
    return fail(err, 422, "invalid_field", "ttl", "give expires_at or ttl, not both");
  if(at) {
    if(!json_is_string(at) || util_parse_time(json_string_value(at), &when))
      return fail(err, 422, "invalid_field", "expires_at",
                  "expires_at must be an RFC 3339 time, e.g. 2026-11-28T12:00:00Z");
  }
  else if(ttl) {
    uint64_t ms;
    if(json_is_integer(ttl) && json_integer_value(ttl) > 0 &&
       json_integer_value(ttl) <= REQUEST_MAX_TTL_MS / 1000)
      ms = (uint64_t)json_integer_value(ttl) * 1000;
    else if(!json_is_string(ttl) || cfg_parse_duration(json_string_value(ttl), &ms) || !ms ||
            ms > REQUEST_MAX_TTL_MS)
      return fail(err, 422, "invalid_field", "ttl",
                  "ttl must be a duration such as \"90s\" or \"10m\" (or seconds), at most "
                  "30 days");
    when = now + (int64_t)ms;
  }
  else
    return 0;
  if(when <= now)
    return fail(err, 422, "invalid_field", at ? "expires_at" : "ttl",
                "the message would already be expired");
  if(when - now > REQUEST_MAX_TTL_MS)
    return fail(err, 422, "invalid_field", "expires_at", "expires_at is more than 30 days away");
  job->expires_at_ms = when;
  return 0;
}

/* Reads the optional send_at (RFC 3339, in the future, at most 30 days ahead, before any
 * expiry) into job->send_at_ms. Returns 0, or -1 with *err filled (job->send_at_ms
 * untouched). */
static int parse_send_at(json_t *root, struct job *job, struct request_error *err)
{
  json_t *at = json_object_get(root, "send_at");
  int64_t now = util_now_ms(), when;
  if(!at || json_is_null(at))
    return 0;
  if(!json_is_string(at) || util_parse_time(json_string_value(at), &when))
    return fail(err, 422, "invalid_field", "send_at",
                "send_at must be an RFC 3339 time, e.g. 2026-11-28T12:00:00Z");
  if(when <= now)
    return fail(err, 422, "invalid_field", "send_at", "send_at is in the past");
  if(when - now > REQUEST_MAX_TTL_MS)
    return fail(err, 422, "invalid_field", "send_at", "send_at is more than 30 days away");
  if(job->expires_at_ms && job->expires_at_ms <= when)
    return fail(err, 422, "invalid_field", "send_at",
                "the message would expire before its send_at");
  job->send_at_ms = when;
  return 0;
}

/* Parses a body into a JSON value: empty, too deep or malformed bodies are refused (400). */
static json_t *parse_body(const char *body, size_t len, struct request_error *err)
{
  json_error_t je;
  json_t *root;
  if(len == 0) {
    fail(err, 400, "invalid_json", NULL, "the request body is empty");
    return NULL;
  }
  if(request_too_deep(body, len)) {
    fail(err, 400, "invalid_json", NULL, "the JSON nests too deeply");
    return NULL;
  }
  /* JSON_DECODE_ANY: a scalar root is valid JSON of the wrong shape (422), not malformed (400). */
  root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
  if(!root) {
    char detail[256];
    snprintf(detail, sizeof detail, "malformed JSON at line %d, column %d: %s", je.line,
             je.column, je.text);
    fail(err, 400, "invalid_json", NULL, detail);
  }
  return root;
}

/* Names a field inside a batch item: "messages[3].phone"; prefix "" for a single message. */
static const char *at(char *buf, size_t len, const char *prefix, const char *field)
{
  snprintf(buf, len, "%s%s", prefix, field);
  return buf;
}

/* Validates one message object; field names in errors get `prefix` in front. */
static int validate_message(json_t *root, const char *prefix, const char *default_instance,
                            struct job *job, struct request_error *err)
{
  json_t *phone, *message, *instance;
  const char *key;
  json_t *value;
  char norm[JOB_PHONE_LEN], name[64];
  enum job_field_error fe;
  const char *instance_name = default_instance, *callback = NULL;
  char *msg_copy = NULL, *inst_copy = NULL, *callback_copy = NULL;

  if(!json_is_object(root))
    return fail(err, 422, "invalid_body", *prefix ? at(name, sizeof name, prefix, "") : NULL,
                "a message must be a JSON object");
  json_object_foreach(root, key, value) {
    if(strcmp(key, "phone") && strcmp(key, "message") && strcmp(key, "instance_name") &&
       strcmp(key, "expires_at") && strcmp(key, "ttl") && strcmp(key, "send_at") &&
       strcmp(key, "callback_url")) {
      char field[64], msg[96];
      snprintf(field, sizeof field, "%s%.*s", prefix, (int)(60 - strlen(prefix)), key);
      snprintf(msg, sizeof msg, "unknown field %s", field);
      return fail(err, 422, "unknown_field", field, msg);
    }
  }
  phone = json_object_get(root, "phone");
  message = json_object_get(root, "message");
  instance = json_object_get(root, "instance_name");
  if(!phone || json_is_null(phone))
    return field_error(err, at(name, sizeof name, prefix, "phone"), JOB_FIELD_MISSING);
  if(!json_is_string(phone))
    return field_error(err, at(name, sizeof name, prefix, "phone"), JOB_FIELD_NOT_STRING);
  if((fe = job_normalize_phone(json_string_value(phone), norm)) != JOB_FIELD_OK)
    return field_error(err, at(name, sizeof name, prefix, "phone"), fe);
  if(!message || json_is_null(message))
    return field_error(err, at(name, sizeof name, prefix, "message"), JOB_FIELD_MISSING);
  if(!json_is_string(message))
    return field_error(err, at(name, sizeof name, prefix, "message"), JOB_FIELD_NOT_STRING);
  if((fe = job_check_message(json_string_value(message), json_string_length(message))) !=
     JOB_FIELD_OK)
    return field_error(err, at(name, sizeof name, prefix, "message"), fe);
  if(instance && !json_is_null(instance)) {
    if(!json_is_string(instance))
      return field_error(err, at(name, sizeof name, prefix, "instance_name"),
                         JOB_FIELD_NOT_STRING);
    instance_name = json_string_value(instance);
    if((fe = job_check_instance(instance_name)) != JOB_FIELD_OK)
      return field_error(err, at(name, sizeof name, prefix, "instance_name"), fe);
  }
  {
    /* Only the shape here: whether the host is allowed is the server's configuration
     * (callbacks.allow_hosts), checked by the caller. */
    json_t *cb = json_object_get(root, "callback_url");
    if(cb && !json_is_null(cb)) {
      if(!json_is_string(cb) || !json_string_length(cb) ||
         json_string_length(cb) > JOB_CALLBACK_URL_MAX)
        return fail(err, 422, "invalid_field", at(name, sizeof name, prefix, "callback_url"),
                    "callback_url must be an http:// or https:// URL of at most 2048 bytes");
      callback = json_string_value(cb);
    }
  }
  if(parse_expiry(root, job, err) || parse_send_at(root, job, err)) {
    job->expires_at_ms = 0;
    if(*prefix && err->field[0]) {
      char field[64];
      snprintf(field, sizeof field, "%s%s", prefix, err->field);
      snprintf(err->field, sizeof err->field, "%s", field);
    }
    return -1;
  }
  msg_copy = strdup(json_string_value(message));
  inst_copy = strdup(instance_name);
  callback_copy = callback ? strdup(callback) : NULL;
  if(!msg_copy || !inst_copy || (callback && !callback_copy)) {
    free(msg_copy);
    free(inst_copy);
    free(callback_copy);
    job->expires_at_ms = job->send_at_ms = 0;
    return fail(err, 503, "out_of_memory", NULL, "the server is out of memory");
  }
  memcpy(job->phone, norm, sizeof norm);
  job->message = msg_copy;
  job->instance_name = inst_copy;
  job->callback_url = callback_copy;
  return 0;
}

int request_parse_message(const char *body, size_t len, const char *default_instance,
                          struct job *job, struct request_error *err)
{
  json_t *root = parse_body(body, len, err);
  int rc;
  if(!root)
    return -1;
  if(!json_is_object(root))
    rc = fail(err, 422, "invalid_body", NULL, "the body must be a JSON object");
  else
    rc = validate_message(root, "", default_instance, job, err);
  json_decref(root);
  return rc;
}

int request_parse_batch(const char *body, size_t len, const char *default_instance,
                        size_t max_items, struct request_item **items, size_t *n,
                        struct request_error *err)
{
  json_t *root = parse_body(body, len, err), *list, *item;
  struct request_item *out = NULL;
  const char *key;
  json_t *value;
  size_t i, count;
  int rc = -1;
  if(!root)
    return -1;
  if(!json_is_object(root)) {
    fail(err, 422, "invalid_body", NULL, "the body must be a JSON object with \"messages\"");
    goto done;
  }
  json_object_foreach(root, key, value) {
    if(strcmp(key, "messages")) {
      char field[64], msg[96];
      snprintf(field, sizeof field, "%.60s", key);
      snprintf(msg, sizeof msg, "unknown field %s", field);
      fail(err, 422, "unknown_field", field, msg);
      goto done;
    }
  }
  list = json_object_get(root, "messages");
  if(!json_is_array(list)) {
    fail(err, 422, list ? "invalid_field" : "missing_field", "messages",
         "messages must be an array of message objects");
    goto done;
  }
  count = json_array_size(list);
  if(count == 0 || count > max_items) {
    char msg[96];
    snprintf(msg, sizeof msg, "messages must hold 1 to %zu items", max_items);
    fail(err, 422, "invalid_field", "messages", msg);
    goto done;
  }
  out = calloc(count, sizeof *out);
  if(!out) {
    fail(err, 503, "out_of_memory", NULL, "the server is out of memory");
    goto done;
  }
  json_array_foreach(list, i, item) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "messages[%zu].", i);
    out[i].ok = validate_message(item, prefix, default_instance, &out[i].job, &out[i].err) == 0;
  }
  *items = out;
  *n = count;
  rc = 0;
done:
  json_decref(root);
  return rc;
}

void request_items_free(struct request_item *items, size_t n)
{
  if(!items)
    return;
  for(size_t i = 0; i < n; i++) {
    free(items[i].job.message);
    free(items[i].job.instance_name);
    free(items[i].job.idempotency_key);
    free(items[i].job.callback_url);
    free(items[i].job.tenant);
  }
  free(items);
}

int request_parse_redrive(const char *body, size_t len, struct request_redrive *out,
                          struct request_error *err)
{
  struct request_redrive r = {.filter = {.max = DEAD_REDRIVE_DEFAULT}};
  json_error_t je;
  const char *key;
  json_t *v;
  char msg[160];
  if(request_too_deep(body, len))
    return fail(err, 400, "invalid_json", NULL, "the JSON nests too deeply");
  r.doc = len ? json_loadb(body, len, JSON_REJECT_DUPLICATES, &je) : json_object();
  if(!r.doc || !json_is_object(r.doc)) {
    int status = r.doc ? 422 : 400;
    json_decref(r.doc);
    return fail(err, status, status == 422 ? "invalid_body" : "invalid_json", NULL,
                "the body must be a JSON object");
  }
  json_object_foreach(r.doc, key, v) {
    const char *bad = NULL, *code = "invalid_field";
    if(!strcmp(key, "max")) {
      if(!json_is_integer(v) || json_integer_value(v) < 1 ||
         json_integer_value(v) > DEAD_REDRIVE_MAX)
        bad = "max must be an integer from 1 to 100000";
      else
        r.filter.max = (size_t)json_integer_value(v);
    }
    else if(!strcmp(key, "rate")) {
      double rate = json_is_number(v) ? json_number_value(v) : -1;
      if(rate != 0 && !(rate >= DEAD_RATE_MIN && rate <= DEAD_RATE_MAX))
        bad = "rate must be 0 (no limit) or 0.1 to 100000 jobs per second";
      else
        r.filter.rate = rate;
    }
    else if(!strcmp(key, "reason") || !strcmp(key, "instance")) {
      if(!json_is_string(v))
        bad = "must be a string";
      else if(!strcmp(key, "reason"))
        r.filter.reason = json_string_value(v);
      else
        r.filter.instance = json_string_value(v);
    }
    else if(!strcmp(key, "task_ids")) {
      size_t i;
      json_t *id;
      if(!json_is_array(v) || json_array_size(v) > DEAD_REDRIVE_MAX)
        bad = "task_ids must be an array of task ids";
      else if(!(r.task_ids = calloc(json_array_size(v) + 1, sizeof *r.task_ids)))
        bad = "out of memory";
      else
        json_array_foreach(v, i, id) {
          if(!json_is_string(id) || !util_is_uuid(json_string_value(id))) {
            bad = "task_ids must be an array of task ids";
            break;
          }
          r.task_ids[r.filter.n_task_ids++] = json_string_value(id);
        }
      r.filter.task_ids = r.task_ids;
    }
    else {
      bad = "unknown field";
      code = "unknown_field";
    }
    if(bad) {
      snprintf(msg, sizeof msg, "%.40s: %s", key, bad);
      fail(err, 422, code, key, msg);
      request_redrive_free(&r);
      return -1;
    }
  }
  /* The pause comes between moves, so max jobs take (max - 1) / rate seconds. */
  if(r.filter.rate > 0 &&
     (double)(r.filter.max - 1) / r.filter.rate * 1000.0 > REQUEST_REDRIVE_MAX_MS) {
    snprintf(msg, sizeof msg,
             "at %g jobs per second, %zu jobs take longer than %d s: raise rate, lower max, or "
             "use msg-consumer --redrive",
             r.filter.rate, r.filter.max, REQUEST_REDRIVE_MAX_MS / 1000);
    fail(err, 422, "invalid_field", "rate", msg);
    request_redrive_free(&r);
    return -1;
  }
  *out = r;
  return 0;
}

void request_redrive_free(struct request_redrive *r)
{
  if(!r)
    return;
  free(r->task_ids);
  json_decref(r->doc);
  r->task_ids = NULL;
  r->doc = NULL;
}
