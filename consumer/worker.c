/* The consumer's event loop: one thread owns the AMQP connection (deliveries on one channel,
 * confirmed publishes on another) and drives the Evolution API transfers next to it. */
#include "worker.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "evo.h"
#include "job.h"
#include "lanes.h"
#include "log.h"
#include "mq.h"
#include "policy.h"
#include "status.h"
#include "task_memory.h"
#include "util.h"

/* Channels: jobs are consumed on 1 (which also declares the topology), the status stream on 2,
 * publishes go out on 3 (4 when 3 is replaced, see mq_publisher), the stream's catch-up markers
 * on 5 (or 6), the stream's history (see struct worker) on 7. */
#define CONSUME_CH 1
#define STATUS_CH 2
#define PUBLISH_CH_A 3
#define PUBLISH_CH_B 4
#define MARKER_CH_A 5
#define MARKER_CH_B 6
#define HISTORY_CH 7
/* Each lane of a rate-limited instance (lanes.h) gets a channel of its own from here on: it is
 * declared and consumed on a channel nothing else uses yet, so no delivery can interleave with
 * those RPCs, and its prefetch is its own. */
#define LANE_CH_BASE 8
/* A lane's prefetch is about this many seconds of its sends, plus its burst: no job waits here
 * unacked for its token much longer than that. */
#define LANE_HOLD_SECONDS 2
/* The status stream is read so that a redelivered job whose task already reached SUCCESS is
 * acked without a second send (credit is given in batches of half of this). */
#define STATUS_PREFETCH 2000
/* Status events published together in one stream message (one publish, one confirm). */
#define STATUS_BATCH_MAX 256
/* Confirm owners are deliveries, or status batches tagged with this low bit. */
#define BATCH_BIT ((uintptr_t)1)
/* Task ids remembered as sent (16 bytes each, plus table overhead: 48 MiB at most). */
#define SENT_MEMORY 1000000
#define CONNECT_TIMEOUT_MS 5000
/* After the grace period, publishes already under way get this long to be confirmed. */
#define SETTLE_EXTRA_MS 3000
/* An in-doubt job is looked up in findMessages from this long before its first unsettled send
 * to this long after now: the consumer's clock and Evolution's may disagree. */
#define RECONCILE_SLACK_MS 60000
/* A send that began may still be under way at Evolution when its job comes back (its consumer
 * died waiting for the answer): the lookup waits until it would have ended, evolution.timeout
 * after it began, plus this. */
#define RECONCILE_SETTLE_MS 1000
/* Evolution requests whose owner is a hold-off target (a connectionState probe), not a
 * delivery, have this low bit set on the owner pointer. */
#define PROBE_BIT ((uintptr_t)1)
/* Every consumer says it is alive on the status stream this often (DESIGN §3 "worker.heartbeat"):
 * msg-api lists the fleet from these (GET /workers) and drops a worker after three missed. */
#define HEARTBEAT_MS 5000
/* A job's events are on the stream after its created_at, but the api's clock and the broker's
 * (which stamps the stream's chunks) may disagree: a job counts as inside the history window
 * only this long after the window's start (a quarter of a shorter window). */
#define HISTORY_SKEW_MS 15000

/* One delivery from the job queue, from arrival until its ack or nack. It is referenced by
 * exactly one of: the Evolution transfer (while sending), or its tracked publishes (while its
 * outcome is being recorded). */
struct delivery {
  uint64_t tag;
  uint16_t channel; /* the job queue's, or a lane's */
  struct lane_item link;  /* while a lane holds it (lanes.h) */
  struct job *job; /* NULL for a job that could not be parsed */
  char *raw;       /* the job body as received, republished unchanged to retry/dead */
  size_t raw_len;
  int attempt;     /* 1 for the first delivery attempt */
  int64_t returns; /* x-delivery-count: times the broker got it back without an ack */
  int pending;     /* tracked publishes not yet confirmed */
  int failed;      /* one of them was nacked or returned */
  int succeeded;   /* Evolution API accepted it; the pending publish is the SUCCESS event */
  char key_id[101]; /* ...with this message id ("" when Evolution gave none) */
  int64_t started_ms;
  int64_t started_us, sent_us; /* received, and handed to Evolution API (for metrics) */
  unsigned conn_gen; /* the connection it came on: its tag means nothing on another one */
  char ref[64];    /* correlation id of its publishes, to match basic.return */
  char malformed_why[160]; /* why job_decode refused it (job NULL) */
  int holds;       /* x-holds: sends of it that ended in a hold-off (they spend no retry) */
  int64_t in_doubt_since_ms; /* x-in-doubt-since, or a local ambiguous outcome: 0 when none */
  int looked_up;   /* findMessages was asked already (not found): send */
  int64_t sent_at_ms; /* wall clock when its last send began */
  int64_t lookup_due_ms; /* monotonic: when its deferred findMessages may be asked */
  int deferred;    /* it waited for that already */
  struct delivery *list_next; /* in one of the worker's lists (held, waiting for a lookup) */
};

/* Deliveries kept here unacked, oldest first. */
struct delivery_list {
  struct delivery *head, *tail;
  long long n;
};

/* The deliveries whose events one status message carries (NULL: an untracked STARTED). */
struct status_batch {
  size_t n;
  struct delivery *owners[STATUS_BATCH_MAX];
};

struct worker {
  const struct cfg *cfg;
  struct worker_state *state;
  struct mq_session *session;
  int connected;                /* the session is open and set up */
  char consumer_tag[MQ_TAG_LEN]; /* of the job queue's consumer, "" when none */
  struct mq_publisher *pub;
  struct evo_client *evo;
  long long in_flight;

  /* The status stream, followed on STATUS_CH (see STATUS_PREFETCH), from history_from_ms
   * (consumer.history_window before the start) at boot. Jobs created after that (with
   * HISTORY_SKEW_MS of slack) are taken once it is caught up: every event about them is in
   * what it read. The stream's older part, its history, is read beside it on HISTORY_CH, from
   * the first message to the first one `stream` read; jobs created before the window wait in
   * `deferred` (unacked) until the history is read. So a start takes its first job after
   * reading the window, not the whole retention. */
  struct mq_stream *stream;
  struct mq_stream *history;   /* NULL when consumer.history_window is 0 (all of it first) */
  int history_done;
  unsigned history_gen;        /* the connection the history reader was started on, 0: none */
  int64_t history_from_ms;     /* wall clock */
  int64_t history_skew_ms;     /* HISTORY_SKEW_MS, or a quarter of a shorter window */
  int64_t history_started_ms;  /* monotonic, for the log line */
  struct delivery_list deferred;
  struct task_memory *memory;  /* sent, cancelled, and sent but unrecorded tasks */
  int64_t stream_subscribed_ms;/* monotonic, for the caught-up log line */
  int consuming_jobs;
  int crash_before_ack;        /* fault injection for tests: MSG_FAILPOINT=crash_before_ack */
  int draining;                /* a stop signal arrived: take nothing new */

  /* Hold-off (holdoff.h): deliveries kept here, unacked, while Evolution API is out, oldest
   * first; a probe takes the head. */
  struct holdoff *holdoff;
  struct delivery_list held;
  /* In-doubt deliveries waiting until their last send would have ended (RECONCILE_SETTLE_MS) */
  struct delivery_list doubts;

  /* Rate limits (lanes.h); rate_limited is 0 when no instance has a rate. */
  struct lane_table *lanes;
  int rate_limited;

  unsigned conn_gen; /* the session's generation of the live connection */

  int64_t started_at_ms;   /* wall clock, for the heartbeat */
  int64_t heartbeat_due_ms; /* monotonic */

  /* Status events queued during this loop turn, published together by flush_status. */
  char *ev_bodies[STATUS_BATCH_MAX];
  size_t ev_lens[STATUS_BATCH_MAX];
  struct delivery *ev_owners[STATUS_BATCH_MAX];
  size_t ev_n;
};

const char *const WORKER_PARK_REASON_NAMES[WORKER_PARK_REASONS] = {
  "permanent", "retries_exhausted", "malformed", "expired", "delivery_limit", "in_doubt", "other"};

/* Counts an Evolution answer under its code; codes past WORKER_MAX_CODES count as "other". Only
 * the worker thread claims slots. */
static void count_code(struct worker_state *s, const char *code)
{
  size_t n = atomic_load(&s->n_codes), i;
  for(i = 0; i < n && strcmp(s->code_names[i], code); i++)
    ;
  if(i == n) {
    if(n == WORKER_MAX_CODES - 1)
      code = "other";
    for(i = 0; i < n && strcmp(s->code_names[i], code); i++)
      ;
    if(i == n) {
      snprintf(s->code_names[i], sizeof s->code_names[i], "%s", code);
      atomic_store(&s->n_codes, n + 1);
    }
  }
  atomic_fetch_add(&s->code_counts[i], 1);
}

static void count_parked(struct worker_state *s, const char *reason)
{
  int i;
  for(i = 0; i < WORKER_PARK_REASONS - 1 && strcmp(WORKER_PARK_REASON_NAMES[i], reason); i++)
    ;
  atomic_fetch_add(&s->parked_by[i], 1);
}

static int flush_status(struct worker *w);
static void on_abort(void *owner, void *ctx);
static int admit_to_lane(struct worker *w, struct delivery *d);
static void settle_delivery(struct worker *w, struct delivery *d, int ok);

static void delivery_free(struct delivery *d)
{
  if(!d)
    return;
  job_free(d->job);
  free(d->raw);
  free(d);
}

static void set_in_flight(struct worker *w, long long delta)
{
  w->in_flight += delta;
  atomic_store(&w->state->in_flight, w->in_flight);
}

/* ---- publishing ------------------------------------------------------------------------ */

/* Publishes a job copy on the confirm channel; the owner is settled by its confirm. Returns 0,
 * or -1 when the connection failed (the loop notices and reconnects). */
static int publish(struct worker *w, struct delivery *owner, const char *exchange,
                   const char *key, int mandatory, const struct mq_props *p, const char *body,
                   size_t len)
{
  int rc = mq_publisher_publish(w->pub, w->session, exchange, key, mandatory, p, body, len,
                                owner);
  /* A failed publish breaks the publisher: the loop drops the connection, which settles every
   * tracked owner as lost, and the broker requeues what was not acked (an untracked owner
   * too: it is neither acked nor nacked here, and the broker gives it back). */
  if(rc != MQ_PUBLISH_UNTRACKED)
    owner->pending++;
  if(rc != MQ_PUBLISH_OK) {
    log_event(CFG_LOG_WARN, "publish failed: dropping the broker connection", NULL);
    return -1;
  }
  return 0;
}

/* A status change of a task that named a callback_url also goes to the callback queue, where
 * the dispatcher (callbacks.c) POSTs it with retries of its own; the delivery is acked only
 * once that publish is confirmed too, so no callback is lost. */
static int publish_callback(struct worker *w, struct delivery *d, const struct status_event *ev)
{
  struct mq_props p;
  struct mq_header h[3];
  char id[STATUS_EVENT_ID_LEN], *body;
  size_t len, n = 0;
  int rc;
  if(!(body = status_callback_body(ev, id, &len)))
    return -1;
  memset(&p, 0, sizeof p);
  p.message_id = id;
  p.correlation_id = d->ref;
  p.app_id = "msg-consumer";
  p.type = "message.callback";
  h[n++] = mq_header_str("x-callback-url", d->job->callback_url);
  if(d->job->request_id)
    h[n++] = mq_header_str("x-request-id", d->job->request_id);
  if(d->job->traceparent)
    h[n++] = mq_header_str("traceparent", d->job->traceparent);
  p.headers = h;
  p.n_headers = n;
  rc = publish(w, d, "", w->cfg->topology.callback_queue, 1, &p, body, len);
  free(body);
  return rc;
}

/* Queues a status event of d's task for the job's status stream; flush_status publishes the
 * queue as one message. A non-NULL owner is acked only after the event is confirmed. */
static int publish_status(struct worker *w, struct delivery *d, struct delivery *owner,
                          struct status_event *ev)
{
  size_t len;
  char *body;
  memcpy(ev->task_id, d->job->task_id, UTIL_UUID_LEN);
  ev->attempt = d->attempt;
  ev->at_ms = util_now_ms();
  ev->created_at_ms = d->job->created_at_ms;
  ev->phone = d->job->phone;
  ev->idempotency_key = d->job->idempotency_key;
  ev->generation = d->job->generation;
  ev->request_id = d->job->request_id;
  /* Every event of an idempotent task carries its request fingerprint, so a replica that
   * missed the PENDING event still refuses the key for a different request. */
  if(d->job->idempotency_key)
    ev->request_hash = job_request_hash(d->job);
  if(w->ev_n == STATUS_BATCH_MAX && flush_status(w))
    return -1;
  body = status_event_encode(ev, &len);
  if(!body)
    return -1;
  w->ev_bodies[w->ev_n] = body;
  w->ev_lens[w->ev_n] = len;
  w->ev_owners[w->ev_n++] = owner;
  if(owner)
    owner->pending++;
  if(owner && d->job->callback_url && w->cfg->callbacks.secret[0] &&
     (ev->status == TASK_RETRY || ev->status == TASK_SUCCESS || ev->status == TASK_FAILURE))
    return publish_callback(w, d, ev);
  return 0;
}

/* Gives up the queued events (the connection is gone): their owners are settled as failed. */
static void drop_status(struct worker *w)
{
  size_t n = w->ev_n;
  w->ev_n = 0;
  for(size_t i = 0; i < n; i++) {
    free(w->ev_bodies[i]);
    if(w->ev_owners[i])
      settle_delivery(w, w->ev_owners[i], 0);
  }
}

/* Publishes the queued status events as one stream message with one confirm. Returns 0, or -1
 * when the connection failed (the queued events are then given up). */
static int flush_status(struct worker *w)
{
  struct mq_props p;
  struct status_batch *b;
  char *joined = NULL;
  size_t len = 0;
  int rc;
  if(!w->ev_n)
    return 0;
  if(!w->connected)
    goto fail;
  b = malloc(sizeof *b);
  if(b && w->ev_n > 1 && !(joined = status_batch_join(w->ev_bodies, w->ev_lens, w->ev_n, &len))) {
    free(b);
    b = NULL;
  }
  if(!b) {
    free(joined);
    goto fail;
  }
  b->n = w->ev_n;
  memcpy(b->owners, w->ev_owners, w->ev_n * sizeof b->owners[0]);
  memset(&p, 0, sizeof p);
  p.app_id = "msg-consumer";
  p.type = "message.status";
  rc = mq_publisher_publish(w->pub, w->session, "", w->cfg->topology.status_stream, 0, &p,
                            joined ? joined : w->ev_bodies[0], joined ? len : w->ev_lens[0],
                            (void *)((uintptr_t)b | BATCH_BIT));
  free(joined);
  if(rc == MQ_PUBLISH_UNTRACKED) {
    free(b);
    goto fail;
  }
  for(size_t i = 0; i < w->ev_n; i++)
    free(w->ev_bodies[i]);
  /* The owners now belong to the batch: its confirm (or confirms_fail_all) settles them. */
  w->ev_n = 0;
  if(rc != MQ_PUBLISH_OK) {
    log_event(CFG_LOG_WARN, "publish failed: dropping the broker connection", NULL);
    return -1;
  }
  return 0;
fail:
  /* The queued events' owners are settled as failed now; their deliveries are requeued by the
   * broker when the loop drops the (now broken or closed) connection. */
  drop_status(w);
  return -1;
}

/* Properties of a job republished to a retry or dead queue: the original ones that matter,
 * plus our headers. x-death is deliberately not copied (DESIGN §3: cycle detection reads it). */
static void job_props(struct worker *w, struct delivery *d, struct mq_props *p,
                      const struct mq_header *headers, size_t nheaders)
{
  memset(p, 0, sizeof *p);
  p->correlation_id = d->ref;
  p->message_id = d->job ? d->job->task_id : NULL;
  p->reply_to = w->cfg->topology.status_stream;
  p->app_id = "msg-consumer";
  p->type = "message.send";
  p->headers = headers;
  p->n_headers = nheaders;
}

/* The headers a republished job carries: the attempt number it comes back with, its holds and
 * when its send went in doubt, so that whichever consumer takes it next knows. Returns how
 * many were written into h (room for JOB_HEADERS_MAX). */
#define JOB_HEADERS_MAX 3
static size_t job_headers(const struct delivery *d, int attempt, int holds, struct mq_header *h)
{
  size_t n = 0;
  h[n++] = mq_header_int("x-attempt", attempt);
  if(holds)
    h[n++] = mq_header_int("x-holds", holds);
  if(d->in_doubt_since_ms)
    h[n++] = mq_header_int("x-in-doubt-since", d->in_doubt_since_ms);
  return n;
}

/* Parks a job in the dead queue with why, then records FAILURE; acked once both are confirmed. */
static void park(struct worker *w, struct delivery *d, const char *reason, const char *code,
                 const char *message)
{
  struct mq_props p;
  struct mq_header h[5];
  char failed_at[UTIL_TIME_LEN];
  struct status_event ev;
  h[0] = mq_header_str("x-failure-reason", reason);
  h[1] = mq_header_int("x-attempts", d->attempt);
  h[2] = mq_header_str("x-last-error", message);
  h[3] = mq_header_str("x-failed-at", util_format_time(util_now_ms(), failed_at));
  h[4] = mq_header_str("x-error-code", code);
  job_props(w, d, &p, h, 5);
  atomic_fetch_add(&w->state->parked, 1);
  count_parked(w->state, reason);
  log_event(CFG_LOG_WARN, "job parked", "task_id", d->job ? d->job->task_id : NULL, "reason",
            reason, "error", code, "detail", message, "request_id",
            d->job ? d->job->request_id : NULL, NULL);
  if(publish(w, d, w->cfg->topology.exchange, MQ_KEY_DEAD, 1, &p, d->raw, d->raw_len))
    return;
  if(!d->job)
    return; /* a malformed job has no task to report on */
  memset(&ev, 0, sizeof ev);
  ev.status = TASK_FAILURE;
  ev.error_code = (char *)code;
  ev.error_message = (char *)message;
  publish_status(w, d, d, &ev);
}

/* Sends a job through the delay queue of `delay` (a scheduled job whose send_at is still ahead,
 * or a job of a held instance); it comes back through the job queue. Acked once the delay
 * queue confirmed it: nothing is held unacked here meanwhile. */
static void hop(struct worker *w, struct delivery *d, uint64_t delay)
{
  struct mq_props p;
  struct mq_header h[JOB_HEADERS_MAX];
  char key[64];
  /* A hop is no delivery attempt: the attempt number stays as it was. */
  job_props(w, d, &p, h, job_headers(d, d->attempt, d->holds, h));
  mq_delay_routing_key(delay, key, sizeof key);
  log_event(CFG_LOG_DEBUG, "waiting in a delay queue", "task_id", d->job->task_id, "queue", key,
            NULL);
  publish(w, d, w->cfg->topology.exchange, key, 1, &p, d->raw, d->raw_len);
}

static void retry_later(struct worker *w, struct delivery *d, const struct evo_outcome *o,
                        uint64_t delay)
{
  struct mq_props p;
  struct mq_header h[JOB_HEADERS_MAX];
  char key[64], attempt[16];
  struct status_event ev;
  /* The attempt number travels on the message, so it survives consumer restarts; so does the
   * doubt of an answer that may hide a send (the next attempt asks findMessages first). */
  if(o->ambiguous && !d->in_doubt_since_ms)
    d->in_doubt_since_ms = d->sent_at_ms;
  job_props(w, d, &p, h, job_headers(d, d->attempt + 1, d->holds, h));
  mq_retry_routing_key(delay, key, sizeof key);
  snprintf(attempt, sizeof attempt, "%d", d->attempt);
  atomic_fetch_add(&w->state->retried, 1);
  log_event(CFG_LOG_INFO, "delivery failed, will retry", "task_id", d->job->task_id, "attempt",
            attempt, "error", o->code, "detail", o->message, "retry_queue", key, "request_id",
            d->job->request_id, NULL);
  if(publish(w, d, w->cfg->topology.exchange, key, 1, &p, d->raw, d->raw_len))
    return;
  memset(&ev, 0, sizeof ev);
  ev.status = TASK_RETRY;
  ev.error_code = (char *)o->code;
  ev.error_message = (char *)o->message;
  ev.next_retry_at_ms = util_now_ms() + (int64_t)delay;
  publish_status(w, d, d, &ev);
}

/* ---- hold-off (holdoff.h) ------------------------------------------------------------- */

static void delivery_done(struct worker *w, struct delivery *d);
static int handled_before_send(struct worker *w, struct delivery *d, struct policy_decision dec);
static void begin_send(struct worker *w, struct delivery *d);
static struct policy_decision before_send(struct worker *w, const struct delivery *d,
                                          int with_rate);
static struct policy_delivery facts_of(struct worker *w, const struct delivery *d);
static void reconcile(struct worker *w, struct delivery *d);

static void list_push(struct delivery_list *l, struct delivery *d)
{
  d->list_next = NULL;
  if(l->tail)
    l->tail->list_next = d;
  else
    l->head = d;
  l->tail = d;
  l->n++;
}

static struct delivery *list_pop(struct delivery_list *l)
{
  struct delivery *d = l->head;
  if(!d)
    return NULL;
  if(!(l->head = d->list_next))
    l->tail = NULL;
  l->n--;
  return d;
}

/* Lets go of every delivery of l: requeued (at a stop) or left to the broker (the connection
 * is gone: it requeues them itself). */
static void list_drop(struct worker *w, struct delivery_list *l, int requeue)
{
  struct delivery *d;
  while((d = list_pop(l))) {
    if(requeue && w->connected && d->conn_gen == w->conn_gen)
      mq_nack(w->session, d->channel, d->tag, 1);
    delivery_done(w, d);
  }
}

/* Keeps d here, unacked, until Evolution API answers again: no return counts against its
 * delivery limit and no attempt is spent. At a stop, or from a lost connection, it goes back
 * to the broker instead. */
static void hold_here(struct worker *w, struct delivery *d)
{
  if(w->draining || !w->connected || d->conn_gen != w->conn_gen) {
    if(w->connected && d->conn_gen == w->conn_gen)
      mq_nack(w->session, d->channel, d->tag, 1);
    delivery_done(w, d);
    return;
  }
  list_push(&w->held, d);
  atomic_store(&w->state->held, w->held.n);
}

static struct delivery *unhold(struct worker *w)
{
  struct delivery *d = list_pop(&w->held);
  atomic_store(&w->state->held, w->held.n);
  return d;
}

/* Lets go of every delivery kept here (held, or waiting for a lookup). */
static void drop_held(struct worker *w, int requeue)
{
  list_drop(w, &w->held, requeue);
  list_drop(w, &w->doubts, requeue);
  list_drop(w, &w->deferred, requeue);
  atomic_store(&w->state->held, 0);
  atomic_store(&w->state->history_waiting, 0);
}

/* Evolution API answers again: every held delivery goes back to work at once. */
static void release_held(struct worker *w)
{
  struct delivery *list = w->held.head, *d;
  /* The list is taken whole: one that is held again goes onto a new one. */
  memset(&w->held, 0, sizeof w->held);
  atomic_store(&w->state->held, 0);
  while((d = list)) {
    list = d->list_next;
    if(!handled_before_send(w, d, before_send(w, d, 1)))
      begin_send(w, d);
  }
}

static void server_fail(struct worker *w, const struct evo_outcome *o)
{
  if(holdoff_fail(w->holdoff, &w->holdoff->server, o->code, util_mono_ms()))
    log_event(CFG_LOG_WARN, "Evolution API unavailable: holding its jobs until a probe works",
              "error", o->code, "detail", o->message, NULL);
}

static void server_ok(struct worker *w)
{
  char held[24];
  if(!holdoff_ok(w->holdoff, &w->holdoff->server))
    return;
  snprintf(held, sizeof held, "%lld", w->held.n);
  log_event(CFG_LOG_INFO, "Evolution API answers again: resuming", "held", held, NULL);
  release_held(w);
}

static void instance_fail(struct worker *w, const char *instance, const struct evo_outcome *o)
{
  struct holdoff_target *t = holdoff_instance(w->holdoff, instance);
  if(t && holdoff_fail(w->holdoff, t, o->code, util_mono_ms()))
    log_event(CFG_LOG_WARN, "Evolution instance unavailable: holding its jobs until it is open",
              "instance", instance, "error", o->code, "detail", o->message, NULL);
}

static void instance_ok(struct worker *w, struct holdoff_target *t)
{
  if(t && holdoff_ok(w->holdoff, t))
    log_event(CFG_LOG_INFO, "Evolution instance answers again: resuming", "instance",
              t->instance, NULL);
}

/* What an Evolution answer about `instance` says of the hold-off: a server outage holds
 * everything; any other answer shows the server is there, and a sent message that its
 * instance is. */
static void note_answer(struct worker *w, const char *instance, const struct evo_outcome *o)
{
  if(o->cls == EVO_TRANSIENT && o->scope == EVO_SCOPE_SERVER) {
    server_fail(w, o);
    return;
  }
  server_ok(w);
  if(o->cls == EVO_TRANSIENT && o->scope == EVO_SCOPE_INSTANCE)
    instance_fail(w, instance, o);
  else if(o->request == EVO_REQ_SEND && (o->cls == EVO_SUCCESS || o->cls == EVO_ALREADY_SENT))
    instance_ok(w, holdoff_instance_find(w->holdoff, instance));
}

/* A connectionState probe of the server (t is its target) or of an instance answered. */
static void on_probe_done(struct worker *w, struct holdoff_target *t, const struct evo_outcome *o)
{
  char why[48];
  if(o->cls == EVO_TRANSIENT && o->scope == EVO_SCOPE_SERVER) {
    server_fail(w, o);
    if(t != &w->holdoff->server)
      holdoff_fail(w->holdoff, t, o->code, util_mono_ms());
    return;
  }
  server_ok(w);
  if(t == &w->holdoff->server)
    return;
  if(o->cls == EVO_SUCCESS && !strcmp(o->state, "open")) {
    instance_ok(w, t);
    return;
  }
  snprintf(why, sizeof why, "instance_state_%s", o->state[0] ? o->state : "unknown");
  holdoff_fail(w->holdoff, t, o->cls == EVO_SUCCESS ? why : o->code, util_mono_ms());
}

/* The server probe: one real send of the oldest held job, whose answer tells (held jobs that
 * need no send any more, sent or expired meanwhile, are settled on the way); with none held
 * (they went back with a lost connection), GET connectionState of the default instance. */
static void probe_server(struct worker *w)
{
  size_t before = evo_in_flight(w->evo);
  struct delivery *d;
  while(evo_in_flight(w->evo) == before && (d = unhold(w))) {
    struct policy_delivery f = facts_of(w, d);
    f.server_held = 0;
    if(!handled_before_send(w, d, policy_before_send(&f, util_now_ms())))
      begin_send(w, d);
  }
  if(evo_in_flight(w->evo) > before)
    return;
  if(evo_connection_state(w->evo, w->cfg->evolution.instance,
                          (void *)((uintptr_t)&w->holdoff->server | PROBE_BIT)))
    holdoff_probe_gone(w->holdoff, &w->holdoff->server);
}

/* Asks findMessages about the in-doubt deliveries whose last send would have ended by now;
 * lowers *wait_ms to the time until the next one is due. */
static void service_doubts(struct worker *w, int *wait_ms)
{
  struct delivery_list due = {0}, later = {0};
  struct delivery *d;
  int64_t now = util_mono_ms();
  while((d = list_pop(&w->doubts)))
    list_push(d->lookup_due_ms <= now ? &due : &later, d);
  w->doubts = later;
  for(d = later.head; d; d = d->list_next)
    if(d->lookup_due_ms - now < *wait_ms)
      *wait_ms = (int)(d->lookup_due_ms - now);
  while((d = list_pop(&due)))
    reconcile(w, d);
}

/* Starts the probes that are due; lowers *wait_ms to the time until the next one. */
static void service_holdoff(struct worker *w, int *wait_ms)
{
  struct holdoff *h = w->holdoff;
  int64_t now = util_mono_ms(), in;
  service_doubts(w, wait_ms);
  if(holdoff_probe_due(h, &h->server, now))
    probe_server(w);
  for(size_t i = 0; !h->server.held && i < h->n_instances; i++) {
    struct holdoff_target *t = h->instances[i];
    if(holdoff_probe_due(h, t, now) &&
       evo_connection_state(w->evo, t->instance, (void *)((uintptr_t)t | PROBE_BIT)))
      holdoff_probe_gone(h, t);
  }
  in = holdoff_next_probe_in(h, now);
  if(in < *wait_ms)
    *wait_ms = (int)in;
}

/* A send failed because its server or instance is out. It is sent again once that answers,
 * and the attempt spends no retry (x-holds). An answer that may hide a send leaves it in doubt:
 * findMessages is asked before it is sent again. Else the task says RETRY with the outage's
 * error (not sent, waiting) instead of STARTED. */
static void hold_after_outage(struct worker *w, struct delivery *d, const struct evo_outcome *o,
                              int instance)
{
  char detail[sizeof o->message + 96];
  if(o->ambiguous && !d->in_doubt_since_ms)
    d->in_doubt_since_ms = d->sent_at_ms;
  log_event(CFG_LOG_DEBUG, "held: Evolution unavailable", "task_id", d->job->task_id, "error",
            o->code, NULL);
  if(!o->ambiguous) {
    struct status_event ev;
    memset(&ev, 0, sizeof ev);
    snprintf(detail, sizeof detail, "held until Evolution API %s answers again (not counted as "
             "a retry): %s", instance ? "instance" : "server", o->message);
    ev.status = TASK_RETRY;
    ev.error_code = (char *)o->code;
    ev.error_message = detail;
    /* When it is tried again at the earliest: back from its hop, or the server's next probe. */
    {
      int64_t in = instance ? POLICY_INSTANCE_HOP_MS
                            : holdoff_next_probe_in(w->holdoff, util_mono_ms());
      ev.next_retry_at_ms = util_now_ms() + (in < HOLDOFF_MAX_PROBE_MS ? in : HOLDOFF_MAX_PROBE_MS);
    }
    publish_status(w, d, instance ? d : NULL, &ev);
  }
  d->attempt++;
  d->holds++;
  d->looked_up = 0;
  if(!instance) {
    hold_here(w, d);
    return;
  }
  atomic_fetch_add(&w->state->hops, 1);
  hop(w, d, POLICY_INSTANCE_HOP_MS);
  delivery_done(w, d);
}

/* ---- in-doubt sends: findMessages ----------------------------------------------------- */

/* Asks findMessages whether d's send went out, from before its first unsettled send (with
 * slack for clocks) to now. */
static void reconcile(struct worker *w, struct delivery *d)
{
  int64_t since = d->in_doubt_since_ms, first, last = d->sent_at_ms, now = util_now_ms(), due;
  char at[UTIL_TIME_LEN];
  if(task_memory_in_doubt(w->memory, d->job->task_id, &first, &due)) {
    if(!since || first < since)
      since = first;
    if(due > last)
      last = due;
  }
  if(!since)
    since = now;
  /* Its last send may still be under way at Evolution, which stores it only once sent: the
   * lookup waits until that send would have ended. */
  due = last + (int64_t)w->cfg->evolution.timeout_ms + RECONCILE_SETTLE_MS;
  if(!d->deferred && now < due) {
    if(w->draining) {
      mq_nack(w->session, d->channel, d->tag, 1);
      delivery_done(w, d);
      return;
    }
    d->deferred = 1;
    d->lookup_due_ms = util_mono_ms() + (due - now);
    list_push(&w->doubts, d);
    return;
  }
  d->looked_up = 1;
  atomic_fetch_add(&w->state->lookups, 1);
  log_event(CFG_LOG_INFO, "in doubt: asking Evolution API whether it went out", "task_id",
            d->job->task_id, "since", util_format_time(since, at), NULL);
  if(evo_find(w->evo, d->job, since - RECONCILE_SLACK_MS, now + RECONCILE_SLACK_MS, d)) {
    log_event(CFG_LOG_ERROR, "cannot start a findMessages request", "task_id", d->job->task_id,
              NULL);
    on_abort(d, w);
  }
}

/* findMessages answered about d. */
static void on_lookup_done(struct worker *w, struct delivery *d, const struct evo_outcome *o)
{
  struct policy_decision dec;
  char why[sizeof o->message + 128];
  if(!w->connected || d->conn_gen != w->conn_gen) {
    /* The broker redelivers it; it is still in doubt then. */
    set_in_flight(w, -1);
    delivery_free(d);
    return;
  }
  dec = policy_after_lookup(o->cls, o->scope, o->found, w->cfg);
  switch(dec.action) {
  case POLICY_SUCCEED: {
    struct status_event ev;
    memset(&ev, 0, sizeof ev);
    ev.status = TASK_SUCCESS;
    ev.evolution_key = (char *)o->key_id;
    ev.reconciled = 1;
    d->succeeded = 1;
    snprintf(d->key_id, sizeof d->key_id, "%s", o->key_id);
    atomic_fetch_add(&w->state->reconciled, 1);
    atomic_fetch_add(&w->state->succeeded, 1);
    log_event(CFG_LOG_INFO, "in-doubt send found in Evolution API: recorded, not sent again",
              "task_id", d->job->task_id, "evolution_key", o->key_id, NULL);
    publish_status(w, d, d, &ev);
    break;
  }
  case POLICY_HOLD_SERVER:
    d->looked_up = 0; /* asked again once Evolution API answers */
    hold_here(w, d);
    return;
  case POLICY_PARK:
    snprintf(why, sizeof why, "its send may have gone out and findMessages could not tell (%s): "
             "parked rather than risk a second message", o->message);
    log_event(CFG_LOG_WARN, "in doubt and findMessages failed: parking (evolution.in_doubt: park)",
              "task_id", d->job->task_id, "error", o->code, NULL);
    park(w, d, dec.reason, dec.code, why);
    break;
  default:
    if(o->cls == EVO_SUCCESS)
      log_event(CFG_LOG_INFO, "in-doubt send not found in Evolution API: sending", "task_id",
                d->job->task_id, NULL);
    else
      log_event(CFG_LOG_WARN, "findMessages failed for an in-doubt job: sending it "
                "(evolution.in_doubt: resend)", "task_id", d->job->task_id, "error", o->code,
                "detail", o->message, NULL);
    d->in_doubt_since_ms = 0;
    if(!handled_before_send(w, d, before_send(w, d, 1)))
      begin_send(w, d);
    return;
  }
  delivery_done(w, d);
}

/* ---- outcomes -------------------------------------------------------------------------- */

/* Remembers a send whose SUCCESS could not be recorded: its redelivery records it. */
static void remember_unrecorded(struct worker *w, const char *task_id, const char *key_id,
                                const char *why)
{
  task_memory_note_unrecorded(w->memory, task_id, key_id);
  log_event(CFG_LOG_WARN, why, "task_id", task_id, NULL);
}

/* A send finished after its delivery's connection was lost: nothing can be acked or published
 * for it, and the broker redelivers the job. */
static void orphan_done(struct worker *w, struct delivery *d, const struct evo_outcome *o)
{
  if(o->cls == EVO_SUCCESS || o->cls == EVO_ALREADY_SENT)
    remember_unrecorded(w, d->job->task_id, o->key_id,
                        "sent while the broker connection was down; recorded on redelivery");
  set_in_flight(w, -1);
  delivery_free(d);
}

/* The facts the policy decides on. */
static struct policy_delivery facts_of(struct worker *w, const struct delivery *d)
{
  struct policy_delivery f;
  char key[TASK_MEMORY_KEY_LEN];
  memset(&f, 0, sizeof f);
  if(!d->job) {
    f.malformed = 1;
    return f;
  }
  f.sent = task_memory_sent(w->memory, d->job->task_id);
  f.sent_unrecorded = f.sent && task_memory_unrecorded(w->memory, d->job->task_id, key);
  f.cancelled = task_memory_cancelled(w->memory, d->job->task_id);
  f.returns = d->returns;
  f.send_at_ms = d->job->send_at_ms;
  f.expires_at_ms = d->job->expires_at_ms;
  f.from_lane = d->channel != CONSUME_CH;
  f.holds = d->holds;
  f.server_held = w->holdoff->server.held;
  {
    struct holdoff_target *t = holdoff_instance_find(w->holdoff, d->job->instance_name);
    f.instance_held = t && t->held;
  }
  f.reconcile = w->cfg->evolution.reconcile;
  if(!d->looked_up) {
    int64_t since, last;
    f.in_doubt = d->in_doubt_since_ms ||
                 task_memory_in_doubt(w->memory, d->job->task_id, &since, &last);
  }
  if(w->rate_limited) {
    struct lane *l = lanes_get(w->lanes, d->job->instance_name, util_mono_us());
    /* Out of memory (no lane): admit_to_lane gives the job back rather than send it unpaced. */
    f.rate_limited = !l || l->rate > 0;
  }
  return f;
}

/* The decision before sending, for a delivery that just arrived or (with_rate 0) one whose
 * token of its instance's rate was just taken. */
static struct policy_decision before_send(struct worker *w, const struct delivery *d,
                                          int with_rate)
{
  struct policy_delivery f = facts_of(w, d);
  if(!with_rate)
    f.rate_limited = 0;
  return policy_before_send(&f, util_now_ms());
}

static void on_http_done(void *owner, const struct evo_outcome *o, void *ctx)
{
  struct worker *w = ctx;
  struct delivery *d = owner;
  char latency[24], status[8], attempt[16];
  if((uintptr_t)owner & PROBE_BIT) {
    on_probe_done(w, (struct holdoff_target *)((uintptr_t)owner & ~PROBE_BIT), o);
    return;
  }
  note_answer(w, d->job->instance_name, o);
  if(o->request == EVO_REQ_SEND)
    count_code(w->state, o->code);
  if(o->request == EVO_REQ_FIND) {
    on_lookup_done(w, d, o);
    return;
  }
  if(!w->connected || d->conn_gen != w->conn_gen) {
    orphan_done(w, d, o);
    return;
  }
  snprintf(latency, sizeof latency, "%lld", (long long)(util_mono_ms() - d->started_ms));
  snprintf(status, sizeof status, "%ld", o->http_status);
  snprintf(attempt, sizeof attempt, "%d", d->attempt);
  metrics_observe(&w->state->evolution_latency, (double)(util_mono_us() - d->sent_us) / 1e6);
  if(o->config_fault)
    atomic_fetch_add(&w->state->config_faults, 1);
  if(o->config_fault)
    log_event(CFG_LOG_ERROR, "Evolution API configuration fault", "task_id", d->job->task_id,
              "error", o->code, "detail", o->message, NULL);
  {
    /* After a send only the expiry and the holds matter: no lane lookup on this path. */
    struct policy_delivery f = {.expires_at_ms = d->job->expires_at_ms, .holds = d->holds};
    struct policy_decision dec =
      policy_after_send(&f, o->cls, o->scope, d->attempt, w->cfg, util_now_ms());
    switch(dec.action) {
    case POLICY_HOLD_SERVER:
    case POLICY_HOLD_INSTANCE:
      hold_after_outage(w, d, o, dec.action == POLICY_HOLD_INSTANCE);
      return;
    case POLICY_SUCCEED: {
      struct status_event ev;
      memset(&ev, 0, sizeof ev);
      ev.status = TASK_SUCCESS;
      if(o->cls == EVO_SUCCESS)
        ev.evolution_key = (char *)o->key_id;
      else {
        ev.error_code = (char *)o->code;
        ev.error_message = (char *)o->message;
      }
      atomic_fetch_add(&w->state->succeeded, 1);
      d->succeeded = 1;
      snprintf(d->key_id, sizeof d->key_id, "%s", o->key_id);
      log_event(CFG_LOG_INFO, "message delivered", "task_id", d->job->task_id, "attempt",
                attempt, "outcome", o->code, "evolution_key", o->key_id[0] ? o->key_id : NULL,
                "latency_ms", latency, "request_id", d->job->request_id, NULL);
      publish_status(w, d, d, &ev);
      break;
    }
    case POLICY_RETRY:
      retry_later(w, d, o, dec.delay_ms);
      break;
    case POLICY_PARK:
      if(o->cls == EVO_PERMANENT)
        log_event(CFG_LOG_INFO, "delivery refused", "task_id", d->job->task_id, "attempt",
                  attempt, "http_status", status, "error", o->code, "request_id",
                  d->job->request_id, NULL);
      park(w, d, dec.reason, dec.code ? dec.code : o->code, o->message);
      break;
    default:
      /* policy_after_send decides nothing else; a job is never dropped on the floor. */
      on_abort(d, w);
      return;
    }
  }
  if(!d->pending) {
    /* Nothing could be published: the connection is gone and the broker will redeliver. */
    set_in_flight(w, -1);
    delivery_free(d);
  }
}

/* All of a delivery's publishes are settled: ack it, or requeue it when one failed. */
static void settle_delivery(struct worker *w, struct delivery *d, int ok)
{
  if(ok != CONFIRM_ACKED)
    d->failed = 1;
  if(--d->pending)
    return;
  if(d->failed && d->succeeded && d->job)
    /* Sent, but its SUCCESS was refused or lost with the connection (a broker stopping nacks):
     * the job comes back, and must then be recorded, not sent again. */
    remember_unrecorded(w, d->job->task_id, d->key_id,
                        "sent but the SUCCESS was not confirmed; recorded on redelivery");
  if(w->connected && !d->failed && d->job && d->succeeded) {
    task_memory_note_sent(w->memory, d->job->task_id);
    if(w->crash_before_ack) {
      /* Simulates a crash in the worst window: Evolution accepted, SUCCESS recorded, no ack. */
      log_event(CFG_LOG_WARN, "failpoint crash_before_ack: killing the process", "task_id",
                d->job->task_id, NULL);
      raise(SIGKILL);
    }
  }
  if(w->connected) {
    if(d->failed)
      mq_nack(w->session, d->channel, d->tag, 1);
    else
      mq_ack(w->session, d->channel, d->tag, 0);
    metrics_observe(&w->state->delivery_latency, (double)(util_mono_us() - d->started_us) / 1e6);
  }
  set_in_flight(w, -1);
  delivery_free(d);
}

static void on_settle(void *owner, int ok, void *ctx)
{
  struct worker *w = ctx;
  if((uintptr_t)owner & BATCH_BIT) {
    struct status_batch *b = (struct status_batch *)((uintptr_t)owner & ~BATCH_BIT);
    for(size_t i = 0; i < b->n; i++)
      if(b->owners[i])
        settle_delivery(w, b->owners[i], ok);
    free(b);
  }
  else if(owner)
    settle_delivery(w, owner, ok);
}

static void on_abort(void *owner, void *ctx)
{
  struct worker *w = ctx;
  struct delivery *d = owner;
  if((uintptr_t)owner & PROBE_BIT) {
    /* An aborted probe tells nothing: the next one may start. */
    holdoff_probe_gone(w->holdoff, (struct holdoff_target *)((uintptr_t)owner & ~PROBE_BIT));
    return;
  }
  /* Requeue so another attempt happens soon; on a dead connection the broker does it (and a
   * delivery from an earlier connection has no tag on this one). */
  if(w->connected && d->conn_gen == w->conn_gen)
    mq_nack(w->session, d->channel, d->tag, 1);
  set_in_flight(w, -1);
  delivery_free(d);
}

/* ---- deliveries ------------------------------------------------------------------------ */

/* Frees a delivery that has nothing left in flight. */
static void delivery_done(struct worker *w, struct delivery *d)
{
  if(d->pending)
    return;
  set_in_flight(w, -1);
  delivery_free(d);
}

/* Carries out the policy's decision before sending. Returns 1 when the delivery was handled
 * (d is then owned by its publishes or freed), 0 when it is to be sent now. */
static int handled_before_send(struct worker *w, struct delivery *d, struct policy_decision dec)
{
  switch(dec.action) {
  case POLICY_SEND:
    return 0;
  case POLICY_ACK:
  case POLICY_RECORD: {
    /* Delivered again after a crash or a broker restart, but already sent: never twice. Or
     * cancelled by its sender while it waited: the task already says CANCELLED. */
    int cancelled = !task_memory_sent(w->memory, d->job->task_id);
    log_event(CFG_LOG_INFO,
              cancelled ? "task cancelled, not sending" : "already delivered, not sending again",
              "task_id", d->job->task_id, NULL);
    atomic_fetch_add(cancelled ? &w->state->cancelled : &w->state->duplicates, 1);
    if(dec.action == POLICY_RECORD) {
      /* Sent while disconnected: its SUCCESS was never recorded; record it now, ack after. */
      struct status_event ev;
      memset(&ev, 0, sizeof ev);
      task_memory_unrecorded(w->memory, d->job->task_id, d->key_id);
      task_memory_recorded(w->memory, d->job->task_id);
      ev.status = TASK_SUCCESS;
      ev.evolution_key = d->key_id[0] ? d->key_id : NULL;
      d->succeeded = 1;
      publish_status(w, d, d, &ev);
    }
    else
      mq_ack(w->session, d->channel, d->tag, 0);
    break;
  }
  case POLICY_HOLD:
  case POLICY_HOLD_INSTANCE:
    if(dec.action == POLICY_HOLD_INSTANCE)
      atomic_fetch_add(&w->state->hops, 1);
    hop(w, d, dec.delay_ms);
    break;
  case POLICY_HOLD_SERVER:
    hold_here(w, d);
    return 1;
  case POLICY_RECONCILE:
    reconcile(w, d);
    return 1;
  case POLICY_PARK:
    if(!strcmp(dec.reason, "delivery_limit")) {
      char why[128];
      snprintf(why, sizeof why, "delivered %lld times without an outcome: a consumer may be "
               "crashing on it", (long long)d->returns + 1);
      park(w, d, dec.reason, dec.code, why);
    }
    else if(!strcmp(dec.reason, "malformed"))
      park(w, d, dec.reason, dec.code, d->malformed_why);
    else
      park(w, d, dec.reason, dec.code, "the message expired before it could be sent");
    break;
  case POLICY_FORWARD:
  case POLICY_WAIT:
    return admit_to_lane(w, d) ? 0 : 1;
  case POLICY_SUCCEED:
  case POLICY_RETRY:
    /* Decisions after a send: never made before one. */
    on_abort(d, w);
    return 1;
  }
  delivery_done(w, d);
  return 1;
}

/* Records STARTED and hands the job to Evolution API. */
static void begin_send(struct worker *w, struct delivery *d)
{
  struct status_event ev;
  memset(&ev, 0, sizeof ev);
  ev.status = TASK_STARTED;
  publish_status(w, d, NULL, &ev);
  d->sent_us = util_mono_us();
  d->sent_at_ms = util_now_ms();
  if(evo_send(w->evo, d->job, d)) {
    log_event(CFG_LOG_ERROR, "cannot start an Evolution API request", "task_id",
              d->job->task_id, NULL);
    on_abort(d, w);
  }
}

/* ---- rate limits: lanes ---------------------------------------------------------------- */

/* The delivery a lane handed back (NULL stays NULL). */
static struct delivery *held(struct lane_item *it)
{
  return it ? (struct delivery *)(void *)((char *)it - offsetof(struct delivery, link)) : NULL;
}

/* Moves a job of a rate-limited instance from the job queue to its lane (confirmed, then the
 * original is acked): whichever consumer holds the lane paces it. */
static void forward_to_lane(struct worker *w, struct lane *l, struct delivery *d)
{
  struct mq_props p;
  struct mq_header h[JOB_HEADERS_MAX];
  char key[128];
  /* Moving to the lane is no delivery attempt: the attempt number stays as it was. */
  job_props(w, d, &p, h, job_headers(d, d->attempt, d->holds, h));
  mq_lane_routing_key(l->instance, key, sizeof key);
  atomic_fetch_add(&w->state->lane_forwarded, 1);
  publish(w, d, w->cfg->topology.exchange, key, 1, &p, d->raw, d->raw_len);
  delivery_done(w, d);
}

/* Rate limits: a job of a limited instance that came from the job queue moves to its lane; one
 * that came from its lane waits for a token. Returns 1 when d may be sent now. */
static int admit_to_lane(struct worker *w, struct delivery *d)
{
  struct lane *l;
  l = lanes_get(w->lanes, d->job->instance_name, util_mono_us());
  if(!l) {
    /* Out of memory: give it back for later rather than send it unpaced. */
    mq_nack(w->session, d->channel, d->tag, 1);
    delivery_done(w, d);
    return 0;
  }
  if(l->rate <= 0)
    return 1;
  if(d->channel == CONSUME_CH) {
    if(l->open)
      forward_to_lane(w, l, d);
    else
      lane_hold_for_open(l, &d->link); /* the loop opens the lane, then forwards */
    return 0;
  }
  if(lane_admit(l, &d->link, util_mono_us()))
    return 1;
  atomic_fetch_add(&w->state->lane_waiting, 1);
  return 0;
}

/* Declares a lane and consumes it on its own channel. Returns 0, or -1 when the connection
 * failed or the broker refused (the connection is then dropped and set up again). */
static int open_lane(struct worker *w, struct lane *l)
{
  char err[512], name[512];
  uint16_t ch = (uint16_t)(LANE_CH_BASE + l->index);
  double per_hold = ceil(l->rate * LANE_HOLD_SECONDS) + l->burst;
  uint16_t prefetch = per_hold > w->cfg->consumer.prefetch ? (uint16_t)w->cfg->consumer.prefetch
                                                            : (uint16_t)per_hold;
  mq_lane_queue_name(w->cfg, l->instance, name, sizeof name);
  if(mq_channel_open(w->session, ch, err, sizeof err) ||
     mq_declare_lane(w->session, ch, w->cfg, l->instance, err, sizeof err) ||
     mq_consume(w->session, ch, name, prefetch, MQ_NOT_A_STREAM, "consumer-lane",
                l->consumer_tag, err, sizeof err))
    goto fail;
  l->open = 1;
  log_event(CFG_LOG_INFO, "consuming a rate-limited lane", "queue", name, NULL);
  return 0;
fail:
  log_event(CFG_LOG_ERROR, "cannot open a rate-limited lane", "queue", name, "reason", err, NULL);
  return -1;
}

/* Gives back (requeues) the lane jobs that were not sent: at a stop, nothing waits for tokens
 * that will never come. */
static void release_lane_jobs(struct worker *w, struct lane *l)
{
  struct delivery *d;
  while((d = held(lane_next_for_open(l)))) {
    mq_nack(w->session, d->channel, d->tag, 1);
    delivery_done(w, d);
  }
  while((d = held(lane_next_held(l)))) {
    mq_nack(w->session, d->channel, d->tag, 1);
    atomic_fetch_sub(&w->state->lane_waiting, 1);
    delivery_done(w, d);
  }
}

/* One loop turn of the lanes: open the new ones, forward what waited for them, send what has a
 * token. Writes the time until the next token into *wait_ms (unchanged when nothing waits).
 * Returns 0, or -1 when the connection must be dropped. */
static int service_lanes(struct worker *w, int *wait_ms)
{
  int64_t now = util_mono_us();
  for(size_t i = 0; i < lanes_count(w->lanes); i++) {
    struct lane *l = lanes_at(w->lanes, i);
    struct delivery *d;
    if(l->rate <= 0)
      continue;
    if(w->draining) {
      release_lane_jobs(w, l);
      continue;
    }
    if(!l->open) {
      if(LANE_CH_BASE + l->index > (size_t)mq_session_channel_max(w->session)) {
        /* More lanes than channels: its jobs wait in the job queue, requeued. */
        if(lane_has_held_for_open(l))
          log_event(CFG_LOG_ERROR, "too many rate-limited instances for the broker's channel limit",
                    "instance", l->instance, NULL);
        release_lane_jobs(w, l);
        continue;
      }
      if(open_lane(w, l))
        return -1;
    }
    while((d = held(lane_next_for_open(l))))
      forward_to_lane(w, l, d);
    while((d = held(lane_next_ready(l, now)))) {
      atomic_fetch_sub(&w->state->lane_waiting, 1);
      if(!handled_before_send(w, d, before_send(w, d, 0)))
        begin_send(w, d);
    }
    if(lane_held(l)) {
      int64_t ms = (lane_wait_us(l, now) + 999) / 1000;
      if(ms < *wait_ms)
        *wait_ms = (int)ms;
    }
  }
  return 0;
}

/* The connection is gone: the lanes' jobs go back to their queues on the broker's side. */
static void reset_lanes(struct worker *w)
{
  for(size_t i = 0; w->lanes && i < lanes_count(w->lanes); i++) {
    struct lane *l = lanes_at(w->lanes, i);
    struct delivery *d;
    while((d = held(lane_next_for_open(l))))
      delivery_done(w, d);
    while((d = held(lane_next_held(l)))) {
      atomic_fetch_sub(&w->state->lane_waiting, 1);
      delivery_done(w, d);
    }
    lane_reset(l);
  }
}

/* At a stop: the lanes' consumers are cancelled like the job queue's. */
static void cancel_lanes(struct worker *w)
{
  for(size_t i = 0; w->connected && i < lanes_count(w->lanes); i++) {
    struct lane *l = lanes_at(w->lanes, i);
    if(l->open)
      mq_cancel(w->session, (uint16_t)(LANE_CH_BASE + l->index), l->consumer_tag);
  }
}

/* ---- deliveries ------------------------------------------------------------------------ */

static void start_delivery(struct worker *w, uint16_t channel, uint64_t tag,
                           const struct mq_message *m, int redelivered)
{
  struct delivery *d = calloc(1, sizeof *d);
  int64_t attempt = 1;
  size_t len;
  const void *body = mq_message_body(m, &len);
  if(!d || !(d->raw = malloc(len + 1))) {
    /* Out of memory: give it back for later. */
    free(d);
    mq_nack(w->session, channel, tag, 1);
    return;
  }
  d->tag = tag;
  d->channel = channel;
  if(len) /* an empty body comes with a NULL pointer */
    memcpy(d->raw, body, len);
  d->raw[len] = '\0';
  d->raw_len = len;
  d->started_ms = util_mono_ms();
  d->started_us = util_mono_us();
  d->conn_gen = w->conn_gen;
  if(!mq_message_header_int(m, "x-attempt", &attempt) && (attempt < 1 || attempt > 1000))
    attempt = 1;
  d->attempt = (int)attempt;
  if(mq_message_header_int(m, "x-delivery-count", &d->returns))
    d->returns = 0;
  {
    int64_t holds = 0, since = 0;
    if(!mq_message_header_int(m, "x-holds", &holds) && holds > 0 && holds <= 1000)
      d->holds = (int)holds;
    if(!mq_message_header_int(m, "x-in-doubt-since", &since) && since > 0)
      d->in_doubt_since_ms = since;
  }
  set_in_flight(w, 1);
  if(redelivered)
    atomic_fetch_add(&w->state->redelivered, 1);
  if(job_decode(d->raw, d->raw_len, &d->job, d->malformed_why, sizeof d->malformed_why))
    snprintf(d->ref, sizeof d->ref, "malformed-%llu", (unsigned long long)tag);
  else
    snprintf(d->ref, sizeof d->ref, "%s", d->job->task_id);
  if(d->job && !w->history_done &&
     d->job->created_at_ms < w->history_from_ms + w->history_skew_ms) {
    /* Older than what the stream has been read for: its task may have been cancelled or
     * sent before. It waits here until the history is read (finish_history). */
    log_event(CFG_LOG_DEBUG, "job older than the status history read so far: waiting for it",
              "task_id", d->job->task_id, NULL);
    list_push(&w->deferred, d);
    atomic_store(&w->state->history_waiting, (long long)w->deferred.n);
    return;
  }
  if(!handled_before_send(w, d, before_send(w, d, 1)))
    begin_send(w, d);
}

static void note_status_event(const struct status_event *ev, void *arg)
{
  struct worker *w = arg;
  /* Sends under way or in doubt anywhere in the fleet: a STARTED until its outcome. */
  if(ev->status == TASK_STARTED)
    task_memory_note_started(w->memory, ev->task_id, ev->attempt, ev->at_ms);
  else if(ev->status == TASK_RETRY)
    task_memory_note_outcome(w->memory, ev->task_id, ev->attempt);
  else if(ev->status == TASK_SUCCESS || ev->status == TASK_FAILURE ||
          ev->status == TASK_CANCELLED)
    task_memory_note_outcome(w->memory, ev->task_id, INT_MAX);
  if(ev->status == TASK_SUCCESS)
    task_memory_note_sent(w->memory, ev->task_id);
  else if(ev->status == TASK_CANCELLED)
    task_memory_note_cancelled(w->memory, ev->task_id);
  else if(ev->instance && w->rate_limited)
    /* Every consumer learns every limited instance from its accepted jobs and consumes its
     * lane too: if the active one dies, the broker hands the lane to another. */
    lanes_get(w->lanes, ev->instance, util_mono_us());
}

/* One message of the status stream: remember SUCCESS and CANCELLED tasks; our own marker
 * says the backlog is read. */
/* The status events of one stream message (live or history) into the task memory. */
static void remember_events(struct worker *w, const struct mq_message *m)
{
  char err[128];
  const void *body;
  size_t len;
  /* Bad events are the api's to report; here they are only not remembered. */
  body = mq_message_body(m, &len);
  status_message_decode(body, len, note_status_event, w, err, sizeof err);
}

static void on_status_message(struct worker *w, uint64_t tag, const struct mq_message *m)
{
  int what = mq_stream_delivery(w->stream, w->session, tag, m);
  if(what == MQ_STREAM_CAUGHT_UP) {
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", (double)(util_mono_ms() - w->stream_subscribed_ms) / 1e3);
    log_event(CFG_LOG_INFO, "status stream caught up", "seconds", secs, NULL);
    return;
  }
  if(what == MQ_STREAM_EVENT)
    remember_events(w, m);
}

/* A consumer's heartbeat on the status stream: msg-api's to read, nothing to remember. */
static int is_heartbeat(const struct mq_message *m)
{
  char type[32] = "";
  return !mq_message_prop(m, MQ_PROP_TYPE, type, sizeof type) &&
         !strcmp(type, "worker.heartbeat");
}

/* The history is read: the jobs that waited for it go to work. */
static void finish_history(struct worker *w)
{
  struct delivery *list = w->deferred.head, *d;
  char secs[32], waited[32];
  w->history_done = 1;
  atomic_store(&w->state->history_loaded, 1);
  snprintf(secs, sizeof secs, "%.3f", (double)(util_mono_ms() - w->history_started_ms) / 1e3);
  snprintf(waited, sizeof waited, "%lld", (long long)w->deferred.n);
  log_event(CFG_LOG_INFO, "status history read: every job may go now", "seconds", secs,
            "jobs_waiting", waited, NULL);
  memset(&w->deferred, 0, sizeof w->deferred);
  atomic_store(&w->state->history_waiting, 0);
  while((d = list)) {
    list = d->list_next;
    if(!w->connected || d->conn_gen != w->conn_gen) {
      delivery_done(w, d); /* its connection is gone: the broker gave it back */
      continue;
    }
    if(!handled_before_send(w, d, before_send(w, d, 1)))
      begin_send(w, d);
  }
}

/* One message of the stream's history (HISTORY_CH): applied like the live stream's, until it
 * reaches the first offset the live follower read. The channel is closed from the main loop
 * (an RPC inside the frame reader would be re-entrant). */
static void on_history_message(struct worker *w, uint64_t tag, const struct mq_message *m)
{
  int64_t live_first = mq_stream_first_offset(w->stream);
  int what;
  if(w->history_done || w->history_gen != w->conn_gen)
    return; /* after its end: frames still under way on the channel being closed */
  what = mq_stream_delivery(w->history, w->session, tag, m);
  if(live_first >= 0 && mq_stream_offset(w->history) >= live_first) {
    w->history_done = -1; /* read: finish_history runs from the loop */
    return;
  }
  if(what == MQ_STREAM_EVENT && !is_heartbeat(m))
    remember_events(w, m);
}

/* Starts the history reader once the live follower is caught up (so it does not slow the
 * window's read), on each connection until the history is read; it resumes where it stopped. */
static int service_history(struct worker *w)
{
  char err[512];
  if(!w->history || w->history_done > 0 || !w->connected || !mq_stream_caught_up(w->stream))
    return 0;
  if(w->history_done < 0) {
    mq_channel_close(w->session, HISTORY_CH);
    finish_history(w);
    return 0;
  }
  if(w->history_gen == w->conn_gen)
    return mq_stream_tick(w->history, w->session);
  if(mq_stream_start(w->history, w->session, err, sizeof err)) {
    log_event(CFG_LOG_WARN, "cannot read the status history", "reason", err, NULL);
    return -1;
  }
  if(!w->history_started_ms)
    w->history_started_ms = util_mono_ms();
  w->history_gen = w->conn_gen;
  return 0;
}

static void on_delivery(void *ctx, uint16_t ch, uint64_t tag, int redelivered,
                        struct mq_message *m)
{
  struct worker *w = ctx;
  if(ch == HISTORY_CH) {
    on_history_message(w, tag, m);
    return;
  }
  if(ch == STATUS_CH && is_heartbeat(m)) {
    /* The fleet's heartbeats are the api's to read; only the stream's offset moves here. */
    mq_stream_delivery(w->stream, w->session, tag, m);
    return;
  }
  if(ch == STATUS_CH)
    on_status_message(w, tag, m);
  else
    start_delivery(w, ch, tag, m, redelivered);
}

static int match_ref(void *owner, void *ref)
{
  /* Status batches are published without mandatory: never returned. */
  if(!owner || ((uintptr_t)owner & BATCH_BIT))
    return 0;
  return !strcmp(((struct delivery *)owner)->ref, ref);
}

static int on_returned(void *ctx, uint16_t ch, struct mq_message *m)
{
  struct worker *w = ctx;
  char ref[64] = "";
  (void)ch;
  mq_message_prop(m, MQ_PROP_CORRELATION_ID, ref, sizeof ref);
  log_event(CFG_LOG_ERROR, "publish returned unroutable: is the topology declared?", "ref", ref,
            NULL);
  mq_publisher_mark_returned(w->pub, match_ref, ref);
  return 0;
}

static void on_blocked(void *ctx, int blocked)
{
  (void)ctx;
  if(blocked)
    log_event(CFG_LOG_WARN, "broker blocked publishing (memory or disk alarm)", NULL);
  else
    log_event(CFG_LOG_INFO, "broker unblocked publishing", NULL);
}

/* Reads every frame available without blocking. Returns 0, or -1 when the connection is gone. */
static int drain_frames(struct worker *w)
{
  struct mq_handlers h;
  char why[512];
  unsigned long long reopens = mq_publisher_reopens(w->pub);
  memset(&h, 0, sizeof h);
  h.ctx = w;
  h.publishers[0] = w->pub;
  h.publishers[1] = mq_stream_publisher(w->stream);
  h.deliver = on_delivery;
  h.returned = on_returned;
  h.blocked = on_blocked;
  /* No cancelled handler: a consumer the broker cancelled (its queue deleted, or a quorum
   * queue whose members moved) is set up again with the connection. */
  if(mq_pump(w->session, &h, why, sizeof why) || mq_stream_tick(w->stream, w->session)) {
    log_event(CFG_LOG_WARN, "broker connection lost", "reason", why, NULL);
    return -1;
  }
  if(mq_publisher_reopens(w->pub) != reopens)
    log_event(CFG_LOG_WARN, "the broker kept nacking publishes: publishing on a fresh channel",
              "broker", mq_session_address(w->session), NULL);
  return 0;
}

/* ---- heartbeat ------------------------------------------------------------------------- */

/* Publishes this consumer's heartbeat on the status stream (not confirmed: the next one follows
 * soon, and msg-api only needs the latest). `stopping` says it is going away for good. Returns
 * 0, or -1 when the connection failed. */
static int publish_heartbeat(struct worker *w, int stopping)
{
  struct worker_state *s = w->state;
  char host[256] = "", id[320], started[UTIL_TIME_LEN], at[UTIL_TIME_LEN];
  json_t *evolution = holdoff_doc(w->holdoff);
  char *body = NULL;
  json_t *o = NULL;
  struct mq_props p;
  int rc = 0;
  gethostname(host, sizeof host - 1);
  snprintf(id, sizeof id, "%s:%ld", host, (long)getpid());
  o = json_pack("{s:i, s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:i, s:b, s:b, s:I, s:i, s:I, s:I, s:I, "
                "s:I, s:I, s:I, s:I, s:I}",
                "v", 1, "kind", "worker", "worker_id", id, "host", host, "pid", (json_int_t)getpid(),
                "version", MSG_VERSION, "started_at", util_format_time(w->started_at_ms, started),
                "at", util_format_time(util_now_ms(), at), "interval_ms", HEARTBEAT_MS,
                "stopping", stopping, "consuming", w->consuming_jobs,
                "in_flight", (json_int_t)w->in_flight, "prefetch", (int)w->cfg->consumer.prefetch,
                "held", (json_int_t)w->held.n, "succeeded", (json_int_t)atomic_load(&s->succeeded),
                "retried", (json_int_t)atomic_load(&s->retried),
                "parked", (json_int_t)atomic_load(&s->parked),
                "duplicates", (json_int_t)atomic_load(&s->duplicates),
                "reconciled", (json_int_t)atomic_load(&s->reconciled),
                "redelivered", (json_int_t)atomic_load(&s->redelivered),
                "lanes", (json_int_t)lanes_count(w->lanes));
  if(o && evolution)
    json_object_set(o, "evolution", evolution);
  if(o)
    body = json_dumps(o, JSON_COMPACT);
  if(!body)
    log_event(CFG_LOG_WARN, "cannot build the heartbeat (out of memory)", NULL);
  else {
    memset(&p, 0, sizeof p);
    p.app_id = "msg-consumer";
    p.type = "worker.heartbeat";
    rc = mq_publisher_publish(w->pub, w->session, "", w->cfg->topology.status_stream, 0, &p, body,
                              strlen(body), NULL);
    rc = rc == MQ_PUBLISH_OK ? 0 : -1;
  }
  free(body);
  json_decref(evolution);
  json_decref(o);
  return rc;
}

/* ---- connection ------------------------------------------------------------------------ */

static int connect_broker(struct worker *w)
{
  char err[512];
  struct mq_session *s = w->session;
  if(mq_session_open(s, CONNECT_TIMEOUT_MS, err, sizeof err)) {
    log_event(CFG_LOG_WARN, "cannot connect to the broker", "reason", err, NULL);
    return -1;
  }
  if(mq_channel_open(s, CONSUME_CH, err, sizeof err) ||
     mq_declare_topology(s, CONSUME_CH, w->cfg, err, sizeof err) ||
     (w->cfg->callbacks.secret[0] &&
      mq_declare_callback_topology(s, CONSUME_CH, w->cfg, err, sizeof err)) ||
     mq_publisher_start(w->pub, s, err, sizeof err) ||
     mq_stream_start(w->stream, s, err, sizeof err))
    goto fail;
  w->conn_gen = mq_session_generation(w->session);
  w->stream_subscribed_ms = util_mono_ms();
  w->consuming_jobs = 0;
  atomic_fetch_add(&w->state->connects, 1);
  w->connected = 1;
  log_event(CFG_LOG_INFO, "connected; reading the status stream before taking jobs", "broker",
            mq_session_address(w->session), NULL);
  return 0;
fail:
  log_event(CFG_LOG_ERROR, "cannot set up the broker", "reason", err, NULL);
  mq_session_lost(w->session);
  mq_publisher_lost(w->pub);
  mq_stream_lost(w->stream);
  return -1;
}

/* Starts taking jobs once the status stream is caught up, so that a redelivered job whose
 * task already reached SUCCESS is recognised. Returns 0, or -1 when the broker refused. */
static int start_consuming_jobs(struct worker *w)
{
  char err[512];
  /* Quorum queues refuse a global prefetch; per-consumer is what bounds in-flight sends. */
  if(mq_consume(w->session, CONSUME_CH, w->cfg->topology.queue,
                (uint16_t)w->cfg->consumer.prefetch, MQ_NOT_A_STREAM, "consumer", w->consumer_tag,
                err, sizeof err)) {
    log_event(CFG_LOG_ERROR, "cannot consume the job queue", "reason", err, NULL);
    return -1;
  }
  w->consuming_jobs = 1;
  atomic_store(&w->state->connected, 1);
  log_event(CFG_LOG_INFO, "consuming", "queue", w->cfg->topology.queue, "consumer_tag",
            w->consumer_tag, NULL);
  return 0;
}

/* Drops the connection after a failure: unacked deliveries go back to the queue on the
 * broker's side, so in-flight work here is simply abandoned. */
static void drop_connection(struct worker *w)
{
  atomic_store(&w->state->connected, 0);
  mq_session_lost(w->session);
  w->connected = 0;
  w->consumer_tag[0] = '\0';
  /* Sends in flight are not aborted: they may already have gone out, and aborting would lose
   * the answer that prevents a second send when the broker redelivers (see on_http_done).
   * Every publish not yet confirmed is settled as lost, never by a later confirm. */
  mq_publisher_lost(w->pub);
  mq_stream_lost(w->stream);
  if(w->history) {
    mq_stream_lost(w->history);
    w->history_gen = 0;
    if(w->history_done < 0) /* read to its end: only the close was left */
      finish_history(w);
  }
  drop_status(w);
  reset_lanes(w);
  drop_held(w, 0);
}

static void cancel_consumer(struct worker *w)
{
  if(w->connected && w->consuming_jobs)
    mq_cancel(w->session, CONSUME_CH, w->consumer_tag);
}

/* Reads the signalfd; returns the number of stop signals read. */
static int read_signals(int fd)
{
  struct signalfd_siginfo si;
  int n = 0;
  while(read(fd, &si, sizeof si) == (ssize_t)sizeof si)
    n++;
  return n;
}

int worker_run(const struct cfg *cfg, struct worker_state *state, int stop_fd)
{
  struct worker w;
  int signals = 0, rc = 0;
  int64_t grace_deadline = 0, settle_deadline = 0, retry_at = 0;
  int hb_wait = cfg->broker.heartbeat_ms ? (int)(cfg->broker.heartbeat_ms / 2) : 1000;
  if(hb_wait > 1000)
    hb_wait = 1000;
  memset(&w, 0, sizeof w);
  w.cfg = cfg;
  w.state = state;
  w.session = mq_session_new(cfg, "consumer");
  w.pub = mq_publisher_new(PUBLISH_CH_A, PUBLISH_CH_B, on_settle, &w);
  w.stream = mq_stream_new(cfg, "consumer", STATUS_CH, MARKER_CH_A, MARKER_CH_B, STATUS_PREFETCH);
  if(cfg->consumer.history_window_ms) {
    int64_t window = (int64_t)cfg->consumer.history_window_ms;
    w.history_from_ms = util_now_ms() - window;
    w.history_skew_ms = window / 4 < HISTORY_SKEW_MS ? window / 4 : HISTORY_SKEW_MS;
    w.history = mq_stream_new(cfg, "consumer-history", HISTORY_CH, 0, 0, STATUS_PREFETCH);
    if(w.stream)
      mq_stream_start_at(w.stream, w.history_from_ms);
    if(w.history)
      mq_stream_without_marker(w.history);
  }
  else
    w.history_done = 1;
  atomic_store(&state->history_loaded, w.history_done);
  w.evo = evo_client_new(cfg, on_http_done, &w);
  w.memory = task_memory_new(SENT_MEMORY);
  w.lanes = lanes_new(cfg);
  w.rate_limited = cfg_any_rate_limit(cfg);
  w.holdoff = state->holdoff;
  w.started_at_ms = util_now_ms();
  {
    const char *fp = getenv("MSG_FAILPOINT");
    w.crash_before_ack = fp && !strcmp(fp, "crash_before_ack");
  }
  if(!w.session || !w.pub || !w.stream || !w.evo || !w.memory || !w.lanes ||
     (!w.history && !w.history_done)) {
    log_error("out of memory starting the worker");
    lanes_free(w.lanes);
    mq_stream_free(w.stream);
    mq_stream_free(w.history);
    mq_publisher_free(w.pub);
    mq_session_free(w.session);
    evo_client_free(w.evo);
    task_memory_free(w.memory);
    return 1;
  }
  for(;;) {
    int timeout = hb_wait;
    int fds[2];
    int nfds = 0;
    int64_t now = util_mono_ms();
    atomic_store(&state->loop_at_ms, now);

    if(signals == 1 && !grace_deadline) {
      log_event(CFG_LOG_INFO, "stopping: finishing deliveries in flight", NULL);
      atomic_store(&state->draining, 1);
      w.draining = 1;
      cancel_consumer(&w);
      cancel_lanes(&w);
      drop_held(&w, 1); /* what waits for Evolution API goes back to the queue now */
      /* The fleet's view drops this one at once instead of after three missed beats. */
      if(w.connected && publish_heartbeat(&w, 1))
        drop_connection(&w);
      grace_deadline = now + (int64_t)cfg->consumer.shutdown_grace_ms;
      settle_deadline = grace_deadline + SETTLE_EXTRA_MS;
    }
    if(signals >= 2) {
      log_event(CFG_LOG_WARN, "second stop signal: exiting at once", NULL);
      rc = 1;
      break;
    }
    if(grace_deadline) {
      if(!w.in_flight || !w.connected)
        break;
      if(now >= grace_deadline && evo_in_flight(w.evo)) {
        log_event(CFG_LOG_WARN, "grace period over: requeueing deliveries still sending", NULL);
        evo_abort_all(w.evo, on_abort, &w);
      }
      if(now >= settle_deadline)
        break;
    }

    if(!w.connected && !grace_deadline && now >= retry_at) {
      if(connect_broker(&w))
        retry_at = now + mq_session_retry_delay_ms(w.session);
    }
    if(w.connected && (drain_frames(&w) || flush_status(&w))) {
      drop_connection(&w);
      retry_at = 0; /* the next address at once */
    }
    /* While Evolution API is held off, its jobs wait in the broker: the job queue is not
     * consumed (the deliveries already here are held until a probe works). */
    if(w.connected && w.consuming_jobs && w.holdoff->server.held) {
      cancel_consumer(&w);
      w.consuming_jobs = 0;
    }
    if(w.connected && mq_stream_caught_up(w.stream) && !w.consuming_jobs && !grace_deadline &&
       !w.holdoff->server.held && start_consuming_jobs(&w))
      drop_connection(&w);
    if(w.connected && mq_stream_caught_up(w.stream) && !grace_deadline)
      service_holdoff(&w, &timeout);
    if(w.connected && !grace_deadline && service_history(&w))
      drop_connection(&w);
    if(w.connected && mq_stream_caught_up(w.stream) && now >= w.heartbeat_due_ms) {
      w.heartbeat_due_ms = now + HEARTBEAT_MS;
      if(publish_heartbeat(&w, 0))
        drop_connection(&w);
    }
    /* Lanes are opened only once the status stream is caught up, like the job queue. */
    if(w.connected && w.consuming_jobs && service_lanes(&w, &timeout))
      drop_connection(&w);

    /* STARTED events go out before the sends they announce (evo_run starts them): a crash
     * after a send began always leaves its task STARTED, so its redelivery is in doubt. */
    if(w.connected && flush_status(&w))
      drop_connection(&w);
    if(w.connected) {
      /* rabbitmq-c may already hold whole frames in its buffer: the socket will not wake us. */
      if(mq_session_pending_input(w.session))
        timeout = 0;
      fds[nfds++] = mq_session_fd(w.session);
    }
    else if(!grace_deadline) {
      int64_t wait = retry_at - now;
      timeout = wait < 0 ? 0 : (wait > hb_wait ? hb_wait : (int)wait);
    }
    if(grace_deadline && timeout > 50)
      timeout = 50;
    fds[nfds++] = stop_fd;
    evo_run(w.evo, fds, nfds, timeout);
    /* Outcomes recorded by the transfers that just finished go out now, not a turn later. */
    if(w.connected && flush_status(&w))
      drop_connection(&w);
    signals += read_signals(stop_fd);
  }
  /* Whatever is left is requeued by the broker when the connection closes. */
  evo_abort_all(w.evo, on_abort, &w);
  reset_lanes(&w);
  drop_held(&w, 0);
  w.connected = 0; /* what settles now must not ack: the broker requeues at the close */
  mq_publisher_lost(w.pub);
  drop_status(&w);
  mq_session_close(w.session);
  evo_client_free(w.evo);
  mq_stream_free(w.stream);
  mq_stream_free(w.history);
  mq_publisher_free(w.pub);
  mq_session_free(w.session);
  task_memory_free(w.memory);
  lanes_free(w.lanes);
  atomic_store(&state->connected, 0);
  return rc;
}
