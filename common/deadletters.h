/* Parked jobs (the dead queue): reading them without removing them, and moving them back to
 * delivery ("redrive"), for msg-api's /dead-letters endpoints and msg-consumer's --dead-letters
 * and --redrive. Each call opens its own short-lived AMQP connection on the calling thread
 * (named "<broker.connection_name>-admin"), so msg-api's publisher and status reader never wait
 * for an operator's request. */
#ifndef MSG_DEADLETTERS_H
#define MSG_DEADLETTERS_H

#include <jansson.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"

/* Page and batch bounds shared by GET /dead-letters, POST /dead-letters/redrive and
 * msg-consumer --dead-letters/--redrive. */
#define DEAD_PEEK_DEFAULT 20
#define DEAD_PEEK_MAX 1000
#define DEAD_REDRIVE_DEFAULT 100
#define DEAD_REDRIVE_MAX 100000
/* A redrive's rate, when it has one: slower would hold the connection for ages, and 1/rate
 * must stay a sane number of seconds. */
#define DEAD_RATE_MIN 0.1
#define DEAD_RATE_MAX 100000.0

/* Which parked jobs a redrive takes; NULL/0 fields match everything. */
struct redrive_filter {
  const char *reason;         /* x-failure-reason, e.g. "retries_exhausted" */
  const char *instance;       /* the job's instance_name */
  const char *const *task_ids;
  size_t n_task_ids;
  size_t max;                 /* at most this many moved (>= 1) */
  double rate;                /* moves per second, 0 or DEAD_RATE_MIN..DEAD_RATE_MAX; 0 = as
                                 fast as the broker confirms */
  int64_t deadline_ms;        /* monotonic (util_mono_ms); 0 = none. Past it the redrive stops
                                 and reports "stopped": "deadline"; the rest stays parked */
  const atomic_int *stop;     /* NULL, or set when the process stops: the redrive ends at once */
};

/* Reads up to `limit` parked jobs, oldest first, and leaves them parked (they go back to the
 * queue when the read ends). Returns a new JSON object {"count", "messages": [...]} (caller
 * decrefs), or NULL with a reason in err. */
json_t *dead_peek(const struct cfg *cfg, size_t limit, char *err, size_t errlen);

/* Moves matching parked jobs back to the job queue with a fresh attempt count and the next
 * generation, records each task PENDING again, and only then removes the parked copy (each
 * step confirmed by the broker). Returns a new JSON report {"moved", "scanned", "task_ids"}, plus
 * "stopped": "deadline" or "stopping" when it ended early (caller decrefs), or NULL with a
 * reason in err; jobs not taken stay parked. */
json_t *dead_redrive(const struct cfg *cfg, const struct redrive_filter *filter, char *err,
                     size_t errlen);

#endif
