/* Hold-off: which Evolution targets are out (the server, or one instance whose WhatsApp session
 * is closed), since when and why, and when to probe them next. While a target is held its jobs
 * are not sent: they wait (in this consumer, or hop through a delay queue) without spending an
 * attempt, and one probe at a time asks whether it answers again, on a backoff from
 * HOLDOFF_FIRST_PROBE_MS doubling to HOLDOFF_MAX_PROBE_MS (with jitter). The worker thread
 * changes the table; the health listener reads it (snapshots under a lock). */
#ifndef MSG_HOLDOFF_H
#define MSG_HOLDOFF_H

#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

#define HOLDOFF_FIRST_PROBE_MS 500
#define HOLDOFF_MAX_PROBE_MS 5000
/* Instances tracked at most; a failure of one beyond these counts as the message's own. */
#define HOLDOFF_MAX_INSTANCES 4096

struct holdoff_target {
  char instance[65];         /* "" for the server */
  int held;
  int probing;               /* a probe is in flight: no second one */
  int64_t held_since_ms;     /* wall clock, for /health */
  int64_t next_probe_ms;     /* monotonic */
  uint64_t backoff_ms;       /* the wait before the next probe after a failed one */
  char reason[48];           /* the error code that held it */
  unsigned long long held_total, resumed_total, probes_total;
};

struct holdoff {
  pthread_mutex_t lock;      /* guards everything below against the health listener's reads */
  struct holdoff_target server;
  struct holdoff_target **instances;
  size_t n_instances, cap_instances;
  unsigned long long rng;
};

/* NULL when out of memory. */
struct holdoff *holdoff_new(void);
void holdoff_free(struct holdoff *h); /* NULL is a no-op */

/* The instance's target, created on first use; NULL when out of memory or past
 * HOLDOFF_MAX_INSTANCES. holdoff_instance_find never creates one. */
struct holdoff_target *holdoff_instance(struct holdoff *h, const char *instance);
struct holdoff_target *holdoff_instance_find(struct holdoff *h, const char *instance);

/* 1 when the server or the instance is held. */
int holdoff_instance_held(struct holdoff *h, const char *instance);

/* A failure that the target is out (reason: an error code). The first one holds it and
 * schedules a probe; a failed probe (probing set) doubles the backoff. Returns 1 when the
 * target just became held. */
int holdoff_fail(struct holdoff *h, struct holdoff_target *t, const char *reason, int64_t now_ms);

/* An answer showing the target works. Returns 1 when it was held (it resumes now). */
int holdoff_ok(struct holdoff *h, struct holdoff_target *t);

/* 1 when t is held, no probe is in flight and its time has come: the caller probes now (t is
 * marked probing until holdoff_fail, holdoff_ok or holdoff_probe_gone). */
int holdoff_probe_due(struct holdoff *h, struct holdoff_target *t, int64_t now_ms);

/* A probe ended without telling anything (aborted): another one may start at once. */
void holdoff_probe_gone(struct holdoff *h, struct holdoff_target *t);

/* Milliseconds until the next probe of any held target is due (INT32_MAX when none); while the
 * server is held, only its own. */
int64_t holdoff_next_probe_in(struct holdoff *h, int64_t now_ms);

/* The table as JSON for /health: {"server": {...}, "instances": [{...}]} (held instances only),
 * malloc'd, NULL when out of memory. */
char *holdoff_json(struct holdoff *h);
/* The same as a jansson object (caller decrefs), NULL when out of memory. */
json_t *holdoff_doc(struct holdoff *h);

/* The table as Prometheus families (state and transitions, per target). */
void holdoff_metrics(struct holdoff *h, struct metrics_out *o);

#endif
