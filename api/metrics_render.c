/* msg-api's /metrics page in the Prometheus text format. */
#include "http_internal.h"

#include <stdio.h>

#include "util.h"

/* Statuses counted by their own label value; anything else counts as "other". */
static const int COUNTED_STATUSES[N_COUNTED_STATUSES] = {200, 202, 400, 401, 404, 405, 409, 413,
                                                         415, 422, 500, 503, 504};
static const char *const PUBLISH_OUTCOME_NAMES[] = {"ack", "rejected", "timeout", "unavailable",
                                                    "lost"};
const enum publish_outcome PUBLISH_OUTCOME_OF[] = {
  [PUB_OK] = PUBLISH_ACK, [PUB_UNAVAILABLE] = PUBLISH_UNAVAILABLE,
  [PUB_TIMEOUT] = PUBLISH_TIMEOUT, [PUB_REJECTED] = PUBLISH_REJECTED,
  [PUB_UNKNOWN] = PUBLISH_LOST};

/* route and method: two routes may share a pattern (GET and DELETE /tasks/{task_id}), and
 * without the method their series would be one, which Prometheus keeps only once. */
static void route_label(char *buf, size_t len, int route_slot, const char *extra)
{
  int unmatched = route_slot == ROUTE_UNMATCHED;
  snprintf(buf, len, "route=\"%s\",method=\"%s\"%s",
           unmatched ? "unmatched" : ROUTES[route_slot].pattern,
           unmatched ? "other" : ROUTES[route_slot].method, extra);
}

int http_handle_metrics(struct mg_connection *conn, struct http_server *srv)
{
  struct http_metrics *m = &srv->metrics;
  struct metrics_out o = {0};
  char labels[128];
  int64_t last = status_reader_last_event_ms(srv->deps.reader);
  int status;
  metrics_family(&o, "msg_api_http_requests_total", "counter",
                 "HTTP requests answered, by route and status.");
  for(int r = 0; r <= ROUTE_COUNT; r++)
    for(size_t i = 0; i < N_STATUSES; i++) {
      unsigned long long n = atomic_load(&m->requests[r][i]);
      char status_label[48];
      if(!n)
        continue;
      if(i < N_STATUSES - 1)
        snprintf(status_label, sizeof status_label, ",status=\"%d\"", COUNTED_STATUSES[i]);
      else
        snprintf(status_label, sizeof status_label, ",status=\"other\"");
      route_label(labels, sizeof labels, r, status_label);
      metrics_sample(&o, "msg_api_http_requests_total", labels, (double)n);
    }
  metrics_family(&o, "msg_api_http_request_duration_seconds", "histogram",
                 "Time to answer an HTTP request, by route.");
  for(int r = 0; r <= ROUTE_COUNT; r++)
    if(atomic_load(&m->duration[r].count)) {
      route_label(labels, sizeof labels, r, "");
      metrics_hist_samples(&o, "msg_api_http_request_duration_seconds", labels, &m->duration[r]);
    }
  metrics_family(&o, "msg_api_publishes_total", "counter",
                 "Jobs handed to the publisher, by outcome (ack = confirmed by the broker).");
  for(int i = 0; i < PUBLISH_OUTCOMES; i++) {
    snprintf(labels, sizeof labels, "outcome=\"%s\"", PUBLISH_OUTCOME_NAMES[i]);
    metrics_sample(&o, "msg_api_publishes_total", labels, (double)atomic_load(&m->publishes[i]));
  }
  metrics_family(&o, "msg_api_publish_confirm_duration_seconds", "histogram",
                 "Time from handing a job to the publisher to its confirm (or the give-up).");
  metrics_hist_samples(&o, "msg_api_publish_confirm_duration_seconds", "", &m->confirm);
  metrics_family(&o, "msg_api_idempotent_replays_total", "counter",
                 "Requests answered from an earlier one with the same Idempotency-Key.");
  metrics_sample(&o, "msg_api_idempotent_replays_total", "", (double)atomic_load(&m->replays));
  metrics_family(&o, "msg_api_delivery_receipts_total", "counter",
                 "Delivery receipts from Evolution API webhooks that told something new.");
  metrics_sample(&o, "msg_api_delivery_receipts_total", "", (double)atomic_load(&m->receipts));
  metrics_family(&o, "msg_api_webhooks_refused_total", "counter",
                 "Webhook requests refused for a wrong or missing secret or JWT.");
  metrics_sample(&o, "msg_api_webhooks_refused_total", "",
                 (double)atomic_load(&m->webhooks_refused));
  metrics_family(&o, "msg_api_publish_in_flight", "gauge", "Jobs waiting for their confirm.");
  metrics_sample(&o, "msg_api_publish_in_flight", "",
                 (double)publisher_in_flight(srv->deps.publisher));
  metrics_family(&o, "msg_api_broker_connections_total", "counter",
                 "Successful broker connections, by connection (more than 1 = reconnects).");
  metrics_sample(&o, "msg_api_broker_connections_total", "connection=\"publisher\"",
                 (double)publisher_connects(srv->deps.publisher));
  metrics_sample(&o, "msg_api_broker_connections_total", "connection=\"status\"",
                 (double)status_reader_connects(srv->deps.reader));
  metrics_family(&o, "msg_api_ready", "gauge", "1 when ready to accept messages.");
  metrics_sample(&o, "msg_api_ready", "", http_is_ready(srv));
  metrics_family(&o, "msg_api_task_cache_tasks", "gauge", "Tasks held in the status cache.");
  metrics_sample(&o, "msg_api_task_cache_tasks", "", (double)task_cache_size(srv->deps.cache));
  metrics_family(&o, "msg_api_status_events_total", "counter",
                 "Status events read from the stream.");
  metrics_sample(&o, "msg_api_status_events_total", "",
                 (double)status_reader_events(srv->deps.reader));
  {
    struct snapshot_writer_stats w;
    snapshot_writer_stats(srv->deps.snapshots, &w);
    metrics_family(&o, "msg_api_snapshot_writer", "gauge",
                   "1 while this replica is the one that writes the cache snapshots.");
    metrics_sample(&o, "msg_api_snapshot_writer", "", w.holder);
    metrics_family(&o, "msg_api_snapshots_written_total", "counter",
                   "Cache snapshots written to the broker, by outcome.");
    metrics_sample(&o, "msg_api_snapshots_written_total", "outcome=\"ok\"", (double)w.written);
    metrics_sample(&o, "msg_api_snapshots_written_total", "outcome=\"failed\"",
                   (double)w.failed);
    metrics_family(&o, "msg_api_snapshot_tasks", "gauge", "Tasks in the last snapshot written.");
    metrics_sample(&o, "msg_api_snapshot_tasks", "", (double)w.last_tasks);
    metrics_family(&o, "msg_api_snapshot_duration_seconds", "gauge",
                   "How long the last snapshot took to write.");
    metrics_sample(&o, "msg_api_snapshot_duration_seconds", "", w.last_seconds);
  }
  metrics_family(&o, "msg_api_status_stream_last_event_age_seconds", "gauge",
                 "Seconds since the status stream last delivered an event (-1 before any).");
  metrics_sample(&o, "msg_api_status_stream_last_event_age_seconds", "",
                 last ? (double)(util_now_ms() - last) / 1000.0 : -1);
  {
    static const char *const NAMES[] = {"msg_api_tenant_requests_total",
                                         "msg_api_tenant_messages_accepted_total",
                                         "msg_api_tenant_refused_total"};
    static const char *const HELP[] = {
      "Requests made with the keys of each tenant (api.keys).",
      "Messages accepted for each tenant (202, or an accepted batch item).",
      "Requests refused at a tenant's bounds: a scope or instance it lacks (403), another "
      "tenant's task (404)."};
    size_t n = atomic_load(&srv->n_tenant_stats);
    for(int f = 0; f < 3; f++) {
      metrics_family(&o, NAMES[f], "counter", HELP[f]);
      for(size_t i = 0; i < n; i++) {
        const struct tenant_stats *t = &srv->tenant_stats[i];
        snprintf(labels, sizeof labels, "tenant=\"%s\"", t->name); /* [A-Za-z0-9._-] only */
        metrics_sample(&o, NAMES[f], labels,
                       (double)atomic_load(f == 0 ? &t->requests
                                           : f == 1 ? &t->accepted : &t->refused));
      }
    }
  }
  metrics_family(&o, "msg_api_task_success_duration_seconds", "histogram",
                 "Time from a task's 202 to its SUCCESS, retries included, for the tasks this "
                 "replica saw succeed since it caught up with the status stream.");
  metrics_hist_samples(&o, "msg_api_task_success_duration_seconds", "",
                       status_reader_success_latency(srv->deps.reader));
  metrics_family(&o, "msg_api_uptime_seconds", "gauge", "Seconds since start.");
  metrics_sample(&o, "msg_api_uptime_seconds", "",
                 (double)(util_mono_ms() - srv->started_ms) / 1000.0);
  metrics_process(&o, "msg-api", MSG_VERSION);
  if(o.oom) {
    metrics_out_free(&o);
    return http_reply_error(conn, 500, "internal", "out of memory", NULL, NULL, NULL);
  }
  status = http_send_static(conn, "text/plain; version=0.0.4; charset=utf-8", o.buf, o.len);
  metrics_out_free(&o);
  return status;
}

size_t http_status_slot(int status)
{
  for(size_t i = 0; i < N_STATUSES - 1; i++)
    if(COUNTED_STATUSES[i] == status)
      return i;
  return N_STATUSES - 1;
}
