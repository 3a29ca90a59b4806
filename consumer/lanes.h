/* Per-instance rate limits: one lane per Evolution instance that has a send rate, each with a
 * token bucket. The lanes are what the worker knows about each instance; the broker side (a
 * queue per lane with a single active consumer, see mq_declare_lane) is what makes the limit
 * hold across consumer replicas: only one process at a time takes an instance's jobs. */
#ifndef MSG_LANES_H
#define MSG_LANES_H

#include "mq.h"
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "job.h"

/* A job a lane holds: embedded in the worker's delivery, which lanes never look inside. */
struct lane_item {
  struct lane_item *next;
};

struct lane {
  char instance[JOB_INSTANCE_MAX + 1];
  double rate;          /* sends per second; 0 = unlimited (no lane queue is used) */
  double burst, tokens; /* the bucket: at most `burst` sends at once after a quiet spell */
  int64_t refilled_us;  /* monotonic time the tokens were last brought up to date */
  size_t index;         /* creation order: 0, 1, ... (the worker derives its channel from it) */
  unsigned rates_gen;   /* the reload_generation its rate and burst were taken at */

  /* The worker's state on the current broker connection. */
  int open;                      /* declared and consumed */
  char consumer_tag[MQ_TAG_LEN]; /* "" while the lane is not consumed */

  /* lanes.c only: the jobs held, through the functions below. */
  struct lane_item *forward_head, **forward_tail; /* from the job queue, waiting for open */
  struct lane_item *wait_head, **wait_tail;       /* from the lane, waiting for a token */
  size_t waiting;
};

struct lane_table;

/* A table of lanes whose rates come from cfg (evolution.rate_limit, .rate_limits,
 * .rate_burst); `cfg` is borrowed. NULL when out of memory. */
struct lane_table *lanes_new(const struct cfg *cfg);

/* Frees the table and its lanes (not the deliveries on their lists). NULL is a no-op. */
void lanes_free(struct lane_table *t);

/* The lane of `instance`, created on first use with a full bucket (also for an unlimited
 * instance, so the rate is looked up once). NULL when out of memory. */
struct lane *lanes_get(struct lane_table *t, const char *instance, int64_t now_us);

/* Number of lanes, and the i-th in creation order (i < lanes_count). */
size_t lanes_count(const struct lane_table *t);
struct lane *lanes_at(const struct lane_table *t, size_t i);

/* Holds a job of the job queue until the lane is open (it is then moved into the lane). */
void lane_hold_for_open(struct lane *l, struct lane_item *it);
/* The next job held for the open, or NULL. */
struct lane_item *lane_next_for_open(struct lane *l);
int lane_has_held_for_open(const struct lane *l);

/* A job from the lane itself: 1 when it may be sent now (none waits ahead of it and a token
 * was taken), else it is held for a token and 0 is returned. */
int lane_admit(struct lane *l, struct lane_item *it, int64_t now_us);
/* The next held job whose token is there now (the token is taken), or NULL. */
struct lane_item *lane_next_ready(struct lane *l, int64_t now_us);
/* The next held job, token or not (to give it back), or NULL. */
struct lane_item *lane_next_held(struct lane *l);
size_t lane_held(const struct lane *l); /* jobs waiting for a token */

/* The connection is gone: not open, no consumer; the held jobs must have been taken. */
void lane_reset(struct lane *l);

/* Takes a token if one is there: returns 1 (send now) or 0 (wait). */
int lane_take(struct lane *l, int64_t now_us);

/* Microseconds until the next token is there (0: now). */
int64_t lane_wait_us(struct lane *l, int64_t now_us);

#endif
