/* msg-api's HTTP framing and answers: the JSON error shape, one-write responses, bodies read
 * within their limits. */
#include "http_internal.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "util.h"

/* Set once a stop signal came: answers then close their connections, so clients reconnect to
 * another replica instead of keeping this one busy. One server per process. */
static atomic_int shutting_down;
/* The framing limits, set once by http_framing_setup before the server starts. */
static size_t max_header_size = 16 * 1024;
static int64_t body_timeout_ms = 10000;

void http_set_shutting_down(void)
{
  atomic_store(&shutting_down, 1);
}

const atomic_int *http_stop_flag(void)
{
  return &shutting_down;
}

void http_framing_setup(size_t header_limit, uint64_t body_timeout)
{
  max_header_size = header_limit;
  body_timeout_ms = (int64_t)body_timeout;
}

/* Whether CivetWeb keeps the connection open after this answer (its should_keep_alive(), less
 * the server-side reasons this file avoids): HTTP/1.1 unless the client says close, HTTP/1.0
 * only when it asks for keep-alive. A 413 is answered without reading the body, and a 408 or
 * 431 leaves the connection's state unknown, so those connections always close. */
static int keeps_alive(const struct mg_connection *conn, int status)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *c = mg_get_header(conn, "Connection");
  if(status == 408 || status == 413 || status == 431 || atomic_load(&shutting_down))
    return 0;
  if(c)
    return strcasecmp(c, "close") && (strcmp(ri->http_version, "1.0") || !strcasecmp(c, "keep-alive"));
  return strcmp(ri->http_version, "1.0") != 0;
}

/* Sends status line, headers and body in one write: CivetWeb's mg_response_header_* functions
 * make one send() per header line, which cost a large share of the accept path's CPU. */
static void send_response(struct mg_connection *conn, int status, const char *type,
                          const char *cache, const char *body, size_t len,
                          const char *extra_name, const char *extra_value, int closing)
{
  int head_only = !strcmp(mg_get_request_info(conn)->request_method, "HEAD");
  struct http_request_ctx *ctx = http_request_ctx(conn);
  char head[640];
  /* Every answer names its request (X-Request-Id): what the client sent, or ours. */
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: %s\r\n%s%s%s%s%s%s%sConnection: %s\r\n\r\n",
                   status, mg_get_response_code_text(conn, status), type, len, cache,
                   extra_name ? extra_name : "", extra_name ? ": " : "",
                   extra_name ? extra_value : "", extra_name ? "\r\n" : "",
                   ctx ? "X-Request-Id: " : "", ctx ? ctx->request_id : "", ctx ? "\r\n" : "",
                   !closing && keeps_alive(conn, status) ? "keep-alive" : "close");
  char *msg;
  if(n < 0 || (size_t)n >= sizeof head)
    return;
  if(ctx)
    ctx->bytes += (size_t)n + (head_only ? 0 : len);
  if(head_only || !len) {
    mg_write(conn, head, (size_t)n);
    return;
  }
  msg = malloc((size_t)n + len);
  if(!msg) {
    /* Out of memory: two writes still answer correctly. */
    mg_write(conn, head, (size_t)n);
    mg_write(conn, body, len);
    return;
  }
  memcpy(msg, head, (size_t)n);
  memcpy(msg + n, body, len);
  mg_write(conn, msg, (size_t)n + len);
  free(msg);
}

void http_send_json(struct mg_connection *conn, int status, const char *body,
                      const char *extra_name, const char *extra_value)
{
  send_response(conn, status, "application/json; charset=utf-8", "no-store", body,
                strlen(body), extra_name, extra_value, 0);
}

int http_send_static(struct mg_connection *conn, const char *type, const char *body,
                       size_t len)
{
  send_response(conn, 200, type, "no-cache", body, len, NULL, NULL, 0);
  return 200;
}

/* Sends a json_t (stolen) as the body. */
int http_reply(struct mg_connection *conn, int status, json_t *doc, const char *extra_name,
                 const char *extra_value)
{
  char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  if(!body) {
    http_send_json(conn, 500,
              "{\"success\":false,\"error\":{\"code\":\"internal\",\"message\":\"out of "
              "memory\"}}",
              NULL, NULL);
    return 500;
  }
  http_send_json(conn, status, body, extra_name, extra_value);
  free(body);
  return status;
}

/* The error document; message and field are made valid UTF-8 first (a text cut inside a
 * character, or bytes a client sent, would make jansson refuse it and the answer a 500). */
static json_t *error_doc(const char *code, const char *message, const char *field)
{
  char *msg = strdup(message), *fld = field && *field ? strdup(field) : NULL;
  json_t *err = NULL;
  if(msg && (fld || !field || !*field)) {
    util_utf8_sanitize(msg);
    err = json_pack("{s:s, s:s}", "code", code, "message", msg);
    if(err && fld) {
      util_utf8_sanitize(fld);
      json_object_set_new(err, "field", json_string(fld));
    }
  }
  free(msg);
  free(fld);
  return err ? json_pack("{s:b, s:o}", "success", 0, "error", err) : NULL;
}

int http_reply_error(struct mg_connection *conn, int status, const char *code,
                     const char *message, const char *field, const char *extra_name,
                     const char *extra_value)
{
  return http_reply(conn, status, error_doc(code, message, field), extra_name, extra_value);
}

/* An error after which the connection cannot be trusted to be framed right: answered with
 * "Connection: close", and CivetWeb told to close it, so bytes that follow (a body it might
 * read as another request) are never parsed. */
static int reply_closing(struct mg_connection *conn, int status, const char *code,
                         const char *message)
{
  json_t *doc = error_doc(code, message, NULL);
  char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  mg_disable_connection_keep_alive(conn);
  if(!body) {
    send_response(conn, status, "application/json; charset=utf-8", "no-store", "", 0, NULL,
                  NULL, 1);
    return status;
  }
  send_response(conn, status, "application/json; charset=utf-8", "no-store", body,
                strlen(body), NULL, NULL, 1);
  free(body);
  return status;
}

/* 1 when `v` is a Content-Length value: digits only (CivetWeb's strtoll would also take "+5",
 * " 5" or "5, 7" and read a length the sender did not mean). */
static int is_length(const char *v)
{
  if(!*v)
    return 0;
  for(; *v; v++)
    if(*v < '0' || *v > '9')
      return 0;
  return 1;
}

int http_check_framing(struct mg_connection *conn)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *length = NULL;
  size_t bytes = strlen(ri->request_method) + strlen(ri->request_uri) +
                 (ri->query_string ? strlen(ri->query_string) + 1 : 0) + 12;
  int n_te = 0;
  char msg[160];
  /* CivetWeb keeps MG_MAX_HEADERS (64) header lines and drops the rest unseen, Content-Length
   * included: the body would then be read as a second request. 64 kept lines may mean more
   * were sent, so 64 is refused too. */
  if(ri->num_headers >= MG_MAX_HEADERS) {
    snprintf(msg, sizeof msg, "at most %d header fields are accepted", MG_MAX_HEADERS - 1);
    return reply_closing(conn, 431, "headers_too_large", msg);
  }
  for(int i = 0; i < ri->num_headers; i++) {
    const char *name = ri->http_headers[i].name, *value = ri->http_headers[i].value;
    bytes += strlen(name) + strlen(value) + 4;
    if(!strcasecmp(name, "Transfer-Encoding"))
      n_te++;
    else if(!strcasecmp(name, "Content-Length")) {
      if(!is_length(value) || (length && strcmp(length, value)))
        return reply_closing(conn, 400, "bad_framing",
                             "Content-Length must be one decimal length, given once");
      length = value;
    }
  }
  if(bytes > max_header_size) {
    snprintf(msg, sizeof msg, "the request line and headers are larger than %zu bytes",
             max_header_size);
    return reply_closing(conn, 431, "headers_too_large", msg);
  }
  /* Both, or two codings, are how requests are smuggled past a proxy that reads them the other
   * way (RFC 9112 §6.1). */
  if(n_te > 1 || (n_te && length))
    return reply_closing(conn, 400, "bad_framing",
                         "Transfer-Encoding with Content-Length, or twice, is refused");
  return 0;
}

static int is_json_type(const char *ct)
{
  size_t n = strlen("application/json");
  if(!ct)
    return 0;
  while(*ct == ' ')
    ct++;
  return !strncasecmp(ct, "application/json", n) &&
         (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static int is_this_connection(int fd, const struct mg_request_info *ri)
{
  struct sockaddr_storage peer, local;
  socklen_t plen = sizeof peer, llen = sizeof local;
  char text[INET6_ADDRSTRLEN];
  const void *addr;
  unsigned pport, lport;
  if(getpeername(fd, (struct sockaddr *)&peer, &plen) ||
     getsockname(fd, (struct sockaddr *)&local, &llen) || peer.ss_family != local.ss_family)
    return 0;
  if(peer.ss_family == AF_INET) {
    addr = &((struct sockaddr_in *)&peer)->sin_addr;
    pport = ntohs(((struct sockaddr_in *)&peer)->sin_port);
    lport = ntohs(((struct sockaddr_in *)&local)->sin_port);
  }
  else if(peer.ss_family == AF_INET6) {
    addr = &((struct sockaddr_in6 *)&peer)->sin6_addr;
    pport = ntohs(((struct sockaddr_in6 *)&peer)->sin6_port);
    lport = ntohs(((struct sockaddr_in6 *)&local)->sin6_port);
  }
  else
    return 0;
  return (int)pport == ri->remote_port && (int)lport == ri->server_port &&
         inet_ntop(peer.ss_family, addr, text, sizeof text) && !strcmp(text, ri->remote_addr);
}

/* The socket of this request's connection, which CivetWeb does not expose: the descriptor
 * whose peer and local ports and peer address are the request's (a TCP connection is one such
 * pair). Looked up at the connection's first request and kept as its connection data. -1 when
 * not found. */
static int conn_socket(const struct mg_connection *conn)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  intptr_t kept = (intptr_t)mg_get_user_connection_data(conn);
  DIR *d;
  struct dirent *e;
  int found = -1;
  /* Kept for this connection's life: every new one starts with none (http.c's
   * init_connection), so the next requests on it need no system call to find it. */
  if(kept > 0)
    return (int)(kept - 1);
  if(!(d = opendir("/proc/self/fd")))
    return -1;
  while(found < 0 && (e = readdir(d))) {
    char *end;
    long fd = strtol(e->d_name, &end, 10);
    if(!*end && end != e->d_name && fd > 2 && fd < INT_MAX && is_this_connection((int)fd, ri))
      found = (int)fd;
  }
  closedir(d);
  if(found >= 0)
    mg_set_user_connection_data(conn, (void *)(intptr_t)(found + 1));
  return found;
}

/* ---- the body deadline -------------------------------------------------------------------
 *
 * mg_read returns only once it has every byte asked for, however slowly they come, so a client
 * trickling its body would hold a worker as long as it likes. Each worker thread has a watch
 * slot; while it reads a body the slot holds the socket and the deadline, and one watchdog
 * thread shuts the socket's read side when the deadline passes, which ends the read at once
 * (the answer, a 408, can still be written). Reading the whole body in one call this way costs
 * nothing extra; asking the socket what it holds before each read (FIONREAD) cost a system call
 * per byte for every body CivetWeb had already buffered with its headers, the usual case. */
#define WATCH_TICK_MS 100

struct body_watch {
  struct body_watch *next;
  pthread_mutex_t lock; /* held by the watchdog while it may touch fd, so fd stays open */
  int fd;               /* -1 when not reading a body */
  int fired;            /* the deadline passed and the read side was shut */
  int64_t deadline_ms;  /* monotonic */
};

static pthread_mutex_t watches_lock = PTHREAD_MUTEX_INITIALIZER;
static struct body_watch *watches; /* every worker's slot, kept for the process's life */
static pthread_once_t watchdog_once = PTHREAD_ONCE_INIT;
static int watchdog_running;
static _Thread_local struct body_watch *my_watch;

static void *watchdog(void *arg)
{
  struct timespec tick = {0, WATCH_TICK_MS * 1000000L};
  (void)arg;
  for(;;) {
    int64_t now;
    struct body_watch *w;
    nanosleep(&tick, NULL);
    now = util_mono_ms();
    pthread_mutex_lock(&watches_lock);
    for(w = watches; w; w = w->next) {
      pthread_mutex_lock(&w->lock);
      if(w->fd >= 0 && !w->fired && now > w->deadline_ms) {
        shutdown(w->fd, SHUT_RD);
        w->fired = 1;
      }
      pthread_mutex_unlock(&w->lock);
    }
    pthread_mutex_unlock(&watches_lock);
  }
  return NULL;
}

static void start_watchdog(void)
{
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  watchdog_running = !pthread_create(&t, &attr, watchdog, NULL);
  pthread_attr_destroy(&attr);
}

/* This thread's slot armed with fd and deadline, or NULL (no watchdog: out of memory or no
 * thread), in which case the body is read without a deadline of its own. */
static struct body_watch *watch_arm(int fd, int64_t deadline_ms)
{
  struct body_watch *w = my_watch;
  pthread_once(&watchdog_once, start_watchdog);
  if(!watchdog_running)
    return NULL;
  if(!w) {
    if(!(w = calloc(1, sizeof *w)))
      return NULL;
    pthread_mutex_init(&w->lock, NULL);
    w->fd = -1;
    pthread_mutex_lock(&watches_lock);
    w->next = watches;
    watches = w;
    pthread_mutex_unlock(&watches_lock);
    my_watch = w;
  }
  pthread_mutex_lock(&w->lock);
  w->fd = fd;
  w->fired = 0;
  w->deadline_ms = deadline_ms;
  pthread_mutex_unlock(&w->lock);
  return w;
}

/* Disarms w; returns whether its deadline had passed. After this the watchdog no longer
 * touches the socket, so CivetWeb may close it. */
static int watch_disarm(struct body_watch *w)
{
  int fired;
  if(!w)
    return 0;
  pthread_mutex_lock(&w->lock);
  fired = w->fired;
  w->fd = -1;
  pthread_mutex_unlock(&w->lock);
  return fired;
}

/* Reads the whole body into a malloc'd buffer, refusing more than max bytes without reading it
 * all. Returns 0 and the buffer, or an HTTP status (413, 400, 408) for the caller to answer. */
static int read_body(struct mg_connection *conn, size_t max, char **out, size_t *out_len)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *expect = mg_get_header(conn, "Expect");
  size_t cap, len = 0;
  char *buf;
  int n = 0, fd, late;
  struct body_watch *w;
  int64_t deadline = util_mono_ms() + body_timeout_ms;
  if(ri->content_length > 0 && (unsigned long long)ri->content_length > max)
    return 413;
  /* CivetWeb sends no automatic 100 Continue to request handlers: a client that asked for it
   * would wait about a second before sending the body. */
  if(expect && !strcasecmp(expect, "100-continue"))
    mg_printf(conn, "HTTP/1.1 100 Continue\r\n\r\n");
  cap = ri->content_length >= 0 ? (size_t)ri->content_length + 1 : max + 1;
  buf = malloc(cap);
  if(!buf)
    return 503;
  /* The whole body keeps its own deadline (see body_watch): the worker is held at most
   * api.body_timeout and one watchdog tick. */
  fd = conn_socket(conn);
  w = fd >= 0 ? watch_arm(fd, deadline) : NULL;
  while(len < cap) {
    if((n = mg_read(conn, buf + len, cap - len)) <= 0)
      break;
    len += (size_t)n;
  }
  late = watch_disarm(w);
  if(late || util_mono_ms() > deadline) {
    free(buf);
    return 408;
  }
  if(n < 0 || (ri->content_length >= 0 && len < (size_t)ri->content_length)) {
    free(buf);
    return 400;
  }
  if(len > max) {
    free(buf);
    return 413;
  }
  *out = buf;
  *out_len = len;
  return 0;
}

/* Reads a JSON request body of at most `max` bytes. Returns 0 with the body (caller frees), or
 * the status of the error answer it already sent (415 not JSON, 413 too large, 400, 503). */
int http_read_json(struct mg_connection *conn, size_t max, char **body, size_t *len)
{
  int rc;
  if(!is_json_type(mg_get_header(conn, "Content-Type")))
    return http_reply_error(conn, 415, "unsupported_media_type",
                       "the request body must be JSON (Content-Type: application/json)", NULL,
                       NULL, NULL);
  rc = read_body(conn, max, body, len);
  if(rc == 413) {
    char msg[128];
    /* The rest of the body is not read, so the connection cannot be reused. */
    mg_disable_connection_keep_alive(conn);
    snprintf(msg, sizeof msg, "the request body is larger than %zu bytes", max);
    return http_reply_error(conn, 413, "payload_too_large", msg, NULL, NULL, NULL);
  }
  if(rc == 408)
    return reply_closing(conn, 408, "request_timeout",
                         "the request body did not arrive in time (api.body_timeout)");
  if(rc)
    return http_reply_error(conn, rc, rc == 400 ? "bad_request" : "unavailable",
                       rc == 400 ? "the request body could not be read" : "out of memory",
                       NULL, NULL, NULL);
  return 0;
}
