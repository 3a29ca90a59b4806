/* Validation of the POST /messages body (DESIGN §2), separate from HTTP so it can be unit
 * tested and fuzzed. */
#ifndef MSG_REQUEST_H
#define MSG_REQUEST_H

#include <jansson.h>
#include <stddef.h>

#include "deadletters.h"
#include "job.h"

/* JSON nesting allowed in a request body. jansson parses recursively, and CivetWeb workers
 * have small stacks, so deeper documents are refused before parsing. */
#define REQUEST_MAX_DEPTH 32

/* 1 when the JSON text nests deeper than REQUEST_MAX_DEPTH (counted outside strings, stopping
 * early): such a body is refused before jansson parses it. */
int request_too_deep(const char *s, size_t len);

/* The longest ttl (and furthest expires_at) a message may ask for: 30 days. */
#define REQUEST_MAX_TTL_MS (30LL * 24 * 3600 * 1000)

/* What was wrong, ready for the JSON error shape {code, message, field}. */
struct request_error {
  int status;         /* 400 or 422 */
  const char *code;   /* machine code, static storage */
  char message[256];  /* a human sentence */
  char field[64];     /* JSON path of the field at fault, "" when none */
};

/* Parses and validates a POST /messages body of `len` bytes. On success returns 0 and fills
 * job->phone, job->message, job->instance_name (default_instance when absent),
 * job->expires_at_ms (from expires_at or ttl; 0 when neither), job->send_at_ms and
 * job->callback_url (NULL when absent; its host is for the caller to check); the caller
 * owns those strings (job_free, or free them). On failure returns -1, fills *err and leaves
 * *job untouched. task_id, created_at_ms and idempotency_key are not touched. */
int request_parse_message(const char *body, size_t len, const char *default_instance,
                          struct job *job, struct request_error *err);

/* The outcome of one item of a batch: a valid job (ok = 1) or why it was refused. */
struct request_item {
  int ok;
  struct job job; /* phone, message, instance_name and expires_at_ms when ok */
  struct request_error err;
};

/* Parses a POST /messages/batch body {"messages": [message, ...]} of 1..max_items messages,
 * each validated like a single message (field names such as "messages[3].phone"). On success
 * returns 0 and a new array of *n items (caller frees with request_items_free); when the body
 * itself is wrong returns -1 with *err filled. */
int request_parse_batch(const char *body, size_t len, const char *default_instance,
                        size_t max_items, struct request_item **items, size_t *n,
                        struct request_error *err);

/* Frees what request_parse_batch returned; NULL is a no-op. */
void request_items_free(struct request_item *items, size_t n);

/* A redrive over HTTP holds a worker and a broker connection while it runs, so it must be
 * planned to end within REQUEST_REDRIVE_MAX_MS: with a rate, (max - 1) / rate at most that
 * (msg-consumer --redrive has no such cap). */
#define REQUEST_REDRIVE_MAX_MS 30000

/* A parsed POST /dead-letters/redrive body. filter's strings and task ids are borrowed from
 * doc; free both with request_redrive_free. */
struct request_redrive {
  struct redrive_filter filter;
  const char **task_ids;
  json_t *doc;
};

/* Parses and validates a POST /dead-letters/redrive body {"max", "reason", "instance",
 * "task_ids", "rate"} of `len` bytes (0 = every default). On success returns 0 and fills *out
 * (caller frees with request_redrive_free); on failure returns -1 with *err filled (400 not
 * JSON, 422 a field: max 1..DEAD_REDRIVE_MAX, rate 0 or DEAD_RATE_MIN..DEAD_RATE_MAX and within
 * REQUEST_REDRIVE_MAX_MS for max) and *out untouched. */
int request_parse_redrive(const char *body, size_t len, struct request_redrive *out,
                          struct request_error *err);

/* Frees what request_parse_redrive filled; NULL is a no-op. */
void request_redrive_free(struct request_redrive *r);

#endif
