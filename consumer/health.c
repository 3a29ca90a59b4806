/* The consumer's small HTTP listener for probes: /livez, /readyz, /health. */
#include "health.h"

#include <civetweb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "util.h"

/* The loop turns at least every second; a loop silent this long is stuck. */
#define LOOP_STALL_MS 10000

struct health_server {
  const struct cfg *cfg;
  struct worker_state *state;
  struct callbacks_stats *callbacks;
  struct mg_context *ctx;
  int64_t started_ms;
};

static int send_text(struct mg_connection *conn, int status, const char *body)
{
  mg_response_header_start(conn, status);
  mg_response_header_add(conn, "Content-Type", "application/json; charset=utf-8", -1);
  mg_response_header_add(conn, "Cache-Control", "no-store", -1);
  {
    char len[24];
    snprintf(len, sizeof len, "%zu", strlen(body));
    mg_response_header_add(conn, "Content-Length", len, -1);
  }
  mg_response_header_send(conn);
  mg_write(conn, body, strlen(body));
  return status;
}

static int send_metrics(struct mg_connection *conn, struct health_server *srv, int ready)
{
  struct worker_state *s = srv->state;
  struct metrics_out o = {0};
  char len[24];
  metrics_family(&o, "msg_consumer_deliveries_total", "counter",
                 "Deliveries finished, by outcome (success, retry, parked, duplicate, cancelled).");
  metrics_sample(&o, "msg_consumer_deliveries_total", "outcome=\"success\"",
                 (double)atomic_load(&s->succeeded));
  metrics_sample(&o, "msg_consumer_deliveries_total", "outcome=\"retry\"",
                 (double)atomic_load(&s->retried));
  metrics_sample(&o, "msg_consumer_deliveries_total", "outcome=\"parked\"",
                 (double)atomic_load(&s->parked));
  metrics_sample(&o, "msg_consumer_deliveries_total", "outcome=\"duplicate\"",
                 (double)atomic_load(&s->duplicates));
  metrics_sample(&o, "msg_consumer_deliveries_total", "outcome=\"cancelled\"",
                 (double)atomic_load(&s->cancelled));
  metrics_family(&o, "msg_consumer_redeliveries_total", "counter",
                 "Deliveries the broker marked as redelivered.");
  metrics_sample(&o, "msg_consumer_redeliveries_total", "", (double)atomic_load(&s->redelivered));
  metrics_family(&o, "msg_consumer_evolution_config_faults_total", "counter",
                 "Evolution API answers that mean our key or licence is wrong (401, 403, 503 "
                 "LICENSE_REQUIRED).");
  metrics_sample(&o, "msg_consumer_evolution_config_faults_total", "",
                 (double)atomic_load(&s->config_faults));
  metrics_family(&o, "msg_consumer_evolution_request_duration_seconds", "histogram",
                 "Time from sending a sendText request to its answer or failure.");
  metrics_hist_samples(&o, "msg_consumer_evolution_request_duration_seconds", "",
                       &s->evolution_latency);
  metrics_family(&o, "msg_consumer_delivery_duration_seconds", "histogram",
                 "Time from receiving a job to acking it with its outcome recorded.");
  metrics_hist_samples(&o, "msg_consumer_delivery_duration_seconds", "", &s->delivery_latency);
  metrics_family(&o, "msg_consumer_rate_limit_waiting", "gauge",
                 "Jobs of rate-limited instances held here until their instance may send again.");
  metrics_sample(&o, "msg_consumer_rate_limit_waiting", "",
                 (double)atomic_load(&s->lane_waiting));
  metrics_family(&o, "msg_consumer_rate_limit_forwarded_total", "counter",
                 "Jobs moved from the job queue to the lane of their rate-limited instance.");
  metrics_sample(&o, "msg_consumer_rate_limit_forwarded_total", "",
                 (double)atomic_load(&s->lane_forwarded));
  {
    struct callbacks_stats *cb = srv->callbacks;
    metrics_family(&o, "msg_consumer_callbacks_total", "counter",
                   "Status callbacks finished, by outcome (delivered: 2xx; retried: sent to a "
                   "retry queue; parked: sent to the dead queue).");
    metrics_sample(&o, "msg_consumer_callbacks_total", "outcome=\"delivered\"",
                   (double)atomic_load(&cb->delivered));
    metrics_sample(&o, "msg_consumer_callbacks_total", "outcome=\"retried\"",
                   (double)atomic_load(&cb->retried));
    metrics_sample(&o, "msg_consumer_callbacks_total", "outcome=\"parked\"",
                   (double)atomic_load(&cb->parked));
    metrics_family(&o, "msg_consumer_callbacks_in_flight", "gauge",
                   "Status callbacks taken from the queue and not yet acked.");
    metrics_sample(&o, "msg_consumer_callbacks_in_flight", "",
                   (double)atomic_load(&cb->in_flight));
    metrics_family(&o, "msg_consumer_callbacks_connected", "gauge",
                   "1 when the callback dispatcher is connected and consuming.");
    metrics_sample(&o, "msg_consumer_callbacks_connected", "", atomic_load(&cb->connected));
    metrics_family(&o, "msg_consumer_callback_request_duration_seconds", "histogram",
                   "Time from sending a status callback to its answer or failure.");
    metrics_hist_samples(&o, "msg_consumer_callback_request_duration_seconds", "", &cb->latency);
  }
  metrics_family(&o, "msg_consumer_held", "gauge",
                 "Jobs held here, unacked, while Evolution API is out (they spend no attempt).");
  metrics_sample(&o, "msg_consumer_held", "", (double)atomic_load(&s->held));
  metrics_family(&o, "msg_consumer_history_waiting", "gauge",
                 "Jobs older than consumer.history_window waiting, unacked, until the status "
                 "stream's history is read after a start.");
  metrics_sample(&o, "msg_consumer_history_waiting", "",
                 (double)atomic_load(&s->history_waiting));
  metrics_family(&o, "msg_consumer_holdoff_hops_total", "counter",
                 "Jobs of a held Evolution instance sent through a delay queue to wait.");
  metrics_sample(&o, "msg_consumer_holdoff_hops_total", "", (double)atomic_load(&s->hops));
  metrics_family(&o, "msg_consumer_in_doubt_lookups_total", "counter",
                 "In-doubt jobs (a send may have gone out) looked up in findMessages, by result "
                 "(reconciled: found, recorded as sent; other: not found or the lookup failed).");
  metrics_sample(&o, "msg_consumer_in_doubt_lookups_total", "result=\"reconciled\"",
                 (double)atomic_load(&s->reconciled));
  metrics_sample(&o, "msg_consumer_in_doubt_lookups_total", "result=\"other\"",
                 (double)(atomic_load(&s->lookups) - atomic_load(&s->reconciled)));
  holdoff_metrics(s->holdoff, &o);
  metrics_family(&o, "msg_consumer_in_flight", "gauge", "Deliveries being worked on.");
  metrics_sample(&o, "msg_consumer_in_flight", "", (double)atomic_load(&s->in_flight));
  metrics_family(&o, "msg_consumer_broker_connections_total", "counter",
                 "Successful broker connections (more than 1 = reconnects).");
  metrics_sample(&o, "msg_consumer_broker_connections_total", "",
                 (double)atomic_load(&s->connects));
  metrics_family(&o, "msg_consumer_ready", "gauge", "1 when consuming jobs.");
  metrics_sample(&o, "msg_consumer_ready", "", ready);
  metrics_family(&o, "msg_consumer_evolution_responses_total", "counter",
                 "sendText outcomes by code: \"sent\", Evolution's error codes such as "
                 "\"number_not_on_whatsapp\", \"evolution_http_503\", transport failures.");
  for(size_t i = 0; i < atomic_load(&s->n_codes); i++) {
    char labels[80];
    /* Codes are [a-z0-9_] (evo.c): safe in a label. */
    snprintf(labels, sizeof labels, "code=\"%s\"", s->code_names[i]);
    metrics_sample(&o, "msg_consumer_evolution_responses_total", labels,
                   (double)atomic_load(&s->code_counts[i]));
  }
  metrics_family(&o, "msg_consumer_parked_total", "counter",
                 "Jobs parked in the dead queue, by x-failure-reason.");
  for(int i = 0; i < WORKER_PARK_REASONS; i++) {
    char labels[64];
    snprintf(labels, sizeof labels, "reason=\"%s\"", WORKER_PARK_REASON_NAMES[i]);
    metrics_sample(&o, "msg_consumer_parked_total", labels, (double)atomic_load(&s->parked_by[i]));
  }
  metrics_family(&o, "msg_consumer_uptime_seconds", "gauge", "Seconds since start.");
  metrics_sample(&o, "msg_consumer_uptime_seconds", "",
                 (double)(util_mono_ms() - srv->started_ms) / 1000.0);
  metrics_process(&o, "msg-consumer", MSG_VERSION);
  if(o.oom) {
    metrics_out_free(&o);
    return send_text(conn, 500, "{\"status\":\"out of memory\"}");
  }
  snprintf(len, sizeof len, "%zu", o.len);
  mg_response_header_start(conn, 200);
  mg_response_header_add(conn, "Content-Type", "text/plain; version=0.0.4; charset=utf-8", -1);
  mg_response_header_add(conn, "Content-Length", len, -1);
  mg_response_header_send(conn);
  mg_write(conn, o.buf, o.len);
  metrics_out_free(&o);
  return 200;
}

static int route(struct mg_connection *conn, void *arg)
{
  struct health_server *srv = arg;
  struct worker_state *s = srv->state;
  const struct mg_request_info *ri = mg_get_request_info(conn);
  const char *path = ri->local_uri ? ri->local_uri : "/";
  int64_t since = util_mono_ms() - atomic_load(&s->loop_at_ms);
  int live = since < LOOP_STALL_MS;
  int ready = live && atomic_load(&s->connected) && !atomic_load(&s->draining);
  char body[768];
  if(strcmp(ri->request_method, "GET"))
    return send_text(conn, 405,
                     "{\"success\":false,\"error\":{\"code\":\"method_not_allowed\",\"message\":"
                     "\"use GET\"}}");
  if(!strcmp(path, "/metrics"))
    return send_metrics(conn, srv, ready);
  if(!strcmp(path, "/livez"))
    return send_text(conn, live ? 200 : 503, live ? "{\"status\":\"ok\"}" : "{\"status\":\"stalled\"}");
  if(!strcmp(path, "/readyz"))
    return send_text(conn, ready ? 200 : 503,
                     ready ? "{\"status\":\"ready\"}" : "{\"status\":\"not ready\"}");
  if(!strcmp(path, "/health") || !strcmp(path, "/")) {
    /* The hold-off table is of any size (one entry per held instance): allocated. */
    char *evolution = holdoff_json(s->holdoff), *whole;
    int n, held = s->holdoff->server.held;
    n = snprintf(body, sizeof body,
             "{\"status\":\"%s\",\"service\":\"msg-consumer\",\"version\":\"%s\","
             "\"uptime_seconds\":%lld,\"broker\":{\"connected\":%s},\"draining\":%s,"
             "\"in_flight\":%lld,\"held\":%lld,\"succeeded\":%lld,\"retried\":%lld,"
             "\"parked\":%lld,\"redelivered\":%lld,\"duplicates_skipped\":%lld,"
             "\"reconciled\":%lld,\"history\":{\"loaded\":%s,\"waiting\":%lld},"
             "\"evolution\":",
             ready ? (held ? "degraded" : "ok") : "unavailable", MSG_VERSION,
             (long long)((util_mono_ms() - srv->started_ms) / 1000),
             atomic_load(&s->connected) ? "true" : "false",
             atomic_load(&s->draining) ? "true" : "false", (long long)atomic_load(&s->in_flight),
             (long long)atomic_load(&s->held), (long long)atomic_load(&s->succeeded),
             (long long)atomic_load(&s->retried), (long long)atomic_load(&s->parked),
             (long long)atomic_load(&s->redelivered), (long long)atomic_load(&s->duplicates),
             (long long)atomic_load(&s->reconciled),
             atomic_load(&s->history_loaded) ? "true" : "false",
             (long long)atomic_load(&s->history_waiting));
    whole = evolution && n > 0 && (size_t)n < sizeof body
                ? malloc((size_t)n + strlen(evolution) + 2)
                : NULL;
    if(!whole) {
      free(evolution);
      return send_text(conn, 500, "{\"status\":\"out of memory\"}");
    }
    sprintf(whole, "%s%s}", body, evolution);
    free(evolution);
    n = send_text(conn, ready ? 200 : 503, whole);
    free(whole);
    return n;
  }
  return send_text(conn, 404,
                   "{\"success\":false,\"error\":{\"code\":\"not_found\",\"message\":\"no such "
                   "endpoint\"}}");
}

static int on_log(const struct mg_connection *conn, const char *message)
{
  (void)conn;
  (void)message;
  return 1; /* the probes' own errors are not worth a log line */
}

struct health_server *health_start(const struct cfg *cfg, struct worker_state *state,
                                   struct callbacks_stats *callbacks, char *err, size_t errlen)
{
  struct health_server *srv = calloc(1, sizeof *srv);
  struct mg_callbacks cb;
  struct mg_init_data init;
  struct mg_error_data error;
  char etext[256] = "", threads[16], timeout[24];
  unsigned ecode = 0;
  /* Probes come every few seconds and must never queue behind a slow client: enough workers,
   * a short deadline for the request to arrive, and no keep-alive holding a worker idle. */
  const char *opts[] = {"listening_ports", cfg->consumer.health_listen, "num_threads", threads,
                        "request_timeout_ms", timeout, "enable_keep_alive", "no", NULL};
  snprintf(threads, sizeof threads, "%u", cfg->consumer.health_threads);
  snprintf(timeout, sizeof timeout, "%llu", (unsigned long long)cfg->consumer.health_timeout_ms);
  if(!srv) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  srv->cfg = cfg;
  srv->state = state;
  srv->callbacks = callbacks;
  srv->started_ms = util_mono_ms();
  memset(&cb, 0, sizeof cb);
  cb.log_message = on_log;
  init.callbacks = &cb;
  init.user_data = srv;
  init.configuration_options = opts;
  error.code = &ecode;
  error.text = etext;
  error.text_buffer_size = sizeof etext;
  srv->ctx = mg_start2(&init, &error);
  if(!srv->ctx) {
    snprintf(err, errlen, "cannot listen on %s: %s", cfg->consumer.health_listen, etext);
    free(srv);
    return NULL;
  }
  mg_set_request_handler(srv->ctx, "/", route, srv);
  return srv;
}

void health_stop(struct health_server *srv)
{
  if(!srv)
    return;
  mg_stop(srv->ctx);
  free(srv);
}
