/* Requests whose outcome is unknown: their job was published but neither confirmed nor refused
 * before the answer (504 outcome_unknown). A repeat with the same Idempotency-Key republishes
 * the same task id instead of making a new task, so the consumer, which never sends one task
 * twice, delivers the message at most once. */
#ifndef MSG_IN_DOUBT_H
#define MSG_IN_DOUBT_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct in_doubt;

/* A table of at most `max` entries (the oldest is forgotten first). NULL when out of memory. */
struct in_doubt *in_doubt_new(size_t max);
void in_doubt_free(struct in_doubt *t); /* NULL is a no-op */

/* Remembers that the request with Idempotency-Key `key` and fingerprint `hash` got task
 * `task_id` with an unknown outcome. Returns 0, or -1 when out of memory. Thread-safe. */
int in_doubt_put(struct in_doubt *t, const char *key, const char *task_id, uint64_t hash);

/* Looks `key` up: 1 and the task id (UTIL_UUID_LEN bytes) and fingerprint written, or 0. */
int in_doubt_get(struct in_doubt *t, const char *key, char *task_id, uint64_t *hash);

/* Forgets `key` (its task became known, or its republish was confirmed). */
void in_doubt_forget(struct in_doubt *t, const char *key);

#endif
