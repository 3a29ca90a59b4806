/* Status-callback dispatcher of msg-consumer: a thread of its own with its own AMQP connection
 * and curl multi handle. It consumes topology.callback_queue and POSTs each callback, signed,
 * to the URL it names; failures go through the callback retry queues, and what keeps failing
 * (or names a host that is not allowed) is parked in "<callback_queue>.dead".
 *
 * A callback message (any publisher, default exchange, routing key topology.callback_queue,
 * persistent): body = the exact JSON to POST; message_id = the event id; header
 * x-callback-url (string) = the target URL; header x-attempt (integer, absent = 1). */
#ifndef MSG_CALLBACKS_H
#define MSG_CALLBACKS_H

#include <stdatomic.h>
#include <stddef.h>

#include "cfg.h"
#include "metrics.h"

/* Counters the health listener reads while the dispatcher runs (zero them before start). */
struct callbacks_stats {
  atomic_int connected;                /* broker connection up and consuming */
  atomic_llong delivered, retried, parked; /* outcomes: 2xx; sent to a retry queue; parked */
  atomic_llong in_flight;              /* callbacks taken and not yet acked or given back */
  struct metrics_hist latency;         /* callback request to answer or failure */
};

struct callbacks;

/* Starts the dispatcher thread for cfg (callbacks.secret must be non-empty). cfg, stats and
 * draining are borrowed and must outlive callbacks_stop. Once *draining is non-zero (the
 * worker's flag: a stop signal arrived) the dispatcher takes no more callbacks, finishes those
 * in flight within consumer.shutdown_grace and gives the rest back to the broker. Call it after
 * curl_global_init and with the stop signals blocked: the thread inherits the signal mask.
 * Returns the dispatcher (stop and free it with callbacks_stop), or NULL with a reason in err. */
struct callbacks *callbacks_start(const struct cfg *cfg, struct callbacks_stats *stats,
                                  const atomic_int *draining, char *err, size_t errlen);

/* Stops the dispatcher and frees it. now = 0: drain as above (starting now if *draining was
 * not set yet) and wait for the thread, unless a stop signal arrives meanwhile on stop_fd (the
 * signalfd of main, or -1): that one is read here and ends the drain at once. now = 1: give up
 * at once. Either way every callback not yet acked goes back to the queue. Returns 1 when a
 * signal cut the drain short, else 0. NULL is a no-op returning 0. */
int callbacks_stop(struct callbacks *cb, int now, int stop_fd);

#endif
