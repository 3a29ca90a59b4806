/* The consumer's event loop: one thread owns the AMQP connection (deliveries on one channel,
 * confirmed publishes on another) and drives the Evolution API transfers next to it. */
#ifndef MSG_WORKER_H
#define MSG_WORKER_H

#include <stdatomic.h>
#include <stdint.h>

#include "cfg.h"
#include "holdoff.h"
#include "metrics.h"

#define WORKER_MAX_CODES 64
#define WORKER_PARK_REASONS 7
/* x-failure-reason values, in the order of worker_state.parked_by; "other" last. */
extern const char *const WORKER_PARK_REASON_NAMES[WORKER_PARK_REASONS];

/* Counters and flags the health listener reads while the loop runs. */
struct worker_state {
  atomic_int connected;  /* broker connection up, topology declared, consuming */
  atomic_int draining;   /* a stop signal arrived */
  atomic_llong in_flight;
  atomic_llong succeeded, retried, parked, redelivered, duplicates, cancelled;
  atomic_llong loop_at_ms; /* last loop turn (monotonic), for liveness */
  atomic_llong connects;   /* successful broker connections (more than 1 = reconnects) */
  atomic_llong config_faults; /* 401/403/LICENSE_REQUIRED answers */
  atomic_llong lane_waiting;   /* jobs of rate-limited instances waiting here for a token */
  atomic_llong lane_forwarded; /* jobs moved from the job queue to their instance's lane */
  atomic_llong held;           /* jobs held here while Evolution API is out */
  atomic_int history_loaded;    /* the status stream's history is read (struct worker) */
  atomic_llong history_waiting; /* jobs older than the window waiting for it */
  atomic_llong hops;           /* jobs of a held instance sent through a delay queue */
  atomic_llong lookups;        /* findMessages asked about an in-doubt job */
  atomic_llong reconciled;     /* ...and it had gone out: recorded, not sent again */
  struct holdoff *holdoff;     /* which Evolution targets are held off (holdoff.h) */
  /* Evolution answers by error code ("sent", "evolution_http_503", ...): a few dozen codes at
   * most, each in a slot claimed once (name written before n_codes is raised). */
  char code_names[WORKER_MAX_CODES][48];
  atomic_ullong code_counts[WORKER_MAX_CODES];
  atomic_size_t n_codes;
  atomic_llong parked_by[WORKER_PARK_REASONS]; /* as WORKER_PARK_REASON_NAMES */
  struct metrics_hist evolution_latency; /* sendText request to answer (or failure) */
  struct metrics_hist delivery_latency;  /* delivery received to outcome recorded (ack) */
};

/* Runs until a stop signal is read from stop_fd (a signalfd): then stops consuming, finishes
 * deliveries in flight within cfg->consumer.shutdown_grace, requeues the rest and returns 0.
 * A second signal returns 1 at once. `cfg` and `state` are borrowed. */
int worker_run(const struct cfg *cfg, struct worker_state *state, int stop_fd);

#endif
