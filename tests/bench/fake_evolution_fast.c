/* A fast fake Evolution API (CivetWeb) for the benchmark only (tests/bench/run.sh). The Python
 * fake in tests/fake/ is the faithful one used by the tests; it tops out near 2,300 requests/s
 * on 2 cores, far below what the end-to-end benchmark needs. This one answers the happy path of
 * v2.3.x `POST /message/sendText/{instance}` and the few errors a bench run could meet:
 *
 *   route → instance (only with --instances) → apikey (401) → JSON schema (400, nested array)
 *   → blank text (400) → latency (+ the request's own `delay`) → 201 with the v2 body
 *
 * It counts how many times each distinct text was sent (a hash map under one mutex), all
 * sendText requests and the answered statuses. Control API (no apikey), the subset of the
 * Python fake's the benchmark uses:
 *
 *   GET  /_fake/stats[?texts=1[&prefix=P]]  {"total","in_flight","sent","by_status":{"201":N},
 *                                            "duplicates" (texts sent more than once),
 *                                            "distinct"}; texts=1 adds "sent_by_text" (only the
 *                                            texts starting with P when prefix is given)
 *   GET  /_fake/config                      {"latency_ms","instances","threads"}
 *   POST /_fake/config {"latency_ms": N}    changes the latency at run time
 *   POST /_fake/reset                       forgets the counts
 *   GET  /                                  200 welcome document
 *
 * Latency: each request sleeps in its own CivetWeb worker (one per connection), so as many
 * delayed requests overlap as there are --threads.
 *
 * Usage: bench_fake_evolution [--host 127.0.0.1] [--port 0] [--port-file PATH]
 *          [--api-key KEY] [--instances a,b] [--latency-ms N] [--threads 256] [--verbose] */
#include <civetweb.h>
#include <jansson.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY (1024 * 1024)
/* Workers run on ~100 KiB stacks and jansson's parser recurses once per nesting level (up to
 * 2048), so deeper bodies are refused before parsing. */
#define MAX_DEPTH 32
#define MAX_STATUS 600
#define SLEEP_SLICE_NS 50000000L /* a sleeping request notices shutdown within 50 ms */

struct text_entry {
  struct text_entry *next;
  uint64_t hash;
  size_t len;
  unsigned long count;
  char text[];
};

struct fake {
  const char *api_key;
  char **instances; /* NULL: every instance exists */
  size_t n_instances;
  unsigned threads;
  int verbose;
  _Atomic long long latency_us;
  atomic_int stopping;
  atomic_ullong total;     /* sendText requests since the last reset */
  atomic_llong in_flight;  /* sendText requests being handled now */
  pthread_mutex_t lock;    /* guards everything below */
  unsigned long long sent; /* 201 answers */
  unsigned long long by_status[MAX_STATUS];
  unsigned long long duplicates; /* texts whose count went past 1 */
  struct text_entry **buckets;
  size_t n_buckets, distinct;
};

/* --- helpers --------------------------------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n)
{
  uint64_t h = 14695981039346656037ULL;
  for(size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static uint64_t next_random(void)
{
  /* splitmix64, one stream per worker thread, seeded from the kernel */
  static _Thread_local uint64_t state;
  static _Thread_local int seeded;
  uint64_t z;
  if(!seeded) {
    if(getrandom(&state, sizeof state, 0) != (ssize_t)sizeof state)
      state = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&state;
    seeded = 1;
  }
  z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/* "3EB0" + 36 uppercase hex digits, like the ids of Baileys in Evolution v2 (research §3.1). */
static void new_key_id(char out[41])
{
  static const char hex[] = "0123456789ABCDEF";
  uint64_t r = 0;
  memcpy(out, "3EB0", 4);
  for(int i = 0; i < 36; i++) {
    if(i % 16 == 0)
      r = next_random();
    out[4 + i] = hex[r & 15];
    r >>= 4;
  }
  out[40] = '\0';
}

static void sleep_us(struct fake *f, long long us)
{
  struct timespec until, now, slice;
  if(us <= 0)
    return;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += (time_t)(us / 1000000);
  until.tv_nsec += (long)(us % 1000000) * 1000L;
  if(until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  while(!atomic_load(&f->stopping)) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    if(now.tv_sec > until.tv_sec || (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))
      return;
    slice = now;
    slice.tv_nsec += SLEEP_SLICE_NS;
    if(slice.tv_nsec >= 1000000000L) {
      slice.tv_sec++;
      slice.tv_nsec -= 1000000000L;
    }
    if(slice.tv_sec > until.tv_sec || (slice.tv_sec == until.tv_sec && slice.tv_nsec > until.tv_nsec))
      slice = until;
    while(clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &slice, NULL) == EINTR) {
    }
  }
}

/* Nesting depth of a JSON text, brackets inside strings ignored; stops counting past MAX_DEPTH. */
static int json_depth_ok(const char *s, size_t n)
{
  int depth = 0, in_string = 0;
  for(size_t i = 0; i < n; i++) {
    char c = s[i];
    if(in_string) {
      if(c == '\\')
        i++;
      else if(c == '"')
        in_string = 0;
    } else if(c == '"') {
      in_string = 1;
    } else if(c == '[' || c == '{') {
      if(++depth > MAX_DEPTH)
        return 0;
    } else if(c == ']' || c == '}') {
      depth--;
    }
  }
  return 1;
}

/* --- the text map ------------------------------------------------------------------------------ */

static int map_grow(struct fake *f)
{
  size_t n = f->n_buckets ? f->n_buckets * 2 : 4096;
  struct text_entry **b = calloc(n, sizeof *b);
  if(!b)
    return -1;
  for(size_t i = 0; i < f->n_buckets; i++) {
    struct text_entry *e = f->buckets[i], *next;
    for(; e; e = next) {
      next = e->next;
      e->next = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
    }
  }
  free(f->buckets);
  f->buckets = b;
  f->n_buckets = n;
  return 0;
}

/* Call with f->lock held. */
static void map_count(struct fake *f, const char *text, size_t len)
{
  uint64_t h = fnv1a(text, len);
  struct text_entry *e;
  if(f->n_buckets) {
    for(e = f->buckets[h & (f->n_buckets - 1)]; e; e = e->next) {
      if(e->hash == h && e->len == len && memcmp(e->text, text, len) == 0) {
        if(++e->count == 2)
          f->duplicates++;
        return;
      }
    }
  }
  if(f->distinct >= f->n_buckets && map_grow(f) != 0)
    return;
  e = malloc(sizeof *e + len + 1);
  if(!e)
    return;
  e->hash = h;
  e->len = len;
  e->count = 1;
  memcpy(e->text, text, len);
  e->text[len] = '\0';
  e->next = f->buckets[h & (f->n_buckets - 1)];
  f->buckets[h & (f->n_buckets - 1)] = e;
  f->distinct++;
}

/* Call with f->lock held. */
static void map_clear(struct fake *f)
{
  for(size_t i = 0; i < f->n_buckets; i++) {
    struct text_entry *e = f->buckets[i], *next;
    for(; e; e = next) {
      next = e->next;
      free(e);
    }
  }
  free(f->buckets);
  f->buckets = NULL;
  f->n_buckets = f->distinct = 0;
  f->duplicates = 0;
}

/* --- HTTP plumbing ----------------------------------------------------------------------------- */

/* Whether CivetWeb keeps this connection open after the answer (its should_keep_alive(), less
 * the server-side reasons, which the handlers avoid): HTTP/1.1 unless the client says close,
 * HTTP/1.0 only when it asks for keep-alive. */
static int client_keeps_alive(const struct mg_connection *conn)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *c = mg_get_header(conn, "Connection");
  if(c)
    return strcasecmp(c, "close") != 0 && (strcmp(ri->http_version, "1.0") || !strcasecmp(c, "keep-alive"));
  return strcmp(ri->http_version, "1.0") != 0;
}

/* Sends body (stolen) as JSON with a Content-Length, so the connection stays alive. Status line,
 * headers and body go out in one write: CivetWeb's mg_response_header_* trio makes one send()
 * per header line (7 per answer here, and a stat of /etc/localtime for Date:), which cost this
 * fake more than a third of its throughput. */
static int reply(struct mg_connection *conn, int status, json_t *body)
{
  char *out = body ? json_dumps(body, JSON_COMPACT) : NULL, *msg, head[256];
  size_t n, head_len;
  /* 413 is answered without reading the body, and CivetWeb then closes */
  int keep = status != 413 && client_keeps_alive(conn);
  json_decref(body);
  if(!out) {
    mg_send_http_error(conn, 500, "%s", "out of memory");
    return 500;
  }
  n = strlen(out);
  snprintf(head, sizeof head,
           "HTTP/1.1 %d %.100s\r\nContent-Type: application/json; charset=utf-8\r\n"
           "Content-Length: %zu\r\nConnection: %s\r\n\r\n",
           status, mg_get_response_code_text(conn, status), n, keep ? "keep-alive" : "close");
  head_len = strlen(head);
  msg = malloc(head_len + n);
  if(!msg) {
    free(out);
    mg_send_http_error(conn, 500, "%s", "out of memory");
    return 500;
  }
  memcpy(msg, head, head_len);
  memcpy(msg + head_len, out, n);
  free(out);
  mg_write(conn, msg, head_len + n);
  free(msg);
  return status;
}

static const char *reason(int status)
{
  switch(status) {
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 404: return "Not Found";
  case 413: return "Payload Too Large";
  default: return "Internal Server Error";
  }
}

/* Evolution's error envelope (research §4.1); message is stolen. */
static json_t *envelope(int status, json_t *message)
{
  return json_pack("{s:i,s:s,s:{s:o}}", "status", status, "error", reason(status), "response",
                   "message", message);
}

/* Reads the whole body into a malloc'd buffer (NUL-terminated). Returns 0, or the HTTP status to
 * answer (413 too large, 400 read error). */
static int read_body(struct mg_connection *conn, char **out, size_t *out_len)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *expect = mg_get_header(conn, "Expect");
  size_t cap, len = 0;
  char *buf;
  int n = 0;
  *out = NULL;
  *out_len = 0;
  if(ri->content_length > MAX_BODY) {
    mg_disable_connection_keep_alive(conn);
    return 413;
  }
  if(expect && !strcasecmp(expect, "100-continue"))
    mg_printf(conn, "HTTP/1.1 100 Continue\r\n\r\n");
  cap = ri->content_length >= 0 ? (size_t)ri->content_length + 1 : 4096;
  buf = malloc(cap);
  if(!buf)
    return 500;
  for(;;) {
    if(len + 1 >= cap) {
      char *bigger;
      if(cap > MAX_BODY) {
        free(buf);
        mg_disable_connection_keep_alive(conn);
        return 413;
      }
      bigger = realloc(buf, cap * 2);
      if(!bigger) {
        free(buf);
        return 500;
      }
      buf = bigger;
      cap *= 2;
    }
    n = mg_read(conn, buf + len, cap - 1 - len);
    if(n <= 0)
      break;
    len += (size_t)n;
  }
  if(n < 0) {
    free(buf);
    return 400;
  }
  if(len > MAX_BODY) {
    free(buf);
    return 413;
  }
  buf[len] = '\0';
  *out = buf;
  *out_len = len;
  return 0;
}

static void count_status(struct fake *f, int status)
{
  pthread_mutex_lock(&f->lock);
  if(status >= 0 && status < MAX_STATUS)
    f->by_status[status]++;
  pthread_mutex_unlock(&f->lock);
}

static int is_json_type(const char *ctype)
{
  size_t n;
  if(!ctype)
    return 0;
  while(*ctype == ' ')
    ctype++;
  n = strcspn(ctype, "; ");
  if(n == 16 && !strncasecmp(ctype, "application/json", 16))
    return 1;
  return n > 17 && !strncasecmp(ctype, "application/", 12) && !strncasecmp(ctype + n - 5, "+json", 5);
}

static int blank(const char *s, size_t n)
{
  for(size_t i = 0; i < n; i++) {
    if(!s[i] || !strchr(" \t\n\v\f\r", s[i]))
      return 0;
  }
  return 1;
}

/* --- POST /message/sendText/{instance} ------------------------------------------------------- */

static int send_text_checked(struct mg_connection *conn, struct fake *f, const char *instance)
{
  const char *apikey;
  char *raw = NULL, key_id[41], jid[160];
  size_t raw_len, jl = 0;
  json_t *body = NULL, *number, *text, *delay, *preview, *errors, *answer;
  const char *num;
  long long wait_us;
  int rc, status;

  rc = read_body(conn, &raw, &raw_len);
  if(rc) {
    json_t *msg = json_pack("[s]", rc == 413 ? "request entity too large" : "cannot read the body");
    return reply(conn, rc, envelope(rc, msg));
  }
  /* body-parser: only JSON content types are parsed; anything else leaves the body {} */
  if(is_json_type(mg_get_header(conn, "Content-Type")) && !blank(raw, raw_len)) {
    json_error_t je;
    je.position = 0;
    if(json_depth_ok(raw, raw_len))
      body = json_loadb(raw, raw_len, JSON_ALLOW_NUL, &je);
    if(!body || !(json_is_object(body) || json_is_array(body))) {
      char msg[80];
      snprintf(msg, sizeof msg, "Unexpected token in JSON at position %d", body ? 0 : je.position);
      json_decref(body);
      free(raw);
      return reply(conn, 400,
                   json_pack("{s:i,s:s,s:{s:s}}", "status", 400, "error", "Internal Server Error",
                             "response", "message", msg));
    }
  } else {
    body = json_object();
  }
  free(raw);

  if(f->instances) {
    size_t i;
    for(i = 0; i < f->n_instances && strcmp(f->instances[i], instance); i++) {
    }
    if(i == f->n_instances) {
      char msg[300];
      snprintf(msg, sizeof msg, "The \"%.250s\" instance does not exist", instance);
      json_decref(body);
      return reply(conn, 404, envelope(404, json_pack("[s]", msg)));
    }
  }
  apikey = mg_get_header(conn, "apikey");
  if(!apikey || strcmp(apikey, f->api_key)) {
    json_decref(body);
    return reply(conn, 401, envelope(401, json_string("Unauthorized")));
  }
  if(!json_is_object(body)) {
    json_decref(body);
    return reply(conn, 400, envelope(400, json_pack("[[s]]", "instance is not of a type(s) object")));
  }
  /* jsonschema's order: property types, then required properties (research §4.2) */
  number = json_object_get(body, "number");
  text = json_object_get(body, "text");
  delay = json_object_get(body, "delay");
  preview = json_object_get(body, "linkPreview");
  errors = json_array();
  if(number && !json_is_string(number))
    json_array_append_new(errors, json_string("Invalid format"));
  if(text && !json_is_string(text))
    json_array_append_new(errors, json_string("text is not of a type(s) string"));
  if(delay && !json_is_integer(delay))
    json_array_append_new(errors, json_string("Enter a value in milliseconds"));
  if(preview && !json_is_boolean(preview))
    json_array_append_new(errors, json_string("linkPreview is not of a type(s) boolean"));
  if(!number)
    json_array_append_new(errors, json_string("instance requires property \"number\""));
  if(!text)
    json_array_append_new(errors, json_string("instance requires property \"text\""));
  if(json_array_size(errors)) {
    json_decref(body);
    return reply(conn, 400, envelope(400, json_pack("[o]", errors)));
  }
  json_decref(errors);
  if(blank(json_string_value(text), json_string_length(text))) {
    json_decref(body);
    return reply(conn, 400, envelope(400, json_pack("[s]", "Text is required")));
  }

  wait_us = atomic_load(&f->latency_us);
  if(delay && json_integer_value(delay) > 0)
    wait_us += json_integer_value(delay) * 1000;
  sleep_us(f, wait_us);

  /* createJid, the common case: the digits of the number (research §2.3) */
  for(num = json_string_value(number); *num && jl < sizeof jid - 20; num++) {
    if(*num >= '0' && *num <= '9')
      jid[jl++] = *num;
  }
  memcpy(jid + jl, "@s.whatsapp.net", sizeof "@s.whatsapp.net");
  new_key_id(key_id);
  answer = json_pack("{s:{s:s,s:b,s:s},s:s,s:s,s:{s:O},s:s,s:I,s:s,s:s}", "key", "remoteJid", jid,
                     "fromMe", 1, "id", key_id, "pushName", "Você", "status", "PENDING", "message",
                     "conversation", text, "messageType", "conversation", "messageTimestamp",
                     (json_int_t)time(NULL), "instanceId", "bench", "source", "unknown");
  pthread_mutex_lock(&f->lock);
  f->sent++;
  map_count(f, json_string_value(text), json_string_length(text));
  pthread_mutex_unlock(&f->lock);
  json_decref(body);
  status = reply(conn, 201, answer);
  return status;
}

static int send_text(struct mg_connection *conn, struct fake *f, const char *instance)
{
  int status;
  atomic_fetch_add(&f->total, 1);
  atomic_fetch_add(&f->in_flight, 1);
  status = send_text_checked(conn, f, instance);
  count_status(f, status);
  atomic_fetch_sub(&f->in_flight, 1);
  return status;
}

/* --- control API ------------------------------------------------------------------------------ */

static int stats(struct mg_connection *conn, struct fake *f)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *qs = ri->query_string;
  char flag[8] = "", prefix[512] = "";
  int with_texts = 0, prefix_len = -1;
  json_t *by_status = json_object(), *out;
  if(qs) {
    if(mg_get_var(qs, strlen(qs), "texts", flag, sizeof flag) > 0)
      with_texts = strcmp(flag, "0") && strcmp(flag, "false");
    prefix_len = mg_get_var(qs, strlen(qs), "prefix", prefix, sizeof prefix);
  }
  pthread_mutex_lock(&f->lock);
  for(int s = 0; s < MAX_STATUS; s++) {
    if(f->by_status[s]) {
      char key[8];
      snprintf(key, sizeof key, "%d", s);
      json_object_set_new(by_status, key, json_integer((json_int_t)f->by_status[s]));
    }
  }
  out = json_pack("{s:I,s:I,s:I,s:o,s:I,s:I}", "total", (json_int_t)atomic_load(&f->total),
                  "in_flight", (json_int_t)atomic_load(&f->in_flight), "sent", (json_int_t)f->sent,
                  "by_status", by_status, "duplicates", (json_int_t)f->duplicates, "distinct",
                  (json_int_t)f->distinct);
  if(out && with_texts) {
    json_t *texts = json_object();
    for(size_t i = 0; i < f->n_buckets; i++) {
      for(struct text_entry *e = f->buckets[i]; e; e = e->next) {
        if(prefix_len > 0 && (e->len < (size_t)prefix_len || memcmp(e->text, prefix, (size_t)prefix_len)))
          continue;
        json_object_setn_new_nocheck(texts, e->text, e->len, json_integer((json_int_t)e->count));
      }
    }
    json_object_set_new(out, "sent_by_text", texts);
  }
  pthread_mutex_unlock(&f->lock);
  return reply(conn, 200, out);
}

static json_t *config_view(struct fake *f)
{
  json_t *inst = f->instances ? json_array() : json_null(); /* null: every instance exists */
  for(size_t i = 0; i < f->n_instances; i++)
    json_array_append_new(inst, json_string(f->instances[i]));
  return json_pack("{s:f,s:o,s:i}", "latency_ms", (double)atomic_load(&f->latency_us) / 1000.0,
                   "instances", inst, "threads", (int)f->threads);
}

static int configure(struct mg_connection *conn, struct fake *f)
{
  char *raw = NULL;
  size_t len;
  json_t *cfg, *lat;
  json_error_t je;
  const char *key;
  json_t *value;
  int rc = read_body(conn, &raw, &len);
  if(rc)
    return reply(conn, rc, json_pack("{s:s}", "error", "cannot read the body"));
  cfg = json_depth_ok(raw, len) ? json_loadb(raw, len, 0, &je) : NULL;
  free(raw);
  if(!json_is_object(cfg)) {
    json_decref(cfg);
    return reply(conn, 400, json_pack("{s:s}", "error", "the config body must be a JSON object"));
  }
  json_object_foreach(cfg, key, value) {
    if(strcmp(key, "latency_ms")) {
      char msg[300];
      snprintf(msg, sizeof msg, "unknown config key %.200s (this fake takes only latency_ms)", key);
      json_decref(cfg);
      return reply(conn, 400, json_pack("{s:s}", "error", msg));
    }
  }
  lat = json_object_get(cfg, "latency_ms");
  if(lat) {
    if(!json_is_number(lat) || json_number_value(lat) < 0 || json_number_value(lat) > 3600000) {
      json_decref(cfg);
      return reply(conn, 400, json_pack("{s:s}", "error", "latency_ms must be a number from 0 to 3600000"));
    }
    atomic_store(&f->latency_us, (long long)(json_number_value(lat) * 1000.0 + 0.5));
  }
  json_decref(cfg);
  return reply(conn, 200, config_view(f));
}

static int control(struct mg_connection *conn, struct fake *f, const char *method, const char *path)
{
  char route[64];
  size_t n = strlen(path);
  while(n > 1 && path[n - 1] == '/')
    n--;
  if(n >= sizeof route)
    n = sizeof route - 1;
  memcpy(route, path, n);
  route[n] = '\0';
  if(!strcmp(route, "/_fake/stats") && !strcmp(method, "GET"))
    return stats(conn, f);
  if(!strcmp(route, "/_fake/config") && !strcmp(method, "GET"))
    return reply(conn, 200, config_view(f));
  if(!strcmp(route, "/_fake/config") && !strcmp(method, "POST"))
    return configure(conn, f);
  if(!strcmp(route, "/_fake/reset") && !strcmp(method, "POST")) {
    pthread_mutex_lock(&f->lock);
    map_clear(f);
    f->sent = 0;
    memset(f->by_status, 0, sizeof f->by_status);
    atomic_store(&f->total, 0);
    pthread_mutex_unlock(&f->lock);
    return reply(conn, 200, json_pack("{s:b}", "ok", 1));
  }
  {
    char msg[200];
    snprintf(msg, sizeof msg, "no control route %s %.150s", method, path);
    return reply(conn, 404, json_pack("{s:s}", "error", msg));
  }
}

/* --- routing ----------------------------------------------------------------------------------- */

/* Drains an unread request body so the connection can be kept alive. */
static void discard_body(struct mg_connection *conn)
{
  char buf[1024];
  while(mg_read(conn, buf, sizeof buf) > 0) {
  }
}

static int route(struct mg_connection *conn, void *cbdata)
{
  struct fake *f = cbdata;
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *path = ri->local_uri ? ri->local_uri : "/";
  const char *method = ri->request_method;
  static const char send_prefix[] = "/message/sendText/";
  size_t sp = sizeof send_prefix - 1;
  char msg[300];

  if(f->verbose)
    fprintf(stderr, "%s %s\n", method, ri->request_uri);
  if(!strncmp(path, "/_fake/", 7))
    return control(conn, f, method, path);
  /* Express routes are case-insensitive and take an optional trailing slash */
  if(!strcmp(method, "POST") && !strncasecmp(path, send_prefix, sp) && path[sp] && path[sp] != '/') {
    char instance[256];
    size_t n = strcspn(path + sp, "/");
    if(n < sizeof instance && (path[sp + n] == '\0' || !strcmp(path + sp + n, "/"))) {
      memcpy(instance, path + sp, n);
      instance[n] = '\0';
      return send_text(conn, f, instance);
    }
  }
  discard_body(conn);
  if(!strcmp(method, "GET") && !strcmp(path, "/"))
    return reply(conn, 200, json_pack("{s:i,s:s}", "status", 200, "message",
                                      "Welcome to the Evolution API (bench fake)"));
  snprintf(msg, sizeof msg, "Cannot %s %.200s%s%.60s", method, ri->request_uri,
           ri->query_string ? "?" : "", ri->query_string ? ri->query_string : "");
  return reply(conn, 404, envelope(404, json_pack("[s]", msg)));
}

static int on_log(const struct mg_connection *conn, const char *message)
{
  (void)conn;
  fprintf(stderr, "bench_fake_evolution: civetweb: %s\n", message);
  return 1;
}

/* --- main -------------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
  fprintf(out,
          "usage: bench_fake_evolution [--host 127.0.0.1] [--port 0] [--port-file PATH]\n"
          "         [--api-key KEY] [--instances a,b] [--latency-ms N] [--threads 256] [--verbose]\n"
          "A fast fake Evolution API (sendText happy path, apikey and schema errors) for the\n"
          "benchmark; --port 0 picks a free port, --port-file receives it (written atomically).\n"
          "--instances: only these exist (default: any). --threads: concurrent connections, and\n"
          "so the number of requests whose latency can overlap.\n");
}

static int parse_num(const char *s, double min, double max, double *out)
{
  char *end;
  double v;
  if(!s || !*s)
    return -1;
  errno = 0;
  v = strtod(s, &end);
  if(errno || *end || v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

static int split_instances(struct fake *f, const char *list)
{
  char *copy = strdup(list), *save = NULL, *tok;
  if(!copy)
    return -1;
  for(tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char **grown = realloc(f->instances, (f->n_instances + 1) * sizeof *grown);
    if(!grown) {
      free(copy);
      return -1;
    }
    f->instances = grown;
    f->instances[f->n_instances] = strdup(tok);
    if(!f->instances[f->n_instances]) {
      free(copy);
      return -1;
    }
    f->n_instances++;
  }
  free(copy);
  return 0;
}

static int write_port_file(const char *path, int port)
{
  char tmp[4096];
  FILE *fp;
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  fp = fopen(tmp, "w");
  if(!fp)
    return -1;
  fprintf(fp, "%d\n", port);
  if(fclose(fp) != 0 || rename(tmp, path) != 0) {
    unlink(tmp);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv)
{
  static struct fake f;
  const char *host = "127.0.0.1", *port_file = NULL;
  double port = 0, latency = 0, threads = 256;
  char listen[300], nthreads[16], etext[256] = "";
  unsigned ecode = 0;
  struct mg_callbacks cb;
  struct mg_init_data init;
  struct mg_error_data error;
  struct mg_context *ctx;
  struct mg_server_port ports[4];
  sigset_t sigs;
  int sig = 0, n_ports, rc = 0;

  f.api_key = "fake-api-key";
  for(int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if(!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if(!strcmp(a, "--verbose")) {
      f.verbose = 1;
      continue;
    } else if(!v) {
      bad = 1;
    } else if(!strcmp(a, "--host")) {
      host = v;
    } else if(!strcmp(a, "--port")) {
      bad = parse_num(v, 0, 65535, &port);
    } else if(!strcmp(a, "--port-file")) {
      port_file = v;
    } else if(!strcmp(a, "--api-key")) {
      f.api_key = v;
    } else if(!strcmp(a, "--instances")) {
      bad = split_instances(&f, v);
    } else if(!strcmp(a, "--latency-ms")) {
      bad = parse_num(v, 0, 3600000, &latency);
    } else if(!strcmp(a, "--threads")) {
      bad = parse_num(v, 1, 10000, &threads);
    } else {
      bad = 1;
    }
    if(bad) {
      fprintf(stderr, "bench_fake_evolution: bad argument %s%s%s\n", a, v ? " " : "", v ? v : "");
      usage(stderr);
      return 2;
    }
    i++;
  }
  atomic_store(&f.latency_us, (long long)(latency * 1000.0 + 0.5));
  f.threads = (unsigned)threads;
  pthread_mutex_init(&f.lock, NULL);
  snprintf(listen, sizeof listen, "%s:%d", host, (int)port);
  snprintf(nthreads, sizeof nthreads, "%u", f.threads);

  /* Workers inherit this mask; the main thread takes the signals with sigwait. */
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);

  const char *opts[] = {"listening_ports", listen, "num_threads", nthreads, "enable_keep_alive", "yes",
                        "keep_alive_timeout_ms", "30000", "request_timeout_ms", "30000",
                        "tcp_nodelay", "1", "listen_backlog", "1024", "connection_queue", "1024",
                        NULL};
  memset(&cb, 0, sizeof cb);
  cb.log_message = on_log;
  init.callbacks = &cb;
  init.user_data = &f;
  init.configuration_options = opts;
  error.code = &ecode;
  error.text = etext;
  error.text_buffer_size = sizeof etext;
  mg_init_library(0);
  ctx = mg_start2(&init, &error);
  if(!ctx) {
    fprintf(stderr, "bench_fake_evolution: cannot listen on %s: %s\n", listen, etext);
    return 1;
  }
  mg_set_request_handler(ctx, "/", route, &f);
  n_ports = mg_get_server_ports(ctx, 4, ports);
  if(n_ports < 1 || ports[0].port <= 0) {
    fprintf(stderr, "bench_fake_evolution: cannot tell the listening port\n");
    rc = 1;
  } else if(port_file && write_port_file(port_file, ports[0].port) != 0) {
    fprintf(stderr, "bench_fake_evolution: cannot write %s: %s\n", port_file, strerror(errno));
    rc = 1;
  } else {
    printf("bench_fake_evolution listening on %s:%d (%u threads, latency %.1f ms)\n", host,
           ports[0].port, f.threads, latency);
    fflush(stdout);
    while(sigwait(&sigs, &sig) != 0) {
    }
  }
  atomic_store(&f.stopping, 1);
  mg_stop(ctx);
  mg_exit_library();
  map_clear(&f);
  for(size_t i = 0; i < f.n_instances; i++)
    free(f.instances[i]);
  free(f.instances);
  pthread_mutex_destroy(&f.lock);
  return rc;
}
