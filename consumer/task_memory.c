/* What a consumer remembers of tasks between deliveries: see task_memory.h. */
#include "task_memory.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idset.h"
#include "util.h"

/* Unrecorded sends are rare (one per send finished across a connection loss): a small ring. */
#define UNRECORDED_MAX 1024

struct unrecorded {
  char task_id[UTIL_UUID_LEN];
  char key[TASK_MEMORY_KEY_LEN];
};

/* The STARTED table: open addressing with linear probing, deleted by backward shift, at most
 * half full. */
#define STARTED_SLOTS (2 * TASK_MEMORY_STARTED_MAX)
struct started {
  char task_id[UTIL_UUID_LEN]; /* "" when free */
  int attempt;
  int64_t since_ms, last_ms;
};

struct task_memory {
  struct idset *sent, *cancelled;
  struct started *started;
  size_t n_started;
  struct unrecorded ring[UNRECORDED_MAX];
  size_t next;
};

struct task_memory *task_memory_new(size_t max_tasks)
{
  struct task_memory *m = calloc(1, sizeof *m);
  if(!m)
    return NULL;
  m->sent = idset_new(max_tasks);
  m->cancelled = idset_new(max_tasks);
  m->started = calloc(STARTED_SLOTS, sizeof *m->started);
  if(!m->sent || !m->cancelled || !m->started) {
    task_memory_free(m);
    return NULL;
  }
  return m;
}

void task_memory_free(struct task_memory *m)
{
  if(!m)
    return;
  idset_free(m->sent);
  idset_free(m->cancelled);
  free(m->started);
  free(m);
}

void task_memory_note_sent(struct task_memory *m, const char *task_id)
{
  idset_add(m->sent, task_id);
}

void task_memory_note_cancelled(struct task_memory *m, const char *task_id)
{
  idset_add(m->cancelled, task_id);
}

int task_memory_sent(const struct task_memory *m, const char *task_id)
{
  return idset_has(m->sent, task_id);
}

int task_memory_cancelled(const struct task_memory *m, const char *task_id)
{
  return idset_has(m->cancelled, task_id);
}

static const struct unrecorded *find(const struct task_memory *m, const char *task_id)
{
  for(size_t i = 0; i < UNRECORDED_MAX; i++)
    if(!strcmp(m->ring[i].task_id, task_id))
      return &m->ring[i];
  return NULL;
}

void task_memory_note_unrecorded(struct task_memory *m, const char *task_id, const char *key)
{
  struct unrecorded *slot = (struct unrecorded *)find(m, task_id);
  if(!slot)
    slot = &m->ring[m->next++ % UNRECORDED_MAX];
  snprintf(slot->task_id, sizeof slot->task_id, "%s", task_id);
  snprintf(slot->key, sizeof slot->key, "%s", key);
  idset_add(m->sent, task_id);
}

int task_memory_unrecorded(const struct task_memory *m, const char *task_id, char *key)
{
  const struct unrecorded *u = task_id[0] ? find(m, task_id) : NULL;
  if(!u)
    return 0;
  memcpy(key, u->key, TASK_MEMORY_KEY_LEN);
  return 1;
}

void task_memory_recorded(struct task_memory *m, const char *task_id)
{
  struct unrecorded *u = task_id[0] ? (struct unrecorded *)find(m, task_id) : NULL;
  if(u)
    u->task_id[0] = '\0';
}

size_t task_memory_sent_count(const struct task_memory *m)
{
  return idset_size(m->sent);
}

/* FNV-1a of the id text: task ids are random UUIDs, any mix of their characters spreads. */
static size_t slot_of(const char *task_id)
{
  uint64_t h = 1469598103934665603ULL;
  for(const char *p = task_id; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  return (size_t)(h % STARTED_SLOTS);
}

/* The slot holding task_id, or the free slot where it would go. */
static size_t started_find(const struct task_memory *m, const char *task_id)
{
  size_t i = slot_of(task_id);
  while(m->started[i].task_id[0] && strcmp(m->started[i].task_id, task_id))
    i = (i + 1) % STARTED_SLOTS;
  return i;
}

void task_memory_note_started(struct task_memory *m, const char *task_id, int attempt,
                              int64_t at_ms)
{
  size_t i;
  struct started *s;
  if(!util_is_uuid(task_id))
    return;
  s = &m->started[i = started_find(m, task_id)];
  if(s->task_id[0]) {
    /* Another start of an unsettled task: the window opens at the first one. */
    if(attempt > s->attempt)
      s->attempt = attempt;
    if(at_ms < s->since_ms)
      s->since_ms = at_ms;
    if(at_ms > s->last_ms)
      s->last_ms = at_ms;
    return;
  }
  if(m->n_started >= TASK_MEMORY_STARTED_MAX)
    return;
  memcpy(s->task_id, task_id, UTIL_UUID_LEN);
  s->attempt = attempt;
  s->since_ms = s->last_ms = at_ms;
  m->n_started++;
}

void task_memory_note_outcome(struct task_memory *m, const char *task_id, int attempt)
{
  size_t i = started_find(m, task_id), j;
  if(!m->started[i].task_id[0] || m->started[i].attempt > attempt)
    return;
  /* Backward-shift deletion: move up every later entry of the run that may sit in i. */
  m->started[i].task_id[0] = '\0';
  m->n_started--;
  for(j = (i + 1) % STARTED_SLOTS; m->started[j].task_id[0]; j = (j + 1) % STARTED_SLOTS) {
    size_t home = slot_of(m->started[j].task_id);
    /* j's entry may move to i when i lies cyclically in [home, j). */
    if((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
      m->started[i] = m->started[j];
      m->started[j].task_id[0] = '\0';
      i = j;
    }
  }
}

int task_memory_in_doubt(const struct task_memory *m, const char *task_id, int64_t *since_ms,
                         int64_t *last_ms)
{
  const struct started *s = &m->started[started_find(m, task_id)];
  if(!s->task_id[0])
    return 0;
  *since_ms = s->since_ms;
  *last_ms = s->last_ms;
  return 1;
}

size_t task_memory_started_count(const struct task_memory *m)
{
  return m->n_started;
}
