/* msg-consumer: takes jobs from the job queue, delivers them through Evolution API, and records
 * each outcome (status event, retry queue or dead queue) before acking. With --dead-letters or
 * --redrive it runs that operator command once instead (admin.c). */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "admin.h"
#include "callbacks.h"
#include "cli.h"
#include "health.h"
#include "log.h"
#include "reload.h"
#include "util.h"
#include "worker.h"

int main(int argc, char **argv)
{
  int exit_code = 0, stop_fd;
  sigset_t stop_signals, hup;
  char err[512];
  struct worker_state state;
  struct health_server *health = NULL;
  struct callbacks_stats cb_stats;
  struct callbacks *callbacks = NULL;
  struct cli_extra admin_opts;
  struct admin *admin = admin_create();
  struct cfg *cfg;
  if(!admin) {
    fputs("msg-consumer: out of memory\n", stderr);
    return 1;
  }
  admin_cli_extra(admin, &admin_opts);
  cfg = cli_load_ext(argc, argv, "msg-consumer",
                     "Delivers queued messages through Evolution API.", &admin_opts, &exit_code);
  if(!cfg) {
    admin_destroy(admin);
    return exit_code;
  }
  log_setup(cfg->log.level, cfg->log.format, "msg-consumer");
  if(admin_requested(admin)) {
    exit_code = admin_run(admin, cfg);
    admin_destroy(admin);
    cfg_free(cfg);
    return exit_code;
  }
  admin_destroy(admin);
  if(log_open_file(cfg->log.file)) {
    log_event(CFG_LOG_ERROR, "cannot open log.file", "path", cfg->log.file, "reason",
              strerror(errno), NULL);
    cfg_free(cfg);
    return 1;
  }
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
  /* SIGHUP too is blocked everywhere, and taken by reload.c's own thread: it reloads the send
   * rates and reopens the log, and never stops the daemon. */
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &hup, NULL);
  if(reload_start(cfg->path, cfg))
    log_event(CFG_LOG_WARN, "cannot start the SIGHUP thread: SIGHUP is ignored", NULL);

  memset(&state, 0, sizeof state);
  memset(&cb_stats, 0, sizeof cb_stats);
  if(!(state.holdoff = holdoff_new())) {
    log_event(CFG_LOG_ERROR, "cannot start", "reason", "out of memory", NULL);
    exit_code = 1;
    goto out;
  }
  atomic_store(&state.loop_at_ms, util_mono_ms());
  health = stop_fd >= 0 ? health_start(cfg, &state, &cb_stats, err, sizeof err) : NULL;
  if(!health) {
    log_event(CFG_LOG_ERROR, "cannot start", "reason", stop_fd < 0 ? "signalfd failed" : err,
              NULL);
    exit_code = 1;
    goto out;
  }
  /* Status callbacks run beside the worker on their own thread and connection; they start
   * draining when the worker does (state.draining). */
  if(cfg->callbacks.secret[0] &&
     !(callbacks = callbacks_start(cfg, &cb_stats, &state.draining, err, sizeof err))) {
    log_event(CFG_LOG_ERROR, "cannot start", "reason", err, NULL);
    exit_code = 1;
    goto out;
  }
  log_event(CFG_LOG_INFO, "msg-consumer started", "health", cfg->consumer.health_listen,
            "evolution", cfg->evolution.url, "callbacks", callbacks ? "on" : "off", "version",
            MSG_VERSION, NULL);
  exit_code = worker_run(cfg, &state, stop_fd);
  /* After a second signal (exit_code 1) the callbacks in flight go back to the queue at once;
   * else they get the rest of their grace period, which a second signal still cuts short. */
  if(callbacks_stop(callbacks, exit_code != 0, stop_fd))
    exit_code = 1;
  callbacks = NULL;
  if(!exit_code)
    log_event(CFG_LOG_INFO, "msg-consumer stopped", NULL);
out:
  callbacks_stop(callbacks, 1, -1);
  health_stop(health);
  holdoff_free(state.holdoff);
  reload_stop();
  if(stop_fd >= 0)
    close(stop_fd);
  curl_global_cleanup();
  cfg_free(cfg);
  return exit_code;
}
