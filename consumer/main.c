/* msg-consumer: takes jobs from the job queue, delivers them through Evolution API, and records
 * each outcome (status event, retry queue or dead queue) before acking. */
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "cli.h"
#include "health.h"
#include "log.h"
#include "util.h"
#include "worker.h"

int main(int argc, char **argv)
{
  int exit_code = 0, stop_fd;
  sigset_t stop_signals;
  char err[512];
  struct worker_state state;
  struct health_server *health;
  struct cfg *cfg = cli_load(argc, argv, "msg-consumer",
                             "Delivers queued messages through Evolution API.", &exit_code);
  if(!cfg)
    return exit_code;
  log_setup(cfg->log.level, cfg->log.format, "msg-consumer");
  srandom((unsigned)(util_now_ms() ^ getpid()));
  if(curl_global_init(CURL_GLOBAL_DEFAULT)) {
    log_error("cannot initialise libcurl");
    cfg_free(cfg);
    return 1;
  }
  /* Blocked in every thread, the stop signals arrive only through the loop's signalfd. */
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
  stop_fd = signalfd(-1, &stop_signals, SFD_NONBLOCK | SFD_CLOEXEC);

  memset(&state, 0, sizeof state);
  atomic_store(&state.loop_at_ms, util_mono_ms());
  health = stop_fd >= 0 ? health_start(cfg, &state, err, sizeof err) : NULL;
  if(!health) {
    log_event(CFG_LOG_ERROR, "cannot start", "reason", stop_fd < 0 ? "signalfd failed" : err,
              NULL);
    exit_code = 1;
    goto out;
  }
  log_event(CFG_LOG_INFO, "msg-consumer started", "health", cfg->consumer.health_listen,
            "evolution", cfg->evolution.url, "version", MSG_VERSION, NULL);
  exit_code = worker_run(cfg, &state, stop_fd);
  if(!exit_code)
    log_event(CFG_LOG_INFO, "msg-consumer stopped", NULL);
out:
  health_stop(health);
  if(stop_fd >= 0)
    close(stop_fd);
  curl_global_cleanup();
  cfg_free(cfg);
  return exit_code;
}
