/* Snapshots of the task cache on the broker: the loader a starting replica runs, and the writer
 * thread of the replica that holds the writer lock. */
#include "snapshots.h"

#include <jansson.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "status.h"
#include "status_reader.h"
#include "util.h"

#define PART_TYPE "status.snapshot"
#define INDEX_TYPE "status.snapshot.index"
/* Events per stream message: ~400 KiB, few enough messages that the broker's cost per message
 * does not matter, small enough that a part is never a problem for a frame or a credit. */
#define PART_EVENTS 1000

/* ---- loading ------------------------------------------------------------------------------ */

#define INDEX_CH SNAPSHOT_LOAD_FIRST_CH /* markers on +1, +2 */
#define PARTS_CH (SNAPSHOT_LOAD_FIRST_CH + 3)
/* The loader gives up (and the replica replays the stream) after this long without input. */
#define LOAD_IDLE_MS 30000
/* A snapshot's parts are read from this long before it began: the broker's clock, which
 * stamps the chunks, may run behind ours. */
#define CLOCK_SLACK_S 10

struct load {
  struct mq_session *s;
  struct task_cache *cache;
  struct mq_stream *st;
  int done;
  /* The newest index record read. */
  int have;
  char id[64];
  int64_t status_offset, from_s, written_ms;
  uint64_t parts, tasks;
  /* The parts read of that snapshot. */
  uint64_t parts_read, events, bad;
  int64_t last_input_ms;
};

static int is_type(const struct mq_message *m, const char *type)
{
  char t[48];
  return !mq_message_prop(m, MQ_PROP_TYPE, t, sizeof t) && !strcmp(t, type);
}

/* A delivery of the stream being read: what it is (MQ_STREAM_*), or -1 when it is not ours. */
static int stream_step(struct load *l, uint16_t ch, uint64_t tag, struct mq_message *m)
{
  if(ch != mq_stream_channel(l->st))
    return -1;
  l->last_input_ms = util_mono_ms();
  return mq_stream_delivery(l->st, l->s, tag, m);
}

static void on_index(void *ctx, uint16_t ch, uint64_t tag, int redelivered,
                     struct mq_message *m)
{
  struct load *l = ctx;
  const char *id, *at = NULL;
  json_int_t offset, from, parts, tasks = 0;
  json_t *root;
  const void *body;
  size_t len;
  int what = stream_step(l, ch, tag, m);
  (void)redelivered;
  if(what == MQ_STREAM_CAUGHT_UP)
    l->done = 1;
  if(what != MQ_STREAM_EVENT || !is_type(m, INDEX_TYPE))
    return;
  body = mq_message_body(m, &len);
  root = json_loadb(body, len, 0, NULL);
  /* The stream is in order: the last good record read names the newest snapshot. */
  if(root &&
     !json_unpack(root, "{s:s, s:I, s:I, s:I, s?I, s?s}", "snapshot", &id, "status_offset",
                  &offset, "from", &from, "parts", &parts, "tasks", &tasks, "at", &at) &&
     strlen(id) < sizeof l->id && offset >= 0 && parts >= 0 && from >= 0) {
    snprintf(l->id, sizeof l->id, "%s", id);
    l->status_offset = offset;
    l->from_s = from;
    l->parts = (uint64_t)parts;
    l->tasks = (uint64_t)tasks;
    l->written_ms = 0;
    if(at)
      util_parse_time(at, &l->written_ms);
    l->have = 1;
  }
  else
    log_event(CFG_LOG_WARN, "skipping a bad snapshot index record", NULL);
  json_decref(root);
}

static void apply_one(const struct status_event *ev, void *arg)
{
  struct load *l = arg;
  if(task_cache_apply(l->cache, ev) < 0)
    l->bad++;
  l->events++;
}

static void on_part(void *ctx, uint16_t ch, uint64_t tag, int redelivered, struct mq_message *m)
{
  struct load *l = ctx;
  char id[64], err[256];
  int64_t part;
  const void *body;
  size_t len;
  int what = stream_step(l, ch, tag, m);
  (void)redelivered;
  if(what < 0 || l->done)
    return; /* one pump may bring more after the end */
  if(what == MQ_STREAM_CAUGHT_UP)
    l->done = 1; /* read to the end without all its parts: incomplete */
  /* Parts are published in order on one channel: the next one expected is the only one
   * counted (an older snapshot's parts, read first, have another id). */
  if(what != MQ_STREAM_EVENT || !is_type(m, PART_TYPE) ||
     mq_message_header_str(m, "snapshot", id, sizeof id) || strcmp(id, l->id) ||
     mq_message_header_int(m, "part", &part) || part != (int64_t)l->parts_read)
    return;
  body = mq_message_body(m, &len);
  if(status_message_decode(body, len, apply_one, l, err, sizeof err)) {
    log_event(CFG_LOG_WARN, "a bad event in a snapshot", "reason", err, NULL);
    l->bad++;
  }
  if(++l->parts_read == l->parts)
    l->done = 2;
}

/* Follows `queue` from from_s (0: its start) through `deliver` until it sets l->done, then
 * closes its channels. Returns 0 (also when stopping or idle too long: l->done is then 0), or
 * -1 when the connection must be dropped. */
static int read_stream(struct load *l, const struct cfg *cfg, const char *queue, uint16_t ch,
                       int64_t from_s,
                       void (*deliver)(void *, uint16_t, uint64_t, int, struct mq_message *),
                       const atomic_int *stopping, char *err, size_t errlen)
{
  struct mq_handlers h;
  int rc = 0;
  l->done = 0;
  l->st = mq_stream_new(cfg, "api-snapshot", ch, (uint16_t)(ch + 1), (uint16_t)(ch + 2), 64);
  if(!l->st) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  mq_stream_set_queue(l->st, queue);
  if(from_s > 0)
    mq_stream_start_at(l->st, from_s * 1000);
  if(mq_stream_start(l->st, l->s, err, errlen)) {
    mq_stream_free(l->st);
    l->st = NULL;
    return -1;
  }
  memset(&h, 0, sizeof h);
  h.ctx = l;
  h.deliver = deliver;
  h.publishers[0] = mq_stream_publisher(l->st);
  l->last_input_ms = util_mono_ms();
  while(!l->done && !atomic_load(stopping)) {
    if(mq_pump(l->s, &h, err, errlen) || mq_stream_tick(l->st, l->s)) {
      rc = -1;
      break;
    }
    if(util_mono_ms() - l->last_input_ms > LOAD_IDLE_MS) {
      log_event(CFG_LOG_WARN, "no input from a snapshot stream: giving up on it", "stream",
                queue, NULL);
      break;
    }
    mq_session_wait_input(l->s, 100);
  }
  if(!rc) {
    /* Closing the channels ends the subscription and the marker's publisher. */
    mq_channel_close(l->s, mq_publisher_channel(mq_stream_publisher(l->st)));
    mq_channel_close(l->s, ch);
  }
  mq_stream_free(l->st);
  l->st = NULL;
  return rc;
}

int snapshot_load(struct mq_session *s, const struct cfg *cfg, struct task_cache *cache,
                  const atomic_int *stopping, struct snapshot_loaded *out, char *err,
                  size_t errlen)
{
  struct load l;
  char name[512], secs[32], offset[32], tasks[32];
  int64_t t0 = util_mono_ms();
  memset(&l, 0, sizeof l);
  l.s = s;
  l.cache = cache;
  mq_snapshot_index_name(cfg, name, sizeof name);
  if(read_stream(&l, cfg, name, INDEX_CH, 0, on_index, stopping, err, errlen))
    return -1;
  if(!l.have || l.done != 1)
    return 0;
  mq_snapshot_stream_name(cfg, name, sizeof name);
  /* An empty cache's snapshot has no parts: nothing to read (a record that says no parts but
   * some tasks is not one of ours). */
  if(!l.parts && l.tasks)
    return 0;
  if(l.parts && read_stream(&l, cfg, name, PARTS_CH,
                            l.from_s > CLOCK_SLACK_S ? l.from_s - CLOCK_SLACK_S : 1, on_part,
                            stopping, err, errlen))
    return -1;
  if(l.parts && l.done != 2) {
    if(!atomic_load(stopping))
      log_event(CFG_LOG_WARN, "the newest snapshot is not whole on the broker: replaying the "
                "status stream instead", "snapshot", l.id, NULL);
    return 0;
  }
  malloc_trim(0); /* the parts read (hundreds of KiB each) are freed: give the pages back */
  memset(out, 0, sizeof *out);
  snprintf(out->id, sizeof out->id, "%s", l.id);
  out->status_offset = l.status_offset;
  out->written_ms = l.written_ms;
  out->tasks = l.tasks;
  out->events = l.events;
  out->parts = l.parts;
  out->seconds = (double)(util_mono_ms() - t0) / 1e3;
  snprintf(secs, sizeof secs, "%.3f", out->seconds);
  snprintf(offset, sizeof offset, "%lld", (long long)l.status_offset);
  snprintf(tasks, sizeof tasks, "%llu", (unsigned long long)l.tasks);
  log_event(CFG_LOG_INFO, "task cache loaded from a snapshot", "snapshot", l.id, "tasks", tasks,
            "status_offset", offset, "seconds", secs, NULL);
  return 1;
}

/* ---- writing ------------------------------------------------------------------------------ */

#define SETUP_CH 1
#define PUB_CH_A 2
#define PUB_CH_B 3
#define LOCK_CH 4
#define CONNECT_TIMEOUT_MS 5000
#define CONFIRM_WAIT_MS 30000
/* How often a replica that does not hold the lock tries again. */
#define CLAIM_EVERY_MS 5000
/* A snapshot is written again this often even when little changed, well within the streams'
 * retention (MQ_SNAPSHOT_MAX_AGE), so the newest one is always there to load. */
#define REFRESH_MS (5 * 60 * 1000)
/* Parts in flight before the writer waits for their confirms. */
#define PARTS_IN_FLIGHT 32

struct snapshot_writer {
  const struct cfg *cfg;
  struct task_cache *cache;
  struct status_reader *reader;
  pthread_t thread;
  atomic_int stopping;
  pthread_mutex_t stats_lock; /* guards stats */
  struct snapshot_writer_stats stats;
  /* Owned by the writer thread. */
  struct mq_session *session;
  struct mq_publisher *pub;
  int connected;
  int64_t next_claim_ms, last_mono_ms;
  uint64_t events_at_last;
  unsigned long long not_acked; /* settles other than CONFIRM_ACKED in this snapshot */
};

static void on_settled(void *owner, int ok, void *ctx)
{
  struct snapshot_writer *w = ctx;
  (void)owner;
  if(ok != CONFIRM_ACKED)
    w->not_acked++;
}

/* The encoded events of one shard, collected under its lock and published after. */
struct events_buf {
  char **bodies;
  size_t *lens;
  size_t n, cap;
  int oom;
};

static void collect(const struct status_event *ev, void *arg)
{
  struct events_buf *b = arg;
  char *body;
  size_t len;
  if(b->oom)
    return;
  if(b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 1024;
    char **bodies = realloc(b->bodies, cap * sizeof *bodies);
    size_t *lens = bodies ? realloc(b->lens, cap * sizeof *lens) : NULL;
    if(bodies)
      b->bodies = bodies;
    if(!lens) {
      b->oom = 1;
      return;
    }
    b->lens = lens;
    b->cap = cap;
  }
  if(!(body = status_event_encode(ev, &len))) {
    b->oom = 1;
    return;
  }
  b->bodies[b->n] = body;
  b->lens[b->n++] = len;
}

static void events_clear(struct events_buf *b)
{
  for(size_t i = 0; i < b->n; i++)
    free(b->bodies[i]);
  b->n = 0;
  b->oom = 0;
}

static int any_owner(void *owner, void *arg)
{
  (void)owner;
  (void)arg;
  return 1;
}

/* A part no queue took (the stream deleted under us) is refused: no index record follows. */
static int on_returned(void *ctx, uint16_t ch, struct mq_message *m)
{
  struct snapshot_writer *w = ctx;
  (void)ch;
  (void)m;
  mq_publisher_mark_returned(w->pub, any_owner, NULL);
  return 0;
}

static void writer_handlers(struct snapshot_writer *w, struct mq_handlers *h)
{
  memset(h, 0, sizeof *h);
  h->ctx = w;
  h->publishers[0] = w->pub;
  h->returned = on_returned;
}

static int wait_confirms(struct snapshot_writer *w, char *why, size_t len)
{
  struct mq_handlers h;
  writer_handlers(w, &h);
  return mq_publisher_wait(w->pub, w->session, &h, CONFIRM_WAIT_MS, why, len);
}

static int publish(struct snapshot_writer *w, const char *queue, const char *type,
                   const char *message_id, const struct mq_header *headers, size_t n_headers,
                   const char *body, size_t len)
{
  struct mq_props props;
  memset(&props, 0, sizeof props);
  props.message_id = message_id;
  props.type = type;
  props.app_id = "msg-api";
  props.headers = headers;
  props.n_headers = n_headers;
  return mq_publisher_publish(w->pub, w->session, "", queue, 1, &props, body, len, NULL) ==
                 MQ_PUBLISH_OK
             ? 0
             : -1;
}

/* Publishes the events of b as parts; returns 0 or -1 (why written). */
static int publish_parts(struct snapshot_writer *w, const char *queue, const char *id,
                         struct events_buf *b, uint64_t *part, char *why, size_t len)
{
  for(size_t i = 0; i < b->n; i += PART_EVENTS) {
    size_t n = b->n - i < PART_EVENTS ? b->n - i : PART_EVENTS, blen;
    char *batch = status_batch_join(b->bodies + i, b->lens + i, n, &blen);
    char mid[96];
    struct mq_header h[2];
    int rc;
    if(!batch) {
      snprintf(why, len, "out of memory");
      return -1;
    }
    snprintf(mid, sizeof mid, "%s.%llu", id, (unsigned long long)*part);
    h[0] = mq_header_str("snapshot", id);
    h[1] = mq_header_int("part", (int64_t)*part);
    rc = publish(w, queue, PART_TYPE, mid, h, 2, batch, blen);
    free(batch);
    if(rc) {
      snprintf(why, len, "a publish failed");
      return -1;
    }
    ++*part;
    if(mq_publisher_outstanding(w->pub) >= PARTS_IN_FLIGHT && wait_confirms(w, why, len))
      return -1;
  }
  return 0;
}

/* Writes one snapshot. Returns 0, or -1 when the connection must be dropped (why written). */
static int write_snapshot(struct snapshot_writer *w, char *why, size_t len)
{
  char id[UTIL_UUID_LEN], parts_q[512], index_q[512], at[UTIL_TIME_LEN], body[512];
  char secs[32], ntasks[32], offs[32];
  struct events_buf b;
  int64_t t0 = util_mono_ms(), wall = util_now_ms();
  /* Every event before the one read last is applied (the reader applies in order): a loader
   * that follows the stream from there misses nothing. */
  int64_t offset = status_reader_offset(w->reader);
  uint64_t events = status_reader_events(w->reader), part = 0, tasks = 0;
  int rc = -1, n;
  if(offset < 0)
    offset = 0;
  memset(&b, 0, sizeof b);
  util_uuid4(id);
  mq_snapshot_stream_name(w->cfg, parts_q, sizeof parts_q);
  mq_snapshot_index_name(w->cfg, index_q, sizeof index_q);
  w->not_acked = 0;
  for(size_t s = 0; s < task_cache_shards(w->cache); s++) {
    if(atomic_load(&w->stopping)) {
      snprintf(why, len, "stopping");
      goto out;
    }
    tasks += task_cache_export_shard(w->cache, s, collect, &b);
    if(s + 1 == task_cache_shards(w->cache))
      task_cache_export_pending(w->cache, collect, &b);
    if(b.oom) {
      snprintf(why, len, "out of memory");
      goto out;
    }
    if(publish_parts(w, parts_q, id, &b, &part, why, len))
      goto out;
    events_clear(&b);
  }
  if(wait_confirms(w, why, len))
    goto out;
  if(w->not_acked) {
    snprintf(why, len, "the broker refused %llu parts", w->not_acked);
    goto out;
  }
  /* The parts are safe: now the record that makes the snapshot the one to load. */
  n = snprintf(body, sizeof body,
               "{\"v\":1,\"snapshot\":\"%s\",\"status_offset\":%lld,\"from\":%lld,"
               "\"parts\":%llu,\"tasks\":%llu,\"at\":\"%s\"}",
               id, (long long)offset, (long long)(wall / 1000), (unsigned long long)part,
               (unsigned long long)tasks, util_format_time(util_now_ms(), at));
  if(publish(w, index_q, INDEX_TYPE, id, NULL, 0, body, (size_t)n)) {
    snprintf(why, len, "a publish failed");
    goto out;
  }
  if(wait_confirms(w, why, len))
    goto out;
  if(w->not_acked) {
    snprintf(why, len, "the broker refused the index record");
    goto out;
  }
  rc = 0;
  w->last_mono_ms = util_mono_ms();
  w->events_at_last = events;
  pthread_mutex_lock(&w->stats_lock);
  w->stats.written++;
  w->stats.last_ms = util_now_ms();
  w->stats.last_status_offset = offset;
  w->stats.last_tasks = tasks;
  w->stats.last_seconds = (double)(w->last_mono_ms - t0) / 1e3;
  pthread_mutex_unlock(&w->stats_lock);
  snprintf(secs, sizeof secs, "%.3f", (double)(w->last_mono_ms - t0) / 1e3);
  snprintf(ntasks, sizeof ntasks, "%llu", (unsigned long long)tasks);
  snprintf(offs, sizeof offs, "%lld", (long long)offset);
  log_event(CFG_LOG_INFO, "snapshot written", "snapshot", id, "tasks", ntasks, "status_offset",
            offs, "seconds", secs, NULL);
out:
  events_clear(&b);
  free(b.bodies);
  free(b.lens);
  /* A shard's encoded events (megabytes) are freed now: give the pages back, so a replica's
   * memory is its cache, not its cache plus the high-water mark of its last snapshot. */
  malloc_trim(0);
  if(rc) {
    pthread_mutex_lock(&w->stats_lock);
    w->stats.failed++;
    pthread_mutex_unlock(&w->stats_lock);
  }
  return rc;
}

static void set_holder(struct snapshot_writer *w, int holder)
{
  pthread_mutex_lock(&w->stats_lock);
  w->stats.holder = holder;
  pthread_mutex_unlock(&w->stats_lock);
}

static int connect_writer(struct snapshot_writer *w, char *err, size_t errlen)
{
  if(mq_session_open(w->session, CONNECT_TIMEOUT_MS, err, errlen))
    return -1;
  if(mq_channel_open(w->session, SETUP_CH, err, errlen) ||
     mq_declare_topology(w->session, SETUP_CH, w->cfg, err, errlen) ||
     mq_channel_open(w->session, LOCK_CH, err, errlen) ||
     mq_publisher_start(w->pub, w->session, err, errlen)) {
    mq_session_lost(w->session);
    return -1;
  }
  w->connected = 1;
  w->next_claim_ms = 0;
  return 0;
}

/* One turn while connected: claim the lock, write when due. Returns 0 or -1 (drop). */
static int writer_turn(struct snapshot_writer *w, char *why, size_t len)
{
  struct snapshot_writer_stats st;
  int64_t now = util_mono_ms();
  snapshot_writer_stats(w, &st);
  if(!st.holder) {
    char name[512];
    int rc;
    if(now < w->next_claim_ms)
      return 0;
    w->next_claim_ms = now + CLAIM_EVERY_MS;
    snprintf(name, sizeof name, "%s.snapshots.writer", w->cfg->topology.status_stream);
    if((rc = mq_claim_exclusive(w->session, LOCK_CH, name, why, len)) < 0)
      return -1;
    if(!rc)
      return 0;
    set_holder(w, 1);
    w->last_mono_ms = 0; /* the first one at once: the last writer's may be old */
    log_event(CFG_LOG_INFO, "this replica writes the cache snapshots", "lock", name, NULL);
  }
  if(!status_reader_ready(w->reader))
    return 0;
  if(w->last_mono_ms && now - w->last_mono_ms < REFRESH_MS) {
    /* A new replica loads the snapshot, then replays what came after it: a new one once that
     * is a quarter of the cache's size, so a start-up costs at most 1.25 caches, and the
     * snapshots written cost at most 4 times the events they spare replaying. */
    uint64_t since = status_reader_events(w->reader) - w->events_at_last;
    uint64_t enough = task_cache_size(w->cache) / 4;
    if(!since || since < enough ||
       now - w->last_mono_ms < (int64_t)w->cfg->api.snapshot_interval_ms)
      return 0;
  }
  return write_snapshot(w, why, len);
}

static void *writer_main(void *arg)
{
  struct snapshot_writer *w = arg;
  struct mq_handlers h;
  int64_t retry_at = 0;
  writer_handlers(w, &h);
  while(!atomic_load(&w->stopping)) {
    char why[512];
    int64_t now = util_mono_ms();
    if(!w->connected) {
      struct timespec ts = {0, 100 * 1000000L};
      if(now >= retry_at && connect_writer(w, why, sizeof why)) {
        log_event(CFG_LOG_WARN, "cannot connect to the broker", "role", "api-snapshot",
                  "reason", why, NULL);
        retry_at = now + mq_session_retry_delay_ms(w->session);
      }
      if(!w->connected)
        nanosleep(&ts, NULL);
      continue;
    }
    if(mq_pump(w->session, &h, why, sizeof why) || writer_turn(w, why, sizeof why)) {
      if(!atomic_load(&w->stopping))
        log_event(CFG_LOG_WARN, "snapshot writer: broker connection dropped", "reason", why,
                  NULL);
      mq_publisher_lost(w->pub);
      mq_session_lost(w->session);
      set_holder(w, 0);
      w->connected = 0;
      retry_at = 0;
      continue;
    }
    mq_session_wait_input(w->session, 200);
  }
  mq_session_close(w->session);
  return NULL;
}

struct snapshot_writer *snapshot_writer_start(const struct cfg *cfg, struct task_cache *cache,
                                              struct status_reader *reader, char *err,
                                              size_t errlen)
{
  struct snapshot_writer *w;
  err[0] = 0;
  if(!cfg->api.snapshot_interval_ms)
    return NULL;
  if(!(w = calloc(1, sizeof *w))) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  w->cfg = cfg;
  w->cache = cache;
  w->reader = reader;
  w->stats.last_status_offset = -1;
  pthread_mutex_init(&w->stats_lock, NULL);
  w->session = mq_session_new(cfg, "api-snapshot");
  w->pub = mq_publisher_new(PUB_CH_A, PUB_CH_B, on_settled, w);
  if(!w->session || !w->pub) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if(pthread_create(&w->thread, NULL, writer_main, w)) {
    snprintf(err, errlen, "cannot start the snapshot writer thread");
    goto fail;
  }
  return w;
fail:
  mq_publisher_free(w->pub);
  mq_session_free(w->session);
  pthread_mutex_destroy(&w->stats_lock);
  free(w);
  return NULL;
}

void snapshot_writer_stop(struct snapshot_writer *w)
{
  if(!w)
    return;
  atomic_store(&w->stopping, 1);
  pthread_join(w->thread, NULL);
  mq_publisher_free(w->pub);
  mq_session_free(w->session);
  pthread_mutex_destroy(&w->stats_lock);
  free(w);
}

void snapshot_writer_stats(struct snapshot_writer *w, struct snapshot_writer_stats *out)
{
  if(!w) {
    memset(out, 0, sizeof *out);
    out->last_status_offset = -1;
    return;
  }
  pthread_mutex_lock(&w->stats_lock);
  *out = w->stats;
  pthread_mutex_unlock(&w->stats_lock);
}
