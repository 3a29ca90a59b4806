/* msg-consumer's SIGHUP: a thread of its own waits for the signal, so the worker's loop and its
 * signalfd (stop signals only) are untouched; the rates it reads go to the lanes through
 * reload_rate. */
#include "reload.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "cli.h"
#include "log.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* guards fresh and started */
static const struct cfg *start_cfg;
static struct cfg *fresh; /* owned: the configuration of the last good reload, or NULL */
static atomic_uint generation;
static pthread_t thread;
static int started;
static const char *cfg_path;

static void reload_now(void)
{
  struct cfg *c = cli_reload(cfg_path);
  if(!c)
    return;
  pthread_mutex_lock(&lock);
  cfg_free(fresh);
  fresh = c;
  atomic_fetch_add(&generation, 1);
  pthread_mutex_unlock(&lock);
  log_event(CFG_LOG_INFO, "SIGHUP: send rates reloaded", "path", cfg_path, NULL);
}

/* SIGUSR2 (sent by reload_stop) ends the thread; SIGHUP reloads. */
static void *run(void *arg)
{
  sigset_t set;
  int sig = 0;
  (void)arg;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR2);
  while(!sigwait(&set, &sig) && sig == SIGHUP)
    reload_now();
  return NULL;
}

int reload_start(const char *path, const struct cfg *start)
{
  sigset_t set;
  cfg_path = path;
  start_cfg = start;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  if(pthread_create(&thread, NULL, run, NULL))
    return -1;
  started = 1;
  return 0;
}

void reload_stop(void)
{
  if(!started)
    return;
  pthread_kill(thread, SIGUSR2);
  pthread_join(thread, NULL);
  started = 0;
  pthread_mutex_lock(&lock);
  cfg_free(fresh);
  fresh = NULL;
  pthread_mutex_unlock(&lock);
}

unsigned reload_generation(void)
{
  return atomic_load(&generation);
}

void reload_rate(const char *instance, double *rate, double *burst)
{
  const struct cfg *c;
  pthread_mutex_lock(&lock);
  c = fresh ? fresh : start_cfg;
  *rate = cfg_instance_rate(c, instance);
  *burst = c->evolution.rate_burst;
  pthread_mutex_unlock(&lock);
}
