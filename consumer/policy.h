/* The consumer's outcome policy: what to do with a delivery, as a pure decision from the facts
 * (the delivery, what the status stream told, the Evolution API outcome, the retry settings,
 * the time). No broker, no I/O: the worker carries the decision out. */
#ifndef MSG_POLICY_H
#define MSG_POLICY_H

#include <stdint.h>

#include "cfg.h"
#include "evo.h"

enum policy_action {
  POLICY_SEND,      /* hand it to Evolution API now */
  POLICY_ACK,       /* already done (sent or cancelled): ack, send nothing */
  POLICY_RECORD,    /* sent earlier but never recorded: publish its SUCCESS, then ack */
  POLICY_HOLD,      /* scheduled for later: hop through a delay queue (delay_ms) */
  POLICY_FORWARD,   /* a rate-limited instance's job from the job queue: move it to its lane */
  POLICY_WAIT,      /* from its lane: wait here for a token of the instance's rate */
  POLICY_SUCCEED,   /* Evolution accepted it: publish SUCCESS, then ack */
  POLICY_RETRY,     /* republish to the retry queue of delay_ms, RETRY event, then ack */
  POLICY_PARK,      /* to the dead queue with reason and code, FAILURE event, then ack */
  POLICY_RECONCILE, /* in doubt: ask findMessages whether it went out before sending it */
  POLICY_HOLD_SERVER,   /* Evolution API is out: keep it here, unacked, until a probe works */
  POLICY_HOLD_INSTANCE  /* its instance is out: hop through a delay queue (delay_ms) */
};

/* A job is sent again after a hold-off this many times at most without spending an attempt;
 * past that its outage failures count as its own (a message that breaks the server every time
 * must not loop for ever). */
#define POLICY_MAX_HOLDS 50
/* A job of a held instance hops through the delay queue of this length: it is back this long
 * at most after its instance answers again. */
#define POLICY_INSTANCE_HOP_MS 4000

/* What is known of a delivery before it is sent. */
struct policy_delivery {
  int malformed;         /* the job could not be parsed (nothing else below is set) */
  int sent;              /* its task reached SUCCESS (the stream said so, or this process) */
  int sent_unrecorded;   /* ...through this process, whose SUCCESS event was never confirmed */
  int cancelled;         /* its task was cancelled */
  int64_t returns;       /* x-delivery-count: returned without an ack so far */
  int64_t send_at_ms;    /* 0 when not scheduled */
  int64_t expires_at_ms; /* 0 when it never expires */
  int rate_limited;      /* its instance has a rate */
  int from_lane;         /* it came from its instance's lane (else from the job queue) */
  int server_held;       /* Evolution API is held off (holdoff.h) */
  int instance_held;     /* its instance is */
  int in_doubt;          /* a send of it may have gone out (a STARTED with no outcome) */
  int reconcile;         /* evolution.reconcile */
  int holds;             /* sends of it that ended in a hold-off (x-holds) */
};

/* A decision: the action, and for POLICY_PARK the reason (x-failure-reason) and error code
 * (NULL: Evolution's own code of the outcome), for POLICY_RETRY / POLICY_HOLD the delay.
 * Strings are static. */
struct policy_decision {
  enum policy_action action;
  const char *reason, *code;
  uint64_t delay_ms;
};

/* Before sending. Order of precedence: malformed, done (sent/cancelled), scheduled, expired,
 * the poison guard (the last delivery before the queue's own limit dead-letters it), rate
 * limit. */
struct policy_decision policy_before_send(const struct policy_delivery *d, int64_t now_ms);

/* After Evolution answered attempt `attempt` (1 for the first) with `cls`, an outage of
 * `scope` when transient. Attempts that ended in a hold-off (d->holds) spend no retry. */
struct policy_decision policy_after_send(const struct policy_delivery *d, enum evo_class cls,
                                         enum evo_scope scope, int attempt,
                                         const struct cfg *cfg, int64_t now_ms);

/* After findMessages was asked about an in-doubt job: found (SUCCEED), not found (SEND), or the
 * lookup failed: unreachable (HOLD_SERVER, asked again once it answers), or answered with
 * something else (evolution.in_doubt: SEND, or PARK with code in_doubt). */
struct policy_decision policy_after_lookup(enum evo_class cls, enum evo_scope scope, int found,
                                           const struct cfg *cfg);

/* Name of an action, for logs and tests. */
const char *policy_action_name(enum policy_action a);

#endif
