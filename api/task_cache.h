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

/* Who owns a task: the tenant of the key that sent it ("" for none) and its Evolution
 * instance ("" when not known here). Returns 1, or 0 when the task is unknown (or expired). */
int task_cache_owner(struct task_cache *cache, const char *task_id,
                     char tenant[JOB_TENANT_MAX + 1], char instance[JOB_INSTANCE_MAX + 1]);

/* Idempotency-Keys are per tenant: the key under which the cache (and the api's claims and
 * in-doubt table) file `key` of `tenant` (NULL or "" for none). */
#define TASK_CACHE_IDEM_MAX (JOB_TENANT_MAX + 1 + JOB_IDEMPOTENCY_KEY_MAX + 1)
void task_cache_idem_key(const char *tenant, const char *key, char out[TASK_CACHE_IDEM_MAX]);

/* Looks up the task created with the scoped Idempotency-Key `key` (task_cache_idem_key).
 * Returns 1 and writes its id, the fingerprint of its request (0 when unknown) and its
 * status; 0 when no task has the key. */
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

/* Status callbacks of receipts that came before their task's SUCCESS: the replica that got
 * such a webhook owes its callback, and pays it once the task is known. After applying a
 * receipt for Evolution key `key`, the webhook handler calls this (never owed for "sent": the
 * SUCCESS callback says it): 1 when the task is known
 * by now (task_id written, *url a malloc'd copy of its callback URL or NULL: send it now);
 * 0 when the debt was recorded for the SUCCESS to find (see task_cache_take_owed); -1 when
 * out of memory. */
int task_cache_owe_callback(struct task_cache *cache, const char *key, enum delivery_state state,
                            char task_id[UTIL_UUID_LEN], char **url);

/* After applying a task's SUCCESS: the receipt callbacks this replica owes for it. Returns 1
 * with *owed (bits 1 << state), the first time of each state, and malloc'd copies of the
 * callback URL and Evolution key (caller frees); 0 when nothing is owed. The debt is cleared. */
int task_cache_take_owed(struct task_cache *cache, const char *task_id, unsigned *owed,
                         int64_t at_ms[DELIVERY_STATES], char **url, char **key);

/* Snapshots (api/snapshots.c): the cache as status events that rebuild it when applied in
 * order, to an empty cache or to one that already knows some of it (apply is monotonic).
 * task_cache_export_shard calls fn for the tasks of shard `shard` (0..task_cache_shards - 1),
 * oldest first (each task's event, then its receipts), under that shard's read lock, and
 * returns the number of tasks; task_cache_export_pending does the same for the receipts
 * that wait for their task (RECEIPT events without task id). Events are borrowed for the
 * call; fn must not call back into the cache. */
size_t task_cache_shards(const struct task_cache *cache);
size_t task_cache_export_shard(struct task_cache *cache, size_t shard, status_event_fn fn,
                               void *ctx);
size_t task_cache_export_pending(struct task_cache *cache, status_event_fn fn, void *ctx);

/* Number of tasks held. */
size_t task_cache_size(struct task_cache *cache);

/* GET /tasks: which tasks, newest first (by created_at, then id). */
#define TASK_QUERY_MAX_LIMIT 500
struct task_query {
  unsigned statuses;    /* bits 1u << enum task_status; 0 = any */
  const char *instance; /* NULL = any */
  const char *phone;    /* canonical form; NULL = any */
  const char *request_id; /* the X-Request-Id the task was created with; NULL = any */
  const char *tenant;   /* NULL = every tenant's; "" = the tasks of no tenant */
  int64_t since_ms, until_ms; /* created_at bounds, inclusive; 0 = open */
  size_t limit;         /* 1..TASK_QUERY_MAX_LIMIT */
  int64_t cursor_ms;    /* 0, or start strictly after (older than) this task: */
  char cursor_id[UTIL_UUID_LEN];
};

/* {"tasks": [task documents], "next_cursor": "..." | null}, malloc'd; NULL when out of
 * memory. next_cursor resumes after the last one listed; tasks that arrive meanwhile are newer
 * and never shift the pages after it. Cost: a walk of each shard from its newest task down to
 * the page's oldest (plus a minute), under its read lock; 8 bytes per task for the walk. */
char *task_cache_search(struct task_cache *cache, const struct task_query *q);

/* GET /stats: counts of the cached tasks by status and by instance, accepted / SUCCESS /
 * FAILURE rates over 1, 5 and 15 minutes, 202→SUCCESS percentiles (within 19 %), FAILURE
 * counts by error code; only `tenant`'s tasks unless it is NULL. Malloc'd JSON; NULL when out
 * of memory. A walk of the whole cache under each shard's read lock. */
char *task_cache_stats(struct task_cache *cache, const char *tenant);

/* Parses a next_cursor into q. Returns 0, or -1 when it is not one. */
int task_cache_parse_cursor(const char *text, struct task_query *q);

#endif
