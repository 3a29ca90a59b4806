/* The job message schema (DESIGN §3) and the field rules both daemons enforce on it. */
#include "job.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"
#include "util.h"

const char *job_field_error_text(enum job_field_error e)
{
  switch(e) {
  case JOB_FIELD_OK: return "ok";
  case JOB_FIELD_MISSING: return "is required";
  case JOB_FIELD_NOT_STRING: return "must be a string";
  case JOB_PHONE_BAD_CHAR:
    return "must contain only digits, an optional leading '+', and spaces, dashes, dots or "
           "parentheses";
  case JOB_PHONE_LENGTH: return "must have 8 to 15 digits";
  case JOB_PHONE_LEADING_ZERO: return "must not start with 0 (use the international form)";
  case JOB_MESSAGE_EMPTY: return "must not be empty";
  case JOB_MESSAGE_BLANK: return "must not be only whitespace";
  case JOB_MESSAGE_TOO_LONG: return "must be at most 4096 characters";
  case JOB_MESSAGE_BAD_UTF8: return "must be valid UTF-8 without NUL characters";
  case JOB_INSTANCE_BAD: return "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'";
  case JOB_IDEMPOTENCY_KEY_BAD: return "must be 1 to 255 printable ASCII characters";
  }
  return "is invalid";
}

enum job_field_error job_normalize_phone(const char *in, char out[JOB_PHONE_LEN])
{
  char digits[JOB_PHONE_MAX_DIGITS + 1];
  size_t n = 0;
  int seen_plus = 0, seen_digit = 0;
  for(const char *p = in; *p; p++) {
    char c = *p;
    if(c == ' ' || c == '-' || c == '.' || c == '(' || c == ')')
      continue;
    if(c == '+') {
      /* Only one '+', and only before the first digit. */
      if(seen_plus || seen_digit)
        return JOB_PHONE_BAD_CHAR;
      seen_plus = 1;
      continue;
    }
    if(c < '0' || c > '9')
      return JOB_PHONE_BAD_CHAR;
    seen_digit = 1;
    if(n == JOB_PHONE_MAX_DIGITS)
      return JOB_PHONE_LENGTH;
    digits[n++] = c;
  }
  if(n < JOB_PHONE_MIN_DIGITS)
    return JOB_PHONE_LENGTH;
  if(digits[0] == '0')
    return JOB_PHONE_LEADING_ZERO;
  out[0] = '+';
  memcpy(out + 1, digits, n);
  out[n + 1] = '\0';
  return JOB_FIELD_OK;
}

/* Unicode White_Space code points, so a message of only no-break or ideographic spaces is
 * refused like one of only ASCII spaces. */
static int is_space_cp(unsigned cp)
{
  return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

enum job_field_error job_check_message(const char *text, size_t len)
{
  const unsigned char *s = (const unsigned char *)text;
  size_t chars = 0, off = 0;
  int visible = 0;
  if(len == 0)
    return JOB_MESSAGE_EMPTY;
  while(off < len) {
    unsigned cp;
    size_t n = util_utf8_next(s + off, len - off, &cp);
    if(n == 0 || cp == 0)
      return JOB_MESSAGE_BAD_UTF8;
    off += n;
    chars++;
    if(!is_space_cp(cp))
      visible = 1;
  }
  if(chars > JOB_MESSAGE_MAX_CHARS)
    return JOB_MESSAGE_TOO_LONG;
  return visible ? JOB_FIELD_OK : JOB_MESSAGE_BLANK;
}

enum job_field_error job_check_instance(const char *name)
{
  size_t n = 0;
  for(const char *p = name; *p; p++, n++) {
    char c = *p;
    if(!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '_' || c == '-'))
      return JOB_INSTANCE_BAD;
  }
  if(n == 0 || n > JOB_INSTANCE_MAX || !strcmp(name, ".") || !strcmp(name, ".."))
    return JOB_INSTANCE_BAD;
  return JOB_FIELD_OK;
}

enum job_field_error job_check_idempotency_key(const char *key)
{
  size_t n = 0;
  for(const char *p = key; *p; p++, n++)
    if(*p < 0x20 || *p > 0x7e)
      return JOB_IDEMPOTENCY_KEY_BAD;
  return n >= 1 && n <= JOB_IDEMPOTENCY_KEY_MAX ? JOB_FIELD_OK : JOB_IDEMPOTENCY_KEY_BAD;
}

char *job_encode(const struct job *job, size_t *len)
{
  char created[UTIL_TIME_LEN];
  json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s}", "v", JOB_SCHEMA_VERSION, "task_id",
                        job->task_id, "phone", job->phone, "message", job->message,
                        "instance_name", job->instance_name, "created_at",
                        util_format_time(job->created_at_ms, created));
  char *out;
  if(!o)
    return NULL;
  if((job->idempotency_key &&
      json_object_set_new(o, "idempotency_key", json_string(job->idempotency_key))) ||
     (job->expires_at_ms &&
      json_object_set_new(o, "expires_at",
                          json_string(util_format_time(job->expires_at_ms, created)))) ||
     (job->send_at_ms &&
      json_object_set_new(o, "send_at", json_string(util_format_time(job->send_at_ms, created)))) ||
     (job->generation && json_object_set_new(o, "generation", json_integer(job->generation))) ||
     (job->callback_url &&
      json_object_set_new(o, "callback_url", json_string(job->callback_url))) ||
     (job->tenant && json_object_set_new(o, "tenant", json_string(job->tenant))) ||
     (job->request_id && json_object_set_new(o, "request_id", json_string(job->request_id))) ||
     (job->traceparent &&
      json_object_set_new(o, "traceparent", json_string(job->traceparent)))) {
    json_decref(o);
    return NULL;
  }
  out = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if(out)
    *len = strlen(out);
  return out;
}

void job_free(struct job *job)
{
  if(!job)
    return;
  free(job->message);
  free(job->instance_name);
  free(job->idempotency_key);
  free(job->callback_url);
  free(job->tenant);
  free(job->request_id);
  free(job->traceparent);
  free(job);
}

int job_decode(const char *body, size_t len, struct job **out, char *err, size_t errlen)
{
  json_error_t je;
  json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
  struct job *job = NULL;
  const char *task_id = NULL, *phone = NULL, *message = NULL, *instance = NULL,
             *created = NULL, *idem = NULL, *expires = NULL, *send_at = NULL,
             *callback = NULL, *tenant;
  size_t message_len = 0;
  json_int_t version = 0, generation = 0;
  enum job_field_error fe;
  if(!root) {
    snprintf(err, errlen, "not JSON: line %d column %d: %s", je.line, je.column, je.text);
    return -1;
  }
  if(json_unpack_ex(root, &je, 0, "{s:I, s:s, s:s, s:s%, s:s, s:s, s?s, s?s, s?s, s?I, s?s}", "v", &version,
                    "task_id", &task_id, "phone", &phone, "message", &message, &message_len,
                    "instance_name", &instance, "created_at", &created, "idempotency_key",
                    &idem, "expires_at", &expires, "send_at", &send_at, "generation",
                    &generation, "callback_url", &callback)) {
    snprintf(err, errlen, "bad job: %s", je.text);
    goto fail;
  }
  if(version != JOB_SCHEMA_VERSION) {
    snprintf(err, errlen, "unsupported job version %lld", (long long)version);
    goto fail;
  }
  job = calloc(1, sizeof *job);
  if(!job) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if(!util_is_uuid(task_id)) {
    snprintf(err, errlen, "task_id is not a UUID");
    goto fail;
  }
  memcpy(job->task_id, task_id, UTIL_UUID_LEN);
  if((fe = job_normalize_phone(phone, job->phone)) != JOB_FIELD_OK) {
    snprintf(err, errlen, "phone %s", job_field_error_text(fe));
    goto fail;
  }
  if((fe = job_check_message(message, message_len)) != JOB_FIELD_OK) {
    snprintf(err, errlen, "message %s", job_field_error_text(fe));
    goto fail;
  }
  if((fe = job_check_instance(instance)) != JOB_FIELD_OK) {
    snprintf(err, errlen, "instance_name %s", job_field_error_text(fe));
    goto fail;
  }
  if(idem && (fe = job_check_idempotency_key(idem)) != JOB_FIELD_OK) {
    snprintf(err, errlen, "idempotency_key %s", job_field_error_text(fe));
    goto fail;
  }
  if(util_parse_time(created, &job->created_at_ms)) {
    snprintf(err, errlen, "created_at is not an RFC 3339 time");
    goto fail;
  }
  if(expires && util_parse_time(expires, &job->expires_at_ms)) {
    snprintf(err, errlen, "expires_at is not an RFC 3339 time");
    goto fail;
  }
  if(generation < 0 || generation > 1000000) {
    snprintf(err, errlen, "generation out of range");
    goto fail;
  }
  job->generation = (int)generation;
  if(send_at && util_parse_time(send_at, &job->send_at_ms)) {
    snprintf(err, errlen, "send_at is not an RFC 3339 time");
    goto fail;
  }
  /* Where it points is checked against the allow-list by whoever uses it. */
  if(callback && (!*callback || strlen(callback) > JOB_CALLBACK_URL_MAX)) {
    snprintf(err, errlen, "callback_url is empty or too long");
    goto fail;
  }
  /* Read apart from the unpack above, so a job without one stays what it was. */
  tenant = json_string_value(json_object_get(root, "tenant"));
  if(tenant && job_check_instance(tenant) != JOB_FIELD_OK) {
    snprintf(err, errlen, "tenant is not a tenant name");
    goto fail;
  }
  job->tenant = tenant ? strdup(tenant) : NULL;
  /* The request's id and trace context ride in the body, so every republish (retry, hop,
   * lane, park, redrive) keeps them as they are. One that is not valid is dropped, not fatal. */
  {
    const char *rid = json_string_value(json_object_get(root, "request_id"));
    const char *tp = json_string_value(json_object_get(root, "traceparent"));
    if(rid && trace_request_id_ok(rid))
      job->request_id = strdup(rid);
    if(tp && trace_parent_ok(tp))
      job->traceparent = strdup(tp);
    if((rid && trace_request_id_ok(rid) && !job->request_id) ||
       (tp && trace_parent_ok(tp) && !job->traceparent)) {
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
  }
  job->message = strdup(message);
  job->callback_url = callback ? strdup(callback) : NULL;
  job->instance_name = strdup(instance);
  job->idempotency_key = idem ? strdup(idem) : NULL;
  if(!job->message || !job->instance_name || (idem && !job->idempotency_key) ||
     (callback && !job->callback_url) || (tenant && !job->tenant)) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  json_decref(root);
  *out = job;
  return 0;
fail:
  job_free(job);
  json_decref(root);
  return -1;
}

void job_phone_digits(const char *phone, char out[JOB_PHONE_LEN])
{
  size_t n = 0;
  for(const char *p = phone; *p && n < JOB_PHONE_LEN - 1; p++)
    if(*p >= '0' && *p <= '9')
      out[n++] = *p;
  out[n] = '\0';
}

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
  for(size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

uint64_t job_request_hash(const struct job *job)
{
  /* The NUL separators keep ("ab", "c") apart from ("a", "bc"). */
  uint64_t h = 14695981039346656037ULL;
  h = fnv1a(h, job->phone, strlen(job->phone) + 1);
  h = fnv1a(h, job->message, strlen(job->message) + 1);
  h = fnv1a(h, job->instance_name, strlen(job->instance_name) + 1);
  return h ? h : 1;
}
