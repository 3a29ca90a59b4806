/* msg-api: accepts send requests over HTTP, publishes them as jobs with publisher confirms, and
 * answers task status from a cache fed by the status stream. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "http.h"
#include "log.h"
#include "publisher.h"
#include "snapshots.h"
#include "status_reader.h"
#include "task_cache.h"
#include "util.h"

#define PUBLISHER_DRAIN_MS 5000
/* On SIGTERM requests keep being served until none has come for DRAIN_QUIET_MS, at most
 * DRAIN_MAX_MS: under Kubernetes the preStop pause has already moved traffic away. */
#define DRAIN_QUIET_MS 300
#define DRAIN_MAX_MS 5000

static void exit_now(int sig)
{
  (void)sig;
  _exit(130);
}

/* SIGHUP: the log file is opened again (logrotate), and the configuration file read again for
 * its API keys and tenants (key files included). A file with errors changes nothing. */
static void reload(const char *path, struct http_server *http)
{
  struct cfg *fresh = cli_reload(path);
  if(!fresh)
    return;
  if(http_reload(http, fresh))
    log_event(CFG_LOG_ERROR, "SIGHUP: out of memory loading the API keys", NULL);
  else
    log_event(CFG_LOG_INFO, "SIGHUP: API keys reloaded", "path", path, NULL);
  cfg_free(fresh);
}

int main(int argc, char **argv)
{
  int exit_code = 0, sig = 0;
  sigset_t stop_signals;
  char err[512];
  struct cfg *cfg = cli_load(argc, argv, "msg-api",
                             "HTTP API of the messaging service: POST /messages, GET /tasks/{id}.",
                             &exit_code);
  struct task_cache *cache = NULL;
  struct status_reader *reader = NULL;
  struct publisher *publisher = NULL;
  struct snapshot_writer *snapshots = NULL;
  struct http_server *http = NULL;
  struct http_deps deps;
  if(!cfg)
    return exit_code;
  log_setup(cfg->log.level, cfg->log.format, "msg-api");
  if(log_open_file(cfg->log.file)) {
    log_event(CFG_LOG_ERROR, "cannot open log.file", "path", cfg->log.file, "reason",
              strerror(errno), NULL);
    cfg_free(cfg);
    return 1;
  }
  srandom((unsigned)(util_now_ms() ^ getpid()));

  /* Every thread inherits this mask, so only the sigwait below sees the stop signals. */
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

  cache = task_cache_new(cfg->api.cache_max_tasks, (int64_t)cfg->topology.status_retention_ms);
  if(!cache) {
    log_error("out of memory creating the task cache");
    exit_code = 1;
    goto out;
  }
  reader = status_reader_start(cfg, cache, err, sizeof err);
  publisher = reader ? publisher_start(cfg, err, sizeof err) : NULL;
  if(!publisher) {
    log_event(CFG_LOG_ERROR, "cannot start", "reason", err, NULL);
    exit_code = 1;
    goto out;
  }
  status_reader_set_publisher(reader, publisher);
  snapshots = snapshot_writer_start(cfg, cache, reader, err, sizeof err);
  if(!snapshots && err[0]) {
    log_event(CFG_LOG_ERROR, "cannot start", "reason", err, NULL);
    exit_code = 1;
    goto out;
  }
  deps.snapshots = snapshots;
  deps.cfg = cfg;
  deps.publisher = publisher;
  deps.reader = reader;
  deps.cache = cache;
  http = http_start(&deps, err, sizeof err);
  if(!http) {
    log_event(CFG_LOG_ERROR, "cannot start", "reason", err, NULL);
    exit_code = 1;
    goto out;
  }
  log_event(CFG_LOG_INFO, "msg-api started", "listen", cfg->api.listen, "version", MSG_VERSION,
            NULL);

  /* SIGHUP reloads; only a stop signal ends this loop. */
  while(!sigwait(&stop_signals, &sig) && sig == SIGHUP)
    reload(cfg->path, http);
  /* A second signal ends the process at once. */
  signal(SIGTERM, exit_now);
  signal(SIGINT, exit_now);
  pthread_sigmask(SIG_UNBLOCK, &stop_signals, NULL);
  log_event(CFG_LOG_INFO, "stopping: finishing requests in flight", NULL);
  http_drain(http, DRAIN_QUIET_MS, DRAIN_MAX_MS);

out:
  http_stop(http); /* waits for requests in flight, which wait for their confirms */
  snapshot_writer_stop(snapshots); /* reads the reader and the cache */
  /* The reader may be handing callbacks to the publisher: it stops first. */
  status_reader_stop(reader);
  publisher_stop(publisher, PUBLISHER_DRAIN_MS);
  task_cache_free(cache);
  if(!exit_code)
    log_event(CFG_LOG_INFO, "msg-api stopped", NULL);
  cfg_free(cfg);
  return exit_code;
}
