/* Benchmark helper: the broker's own ceiling for confirmed persistent publishes (one rabbitmq-c
 * connection, a throwaway quorum queue, pipelined publisher confirms), and a feeder of synthetic
 * status events for the api's cache-size figure (--status-events STREAM).
 *
 *   bench_broker_ceiling [--url URL] [--count N] [--window W] [--size BYTES]
 *                        [--status-events STREAM]
 *
 * Prints one human line and one machine line "BROKER_CEILING {json}" on stdout; exits 1 on any
 * error, a nack, or a confirm that never came. */
#include <amqp.h>
#include <amqp_tcp_socket.h>

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define CHANNEL 1
/* A confirm that takes longer than this means the broker is stuck (alarm, lost connection). */
#define CONFIRM_TIMEOUT_S 30

struct opts {
  const char *url;
  unsigned long long count;
  unsigned long long window;
  unsigned long batch; /* status events per stream message (--status-events) */
  unsigned long size;
  const char *status_stream; /* NULL: ceiling mode */
  const char *queue;         /* ceiling mode: name of the throwaway queue, NULL: generated */
};

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_ull(const char *text, unsigned long long min, unsigned long long max,
                     unsigned long long *out)
{
  char *end;
  unsigned long long v;
  if(!text || !*text || *text == '-')
    return -1;
  errno = 0;
  v = strtoull(text, &end, 10);
  if(errno || *end || v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

static void usage(FILE *f)
{
  fprintf(f, "usage: bench_broker_ceiling [--url amqp://guest:guest@127.0.0.1:5672/%%2f]\n"
             "         [--count 200000] [--window 1000] [--size 200] [--queue NAME]\n"
             "         [--status-events STREAM [--batch 1]]\n"
             "Ceiling mode declares the quorum queue NAME (default bench-ceiling-<uuid>), publishes\n"
             "--count persistent messages of --size bytes to it with at most --window unconfirmed,\n"
             "and deletes it. --status-events publishes valid SUCCESS status events of random\n"
             "task ids to an existing stream instead, --batch of them per message (a JSON array,\n"
             "as the daemons publish them under load); --count counts events.\n");
}

static int parse_args(int argc, char **argv, struct opts *o)
{
  for(int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    unsigned long long n;
    if(!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      exit(0);
    }
    if(!v) {
      fprintf(stderr, "bench_broker_ceiling: %s needs a value\n", a);
      return -1;
    }
    i++;
    if(!strcmp(a, "--url"))
      o->url = v;
    else if(!strcmp(a, "--queue") && strlen(v) < 200)
      o->queue = v;
    else if(!strcmp(a, "--status-events"))
      o->status_stream = v;
    else if(!strcmp(a, "--count") && !parse_ull(v, 1, 1000000000ULL, &n))
      o->count = n;
    else if(!strcmp(a, "--window") && !parse_ull(v, 1, 1000000ULL, &n))
      o->window = n;
    else if(!strcmp(a, "--batch") && !parse_ull(v, 1, 1024ULL, &n))
      o->batch = (unsigned long)n;
    else if(!strcmp(a, "--size") && !parse_ull(v, 1, 1048576ULL, &n))
      o->size = (unsigned long)n;
    else {
      fprintf(stderr, "bench_broker_ceiling: bad option or value: %s %s\n", a, v);
      return -1;
    }
  }
  return 0;
}

static int rpc_ok(amqp_connection_state_t c, const char *what)
{
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  if(r.reply_type == AMQP_RESPONSE_NORMAL)
    return 0;
  if(r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
    amqp_channel_close_t *cc = r.reply.decoded;
    fprintf(stderr, "bench_broker_ceiling: %s: channel closed: %d %.*s\n", what, cc->reply_code,
            (int)cc->reply_text.len, (const char *)cc->reply_text.bytes);
  }
  else if(r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
    amqp_connection_close_t *cc = r.reply.decoded;
    fprintf(stderr, "bench_broker_ceiling: %s: connection closed: %d %.*s\n", what, cc->reply_code,
            (int)cc->reply_text.len, (const char *)cc->reply_text.bytes);
  }
  else
    fprintf(stderr, "bench_broker_ceiling: %s: %s\n", what,
            r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION ? amqp_error_string2(r.library_error)
                                                            : "failed");
  return -1;
}

static amqp_connection_state_t connect_broker(const char *url)
{
  struct amqp_connection_info info;
  char *copy = strdup(url);
  amqp_connection_state_t c = NULL;
  amqp_socket_t *s;
  struct timeval cto = {5, 0};
  amqp_table_entry_t props[1] = {
    {.key = amqp_cstring_bytes("connection_name"),
     .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("msg-bench")}}};
  amqp_table_t pt = {1, props};
  amqp_rpc_reply_t r;

  amqp_default_connection_info(&info);
  if(!copy || amqp_parse_url(copy, &info) != AMQP_STATUS_OK) {
    fprintf(stderr, "bench_broker_ceiling: cannot parse the broker URL\n");
    goto fail;
  }
  if(info.ssl) {
    fprintf(stderr, "bench_broker_ceiling: amqps:// is not supported by this benchmark\n");
    goto fail;
  }
  c = amqp_new_connection();
  s = c ? amqp_tcp_socket_new(c) : NULL;
  if(!s || amqp_socket_open_noblock(s, info.host, info.port, &cto) != AMQP_STATUS_OK) {
    fprintf(stderr, "bench_broker_ceiling: cannot connect to %s:%d\n", info.host, info.port);
    goto fail;
  }
  /* Heartbeats off: this short-lived client may spend a long time in one blocking wait. */
  r = amqp_login_with_properties(c, info.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0, &pt,
                                 AMQP_SASL_METHOD_PLAIN, info.user, info.password);
  if(r.reply_type != AMQP_RESPONSE_NORMAL) {
    fprintf(stderr, "bench_broker_ceiling: login refused (credentials or vhost)\n");
    goto fail;
  }
  amqp_channel_open(c, CHANNEL);
  if(rpc_ok(c, "channel.open"))
    goto fail;
  free(copy);
  return c;
fail:
  if(c)
    amqp_destroy_connection(c);
  free(copy);
  return NULL;
}

/* Fills buf with a random version-4 UUID string (37 bytes with the NUL). */
static void random_uuid(char buf[37])
{
  unsigned char b[16];
  size_t got = 0;
  while(got < sizeof b) {
    ssize_t n = getrandom(b + got, sizeof b - got, 0);
    if(n > 0)
      got += (size_t)n;
  }
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  snprintf(buf, 37,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
           b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
           b[15]);
}

static void rfc3339_now(char buf[32])
{
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  size_t n;
  gmtime_r(&ts.tv_sec, &tm);
  n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, 32 - n, ".%03dZ", (int)(ts.tv_nsec / 1000000) % 1000);
}

/* Reads frames until at most `limit` confirms are outstanding. `block` waits for the first
 * frame (up to CONFIRM_TIMEOUT_S); after that, only frames already available are read. */
static int settle(amqp_connection_state_t c, uint64_t published, uint64_t *confirmed,
                  uint64_t limit)
{
  while(published - *confirmed > limit) {
    amqp_frame_t f;
    struct timeval tv = {CONFIRM_TIMEOUT_S, 0};
    int rc;
    memset(&f, 0, sizeof f);
    rc = amqp_simple_wait_frame_noblock(c, &f, &tv);
    if(rc == AMQP_STATUS_TIMEOUT) {
      fprintf(stderr, "bench_broker_ceiling: no confirm within %d s (%" PRIu64 " outstanding)\n",
              CONFIRM_TIMEOUT_S, published - *confirmed);
      return -1;
    }
    if(rc != AMQP_STATUS_OK) {
      fprintf(stderr, "bench_broker_ceiling: waiting for confirms: %s\n", amqp_error_string2(rc));
      return -1;
    }
    if(f.frame_type != AMQP_FRAME_METHOD)
      continue; /* heartbeats and the like */
    switch(f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
      amqp_basic_ack_t *a = f.payload.method.decoded;
      /* Tags count from 1; multiple=1 settles everything up to and including the tag. */
      if(a->delivery_tag > published || a->delivery_tag <= *confirmed) {
        if(!a->multiple) {
          fprintf(stderr, "bench_broker_ceiling: unexpected ack tag %" PRIu64 "\n", (uint64_t)a->delivery_tag);
          return -1;
        }
        break; /* a multiple ack for tags already counted */
      }
      if(a->multiple)
        *confirmed = a->delivery_tag;
      else
        (*confirmed)++; /* single acks arrive in order on one channel */
      break;
    }
    case AMQP_BASIC_NACK_METHOD: {
      amqp_basic_nack_t *n = f.payload.method.decoded;
      fprintf(stderr, "bench_broker_ceiling: the broker nacked tag %" PRIu64 "%s\n",
              (uint64_t)n->delivery_tag, n->multiple ? " (multiple)" : "");
      return -1;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
      amqp_channel_close_t *cc = f.payload.method.decoded;
      fprintf(stderr, "bench_broker_ceiling: channel closed by the broker: %d %.*s\n",
              cc->reply_code, (int)cc->reply_text.len, (const char *)cc->reply_text.bytes);
      return -1;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
      amqp_connection_close_t *cc = f.payload.method.decoded;
      fprintf(stderr, "bench_broker_ceiling: connection closed by the broker: %d %.*s\n",
              cc->reply_code, (int)cc->reply_text.len, (const char *)cc->reply_text.bytes);
      return -1;
    }
    default:
      break;
    }
  }
  return 0;
}

/* Room for one status event as written below (about 330 bytes) and its comma. */
#define EVENT_MAX 512

int main(int argc, char **argv)
{
  struct opts o = {.url = "amqp://guest:guest@127.0.0.1:5672/%2f", .count = 200000,
                   .window = 1000, .size = 200, .batch = 1};
  amqp_connection_state_t c = NULL;
  char queue[256], uuid[37], at[32], *body = NULL;
  amqp_basic_properties_t p;
  amqp_bytes_t exchange = amqp_empty_bytes, key;
  uint64_t published = 0, confirmed = 0, events = 0;
  int declared = 0, rc = 1;
  double t0, secs;

  if(parse_args(argc, argv, &o)) {
    usage(stderr);
    return 2;
  }
  if(!(c = connect_broker(o.url)))
    return 1;
  amqp_confirm_select(c, CHANNEL);
  if(rpc_ok(c, "confirm.select"))
    goto out;

  if(o.status_stream) {
    /* Passive: the stream is msg-api's (it declares it with its own arguments). */
    amqp_queue_declare(c, CHANNEL, amqp_cstring_bytes(o.status_stream), 1, 0, 0, 0, amqp_empty_table);
    if(rpc_ok(c, "status stream (passive declare)"))
      goto out;
    key = amqp_cstring_bytes(o.status_stream);
    body = malloc(EVENT_MAX * o.batch + 2);
  }
  else {
    amqp_table_entry_t qargs[1] = {
      {.key = amqp_cstring_bytes("x-queue-type"),
       .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("quorum")}}};
    random_uuid(uuid);
    if(o.queue)
      snprintf(queue, sizeof queue, "%s", o.queue);
    else
      snprintf(queue, sizeof queue, "bench-ceiling-%s", uuid);
    amqp_queue_declare(c, CHANNEL, amqp_cstring_bytes(queue), 0, 1, 0, 0, (amqp_table_t){1, qargs});
    if(rpc_ok(c, "queue.declare"))
      goto out;
    declared = 1;
    key = amqp_cstring_bytes(queue);
    /* ~200 bytes of JSON-looking text, like a job. */
    body = malloc(o.size);
    if(body)
      for(unsigned long i = 0; i < o.size; i++)
        body[i] = (char)('a' + i % 26);
  }
  if(!body) {
    fprintf(stderr, "bench_broker_ceiling: out of memory\n");
    goto out;
  }

  memset(&p, 0, sizeof p);
  p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
  p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
  p.content_type = amqp_cstring_bytes("application/json");

  t0 = now_s();
  while(o.status_stream ? events < o.count : published < o.count) {
    amqp_bytes_t payload;
    if(o.status_stream) {
      size_t len = 0;
      unsigned long k;
      /* One event alone is an object; several go as one JSON array (a batch). */
      if(o.batch > 1)
        body[len++] = '[';
      for(k = 0; k < o.batch && events < o.count; k++, events++) {
        random_uuid(uuid);
        if(events % 1000 == 0)
          rfc3339_now(at);
        len += (size_t)snprintf(body + len, EVENT_MAX + 1,
                   "%s{\"v\":1,\"task_id\":\"%s\",\"status\":\"SUCCESS\",\"attempt\":1,\"at\":\"%s\","
                   "\"created_at\":\"%s\",\"phone\":\"+52123456789\",\"result\":{\"success\":true,"
                   "\"phone\":\"+52123456789\",\"evolution_key\":\"3EB0%.32s%04" PRIx64 "\"}}",
                   k ? "," : "", uuid, at, at, "0123456789ABCDEF0123456789ABCDEF", events & 0xffff);
      }
      if(o.batch > 1)
        body[len++] = ']';
      p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
      p.correlation_id = amqp_cstring_bytes(uuid);
      payload = (amqp_bytes_t){len, body};
    }
    else
      payload = (amqp_bytes_t){o.size, body};
    if(amqp_basic_publish(c, CHANNEL, exchange, key, 0, 0, &p, payload) != AMQP_STATUS_OK) {
      fprintf(stderr, "bench_broker_ceiling: publish failed after %" PRIu64 " messages\n", published);
      goto out;
    }
    published++;
    if(settle(c, published, &confirmed, o.window - 1))
      goto out;
    /* Confirmed frames are decoded into the connection's pools; recycle them now and then. */
    if(published % 4096 == 0)
      amqp_maybe_release_buffers(c);
  }
  if(settle(c, published, &confirmed, 0))
    goto out;
  secs = now_s() - t0;
  if(!o.status_stream)
    events = published;
  printf("%s: %" PRIu64 " persistent messages (%s) confirmed in %.3f s with a window of %llu: %.0f messages/s\n",
         o.status_stream ? "status events" : "broker ceiling", published,
         o.status_stream ? "status events" : "quorum queue", secs, o.window,
         (double)published / secs);
  /* msgs_per_s counts events (one per message but with --batch). */
  printf("BROKER_CEILING {\"mode\":\"%s\",\"count\":%" PRIu64 ",\"messages\":%" PRIu64
         ",\"window\":%llu,\"seconds\":%.3f,\"msgs_per_s\":%.0f}\n",
         o.status_stream ? "status_events" : "quorum", events, published, o.window, secs,
         (double)events / secs);
  rc = 0;
out:
  if(declared) {
    struct timeval rto = {10, 0};
    amqp_set_rpc_timeout(c, &rto);
    /* A closed channel (after an error) cannot delete: reopen one for the clean-up. */
    if(rc) {
      amqp_channel_open(c, CHANNEL + 1);
      amqp_queue_delete(c, CHANNEL + 1, amqp_cstring_bytes(queue), 0, 0);
    }
    else
      amqp_queue_delete(c, CHANNEL, amqp_cstring_bytes(queue), 0, 0);
    if(rpc_ok(c, "queue.delete"))
      fprintf(stderr, "bench_broker_ceiling: delete queue %s by hand\n", queue);
  }
  if(c) {
    struct timeval rto = {5, 0};
    amqp_set_rpc_timeout(c, &rto);
    if(!rc) {
      amqp_channel_close(c, CHANNEL, AMQP_REPLY_SUCCESS);
      amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(c);
  }
  free(body);
  return rc;
}
