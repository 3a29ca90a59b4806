/* Requests whose outcome is unknown: their job was published but neither confirmed nor refused
 * before the answer (504 outcome_unknown). The publisher reports the late outcome when it
 * comes: confirmed (the entry goes: the task is known from then on), refused (nothing was
 * queued), or lost with the connection (the broker may hold it). A repeat with the same
 * Idempotency-Key answers 504 again while the outcome is still pending, and otherwise
 * republishes the same task id instead of making a new task: the consumer never sends one
 * task id twice once it knows it was sent. */
#ifndef MSG_IN_DOUBT_H
#define MSG_IN_DOUBT_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct in_doubt;

/* A table of at most `max` entries (the oldest is forgotten first). NULL when out of memory. */
struct in_doubt *in_doubt_new(size_t max);
void in_doubt_free(struct in_doubt *t); /* NULL is a no-op */

enum in_doubt_state {
  IN_DOUBT_PENDING, /* no confirm yet: the publisher still waits for it */
  IN_DOUBT_REFUSED, /* the broker refused it late: nothing was queued */
  IN_DOUBT_LOST,    /* the connection went first: the broker may or may not hold it */
  IN_DOUBT_CONFIRMED /* confirmed late: queued, a repeat is answered with its task id */
};

/* Remembers that the request with Idempotency-Key `key` and fingerprint `hash` got task
 * `task_id` with an unknown outcome. Returns 0, or -1 when out of memory. Thread-safe. */
int in_doubt_put(struct in_doubt *t, const char *key, const char *task_id, uint64_t hash,
                 enum in_doubt_state state);

/* Looks `key` up: 1 and the task id (UTIL_UUID_LEN bytes), fingerprint and state written, or
 * 0. */
int in_doubt_get(struct in_doubt *t, const char *key, char *task_id, uint64_t *hash,
                 enum in_doubt_state *state);

/* The late outcome of task_id's publish. No-op for tasks not held. */
void in_doubt_settle(struct in_doubt *t, const char *task_id, enum in_doubt_state state);

/* Forgets `key` (its republish was confirmed: the task is known from then on). */
void in_doubt_forget(struct in_doubt *t, const char *key);

#endif
