/* AMQP helpers over rabbitmq-c: connect with a connection name, declare the topology of
 * DESIGN §3, read header tables. The caller's thread owns the connection it gets. */
#include "mq.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

amqp_table_entry_t mq_entry_str(const char *key, const char *value)
{
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = amqp_cstring_bytes(value);
  return e;
}

amqp_table_entry_t mq_entry_i64(const char *key, int64_t value)
{
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_I64;
  e.value.value.i64 = value;
  return e;
}

amqp_table_entry_t mq_entry_bool(const char *key, int value)
{
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
  e.value.value.boolean = value;
  return e;
}

char *mq_reply_text(amqp_rpc_reply_t reply, char *buf, size_t len)
{
  switch(reply.reply_type) {
  case AMQP_RESPONSE_NORMAL: snprintf(buf, len, "ok"); break;
  case AMQP_RESPONSE_NONE: snprintf(buf, len, "missing RPC reply"); break;
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    snprintf(buf, len, "%s", amqp_error_string2(reply.library_error));
    break;
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if(reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      amqp_connection_close_t *c = reply.reply.decoded;
      snprintf(buf, len, "connection closed by broker: %u %.*s", c->reply_code,
               (int)c->reply_text.len, (const char *)c->reply_text.bytes);
    }
    else if(reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      amqp_channel_close_t *c = reply.reply.decoded;
      snprintf(buf, len, "channel closed by broker: %u %.*s", c->reply_code,
               (int)c->reply_text.len, (const char *)c->reply_text.bytes);
    }
    else
      snprintf(buf, len, "unexpected broker method 0x%08x", reply.reply.id);
    break;
  }
  return buf;
}

amqp_connection_state_t mq_connect(const struct cfg *cfg, const char *role, int timeout_ms,
                                   char *err, size_t errlen)
{
  struct amqp_connection_info info;
  char *url = strdup(cfg->broker.url);
  amqp_connection_state_t conn = NULL;
  amqp_socket_t *sock;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  char host[256] = "unknown", name[512], why[256];
  int rc;
  if(!url) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  /* amqp_parse_url decodes in place and points into url, so url lives until the end. */
  amqp_default_connection_info(&info);
  if(amqp_parse_url(url, &info) != AMQP_STATUS_OK) {
    snprintf(err, errlen, "broker.url is not an AMQP URL");
    goto fail;
  }
  conn = amqp_new_connection();
  if(!conn) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if(info.ssl) {
    sock = amqp_ssl_socket_new(conn);
    if(!sock) {
      snprintf(err, errlen, "cannot create a TLS socket");
      goto fail;
    }
    if(cfg->broker.tls.ca_file[0] &&
       amqp_ssl_socket_set_cacert(sock, cfg->broker.tls.ca_file) != AMQP_STATUS_OK) {
      snprintf(err, errlen, "cannot load broker.tls.ca_file %s", cfg->broker.tls.ca_file);
      goto fail;
    }
    if(cfg->broker.tls.cert_file[0] &&
       amqp_ssl_socket_set_key(sock, cfg->broker.tls.cert_file, cfg->broker.tls.key_file) !=
         AMQP_STATUS_OK) {
      snprintf(err, errlen, "cannot load broker.tls.cert_file/key_file");
      goto fail;
    }
    amqp_ssl_socket_set_verify_peer(sock, cfg->broker.tls.verify_peer);
    amqp_ssl_socket_set_verify_hostname(sock, cfg->broker.tls.verify_peer);
  }
  else {
    sock = amqp_tcp_socket_new(conn);
    if(!sock) {
      snprintf(err, errlen, "cannot create a socket");
      goto fail;
    }
  }
  rc = amqp_socket_open_noblock(sock, info.host, info.port, &tv);
  if(rc != AMQP_STATUS_OK) {
    snprintf(err, errlen, "cannot connect to %s:%d: %s", info.host, info.port,
             amqp_error_string2(rc));
    goto fail;
  }
  amqp_set_handshake_timeout(conn, &tv);
  /* Without an RPC timeout a declare or close against a dead peer can block forever. */
  amqp_set_rpc_timeout(conn, &tv);
  gethostname(host, sizeof host - 1);
  snprintf(name, sizeof name, "%s-%s@%s", cfg->broker.connection_name, role, host);
  {
    amqp_table_entry_t caps[2] = {mq_entry_bool("connection.blocked", 1),
                                  mq_entry_bool("consumer_cancel_notify", 1)};
    amqp_table_entry_t props[2];
    amqp_table_t table;
    amqp_rpc_reply_t r;
    /* connection_name belongs at the top level of the client properties, not in the
     * capabilities table: that is where the broker reads it. */
    props[0] = mq_entry_str("connection_name", name);
    props[1].key = amqp_cstring_bytes("capabilities");
    props[1].value.kind = AMQP_FIELD_KIND_TABLE;
    props[1].value.value.table.num_entries = 2;
    props[1].value.value.table.entries = caps;
    table.num_entries = 2;
    table.entries = props;
    r = amqp_login_with_properties(conn, info.vhost, 0, AMQP_DEFAULT_FRAME_SIZE,
                                   (int)(cfg->broker.heartbeat_ms / 1000), &table,
                                   AMQP_SASL_METHOD_PLAIN, info.user, info.password);
    if(r.reply_type != AMQP_RESPONSE_NORMAL) {
      snprintf(err, errlen, "login to %s:%d as %s failed: %s", info.host, info.port, info.user,
               mq_reply_text(r, why, sizeof why));
      goto fail;
    }
  }
  free(url);
  return conn;
fail:
  if(conn)
    amqp_destroy_connection(conn);
  free(url);
  return NULL;
}

int mq_channel_open(amqp_connection_state_t conn, amqp_channel_t channel, char *err,
                    size_t errlen)
{
  char why[256];
  if(!amqp_channel_open(conn, channel)) {
    snprintf(err, errlen, "cannot open channel %u: %s", channel,
             mq_reply_text(amqp_get_rpc_reply(conn), why, sizeof why));
    return -1;
  }
  return 0;
}

static void format_delay(uint64_t ms, char *buf, size_t len)
{
  if(ms % 3600000 == 0)
    snprintf(buf, len, "%lluh", (unsigned long long)(ms / 3600000));
  else if(ms % 60000 == 0)
    snprintf(buf, len, "%llum", (unsigned long long)(ms / 60000));
  else if(ms % 1000 == 0)
    snprintf(buf, len, "%llus", (unsigned long long)(ms / 1000));
  else
    snprintf(buf, len, "%llums", (unsigned long long)ms);
}

const uint64_t MQ_DELAYS_MS[MQ_N_DELAYS] = {250,     1000,     4000,     16000,
                                           64000,   256000,   1024000,  4096000,
                                           16384000, 65536000, 262144000, 1048576000};

uint64_t mq_schedule_hop(int64_t remaining_ms)
{
  uint64_t hop = MQ_DELAYS_MS[0];
  for(size_t i = 0; i < MQ_N_DELAYS; i++)
    if((int64_t)MQ_DELAYS_MS[i] <= remaining_ms)
      hop = MQ_DELAYS_MS[i];
  return hop;
}

void mq_delay_queue_name(const struct cfg *cfg, uint64_t delay_ms, char *buf, size_t len)
{
  char d[32];
  format_delay(delay_ms, d, sizeof d);
  snprintf(buf, len, "%s.delay.%s", cfg->topology.exchange, d);
}

void mq_delay_routing_key(uint64_t delay_ms, char *buf, size_t len)
{
  char d[32];
  format_delay(delay_ms, d, sizeof d);
  snprintf(buf, len, "delay.%s", d);
}

void mq_retry_queue_name(const struct cfg *cfg, uint64_t delay_ms, char *buf, size_t len)
{
  char d[32];
  format_delay(delay_ms, d, sizeof d);
  snprintf(buf, len, "%s.%s", cfg->topology.retry_queue_prefix, d);
}

void mq_retry_routing_key(uint64_t delay_ms, char *buf, size_t len)
{
  char d[32];
  format_delay(delay_ms, d, sizeof d);
  snprintf(buf, len, "retry.%s", d);
}

static int declare_queue(amqp_connection_state_t conn, amqp_channel_t ch, const char *name,
                         amqp_table_entry_t *args, int nargs, const char *bind_key,
                         const struct cfg *cfg, char *err, size_t errlen)
{
  char why[256];
  amqp_table_t t = {nargs, args};
  if(!amqp_queue_declare(conn, ch, amqp_cstring_bytes(name), 0, 1, 0, 0, t)) {
    snprintf(err, errlen, "cannot declare queue %s: %s", name,
             mq_reply_text(amqp_get_rpc_reply(conn), why, sizeof why));
    return -1;
  }
  if(bind_key &&
     !amqp_queue_bind(conn, ch, amqp_cstring_bytes(name),
                      amqp_cstring_bytes(cfg->topology.exchange), amqp_cstring_bytes(bind_key),
                      amqp_empty_table)) {
    snprintf(err, errlen, "cannot bind queue %s: %s", name,
             mq_reply_text(amqp_get_rpc_reply(conn), why, sizeof why));
    return -1;
  }
  return 0;
}

/* A queue whose messages wait `ttl_ms`, then dead-letter to `dlx`/`dl_key`: the retry queues
 * (of jobs and of callbacks) and the delay queues of scheduled sends. At-least-once
 * dead-lettering on quorum queues, or the way back would silently be at-most-once. */
static int declare_ttl_queue(amqp_connection_state_t conn, amqp_channel_t ch,
                             const struct cfg *c, const char *name, const char *bind_key,
                             uint64_t ttl_ms, const char *dlx, const char *dl_key, char *err,
                             size_t errlen)
{
  int quorum = c->topology.queue_type == CFG_QUEUE_QUORUM;
  amqp_table_entry_t args[6];
  int n = 0;
  args[n++] = mq_entry_str("x-queue-type", quorum ? "quorum" : "classic");
  args[n++] = mq_entry_i64("x-message-ttl", (int64_t)ttl_ms);
  args[n++] = mq_entry_str("x-dead-letter-exchange", dlx);
  args[n++] = mq_entry_str("x-dead-letter-routing-key", dl_key);
  if(quorum) {
    args[n++] = mq_entry_str("x-dead-letter-strategy", "at-least-once");
    args[n++] = mq_entry_str("x-overflow", "reject-publish");
  }
  return declare_queue(conn, ch, name, args, n, bind_key, c, err, errlen);
}

/* A TTL queue bound to the work exchange with `key` that leads back to the job queue. */
static int declare_delay_queue(amqp_connection_state_t conn, amqp_channel_t ch,
                               const struct cfg *c, const char *name, const char *key,
                               uint64_t ttl_ms, char *err, size_t errlen)
{
  return declare_ttl_queue(conn, ch, c, name, key, ttl_ms, c->topology.exchange, MQ_KEY_SEND,
                           err, errlen);
}

/* 1 when delays[i] is the first occurrence of its value: one queue per distinct delay, so a
 * long delay never holds back a short one. */
static int first_of_its_delay(const uint64_t *delays, size_t i)
{
  for(size_t j = 0; j < i; j++)
    if(delays[j] == delays[i])
      return 0;
  return 1;
}

/* The arguments of the job queue and of the lanes: they dead-letter only to the dead queue
 * (delivery limit): retries are republished by the consumer, see DESIGN §3 on cycle detection.
 * At-least-once dead-lettering silently degrades to at-most-once without reject-publish.
 * Returns the number of entries written (at most 7). */
static int job_queue_args(const struct cfg *c, amqp_table_entry_t *args)
{
  int quorum = c->topology.queue_type == CFG_QUEUE_QUORUM;
  int n = 0;
  args[n++] = mq_entry_str("x-queue-type", quorum ? "quorum" : "classic");
  args[n++] = mq_entry_str("x-dead-letter-exchange", c->topology.exchange);
  args[n++] = mq_entry_str("x-dead-letter-routing-key", MQ_KEY_DEAD);
  if(quorum) {
    args[n++] = mq_entry_i64("x-delivery-limit", MQ_DELIVERY_LIMIT);
    args[n++] = mq_entry_str("x-dead-letter-strategy", "at-least-once");
    args[n++] = mq_entry_str("x-overflow", "reject-publish");
  }
  return n;
}

void mq_lane_queue_name(const struct cfg *cfg, const char *instance, char *buf, size_t len)
{
  snprintf(buf, len, "%s.lane.%s", cfg->topology.queue, instance);
}

void mq_lane_routing_key(const char *instance, char *buf, size_t len)
{
  snprintf(buf, len, "lane.%s", instance);
}

int mq_declare_lane(amqp_connection_state_t conn, amqp_channel_t ch, const struct cfg *cfg,
                    const char *instance, char *err, size_t errlen)
{
  char name[512], key[128];
  amqp_table_entry_t args[8];
  int n = job_queue_args(cfg, args);
  args[n++] = mq_entry_bool("x-single-active-consumer", 1);
  mq_lane_queue_name(cfg, instance, name, sizeof name);
  mq_lane_routing_key(instance, key, sizeof key);
  return declare_queue(conn, ch, name, args, n, key, cfg, err, errlen);
}

int mq_declare_topology(amqp_connection_state_t conn, amqp_channel_t ch, const struct cfg *cfg,
                        char *err, size_t errlen)
{
  const struct cfg *c = cfg;
  int quorum = c->topology.queue_type == CFG_QUEUE_QUORUM;
  const char *qtype = quorum ? "quorum" : "classic";
  char why[256], name[512], key[64], max_age[32];
  amqp_table_entry_t args[8];
  int n;

  if(!amqp_exchange_declare(conn, ch, amqp_cstring_bytes(c->topology.exchange),
                            amqp_cstring_bytes("direct"), 0, 1, 0, 0, amqp_empty_table)) {
    snprintf(err, errlen, "cannot declare exchange %s: %s", c->topology.exchange,
             mq_reply_text(amqp_get_rpc_reply(conn), why, sizeof why));
    return -1;
  }

  /* Parked jobs: permanent failures, exhausted retries, poison messages. */
  n = 0;
  args[n++] = mq_entry_str("x-queue-type", qtype);
  if(declare_queue(conn, ch, c->topology.dead_letter_queue, args, n, MQ_KEY_DEAD, c, err,
                   errlen))
    return -1;

  /* The job queue: see job_queue_args. */
  n = job_queue_args(c, args);
  if(declare_queue(conn, ch, c->topology.queue, args, n, MQ_KEY_SEND, c, err, errlen))
    return -1;

  /* One retry queue per distinct delay, so a long delay never holds back a short one. */
  for(size_t i = 0; i < c->retry.n_delays; i++) {
    if(!first_of_its_delay(c->retry.delays_ms, i))
      continue;
    mq_retry_queue_name(c, c->retry.delays_ms[i], name, sizeof name);
    mq_retry_routing_key(c->retry.delays_ms[i], key, sizeof key);
    if(declare_delay_queue(conn, ch, c, name, key, c->retry.delays_ms[i], err, errlen))
      return -1;
  }

  /* Delay queues for scheduled sends: the same shape as retry queues. */
  for(size_t i = 0; i < MQ_N_DELAYS; i++) {
    mq_delay_queue_name(c, MQ_DELAYS_MS[i], name, sizeof name);
    mq_delay_routing_key(MQ_DELAYS_MS[i], key, sizeof key);
    if(declare_delay_queue(conn, ch, c, name, key, MQ_DELAYS_MS[i], err, errlen))
      return -1;
  }

  /* Status events are published to the stream through the default exchange (reply_to). */
  snprintf(max_age, sizeof max_age, "%llus",
           (unsigned long long)(c->topology.status_retention_ms / 1000));
  n = 0;
  args[n++] = mq_entry_str("x-queue-type", "stream");
  args[n++] = mq_entry_str("x-max-age", max_age);
  if(declare_queue(conn, ch, c->topology.status_stream, args, n, NULL, c, err, errlen))
    return -1;
  return 0;
}

void mq_callback_retry_queue_name(const struct cfg *cfg, uint64_t delay_ms, char *buf,
                                  size_t len)
{
  char d[32];
  format_delay(delay_ms, d, sizeof d);
  snprintf(buf, len, "%s.retry.%s", cfg->topology.callback_queue, d);
}

void mq_callback_dead_queue_name(const struct cfg *cfg, char *buf, size_t len)
{
  snprintf(buf, len, "%s.dead", cfg->topology.callback_queue);
}

int mq_declare_callback_topology(amqp_connection_state_t conn, amqp_channel_t ch,
                                 const struct cfg *cfg, char *err, size_t errlen)
{
  const struct cfg *c = cfg;
  int quorum = c->topology.queue_type == CFG_QUEUE_QUORUM;
  char dead[512], name[512];
  amqp_table_entry_t args[7];
  int n = 0;
  mq_callback_dead_queue_name(c, dead, sizeof dead);
  args[n++] = mq_entry_str("x-queue-type", quorum ? "quorum" : "classic");
  if(declare_queue(conn, ch, dead, args, n, NULL, c, err, errlen))
    return -1;

  /* Everything goes through the default exchange, by queue name: callbacks need no routing.
   * The callback queue dead-letters only to its dead queue (delivery limit), for the reason
   * the job queue does (DESIGN §3): failed callbacks are republished by the dispatcher. */
  n = 0;
  args[n++] = mq_entry_str("x-queue-type", quorum ? "quorum" : "classic");
  args[n++] = mq_entry_str("x-dead-letter-exchange", "");
  args[n++] = mq_entry_str("x-dead-letter-routing-key", dead);
  if(quorum) {
    args[n++] = mq_entry_i64("x-delivery-limit", MQ_DELIVERY_LIMIT);
    args[n++] = mq_entry_str("x-dead-letter-strategy", "at-least-once");
    args[n++] = mq_entry_str("x-overflow", "reject-publish");
  }
  if(declare_queue(conn, ch, c->topology.callback_queue, args, n, NULL, c, err, errlen))
    return -1;

  for(size_t i = 0; i < c->callbacks.n_retry_delays; i++) {
    if(!first_of_its_delay(c->callbacks.retry_delays_ms, i))
      continue;
    mq_callback_retry_queue_name(c, c->callbacks.retry_delays_ms[i], name, sizeof name);
    if(declare_ttl_queue(conn, ch, c, name, NULL, c->callbacks.retry_delays_ms[i], "",
                         c->topology.callback_queue, err, errlen))
      return -1;
  }
  return 0;
}

void mq_close(amqp_connection_state_t conn)
{
  if(!conn)
    return;
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
}

const amqp_field_value_t *mq_table_get(const amqp_table_t *table, const char *key)
{
  size_t n = strlen(key);
  for(int i = 0; i < table->num_entries; i++)
    if(table->entries[i].key.len == n && !memcmp(table->entries[i].key.bytes, key, n))
      return &table->entries[i].value;
  return NULL;
}

int mq_table_get_int(const amqp_table_t *table, const char *key, int64_t *out)
{
  const amqp_field_value_t *v = mq_table_get(table, key);
  if(!v)
    return -1;
  switch(v->kind) {
  case AMQP_FIELD_KIND_I8: *out = v->value.i8; return 0;
  case AMQP_FIELD_KIND_U8: *out = v->value.u8; return 0;
  case AMQP_FIELD_KIND_I16: *out = v->value.i16; return 0;
  case AMQP_FIELD_KIND_U16: *out = v->value.u16; return 0;
  case AMQP_FIELD_KIND_I32: *out = v->value.i32; return 0;
  case AMQP_FIELD_KIND_U32: *out = v->value.u32; return 0;
  case AMQP_FIELD_KIND_I64: *out = v->value.i64; return 0;
  case AMQP_FIELD_KIND_U64:
    if(v->value.u64 > INT64_MAX)
      return -1;
    *out = (int64_t)v->value.u64;
    return 0;
  default: return -1;
  }
}
