/* What msg-consumer takes again on SIGHUP without a restart: the send rates of the Evolution
 * instances (evolution.rate_limit, .rate_limits, .rate_burst), and the log file. */
#ifndef MSG_RELOAD_H
#define MSG_RELOAD_H

#include "cfg.h"

/* Starts the thread that waits for SIGHUP (which must already be blocked in every thread) and
 * then reads `path` again. `start` is the configuration the daemon started with, borrowed
 * until reload_stop. Returns 0, or -1 when the thread cannot start. */
int reload_start(const char *path, const struct cfg *start);

/* Stops that thread; the rates read last are freed. A no-op when it never started. */
void reload_stop(void);

/* Counts reloads; a lane whose rate was taken at another count takes it again. */
unsigned reload_generation(void);

/* The send rate and burst of `instance` under the configuration read last. Any thread. */
void reload_rate(const char *instance, double *rate, double *burst);

#endif
