/* Requests whose outcome is unknown, by Idempotency-Key: see in_doubt.h. */
#include "in_doubt.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct entry {
  char *key;
  char task_id[UTIL_UUID_LEN];
  uint64_t hash;
  enum in_doubt_state state;
};

/* A ring: rare entries (one per broker hiccup and request), so lookups scan it. */
struct in_doubt {
  pthread_mutex_t lock; /* guards everything below */
  struct entry *ring;
  size_t max, next;
  size_t used; /* entries with a key: 0 spares every idempotent POST the scan */
};

struct in_doubt *in_doubt_new(size_t max)
{
  struct in_doubt *t = calloc(1, sizeof *t);
  if(!t || !(t->ring = calloc(max ? max : 1, sizeof *t->ring))) {
    free(t);
    return NULL;
  }
  t->max = max ? max : 1;
  pthread_mutex_init(&t->lock, NULL);
  return t;
}

void in_doubt_free(struct in_doubt *t)
{
  if(!t)
    return;
  for(size_t i = 0; i < t->max; i++)
    free(t->ring[i].key);
  free(t->ring);
  pthread_mutex_destroy(&t->lock);
  free(t);
}

static struct entry *find(struct in_doubt *t, const char *key)
{
  if(!t->used)
    return NULL;
  for(size_t i = 0; i < t->max; i++)
    if(t->ring[i].key && !strcmp(t->ring[i].key, key))
      return &t->ring[i];
  return NULL;
}

int in_doubt_put(struct in_doubt *t, const char *key, const char *task_id, uint64_t hash,
                 enum in_doubt_state state)
{
  struct entry *e;
  char *copy = strdup(key);
  if(!copy)
    return -1;
  pthread_mutex_lock(&t->lock);
  if(!(e = find(t, key))) {
    e = &t->ring[t->next];
    t->next = (t->next + 1) % t->max;
  }
  if(!e->key)
    t->used++;
  free(e->key);
  e->key = copy;
  memcpy(e->task_id, task_id, UTIL_UUID_LEN);
  e->hash = hash;
  e->state = state;
  pthread_mutex_unlock(&t->lock);
  return 0;
}

int in_doubt_get(struct in_doubt *t, const char *key, char *task_id, uint64_t *hash,
                 enum in_doubt_state *state)
{
  struct entry *e;
  int found = 0;
  pthread_mutex_lock(&t->lock);
  if((e = find(t, key))) {
    memcpy(task_id, e->task_id, UTIL_UUID_LEN);
    *hash = e->hash;
    *state = e->state;
    found = 1;
  }
  pthread_mutex_unlock(&t->lock);
  return found;
}

void in_doubt_forget(struct in_doubt *t, const char *key)
{
  struct entry *e;
  pthread_mutex_lock(&t->lock);
  if((e = find(t, key))) {
    free(e->key);
    e->key = NULL;
    t->used--;
  }
  pthread_mutex_unlock(&t->lock);
}

void in_doubt_settle(struct in_doubt *t, const char *task_id, enum in_doubt_state state)
{
  pthread_mutex_lock(&t->lock);
  for(size_t i = 0; i < t->max; i++)
    if(t->ring[i].key && !strcmp(t->ring[i].task_id, task_id))
      t->ring[i].state = state;
  pthread_mutex_unlock(&t->lock);
}
