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
#include "status.h"
#include "util.h"

#define CHANNEL 1
#define CONNECT_TIMEOUT_MS 5000
#define BACKOFF_MIN_MS 200
#define BACKOFF_MAX_MS 5000
/* Stream consumers need a prefetch (acks are credit); acks go out in batches of half of it. */
#define PREFETCH 2000
#define ACK_EVERY 1000
/* No delivery for this long after (re)subscribing means the backlog has been replayed. */
#define CAUGHT_UP_IDLE_MS 250

struct status_reader {
  const struct cfg *cfg;
  struct task_cache *cache;
  pthread_t thread;
  atomic_int stopping, ready;
  atomic_uint_least64_t events;
  atomic_int_least64_t last_event_ms;
  atomic_ullong connects;
  atomic_int_least64_t offset; /* last stream offset read; the resume point after a reconnect */
  int64_t subscribed_at;        /* wall clock at subscribe; reader thread only */
  _Atomic(struct publisher *) publisher; /* for the receipt callbacks this replica owes */
};

/* How long the reader waits for the confirm of an owed callback (rare: receipts that came
 * before their task's SUCCESS). */
#define OWED_CALLBACK_WAIT_MS 2000

void status_reader_set_publisher(struct status_reader *r, struct publisher *pub)
{
  atomic_store(&r->publisher, pub);
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
    struct status_event ev;
    if(!(owed & (1u << s)))
      continue;
    memset(&ev, 0, sizeof ev);
    memcpy(ev.task_id, success->task_id, UTIL_UUID_LEN);
    ev.status = TASK_RECEIPT;
    ev.delivery = (enum delivery_state)s;
    ev.at_ms = at_ms[s] ? at_ms[s] : util_now_ms();
    ev.evolution_key = key;
    if(publisher_submit_callback(pub, &ev, url, OWED_CALLBACK_WAIT_MS) != PUB_OK)
      log_event(CFG_LOG_ERROR, "could not queue the callback of an early receipt", "task_id",
                success->task_id, "delivery", delivery_name(ev.delivery), NULL);
  }
  free(url);
  free(key);
}

static amqp_connection_state_t subscribe(struct status_reader *r)
{
  char err[512];
  amqp_connection_state_t conn = mq_connect(r->cfg, "api-status", CONNECT_TIMEOUT_MS, err, sizeof err);
  amqp_table_entry_t arg;
  amqp_table_t args = {1, &arg};
  int64_t off = atomic_load(&r->offset);
  if(!conn) {
    log_event(CFG_LOG_WARN, "cannot connect to the broker", "role", "status-reader", "reason",
              err, NULL);
    return NULL;
  }
  if(mq_channel_open(conn, CHANNEL, err, sizeof err) ||
     mq_declare_topology(conn, CHANNEL, r->cfg, err, sizeof err))
    goto fail;
  if(!amqp_basic_qos(conn, CHANNEL, 0, PREFETCH, 0)) {
    snprintf(err, sizeof err, "basic.qos refused");
    goto fail;
  }
  /* At boot replay the whole retention; after a reconnect resume after the last event read,
   * so nothing is lost and nothing is applied twice. */
  arg = off < 0 ? mq_entry_str("x-stream-offset", "first")
                : mq_entry_i64("x-stream-offset", off + 1);
  if(!amqp_basic_consume(conn, CHANNEL, amqp_cstring_bytes(r->cfg->topology.status_stream),
                         amqp_empty_bytes, 0, 0, 0, args)) {
    mq_reply_text(amqp_get_rpc_reply(conn), err, sizeof err);
    goto fail;
  }
  r->subscribed_at = util_now_ms();
  atomic_fetch_add(&r->connects, 1);
  log_event(CFG_LOG_INFO, "consuming the status stream", "stream",
            r->cfg->topology.status_stream, "from", off < 0 ? "first" : "last read", NULL);
  return conn;
fail:
  log_event(CFG_LOG_ERROR, "cannot subscribe to the status stream", "reason", err, NULL);
  amqp_destroy_connection(conn);
  return NULL;
}

static void apply_event(const struct status_event *ev, void *arg)
{
  struct status_reader *r = arg;
  /* Under steady traffic the stream is never idle: an event newer than the subscription
   * proves the backlog is behind us. */
  if(!atomic_load(&r->ready) && ev->at_ms >= r->subscribed_at) {
    atomic_store(&r->ready, 1);
    log_event(CFG_LOG_INFO, "status cache caught up", NULL);
  }
  if(task_cache_apply(r->cache, ev) < 0)
    log_event(CFG_LOG_ERROR, "out of memory applying a status event", "task_id", ev->task_id,
              NULL);
  if(ev->status == TASK_SUCCESS && ev->evolution_key)
    pay_owed_callbacks(r, ev);
  atomic_fetch_add(&r->events, 1);
}

static void apply(struct status_reader *r, const amqp_envelope_t *env)
{
  char err[256];
  int64_t off;
  if(env->message.properties._flags & AMQP_BASIC_HEADERS_FLAG &&
     !mq_table_get_int(&env->message.properties.headers, "x-stream-offset", &off))
    atomic_store(&r->offset, off);
  /* A foreign or corrupt event cannot be fixed by reading it again: it is skipped. */
  if(status_message_decode(env->message.body.bytes, env->message.body.len, apply_event, r, err,
                           sizeof err))
    log_event(CFG_LOG_WARN, "skipping a bad status event", "reason", err, NULL);
  atomic_store(&r->last_event_ms, util_now_ms());
}

static void *reader_main(void *arg)
{
  struct status_reader *r = arg;
  int backoff = BACKOFF_MIN_MS;
  while(!atomic_load(&r->stopping)) {
    amqp_connection_state_t conn = subscribe(r);
    int64_t last_delivery = util_mono_ms();
    uint64_t unacked = 0, last_tag = 0;
    if(!conn) {
      int sleep_ms = backoff / 2 + (int)(random() % (backoff / 2 + 1));
      for(int slept = 0; slept < sleep_ms && !atomic_load(&r->stopping); slept += 50) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
      }
      backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
      continue;
    }
    backoff = BACKOFF_MIN_MS;
    while(!atomic_load(&r->stopping)) {
      amqp_envelope_t env;
      struct timeval tv = {0, 100 * 1000};
      amqp_rpc_reply_t rep;
      amqp_maybe_release_buffers(conn);
      memset(&env, 0, sizeof env);
      rep = amqp_consume_message(conn, &env, &tv, 0);
      if(rep.reply_type == AMQP_RESPONSE_NORMAL) {
        apply(r, &env);
        last_tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        last_delivery = util_mono_ms();
        if(++unacked >= ACK_EVERY) {
          amqp_basic_ack(conn, CHANNEL, last_tag, 1);
          unacked = 0;
        }
        continue;
      }
      if(rep.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
         rep.library_error == AMQP_STATUS_TIMEOUT) {
        if(unacked) {
          amqp_basic_ack(conn, CHANNEL, last_tag, 1);
          unacked = 0;
        }
        if(!atomic_load(&r->ready) && util_mono_ms() - last_delivery >= CAUGHT_UP_IDLE_MS) {
          atomic_store(&r->ready, 1);
          log_event(CFG_LOG_INFO, "status cache caught up", NULL);
        }
        continue;
      }
      if(rep.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
         rep.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
        /* A frame other than a delivery (heartbeat, cancel, close) waits at the queue head;
         * it must be popped, or every later call reports the same state. */
        amqp_frame_t f;
        memset(&f, 0, sizeof f);
        if(amqp_simple_wait_frame(conn, &f) != AMQP_STATUS_OK)
          break;
        if(f.frame_type == AMQP_FRAME_METHOD &&
           (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
            f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
            f.payload.method.id == AMQP_BASIC_CANCEL_METHOD))
          break;
        continue;
      }
      break; /* socket error: never destroy the envelope of a failed consume */
    }
    atomic_store(&r->ready, 0);
    if(atomic_load(&r->stopping)) {
      mq_close(conn);
      break;
    }
    log_event(CFG_LOG_WARN, "broker connection lost", "role", "status-reader", NULL);
    amqp_destroy_connection(conn);
  }
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
  if(pthread_create(&r->thread, NULL, reader_main, r)) {
    snprintf(err, errlen, "cannot start the status reader thread");
    free(r);
    return NULL;
  }
  return r;
}

void status_reader_stop(struct status_reader *r)
{
  if(!r)
    return;
  atomic_store(&r->stopping, 1);
  pthread_join(r->thread, NULL);
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
