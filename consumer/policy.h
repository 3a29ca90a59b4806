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
  POLICY_PARK       /* to the dead queue with reason and code, FAILURE event, then ack */
};

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

/* After Evolution answered attempt `attempt` (1 for the first) with `cls`. */
struct policy_decision policy_after_send(const struct policy_delivery *d, enum evo_class cls,
                                         int attempt, const struct cfg *cfg, int64_t now_ms);

/* Name of an action, for logs and tests. */
const char *policy_action_name(enum policy_action a);

#endif
