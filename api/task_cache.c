/* In-memory task states fed by the status stream; answers GET /tasks/{id}. */
#include "task_cache.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One task. Strings that only some states have are allocated; the rest is inline so a million
 * tasks stay within a few hundred MiB. */
struct task {
  struct task *chain;  /* next in the same hash bucket */
  struct task *newer;  /* insertion order, for dropping the oldest */
  struct task *ichain; /* next in the same idempotency-key bucket */
  char *idem_key;      /* Idempotency-Key the task was created with, or NULL */
  uint64_t request_hash;
  char id[UTIL_UUID_LEN];
  char phone[JOB_PHONE_LEN];
  unsigned char status;
  int attempt;
  int64_t rank;
  int64_t created_at_ms, updated_at_ms, next_retry_at_ms;
  char *evolution_key, *error_code, *error_message;
};

/* The cache is split into shards by task id, each with its own lock, buckets and eviction
 * order, so the status reader's writes and the HTTP workers' reads and PENDING writes rarely
 * wait for each other (one global lock cost a tenth of the accept path's CPU). */
#define MAX_SHARDS 64
/* Below this many tasks per shard, fewer shards: eviction stays exact for small caches. */
#define MIN_TASKS_PER_SHARD 4096

struct shard {
  pthread_rwlock_t lock; /* guards everything below */
  struct task **buckets;
  struct task **ibuckets; /* by idempotency key, same size as buckets */
  size_t nbuckets, count;
  int64_t retention_ms;
  struct task *oldest, *newest;
  atomic_size_t *total; /* the cache's task count, shared by its shards */
  size_t max;           /* the cache's bound */
};

/* The bound is on the whole cache, not per shard: ids do not spread evenly, and per-shard
 * bounds would evict from full shards while others had room. When the cache is full, an insert
 * drops the oldest task of its own shard. */
struct task_cache {
  size_t nshards;
  atomic_size_t total;
  struct shard shards[MAX_SHARDS];
};

static uint64_t hash_id(const char *s)
{
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for(; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 1099511628211ULL;
  }
  return h;
}

static int shard_init(struct shard *c, size_t expected, size_t max_tasks, int64_t retention_ms,
                      atomic_size_t *total)
{
  size_t n = 64;
  /* Buckets sized once for the expected share keep lookups short without rehashing. */
  while(n < expected && n < ((size_t)1 << 26))
    n <<= 1;
  c->buckets = calloc(n, sizeof *c->buckets);
  c->ibuckets = calloc(n, sizeof *c->ibuckets);
  if(!c->buckets || !c->ibuckets) {
    free(c->buckets);
    free(c->ibuckets);
    return -1;
  }
  c->nbuckets = n;
  c->max = max_tasks;
  c->total = total;
  c->retention_ms = retention_ms;
  pthread_rwlock_init(&c->lock, NULL);
  return 0;
}

struct task_cache *task_cache_new(size_t max_tasks, int64_t retention_ms)
{
  struct task_cache *cache = calloc(1, sizeof *cache);
  size_t shards = 1;
  if(!cache)
    return NULL;
  while(shards < MAX_SHARDS && max_tasks / (shards * 2) >= MIN_TASKS_PER_SHARD)
    shards *= 2;
  for(size_t i = 0; i < shards; i++)
    if(shard_init(&cache->shards[i], (max_tasks + shards - 1) / shards, max_tasks,
                  retention_ms, &cache->total)) {
      cache->nshards = i;
      task_cache_free(cache);
      return NULL;
    }
  cache->nshards = shards;
  return cache;
}

/* The shard of a task: the high bits of its hash (the low bits pick the bucket). */
static struct shard *shard_of(struct task_cache *cache, const char *task_id)
{
  return &cache->shards[(hash_id(task_id) >> 40) % cache->nshards];
}

static void task_free(struct task *t)
{
  free(t->evolution_key);
  free(t->error_code);
  free(t->error_message);
  free(t->idem_key);
  free(t);
}

void task_cache_free(struct task_cache *cache)
{
  if(!cache)
    return;
  for(size_t i = 0; i < cache->nshards; i++) {
    struct shard *c = &cache->shards[i];
    for(struct task *t = c->oldest, *next; t; t = next) {
      next = t->newer;
      task_free(t);
    }
    pthread_rwlock_destroy(&c->lock);
    free(c->buckets);
    free(c->ibuckets);
  }
  free(cache);
}

static struct task *find(struct shard *c, const char *id)
{
  struct task *t = c->buckets[hash_id(id) & (c->nbuckets - 1)];
  while(t && strcmp(t->id, id))
    t = t->chain;
  return t;
}

static void drop_oldest(struct shard *c)
{
  struct task *t = c->oldest, **pp;
  pp = &c->buckets[hash_id(t->id) & (c->nbuckets - 1)];
  while(*pp != t)
    pp = &(*pp)->chain;
  *pp = t->chain;
  if(t->idem_key) {
    pp = &c->ibuckets[hash_id(t->idem_key) & (c->nbuckets - 1)];
    while(*pp != t)
      pp = &(*pp)->ichain;
    *pp = t->ichain;
  }
  c->oldest = t->newer;
  if(!c->oldest)
    c->newest = NULL;
  c->count--;
  atomic_fetch_sub(c->total, 1);
  task_free(t);
}

/* Insertion order is creation order for all practical purposes, so expired tasks sit at the
 * old end of the list. */
static void drop_expired(struct shard *c, int64_t now)
{
  while(c->oldest && c->oldest->created_at_ms + c->retention_ms < now)
    drop_oldest(c);
}

static int replace(char **dst, const char *src)
{
  char *copy = NULL;
  if(src && !(copy = strdup(src)))
    return -1;
  free(*dst);
  *dst = copy;
  return 0;
}

int task_cache_apply(struct task_cache *cache, const struct status_event *ev)
{
  struct shard *c = shard_of(cache, ev->task_id);
  int64_t rank = status_rank_in(ev->status, ev->attempt, ev->generation);
  struct task *t;
  int rc = 1;
  pthread_rwlock_wrlock(&c->lock);
  drop_expired(c, util_now_ms());
  t = find(c, ev->task_id);
  if(!t) {
    size_t b;
    t = calloc(1, sizeof *t);
    if(!t) {
      rc = -1;
      goto out;
    }
    memcpy(t->id, ev->task_id, UTIL_UUID_LEN);
    t->rank = -1;
    if(atomic_load(c->total) >= c->max && c->oldest)
      drop_oldest(c);
    b = hash_id(t->id) & (c->nbuckets - 1);
    t->chain = c->buckets[b];
    c->buckets[b] = t;
    if(c->newest)
      c->newest->newer = t;
    else
      c->oldest = t;
    c->newest = t;
    c->count++;
    atomic_fetch_add(c->total, 1);
  }
  /* What the request was is merged whatever the order events arrive in. */
  if(ev->idempotency_key && !t->idem_key) {
    size_t b = hash_id(ev->idempotency_key) & (c->nbuckets - 1);
    if(!(t->idem_key = strdup(ev->idempotency_key)))
      rc = -1;
    else {
      t->ichain = c->ibuckets[b];
      c->ibuckets[b] = t;
    }
  }
  if(ev->request_hash)
    t->request_hash = ev->request_hash;
  if(ev->created_at_ms)
    t->created_at_ms = ev->created_at_ms;
  if(rank <= t->rank) {
    rc = 0;
    goto out;
  }
  t->rank = rank;
  t->status = (unsigned char)ev->status;
  t->attempt = ev->attempt;
  t->updated_at_ms = ev->at_ms;
  if(!t->created_at_ms)
    t->created_at_ms = ev->at_ms;
  if(ev->phone && strlen(ev->phone) < sizeof t->phone)
    strcpy(t->phone, ev->phone);
  t->next_retry_at_ms = ev->status == TASK_RETRY ? ev->next_retry_at_ms : 0;
  if(replace(&t->evolution_key, ev->evolution_key) ||
     replace(&t->error_code, ev->error_code) || replace(&t->error_message, ev->error_message))
    rc = -1;
out:
  pthread_rwlock_unlock(&c->lock);
  return rc;
}

static json_t *time_or_null(int64_t ms)
{
  char buf[UTIL_TIME_LEN];
  return ms ? json_string(util_format_time(ms, buf)) : json_null();
}

char *task_cache_render(struct task_cache *cache, const char *task_id)
{
  struct shard *c = shard_of(cache, task_id);
  struct task *t;
  json_t *doc = NULL, *result, *error;
  char *out = NULL;
  pthread_rwlock_rdlock(&c->lock);
  t = find(c, task_id);
  if(!t || t->created_at_ms + c->retention_ms < util_now_ms())
    goto out;
  if(t->status == TASK_SUCCESS)
    result = json_pack("{s:b, s:s, s:s?}", "success", 1, "phone", t->phone, "evolution_key",
                       t->evolution_key);
  else
    result = json_null();
  if(t->error_code)
    error = json_pack("{s:s, s:s}", "code", t->error_code, "message",
                      t->error_message ? t->error_message : "");
  else
    error = json_null();
  doc = json_pack("{s:s, s:s, s:i, s:o, s:o, s:o, s:o, s:o}", "task_id", t->id, "status",
                  status_name((enum task_status)t->status), "attempts", t->attempt,
                  "created_at", time_or_null(t->created_at_ms), "updated_at",
                  time_or_null(t->updated_at_ms), "result", result, "error", error,
                  "next_retry_at", time_or_null(t->next_retry_at_ms));
  if(doc)
    out = json_dumps(doc, JSON_COMPACT);
out:
  pthread_rwlock_unlock(&c->lock);
  json_decref(doc);
  return out;
}

int task_cache_status(struct task_cache *cache, const char *task_id, enum task_status *status,
                      int *attempt)
{
  struct shard *c = shard_of(cache, task_id);
  struct task *t;
  int found = 0;
  pthread_rwlock_rdlock(&c->lock);
  t = find(c, task_id);
  if(t && t->created_at_ms + c->retention_ms >= util_now_ms()) {
    *status = (enum task_status)t->status;
    *attempt = t->attempt;
    found = 1;
  }
  pthread_rwlock_unlock(&c->lock);
  return found;
}

int task_cache_find_idempotent(struct task_cache *cache, const char *key,
                               char task_id[UTIL_UUID_LEN], uint64_t *request_hash,
                               enum task_status *status)
{
  uint64_t h = hash_id(key);
  int found = 0;
  /* Keys are indexed in the shard of their task, which the key does not tell: look in each. */
  for(size_t i = 0; i < cache->nshards && !found; i++) {
    struct shard *c = &cache->shards[i];
    struct task *t;
    pthread_rwlock_rdlock(&c->lock);
    t = c->ibuckets[h & (c->nbuckets - 1)];
    while(t && strcmp(t->idem_key, key))
      t = t->ichain;
    if(t && t->created_at_ms + c->retention_ms >= util_now_ms()) {
      memcpy(task_id, t->id, UTIL_UUID_LEN);
      *request_hash = t->request_hash;
      *status = (enum task_status)t->status;
      found = 1;
    }
    pthread_rwlock_unlock(&c->lock);
  }
  return found;
}

size_t task_cache_size(struct task_cache *cache)
{
  return atomic_load(&cache->total);
}
