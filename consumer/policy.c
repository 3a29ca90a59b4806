/* The consumer's outcome policy as a pure decision: see policy.h. */
#include "policy.h"

#include "mq.h"

static struct policy_decision decide(enum policy_action a, const char *reason, const char *code,
                                     uint64_t delay_ms)
{
  struct policy_decision d = {a, reason, code, delay_ms};
  return d;
}

struct policy_decision policy_before_send(const struct policy_delivery *d, int64_t now_ms)
{
  if(d->malformed)
    /* A job that cannot be parsed never gets better by looping. */
    return decide(POLICY_PARK, "malformed", "malformed_job", 0);
  if(d->sent)
    /* Delivered again after a crash or a broker restart, but already sent: never twice. */
    return decide(d->sent_unrecorded ? POLICY_RECORD : POLICY_ACK, NULL, NULL, 0);
  if(d->cancelled)
    return decide(POLICY_ACK, NULL, NULL, 0);
  if(d->send_at_ms && now_ms < d->send_at_ms)
    return decide(POLICY_HOLD, NULL, NULL, mq_schedule_hop(d->send_at_ms - now_ms));
  if(d->expires_at_ms && now_ms >= d->expires_at_ms)
    /* An OTP an hour late does harm: past its expiry a message is never sent. */
    return decide(POLICY_PARK, "expired", "expired", 0);
  if(d->returns >= MQ_DELIVERY_LIMIT - 1)
    /* Its last delivery before the quorum queue's poison guard dead-letters it silently:
     * consumers keep dying on this job (or losing it). Parked here, its task says why. */
    return decide(POLICY_PARK, "delivery_limit", "poison_job", 0);
  if(d->server_held)
    /* Waits here unacked: no return counts against the delivery limit, no attempt is spent. */
    return decide(POLICY_HOLD_SERVER, NULL, NULL, 0);
  if(d->instance_held)
    /* Waits in a delay queue: the job queue keeps flowing for the other instances. */
    return decide(POLICY_HOLD_INSTANCE, NULL, NULL, POLICY_INSTANCE_HOP_MS);
  if(d->in_doubt && d->reconcile)
    return decide(POLICY_RECONCILE, NULL, NULL, 0);
  if(d->rate_limited)
    return decide(d->from_lane ? POLICY_WAIT : POLICY_FORWARD, NULL, NULL, 0);
  return decide(POLICY_SEND, NULL, NULL, 0);
}

struct policy_decision policy_after_lookup(enum evo_class cls, enum evo_scope scope, int found,
                                           const struct cfg *cfg)
{
  if(cls == EVO_SUCCESS)
    return decide(found ? POLICY_SUCCEED : POLICY_SEND, NULL, NULL, 0);
  if(cls == EVO_TRANSIENT && scope == EVO_SCOPE_SERVER)
    return decide(POLICY_HOLD_SERVER, NULL, NULL, 0);
  if(cfg->evolution.in_doubt == CFG_IN_DOUBT_PARK)
    return decide(POLICY_PARK, "in_doubt", "in_doubt", 0);
  return decide(POLICY_SEND, NULL, NULL, 0);
}

struct policy_decision policy_after_send(const struct policy_delivery *d, enum evo_class cls,
                                         enum evo_scope scope, int attempt,
                                         const struct cfg *cfg, int64_t now_ms)
{
  uint64_t delay;
  int spent = attempt - d->holds; /* attempts that ended in a hold-off are not retries */
  switch(cls) {
  case EVO_SUCCESS:
  case EVO_ALREADY_SENT:
    return decide(POLICY_SUCCEED, NULL, NULL, 0);
  case EVO_PERMANENT:
    return decide(POLICY_PARK, "permanent", NULL, 0);
  case EVO_TRANSIENT:
    break;
  }
  if(scope != EVO_SCOPE_MESSAGE && d->holds < POLICY_MAX_HOLDS)
    return scope == EVO_SCOPE_SERVER ? decide(POLICY_HOLD_SERVER, NULL, NULL, 0)
                                     : decide(POLICY_HOLD_INSTANCE, NULL, NULL,
                                              POLICY_INSTANCE_HOP_MS);
  if(spent < 1 || (size_t)spent > cfg->retry.n_delays)
    return decide(POLICY_PARK, "retries_exhausted", NULL, 0);
  delay = cfg->retry.delays_ms[spent - 1];
  if(d->expires_at_ms && now_ms + (int64_t)delay >= d->expires_at_ms)
    /* The next attempt would come after the expiry: give up now, with the reason. */
    return decide(POLICY_PARK, "expired", "expired", 0);
  return decide(POLICY_RETRY, NULL, NULL, delay);
}

const char *policy_action_name(enum policy_action a)
{
  static const char *const NAMES[] = {"send",  "ack",       "record",      "hold",
                                      "forward", "wait",    "succeed",     "retry",
                                      "park",  "reconcile", "hold_server", "hold_instance"};
  return (unsigned)a < sizeof NAMES / sizeof NAMES[0] ? NAMES[a] : "?";
}
