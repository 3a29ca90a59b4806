/* The api's publisher: one thread owns an AMQP connection with a confirm channel; HTTP worker
 * threads hand it jobs and wait for the broker's confirm, many confirms in flight together. */
#include "publisher.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "mq.h"
#include "status.h"
#include "util.h"

/* Channel 1 declares the topology; 2 publishes (3 when 2 is replaced, see mq_publisher). */
#define SETUP_CH 1
#define PUBLISH_CH_A 2
#define PUBLISH_CH_B 3
#define CONNECT_TIMEOUT_MS 5000

/* One hand-over from an HTTP worker. It is shared by the worker (which may give up waiting)
 * and the publisher thread, so it is freed when both released it (refs). The job goes first;
 * its PENDING event only once the job is confirmed, so that a job the broker refused never
 * leaves a PENDING task (or its Idempotency-Key) behind on the stream. All fields below
 * `next_event` are guarded by pub->lock, but refs (atomic) and result, which the worker reads
 * without the lock once `done` is posted. */
struct pub_req {
  struct pub_req *next;       /* handed-over queue */
  struct pub_req *next_event; /* confirmed jobs whose event is still to publish */
  char task_id[UTIL_UUID_LEN];
  char *job_body, *event_body;
  size_t job_len, event_len;
  atomic_int refs;
  int job_done;
  int abandoned;          /* the worker stopped waiting (timeout): the outcome is reported late */
  enum pub_result result; /* once job_done */
  int event_only; /* no job: the event itself is what the worker waits for */
  char *callback_url, *callback_id; /* event_only to the callback queue: a status callback */
  /* Posted once job_done is set: the worker waits on its own request, not on pub->lock, so
   * the workers woken by one multiple-ack do not queue for the lock the publisher holds. */
  sem_t done;
};

struct publisher {
  const struct cfg *cfg;
  pthread_t thread;
  int wake_fd; /* eventfd: workers wake the thread when they queue work */

  pthread_mutex_t lock; /* guards queue, stopping, ready, in_flight and pub_req states */
  struct pub_req *queue_head, *queue_tail;
  int stopping, ready;
  int drain_ms;
  size_t in_flight;
  unsigned long long connects;
  void (*late_fn)(const char *task_id, enum pub_result result, void *ctx);
  void *late_ctx;

  /* Owned by the publisher thread alone, but for the tracker inside `publisher`, which
   * settles owners under pub->lock. */
  struct mq_session *session;
  int connected; /* the session is open with the topology declared */
  struct mq_publisher *publisher;
  struct pub_req *events_head, *events_tail; /* PENDING events to publish */
};

/* Confirm owners are pub_req pointers for jobs, and event_batch pointers with the low bit set
 * for the stream messages that carry the PENDING events of many jobs at once. */
#define EVENT_BIT ((uintptr_t)1)
/* PENDING events per stream message: one publish and one confirm instead of hundreds. */
#define EVENTS_PER_BATCH 256

struct event_batch {
  size_t n;
  struct pub_req *reqs[EVENTS_PER_BATCH];
};

static void settle_locked(struct publisher *pub, void *owner, int ok);

static void req_release(struct pub_req *r)
{
  if(atomic_fetch_sub(&r->refs, 1) != 1)
    return;
  sem_destroy(&r->done);
  free(r->job_body);
  free(r->event_body);
  free(r->callback_url);
  free(r->callback_id);
  free(r);
}

/* Runs on the publisher thread, which holds no lock then (the settling of mq_pump and
 * mq_publisher_lost). The worker waits for the job's confirm only; the publisher keeps its
 * reference until the PENDING event is settled too. */
static void on_settle(void *owner, int ok, void *ctx)
{
  struct publisher *pub = ctx;
  pthread_mutex_lock(&pub->lock);
  settle_locked(pub, owner, ok);
  pthread_mutex_unlock(&pub->lock);
}

static void settle_locked(struct publisher *pub, void *owner, int ok)
{
  struct pub_req *r = owner;
  if((uintptr_t)owner & EVENT_BIT) {
    struct event_batch *b = (struct event_batch *)((uintptr_t)owner & ~EVENT_BIT);
    if(ok != CONFIRM_ACKED)
      log_event(CFG_LOG_WARN, "PENDING events not confirmed", "first_task_id",
                b->reqs[0]->task_id, NULL);
    for(size_t i = 0; i < b->n; i++)
      req_release(b->reqs[i]);
    free(b);
    return;
  }
  r->job_done = 1;
  /* Lost: the connection went between the publish and its confirm, so the broker may hold the
   * job; the request must not say "not sent". */
  r->result = ok == CONFIRM_ACKED ? PUB_OK : ok == CONFIRM_REFUSED ? PUB_REJECTED : PUB_UNKNOWN;
  if(r->abandoned && !r->event_only && pub->late_fn)
    pub->late_fn(r->task_id, r->result, pub->late_ctx);
  pub->in_flight--;
  sem_post(&r->done);
  if(ok != CONFIRM_ACKED || r->event_only) {
    req_release(r);
    return;
  }
  r->next_event = NULL;
  if(pub->events_tail)
    pub->events_tail->next_event = r;
  else
    pub->events_head = r;
  pub->events_tail = r;
}

static void wake(struct publisher *pub)
{
  uint64_t one = 1;
  /* A full eventfd counter already means "wake up", so a failed write loses nothing. */
  if(write(pub->wake_fd, &one, sizeof one) < 0)
    return;
}

static int build_req(struct pub_req *r, const struct publisher *pub, const struct job *job)
{
  struct status_event ev;
  status_pending_event(job, &ev);
  memcpy(r->task_id, job->task_id, UTIL_UUID_LEN);
  r->job_body = job_encode(job, &r->job_len);
  r->event_body = status_event_encode(&ev, &r->event_len);
  (void)pub;
  return r->job_body && r->event_body ? 0 : -1;
}

/* Hands n built requests to the publisher thread at once and waits (until one deadline) for
 * their confirms; results[i] gets request i's outcome. The requests are released. */
static void hand_over(struct publisher *pub, struct pub_req **reqs, size_t n,
                      enum pub_result *results, int timeout_ms)
{
  struct timespec deadline;
  int was_empty;
  size_t i;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += timeout_ms / 1000;
  deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if(deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&pub->lock);
  if(!pub->ready || pub->stopping) {
    pthread_mutex_unlock(&pub->lock);
    for(i = 0; i < n; i++) {
      results[i] = PUB_UNAVAILABLE;
      req_release(reqs[i]);
    }
    return;
  }
  was_empty = !pub->queue_head;
  for(i = 0; i < n; i++) {
    atomic_store(&reqs[i]->refs, 2); /* this worker and the publisher thread */
    reqs[i]->next = NULL;
    if(pub->queue_tail)
      pub->queue_tail->next = reqs[i];
    else
      pub->queue_head = reqs[i];
    pub->queue_tail = reqs[i];
  }
  pub->in_flight += n;
  pthread_mutex_unlock(&pub->lock);
  /* The publisher takes the whole queue at each turn, so a non-empty queue already has a
   * wake-up pending: one eventfd write per batch, not per request. */
  if(was_empty)
    wake(pub);

  for(i = 0; i < n; i++) {
    struct pub_req *r = reqs[i];
    int rc;
    while((rc = sem_timedwait(&r->done, &deadline)) && errno == EINTR)
      ;
    if(rc) {
      /* Timed out: decided under the lock, since the confirm may be settling right now. */
      pthread_mutex_lock(&pub->lock);
      results[i] = r->job_done ? r->result : PUB_TIMEOUT;
      r->abandoned = !r->job_done;
      pthread_mutex_unlock(&pub->lock);
    }
    else
      results[i] = r->result; /* written before the post */
    req_release(r);
  }
}

static enum pub_result submit_and_wait(struct publisher *pub, struct pub_req *r, int timeout_ms)
{
  enum pub_result res;
  hand_over(pub, &r, 1, &res, timeout_ms);
  return res;
}

static struct pub_req *req_new(void)
{
  struct pub_req *r = calloc(1, sizeof *r);
  if(!r)
    return NULL;
  sem_init(&r->done, 0, 0);
  atomic_init(&r->refs, 1);
  return r;
}

enum pub_result publisher_submit(struct publisher *pub, const struct job *job, int timeout_ms)
{
  struct pub_req *r = req_new();
  if(!r)
    return PUB_UNAVAILABLE;
  if(build_req(r, pub, job)) {
    req_release(r);
    return PUB_UNAVAILABLE;
  }
  return submit_and_wait(pub, r, timeout_ms);
}

void publisher_submit_many(struct publisher *pub, const struct job *const *jobs, size_t n,
                           enum pub_result *results, int timeout_ms)
{
  struct pub_req **reqs = calloc(n, sizeof *reqs);
  size_t i;
  for(i = 0; i < n; i++)
    results[i] = PUB_UNAVAILABLE;
  if(!reqs)
    return;
  for(i = 0; i < n; i++) {
    reqs[i] = req_new();
    if(!reqs[i] || build_req(reqs[i], pub, jobs[i]))
      break;
  }
  if(i == n)
    hand_over(pub, reqs, n, results, timeout_ms);
  else
    for(i = 0; i < n; i++)
      if(reqs[i])
        req_release(reqs[i]);
  free(reqs);
}

enum pub_result publisher_submit_event(struct publisher *pub, const struct status_event *ev,
                                       int timeout_ms)
{
  struct pub_req *r = req_new();
  if(!r)
    return PUB_UNAVAILABLE;
  memcpy(r->task_id, ev->task_id, UTIL_UUID_LEN);
  r->event_only = 1;
  r->event_body = status_event_encode(ev, &r->event_len);
  if(!r->event_body) {
    req_release(r);
    return PUB_UNAVAILABLE;
  }
  return submit_and_wait(pub, r, timeout_ms);
}

enum pub_result publisher_submit_callback(struct publisher *pub, const struct status_event *ev,
                                          const char *url, int timeout_ms)
{
  char id[STATUS_EVENT_ID_LEN];
  struct pub_req *r = req_new();
  if(!r)
    return PUB_UNAVAILABLE;
  memcpy(r->task_id, ev->task_id, UTIL_UUID_LEN);
  r->event_only = 1;
  r->event_body = status_callback_body(ev, id, &r->event_len);
  r->callback_url = strdup(url);
  r->callback_id = strdup(id);
  if(!r->event_body || !r->callback_url || !r->callback_id) {
    req_release(r);
    return PUB_UNAVAILABLE;
  }
  return submit_and_wait(pub, r, timeout_ms);
}

void publisher_on_late_outcome(struct publisher *pub,
                               void (*fn)(const char *task_id, enum pub_result result, void *ctx),
                               void *ctx)
{
  pthread_mutex_lock(&pub->lock);
  pub->late_fn = fn;
  pub->late_ctx = ctx;
  pthread_mutex_unlock(&pub->lock);
}

int publisher_ready(struct publisher *pub)
{
  int ready;
  pthread_mutex_lock(&pub->lock);
  ready = pub->ready && !pub->stopping;
  pthread_mutex_unlock(&pub->lock);
  return ready;
}

unsigned long long publisher_connects(struct publisher *pub)
{
  unsigned long long n;
  pthread_mutex_lock(&pub->lock);
  n = pub->connects;
  pthread_mutex_unlock(&pub->lock);
  return n;
}

size_t publisher_in_flight(struct publisher *pub)
{
  size_t n;
  pthread_mutex_lock(&pub->lock);
  n = pub->in_flight;
  pthread_mutex_unlock(&pub->lock);
  return n;
}

static void set_ready(struct publisher *pub, int ready)
{
  pthread_mutex_lock(&pub->lock);
  pub->ready = ready;
  pthread_mutex_unlock(&pub->lock);
}

/* Gives up the PENDING events not yet published (pub->lock held): other replicas then learn
 * of those tasks from their next event. */
static void release_events(struct publisher *pub)
{
  while(pub->events_head) {
    struct pub_req *r = pub->events_head;
    pub->events_head = r->next_event;
    req_release(r);
  }
  pub->events_tail = NULL;
}

static void drop_connection(struct publisher *pub, const char *why)
{
  log_event(CFG_LOG_WARN, "broker connection lost", "role", "publisher", "reason", why, NULL);
  set_ready(pub, 0);
  mq_session_lost(pub->session);
  pub->connected = 0;
  mq_publisher_lost(pub->publisher);
  pthread_mutex_lock(&pub->lock);
  release_events(pub);
  pthread_mutex_unlock(&pub->lock);
}

static int connect_broker(struct publisher *pub)
{
  char err[512];
  struct mq_session *s = pub->session;
  int rc;
  if(mq_session_open(s, CONNECT_TIMEOUT_MS, err, sizeof err)) {
    log_event(CFG_LOG_WARN, "cannot connect to the broker", "role", "publisher", "reason", err,
              NULL);
    return -1;
  }
  /* No lock: starting the publisher settles what was in flight, and on_settle takes it. */
  rc = mq_channel_open(s, SETUP_CH, err, sizeof err) ||
       mq_declare_topology(s, SETUP_CH, pub->cfg, err, sizeof err) ||
       /* Callbacks go to the dispatcher's queue: it must exist before the first one. */
       (pub->cfg->callbacks.secret[0] &&
        mq_declare_callback_topology(s, SETUP_CH, pub->cfg, err, sizeof err)) ||
       mq_publisher_start(pub->publisher, s, err, sizeof err);
  if(rc) {
    log_event(CFG_LOG_ERROR, "cannot set up the broker", "role", "publisher", "reason", err,
              NULL);
    mq_session_lost(pub->session);
    return -1;
  }
  pub->connected = 1;
  log_event(CFG_LOG_INFO, "connected to the broker", "role", "publisher", "broker",
            mq_session_address(pub->session), NULL);
  pthread_mutex_lock(&pub->lock);
  pub->connects++;
  pthread_mutex_unlock(&pub->lock);
  set_ready(pub, 1);
  return 0;
}

/* What every publish of msg-api carries; the caller adds the rest. */
static void props(const struct pub_req *r, struct mq_props *p, const char *type)
{
  memset(p, 0, sizeof *p);
  p->correlation_id = r->task_id;
  p->app_id = "msg-api";
  p->type = type;
}

/* Publishes a job (or an event or callback handed over alone). Returns MQ_PUBLISH_OK, or
 * MQ_PUBLISH_FAILED (tracked: settled as lost when the connection is dropped) or
 * MQ_PUBLISH_UNTRACKED (never sent). */
static int publish_job(struct publisher *pub, struct pub_req *r)
{
  struct mq_props p;
  if(r->event_only && r->callback_url) {
    struct mq_header h[1];
    h[0] = mq_header_str("x-callback-url", r->callback_url);
    props(r, &p, "message.callback");
    p.message_id = r->callback_id;
    p.headers = h;
    p.n_headers = 1;
    /* mandatory: without the dispatcher's queue the callback would be dropped silently. */
    return mq_publisher_publish(pub->publisher, pub->session, "",
                                pub->cfg->topology.callback_queue, 1, &p, r->event_body,
                                r->event_len, r);
  }
  if(r->event_only) {
    props(r, &p, "message.status");
    return mq_publisher_publish(pub->publisher, pub->session, "",
                                pub->cfg->topology.status_stream, 0, &p, r->event_body,
                                r->event_len, r);
  }
  props(r, &p, "message.send");
  p.message_id = r->task_id;
  p.reply_to = pub->cfg->topology.status_stream;
  /* mandatory: a job that no queue takes comes back as basic.return and fails the request. */
  return mq_publisher_publish(pub->publisher, pub->session, pub->cfg->topology.exchange,
                              MQ_KEY_SEND, 1, &p, r->job_body, r->job_len, r);
}

/* Publishes the PENDING events of the jobs confirmed so far, many to a stream message. Returns
 * 0, or -1 when the connection failed (then every request still waiting for an event has been
 * released). */
static int publish_events(struct publisher *pub)
{
  for(;;) {
    struct mq_props p;
    struct event_batch *b = malloc(sizeof *b);
    char *bodies[EVENTS_PER_BATCH], *joined;
    size_t lens[EVENTS_PER_BATCH], len;
    int rc;
    if(!b)
      return 0; /* out of memory: the events wait for the next turn */
    b->n = 0;
    pthread_mutex_lock(&pub->lock);
    while(pub->events_head && b->n < EVENTS_PER_BATCH) {
      struct pub_req *r = pub->events_head;
      pub->events_head = r->next_event;
      bodies[b->n] = r->event_body;
      lens[b->n] = r->event_len;
      b->reqs[b->n++] = r;
    }
    if(!pub->events_head)
      pub->events_tail = NULL;
    pthread_mutex_unlock(&pub->lock);
    if(!b->n) {
      free(b);
      return 0;
    }
    joined = b->n == 1 ? NULL : status_batch_join(bodies, lens, b->n, &len);
    if(b->n > 1 && !joined) {
      /* Out of memory: other replicas learn of these tasks from their next event. */
      pthread_mutex_lock(&pub->lock);
      for(size_t i = 0; i < b->n; i++)
        req_release(b->reqs[i]);
      pthread_mutex_unlock(&pub->lock);
      free(b);
      continue;
    }
    props(b->reqs[0], &p, "message.status");
    if(b->n > 1)
      p.correlation_id = NULL; /* a batch is about many tasks */
    rc = mq_publisher_publish(pub->publisher, pub->session, "", pub->cfg->topology.status_stream, 0,
                              &p, joined ? joined : bodies[0], joined ? len : lens[0],
                              (void *)((uintptr_t)b | EVENT_BIT));
    free(joined);
    if(rc == MQ_PUBLISH_UNTRACKED) {
      pthread_mutex_lock(&pub->lock);
      for(size_t i = 0; i < b->n; i++)
        req_release(b->reqs[i]);
      pthread_mutex_unlock(&pub->lock);
      free(b);
    }
    if(rc != MQ_PUBLISH_OK) {
      drop_connection(pub, "a publish failed");
      return -1;
    }
  }
}

/* Matches a basic.return (by message_id) to the publish it belongs to: a job's message id is
 * its task id, a callback's its event id. Event batches are never mandatory. */
static int is_publish_of(void *owner, void *message_id)
{
  const struct pub_req *r = owner;
  if((uintptr_t)owner & EVENT_BIT)
    return 0;
  if(r->callback_id)
    return !strcmp(r->callback_id, message_id);
  return !r->event_only && !strcmp(r->task_id, message_id);
}

static int on_returned(void *ctx, uint16_t ch, struct mq_message *m)
{
  struct publisher *pub = ctx;
  char id[STATUS_EVENT_ID_LEN] = "", type[32] = "";
  (void)ch;
  mq_message_prop(m, MQ_PROP_MESSAGE_ID, id, sizeof id);
  mq_message_prop(m, MQ_PROP_TYPE, type, sizeof type);
  if(!strcmp(type, "message.callback"))
    log_event(CFG_LOG_ERROR, "status callback returned unroutable: is the callback queue there?",
              "event_id", id, NULL);
  else
    log_event(CFG_LOG_ERROR, "job returned unroutable: is the job queue bound?", "task_id", id,
              NULL);
  mq_publisher_mark_returned(pub->publisher, is_publish_of, id);
  return 0;
}

static void on_blocked(void *ctx, int blocked)
{
  struct publisher *pub = ctx;
  if(blocked)
    log_event(CFG_LOG_WARN, "broker blocked publishing (memory or disk alarm)", NULL);
  else
    log_event(CFG_LOG_INFO, "broker unblocked publishing", NULL);
  set_ready(pub, !blocked);
}

/* Reads every frame available without blocking. Returns 0, or -1 when the connection is gone. */
static int drain_frames(struct publisher *pub)
{
  struct mq_handlers h;
  char why[512];
  unsigned long long reopens = mq_publisher_reopens(pub->publisher);
  memset(&h, 0, sizeof h);
  h.ctx = pub;
  h.publishers[0] = pub->publisher;
  h.returned = on_returned;
  h.blocked = on_blocked;
  if(mq_pump(pub->session, &h, why, sizeof why)) {
    drop_connection(pub, why);
    return -1;
  }
  if(mq_publisher_reopens(pub->publisher) != reopens)
    log_event(CFG_LOG_WARN, "the broker kept nacking publishes: publishing on a fresh channel",
              "broker", mq_session_address(pub->session), NULL);
  return 0;
}

/* Fails requests that were never published: their workers answer 503 at once. */
static void fail_list(struct publisher *pub, struct pub_req *list)
{
  pthread_mutex_lock(&pub->lock);
  while(list) {
    struct pub_req *r = list;
    list = r->next;
    r->job_done = 1;
    r->result = PUB_UNAVAILABLE;
    pub->in_flight--;
    sem_post(&r->done);
    req_release(r);
  }
  pthread_mutex_unlock(&pub->lock);
}

static void fail_queue(struct publisher *pub)
{
  struct pub_req *list;
  pthread_mutex_lock(&pub->lock);
  list = pub->queue_head;
  pub->queue_head = pub->queue_tail = NULL;
  pthread_mutex_unlock(&pub->lock);
  fail_list(pub, list);
}

static void *publisher_main(void *arg)
{
  struct publisher *pub = arg;
  int64_t drain_deadline = 0, retry_at = 0;
  int hb_wait = pub->cfg->broker.heartbeat_ms ? (int)(pub->cfg->broker.heartbeat_ms / 2) : 1000;
  if(hb_wait > 1000)
    hb_wait = 1000;
  for(;;) {
    struct pub_req *batch;
    struct pollfd pfd[2];
    int stopping, timeout;
    uint64_t drained;

    pthread_mutex_lock(&pub->lock);
    stopping = pub->stopping;
    batch = pub->queue_head;
    pub->queue_head = pub->queue_tail = NULL;
    pthread_mutex_unlock(&pub->lock);

    if(stopping && !drain_deadline)
      drain_deadline = util_mono_ms() + pub->drain_ms;

    if(!pub->connected) {
      int64_t now = util_mono_ms();
      /* Requests handed over while disconnected cannot wait for a reconnect. */
      fail_list(pub, batch);
      if(stopping)
        break;
      if(now >= retry_at && connect_broker(pub))
        retry_at = now + mq_session_retry_delay_ms(pub->session);
      if(!pub->connected) {
        struct pollfd w = {pub->wake_fd, POLLIN, 0};
        int wait = (int)(retry_at - util_mono_ms());
        poll(&w, 1, wait < 0 ? 0 : wait); /* a stop request cuts the wait short */
        if(read(pub->wake_fd, &drained, sizeof drained) < 0)
          drained = 0;
      }
      continue;
    }

    while(batch) {
      struct pub_req *r = batch;
      int rc;
      batch = r->next;
      r->next = NULL;
      rc = publish_job(pub, r);
      if(rc != MQ_PUBLISH_OK) {
        if(rc == MQ_PUBLISH_UNTRACKED) {
          r->next = batch;
          batch = r;
        }
        drop_connection(pub, "a publish failed");
        fail_list(pub, batch);
        batch = NULL;
        retry_at = 0; /* the next address at once */
      }
    }
    if(!pub->connected)
      continue;
    if(drain_frames(pub) || publish_events(pub)) {
      retry_at = 0;
      continue;
    }

    if(stopping) {
      size_t left;
      pthread_mutex_lock(&pub->lock);
      left = mq_publisher_outstanding(pub->publisher) + (pub->queue_head != NULL) +
             (pub->events_head != NULL);
      pthread_mutex_unlock(&pub->lock);
      if(!left || util_mono_ms() >= drain_deadline)
        break;
    }

    timeout = mq_session_pending_input(pub->session) ? 0 : hb_wait;
    pfd[0].fd = mq_session_fd(pub->session);
    pfd[0].events = POLLIN;
    pfd[1].fd = pub->wake_fd;
    pfd[1].events = POLLIN;
    if(stopping && timeout > 50)
      timeout = 50;
    if(poll(pfd, 2, timeout) > 0 && (pfd[1].revents & POLLIN))
      if(read(pub->wake_fd, &drained, sizeof drained) < 0)
        drained = 0;
  }
  mq_session_close(pub->session);
  pub->connected = 0;
  set_ready(pub, 0);
  mq_publisher_lost(pub->publisher);
  pthread_mutex_lock(&pub->lock);
  release_events(pub);
  pthread_mutex_unlock(&pub->lock);
  fail_queue(pub);
  return NULL;
}

struct publisher *publisher_start(const struct cfg *cfg, char *err, size_t errlen)
{
  struct publisher *pub = calloc(1, sizeof *pub);
  if(!pub) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  pub->cfg = cfg;
  pub->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  pub->session = mq_session_new(cfg, "api");
  pub->publisher = mq_publisher_new(PUBLISH_CH_A, PUBLISH_CH_B, on_settle, pub);
  pthread_mutex_init(&pub->lock, NULL);
  if(pub->wake_fd < 0 || !pub->session || !pub->publisher) {
    snprintf(err, errlen, "cannot set up the publisher: %s", strerror(errno));
    goto fail;
  }
  if(pthread_create(&pub->thread, NULL, publisher_main, pub)) {
    snprintf(err, errlen, "cannot start the publisher thread");
    goto fail;
  }
  return pub;
fail:
  if(pub->wake_fd >= 0)
    close(pub->wake_fd);
  mq_publisher_free(pub->publisher);
  mq_session_free(pub->session);
  pthread_mutex_destroy(&pub->lock);
  free(pub);
  return NULL;
}

void publisher_stop(struct publisher *pub, int drain_ms)
{
  if(!pub)
    return;
  pthread_mutex_lock(&pub->lock);
  pub->stopping = 1;
  pub->drain_ms = drain_ms;
  pthread_mutex_unlock(&pub->lock);
  wake(pub);
  pthread_join(pub->thread, NULL);
  close(pub->wake_fd);
  mq_publisher_free(pub->publisher);
  mq_session_free(pub->session);
  pthread_mutex_destroy(&pub->lock);
  free(pub);
}
