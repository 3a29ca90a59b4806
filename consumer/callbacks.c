/* Status-callback dispatcher of msg-consumer: a thread of its own that owns one AMQP connection
 * (deliveries of the callback queue on one channel, confirmed republishes on another) and one
 * curl multi handle, driven by one loop like the worker's. See callbacks.h for the contract. */
#include "callbacks.h"

#include <curl/curl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "callback_url.h"
#include "log.h"
#include "mq.h"
#include "sign.h"
#include "trace.h"
#include "util.h"

/* Callbacks are consumed on channel 1; republishes go out on 2 (3 when 2 is replaced). */
#define CONSUME_CH 1
#define PUBLISH_CH_A 2
#define PUBLISH_CH_B 3
#define CONNECT_TIMEOUT_MS 5000
/* After the grace period, republishes already under way get this long to be confirmed. */
#define SETTLE_EXTRA_MS 3000
/* Longest wait of one loop turn: how late the worker's draining flag may be noticed. It is
 * also well under half of the shortest heartbeat (1s), so heartbeats are serviced in time. */
#define TURN_MS 200
#define ERROR_LEN 256
/* An AMQP short string: message_id can hold no more. */
#define EVENT_ID_MAX 255

enum { RUN = 0, DRAIN = 1, STOP_NOW = 2 };

/* One callback, from its delivery until its ack or nack. It is referenced by exactly one of:
 * the transfer list (while it is POSTed), or its tracked republish (while the retry or dead
 * queue has not confirmed it yet). */
struct callback {
  struct callback *prev, *next; /* the transfer list */
  struct mq_message *msg; /* taken from the frame reader; freed in callback_free */
  const char *body;       /* msg's body ("" when empty), and its length */
  size_t body_len;
  uint64_t tag;
  unsigned conn_gen; /* the connection it came on: its tag means nothing on another one */
  int attempt;       /* 1 for the first */
  char *url;         /* x-callback-url, NUL-terminated */
  char event_id[EVENT_ID_MAX + 1];
  CURL *easy;
  struct curl_slist *headers;
  int64_t sent_us;
  char error[ERROR_LEN]; /* why the last attempt failed */
  const struct cfg *cfg;  /* for the address check (open_checked) */
  int addr_refused;       /* the host resolved to an address the allow-list does not admit */
};

struct callbacks {
  const struct cfg *cfg;
  struct callbacks_stats *stats;
  const atomic_int *draining; /* the worker's: a stop signal arrived */
  atomic_int stop;            /* RUN, DRAIN or STOP_NOW, from callbacks_stop */
  atomic_int done;            /* the thread has finished */
  pthread_t thread;
  CURLM *multi;
  struct mq_session *session;
  int connected;      /* the session is open and consuming */
  unsigned conn_gen;  /* the session's generation of the live connection */
  int broken;         /* a republish came back: the loop drops the connection */
  int stopping;       /* draining: no new callbacks are taken */
  char consumer_tag[MQ_TAG_LEN];
  struct mq_publisher *pub;
  struct callback *transfers;
  long long in_flight;
  char dead_queue[512];
};

/* Headers a republished callback does not carry over: the broker's dead-letter history
 * (cycle detection reads x-death, DESIGN §3) and the ones set here again. */
static const char *const DROPPED_HEADERS[] = {
  "x-attempt", "x-death", "x-first-death-queue", "x-first-death-reason",
  "x-first-death-exchange", "x-last-death-queue", "x-last-death-reason",
  "x-last-death-exchange", "x-delivery-count", "x-failure-reason", "x-attempts", "x-last-error",
  "x-failed-at", NULL};

static void set_in_flight(struct callbacks *cb, long long delta)
{
  cb->in_flight += delta;
  atomic_store(&cb->stats->in_flight, cb->in_flight);
}

static void callback_free(struct callbacks *cb, struct callback *c)
{
  mq_message_free(c->msg);
  free(c->url);
  free(c);
  set_in_flight(cb, -1);
}

/* Acks the delivery, or gives it back to the queue (nack with requeue), then frees it. On a
 * lost connection nothing is sent: the broker has already requeued it. */
static void give_back(struct callbacks *cb, struct callback *c, int ack)
{
  if(cb->connected && c->conn_gen == cb->conn_gen) {
    if(ack)
      mq_ack(cb->session, CONSUME_CH, c->tag, 0);
    else
      mq_nack(cb->session, CONSUME_CH, c->tag, 1);
  }
  callback_free(cb, c);
}

static void on_settle(void *owner, int ok, void *ctx)
{
  /* Acked only once the retry or dead queue confirmed the copy; a nack requeues the original,
   * so a callback is never lost between the two. */
  give_back(ctx, owner, ok == CONFIRM_ACKED);
}

/* Publishes the callback's body and properties, with `extra` headers, to `queue` through the
 * default exchange, tracked by a confirm that settles it (on_settle). Returns 0 once tracked,
 * or -1 when nothing was published (out of memory): the caller then gives the delivery back. */
static int republish(struct callbacks *cb, struct callback *c, const char *queue,
                     const struct mq_header *extra, size_t n_extra)
{
  /* Mandatory: a queue deleted under us comes back as basic.return instead of vanishing. */
  int rc = mq_publisher_republish(cb->pub, cb->session, "", queue, 1, c->msg, DROPPED_HEADERS,
                                  extra, n_extra, c);
  if(rc != MQ_PUBLISH_OK)
    /* The loop drops the connection: a tracked copy is settled as lost, and the broker
     * requeues the original. */
    log_event(CFG_LOG_WARN, "callbacks: publish failed: dropping the broker connection", NULL);
  return rc == MQ_PUBLISH_UNTRACKED ? -1 : 0;
}

/* Parks a callback in the dead queue with why; acked once that is confirmed. */
static void park(struct callbacks *cb, struct callback *c, const char *reason, const char *why)
{
  struct mq_header h[4];
  char failed_at[UTIL_TIME_LEN], attempts[16];
  h[0] = mq_header_str("x-failure-reason", reason);
  h[1] = mq_header_int("x-attempts", c->attempt);
  h[2] = mq_header_str("x-last-error", why);
  h[3] = mq_header_str("x-failed-at", util_format_time(util_now_ms(), failed_at));
  snprintf(attempts, sizeof attempts, "%d", c->attempt);
  atomic_fetch_add(&cb->stats->parked, 1);
  log_event(CFG_LOG_WARN, "callback parked", "event_id", c->event_id[0] ? c->event_id : NULL,
            "reason", reason, "error", why, "attempts", attempts, NULL);
  if(republish(cb, c, cb->dead_queue, h, 4))
    give_back(cb, c, 0);
}

/* A failed attempt: to the retry queue of its delay, or parked when the delays are used up. */
static void failed(struct callbacks *cb, struct callback *c)
{
  const struct cfg *cfg = cb->cfg;
  struct mq_header h[1];
  char queue[512], attempt[16];
  uint64_t delay;
  if((size_t)c->attempt > cfg->callbacks.n_retry_delays) {
    park(cb, c, "callback_failed", c->error);
    return;
  }
  delay = cfg->callbacks.retry_delays_ms[c->attempt - 1];
  mq_callback_retry_queue_name(cfg, delay, queue, sizeof queue);
  /* The attempt number travels on the message, so it survives restarts and replicas. */
  h[0] = mq_header_int("x-attempt", c->attempt + 1);
  snprintf(attempt, sizeof attempt, "%d", c->attempt);
  atomic_fetch_add(&cb->stats->retried, 1);
  log_event(CFG_LOG_INFO, "callback failed, will retry", "event_id", c->event_id, "attempt",
            attempt, "error", c->error, "retry_queue", queue, NULL);
  if(republish(cb, c, queue, h, 1))
    give_back(cb, c, 0);
}

/* ---- transfers ----------------------------------------------------------------------------- */

static size_t discard(char *data, size_t size, size_t nmemb, void *arg)
{
  (void)data;
  (void)arg;
  return size * nmemb; /* the answer's status is all that counts */
}

static void transfer_end(struct callbacks *cb, struct callback *c)
{
  if(c->prev)
    c->prev->next = c->next;
  else
    cb->transfers = c->next;
  if(c->next)
    c->next->prev = c->prev;
  c->prev = c->next = NULL;
  curl_multi_remove_handle(cb->multi, c->easy);
  curl_easy_cleanup(c->easy);
  curl_slist_free_all(c->headers);
  c->easy = NULL;
  c->headers = NULL;
}

static int add_header(struct callback *c, const char *line)
{
  struct curl_slist *h = curl_slist_append(c->headers, line);
  if(!h)
    return -1;
  c->headers = h;
  return 0;
}

/* libcurl asks here for each socket it would connect: the address a name resolved to is
 * checked, so a DNS name pointing at an internal address is never called (callback_url.h). */
static curl_socket_t open_checked(void *ctx, curlsocktype purpose, struct curl_sockaddr *a)
{
  struct callback *c = ctx;
  (void)purpose;
  if(callback_addr_allowed(&a->addr, c->cfg->callbacks.allow_hosts,
                           c->cfg->callbacks.n_allow_hosts, c->error, sizeof c->error)) {
    c->addr_refused = 1;
    return CURL_SOCKET_BAD;
  }
  return socket(a->family, a->socktype, a->protocol);
}

/* POSTs the body verbatim, signed now. Returns 0, or -1 when the transfer cannot start. */
static int start_transfer(struct callbacks *cb, struct callback *c)
{
  const struct cfg *cfg = cb->cfg;
  char sig[SIGN_HEADER_MAX], line[EVENT_ID_MAX + SIGN_HEADER_MAX + 32];
  /* libcurl wants a valid pointer even for an empty body. */
  const char *body = c->body;
  sign_callback_header(cfg->callbacks.secret, util_now_ms() / 1000, body, c->body_len, sig,
                       sizeof sig);
  if(!sig[0] || add_header(c, "Content-Type: application/json"))
    goto fail;
  snprintf(line, sizeof line, "X-Msg-Event-Id: %s", c->event_id);
  if(add_header(c, line))
    goto fail;
  snprintf(line, sizeof line, "X-Msg-Signature: %s", sig);
  /* "Expect:" off: a receiver that never answers 100 Continue would cost us a second. */
  if(add_header(c, line) || add_header(c, "Expect:"))
    goto fail;
  /* The request that made the task, so the receiver can follow it (trace.h). */
  {
    int rc;
    char *rid = mq_message_header_dup(c->msg, "x-request-id", &rc);
    char *tp = mq_message_header_dup(c->msg, "traceparent", &rc);
    int bad = 0;
    if(rid && trace_request_id_ok(rid)) {
      snprintf(line, sizeof line, "X-Request-Id: %s", rid);
      bad |= add_header(c, line);
    }
    if(tp && trace_parent_ok(tp)) {
      char child[TRACE_PARENT_LEN];
      trace_child(tp, child);
      snprintf(line, sizeof line, "traceparent: %s", child);
      bad |= add_header(c, line);
    }
    free(rid);
    free(tp);
    if(bad)
      goto fail;
  }
  c->easy = curl_easy_init();
  if(!c->easy)
    goto fail;
  curl_easy_setopt(c->easy, CURLOPT_URL, c->url);
  curl_easy_setopt(c->easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c->easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  /* A redirect could lead anywhere the allow-list does not: a 3xx is a failed attempt. */
  curl_easy_setopt(c->easy, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c->easy, CURLOPT_POST, 1L);
  curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
  curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
  curl_easy_setopt(c->easy, CURLOPT_USERAGENT, "msg-consumer/" MSG_VERSION);
  curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, (long)cfg->callbacks.timeout_ms);
  curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
  c->cfg = cfg;
  curl_easy_setopt(c->easy, CURLOPT_OPENSOCKETFUNCTION, open_checked);
  curl_easy_setopt(c->easy, CURLOPT_OPENSOCKETDATA, c);
  /* A proxy from the environment would be the address checked instead of the receiver's. */
  curl_easy_setopt(c->easy, CURLOPT_PROXY, "");
  if(curl_multi_add_handle(cb->multi, c->easy) != CURLM_OK)
    goto fail;
  c->sent_us = util_mono_us();
  c->next = cb->transfers;
  if(cb->transfers)
    cb->transfers->prev = c;
  cb->transfers = c;
  return 0;
fail:
  curl_easy_cleanup(c->easy);
  curl_slist_free_all(c->headers);
  c->easy = NULL;
  c->headers = NULL;
  return -1;
}

static void transfer_done(struct callbacks *cb, struct callback *c, CURLcode rc, long status)
{
  char latency[24], code[8], attempt[16];
  int64_t took_us = util_mono_us() - c->sent_us;
  metrics_observe(&cb->stats->latency, (double)took_us / 1e6);
  if(rc == CURLE_OK && status >= 200 && status < 300) {
    snprintf(latency, sizeof latency, "%lld", (long long)(took_us / 1000));
    snprintf(code, sizeof code, "%ld", status);
    snprintf(attempt, sizeof attempt, "%d", c->attempt);
    atomic_fetch_add(&cb->stats->delivered, 1);
    log_event(CFG_LOG_INFO, "callback delivered", "event_id", c->event_id, "attempt", attempt,
              "http_status", code, "latency_ms", latency, NULL);
    give_back(cb, c, 1);
    return;
  }
  if(c->addr_refused) {
    /* Never requested, and it never will be: parked like a URL the allow-list refuses. */
    park(cb, c, "callback_url_refused", c->error);
    return;
  }
  if(rc != CURLE_OK)
    snprintf(c->error, sizeof c->error, "%s", curl_easy_strerror(rc));
  else
    snprintf(c->error, sizeof c->error, "the receiver answered HTTP %ld", status);
  failed(cb, c);
}

static void run_transfers(struct callbacks *cb, struct curl_waitfd *waits, unsigned n_waits,
                          int timeout_ms)
{
  CURLMsg *m;
  int running, left;
  curl_multi_poll(cb->multi, waits, n_waits, timeout_ms, NULL);
  curl_multi_perform(cb->multi, &running);
  while((m = curl_multi_info_read(cb->multi, &left))) {
    struct callback *c = NULL;
    CURLcode rc;
    long status = 0;
    if(m->msg != CURLMSG_DONE)
      continue;
    /* The message dies with the handle: read everything first. */
    rc = m->data.result;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
    curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
    transfer_end(cb, c);
    transfer_done(cb, c, rc, status);
  }
}

/* Ends every POST in flight and gives its delivery back (nack, or nothing on a lost
 * connection); the receiver may see it again: callbacks are at-least-once. */
static void abort_transfers(struct callbacks *cb)
{
  while(cb->transfers) {
    struct callback *c = cb->transfers;
    transfer_end(cb, c);
    give_back(cb, c, 0);
  }
}

/* ---- deliveries ---------------------------------------------------------------------------- */

/* The event id goes into an HTTP header: printable ASCII only, so nothing can be injected. */
static int take_event_id(const struct mq_message *m, char *out)
{
  if(mq_message_prop(m, MQ_PROP_MESSAGE_ID, out, EVENT_ID_MAX + 1) || !out[0])
    return -1;
  for(const char *p = out; *p; p++)
    if((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
      return -1;
  return 0;
}

/* Takes one delivery; `m` is taken by the callback (mq_message_take). */
static void on_delivery(void *ctx, uint16_t ch, uint64_t tag, int redelivered,
                        struct mq_message *m)
{
  struct callbacks *cb = ctx;
  const struct cfg *cfg = cb->cfg;
  struct callback *c = calloc(1, sizeof *c);
  char err[256];
  int64_t attempt = 1;
  int rc;
  (void)ch;
  (void)redelivered;
  if(!c || !(c->msg = mq_message_take(m))) {
    free(c);
    mq_nack(cb->session, CONSUME_CH, tag, 1);
    return;
  }
  c->body = mq_message_body(c->msg, &c->body_len);
  if(!c->body_len)
    c->body = ""; /* an empty body comes with a NULL pointer */
  c->tag = tag;
  c->conn_gen = cb->conn_gen;
  set_in_flight(cb, 1);
  if(cb->stopping) {
    /* Sent before our basic.cancel reached the broker: back to the queue, untouched. */
    give_back(cb, c, 0);
    return;
  }
  if(!mq_message_header_int(c->msg, "x-attempt", &attempt) && (attempt < 1 || attempt > 1000))
    attempt = 1;
  c->attempt = (int)attempt;
  if(take_event_id(c->msg, c->event_id)) {
    park(cb, c, "callback_malformed",
         "the message has no message_id (the event id) of 1-255 printable ASCII characters");
    return;
  }
  c->url = mq_message_header_dup(c->msg, "x-callback-url", &rc);
  if(rc == -2) {
    give_back(cb, c, 0);
    return;
  }
  if(rc) {
    park(cb, c, "callback_url_refused", "the message has no x-callback-url string header");
    return;
  }
  /* Checked again here, whoever published it and whatever the allow-list was then. */
  if(callback_url_check(c->url, cfg->callbacks.allow_hosts, cfg->callbacks.n_allow_hosts, err,
                        sizeof err)) {
    park(cb, c, "callback_url_refused", err);
    return;
  }
  if(start_transfer(cb, c)) {
    log_event(CFG_LOG_ERROR, "callbacks: cannot start a request", "event_id", c->event_id, NULL);
    give_back(cb, c, 0);
  }
}

static int on_returned(void *ctx, uint16_t ch, struct mq_message *m)
{
  (void)ctx;
  (void)ch;
  (void)m;
  /* A queue we declared is gone. Rebuilding the connection declares it again, and every
   * callback not yet acked comes back: none is acked on an unroutable copy. */
  log_event(CFG_LOG_ERROR, "callbacks: a republish was unroutable; declaring the queues again",
            NULL);
  return -1;
}

/* Reads every frame available without blocking. Returns 0, or -1 when the connection is gone
 * or must be rebuilt. */
static int drain_frames(struct callbacks *cb)
{
  struct mq_handlers h;
  char why[512];
  memset(&h, 0, sizeof h);
  h.ctx = cb;
  h.publishers[0] = cb->pub;
  h.deliver = on_delivery;
  h.returned = on_returned;
  if(mq_pump(cb->session, &h, why, sizeof why)) {
    log_event(CFG_LOG_WARN, "callbacks: broker connection lost", "reason", why, NULL);
    return -1;
  }
  return 0;
}

/* ---- connection ---------------------------------------------------------------------------- */

static int connect_broker(struct callbacks *cb)
{
  const struct cfg *cfg = cb->cfg;
  char err[512];
  struct mq_session *s = cb->session;
  if(mq_session_open(s, CONNECT_TIMEOUT_MS, err, sizeof err)) {
    log_event(CFG_LOG_WARN, "callbacks: cannot connect to the broker", "reason", err, NULL);
    return -1;
  }
  /* Quorum queues refuse a global prefetch; this one bounds the requests in flight. */
  if(mq_channel_open(s, CONSUME_CH, err, sizeof err) ||
     mq_declare_callback_topology(s, CONSUME_CH, cfg, err, sizeof err) ||
     mq_publisher_start(cb->pub, s, err, sizeof err) ||
     mq_consume(s, CONSUME_CH, cfg->topology.callback_queue, (uint16_t)cfg->callbacks.concurrency,
                MQ_NOT_A_STREAM, "callbacks", cb->consumer_tag, err, sizeof err))
    goto fail;
  cb->connected = 1;
  cb->conn_gen = mq_session_generation(s);
  atomic_store(&cb->stats->connected, 1);
  log_event(CFG_LOG_INFO, "callbacks: consuming", "queue", cfg->topology.callback_queue, NULL);
  return 0;
fail:
  log_event(CFG_LOG_ERROR, "callbacks: cannot set up the broker", "reason", err, NULL);
  mq_session_lost(s);
  mq_publisher_lost(cb->pub);
  return -1;
}

/* Drops the connection after a failure: the broker requeues every callback not acked. */
static void drop_connection(struct callbacks *cb)
{
  atomic_store(&cb->stats->connected, 0);
  mq_session_lost(cb->session);
  cb->connected = 0;
  cb->broken = 0;
  cb->consumer_tag[0] = '\0';
  abort_transfers(cb);
  mq_publisher_lost(cb->pub);
}

static void cancel_consumer(struct callbacks *cb)
{
  if(cb->connected)
    mq_cancel(cb->session, CONSUME_CH, cb->consumer_tag);
}

static void *run(void *arg)
{
  struct callbacks *cb = arg;
  const struct cfg *cfg = cb->cfg;
  int stop = RUN;
  int64_t retry_at = 0, grace_deadline = 0, settle_deadline = 0;
  for(;;) {
    struct curl_waitfd wait;
    unsigned n_waits = 0;
    int timeout = TURN_MS;
    int64_t now = util_mono_ms();
    stop = atomic_load(&cb->stop);
    if(stop == STOP_NOW)
      break;
    if(!cb->stopping && (stop == DRAIN || atomic_load(cb->draining))) {
      log_event(CFG_LOG_INFO, "callbacks: stopping, finishing callbacks in flight", NULL);
      cb->stopping = 1;
      cancel_consumer(cb);
      grace_deadline = now + (int64_t)cfg->consumer.shutdown_grace_ms;
      settle_deadline = grace_deadline + SETTLE_EXTRA_MS;
    }
    if(cb->stopping) {
      if(!cb->in_flight || !cb->connected)
        break;
      if(now >= grace_deadline && cb->transfers) {
        log_event(CFG_LOG_WARN, "callbacks: grace period over, requeueing callbacks in flight",
                  NULL);
        abort_transfers(cb);
      }
      if(now >= settle_deadline)
        break;
    }

    if(!cb->connected && !cb->stopping && now >= retry_at) {
      if(connect_broker(cb))
        retry_at = now + mq_session_retry_delay_ms(cb->session);
    }
    if(cb->connected && (drain_frames(cb) || cb->broken || mq_publisher_broken(cb->pub))) {
      drop_connection(cb);
      retry_at = 0; /* the next address at once */
    }
    if(cb->connected) {
      /* rabbitmq-c may already hold whole frames in its buffer: the socket will not wake us. */
      if(mq_session_pending_input(cb->session))
        timeout = 0;
      wait.fd = mq_session_fd(cb->session);
      wait.events = CURL_WAIT_POLLIN;
      wait.revents = 0;
      n_waits = 1;
    }
    else if(!cb->stopping && retry_at - now < timeout)
      timeout = retry_at - now < 0 ? 0 : (int)(retry_at - now);
    if(cb->stopping && timeout > 50)
      timeout = 50;
    run_transfers(cb, &wait, n_waits, timeout);
    if(cb->connected && (cb->broken || mq_publisher_broken(cb->pub)))
      drop_connection(cb);
  }
  /* Whatever is left goes back to the queue: nacked here, or requeued by the broker when the
   * connection closes. */
  abort_transfers(cb);
  mq_publisher_lost(cb->pub);
  if(cb->connected) {
    atomic_store(&cb->stats->connected, 0);
    if(stop == STOP_NOW)
      mq_session_lost(cb->session);
    else
      mq_session_close(cb->session);
    cb->connected = 0;
  }
  cb->consumer_tag[0] = '\0';
  atomic_store(&cb->done, 1);
  return NULL;
}

struct callbacks *callbacks_start(const struct cfg *cfg, struct callbacks_stats *stats,
                                  const atomic_int *draining, char *err, size_t errlen)
{
  struct callbacks *cb = calloc(1, sizeof *cb);
  int rc;
  if(!cb) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  cb->cfg = cfg;
  cb->stats = stats;
  cb->draining = draining;
  atomic_init(&cb->stop, RUN);
  atomic_init(&cb->done, 0);
  mq_callback_dead_queue_name(cfg, cb->dead_queue, sizeof cb->dead_queue);
  cb->multi = curl_multi_init();
  cb->session = mq_session_new(cfg, "callbacks");
  cb->pub = mq_publisher_new(PUBLISH_CH_A, PUBLISH_CH_B, on_settle, cb);
  if(!cb->multi || !cb->session || !cb->pub) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  /* Requests in flight are bounded by the prefetch, not by curl queueing them. */
  curl_multi_setopt(cb->multi, CURLMOPT_MAXCONNECTS, (long)cfg->callbacks.concurrency + 4);
  rc = pthread_create(&cb->thread, NULL, run, cb);
  if(rc) {
    snprintf(err, errlen, "cannot start the callbacks thread: %s", strerror(rc));
    goto fail;
  }
  return cb;
fail:
  if(cb->multi)
    curl_multi_cleanup(cb->multi);
  mq_publisher_free(cb->pub);
  mq_session_free(cb->session);
  free(cb);
  return NULL;
}

int callbacks_stop(struct callbacks *cb, int now, int stop_fd)
{
  int expected = RUN, cut = 0;
  if(!cb)
    return 0;
  if(now)
    atomic_store(&cb->stop, STOP_NOW);
  else
    atomic_compare_exchange_strong(&cb->stop, &expected, DRAIN);
  /* Thread-safe by contract: ends the thread's wait at once. */
  curl_multi_wakeup(cb->multi);
  while(!now && stop_fd >= 0 && !atomic_load(&cb->done)) {
    struct pollfd pfd = {.fd = stop_fd, .events = POLLIN};
    struct signalfd_siginfo si;
    if(poll(&pfd, 1, TURN_MS) > 0 && read(stop_fd, &si, sizeof si) == (ssize_t)sizeof si) {
      log_event(CFG_LOG_WARN, "callbacks: another stop signal, giving the rest back now", NULL);
      atomic_store(&cb->stop, STOP_NOW);
      curl_multi_wakeup(cb->multi);
      cut = 1;
      break;
    }
  }
  pthread_join(cb->thread, NULL);
  curl_multi_cleanup(cb->multi);
  mq_publisher_free(cb->pub);
  mq_session_free(cb->session);
  free(cb);
  return cut;
}
