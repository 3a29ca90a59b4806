/* The AMQP engine over rabbitmq-c: see mq.h. */
#include "mq.h"
#include "mq_internal.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdatomic.h>

#include "util.h"

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

/* Connects and logs in to one address. */
static amqp_connection_state_t connect_one(const struct cfg *cfg, const char *address,
                                           const char *role, int timeout_ms, char *err,
                                           size_t errlen)
{
  struct amqp_connection_info info;
  char *url = strdup(address);
  amqp_connection_state_t conn = NULL;
  amqp_socket_t *sock;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  char host[256] = "unknown", name[512], product[64], why[256];
  int rc;
  if(!url) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  /* amqp_parse_url decodes in place and points into url, so url lives until the end. */
  amqp_default_connection_info(&info);
  if(amqp_parse_url(url, &info) != AMQP_STATUS_OK) {
    snprintf(err, errlen, "a broker URL is not an AMQP URL");
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
  /* The management UI shows product and version beside the connection name. */
  snprintf(product, sizeof product, "msg-%s", strncmp(role, "api", 3) ? "consumer" : "api");
  {
    amqp_table_entry_t caps[3] = {mq_entry_bool("connection.blocked", 1),
                                  mq_entry_bool("consumer_cancel_notify", 1),
                                  mq_entry_bool("publisher_confirms", 1)};
    amqp_table_entry_t props[5];
    amqp_table_t table;
    amqp_rpc_reply_t r;
    /* connection_name belongs at the top level of the client properties, not in the
     * capabilities table: that is where the broker reads it. */
    props[0] = mq_entry_str("connection_name", name);
    props[1] = mq_entry_str("product", product);
    props[2] = mq_entry_str("version", MSG_VERSION);
    props[3] = mq_entry_str("platform", "C (rabbitmq-c)");
    props[4].key = amqp_cstring_bytes("capabilities");
    props[4].value.kind = AMQP_FIELD_KIND_TABLE;
    props[4].value.value.table.num_entries = 3;
    props[4].value.value.table.entries = caps;
    table.num_entries = 5;
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

/* A random index below n, so that replicas started together spread over a cluster. */
static size_t random_index(size_t n)
{
  static _Thread_local unsigned seed;
  if(!seed)
    seed = (unsigned)util_mono_us() ^ ((unsigned)getpid() << 16) ^ (unsigned)(uintptr_t)&seed;
  return n > 1 ? (size_t)rand_r(&seed) % n : 0;
}

static amqp_connection_state_t connect_any(const struct cfg *cfg, const char *role,
                                           int timeout_ms, char *err, size_t errlen)
{
  size_t n = cfg->broker.n_urls, first = random_index(n);
  for(size_t i = 0; i < n; i++) {
    amqp_connection_state_t conn =
      connect_one(cfg, cfg->broker.urls[(first + i) % n], role, timeout_ms, err, errlen);
    if(conn)
      return conn;
  }
  return NULL;
}

/* ---- sessions --------------------------------------------------------------------------- */

struct mq_session {
  const struct cfg *cfg;
  char role[32];
  amqp_connection_state_t conn;
  size_t next;          /* the address to try next */
  size_t current;       /* the address of the live connection */
  size_t failed_round;  /* addresses that failed since the last success or pause */
  int backoff_ms;
  unsigned generation;
  char address[256];    /* host:port of the live connection, for logs and /health */
};

struct mq_session *mq_session_new(const struct cfg *cfg, const char *role)
{
  struct mq_session *s = calloc(1, sizeof *s);
  if(!s)
    return NULL;
  s->cfg = cfg;
  snprintf(s->role, sizeof s->role, "%s", role);
  s->next = random_index(cfg->broker.n_urls);
  s->backoff_ms = MQ_BACKOFF_MIN_MS;
  return s;
}

void mq_session_free(struct mq_session *s)
{
  if(!s)
    return;
  mq_session_lost(s);
  free(s);
}

/* host:port of a URL without its credentials, for logs. */
static void url_address(const char *url, char *buf, size_t len)
{
  const char *p = strstr(url, "://"), *at, *end;
  p = p ? p + 3 : url;
  end = p + strcspn(p, "/?#");
  at = memchr(p, '@', (size_t)(end - p));
  while(at && memchr(at + 1, '@', (size_t)(end - at - 1)))
    at = memchr(at + 1, '@', (size_t)(end - at - 1));
  if(at)
    p = at + 1;
  snprintf(buf, len, "%.*s", (int)(end - p), p);
}

int mq_session_open(struct mq_session *s, int timeout_ms, char *err, size_t errlen)
{
  size_t n = s->cfg->broker.n_urls, i = s->next % n;
  amqp_connection_state_t conn;
  mq_session_lost(s);
  s->next = (i + 1) % n;
  conn = connect_one(s->cfg, s->cfg->broker.urls[i], s->role, timeout_ms, err, errlen);
  if(!conn) {
    s->failed_round++;
    return -1;
  }
  s->conn = conn;
  s->current = i;
  s->failed_round = 0;
  s->backoff_ms = MQ_BACKOFF_MIN_MS;
  s->generation++;
  url_address(s->cfg->broker.urls[i], s->address, sizeof s->address);
  return 0;
}

int mq_session_open_any(struct mq_session *s, int timeout_ms, char *err, size_t errlen)
{
  amqp_connection_state_t conn;
  mq_session_lost(s);
  conn = connect_any(s->cfg, s->role, timeout_ms, err, errlen);
  if(!conn)
    return -1;
  s->conn = conn;
  s->generation++;
  s->address[0] = '\0';
  return 0;
}

int mq_session_retry_delay_ms(struct mq_session *s)
{
  int base;
  /* A failed address is followed at once by the next one; only a whole round of failures
   * waits, so a dead cluster node costs one connect attempt and a dead cluster is not
   * hammered. The jitter spreads replicas that lost the same node at the same moment. */
  if(s->failed_round && s->failed_round < s->cfg->broker.n_urls)
    return 0;
  s->failed_round = 0;
  base = s->backoff_ms;
  s->backoff_ms = base * 2 > MQ_BACKOFF_MAX_MS ? MQ_BACKOFF_MAX_MS : base * 2;
  return base / 2 + (int)(random_index((size_t)base / 2 + 1));
}

void mq_session_lost(struct mq_session *s)
{
  if(!s->conn)
    return;
  /* After a socket-level error only destroy: close is an RPC that can hang on a dead peer. */
  amqp_destroy_connection(s->conn);
  s->conn = NULL;
  /* The address that just failed is retried last: the next reconnect starts at another. */
  s->next = (s->current + 1) % s->cfg->broker.n_urls;
  s->address[0] = '\0';
}

void mq_session_close(struct mq_session *s)
{
  if(!s || !s->conn)
    return;
  mq_close(s->conn);
  s->conn = NULL;
  s->address[0] = '\0';
}

amqp_connection_state_t mq_session_conn(const struct mq_session *s)
{
  return s->conn;
}

void mq_session_adopt(struct mq_session *s, amqp_connection_state_t conn)
{
  s->conn = conn;
  s->generation++;
}

int mq_session_connected(const struct mq_session *s)
{
  return s->conn != NULL;
}

int mq_session_fd(const struct mq_session *s)
{
  return s->conn ? amqp_get_sockfd(s->conn) : -1;
}

int mq_session_pending_input(const struct mq_session *s)
{
  /* rabbitmq-c may already hold whole frames in its buffer: the socket will not wake us. */
  return s->conn && (amqp_frames_enqueued(s->conn) || amqp_data_in_buffer(s->conn));
}

void mq_session_wait_input(const struct mq_session *s, int timeout_ms)
{
  struct pollfd pfd;
  if(!s->conn || mq_session_pending_input(s))
    return;
  pfd.fd = mq_session_fd(s);
  pfd.events = POLLIN;
  poll(&pfd, 1, timeout_ms);
}

int mq_session_channel_max(const struct mq_session *s)
{
  int max = s->conn ? amqp_get_channel_max(s->conn) : 0;
  return max ? max : 65535; /* 0: no limit but the protocol's */
}

unsigned mq_session_generation(const struct mq_session *s)
{
  return s->generation;
}

const char *mq_session_address(const struct mq_session *s)
{
  return s->address;
}

static void consumer_tag(const char *role, char *buf, size_t len)
{
  char host[128] = "unknown";
  static atomic_uint counter;
  gethostname(host, sizeof host - 1);
  snprintf(buf, len, "msg-%s@%s:%ld:%u", role, host, (long)getpid(),
           atomic_fetch_add(&counter, 1) + 1);
}

static int channel_open(amqp_connection_state_t conn, amqp_channel_t channel, char *err,
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

int mq_channel_open(struct mq_session *s, uint16_t ch, char *err, size_t errlen)
{
  return channel_open(s->conn, ch, err, errlen);
}

void mq_channel_close(struct mq_session *s, uint16_t ch)
{
  if(s->conn)
    amqp_channel_close(s->conn, ch, AMQP_REPLY_SUCCESS);
}

int mq_consume(struct mq_session *s, uint16_t ch, const char *queue, uint16_t prefetch,
               int64_t offset, const char *role, char tag[MQ_TAG_LEN], char *err,
               size_t errlen)
{
  amqp_table_entry_t arg;
  amqp_table_t args = {0, &arg};
  amqp_basic_consume_ok_t *ok;
  /* Quorum queues refuse a global prefetch: it is per consumer. */
  if(!amqp_basic_qos(s->conn, ch, 0, prefetch ? prefetch : 1, 0)) {
    mq_reply_text(amqp_get_rpc_reply(s->conn), err, errlen);
    return -1;
  }
  if(offset <= MQ_FROM_TIME(0)) {
    /* A timestamp offset (seconds): the stream's first chunk written at or after it. */
    arg.key = amqp_cstring_bytes("x-stream-offset");
    arg.value.kind = AMQP_FIELD_KIND_TIMESTAMP;
    arg.value.value.u64 = (uint64_t)(MQ_FROM_TIME(0) - offset);
    args.num_entries = 1;
  }
  else if(offset != MQ_NOT_A_STREAM) {
    arg = offset < 0 ? mq_entry_str("x-stream-offset", "first")
                     : mq_entry_i64("x-stream-offset", offset);
    args.num_entries = 1;
  }
  consumer_tag(role, tag, MQ_TAG_LEN);
  ok = amqp_basic_consume(s->conn, ch, amqp_cstring_bytes(queue), amqp_cstring_bytes(tag), 0, 0,
                          0, args);
  if(!ok) {
    mq_reply_text(amqp_get_rpc_reply(s->conn), err, errlen);
    return -1;
  }
  /* The broker may shorten or replace a tag; what it answered is what cancel needs. */
  snprintf(tag, MQ_TAG_LEN, "%.*s", (int)ok->consumer_tag.len,
           (const char *)ok->consumer_tag.bytes);
  return 0;
}

void mq_cancel(struct mq_session *s, uint16_t ch, const char *tag)
{
  amqp_basic_cancel_t req;
  if(!s->conn || !tag[0])
    return;
  req.consumer_tag = amqp_cstring_bytes(tag);
  req.nowait = 1;
  /* No wait for cancel-ok: it would stall the loop while deliveries are in flight. */
  amqp_send_method(s->conn, ch, AMQP_BASIC_CANCEL_METHOD, &req);
}

int mq_ack(struct mq_session *s, uint16_t ch, uint64_t tag, int multiple)
{
  if(!s->conn)
    return -1;
  return amqp_basic_ack(s->conn, ch, tag, multiple) == AMQP_STATUS_OK ? 0 : -1;
}

int mq_nack(struct mq_session *s, uint16_t ch, uint64_t tag, int requeue)
{
  if(!s->conn)
    return -1;
  return amqp_basic_nack(s->conn, ch, tag, 0, requeue) == AMQP_STATUS_OK ? 0 : -1;
}

int mq_queue_depth(struct mq_session *s, uint16_t ch, const char *queue, uint32_t *depth,
                   char *err, size_t errlen)
{
  char why[256];
  amqp_queue_declare_ok_t *ok =
    amqp_queue_declare(s->conn, ch, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
  if(!ok) {
    snprintf(err, errlen, "cannot read queue %s: %s", queue,
             mq_reply_text(amqp_get_rpc_reply(s->conn), why, sizeof why));
    return -1;
  }
  *depth = ok->message_count;
  return 0;
}

int mq_get(struct mq_session *s, uint16_t ch, const char *queue, struct mq_message **out,
           uint64_t *tag)
{
  struct mq_message *m;
  amqp_rpc_reply_t r = amqp_basic_get(s->conn, ch, amqp_cstring_bytes(queue), 0);
  if(r.reply_type != AMQP_RESPONSE_NORMAL)
    return -1;
  if(r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
    return 0;
  *tag = ((amqp_basic_get_ok_t *)r.reply.decoded)->delivery_tag;
  if(!(m = calloc(1, sizeof *m)))
    return -1;
  if(amqp_read_message(s->conn, ch, &m->msg, 0).reply_type != AMQP_RESPONSE_NORMAL) {
    free(m);
    return -1;
  }
  *out = m;
  return 1;
}

/* ---- messages ------------------------------------------------------------------------------ */

const void *mq_message_body(const struct mq_message *m, size_t *len)
{
  *len = m->msg.body.len;
  return m->msg.body.bytes;
}

int mq_message_header_int(const struct mq_message *m, const char *key, int64_t *out)
{
  if(!(m->msg.properties._flags & AMQP_BASIC_HEADERS_FLAG))
    return -1;
  return mq_table_get_int(&m->msg.properties.headers, key, out);
}

static const amqp_bytes_t *header_bytes(const struct mq_message *m, const char *key)
{
  const amqp_field_value_t *v;
  if(!(m->msg.properties._flags & AMQP_BASIC_HEADERS_FLAG) ||
     !(v = mq_table_get(&m->msg.properties.headers, key)) ||
     (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES))
    return NULL;
  /* A value with a NUL inside is no C string: treated as not a string at all. */
  if(v->value.bytes.len && memchr(v->value.bytes.bytes, '\0', v->value.bytes.len))
    return NULL;
  return &v->value.bytes;
}

static int copy_bytes(const amqp_bytes_t *b, char *buf, size_t len)
{
  if(b->len >= len) {
    if(len)
      buf[0] = '\0';
    return -2;
  }
  if(b->len)
    memcpy(buf, b->bytes, b->len);
  buf[b->len] = '\0';
  return 0;
}

int mq_message_header_str(const struct mq_message *m, const char *key, char *buf, size_t len)
{
  const amqp_bytes_t *b = header_bytes(m, key);
  if(!b) {
    if(len)
      buf[0] = '\0';
    return -1;
  }
  return copy_bytes(b, buf, len);
}

char *mq_message_header_dup(const struct mq_message *m, const char *key, int *rc)
{
  const amqp_bytes_t *b = header_bytes(m, key);
  char *copy;
  if(!b) {
    *rc = -1;
    return NULL;
  }
  if(!(copy = malloc(b->len + 1))) {
    *rc = -2;
    return NULL;
  }
  copy_bytes(b, copy, b->len + 1);
  *rc = 0;
  return copy;
}

int mq_message_prop(const struct mq_message *m, enum mq_prop which, char *buf, size_t len)
{
  const amqp_basic_properties_t *p = &m->msg.properties;
  switch(which) {
  case MQ_PROP_MESSAGE_ID:
    return (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ? copy_bytes(&p->message_id, buf, len) : -1;
  case MQ_PROP_CORRELATION_ID:
    return (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) ? copy_bytes(&p->correlation_id, buf, len)
                                                        : -1;
  case MQ_PROP_TYPE:
    return (p->_flags & AMQP_BASIC_TYPE_FLAG) ? copy_bytes(&p->type, buf, len) : -1;
  }
  return -1;
}

struct mq_message *mq_message_take(struct mq_message *m)
{
  struct mq_message *copy = malloc(sizeof *copy);
  if(!copy)
    return NULL;
  *copy = *m;
  /* A zeroed message is what amqp_destroy_message leaves alone. */
  memset(m, 0, sizeof *m);
  return copy;
}

void mq_message_free(struct mq_message *m)
{
  if(!m)
    return;
  amqp_destroy_message(&m->msg);
  free(m);
}

struct mq_header mq_header_str(const char *key, const char *value)
{
  struct mq_header h = {key, MQ_HEADER_STR, value, 0};
  return h;
}

struct mq_header mq_header_int(const char *key, int64_t value)
{
  struct mq_header h = {key, MQ_HEADER_INT, NULL, value};
  return h;
}

/* The rabbitmq-c properties of a publish; headers are converted into table[MQ_MAX_HEADERS]. */
#define MQ_MAX_HEADERS 16
static void to_amqp_props(const struct mq_props *in, amqp_basic_properties_t *p,
                          amqp_table_entry_t *table)
{
  memset(p, 0, sizeof *p);
  p->_flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
              AMQP_BASIC_TIMESTAMP_FLAG;
  p->delivery_mode = AMQP_DELIVERY_PERSISTENT;
  p->content_type = amqp_cstring_bytes("application/json");
  p->timestamp = (uint64_t)(util_now_ms() / 1000);
  if(!in)
    return;
#define PROP(field, flag)                                                                 \
  if(in->field) {                                                                         \
    p->_flags |= flag;                                                                    \
    p->field = amqp_cstring_bytes(in->field);                                             \
  }
  PROP(message_id, AMQP_BASIC_MESSAGE_ID_FLAG)
  PROP(correlation_id, AMQP_BASIC_CORRELATION_ID_FLAG)
  PROP(reply_to, AMQP_BASIC_REPLY_TO_FLAG)
  PROP(type, AMQP_BASIC_TYPE_FLAG)
  PROP(app_id, AMQP_BASIC_APP_ID_FLAG)
#undef PROP
  if(in->n_headers) {
    size_t n = in->n_headers < MQ_MAX_HEADERS ? in->n_headers : MQ_MAX_HEADERS;
    for(size_t i = 0; i < n; i++)
      table[i] = in->headers[i].kind == MQ_HEADER_STR
                   ? mq_entry_str(in->headers[i].key, in->headers[i].str)
                   : mq_entry_i64(in->headers[i].key, in->headers[i].num);
    p->_flags |= AMQP_BASIC_HEADERS_FLAG;
    p->headers.num_entries = (int)n;
    p->headers.entries = table;
  }
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

int mq_declare_lane(struct mq_session *s, uint16_t ch, const struct cfg *cfg,
                    const char *instance, char *err, size_t errlen)
{
  amqp_connection_state_t conn = s->conn;
  char name[512], key[128];
  amqp_table_entry_t args[8];
  int n = job_queue_args(cfg, args);
  args[n++] = mq_entry_bool("x-single-active-consumer", 1);
  mq_lane_queue_name(cfg, instance, name, sizeof name);
  mq_lane_routing_key(instance, key, sizeof key);
  return declare_queue(conn, ch, name, args, n, key, cfg, err, errlen);
}

int mq_declare_topology(struct mq_session *s, uint16_t ch, const struct cfg *cfg, char *err,
                        size_t errlen)
{
  amqp_connection_state_t conn = s->conn;
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

  /* The api's snapshots of its cache, and their index (DESIGN §3): 20 minutes are kept, in
   * small segments, so that retention, which drops whole segments, really drops the rest. */
  mq_snapshot_stream_name(c, name, sizeof name);
  n = 0;
  args[n++] = mq_entry_str("x-queue-type", "stream");
  args[n++] = mq_entry_str("x-max-age", MQ_SNAPSHOT_MAX_AGE);
  args[n++] = mq_entry_i64("x-stream-max-segment-size-bytes", 64 * 1024 * 1024);
  if(declare_queue(conn, ch, name, args, n, NULL, c, err, errlen))
    return -1;
  mq_snapshot_index_name(c, name, sizeof name);
  n = 0;
  args[n++] = mq_entry_str("x-queue-type", "stream");
  args[n++] = mq_entry_str("x-max-age", MQ_SNAPSHOT_MAX_AGE);
  args[n++] = mq_entry_i64("x-stream-max-segment-size-bytes", 1024 * 1024);
  if(declare_queue(conn, ch, name, args, n, NULL, c, err, errlen))
    return -1;
  return 0;
}

void mq_snapshot_stream_name(const struct cfg *cfg, char *buf, size_t len)
{
  snprintf(buf, len, "%s.snapshots", cfg->topology.status_stream);
}

void mq_snapshot_index_name(const struct cfg *cfg, char *buf, size_t len)
{
  snprintf(buf, len, "%s.snapshots.index", cfg->topology.status_stream);
}

int mq_claim_exclusive(struct mq_session *s, uint16_t ch, const char *name, char *err,
                       size_t errlen)
{
  amqp_rpc_reply_t reply;
  /* Exclusive: only this connection may use it, and it goes when the connection goes. */
  if(amqp_queue_declare(s->conn, ch, amqp_cstring_bytes(name), 0, 0, 1, 1, amqp_empty_table))
    return 1;
  reply = amqp_get_rpc_reply(s->conn);
  if(reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
     reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD &&
     ((amqp_channel_close_t *)reply.reply.decoded)->reply_code == AMQP_RESOURCE_LOCKED) {
    /* Another connection holds it: the broker closed the channel; answer and reopen it. */
    amqp_channel_close_ok_t ok = {0};
    if(amqp_send_method(s->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK ||
       channel_open(s->conn, ch, err, errlen))
      return -1;
    return 0;
  }
  snprintf(err, errlen, "cannot declare queue %s: ", name);
  mq_reply_text(reply, err + strlen(err), errlen - strlen(err));
  return -1;
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

int mq_declare_callback_topology(struct mq_session *s, uint16_t ch, const struct cfg *cfg,
                                 char *err, size_t errlen)
{
  amqp_connection_state_t conn = s->conn;
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

/* ---- confirmed publishing ---------------------------------------------------------------- */

/* Publishes nacked in a row after which the publish channel is replaced: a quorum queue's client state
 * lives in the channel, and a channel that learnt of a leader before it moved can be nacked
 * until that node comes back, while a fresh channel works at once. */
#define NACK_STREAK_REOPEN 3

struct mq_publisher {
  struct confirms *confirms;
  amqp_channel_t numbers[2]; /* the publish channel alternates between these */
  int current;               /* index of the live one in numbers */
  int other_closing;         /* the other one waits for its close-ok: not reusable yet */
  int open;                  /* channel open and in confirm mode on the live connection */
  int broken;                /* a publish failed: the connection must be dropped */
  unsigned nack_streak;
  unsigned long long reopens;
};

struct mq_publisher *mq_publisher_new(uint16_t a, uint16_t b, confirms_settle_fn fn, void *ctx)
{
  struct mq_publisher *p = calloc(1, sizeof *p);
  if(!p || !(p->confirms = confirms_new(fn, ctx))) {
    free(p);
    return NULL;
  }
  p->numbers[0] = a;
  p->numbers[1] = b;
  return p;
}

void mq_publisher_free(struct mq_publisher *p)
{
  if(!p)
    return;
  confirms_free(p->confirms);
  free(p);
}

static int open_confirm_channel(amqp_connection_state_t conn, amqp_channel_t ch, char *err,
                                size_t errlen)
{
  char why[256];
  if(channel_open(conn, ch, err, errlen))
    return -1;
  if(!amqp_confirm_select(conn, ch)) {
    snprintf(err, errlen, "confirm.select refused on channel %u: %s", ch,
             mq_reply_text(amqp_get_rpc_reply(conn), why, sizeof why));
    return -1;
  }
  return 0;
}

int mq_publisher_start(struct mq_publisher *p, struct mq_session *s, char *err, size_t errlen)
{
  amqp_connection_state_t conn = s->conn;
  /* Whatever was in flight belonged to the previous connection. */
  mq_publisher_lost(p);
  p->current = 0;
  p->other_closing = 0;
  if(open_confirm_channel(conn, p->numbers[0], err, errlen))
    return -1;
  p->open = 1;
  return 0;
}

void mq_publisher_lost(struct mq_publisher *p)
{
  p->open = 0;
  p->broken = 0;
  p->nack_streak = 0;
  confirms_fail_all(p->confirms);
}

uint16_t mq_publisher_channel(const struct mq_publisher *p)
{
  return p->numbers[p->current];
}

/* Publishes with rabbitmq-c properties: the one path of every publish. */
static int publish_raw(struct mq_publisher *p, amqp_connection_state_t conn,
                       const char *exchange, const char *routing_key, int mandatory,
                       const amqp_basic_properties_t *props, const void *body, size_t len,
                       void *owner)
{
  amqp_bytes_t b;
  int rc;
  if(!conn || !p->open || p->broken)
    return MQ_PUBLISH_UNTRACKED;
  if(!confirms_add(p->confirms, owner)) {
    /* Nothing was sent, but the caller cannot tell the broker so: one rule for every
     * failure, the connection goes. */
    p->broken = 1;
    return MQ_PUBLISH_UNTRACKED;
  }
  b.bytes = (void *)body;
  b.len = len;
  rc = amqp_basic_publish(conn, mq_publisher_channel(p), amqp_cstring_bytes(exchange),
                          amqp_cstring_bytes(routing_key), mandatory, 0, props, b);
  if(rc != AMQP_STATUS_OK) {
    /* Part of the frames may have gone out: the broker's sequence numbers no longer match
     * ours. Every publish not yet confirmed, this one included, is settled as lost when the
     * caller drops the connection; no later confirm can settle a wrong owner. */
    p->broken = 1;
    return MQ_PUBLISH_FAILED;
  }
  return MQ_PUBLISH_OK;
}

int mq_publisher_publish(struct mq_publisher *p, struct mq_session *s, const char *exchange,
                         const char *routing_key, int mandatory, const struct mq_props *props,
                         const void *body, size_t len, void *owner)
{
  amqp_basic_properties_t ap;
  amqp_table_entry_t table[MQ_MAX_HEADERS];
  to_amqp_props(props, &ap, table);
  return publish_raw(p, s->conn, exchange, routing_key, mandatory, &ap, body, len, owner);
}

static int dropped(amqp_bytes_t key, const char *const *drop)
{
  for(; drop && *drop; drop++)
    if(key.len == strlen(*drop) && !memcmp(key.bytes, *drop, key.len))
      return 1;
  return 0;
}

int mq_publisher_republish(struct mq_publisher *p, struct mq_session *s, const char *exchange,
                           const char *routing_key, int mandatory, const struct mq_message *m,
                           const char *const *drop, const struct mq_header *extra,
                           size_t n_extra, void *owner)
{
  amqp_basic_properties_t ap = m->msg.properties;
  int have = (ap._flags & AMQP_BASIC_HEADERS_FLAG) ? ap.headers.num_entries : 0, n = 0, rc;
  amqp_table_entry_t *h = malloc(((size_t)have + n_extra + 1) * sizeof *h);
  if(!h) {
    p->broken = 1;
    return MQ_PUBLISH_UNTRACKED;
  }
  for(int i = 0; i < have; i++)
    if(!dropped(ap.headers.entries[i].key, drop))
      h[n++] = ap.headers.entries[i];
  for(size_t i = 0; i < n_extra; i++)
    h[n++] = extra[i].kind == MQ_HEADER_STR ? mq_entry_str(extra[i].key, extra[i].str)
                                            : mq_entry_i64(extra[i].key, extra[i].num);
  /* user_id must name the publishing connection's user or the broker closes the channel. */
  ap._flags &= ~(amqp_flags_t)AMQP_BASIC_USER_ID_FLAG;
  ap._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
  ap.delivery_mode = AMQP_DELIVERY_PERSISTENT;
  ap.headers.num_entries = n;
  ap.headers.entries = h;
  rc = publish_raw(p, s->conn, exchange, routing_key, mandatory, &ap, m->msg.body.bytes,
                   m->msg.body.len, owner);
  free(h);
  return rc;
}

/* Replaces the live publish channel by the other number: what was in flight on it is settled
 * as lost (the broker may or may not have it), and frames still coming for the old number are
 * ignored. Returns 0, or -1 when the connection must be dropped instead. */
static int replace_channel(struct mq_publisher *p, amqp_connection_state_t conn, char *why,
                           size_t len)
{
  amqp_channel_close_t close;
  amqp_channel_t old = mq_publisher_channel(p);
  if(p->other_closing) {
    snprintf(why, len, "the broker keeps nacking publishes");
    return -1;
  }
  confirms_fail_all(p->confirms);
  close.reply_code = AMQP_REPLY_SUCCESS;
  close.reply_text = amqp_cstring_bytes("replaced: publishes kept being nacked");
  close.class_id = 0;
  close.method_id = 0;
  /* No wait for close-ok here: it comes through mq_pump, which notes it. */
  if(amqp_send_method(conn, old, AMQP_CHANNEL_CLOSE_METHOD, &close) != AMQP_STATUS_OK) {
    snprintf(why, len, "cannot close a nacking channel");
    return -1;
  }
  p->current = !p->current;
  p->other_closing = 1;
  p->nack_streak = 0;
  p->reopens++;
  if(open_confirm_channel(conn, mq_publisher_channel(p), why, len)) {
    p->open = 0;
    return -1;
  }
  return 0;
}

/* A frame on one of the publisher's channels. Returns 1 when it was the publisher's, 0 when
 * not, -1 when the connection must be dropped. */
static int publisher_frame(struct mq_publisher *p, amqp_connection_state_t conn,
                           const amqp_frame_t *f, char *why, size_t len)
{
  amqp_channel_t live = mq_publisher_channel(p), other = p->numbers[!p->current];
  if(f->channel == other && other != live) {
    /* The replaced channel: late confirms of settled publishes, then its close-ok. */
    if(f->payload.method.id == AMQP_CHANNEL_CLOSE_OK_METHOD)
      p->other_closing = 0;
    else if(f->payload.method.id == AMQP_CHANNEL_CLOSE_METHOD) {
      /* Both sides closed at once: answer, and the number is free again. */
      amqp_channel_close_ok_t ok = {0};
      amqp_send_method(conn, other, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
      p->other_closing = 0;
    }
    return 1;
  }
  if(f->channel != live)
    return 0;
  switch(f->payload.method.id) {
  case AMQP_BASIC_ACK_METHOD: {
    const amqp_basic_ack_t *a = f->payload.method.decoded;
    p->nack_streak = 0;
    confirms_settle(p->confirms, a->delivery_tag, a->multiple, CONFIRM_ACKED);
    return 1;
  }
  case AMQP_BASIC_NACK_METHOD: {
    const amqp_basic_nack_t *n = f->payload.method.decoded;
    size_t before = confirms_outstanding(p->confirms);
    confirms_settle(p->confirms, n->delivery_tag, n->multiple, CONFIRM_REFUSED);
    /* Counted in publishes refused, however many one nack covers. */
    p->nack_streak += (unsigned)(before - confirms_outstanding(p->confirms));
    if(p->nack_streak >= NACK_STREAK_REOPEN)
      return replace_channel(p, conn, why, len) ? -1 : 1;
    return 1;
  }
  default: return 0;
  }
}

void mq_publisher_mark_returned(struct mq_publisher *p, int (*matches)(void *owner, void *arg),
                                void *arg)
{
  confirms_mark_returned(p->confirms, matches, arg);
}

size_t mq_publisher_outstanding(const struct mq_publisher *p)
{
  return confirms_outstanding(p->confirms);
}

int mq_publisher_broken(const struct mq_publisher *p)
{
  return p->broken;
}

unsigned long long mq_publisher_reopens(const struct mq_publisher *p)
{
  return p->reopens;
}

/* ---- the frame reader -------------------------------------------------------------------- */

int mq_pump(struct mq_session *s, const struct mq_handlers *h, char *why, size_t len)
{
  amqp_connection_state_t conn = s->conn;
  if(!conn) {
    snprintf(why, len, "not connected");
    return -1;
  }
  for(;;) {
    amqp_frame_t f;
    struct timeval zero = {0, 0};
    int rc;
    for(int i = 0; i < 2; i++)
      if(h->publishers[i] && h->publishers[i]->broken) {
        snprintf(why, len, "a publish failed");
        return -1;
      }
    memset(&f, 0, sizeof f);
    rc = amqp_simple_wait_frame_noblock(conn, &f, &zero);
    if(rc == AMQP_STATUS_TIMEOUT)
      break;
    if(rc != AMQP_STATUS_OK) {
      snprintf(why, len, "%s", amqp_error_string2(rc));
      return -1;
    }
    if(f.frame_type != AMQP_FRAME_METHOD)
      continue; /* heartbeats, and frames rabbitmq-c queued during an RPC */
    {
      int took = 0;
      for(int i = 0; i < 2 && !took; i++)
        if(h->publishers[i] && (took = publisher_frame(h->publishers[i], conn, &f, why, len)) < 0)
          return -1;
      if(took)
        continue;
    }
    switch(f.payload.method.id) {
    case AMQP_BASIC_DELIVER_METHOD: {
      amqp_basic_deliver_t *dl = f.payload.method.decoded;
      uint64_t tag = dl->delivery_tag;
      int redelivered = dl->redelivered;
      struct mq_message m;
      memset(&m, 0, sizeof m);
      if(amqp_read_message(conn, f.channel, &m.msg, 0).reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(why, len, "connection lost while reading a delivery");
        return -1;
      }
      if(h->deliver)
        h->deliver(h->ctx, f.channel, tag, redelivered, &m);
      amqp_destroy_message(&m.msg);
      /* The frames of a delivery sit in its channel's pool until released, and a busy
       * connection is seldom idle enough for amqp_maybe_release_buffers below: without this a
       * stream of large messages (cache snapshots) grew the pool by their whole size. */
      amqp_maybe_release_buffers_on_channel(conn, f.channel);
      break;
    }
    case AMQP_BASIC_RETURN_METHOD: {
      struct mq_message m;
      memset(&m, 0, sizeof m);
      /* The returned message's header and body follow; they must be read off the wire. */
      if(amqp_read_message(conn, f.channel, &m.msg, 0).reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(why, len, "connection lost while reading a returned message");
        return -1;
      }
      rc = h->returned ? h->returned(h->ctx, f.channel, &m) : 0;
      amqp_destroy_message(&m.msg);
      if(rc) {
        snprintf(why, len, "a publish was returned unroutable");
        return -1;
      }
      break;
    }
    case AMQP_BASIC_CANCEL_METHOD:
      if(!h->cancelled || h->cancelled(h->ctx, f.channel)) {
        snprintf(why, len, "the broker cancelled a consumer (queue deleted?)");
        return -1;
      }
      break;
    case AMQP_CHANNEL_CLOSE_METHOD: {
      amqp_channel_close_t *c = f.payload.method.decoded;
      snprintf(why, len, "channel %u closed by the broker: %u %.*s", f.channel, c->reply_code,
               (int)c->reply_text.len, (const char *)c->reply_text.bytes);
      return -1;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
      amqp_connection_close_t *c = f.payload.method.decoded;
      snprintf(why, len, "connection closed by the broker: %u %.*s", c->reply_code,
               (int)c->reply_text.len, (const char *)c->reply_text.bytes);
      return -1;
    }
    case AMQP_CONNECTION_BLOCKED_METHOD:
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
      if(h->blocked)
        h->blocked(h->ctx, f.payload.method.id == AMQP_CONNECTION_BLOCKED_METHOD);
      break;
    default: break;
    }
  }
  amqp_maybe_release_buffers(conn);
  return 0;
}

int mq_publisher_wait(struct mq_publisher *p, struct mq_session *s, const struct mq_handlers *h,
                      int timeout_ms, char *why, size_t len)
{
  int64_t deadline = util_mono_ms() + timeout_ms;
  while(confirms_outstanding(p->confirms)) {
    struct pollfd pfd;
    int64_t left;
    if(mq_pump(s, h, why, len))
      return -1;
    if(!confirms_outstanding(p->confirms))
      break;
    left = deadline - util_mono_ms();
    if(left <= 0) {
      snprintf(why, len, "no confirm from the broker in %d ms", timeout_ms);
      return -1;
    }
    if(mq_session_pending_input(s))
      continue;
    pfd.fd = mq_session_fd(s);
    pfd.events = POLLIN;
    poll(&pfd, 1, (int)left);
  }
  return 0;
}

/* ---- stream following -------------------------------------------------------------------- */

#define MARKER_TYPE "message.marker"

struct mq_stream {
  const struct cfg *cfg;
  char role[32];
  char queue[256];         /* the stream followed: the status stream unless mq_stream_set_queue */
  uint16_t channel;
  uint16_t prefetch;
  struct mq_publisher *marker_pub;
  int64_t offset;          /* last offset read: the resume point after a reconnect */
  int64_t first_offset;    /* the first offset read, -1 before any */
  int64_t start_at_ms;     /* the first subscription starts here (Unix ms), 0: at the first */
  int no_marker;           /* no catch-up marker (mq_stream_without_marker) */
  uint64_t last_tag, unacked;
  int caught_up;
  int marker_state;        /* MARKER_* below */
  unsigned markers;        /* markers published, part of the next marker's id */
  char marker_id[200];
  unsigned long long skipped_markers;
};

enum { MARKER_NONE, MARKER_SENT, MARKER_CONFIRMED, MARKER_RESEND };

static void on_marker_settled(void *owner, int ok, void *ctx)
{
  struct mq_stream *st = ctx;
  (void)owner;
  if(st->marker_state != MARKER_SENT)
    return;
  /* A refused marker is sent again; a lost one goes with its connection. */
  st->marker_state = ok == CONFIRM_ACKED ? MARKER_CONFIRMED
                   : ok == CONFIRM_REFUSED ? MARKER_RESEND : MARKER_NONE;
}

struct mq_stream *mq_stream_new(const struct cfg *cfg, const char *role, uint16_t channel,
                                uint16_t marker_a, uint16_t marker_b, uint16_t prefetch)
{
  struct mq_stream *st = calloc(1, sizeof *st);
  if(!st)
    return NULL;
  st->marker_pub = mq_publisher_new(marker_a, marker_b, on_marker_settled, st);
  if(!st->marker_pub) {
    free(st);
    return NULL;
  }
  st->cfg = cfg;
  snprintf(st->role, sizeof st->role, "%s", role);
  snprintf(st->queue, sizeof st->queue, "%s", cfg->topology.status_stream);
  st->channel = channel;
  st->prefetch = prefetch;
  st->offset = -1;
  st->first_offset = -1;
  return st;
}

void mq_stream_free(struct mq_stream *st)
{
  if(!st)
    return;
  mq_publisher_free(st->marker_pub);
  free(st);
}

static int publish_marker(struct mq_stream *st, struct mq_session *s)
{
  amqp_connection_state_t conn = s->conn;
  amqp_basic_properties_t p;
  char host[128] = "unknown", body[300];
  int n;
  gethostname(host, sizeof host - 1);
  snprintf(st->marker_id, sizeof st->marker_id, "marker:%s@%s:%ld:%u:%llx", st->role, host,
           (long)getpid(), ++st->markers,
           (unsigned long long)util_mono_us() ^ (unsigned long long)random_index(1u << 30));
  n = snprintf(body, sizeof body, "{\"v\":1,\"marker\":\"%s\"}", st->marker_id);
  memset(&p, 0, sizeof p);
  p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
             AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
  p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
  p.content_type = amqp_cstring_bytes("application/json");
  p.message_id = amqp_cstring_bytes(st->marker_id);
  p.type = amqp_cstring_bytes(MARKER_TYPE);
  p.timestamp = (uint64_t)(util_now_ms() / 1000);
  st->marker_state = MARKER_SENT;
  if(publish_raw(st->marker_pub, conn, "", st->queue, 0, &p, body,
                  (size_t)n, st) != MQ_PUBLISH_OK) {
    st->marker_state = MARKER_NONE;
    return -1;
  }
  return 0;
}

int mq_stream_start(struct mq_stream *st, struct mq_session *s, char *err, size_t errlen)
{
  char tag[MQ_TAG_LEN];
  int64_t from;
  mq_stream_lost(st);
  if(mq_channel_open(s, st->channel, err, errlen) ||
     (!st->no_marker && mq_publisher_start(st->marker_pub, s, err, errlen)))
    return -1;
  /* At boot replay the whole retention (or from start_at); after a reconnect resume after the
   * last event read, so nothing is lost and nothing is applied twice. */
  from = st->offset >= 0  ? st->offset + 1
       : st->start_at_ms ? MQ_FROM_TIME(st->start_at_ms / 1000)
                         : MQ_FROM_FIRST;
  if(mq_consume(s, st->channel, st->queue, st->prefetch, from, st->role,
                tag, err, errlen))
    return -1;
  /* Published after the subscription started: reading it back proves that everything
   * published before the subscription has been read. */
  if(!st->no_marker && publish_marker(st, s)) {
    snprintf(err, errlen, "cannot publish the catch-up marker");
    return -1;
  }
  return 0;
}

void mq_stream_lost(struct mq_stream *st)
{
  mq_publisher_lost(st->marker_pub);
  st->caught_up = 0;
  st->marker_state = MARKER_NONE;
  st->unacked = 0;
}

static void stream_flush(struct mq_stream *st, amqp_connection_state_t conn)
{
  if(st->unacked && amqp_basic_ack(conn, st->channel, st->last_tag, 1) == AMQP_STATUS_OK)
    st->unacked = 0;
}

int mq_stream_delivery(struct mq_stream *st, struct mq_session *s, uint64_t tag,
                       const struct mq_message *msg)
{
  const amqp_message_t *m = &msg->msg;
  amqp_connection_state_t conn = s->conn;
  const amqp_basic_properties_t *p = &m->properties;
  int64_t off;
  int is_marker;
  if((p->_flags & AMQP_BASIC_HEADERS_FLAG) &&
     !mq_table_get_int(&p->headers, "x-stream-offset", &off)) {
    st->offset = off;
    if(st->first_offset < 0)
      st->first_offset = off;
  }
  st->last_tag = tag;
  /* Acks on a stream are credit, not settlement: sent in batches of half the prefetch. */
  if(++st->unacked >= (uint64_t)(st->prefetch / 2 ? st->prefetch / 2 : 1))
    stream_flush(st, conn);
  is_marker = (p->_flags & AMQP_BASIC_TYPE_FLAG) && p->type.len == strlen(MARKER_TYPE) &&
              !memcmp(p->type.bytes, MARKER_TYPE, p->type.len);
  if(!is_marker)
    return MQ_STREAM_EVENT;
  if(!st->caught_up && (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
     p->message_id.len == strlen(st->marker_id) &&
     !memcmp(p->message_id.bytes, st->marker_id, p->message_id.len)) {
    st->caught_up = 1;
    return MQ_STREAM_CAUGHT_UP;
  }
  st->skipped_markers++;
  return MQ_STREAM_SKIP;
}

int mq_stream_tick(struct mq_stream *st, struct mq_session *s)
{
  if(!s->conn)
    return -1;
  if(st->unacked)
    stream_flush(st, s->conn);
  if(st->marker_state == MARKER_RESEND && !st->caught_up && !st->no_marker)
    return publish_marker(st, s);
  return mq_publisher_broken(st->marker_pub) ? -1 : 0;
}

int mq_stream_caught_up(const struct mq_stream *st)
{
  return st->caught_up;
}

int64_t mq_stream_offset(const struct mq_stream *st)
{
  return st->offset;
}

int64_t mq_stream_first_offset(const struct mq_stream *st)
{
  return st->first_offset;
}

void mq_stream_start_at(struct mq_stream *st, int64_t unix_ms)
{
  st->start_at_ms = unix_ms > 0 ? unix_ms : 0;
}

void mq_stream_start_from(struct mq_stream *st, int64_t offset)
{
  st->offset = offset > 0 ? offset - 1 : -1;
}

void mq_stream_set_queue(struct mq_stream *st, const char *queue)
{
  snprintf(st->queue, sizeof st->queue, "%s", queue);
}

void mq_stream_without_marker(struct mq_stream *st)
{
  st->no_marker = 1;
}

uint16_t mq_stream_channel(const struct mq_stream *st)
{
  return st->channel;
}

struct mq_publisher *mq_stream_publisher(struct mq_stream *st)
{
  return st->marker_pub;
}
