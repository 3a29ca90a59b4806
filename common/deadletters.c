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

/* A header's string value, copied into buf ("" when absent or not a string). */
static const char *header_str(const amqp_basic_properties_t *p, const char *key, char *buf,
                              size_t len)
{
  const amqp_field_value_t *v;
  buf[0] = '\0';
  if(!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
    return buf;
  v = mq_table_get(&p->headers, key);
  if(v && (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES))
    snprintf(buf, len, "%.*s", (int)v->value.bytes.len, (const char *)v->value.bytes.bytes);
  return buf;
}

/* Opens the connection and channel, and reads the dead queue's depth. */
static amqp_connection_state_t open_dead(const struct cfg *cfg, uint32_t *depth, char *err,
                                         size_t errlen)
{
  amqp_connection_state_t conn = mq_connect(cfg, "admin", TIMEOUT_MS, err, errlen);
  amqp_queue_declare_ok_t *ok;
  if(!conn)
    return NULL;
  if(mq_channel_open(conn, CHANNEL, err, errlen))
    goto fail;
  ok = amqp_queue_declare(conn, CHANNEL, amqp_cstring_bytes(cfg->topology.dead_letter_queue), 1,
                          0, 0, 0, amqp_empty_table);
  if(!ok) {
    char why[256];
    snprintf(err, errlen, "cannot read the dead queue: %s",
             mq_reply_text(amqp_get_rpc_reply(conn), why, sizeof why));
    goto fail;
  }
  *depth = ok->message_count;
  return conn;
fail:
  amqp_destroy_connection(conn);
  return NULL;
}

/* Takes the next parked job (unacked until acked or the channel closes). Returns 1 with
 * *msg filled (caller destroys it), 0 when the queue is empty, -1 on error. */
static int get_one(amqp_connection_state_t conn, const struct cfg *cfg, amqp_message_t *msg,
                   uint64_t *tag)
{
  amqp_rpc_reply_t r = amqp_basic_get(conn, CHANNEL,
                                      amqp_cstring_bytes(cfg->topology.dead_letter_queue), 0);
  if(r.reply_type != AMQP_RESPONSE_NORMAL)
    return -1;
  if(r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
    return 0;
  *tag = ((amqp_basic_get_ok_t *)r.reply.decoded)->delivery_tag;
  memset(msg, 0, sizeof *msg);
  return amqp_read_message(conn, CHANNEL, msg, 0).reply_type == AMQP_RESPONSE_NORMAL ? 1 : -1;
}

/* The confirmed publishing of a redrive: one publish at a time, waited for. */
struct redrive_pub {
  amqp_connection_state_t conn;
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

static int on_returned(void *ctx, amqp_channel_t ch, amqp_message_t *m)
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
                             int mandatory, const amqp_basic_properties_t *p, const char *body,
                             size_t len)
{
  struct mq_handlers h;
  char why[256];
  memset(&h, 0, sizeof h);
  h.ctx = rp;
  h.publishers[0] = rp->pub;
  h.returned = on_returned;
  rp->outcome = CONFIRM_LOST;
  if(mq_publisher_publish(rp->pub, rp->conn, exchange, key, mandatory, p, body, len, rp) !=
       MQ_PUBLISH_OK ||
     mq_publisher_wait(rp->pub, rp->conn, &h, TIMEOUT_MS, why, sizeof why))
    return -1;
  return rp->outcome == CONFIRM_ACKED ? 0 : -1;
}

static void close_all(amqp_connection_state_t conn)
{
  /* Closing the channel hands every job read but not acked back to the queue. */
  amqp_channel_close(conn, CHANNEL, AMQP_REPLY_SUCCESS);
  mq_close(conn);
}

json_t *dead_peek(const struct cfg *cfg, size_t limit, char *err, size_t errlen)
{
  uint32_t depth = 0;
  amqp_connection_state_t conn = open_dead(cfg, &depth, err, errlen);
  json_t *list, *out;
  if(!conn)
    return NULL;
  list = json_array();
  for(size_t i = 0; list && i < limit && i < depth; i++) {
    amqp_message_t m;
    uint64_t tag;
    char reason[64], last[512], code[64], failed[40], job_err[128];
    struct job *job = NULL;
    int64_t attempts = 0;
    int rc = get_one(conn, cfg, &m, &tag);
    if(rc <= 0)
      break;
    header_str(&m.properties, "x-failure-reason", reason, sizeof reason);
    header_str(&m.properties, "x-last-error", last, sizeof last);
    header_str(&m.properties, "x-error-code", code, sizeof code);
    header_str(&m.properties, "x-failed-at", failed, sizeof failed);
    if(m.properties._flags & AMQP_BASIC_HEADERS_FLAG)
      mq_table_get_int(&m.properties.headers, "x-attempts", &attempts);
    job_decode(m.body.bytes, m.body.len, &job, job_err, sizeof job_err);
    json_array_append_new(
      list, json_pack("{s:s?, s:s, s:s, s:s, s:s, s:I, s:s?, s:s?}", "task_id",
                      job ? job->task_id : NULL, "reason", reason, "error_code", code,
                      "last_error", last, "failed_at", failed, "attempts", (json_int_t)attempts,
                      "instance_name", job ? job->instance_name : NULL, "malformed",
                      job ? NULL : job_err));
    job_free(job);
    amqp_destroy_message(&m);
  }
  close_all(conn);
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
  amqp_basic_properties_t p;
  amqp_table_entry_t h[1];
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
  p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
             AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
             AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_APP_ID_FLAG |
             AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_HEADERS_FLAG;
  p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
  p.content_type = amqp_cstring_bytes("application/json");
  p.message_id = amqp_cstring_bytes(job->task_id);
  p.correlation_id = amqp_cstring_bytes(job->task_id);
  p.reply_to = amqp_cstring_bytes(cfg->topology.status_stream);
  p.timestamp = (uint64_t)(util_now_ms() / 1000);
  p.app_id = amqp_cstring_bytes("msg-api");
  p.type = amqp_cstring_bytes("message.send");
  /* A fresh attempt count; no x-death or failure headers travel back. */
  h[0] = mq_entry_i64("x-attempt", 1);
  p.headers.num_entries = 1;
  p.headers.entries = h;
  rc = publish_confirmed(rp, cfg->topology.exchange, MQ_KEY_SEND, 1, &p, body, len);
  free(body);
  if(rc)
    return -1;
  status_pending_event(job, &ev);
  ev.at_ms = util_now_ms();
  body = status_event_encode(&ev, &len);
  if(!body)
    return -1;
  p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
             AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
             AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_TYPE_FLAG;
  p.type = amqp_cstring_bytes("message.status");
  /* The job is already back in delivery; a lost PENDING event only delays the status. */
  publish_confirmed(rp, "", cfg->topology.status_stream, 0, &p, body, len);
  free(body);
  return 0;
}

json_t *dead_redrive(const struct cfg *cfg, const struct redrive_filter *f, char *err,
                     size_t errlen)
{
  uint32_t depth = 0, scanned = 0;
  amqp_connection_state_t conn = open_dead(cfg, &depth, err, errlen);
  struct redrive_pub rp;
  json_t *ids, *out;
  size_t moved = 0;
  if(!conn)
    return NULL;
  err[0] = '\0';
  rp.conn = conn;
  rp.pub = mq_publisher_new(PUBLISH_CH_A, PUBLISH_CH_B, on_settle, &rp);
  if(!rp.pub || mq_publisher_start(rp.pub, conn, err, errlen)) {
    if(rp.pub)
      mq_publisher_free(rp.pub);
    else
      snprintf(err, errlen, "out of memory");
    amqp_destroy_connection(conn);
    return NULL;
  }
  ids = json_array();
  /* Each parked job is looked at once: those not taken stay unacked until the channel closes,
   * so the scan never meets them again. */
  while(ids && scanned < depth && moved < f->max) {
    amqp_message_t m;
    uint64_t tag;
    char reason[64], why[128];
    struct job *job = NULL;
    int rc = get_one(conn, cfg, &m, &tag);
    if(rc < 0) {
      snprintf(err, errlen, "the broker connection failed during the redrive");
      break;
    }
    if(rc == 0)
      break;
    scanned++;
    header_str(&m.properties, "x-failure-reason", reason, sizeof reason);
    if(!job_decode(m.body.bytes, m.body.len, &job, why, sizeof why) && wanted(f, reason, job)) {
      if(move_back(&rp, cfg, job)) {
        snprintf(err, errlen, "the broker did not confirm a redriven job; it stays parked");
        job_free(job);
        amqp_destroy_message(&m);
        break;
      }
      /* Only now, with the job back in delivery, does the parked copy go. */
      amqp_basic_ack(conn, CHANNEL, tag, 0);
      json_array_append_new(ids, json_string(job->task_id));
      log_event(CFG_LOG_INFO, "parked job redriven", "task_id", job->task_id, "reason", reason,
                NULL);
      moved++;
      if(f->rate > 0) {
        double secs = 1.0 / f->rate;
        struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
        nanosleep(&ts, NULL);
      }
    }
    job_free(job);
    amqp_destroy_message(&m);
  }
  close_all(conn);
  mq_publisher_lost(rp.pub);
  mq_publisher_free(rp.pub);
  out = ids ? json_pack("{s:I, s:I, s:o}", "moved", (json_int_t)moved, "scanned",
                        (json_int_t)scanned, "task_ids", ids)
            : NULL;
  if(!out)
    snprintf(err, errlen, "out of memory");
  else if(err[0])
    json_object_set_new(out, "error", json_string(err)); /* what stopped it part-way */
  return out;
}
