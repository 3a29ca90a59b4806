/* Unit tests for the broker-free parts of common/mq.h: queue names and scheduling hops. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "mq.h"

/* A job is never sent early: each hop is the largest delay that fits, and once less than the
 * shortest delay remains, that one (at most 250 ms late). */
static void test_schedule_hop(void)
{
  int64_t remaining;
  int hops;
  CHECK_INT(mq_schedule_hop(0), 250);
  CHECK_INT(mq_schedule_hop(-5), 250);
  CHECK_INT(mq_schedule_hop(249), 250);
  CHECK_INT(mq_schedule_hop(999), 250);
  CHECK_INT(mq_schedule_hop(1000), 1000);
  CHECK_INT(mq_schedule_hop(3999), 1000);
  CHECK_INT(mq_schedule_hop(4000), 4000);
  CHECK_INT(mq_schedule_hop(INT64_C(30) * 24 * 3600 * 1000), 1048576000);
  /* 30 days are reached in a bounded number of hops, none overshooting by more than 250 ms. */
  for(remaining = INT64_C(30) * 24 * 3600 * 1000 - 7, hops = 0; remaining > 0; hops++) {
    uint64_t hop = mq_schedule_hop(remaining);
    CHECK(hop <= (uint64_t)remaining || hop == 250);
    remaining -= (int64_t)hop;
  }
  CHECK(remaining > -250);
  CHECK(hops <= 40);
out:;
}

static void test_names(void)
{
  struct cfg cfg;
  char buf[128];
  memset(&cfg, 0, sizeof cfg);
  cfg.topology.exchange = "messages";
  cfg.topology.retry_queue_prefix = "messages.retry";
  mq_delay_queue_name(&cfg, 250, buf, sizeof buf);
  CHECK_STR(buf, "messages.delay.250ms");
  mq_delay_queue_name(&cfg, 1048576000, buf, sizeof buf);
  CHECK_STR(buf, "messages.delay.1048576s");
  mq_delay_routing_key(4000, buf, sizeof buf);
  CHECK_STR(buf, "delay.4s");
  mq_retry_queue_name(&cfg, 5000, buf, sizeof buf);
  CHECK_STR(buf, "messages.retry.5s");
  mq_retry_queue_name(&cfg, 120000, buf, sizeof buf);
  CHECK_STR(buf, "messages.retry.2m");
  mq_retry_routing_key(7200000, buf, sizeof buf);
  CHECK_STR(buf, "retry.2h");
  cfg.topology.callback_queue = "messages.callbacks";
  mq_callback_retry_queue_name(&cfg, 200, buf, sizeof buf);
  CHECK_STR(buf, "messages.callbacks.retry.200ms");
  mq_callback_retry_queue_name(&cfg, 600000, buf, sizeof buf);
  CHECK_STR(buf, "messages.callbacks.retry.10m");
  mq_callback_retry_queue_name(&cfg, 3600000, buf, sizeof buf);
  CHECK_STR(buf, "messages.callbacks.retry.1h");
  mq_callback_dead_queue_name(&cfg, buf, sizeof buf);
  CHECK_STR(buf, "messages.callbacks.dead");
out:;
}

int main(void)
{
  static const struct check_test tests[] = {{"schedule_hop", test_schedule_hop},
                                            {"names", test_names}};
  return check_run(tests, sizeof tests / sizeof tests[0]);
}
