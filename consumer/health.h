/* The consumer's small HTTP listener for probes: /livez, /readyz, /health. */
#ifndef MSG_HEALTH_H
#define MSG_HEALTH_H

#include <stddef.h>

#include "callbacks.h"
#include "cfg.h"
#include "worker.h"

struct health_server;

/* Starts listening on cfg->consumer.health_listen; cfg, state and callbacks (the status-callback
 * dispatcher's counters, reported in /metrics whether or not it runs) are borrowed. NULL with a
 * reason in err. */
struct health_server *health_start(const struct cfg *cfg, struct worker_state *state,
                                   struct callbacks_stats *callbacks, char *err, size_t errlen);

/* Stops the listener and frees it; NULL is a no-op. */
void health_stop(struct health_server *srv);

#endif
