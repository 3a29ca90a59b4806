/* What a consumer remembers of tasks between deliveries: the ones that reached SUCCESS (from
 * the status stream and from its own sends), the cancelled ones, and its own sends whose
 * SUCCESS it could not record (the connection went, or the event was refused), with their
 * Evolution key, so that the job's redelivery records the SUCCESS instead of sending again.
 * Bounded; the oldest is forgotten first. Not thread-safe (the worker thread owns it). */
#ifndef MSG_TASK_MEMORY_H
#define MSG_TASK_MEMORY_H

#include <stddef.h>
#include <stdint.h>

/* An Evolution message key (key.id), NUL included. */
#define TASK_MEMORY_KEY_LEN 101

struct task_memory;

/* Remembers up to max_tasks sent and as many cancelled tasks, and the last 1,024 unrecorded
 * sends. NULL when out of memory. */
struct task_memory *task_memory_new(size_t max_tasks);
void task_memory_free(struct task_memory *m); /* NULL is a no-op */

void task_memory_note_sent(struct task_memory *m, const char *task_id);
void task_memory_note_cancelled(struct task_memory *m, const char *task_id);
int task_memory_sent(const struct task_memory *m, const char *task_id);
int task_memory_cancelled(const struct task_memory *m, const char *task_id);

/* A send Evolution accepted (with key, "" when it gave none) whose SUCCESS was not recorded.
 * The task counts as sent from now on. */
void task_memory_note_unrecorded(struct task_memory *m, const char *task_id, const char *key);

/* 1 when task_id has an unrecorded send, its key copied into key[TASK_MEMORY_KEY_LEN]. */
int task_memory_unrecorded(const struct task_memory *m, const char *task_id, char *key);

/* The unrecorded send of task_id is being recorded now: forgotten as unrecorded. */
void task_memory_recorded(struct task_memory *m, const char *task_id);

/* Tasks remembered as sent. */
size_t task_memory_sent_count(const struct task_memory *m);

/* Sends under way anywhere in the fleet, from the status stream: a STARTED event of `attempt`
 * at at_ms, not yet followed by an outcome of that attempt or a later one. A job that comes
 * back while its task is here is in doubt: its send may have gone out (DESIGN §4). At most
 * TASK_MEMORY_STARTED_MAX are kept (beyond, a STARTED is not remembered: the job is then
 * simply sent). */
#define TASK_MEMORY_STARTED_MAX 65536
void task_memory_note_started(struct task_memory *m, const char *task_id, int attempt,
                              int64_t at_ms);
/* An outcome (RETRY, SUCCESS, FAILURE; CANCELLED with attempt INT_MAX) of `attempt`. */
void task_memory_note_outcome(struct task_memory *m, const char *task_id, int attempt);
/* 1 when task_id has a send under way or in doubt; *since_ms is when its first unsettled
 * attempt started, *last_ms when its latest one did. */
int task_memory_in_doubt(const struct task_memory *m, const char *task_id, int64_t *since_ms,
                         int64_t *last_ms);
size_t task_memory_started_count(const struct task_memory *m);

#endif
