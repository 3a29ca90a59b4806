/* msg-api's HTTP server on CivetWeb: start and stop, and the router that counts every request
 * and hands it to its handler (handlers.c) once routes.c found it and auth.c let it in. */
#include "http_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

/* Compiled in from api/static/ by cmake/embed.cmake. */
extern const char static_openapi_json[], static_docs_html[], static_dashboard_html[];
extern const size_t static_openapi_json_len, static_docs_html_len, static_dashboard_html_len;

static int dispatch(struct mg_connection *conn, struct http_server *srv, int *route_slot);

/* A CivetWeb worker answers one request at a time from start to end on its own thread, so the
 * request being answered is the thread's (the connection's own user data is reply.c's socket
 * cache, which lives across the requests of a connection). */
static _Thread_local struct http_request_ctx *current_request;

struct http_request_ctx *http_request_ctx(struct mg_connection *conn)
{
  return conn ? current_request : NULL;
}

/* The request's id and trace context: the client's when valid (bounded, sanitised), else ours. */
static void begin_request(struct mg_connection *conn, struct http_request_ctx *ctx)
{
  const char *rid = mg_get_header(conn, "X-Request-Id"), *tp = mg_get_header(conn, "traceparent");
  memset(ctx, 0, sizeof *ctx);
  if(rid && trace_request_id_ok(rid))
    snprintf(ctx->request_id, sizeof ctx->request_id, "%s", rid);
  else
    trace_new_request_id(ctx->request_id);
  if(tp && trace_parent_ok(tp))
    snprintf(ctx->traceparent, sizeof ctx->traceparent, "%s", tp);
  else
    trace_new_parent(ctx->traceparent);
}

static int trusted_proxy(const struct cfg *cfg, const char *addr)
{
  for(size_t i = 0; i < cfg->api.n_trusted_proxies; i++)
    if(!strcmp(cfg->api.trusted_proxies[i], addr))
      return 1;
  return 0;
}

/* The client's address: the peer, or, when the peer is a trusted proxy, the last address of
 * X-Forwarded-For that is not one (the ones before it could be anything the client wrote). */
static void client_address(struct mg_connection *conn, const struct cfg *cfg, char *out,
                           size_t len)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *xff = mg_get_header(conn, "X-Forwarded-For");
  snprintf(out, len, "%s", ri->remote_addr);
  if(!xff || !trusted_proxy(cfg, ri->remote_addr))
    return;
  for(const char *end = xff + strlen(xff); end > xff;) {
    const char *start = end;
    char hop[64];
    size_t n;
    while(start > xff && start[-1] != ',')
      start--;
    while(start < end && (*start == ' ' || *start == '\t'))
      start++;
    n = (size_t)(end - start);
    while(n && (start[n - 1] == ' ' || start[n - 1] == '\t'))
      n--;
    if(n && n < sizeof hop) {
      memcpy(hop, start, n);
      hop[n] = '\0';
      snprintf(out, len, "%s", hop);
      if(!trusted_proxy(cfg, hop))
        return;
    }
    end = start > xff ? start - 1 : xff;
  }
}

/* One access log line per request (log.access): the route pattern, never the raw path with a
 * task id in it; the tenant, never the key. */
static void access_log(struct mg_connection *conn, struct http_server *srv,
                       const struct http_request_ctx *ctx, int slot, int status, int64_t us)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  char client[64], st[8], dur[32], bytes[24];
  client_address(conn, srv->deps.cfg, client, sizeof client);
  snprintf(st, sizeof st, "%d", status);
  snprintf(dur, sizeof dur, "%.3f", (double)us / 1e3);
  snprintf(bytes, sizeof bytes, "%zu", ctx->bytes);
  log_event(CFG_LOG_INFO, "request", "method", ri->request_method, "route",
            slot == ROUTE_UNMATCHED ? "unmatched" : ROUTES[slot].pattern, "status", st,
            "duration_ms", dur, "bytes", bytes, "client", client, "tenant",
            ctx->tenant[0] ? ctx->tenant : NULL, "request_id", ctx->request_id, "task_id",
            ctx->task_id[0] ? ctx->task_id : NULL, NULL);
}

/* Every request comes here: given its id, counted and timed by route and status, dispatched,
 * and logged. */
static int route(struct mg_connection *conn, void *arg)
{
  struct http_server *srv = arg;
  struct http_request_ctx ctx;
  int64_t t0 = util_mono_us();
  int slot = ROUTE_UNMATCHED;
  atomic_store_explicit(&srv->last_request_ms, t0 / 1000, memory_order_relaxed);
  atomic_fetch_add(&srv->in_flight, 1);
  begin_request(conn, &ctx);
  current_request = &ctx;
  int status = http_check_framing(conn);
  if(!status)
    status = dispatch(conn, srv, &slot);
  atomic_fetch_sub(&srv->in_flight, 1);
  atomic_fetch_add_explicit(&srv->metrics.requests[slot][http_status_slot(status)], 1,
                            memory_order_relaxed);
  metrics_observe(&srv->metrics.duration[slot], (double)(util_mono_us() - t0) / 1e6);
  if(srv->deps.cfg->log.access)
    access_log(conn, srv, &ctx, slot, status, util_mono_us() - t0);
  current_request = NULL;
  return status;
}

/* The routing table (routes.c) decides 404, 405 and authentication in one place. */
static int dispatch(struct mg_connection *conn, struct http_server *srv, int *route_slot)
{
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *path = ri->local_uri ? ri->local_uri : "/", *param = NULL;
  const struct api_key *who = NULL;
  char allow[64];
  int id = route_find(path, ri->request_method, &param, allow, sizeof allow);
  if(id == ROUTE_NO_PATH)
    return http_reply_error(conn, 404, "not_found", "no such endpoint", NULL, NULL, NULL);
  if(id == ROUTE_NO_METHOD) {
    char msg[96];
    snprintf(msg, sizeof msg, "use %s", allow);
    return http_reply_error(conn, 405, "method_not_allowed", msg, NULL, "Allow", allow);
  }
  *route_slot = id;
  /* Once stopping, no new work: clients retry elsewhere (Retry-After) while what is in flight
   * finishes. Reads and probes are still answered. */
  if(atomic_load(&srv->draining) &&
     (id == ROUTE_MESSAGES || id == ROUTE_BATCH || id == ROUTE_TASK_CANCEL || id == ROUTE_REDRIVE))
    /* Long enough for mg_stop to close the listener before the client is back: a client that
     * returns while it closes would be reset rather than refused. */
    return http_reply_error(conn, 503, "shutting_down", "this server is stopping; retry", NULL,
                       "Retry-After", "5");
  /* Probes, the banner and the documentation stay open so orchestrators and readers need no
   * key. */
  if(!ROUTES[id].open && !(id == ROUTE_METRICS && srv->deps.cfg->api.metrics_public)) {
    if((who = http_authenticate(conn, srv)))
      snprintf(http_request_ctx(conn)->tenant, sizeof http_request_ctx(conn)->tenant, "%s",
               who->tenant);
    if(!who)
      return http_reply_error(conn, 401, "unauthorized",
                              "a valid API key is required (Authorization: Bearer <key> or "
                              "X-API-Key)",
                              NULL, "WWW-Authenticate", "Bearer realm=\"msg-api\"");
    if((who->scopes & ROUTES[id].scope) != ROUTES[id].scope) {
      http_count_tenant(who, 0, 1);
      return http_reply_error(conn, 403, "insufficient_scope",
                              "this API key may not use this endpoint (see its scopes)", NULL,
                              NULL, NULL);
    }
  }
  switch((enum route_id)id) {
  case ROUTE_ROOT:
    return http_reply(conn, 200,
                 json_pack("{s:s, s:s, s:s}", "service", "msg-api", "version", MSG_VERSION,
                           "status", "ok"),
                 NULL, NULL);
  case ROUTE_LIVEZ: return http_reply(conn, 200, json_pack("{s:s}", "status", "ok"), NULL, NULL);
  case ROUTE_READYZ:
    if(http_is_ready(srv))
      return http_reply(conn, 200, json_pack("{s:s}", "status", "ready"), NULL, NULL);
    return http_reply_error(conn, 503, "not_ready", "not connected to the broker or not caught up",
                       NULL, "Retry-After", RETRY_AFTER_S);
  case ROUTE_HEALTH: return http_handle_health(conn, srv);
  case ROUTE_OPENAPI:
    return http_send_static(conn, "application/json; charset=utf-8", static_openapi_json,
                       static_openapi_json_len);
  case ROUTE_DOCS:
    return http_send_static(conn, "text/html; charset=utf-8", static_docs_html, static_docs_html_len);
  case ROUTE_MESSAGES: return http_handle_post_message(conn, srv, who);
  case ROUTE_BATCH: return http_handle_post_batch(conn, srv, who);
  case ROUTE_TASK: return http_handle_get_task(conn, srv, who, param);
  case ROUTE_TASK_CANCEL: return http_handle_cancel_task(conn, srv, who, param);
  case ROUTE_METRICS: return http_handle_metrics(conn, srv);
  case ROUTE_DEAD_LETTERS: return http_handle_dead_letters(conn, srv);
  case ROUTE_REDRIVE: return http_handle_redrive(conn, srv);
  case ROUTE_WEBHOOK: return http_handle_webhook(conn, srv);
  case ROUTE_WORKERS: return http_handle_workers(conn, srv);
  case ROUTE_TASKS: return http_handle_search_tasks(conn, srv, who);
  case ROUTE_STATS: return http_handle_stats(conn, srv, who);
  case ROUTE_DASHBOARD:
    return http_send_static(conn, "text/html; charset=utf-8", static_dashboard_html,
                            static_dashboard_html_len);
  case ROUTE_COUNT: break;
  }
  return http_reply_error(conn, 404, "not_found", "no such endpoint", NULL, NULL, NULL);
}

static int on_log(const struct mg_connection *conn, const char *message)
{
  (void)conn;
  log_event(CFG_LOG_WARN, "http server", "detail", message, NULL);
  return 1;
}

/* Every new connection starts with no connection data: what reply.c keeps there (the socket)
 * belongs to one connection, and a worker serves many in turn. */
static int on_init_connection(const struct mg_connection *conn, void **conn_data)
{
  (void)conn;
  *conn_data = NULL;
  return 0;
}

struct http_server *http_start(const struct http_deps *deps, char *err, size_t errlen)
{
  struct http_server *srv = calloc(1, sizeof *srv);
  struct mg_callbacks cb;
  struct mg_init_data init;
  struct mg_error_data error;
  char threads[16], etext[256] = "", header_ms[24], keep_ms[24], header_buf[24];
  unsigned ecode = 0;
  const char *opts[] = {"listening_ports", deps->cfg->api.listen, "num_threads", threads,
                        "enable_keep_alive", "yes", "keep_alive_timeout_ms", keep_ms,
                        "request_timeout_ms", header_ms, "max_request_size", header_buf,
                        "tcp_nodelay", "1", "listen_backlog", "1024", NULL};
  if(!srv) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  srv->deps = *deps;
  srv->started_ms = util_mono_ms();
  srv->in_doubt = in_doubt_new(IN_DOUBT_MAX);
  if(!srv->in_doubt) {
    snprintf(err, errlen, "out of memory");
    free(srv);
    return NULL;
  }
  pthread_mutex_init(&srv->idem_lock, NULL);
  pthread_cond_init(&srv->idem_done, NULL);
  pthread_mutex_init(&srv->keys_lock, NULL);
  if(http_keys_load(srv, deps->cfg)) {
    snprintf(err, errlen, "out of memory");
    in_doubt_free(srv->in_doubt);
    free(srv);
    return NULL;
  }
  snprintf(threads, sizeof threads, "%u", deps->cfg->api.threads);
  /* CivetWeb's request_timeout_ms bounds the wait for the whole request line and headers (and
   * each read of the body, which read_body bounds as a whole). Its header buffer is twice
   * api.max_header_size, so a request just over the limit is still read and answered 431;
   * one past the buffer CivetWeb refuses itself (400, closed). */
  snprintf(header_ms, sizeof header_ms, "%llu",
           (unsigned long long)deps->cfg->api.header_timeout_ms);
  snprintf(keep_ms, sizeof keep_ms, "%llu",
           (unsigned long long)deps->cfg->api.keep_alive_timeout_ms);
  snprintf(header_buf, sizeof header_buf, "%zu", 2 * deps->cfg->api.max_header_size + 1024);
  http_framing_setup(deps->cfg->api.max_header_size, deps->cfg->api.body_timeout_ms);
  memset(&cb, 0, sizeof cb);
  cb.log_message = on_log;
  cb.init_connection = on_init_connection;
  init.callbacks = &cb;
  init.user_data = srv;
  init.configuration_options = opts;
  error.code = &ecode;
  error.text = etext;
  error.text_buffer_size = sizeof etext;
  srv->ctx = mg_start2(&init, &error);
  if(!srv->ctx) {
    snprintf(err, errlen, "cannot listen on %s: %s", deps->cfg->api.listen, etext);
    in_doubt_free(srv->in_doubt);
    free(srv);
    return NULL;
  }
  mg_set_request_handler(srv->ctx, "/", route, srv);
  publisher_on_late_outcome(deps->publisher, idem_on_late_outcome, srv);
  return srv;
}

void http_drain(struct http_server *srv, int quiet_ms, int max_ms)
{
  int64_t start = util_mono_ms();
  atomic_store(&srv->draining, 1);
  http_set_shutting_down();
  /* CivetWeb's mg_stop drops connections accepted but not yet read: keep answering (503 for new
   * work, with Retry-After, on closing connections) while requests still come, and stop once
   * clients have backed off (load balancers also see /readyz fail and move away). */
  /* Requests in flight are waited for too: once mg_stop begins CivetWeb writes nothing more,
   * so an answer still being made (a redrive that just stopped) would be lost. */
  while(util_mono_ms() - start < max_ms &&
        (atomic_load(&srv->in_flight) > 0 ||
         util_mono_ms() - atomic_load(&srv->last_request_ms) < quiet_ms)) {
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
}

void http_stop(struct http_server *srv)
{
  if(!srv)
    return;
  mg_stop(srv->ctx);
  /* The publisher outlives the server: it must not report into a freed table. */
  publisher_on_late_outcome(srv->deps.publisher, NULL, NULL);
  pthread_mutex_destroy(&srv->idem_lock);
  pthread_cond_destroy(&srv->idem_done);
  http_keys_free(srv);
  pthread_mutex_destroy(&srv->keys_lock);
  in_doubt_free(srv->in_doubt);
  free(srv);
}

int http_reload(struct http_server *srv, const struct cfg *fresh)
{
  return http_keys_load(srv, fresh);
}
