/* The api's publisher: one thread owns an AMQP connection with a confirm channel; HTTP worker
 * threads hand it jobs and wait for the broker's confirm, many confirms in flight together. */
#ifndef MSG_PUBLISHER_H
#define MSG_PUBLISHER_H

#include <stddef.h>

#include "cfg.h"
#include "job.h"
#include "status.h"

struct publisher;

enum pub_result {
  PUB_OK = 0,       /* the broker confirmed the job */
  PUB_UNAVAILABLE,  /* not connected to the broker, or shutting down */
  PUB_TIMEOUT,      /* no confirm within the wait; the job may still be confirmed later */
  PUB_REJECTED,     /* the broker refused the job (nack, or no queue bound) */
  PUB_UNKNOWN       /* the connection was lost after the publish and before its confirm: the
                       broker may or may not hold the job */
};

/* Starts the publisher thread; it connects (and reconnects) on its own. `cfg` is borrowed and
 * must outlive the publisher. Returns NULL with a reason in err when the thread cannot start. */
struct publisher *publisher_start(const struct cfg *cfg, char *err, size_t errlen);

/* Stops accepting, publishes what was handed over, waits up to drain_ms for outstanding
 * confirms, closes the connection and frees everything. NULL is a no-op. */
void publisher_stop(struct publisher *pub, int drain_ms);

/* Publishes `job` (persistent, mandatory, to the work exchange) and its PENDING status event
 * (to the status stream), then waits up to timeout_ms for the job's confirm. The job is
 * borrowed for the call. Safe from any thread. */
enum pub_result publisher_submit(struct publisher *pub, const struct job *job, int timeout_ms);

/* Publishes n jobs like publisher_submit, all handed over at once so their confirms come back
 * in one round, and waits up to timeout_ms for all of them; results[i] is job i's outcome. */
void publisher_submit_many(struct publisher *pub, const struct job *const *jobs, size_t n,
                           enum pub_result *results, int timeout_ms);

/* Publishes one status event (persistent, to the status stream) and waits up to timeout_ms for
 * its confirm; the event is borrowed for the call. Safe from any thread. */
enum pub_result publisher_submit_event(struct publisher *pub, const struct status_event *ev,
                                       int timeout_ms);

/* Publishes the status callback of `ev` for `url` (status_callback_body, to the callback queue
 * that msg-consumer's dispatcher reads) and waits up to timeout_ms for its confirm. */
enum pub_result publisher_submit_callback(struct publisher *pub, const struct status_event *ev,
                                          const char *url, int timeout_ms);

/* Reports the outcome of jobs whose worker stopped waiting (PUB_TIMEOUT) once it comes:
 * fn(task_id, PUB_OK | PUB_REJECTED | PUB_UNKNOWN, ctx), on the publisher thread, with the
 * publisher's lock held (fn must not call the publisher). Set before the first submit. */
void publisher_on_late_outcome(struct publisher *pub,
                               void (*fn)(const char *task_id, enum pub_result result, void *ctx),
                               void *ctx);

/* 1 while connected with the topology declared and the broker not blocking publishes. */
int publisher_ready(struct publisher *pub);

/* Successful connections to the broker so far (the first one included). */
unsigned long long publisher_connects(struct publisher *pub);

/* Publishes handed over and not yet confirmed. */
size_t publisher_in_flight(struct publisher *pub);

#endif
