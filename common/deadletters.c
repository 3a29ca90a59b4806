/* Parked jobs (the dead queue): reading them without removing them, and moving them back to
 * delivery ("redrive"), on a short-lived AMQP connection of the calling thread. */
#include "deadletters.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "job.h"
#include "log.h"
#include "mq.h"
#include "status.h"
#include "util.h"

/* Parked jobs are read on channel 1; redriven ones are published on 2 (3 if 2 is replaced). */
#define CHANNEL 1
#define PUBLISH_CH_A 2
#define PUBLISH_CH_B 3
#define TIMEOUT_MS 5000

/* Opens the connection and channel, and reads the dead queue's depth. Returns the session
 * (caller frees with close_all), or NULL with the reason in err. */
static struct mq_session *open_dead(const struct cfg *cfg, uint32_t *depth, char *err,
                                    size_t errlen)
{
  struct mq_session *s = mq_session_new(cfg, "admin");
  if(!s) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if(mq_session_open_any(s, TIMEOUT_MS, err, errlen) ||
     mq_channel_open(s, CHANNEL, err, errlen) ||
     mq_queue_depth(s, CHANNEL, cfg->topology.dead_letter_queue, depth, err, errlen)) {
    mq_session_free(s);
    return NULL;
  }
  return s;
}

/* The confirmed publishing of a redrive: one publish at a time, waited for. */
struct redrive_pub {
  struct mq_session *session;
  struct mq_publisher *pub;
  int outcome; /* of the last publish: CONFIRM_* */
};

static void on_settle(void *owner, int ok, void *ctx)
{
  (void)owner;
  ((struct redrive_pub *)ctx)->outcome = ok;
}

static int match_any(void *owner, void *arg)
{
  (void)owner;
  (void)arg;
  return 1;
}

static int on_returned(void *ctx, uint16_t ch, struct mq_message *m)
{
  struct redrive_pub *rp = ctx;
  (void)ch;
  (void)m;
  /* One publish in flight at a time: the return is that one's. */
  mq_publisher_mark_returned(rp->pub, match_any, NULL);
  return 0;
}

/* Publishes and waits for the confirm: 0 when the broker took it, -1 otherwise. */
static int publish_confirmed(struct redrive_pub *rp, const char *exchange, const char *key,
                             int mandatory, const struct mq_props *p, const char *body,
                             size_t len)
{
  struct mq_handlers h;
  char why[256];
  memset(&h, 0, sizeof h);
  h.ctx = rp;
  h.publishers[0] = rp->pub;
  h.returned = on_returned;
  rp->outcome = CONFIRM_LOST;
  if(mq_publisher_publish(rp->pub, rp->session, exchange, key, mandatory, p, body, len, rp) !=
       MQ_PUBLISH_OK ||
     mq_publisher_wait(rp->pub, rp->session, &h, TIMEOUT_MS, why, sizeof why))
    return -1;
  return rp->outcome == CONFIRM_ACKED ? 0 : -1;
}

static void close_all(struct mq_session *s)
{
  /* Closing the channel hands every job read but not acked back to the queue. */
  mq_channel_close(s, CHANNEL);
  mq_session_close(s);
  mq_session_free(s);
}

/* The peek of one parked job. */
static json_t *describe(const struct mq_message *m)
{
  char reason[64], last[512], code[64], failed[40], job_err[128];
  struct job *job = NULL;
  int64_t attempts = 0;
  size_t len;
  const void *body = mq_message_body(m, &len);
  json_t *doc;
  mq_message_header_str(m, "x-failure-reason", reason, sizeof reason);
  mq_message_header_str(m, "x-last-error", last, sizeof last);
  mq_message_header_str(m, "x-error-code", code, sizeof code);
  mq_message_header_str(m, "x-failed-at", failed, sizeof failed);
  mq_message_header_int(m, "x-attempts", &attempts);
  job_decode(body, len, &job, job_err, sizeof job_err);
  doc = json_pack("{s:s?, s:s, s:s, s:s, s:s, s:I, s:s?, s:s?}", "task_id",
                  job ? job->task_id : NULL, "reason", reason, "error_code", code, "last_error",
                  last, "failed_at", failed, "attempts", (json_int_t)attempts, "instance_name",
                  job ? job->instance_name : NULL, "malformed", job ? NULL : job_err);
  job_free(job);
  return doc;
}

json_t *dead_peek(const struct cfg *cfg, size_t limit, char *err, size_t errlen)
{
  uint32_t depth = 0;
  struct mq_session *s = open_dead(cfg, &depth, err, errlen);
  json_t *list, *out;
  if(!s)
    return NULL;
  list = json_array();
  for(size_t i = 0; list && i < limit && i < depth; i++) {
    struct mq_message *m;
    uint64_t tag;
    if(mq_get(s, CHANNEL, cfg->topology.dead_letter_queue, &m, &tag) <= 0)
      break;
    json_array_append_new(list, describe(m));
    mq_message_free(m);
  }
  close_all(s);
  out = list ? json_pack("{s:I, s:o}", "count", (json_int_t)depth, "messages", list) : NULL;
  if(!out)
    snprintf(err, errlen, "out of memory");
  return out;
}

static int wanted(const struct redrive_filter *f, const char *reason, const struct job *job)
{
  if(f->reason && strcmp(f->reason, reason))
    return 0;
  if(f->instance && strcmp(f->instance, job->instance_name))
    return 0;
  if(f->n_task_ids) {
    for(size_t i = 0; i < f->n_task_ids; i++)
      if(!strcmp(f->task_ids[i], job->task_id))
        return 1;
    return 0;
  }
  return 1;
}

/* Publishes the job back to the job queue and its PENDING event, each confirmed. */
static int move_back(struct redrive_pub *rp, const struct cfg *cfg, struct job *job)
{
  struct mq_props p;
  struct mq_header h[1];
  struct status_event ev;
  size_t len;
  char *body;
  int rc;
  job->generation++;
  job->send_at_ms = 0; /* its time has come and gone: send now */
  body = job_encode(job, &len);
  if(!body)
    return -1;
  memset(&p, 0, sizeof p);
  p.message_id = job->task_id;
  p.correlation_id = job->task_id;
  p.reply_to = cfg->topology.status_stream;
  p.app_id = "msg-api";
  p.type = "message.send";
  /* A fresh attempt count; no x-death or failure headers travel back. */
  h[0] = mq_header_int("x-attempt", 1);
  p.headers = h;
  p.n_headers = 1;
  rc = publish_confirmed(rp, cfg->topology.exchange, MQ_KEY_SEND, 1, &p, body, len);
  free(body);
  if(rc)
    return -1;
  status_pending_event(job, &ev);
  ev.at_ms = util_now_ms();
  body = status_event_encode(&ev, &len);
  if(!body)
    return -1;
  memset(&p, 0, sizeof p);
  p.correlation_id = job->task_id;
  p.app_id = "msg-api";
  p.type = "message.status";
  /* The job is already back in delivery; a lost PENDING event only delays the status. */
  publish_confirmed(rp, "", cfg->topology.status_stream, 0, &p, body, len);
  free(body);
  return 0;
}

/* Why a redrive must end now: "stopping", "deadline", or NULL to go on. */
static const char *ended(const struct redrive_filter *f)
{
  if(f->stop && atomic_load(f->stop))
    return "stopping";
  if(f->deadline_ms && util_mono_ms() >= f->deadline_ms)
    return "deadline";
  return NULL;
}

static void pause_until(const struct redrive_filter *f, int64_t until_ms)
{
  for(;;) {
    int64_t now = util_mono_ms(), left = until_ms - now;
    struct timespec ts = {0, 0};
    if(left <= 0 || ended(f))
      return;
    ts.tv_nsec = (long)(left < 50 ? left : 50) * 1000000L;
    nanosleep(&ts, NULL);
  }
}

json_t *dead_redrive(const struct cfg *cfg, const struct redrive_filter *f, char *err,
                     size_t errlen)
{
  uint32_t depth = 0, scanned = 0;
  struct mq_session *s = open_dead(cfg, &depth, err, errlen);
  struct redrive_pub rp;
  json_t *ids, *out;
  size_t moved = 0;
  const char *stopped = NULL;
  if(!s)
    return NULL;
  err[0] = '\0';
  rp.session = s;
  rp.pub = mq_publisher_new(PUBLISH_CH_A, PUBLISH_CH_B, on_settle, &rp);
  if(!rp.pub || mq_publisher_start(rp.pub, s, err, errlen)) {
    if(rp.pub)
      mq_publisher_free(rp.pub);
    else
      snprintf(err, errlen, "out of memory");
    mq_session_free(s);
    return NULL;
  }
  ids = json_array();
  /* Each parked job is looked at once: those not taken stay unacked until the channel closes,
   * so the scan never meets them again. */
  while(ids && scanned < depth && moved < f->max) {
    struct mq_message *m;
    uint64_t tag;
    char reason[64], why[128];
    struct job *job = NULL;
    const void *body;
    size_t len;
    int rc = mq_get(s, CHANNEL, cfg->topology.dead_letter_queue, &m, &tag);
    if(rc < 0) {
      snprintf(err, errlen, "the broker connection failed during the redrive");
      break;
    }
    if(rc == 0)
      break;
    scanned++;
    mq_message_header_str(m, "x-failure-reason", reason, sizeof reason);
    body = mq_message_body(m, &len);
    if(!job_decode(body, len, &job, why, sizeof why) && wanted(f, reason, job)) {
      if(move_back(&rp, cfg, job)) {
        snprintf(err, errlen, "the broker did not confirm a redriven job; it stays parked");
        job_free(job);
        mq_message_free(m);
        break;
      }
      /* Only now, with the job back in delivery, does the parked copy go. */
      mq_ack(s, CHANNEL, tag, 0);
      json_array_append_new(ids, json_string(job->task_id));
      log_event(CFG_LOG_INFO, "parked job redriven", "task_id", job->task_id, "reason", reason,
                NULL);
      moved++;
      /* The pause comes between moves (none after the last), in slices so a stop or the
       * deadline ends it at once. */
      if(f->rate > 0 && moved < f->max)
        pause_until(f, util_mono_ms() + (int64_t)(1000.0 / f->rate));
    }
    job_free(job);
    mq_message_free(m);
    if(moved < f->max && (stopped = ended(f)))
      break;
  }
  close_all(s);
  mq_publisher_lost(rp.pub);
  mq_publisher_free(rp.pub);
  out = ids ? json_pack("{s:I, s:I, s:o}", "moved", (json_int_t)moved, "scanned",
                        (json_int_t)scanned, "task_ids", ids)
            : NULL;
  if(!out)
    snprintf(err, errlen, "out of memory");
  else if(err[0])
    json_object_set_new(out, "error", json_string(err)); /* what stopped it part-way */
  if(out && stopped)
    json_object_set_new(out, "stopped", json_string(stopped));
  return out;
}
