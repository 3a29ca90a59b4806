/* The job message schema (DESIGN §3) and the field rules both daemons enforce on it. */
#ifndef MSG_JOB_H
#define MSG_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define JOB_SCHEMA_VERSION 1
#define JOB_MESSAGE_MAX_CHARS 4096
#define JOB_INSTANCE_MAX 64
#define JOB_IDEMPOTENCY_KEY_MAX 255
#define JOB_CALLBACK_URL_MAX 2048
/* A tenant is named like an instance: [A-Za-z0-9._-]{1,64}. */
#define JOB_TENANT_MAX 64
#define JOB_PHONE_MIN_DIGITS 8
#define JOB_PHONE_MAX_DIGITS 15
/* "+" and 15 digits and NUL. */
#define JOB_PHONE_LEN 17

/* One accepted send request. All strings are owned by the struct; free with job_free. */
struct job {
  char task_id[UTIL_UUID_LEN];
  char phone[JOB_PHONE_LEN]; /* canonical E.164 form, "+52123456789" */
  char *message;
  char *instance_name;
  char *idempotency_key; /* NULL when the request had none */
  int64_t created_at_ms;
  int64_t expires_at_ms; /* 0: never; after it the job must not be sent */
  int64_t send_at_ms;    /* 0: now; before it the job is held in delay queues, not sent */
  int generation;        /* 0, then +1 each time the parked job is redriven */
  char *callback_url;    /* NULL, or where status callbacks go (allow-listed by the api) */
  char *tenant;          /* NULL, or the tenant of the API key that sent it (api.keys) */
  char *request_id;      /* NULL, or the X-Request-Id of the request (trace.h) */
  char *traceparent;     /* NULL, or the W3C traceparent of the request (trace.h) */
};

/* Why a field was refused; job_field_error_text gives a sentence for each. */
enum job_field_error {
  JOB_FIELD_OK = 0,
  JOB_FIELD_MISSING,
  JOB_FIELD_NOT_STRING,
  JOB_PHONE_BAD_CHAR,
  JOB_PHONE_LENGTH,
  JOB_PHONE_LEADING_ZERO,
  JOB_MESSAGE_EMPTY,
  JOB_MESSAGE_BLANK,
  JOB_MESSAGE_TOO_LONG,
  JOB_MESSAGE_BAD_UTF8,
  JOB_INSTANCE_BAD,
  JOB_IDEMPOTENCY_KEY_BAD
};

/* A sentence explaining `e` (static storage). */
const char *job_field_error_text(enum job_field_error e);

/* Normalises a phone number: spaces, dashes, dots and parentheses are dropped; what remains must
 * be an optional '+' then 8-15 digits not starting with 0. Writes "+<digits>" into
 * out[JOB_PHONE_LEN] only on success. */
enum job_field_error job_normalize_phone(const char *in, char out[JOB_PHONE_LEN]);

/* Checks a message text of `len` bytes: valid UTF-8 without NUL, 1-4096 characters, not only
 * whitespace. */
enum job_field_error job_check_message(const char *text, size_t len);

/* Checks an instance name: [A-Za-z0-9._-]{1,64}. It becomes part of an Evolution API URL path,
 * so nothing else is let through (no escaping, no "..", no "/"). "." and ".." are refused. */
enum job_field_error job_check_instance(const char *name);

/* Checks an Idempotency-Key value: 1-255 printable ASCII characters. */
enum job_field_error job_check_idempotency_key(const char *key);

/* Encodes a job as its JSON body. Returns a malloc'd NUL-terminated string (caller frees with
 * free) and its length in *len, or NULL when out of memory. */
char *job_encode(const struct job *job, size_t *len);

/* Decodes and validates a job body of `len` bytes with the same field rules the api applies, so
 * a job from any producer is held to them. On success returns 0 and a new job in *out (caller
 * frees with job_free). On failure returns -1 and writes a reason (never the message text) into
 * err[errlen]. */
int job_decode(const char *body, size_t len, struct job **out, char *err, size_t errlen);

/* Frees a job; job_free(NULL) is a no-op. */
void job_free(struct job *job);

/* A 64-bit fingerprint of what the job asks for (phone, message, instance): two requests with
 * the same Idempotency-Key must ask for the same thing. Never 0. */
uint64_t job_request_hash(const struct job *job);

/* Writes the digits of a canonical phone (without '+') into out[JOB_PHONE_LEN]. */
void job_phone_digits(const char *phone, char out[JOB_PHONE_LEN]);

#endif
