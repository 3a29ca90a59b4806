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
  struct task *older;  /* ...and back, for GET /tasks newest first (the search's only index) */
  struct task *kchain; /* next in the same Evolution-key bucket */
  struct receipts *receipts; /* delivery receipts, allocated with the first one */
  struct extra *extra; /* callback URL and Idempotency-Key, NULL when it has neither */
  const char *tenant;  /* interned (struct names): who sent it, or NULL for no tenant */
  const char *instance; /* interned: the Evolution instance it goes through, or NULL */
  char *request_id;     /* the X-Request-Id of the request that made it, or NULL */
  char id[UTIL_UUID_LEN];
  char phone[JOB_PHONE_LEN];
  unsigned char status;
  unsigned char owed; /* receipt states whose callback this replica owes (bit 1 << state) */
  unsigned char reconciled; /* SUCCESS settled by findMessages (status_event.reconciled) */
  int attempt;
  int64_t rank;
  int64_t created_at_ms, updated_at_ms, next_retry_at_ms;
  char *evolution_key;
  char *error;          /* "<code>\0<message>" of a RETRY or FAILURE, or NULL */
};

/* What few tasks have, apart: 16 bytes less per task (a million tasks: 15 MiB less, since
 * the task then fits malloc's next smaller chunk). */
struct extra {
  struct task *ichain;   /* next in the same idempotency-key bucket */
  uint64_t request_hash; /* the fingerprint of the request that had the key */
  char *idem_key;        /* the Idempotency-Key within its tenant (task_cache_idem_key) */
  char *callback_url;
};

static const char *idem_key_of(const struct task *t)
{
  return t->extra ? t->extra->idem_key : NULL;
}

static const char *callback_url_of(const struct task *t)
{
  return t->extra ? t->extra->callback_url : NULL;
}

/* The task's extra part, made on first use; NULL when out of memory. */
static struct extra *extra_of(struct task *t)
{
  if(!t->extra)
    t->extra = calloc(1, sizeof *t->extra);
  return t->extra;
}

static const char *error_code(const struct task *t)
{
  return t->error && t->error[0] ? t->error : NULL;
}

static const char *error_message(const struct task *t)
{
  return t->error ? t->error + strlen(t->error) + 1 : NULL;
}

/* Replaces the error with code and message (either may be NULL). Returns 0, or -1 when out
 * of memory (the error is then gone). */
static int set_error(struct task *t, const char *code, const char *message)
{
  size_t c = code ? strlen(code) : 0, m = message ? strlen(message) : 0;
  free(t->error);
  t->error = NULL;
  if(!code && !message)
    return 0;
  if(!(t->error = malloc(c + m + 2)))
    return -1;
  memcpy(t->error, code ? code : "", c + 1);
  memcpy(t->error + c + 1, message ? message : "", m + 1);
  return 0;
}

/* What the webhooks said about a sent message: the highest state reached and when each state
 * was first reported (DELIVERY_ERROR is kept beside the state, not instead of it). */
struct receipts {
  unsigned char state;
  int64_t at_ms[DELIVERY_STATES];
};

/* Receipts that came before their task's SUCCESS (Evolution sends webhooks before its HTTP
 * answer): kept by Evolution key until the task shows up, at most PENDING_MAX of them, for at
 * most PENDING_TTL_MS. */
#define PENDING_MAX 65536
#define PENDING_TTL_MS (60 * 60 * 1000)
#define PENDING_BUCKETS 16384
struct pending_receipt {
  struct pending_receipt *chain, *newer, *older;
  char *key;
  int64_t kept_at_ms;
  struct receipts r;
  unsigned char owed; /* states whose webhook this replica received: it owes their callbacks */
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
  struct task **ibuckets; /* by idempotency key: few tasks have one, nibuckets of them */
  struct task **kbuckets; /* by Evolution key, same size as buckets */
  size_t nbuckets, nibuckets, count;
  int64_t retention_ms;
  struct task *oldest, *newest;
  atomic_size_t *total; /* the cache's task count, shared by its shards */
  size_t max;           /* the cache's bound */
};

/* The bound is on the whole cache, not per shard: ids do not spread evenly, and per-shard
 * bounds would evict from full shards while others had room. When the cache is full, an insert
 * drops the oldest task of its own shard. */
/* Tenant and instance names, interned: a few distinct values shared by a million tasks. At
 * most NAMES_MAX are kept; past that a task simply does not remember its instance. */
#define NAME_BUCKETS 256
#define NAMES_MAX 100000
struct name {
  struct name *next;
  char text[];
};

struct task_cache {
  pthread_mutex_t names_lock; /* guards names; taken inside a shard's lock */
  struct name *names[NAME_BUCKETS];
  size_t n_names;
  size_t nshards;
  atomic_size_t total;
  struct shard shards[MAX_SHARDS];

  pthread_mutex_t pending_lock; /* guards the pending receipts; taken after a shard's lock */
  struct pending_receipt *pending_buckets[PENDING_BUCKETS];
  struct pending_receipt *pending_oldest, *pending_newest;
  size_t pending_count;
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
  c->nibuckets = n / 16 < 64 ? 64 : n / 16;
  c->ibuckets = calloc(c->nibuckets, sizeof *c->ibuckets);
  c->kbuckets = calloc(n, sizeof *c->kbuckets);
  if(!c->buckets || !c->ibuckets || !c->kbuckets) {
    free(c->buckets);
    free(c->ibuckets);
    free(c->kbuckets);
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
  pthread_mutex_init(&cache->pending_lock, NULL);
  pthread_mutex_init(&cache->names_lock, NULL);
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
  free(t->error);
  if(t->extra) {
    free(t->extra->idem_key);
    free(t->extra->callback_url);
    free(t->extra);
  }
  free(t->request_id);
  free(t->receipts);
  free(t);
}

static void pending_free_all(struct task_cache *cache)
{
  for(struct pending_receipt *p = cache->pending_oldest, *next; p; p = next) {
    next = p->newer;
    free(p->key);
    free(p);
  }
  pthread_mutex_destroy(&cache->pending_lock);
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
    free(c->kbuckets);
  }
  pending_free_all(cache);
  for(size_t i = 0; i < NAME_BUCKETS; i++)
    for(struct name *n = cache->names[i], *next; n; n = next) {
      next = n->next;
      free(n);
    }
  pthread_mutex_destroy(&cache->names_lock);
  free(cache);
}

/* The one copy of `text` (kept until the cache is freed), or NULL when out of room. */
static const char *intern(struct task_cache *cache, const char *text)
{
  size_t b = hash_id(text) % NAME_BUCKETS, len = strlen(text);
  struct name *n;
  pthread_mutex_lock(&cache->names_lock);
  for(n = cache->names[b]; n && strcmp(n->text, text); n = n->next)
    ;
  if(!n && cache->n_names < NAMES_MAX && (n = malloc(sizeof *n + len + 1))) {
    memcpy(n->text, text, len + 1);
    n->next = cache->names[b];
    cache->names[b] = n;
    cache->n_names++;
  }
  pthread_mutex_unlock(&cache->names_lock);
  return n ? n->text : NULL;
}

void task_cache_idem_key(const char *tenant, const char *key, char out[TASK_CACHE_IDEM_MAX])
{
  /* 0x1f never appears in a tenant name nor in a key (printable ASCII), so two tenants'
   * keys never meet. */
  if(tenant && *tenant)
    snprintf(out, TASK_CACHE_IDEM_MAX, "%s\x1f%s", tenant, key);
  else
    snprintf(out, TASK_CACHE_IDEM_MAX, "%s", key);
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
  if(idem_key_of(t)) {
    pp = &c->ibuckets[hash_id(t->extra->idem_key) & (c->nibuckets - 1)];
    while(*pp != t)
      pp = &(*pp)->extra->ichain;
    *pp = t->extra->ichain;
  }
  if(t->evolution_key) {
    pp = &c->kbuckets[hash_id(t->evolution_key) & (c->nbuckets - 1)];
    while(*pp != t)
      pp = &(*pp)->kchain;
    *pp = t->kchain;
  }
  c->oldest = t->newer;
  if(c->oldest)
    c->oldest->older = NULL;
  else
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

/* ---- delivery receipts ------------------------------------------------------------------ */

/* Records one receipt; returns 1 when it told something new (a higher state, or a state's
 * first report), 0 for a duplicate or a late lower state, -1 when out of memory. */
static int merge_receipt(struct receipts **rp, enum delivery_state state, int64_t at_ms)
{
  struct receipts *r = *rp;
  int news = 0;
  if(!r && !(r = *rp = calloc(1, sizeof *r)))
    return -1;
  if(!r->at_ms[state] || at_ms < r->at_ms[state]) {
    news = !r->at_ms[state];
    r->at_ms[state] = at_ms ? at_ms : 1;
  }
  if(state != DELIVERY_ERROR && state > r->state) {
    r->state = (unsigned char)state;
    news = 1;
  }
  return news;
}

static int merge_all(struct receipts **dst, const struct receipts *src)
{
  for(int s = 1; s < DELIVERY_STATES; s++)
    if(src->at_ms[s] && merge_receipt(dst, (enum delivery_state)s, src->at_ms[s]) < 0)
      return -1;
  return 0;
}

static size_t pending_bucket(const char *key)
{
  return hash_id(key) & (PENDING_BUCKETS - 1);
}

static void pending_unlink(struct task_cache *cache, struct pending_receipt *p)
{
  struct pending_receipt **pp = &cache->pending_buckets[pending_bucket(p->key)];
  while(*pp != p)
    pp = &(*pp)->chain;
  *pp = p->chain;
  if(p->older)
    p->older->newer = p->newer;
  else
    cache->pending_oldest = p->newer;
  if(p->newer)
    p->newer->older = p->older;
  else
    cache->pending_newest = p->older;
  cache->pending_count--;
  free(p->key);
  free(p);
}

static struct pending_receipt *pending_find(struct task_cache *cache, const char *key)
{
  struct pending_receipt *p = cache->pending_buckets[pending_bucket(key)];
  while(p && strcmp(p->key, key))
    p = p->chain;
  return p;
}

/* A receipt for a message no task is known for yet: kept until its SUCCESS arrives. */
static int keep_pending(struct task_cache *cache, const struct status_event *ev)
{
  struct pending_receipt *p;
  int64_t now = util_now_ms();
  int rc = 0;
  pthread_mutex_lock(&cache->pending_lock);
  while(cache->pending_oldest && (cache->pending_count >= PENDING_MAX ||
                                  cache->pending_oldest->kept_at_ms + PENDING_TTL_MS < now))
    pending_unlink(cache, cache->pending_oldest);
  p = pending_find(cache, ev->evolution_key);
  if(!p) {
    if(!(p = calloc(1, sizeof *p)) || !(p->key = strdup(ev->evolution_key))) {
      free(p);
      rc = -1;
      goto out;
    }
    p->kept_at_ms = now;
    p->chain = cache->pending_buckets[pending_bucket(p->key)];
    cache->pending_buckets[pending_bucket(p->key)] = p;
    p->older = cache->pending_newest;
    if(cache->pending_newest)
      cache->pending_newest->newer = p;
    else
      cache->pending_oldest = p;
    cache->pending_newest = p;
    cache->pending_count++;
  }
  {
    struct receipts *r = &p->r;
    if(merge_receipt(&r, ev->delivery, ev->at_ms) < 0)
      rc = -1;
  }
out:
  pthread_mutex_unlock(&cache->pending_lock);
  return rc;
}

static void unindex_key(struct shard *c, struct task *t)
{
  struct task **pp;
  if(!t->evolution_key)
    return;
  pp = &c->kbuckets[hash_id(t->evolution_key) & (c->nbuckets - 1)];
  while(*pp && *pp != t)
    pp = &(*pp)->kchain;
  if(*pp)
    *pp = t->kchain;
  t->kchain = NULL;
}

/* Indexes the task by its Evolution key, and takes over the receipts that came before it. */
static int index_key(struct task_cache *cache, struct shard *c, struct task *t)
{
  size_t b = hash_id(t->evolution_key) & (c->nbuckets - 1);
  struct pending_receipt *p;
  int rc = 0;
  t->kchain = c->kbuckets[b];
  c->kbuckets[b] = t;
  pthread_mutex_lock(&cache->pending_lock);
  if((p = pending_find(cache, t->evolution_key))) {
    rc = merge_all(&t->receipts, &p->r);
    t->owed |= p->owed;
    pending_unlink(cache, p);
  }
  pthread_mutex_unlock(&cache->pending_lock);
  return rc;
}

/* Secondary indexes (Idempotency-Key, Evolution key) live in the shard of each task, which the
 * key does not tell: every shard is looked in. `take` runs under the shard's read lock on the
 * task found and says whether it counts. Returns 1 when one did. */
enum task_index { BY_IDEMPOTENCY_KEY, BY_EVOLUTION_KEY };
static int find_indexed(struct task_cache *cache, enum task_index index, const char *key,
                        int (*take)(const struct shard *, const struct task *, void *), void *arg)
{
  uint64_t h = hash_id(key);
  for(size_t i = 0; i < cache->nshards; i++) {
    struct shard *c = &cache->shards[i];
    struct task *t;
    int hit;
    pthread_rwlock_rdlock(&c->lock);
    t = index == BY_IDEMPOTENCY_KEY ? c->ibuckets[h & (c->nibuckets - 1)]
                                    : c->kbuckets[h & (c->nbuckets - 1)];
    while(t && strcmp(index == BY_IDEMPOTENCY_KEY ? t->extra->idem_key : t->evolution_key, key))
      t = index == BY_IDEMPOTENCY_KEY ? t->extra->ichain : t->kchain;
    hit = t && take(c, t, arg);
    pthread_rwlock_unlock(&c->lock);
    if(hit)
      return 1;
  }
  return 0;
}

static int take_id(const struct shard *c, const struct task *t, void *task_id)
{
  (void)c;
  memcpy(task_id, t->id, UTIL_UUID_LEN);
  return 1;
}

int task_cache_find_by_key(struct task_cache *cache, const char *key,
                           char task_id[UTIL_UUID_LEN])
{
  return find_indexed(cache, BY_EVOLUTION_KEY, key, take_id, task_id);
}

/* Copies the task's callback URL; returns 0, or -1 when out of memory. */
static int copy_callback_url(struct task_cache *cache, const char *task_id, char **url)
{
  struct shard *c = shard_of(cache, task_id);
  struct task *t;
  int rc = 0;
  *url = NULL;
  pthread_rwlock_rdlock(&c->lock);
  if((t = find(c, task_id)) && callback_url_of(t) && !(*url = strdup(callback_url_of(t))))
    rc = -1;
  pthread_rwlock_unlock(&c->lock);
  return rc;
}

int task_cache_owe_callback(struct task_cache *cache, const char *key, enum delivery_state state,
                            char task_id[UTIL_UUID_LEN], char **url)
{
  unsigned char bit = (unsigned char)(1u << state);
  struct pending_receipt *p;
  int ours;
  *url = NULL;
  if(state == DELIVERY_SENT)
    return 0; /* send.message: the SUCCESS callback says it */
  if(task_cache_find_by_key(cache, key, task_id))
    return copy_callback_url(cache, task_id, url) ? -1 : 1;
  pthread_mutex_lock(&cache->pending_lock);
  if((p = pending_find(cache, key)))
    p->owed |= bit;
  pthread_mutex_unlock(&cache->pending_lock);
  if(!p || !task_cache_find_by_key(cache, key, task_id))
    return 0; /* the SUCCESS will find the debt (or the receipt was dropped: nothing owed) */
  /* The SUCCESS came in between: if it merged the receipts before the bit was set, the debt is
   * still on the receipt left behind, and ours to pay now. */
  pthread_mutex_lock(&cache->pending_lock);
  p = pending_find(cache, key);
  ours = p && (p->owed & bit);
  if(ours)
    p->owed &= (unsigned char)~bit;
  pthread_mutex_unlock(&cache->pending_lock);
  if(!ours)
    return 0;
  return copy_callback_url(cache, task_id, url) ? -1 : 1;
}

int task_cache_take_owed(struct task_cache *cache, const char *task_id, unsigned *owed,
                         int64_t at_ms[DELIVERY_STATES], char **url, char **key)
{
  struct shard *c = shard_of(cache, task_id);
  struct task *t;
  int rc = 0;
  *owed = 0;
  *url = *key = NULL;
  pthread_rwlock_wrlock(&c->lock);
  t = find(c, task_id);
  if(t && t->owed) {
    if(callback_url_of(t) && t->evolution_key && t->receipts) {
      *url = strdup(callback_url_of(t));
      *key = strdup(t->evolution_key);
      if(*url && *key) {
        *owed = t->owed;
        memcpy(at_ms, t->receipts->at_ms, sizeof t->receipts->at_ms);
        rc = 1;
      }
      else {
        free(*url);
        free(*key);
        *url = *key = NULL;
      }
    }
    t->owed = 0;
  }
  pthread_rwlock_unlock(&c->lock);
  return rc;
}

int task_cache_receipt_is_news(struct task_cache *cache, const char *task_id,
                               enum delivery_state state, char **callback_url)
{
  struct shard *c = shard_of(cache, task_id);
  struct task *t;
  int news = 0;
  *callback_url = NULL;
  pthread_rwlock_rdlock(&c->lock);
  t = find(c, task_id);
  /* "sent" tells nothing a SUCCESS did not (send.message comes with every send). */
  if(t && !(state == DELIVERY_SENT && t->status == TASK_SUCCESS)) {
    const struct receipts *r = t->receipts;
    news = !r || !r->at_ms[state] || (state != DELIVERY_ERROR && state > r->state);
    if(news && callback_url_of(t))
      *callback_url = strdup(callback_url_of(t));
  }
  pthread_rwlock_unlock(&c->lock);
  return news;
}

static int apply_receipt(struct task_cache *cache, const struct status_event *ev)
{
  char id[UTIL_UUID_LEN];
  struct shard *c;
  struct task *t;
  int rc = 0;
  if(ev->task_id[0])
    memcpy(id, ev->task_id, UTIL_UUID_LEN);
  else if(!task_cache_find_by_key(cache, ev->evolution_key, id))
    return keep_pending(cache, ev);
  c = shard_of(cache, id);
  pthread_rwlock_wrlock(&c->lock);
  /* A receipt is matched on the instance too: Evolution's message ids are unique within an
   * instance, and a webhook of one instance must not move another instance's task. */
  if((t = find(c, id)) && !(ev->instance && t->instance && strcmp(ev->instance, t->instance)))
    rc = merge_receipt(&t->receipts, ev->delivery, ev->at_ms);
  pthread_rwlock_unlock(&c->lock);
  if(!t && !ev->task_id[0])
    return keep_pending(cache, ev); /* evicted between the two looks */
  return rc;
}

int task_cache_apply(struct task_cache *cache, const struct status_event *ev)
{
  struct shard *c;
  int64_t rank = status_rank_in(ev->status, ev->attempt, ev->generation);
  struct task *t;
  int rc = 1;
  if(ev->status == TASK_RECEIPT)
    return apply_receipt(cache, ev);
  c = shard_of(cache, ev->task_id);
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
    t->older = c->newest;
    c->newest = t;
    c->count++;
    atomic_fetch_add(c->total, 1);
  }
  /* What the request was is merged whatever the order events arrive in. */
  if(ev->tenant && !t->tenant)
    t->tenant = intern(cache, ev->tenant);
  if(ev->instance && !t->instance)
    t->instance = intern(cache, ev->instance);
  if(ev->request_id && !t->request_id && !(t->request_id = strdup(ev->request_id)))
    rc = -1;
  if(ev->idempotency_key && !idem_key_of(t)) {
    char scoped[TASK_CACHE_IDEM_MAX];
    size_t b;
    task_cache_idem_key(ev->tenant, ev->idempotency_key, scoped);
    b = hash_id(scoped) & (c->nibuckets - 1);
    if(!extra_of(t) || !(t->extra->idem_key = strdup(scoped)))
      rc = -1;
    else {
      t->extra->ichain = c->ibuckets[b];
      c->ibuckets[b] = t;
    }
  }
  if(ev->request_hash && idem_key_of(t))
    t->extra->request_hash = ev->request_hash;
  if(ev->callback_url && !callback_url_of(t) &&
     (!extra_of(t) || !(t->extra->callback_url = strdup(ev->callback_url))))
    rc = -1;
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
  t->reconciled = ev->status == TASK_SUCCESS && ev->reconciled;
  if(ev->evolution_key && strlen(ev->evolution_key) > STATUS_KEY_MAX)
    ; /* not indexable: a receipt could not name it anyway */
  else if(!(ev->evolution_key && t->evolution_key && !strcmp(ev->evolution_key, t->evolution_key))) {
    unindex_key(c, t);
    if(replace(&t->evolution_key, ev->evolution_key))
      rc = -1;
    else if(t->evolution_key && index_key(cache, c, t))
      rc = -1;
  }
  if(set_error(t, ev->error_code, ev->error_message))
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

/* The task document's "delivery": null until the message was sent, then the highest state
 * the webhooks reported (at least "sent") and when each state was first reported. */
static json_t *delivery_doc(const struct task *t)
{
  static const char *const AT_NAMES[DELIVERY_STATES] = {
    NULL, "sent_at", "server_ack_at", "delivered_at", "read_at", "error_at"};
  const struct receipts *r = t->receipts;
  enum delivery_state state = r ? (enum delivery_state)r->state : DELIVERY_NONE;
  json_t *d;
  if(t->status != TASK_SUCCESS && !(r && state))
    return json_null();
  if(state < DELIVERY_SENT)
    state = DELIVERY_SENT;
  d = json_pack("{s:s}", "state", delivery_name(state));
  for(int s = 1; d && s < DELIVERY_STATES; s++) {
    int64_t at = r ? r->at_ms[s] : 0;
    if(s == DELIVERY_SENT && !at && t->status == TASK_SUCCESS)
      at = t->updated_at_ms;
    json_object_set_new(d, AT_NAMES[s], time_or_null(at));
  }
  return d ? d : json_null();
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
    result = t->reconciled ? json_pack("{s:b, s:s, s:s?, s:b}", "success", 1, "phone", t->phone,
                                       "evolution_key", t->evolution_key, "reconciled", 1)
                           : json_pack("{s:b, s:s, s:s?}", "success", 1, "phone", t->phone,
                                       "evolution_key", t->evolution_key);
  else
    result = json_null();
  if(error_code(t))
    error = json_pack("{s:s, s:s}", "code", error_code(t), "message", error_message(t));
  else
    error = json_null();
  doc = json_pack("{s:s, s:s, s:i, s:o, s:o, s:o, s:o, s:o, s:o, s:s?}", "task_id", t->id,
                  "status", status_name((enum task_status)t->status), "attempts", t->attempt,
                  "created_at", time_or_null(t->created_at_ms), "updated_at",
                  time_or_null(t->updated_at_ms), "result", result, "error", error,
                  "next_retry_at", time_or_null(t->next_retry_at_ms), "delivery",
                  delivery_doc(t), "request_id", t->request_id);
  if(doc)
    out = json_dumps(doc, JSON_COMPACT);
out:
  pthread_rwlock_unlock(&c->lock);
  json_decref(doc);
  return out;
}

/* Runs `take` on task `task_id` under its shard's read lock, if the task is known and within
 * its retention. Returns 1 when it ran. */
static int with_task(struct task_cache *cache, const char *task_id,
                     void (*take)(const struct task *t, void *arg), void *arg)
{
  struct shard *c = shard_of(cache, task_id);
  struct task *t;
  int found = 0;
  pthread_rwlock_rdlock(&c->lock);
  t = find(c, task_id);
  if(t && t->created_at_ms + c->retention_ms >= util_now_ms()) {
    take(t, arg);
    found = 1;
  }
  pthread_rwlock_unlock(&c->lock);
  return found;
}

struct status_out {
  enum task_status *status;
  int *attempt;
};

static void take_status(const struct task *t, void *arg)
{
  struct status_out *o = arg;
  *o->status = (enum task_status)t->status;
  *o->attempt = t->attempt;
}

int task_cache_status(struct task_cache *cache, const char *task_id, enum task_status *status,
                      int *attempt)
{
  struct status_out o = {status, attempt};
  return with_task(cache, task_id, take_status, &o);
}

struct owner_out {
  char *tenant, *instance;
};

static void take_owner(const struct task *t, void *arg)
{
  struct owner_out *o = arg;
  snprintf(o->tenant, JOB_TENANT_MAX + 1, "%s", t->tenant ? t->tenant : "");
  snprintf(o->instance, JOB_INSTANCE_MAX + 1, "%s", t->instance ? t->instance : "");
}

int task_cache_owner(struct task_cache *cache, const char *task_id,
                     char tenant[JOB_TENANT_MAX + 1], char instance[JOB_INSTANCE_MAX + 1])
{
  struct owner_out o = {tenant, instance};
  return with_task(cache, task_id, take_owner, &o);
}

struct idempotent_hit {
  char *task_id;
  uint64_t *request_hash;
  enum task_status *status;
};

static int take_idempotent(const struct shard *c, const struct task *t, void *arg)
{
  struct idempotent_hit *hit = arg;
  if(t->created_at_ms + c->retention_ms < util_now_ms())
    return 0;
  memcpy(hit->task_id, t->id, UTIL_UUID_LEN);
  *hit->request_hash = t->extra->request_hash;
  *hit->status = (enum task_status)t->status;
  return 1;
}

int task_cache_find_idempotent(struct task_cache *cache, const char *key,
                               char task_id[UTIL_UUID_LEN], uint64_t *request_hash,
                               enum task_status *status)
{
  struct idempotent_hit hit = {task_id, request_hash, status};
  return find_indexed(cache, BY_IDEMPOTENCY_KEY, key, take_idempotent, &hit);
}

size_t task_cache_size(struct task_cache *cache)
{
  return atomic_load(&cache->total);
}

/* ---- snapshots ---------------------------------------------------------------------------- */

size_t task_cache_shards(const struct task_cache *cache)
{
  return cache->nshards;
}

/* The event that recreates a task as it is, receipts aside: applied to an empty cache it sets
 * every field, and applied to one that knows more it changes nothing (the rank rule). */
static void task_event(const struct task *t, struct status_event *ev)
{
  memset(ev, 0, sizeof *ev);
  memcpy(ev->task_id, t->id, UTIL_UUID_LEN);
  ev->status = (enum task_status)t->status;
  ev->attempt = t->attempt;
  ev->generation = t->rank > 0 ? (int)(t->rank >> 40) : 0;
  ev->at_ms = t->updated_at_ms;
  ev->created_at_ms = t->created_at_ms;
  ev->phone = t->phone[0] ? (char *)t->phone : NULL;
  ev->instance = (char *)t->instance;
  ev->tenant = (char *)t->tenant;
  ev->request_id = t->request_id;
  if(idem_key_of(t)) {
    /* Stored scoped by tenant (task_cache_idem_key); the event carries the key itself. */
    const char *sep = strchr(t->extra->idem_key, '\x1f');
    ev->idempotency_key = sep ? (char *)sep + 1 : t->extra->idem_key;
    ev->request_hash = t->extra->request_hash;
  }
  ev->callback_url = (char *)callback_url_of(t);
  ev->evolution_key = t->evolution_key;
  ev->reconciled = t->reconciled;
  /* An event carries a code only with a message. */
  ev->error_code = (char *)error_code(t);
  ev->error_message = ev->error_code ? (char *)error_message(t) : NULL;
  ev->next_retry_at_ms = t->next_retry_at_ms;
}

static void receipt_events(const char *task_id, const char *key, const struct receipts *r,
                           status_event_fn fn, void *ctx)
{
  if(!key)
    return; /* a receipt event names its message */
  for(int s = 1; s < DELIVERY_STATES; s++) {
    struct status_event ev;
    if(!r->at_ms[s])
      continue;
    memset(&ev, 0, sizeof ev);
    if(task_id)
      memcpy(ev.task_id, task_id, UTIL_UUID_LEN);
    ev.status = TASK_RECEIPT;
    ev.delivery = (enum delivery_state)s;
    ev.at_ms = r->at_ms[s];
    ev.evolution_key = (char *)key;
    fn(&ev, ctx);
  }
}

size_t task_cache_export_shard(struct task_cache *cache, size_t shard, status_event_fn fn,
                               void *ctx)
{
  struct shard *c = &cache->shards[shard];
  size_t n = 0;
  pthread_rwlock_rdlock(&c->lock);
  for(const struct task *t = c->oldest; t; t = t->newer, n++) {
    struct status_event ev;
    if(t->rank < 0)
      continue;
    task_event(t, &ev);
    fn(&ev, ctx);
    if(t->receipts)
      receipt_events(t->id, t->evolution_key, t->receipts, fn, ctx);
  }
  pthread_rwlock_unlock(&c->lock);
  return n;
}

size_t task_cache_export_pending(struct task_cache *cache, status_event_fn fn, void *ctx)
{
  size_t n = 0;
  pthread_mutex_lock(&cache->pending_lock);
  for(const struct pending_receipt *p = cache->pending_oldest; p; p = p->newer, n++)
    receipt_events(NULL, p->key, &p->r, fn, ctx);
  pthread_mutex_unlock(&cache->pending_lock);
  return n;
}

/* ---- search (GET /tasks) ------------------------------------------------------------------ */

/* Insertion order follows creation order except for events that arrive late (another
 * replica's PENDING, a stream read after a reconnect): a shard's walk stops this far past the
 * oldest task it would still return. */
#define SEARCH_SKEW_MS 60000

struct hit {
  int64_t created_ms;
  char id[UTIL_UUID_LEN];
};

/* Newest first: by creation time, then by id (so that the order, and a cursor, are total). */
static int hit_after(int64_t ms, const char *id, int64_t other_ms, const char *other_id)
{
  return ms != other_ms ? ms < other_ms : strcmp(id, other_id) < 0;
}

static int query_matches(const struct task_query *q, const struct task *t)
{
  if(q->statuses && !(q->statuses & (1u << t->status)))
    return 0;
  if(q->instance && (!t->instance || strcmp(q->instance, t->instance)))
    return 0;
  if(q->phone && strcmp(q->phone, t->phone))
    return 0;
  if(q->request_id && (!t->request_id || strcmp(q->request_id, t->request_id)))
    return 0;
  if(q->tenant && strcmp(q->tenant, t->tenant ? t->tenant : ""))
    return 0;
  if(q->since_ms && t->created_at_ms < q->since_ms)
    return 0;
  if(q->until_ms && t->created_at_ms > q->until_ms)
    return 0;
  return !q->cursor_ms ||
         hit_after(t->created_at_ms, t->id, q->cursor_ms, q->cursor_id);
}

/* Inserts into hits[0..*n), kept newest first and at most cap long. */
static void keep_hit(struct hit *hits, size_t *n, size_t cap, const struct task *t)
{
  size_t i = *n;
  if(i == cap) {
    if(!hit_after(hits[cap - 1].created_ms, hits[cap - 1].id, t->created_at_ms, t->id))
      return; /* not newer than the last kept one */
    i = cap - 1;
  }
  else
    (*n)++;
  while(i > 0 && hit_after(hits[i - 1].created_ms, hits[i - 1].id, t->created_at_ms, t->id)) {
    hits[i] = hits[i - 1];
    i--;
  }
  hits[i].created_ms = t->created_at_ms;
  memcpy(hits[i].id, t->id, UTIL_UUID_LEN);
}

char *task_cache_search(struct task_cache *cache, const struct task_query *q)
{
  size_t cap = q->limit + 1, n = 0;
  struct hit *hits = calloc(cap, sizeof *hits);
  int64_t now = util_now_ms();
  json_t *list = json_array(), *doc = NULL;
  char *out = NULL;
  if(!hits || !list)
    goto done;
  for(size_t s = 0; s < cache->nshards; s++) {
    struct shard *c = &cache->shards[s];
    pthread_rwlock_rdlock(&c->lock);
    for(struct task *t = c->newest; t; t = t->older) {
      if(t->created_at_ms + c->retention_ms < now)
        break; /* the rest is older still, and expired */
      if(n == cap && t->created_at_ms + SEARCH_SKEW_MS < hits[cap - 1].created_ms)
        break; /* nothing further down can be among the newest */
      if(q->since_ms && t->created_at_ms + SEARCH_SKEW_MS < q->since_ms)
        break;
      if(query_matches(q, t))
        keep_hit(hits, &n, cap, t);
    }
    pthread_rwlock_unlock(&c->lock);
  }
  for(size_t i = 0; i < n && i < q->limit; i++) {
    char *one = task_cache_render(cache, hits[i].id);
    json_t *d = one ? json_loads(one, 0, NULL) : NULL;
    free(one);
    if(d)
      json_array_append_new(list, d); /* a task dropped meanwhile is simply not listed */
  }
  if(n > q->limit) {
    char cursor[64];
    snprintf(cursor, sizeof cursor, "%lld_%s", (long long)hits[q->limit - 1].created_ms,
             hits[q->limit - 1].id);
    doc = json_pack("{s:O, s:s}", "tasks", list, "next_cursor", cursor);
  }
  else
    doc = json_pack("{s:O, s:n}", "tasks", list, "next_cursor");
  if(doc)
    out = json_dumps(doc, JSON_COMPACT);
done:
  json_decref(doc);
  json_decref(list);
  free(hits);
  return out;
}

int task_cache_parse_cursor(const char *text, struct task_query *q)
{
  char *end;
  long long ms = strtoll(text, &end, 10);
  if(end == text || *end != '_' || ms <= 0 || !util_is_uuid(end + 1))
    return -1;
  q->cursor_ms = ms;
  memcpy(q->cursor_id, end + 1, UTIL_UUID_LEN);
  return 0;
}

/* ---- statistics (GET /stats) ------------------------------------------------------------- */

/* 202 → SUCCESS times in buckets growing by 2^(1/4) from 1 ms: percentiles within 19 %. */
#define LATENCY_BUCKETS 96
#define N_STATUSES (TASK_RECEIPT + 1)

struct instance_counts {
  const char *name; /* interned */
  size_t by_status[N_STATUSES];
};

struct stats_acc {
  size_t total, by_status[N_STATUSES];
  size_t accepted[3], succeeded[3], failed[3]; /* in the last 1, 5, 15 minutes */
  size_t latency[LATENCY_BUCKETS], latency_n;
  struct instance_counts *inst;
  size_t n_inst, cap_inst;
  json_t *codes; /* FAILURE error codes → count */
};

static const int64_t WINDOWS_MS[3] = {60000, 300000, 900000};

static int latency_bucket(int64_t ms)
{
  int b = 0;
  double bound = 1.0;
  while(b < LATENCY_BUCKETS - 1 && (double)ms > bound) {
    bound *= 1.189207115; /* 2^(1/4) */
    b++;
  }
  return b;
}

static double bucket_bound_s(int b)
{
  double bound = 1.0;
  for(int i = 0; i < b; i++)
    bound *= 1.189207115;
  return bound / 1000.0;
}

static void count_task(struct stats_acc *a, const struct task *t, int64_t now)
{
  a->total++;
  a->by_status[t->status]++;
  for(int w = 0; w < 3; w++) {
    if(t->created_at_ms >= now - WINDOWS_MS[w])
      a->accepted[w]++;
    if(t->updated_at_ms >= now - WINDOWS_MS[w]) {
      a->succeeded[w] += t->status == TASK_SUCCESS;
      a->failed[w] += t->status == TASK_FAILURE;
    }
  }
  if(t->status == TASK_SUCCESS && t->updated_at_ms >= t->created_at_ms) {
    a->latency[latency_bucket(t->updated_at_ms - t->created_at_ms)]++;
    a->latency_n++;
  }
  if(t->status == TASK_FAILURE && error_code(t)) {
    json_t *c = json_object_get(a->codes, error_code(t));
    json_object_set_new(a->codes, error_code(t),
                        json_integer(c ? json_integer_value(c) + 1 : 1));
  }
  if(t->instance) {
    size_t i;
    /* Instances are few: a scan of the interned pointers. */
    for(i = 0; i < a->n_inst && a->inst[i].name != t->instance; i++)
      ;
    if(i == a->n_inst) {
      if(a->n_inst == a->cap_inst) {
        size_t cap = a->cap_inst ? a->cap_inst * 2 : 16;
        struct instance_counts *grown = realloc(a->inst, cap * sizeof *grown);
        if(!grown)
          return;
        a->inst = grown;
        a->cap_inst = cap;
      }
      memset(&a->inst[i], 0, sizeof a->inst[i]);
      a->inst[i].name = t->instance;
      a->n_inst++;
    }
    a->inst[i].by_status[t->status]++;
  }
}

static json_t *status_counts(const size_t *by_status)
{
  json_t *o = json_object();
  for(int s = 0; o && s < N_STATUSES; s++)
    if(s != TASK_RECEIPT)
      json_object_set_new(o, status_name((enum task_status)s), json_integer((json_int_t)by_status[s]));
  return o;
}

static json_t *rates(const size_t *n)
{
  return json_pack("{s:f, s:f, s:f}", "1m", (double)n[0] / 60.0, "5m", (double)n[1] / 300.0,
                   "15m", (double)n[2] / 900.0);
}

static json_t *percentile(const struct stats_acc *a, double p)
{
  size_t want, seen = 0;
  if(!a->latency_n)
    return json_null();
  want = (size_t)((double)a->latency_n * p);
  if(want >= a->latency_n)
    want = a->latency_n - 1;
  for(int b = 0; b < LATENCY_BUCKETS; b++) {
    seen += a->latency[b];
    if(seen > want)
      return json_real(bucket_bound_s(b));
  }
  return json_null();
}

char *task_cache_stats(struct task_cache *cache, const char *tenant)
{
  struct stats_acc a;
  int64_t now = util_now_ms();
  json_t *doc, *inst;
  char *out = NULL;
  memset(&a, 0, sizeof a);
  if(!(a.codes = json_object()))
    return NULL;
  for(size_t s = 0; s < cache->nshards; s++) {
    struct shard *c = &cache->shards[s];
    pthread_rwlock_rdlock(&c->lock);
    for(struct task *t = c->newest; t; t = t->older)
      if(t->created_at_ms + c->retention_ms >= now &&
         (!tenant || !strcmp(tenant, t->tenant ? t->tenant : "")))
        count_task(&a, t, now);
    pthread_rwlock_unlock(&c->lock);
  }
  inst = json_object();
  for(size_t i = 0; inst && i < a.n_inst; i++)
    json_object_set_new(inst, a.inst[i].name, status_counts(a.inst[i].by_status));
  doc = json_pack("{s:I, s:o, s:o, s:{s:o, s:o, s:o}, s:{s:o, s:o, s:o, s:I}, s:O}", "total",
                  (json_int_t)a.total, "by_status", status_counts(a.by_status), "by_instance",
                  inst ? inst : json_object(), "rates_per_second", "accepted", rates(a.accepted),
                  "success", rates(a.succeeded), "failure", rates(a.failed),
                  "success_latency_seconds", "p50", percentile(&a, 0.50), "p90",
                  percentile(&a, 0.90), "p99", percentile(&a, 0.99), "count",
                  (json_int_t)a.latency_n, "failures_by_code", a.codes);
  if(doc)
    out = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(6));
  json_decref(doc);
  json_decref(a.codes);
  free(a.inst);
  return out;
}
