/* The api's status reader: one thread owns an AMQP connection that consumes the status stream,
 * from the start of retention at boot and then live, into the task cache. */
#include "status_reader.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "log.h"
#include "mq.h"
#include "publisher.h"
#include "snapshots.h"
#include "status.h"
#include "util.h"
#include "workers.h"

/* Channel 1 declares the topology, 2 follows the stream, 3 and 4 publish its markers. */
#define SETUP_CH 1
#define STREAM_CH 2
#define MARKER_CH_A 3
#define MARKER_CH_B 4
#define CONNECT_TIMEOUT_MS 5000
/* Longest wait for input: how late a stop request may be noticed (and well under half of the
 * shortest heartbeat, so heartbeats are serviced in time). */
#define POLL_MS 100
/* Stream consumers need a prefetch (acks are credit); acks go out in batches of half of it. */
#define PREFETCH 2000

struct status_reader {
  const struct cfg *cfg;
  struct task_cache *cache;
  struct workers *workers; /* the fleet, from the heartbeats on the stream */
  struct metrics_hist success_latency; /* 202 → SUCCESS of the tasks seen succeed live */
  pthread_t thread;
  atomic_int stopping, ready;
  atomic_uint_least64_t events;
  atomic_int_least64_t last_event_ms;
  atomic_ullong connects;
  atomic_int_least64_t offset; /* last stream offset read; the resume point after a reconnect */
  /* Owned by the reader thread. */
  struct mq_session *session;
  struct mq_stream *stream;
  int connected;                /* subscribed on the session's live connection */
  int64_t subscribed_mono;      /* when the last subscription started, for the caught-up log */
  _Atomic(struct publisher *) publisher; /* for the receipt callbacks this replica owes */
  int snapshot_tried;           /* the start-up snapshot was loaded, or there was none */
  pthread_mutex_t loaded_lock;  /* guards loaded */
  struct snapshot_loaded loaded; /* what the start-up loaded (id "" when nothing) */
  struct owed_callback *owed;   /* reader thread only: callbacks to try again */
  size_t n_owed;
};

/* How long the reader waits for the confirm of an owed callback (rare: receipts that came
 * before their task's SUCCESS). */
#define OWED_CALLBACK_WAIT_MS 2000

struct owed_callback;

void status_reader_set_publisher(struct status_reader *r, struct publisher *pub)
{
  atomic_store(&r->publisher, pub);
}

/* A receipt callback this replica owes whose publish was not confirmed yet: kept and tried
 * again, since the SUCCESS that made it payable will not be read a second time. */
struct owed_callback {
  struct owed_callback *next;
  char task_id[UTIL_UUID_LEN];
  enum delivery_state state;
  int64_t at_ms, next_try_ms;
  char *url, *key;
};
#define OWED_RETRY_MS 1000
#define OWED_MAX 4096

static void owed_free(struct owed_callback *o)
{
  free(o->url);
  free(o->key);
  free(o);
}

static int send_owed(struct publisher *pub, const struct owed_callback *o)
{
  struct status_event ev;
  memset(&ev, 0, sizeof ev);
  memcpy(ev.task_id, o->task_id, UTIL_UUID_LEN);
  ev.status = TASK_RECEIPT;
  ev.delivery = o->state;
  ev.at_ms = o->at_ms;
  ev.evolution_key = o->key;
  return publisher_submit_callback(pub, &ev, o->url, OWED_CALLBACK_WAIT_MS) == PUB_OK ? 0 : -1;
}

/* Keeps a callback whose publish failed for a later try; returns 0, or -1 when it is lost. */
static int keep_owed(struct status_reader *r, const char *task_id, enum delivery_state state,
                     int64_t at_ms, const char *url, const char *key)
{
  struct owed_callback *o;
  if(r->n_owed >= OWED_MAX || !(o = calloc(1, sizeof *o)))
    return -1;
  memcpy(o->task_id, task_id, UTIL_UUID_LEN);
  o->state = state;
  o->at_ms = at_ms;
  o->url = strdup(url);
  o->key = key ? strdup(key) : NULL;
  if(!o->url || (key && !o->key)) {
    owed_free(o);
    return -1;
  }
  o->next_try_ms = util_mono_ms() + OWED_RETRY_MS;
  o->next = r->owed;
  r->owed = o;
  r->n_owed++;
  return 0;
}

/* Once per loop turn: the kept callbacks whose time came are tried again. */
static void retry_owed(struct status_reader *r)
{
  struct publisher *pub = atomic_load(&r->publisher);
  struct owed_callback **pp = &r->owed;
  int64_t now = util_mono_ms();
  while(pub && *pp) {
    struct owed_callback *o = *pp;
    if(o->next_try_ms > now) {
      pp = &o->next;
      continue;
    }
    if(send_owed(pub, o)) {
      o->next_try_ms = now + OWED_RETRY_MS;
      pp = &o->next;
      continue;
    }
    *pp = o->next;
    r->n_owed--;
    owed_free(o);
  }
}

/* A SUCCESS may let this replica pay the callbacks of receipts its webhook handler got before
 * the task was known (task_cache_owe_callback). */
static void pay_owed_callbacks(struct status_reader *r, const struct status_event *success)
{
  struct publisher *pub = atomic_load(&r->publisher);
  int64_t at_ms[DELIVERY_STATES];
  unsigned owed;
  char *url, *key;
  if(!pub || !task_cache_take_owed(r->cache, success->task_id, &owed, at_ms, &url, &key))
    return;
  for(int s = 1; s < DELIVERY_STATES; s++) {
    struct owed_callback o;
    if(!(owed & (1u << s)))
      continue;
    memset(&o, 0, sizeof o);
    memcpy(o.task_id, success->task_id, UTIL_UUID_LEN);
    o.state = (enum delivery_state)s;
    o.at_ms = at_ms[s] ? at_ms[s] : util_now_ms();
    o.url = url;
    o.key = key;
    if(send_owed(pub, &o) &&
       keep_owed(r, o.task_id, o.state, o.at_ms, url, key))
      log_event(CFG_LOG_ERROR, "could not queue the callback of an early receipt", "task_id",
                success->task_id, "delivery", delivery_name(o.state), NULL);
  }
  free(url);
  free(key);
}

static void apply_event(const struct status_event *ev, void *arg)
{
  struct status_reader *r = arg;
  int applied = task_cache_apply(r->cache, ev);
  if(applied < 0)
    log_event(CFG_LOG_ERROR, "out of memory applying a status event", "task_id", ev->task_id,
              NULL);
  /* Only live successes: the history read at start-up would make the counter jump. */
  if(applied == 1 && ev->status == TASK_SUCCESS && ev->created_at_ms &&
     ev->at_ms >= ev->created_at_ms && atomic_load(&r->ready))
    metrics_observe(&r->success_latency, (double)(ev->at_ms - ev->created_at_ms) / 1e3);
  if(ev->status == TASK_SUCCESS && ev->evolution_key)
    pay_owed_callbacks(r, ev);
  atomic_fetch_add(&r->events, 1);
}

/* Every delivery of the stream: status events into the cache, markers for catch-up. */
static void on_delivery(void *ctx, uint16_t ch, uint64_t tag, int redelivered,
                        struct mq_message *m)
{
  struct status_reader *r = ctx;
  char err[256];
  const void *body;
  size_t len;
  int what;
  (void)redelivered;
  if(ch != mq_stream_channel(r->stream))
    return;
  what = mq_stream_delivery(r->stream, r->session, tag, m);
  atomic_store(&r->offset, mq_stream_offset(r->stream));
  atomic_store(&r->last_event_ms, util_now_ms());
  if(what == MQ_STREAM_CAUGHT_UP) {
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", (double)(util_mono_ms() - r->subscribed_mono) / 1e3);
    atomic_store(&r->ready, 1);
    log_event(CFG_LOG_INFO, "status cache caught up", "seconds", secs, NULL);
    return;
  }
  if(what != MQ_STREAM_EVENT)
    return;
  {
    char type[32] = "";
    if(!mq_message_prop(m, MQ_PROP_TYPE, type, sizeof type) && !strcmp(type, "worker.heartbeat")) {
      body = mq_message_body(m, &len);
      if(workers_note(r->workers, body, len, util_now_ms(), err, sizeof err))
        log_event(CFG_LOG_WARN, "skipping a bad worker heartbeat", "reason", err, NULL);
      return;
    }
  }
  /* A foreign or corrupt event cannot be fixed by reading it again: it is skipped. */
  body = mq_message_body(m, &len);
  if(status_message_decode(body, len, apply_event, r, err, sizeof err))
    log_event(CFG_LOG_WARN, "skipping a bad status event", "reason", err, NULL);
}

/* At the first subscription: the newest snapshot, then the stream from the offset it covers.
 * Returns 0, or -1 when the connection must be dropped (tried again on the next one). */
static int load_snapshot(struct status_reader *r, char *err, size_t errlen)
{
  struct snapshot_loaded loaded;
  int rc;
  if(r->snapshot_tried)
    return 0;
  rc = snapshot_load(r->session, r->cfg, r->cache, &r->stopping, &loaded, err, errlen);
  if(rc < 0)
    return -1;
  r->snapshot_tried = 1;
  if(rc == 1) {
    mq_stream_start_from(r->stream, loaded.status_offset);
    atomic_store(&r->offset, loaded.status_offset - 1);
    pthread_mutex_lock(&r->loaded_lock);
    r->loaded = loaded;
    pthread_mutex_unlock(&r->loaded_lock);
  }
  return 0;
}

void status_reader_loaded(struct status_reader *r, struct snapshot_loaded *out)
{
  pthread_mutex_lock(&r->loaded_lock);
  *out = r->loaded;
  pthread_mutex_unlock(&r->loaded_lock);
}

/* Connects to the next address and subscribes. Returns 0, or -1 (the session is closed). */
static int subscribe(struct status_reader *r)
{
  char err[512];
  int64_t off = atomic_load(&r->offset);
  if(mq_session_open(r->session, CONNECT_TIMEOUT_MS, err, sizeof err)) {
    log_event(CFG_LOG_WARN, "cannot connect to the broker", "role", "status-reader", "reason",
              err, NULL);
    return -1;
  }
  if(mq_channel_open(r->session, SETUP_CH, err, sizeof err) ||
     mq_declare_topology(r->session, SETUP_CH, r->cfg, err, sizeof err) ||
     load_snapshot(r, err, sizeof err) ||
     mq_stream_start(r->stream, r->session, err, sizeof err)) {
    log_event(CFG_LOG_ERROR, "cannot subscribe to the status stream", "reason", err, NULL);
    mq_session_lost(r->session);
    return -1;
  }
  r->connected = 1;
  r->subscribed_mono = util_mono_ms();
  atomic_fetch_add(&r->connects, 1);
  log_event(CFG_LOG_INFO, "consuming the status stream", "stream",
            r->cfg->topology.status_stream, "from",
            r->loaded.id[0] && off < 0 ? "snapshot" : off < 0 ? "first" : "last read", "broker",
            mq_session_address(r->session), NULL);
  return 0;
}

static void *reader_main(void *arg)
{
  struct status_reader *r = arg;
  struct mq_handlers h;
  int64_t retry_at = 0;
  memset(&h, 0, sizeof h);
  h.ctx = r;
  h.deliver = on_delivery;
  h.publishers[0] = mq_stream_publisher(r->stream);
  while(!atomic_load(&r->stopping)) {
    char why[512];
    int64_t now = util_mono_ms();
    if(!r->connected) {
      if(now < retry_at || subscribe(r)) {
        struct timespec ts = {0, 50 * 1000000L};
        if(now >= retry_at)
          retry_at = now + mq_session_retry_delay_ms(r->session);
        nanosleep(&ts, NULL);
        continue;
      }
    }
    if(mq_pump(r->session, &h, why, sizeof why) || mq_stream_tick(r->stream, r->session)) {
      atomic_store(&r->ready, 0);
      log_event(CFG_LOG_WARN, "broker connection lost", "role", "status-reader", "reason", why,
                NULL);
      mq_stream_lost(r->stream);
      mq_session_lost(r->session);
      r->connected = 0;
      retry_at = 0; /* the next address at once */
      continue;
    }
    if(r->owed)
      retry_owed(r);
    mq_session_wait_input(r->session, POLL_MS);
  }
  atomic_store(&r->ready, 0);
  mq_session_close(r->session);
  r->connected = 0;
  return NULL;
}

struct status_reader *status_reader_start(const struct cfg *cfg, struct task_cache *cache,
                                          char *err, size_t errlen)
{
  struct status_reader *r = calloc(1, sizeof *r);
  if(!r) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  r->cfg = cfg;
  r->cache = cache;
  atomic_init(&r->offset, -1);
  pthread_mutex_init(&r->loaded_lock, NULL);
  r->loaded.status_offset = -1;
  r->session = mq_session_new(cfg, "api-status");
  r->stream = mq_stream_new(cfg, "api-status", STREAM_CH, MARKER_CH_A, MARKER_CH_B, PREFETCH);
  r->workers = workers_new();
  if(!r->session || !r->stream || !r->workers) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if(pthread_create(&r->thread, NULL, reader_main, r)) {
    snprintf(err, errlen, "cannot start the status reader thread");
    goto fail;
  }
  return r;
fail:
  mq_stream_free(r->stream);
  mq_session_free(r->session);
  workers_free(r->workers);
  free(r);
  return NULL;
}

struct workers *status_reader_workers(struct status_reader *r)
{
  return r->workers;
}

const struct metrics_hist *status_reader_success_latency(struct status_reader *r)
{
  return &r->success_latency;
}

void status_reader_stop(struct status_reader *r)
{
  if(!r)
    return;
  atomic_store(&r->stopping, 1);
  pthread_join(r->thread, NULL);
  mq_stream_free(r->stream);
  mq_session_free(r->session);
  while(r->owed) {
    struct owed_callback *o = r->owed;
    r->owed = o->next;
    log_event(CFG_LOG_ERROR, "stopping with the callback of an early receipt unsent", "task_id",
              o->task_id, "delivery", delivery_name(o->state), NULL);
    owed_free(o);
  }
  workers_free(r->workers);
  pthread_mutex_destroy(&r->loaded_lock);
  free(r);
}

int status_reader_ready(struct status_reader *r)
{
  return atomic_load(&r->ready);
}

uint64_t status_reader_events(struct status_reader *r)
{
  return atomic_load(&r->events);
}

unsigned long long status_reader_connects(struct status_reader *r)
{
  return atomic_load(&r->connects);
}

int64_t status_reader_last_event_ms(struct status_reader *r)
{
  return atomic_load(&r->last_event_ms);
}

int64_t status_reader_offset(struct status_reader *r)
{
  return atomic_load(&r->offset);
}
