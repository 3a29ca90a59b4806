/* Unit tests for consumer/policy.h: the outcome policy, row by row. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "mq.h"
#include "policy.h"

#define NOW INT64_C(1800000000000)

struct row {
  const char *name;
  struct policy_delivery d;
  enum policy_action want;
  const char *reason, *code;
  uint64_t delay_ms;
};

static void check_row(const struct row *r, struct policy_decision got)
{
  if(got.action != r->want || (r->reason && (!got.reason || strcmp(got.reason, r->reason))) ||
     (r->code && (!got.code || strcmp(got.code, r->code))) || got.delay_ms != r->delay_ms) {
    fprintf(stderr, "row \"%s\": got %s reason=%s code=%s delay=%llu, want %s reason=%s code=%s "
            "delay=%llu\n", r->name, policy_action_name(got.action),
            got.reason ? got.reason : "-", got.code ? got.code : "-",
            (unsigned long long)got.delay_ms, policy_action_name(r->want),
            r->reason ? r->reason : "-", r->code ? r->code : "-",
            (unsigned long long)r->delay_ms);
    failures++;
  }
  checks++;
}

static void test_before_send(void)
{
  static const struct row rows[] = {
    {"plain job", {0}, POLICY_SEND, NULL, NULL, 0},
    {"malformed", {.malformed = 1}, POLICY_PARK, "malformed", "malformed_job", 0},
    {"malformed wins over everything", {.malformed = 1, .sent = 1, .returns = 50},
     POLICY_PARK, "malformed", "malformed_job", 0},
    {"already sent", {.sent = 1}, POLICY_ACK, NULL, NULL, 0},
    {"sent, SUCCESS never recorded", {.sent = 1, .sent_unrecorded = 1}, POLICY_RECORD, NULL,
     NULL, 0},
    {"cancelled", {.cancelled = 1}, POLICY_ACK, NULL, NULL, 0},
    {"sent beats expired and poison", {.sent = 1, .expires_at_ms = NOW - 1, .returns = 9},
     POLICY_ACK, NULL, NULL, 0},
    {"scheduled in 10 s", {.send_at_ms = NOW + 10000}, POLICY_HOLD, NULL, NULL, 4000},
    {"scheduled in 100 ms", {.send_at_ms = NOW + 100}, POLICY_HOLD, NULL, NULL, 250},
    {"scheduled time reached", {.send_at_ms = NOW}, POLICY_SEND, NULL, NULL, 0},
    {"expired", {.expires_at_ms = NOW}, POLICY_PARK, "expired", "expired", 0},
    {"not yet expired", {.expires_at_ms = NOW + 1}, POLICY_SEND, NULL, NULL, 0},
    {"scheduled before its expiry", {.send_at_ms = NOW + 5000, .expires_at_ms = NOW + 1},
     POLICY_HOLD, NULL, NULL, 4000},
    {"last delivery before the poison guard", {.returns = MQ_DELIVERY_LIMIT - 1}, POLICY_PARK,
     "delivery_limit", "poison_job", 0},
    {"returned often, not yet poison", {.returns = MQ_DELIVERY_LIMIT - 2}, POLICY_SEND, NULL,
     NULL, 0},
    {"rate-limited, from the job queue", {.rate_limited = 1}, POLICY_FORWARD, NULL, NULL, 0},
    {"rate-limited, from its lane", {.rate_limited = 1, .from_lane = 1}, POLICY_WAIT, NULL,
     NULL, 0},
    {"rate-limited but expired", {.rate_limited = 1, .expires_at_ms = NOW - 5}, POLICY_PARK,
     "expired", "expired", 0},
    /* Hold-off: a held server keeps the job here, a held instance sends it round a delay
     * queue; both after the checks that need no send, before the rate limit. */
    {"server held", {.server_held = 1, .rate_limited = 1}, POLICY_HOLD_SERVER, NULL, NULL, 0},
    {"instance held", {.instance_held = 1, .rate_limited = 1, .from_lane = 1},
     POLICY_HOLD_INSTANCE, NULL, NULL, POLICY_INSTANCE_HOP_MS},
    {"server held but expired", {.server_held = 1, .expires_at_ms = NOW}, POLICY_PARK,
     "expired", "expired", 0},
    {"server held but already sent", {.server_held = 1, .sent = 1}, POLICY_ACK, NULL, NULL, 0},
    {"instance held, scheduled later", {.instance_held = 1, .send_at_ms = NOW + 10000},
     POLICY_HOLD, NULL, NULL, 4000},
    /* In doubt: asked first, unless evolution.reconcile is off; held first while out. */
    {"in doubt", {.in_doubt = 1, .reconcile = 1, .rate_limited = 1}, POLICY_RECONCILE, NULL,
     NULL, 0},
    {"in doubt, reconcile off", {.in_doubt = 1}, POLICY_SEND, NULL, NULL, 0},
    {"in doubt while the server is held", {.in_doubt = 1, .reconcile = 1, .server_held = 1},
     POLICY_HOLD_SERVER, NULL, NULL, 0},
  };
  for(size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
    check_row(&rows[i], policy_before_send(&rows[i].d, NOW));
}

static void test_after_send(void)
{
  static uint64_t delays[] = {5000, 30000, 120000};
  static struct cfg cfg;
  struct policy_delivery plain = {0}, expiring = {.expires_at_ms = NOW + 20000},
                         held_twice = {.holds = 2}, held_max = {.holds = POLICY_MAX_HOLDS};
  struct {
    const char *name;
    const struct policy_delivery *d;
    enum evo_class cls;
    enum evo_scope scope;
    int attempt;
    enum policy_action want;
    const char *reason, *code;
    uint64_t delay_ms;
  } rows[] = {
#define MSG EVO_SCOPE_MESSAGE
    {"accepted", &plain, EVO_SUCCESS, MSG, 1, POLICY_SUCCEED, NULL, NULL, 0},
    {"already sent (Evolution failed after sending)", &plain, EVO_ALREADY_SENT, MSG, 2,
     POLICY_SUCCEED, NULL, NULL, 0},
    {"refused for good", &plain, EVO_PERMANENT, MSG, 1, POLICY_PARK, "permanent", NULL, 0},
    {"transient, first attempt", &plain, EVO_TRANSIENT, MSG, 1, POLICY_RETRY, NULL, NULL, 5000},
    {"transient, third attempt", &plain, EVO_TRANSIENT, MSG, 3, POLICY_RETRY, NULL, NULL,
     120000},
    {"transient, retries exhausted", &plain, EVO_TRANSIENT, MSG, 4, POLICY_PARK,
     "retries_exhausted", NULL, 0},
    {"transient, next attempt after the expiry", &expiring, EVO_TRANSIENT, MSG, 2, POLICY_PARK,
     "expired", "expired", 0},
    {"transient, next attempt before the expiry", &expiring, EVO_TRANSIENT, MSG, 1,
     POLICY_RETRY, NULL, NULL, 5000},
    {"transient, attempt number out of range", &plain, EVO_TRANSIENT, MSG, 0, POLICY_PARK,
     "retries_exhausted", NULL, 0},
    /* Outages hold, whatever the attempt, and held attempts spend no retry. */
    {"server out", &plain, EVO_TRANSIENT, EVO_SCOPE_SERVER, 9, POLICY_HOLD_SERVER, NULL, NULL,
     0},
    {"instance out", &plain, EVO_TRANSIENT, EVO_SCOPE_INSTANCE, 1, POLICY_HOLD_INSTANCE, NULL,
     NULL, POLICY_INSTANCE_HOP_MS},
    {"attempt 5 after 2 holds is the third try", &held_twice, EVO_TRANSIENT, MSG, 5,
     POLICY_RETRY, NULL, NULL, 120000},
    {"attempt 6 after 2 holds: retries exhausted", &held_twice, EVO_TRANSIENT, MSG, 6,
     POLICY_PARK, "retries_exhausted", NULL, 0},
    {"held too often: the outage counts as its own", &held_max, EVO_TRANSIENT,
     EVO_SCOPE_SERVER, POLICY_MAX_HOLDS + 1, POLICY_RETRY, NULL, NULL, 5000},
#undef MSG
  };
  cfg.retry.delays_ms = delays;
  cfg.retry.n_delays = 3;
  for(size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    struct row r = {rows[i].name, *rows[i].d, rows[i].want, rows[i].reason, rows[i].code,
                    rows[i].delay_ms};
    check_row(&r, policy_after_send(rows[i].d, rows[i].cls, rows[i].scope, rows[i].attempt,
                                    &cfg, NOW));
    /* A permanent refusal keeps Evolution's own code. */
    if(rows[i].cls == EVO_PERMANENT)
      CHECK(policy_after_send(rows[i].d, rows[i].cls, rows[i].scope, 1, &cfg, NOW).code == NULL);
  }
  /* No retries configured: the first transient failure parks. */
  cfg.retry.n_delays = 0;
  CHECK_INT(policy_after_send(&plain, EVO_TRANSIENT, EVO_SCOPE_MESSAGE, 1, &cfg, NOW).action,
            POLICY_PARK);
out:;
}

static void test_after_lookup(void)
{
  static struct cfg cfg;
  struct policy_decision d;
  cfg.evolution.in_doubt = CFG_IN_DOUBT_RESEND;
  CHECK_INT(policy_after_lookup(EVO_SUCCESS, EVO_SCOPE_MESSAGE, 1, &cfg).action, POLICY_SUCCEED);
  CHECK_INT(policy_after_lookup(EVO_SUCCESS, EVO_SCOPE_MESSAGE, 0, &cfg).action, POLICY_SEND);
  /* Unreachable: asked again once Evolution API answers, in either mode. */
  CHECK_INT(policy_after_lookup(EVO_TRANSIENT, EVO_SCOPE_SERVER, 0, &cfg).action,
            POLICY_HOLD_SERVER);
  /* Answered, but not with records: evolution.in_doubt decides. */
  CHECK_INT(policy_after_lookup(EVO_PERMANENT, EVO_SCOPE_MESSAGE, 0, &cfg).action, POLICY_SEND);
  cfg.evolution.in_doubt = CFG_IN_DOUBT_PARK;
  CHECK_INT(policy_after_lookup(EVO_TRANSIENT, EVO_SCOPE_SERVER, 0, &cfg).action,
            POLICY_HOLD_SERVER);
  d = policy_after_lookup(EVO_PERMANENT, EVO_SCOPE_MESSAGE, 0, &cfg);
  CHECK_INT(d.action, POLICY_PARK);
  CHECK_STR(d.code, "in_doubt");
  CHECK_INT(policy_after_lookup(EVO_SUCCESS, EVO_SCOPE_MESSAGE, 0, &cfg).action, POLICY_SEND);
out:;
}

int main(void)
{
  static const struct check_test tests[] = {
    {"before_send", test_before_send},
    {"after_send", test_after_send},
    {"after_lookup", test_after_lookup},
  };
  return CHECK_RUN(tests);
}
