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

struct task_memory {
  struct idset *sent, *cancelled;
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
  if(!m->sent || !m->cancelled) {
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
