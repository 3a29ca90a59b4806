/* In-memory task states fed by the status stream; answers GET /tasks/{id}. Thread-safe: many
 * CivetWeb workers read while the status reader thread writes, under one rwlock. */
#ifndef MSG_TASK_CACHE_H
#define MSG_TASK_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

struct task_cache;

/* Creates a cache holding at most max_tasks tasks; the oldest task is dropped to make room.
 * Tasks created more than retention_ms ago are forgotten too, like the status stream forgets
 * their events, so a restarted replica and a long-running one answer alike. NULL when out of
 * memory. */
struct task_cache *task_cache_new(size_t max_tasks, int64_t retention_ms);

/* Frees the cache; NULL is a no-op. */
void task_cache_free(struct task_cache *cache);

/* Applies one event. A RECEIPT updates the task's delivery state (found by task_id, else by
 * its Evolution key; kept aside until the task's SUCCESS when neither is known yet).
 * Status only moves forward: an event that ranks at or below the task's
 * current state (status_rank) is ignored. Returns 1 when applied, 0 when ignored, -1 when out
 * of memory. The event stays owned by the caller. */
int task_cache_apply(struct task_cache *cache, const struct status_event *ev);

/* Renders the task document of DESIGN §2 for `task_id`. Returns a malloc'd JSON string (caller
 * frees) or NULL when the task is unknown (or out of memory). */
char *task_cache_render(struct task_cache *cache, const char *task_id);

/* Current status and attempt of a task; returns 1, or 0 when unknown (or expired). */
int task_cache_status(struct task_cache *cache, const char *task_id, enum task_status *status,
                      int *attempt);

/* Looks up the task created with Idempotency-Key `key`. Returns 1 and writes its id, the
 * fingerprint of its request (0 when unknown) and its status; 0 when no task has the key. */
int task_cache_find_idempotent(struct task_cache *cache, const char *key,
                               char task_id[UTIL_UUID_LEN], uint64_t *request_hash,
                               enum task_status *status);

/* The task whose SUCCESS carried Evolution message id `key`: returns 1 and writes its id, or
 * 0 when no task has it (yet). */
int task_cache_find_by_key(struct task_cache *cache, const char *key,
                           char task_id[UTIL_UUID_LEN]);

/* Whether a receipt of `state` would tell something new about the task (a higher state, or a
 * state's first report; "sent" after SUCCESS never does): 1 or 0 (also 0 for an unknown task). When 1 and the task has a
 * callback URL, *callback_url gets a malloc'd copy (caller frees), else NULL. */
int task_cache_receipt_is_news(struct task_cache *cache, const char *task_id,
                               enum delivery_state state, char **callback_url);

/* Number of tasks held. */
size_t task_cache_size(struct task_cache *cache);

#endif
