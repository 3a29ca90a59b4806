/* Unit tests for consumer/holdoff.h: hold, probe on a backoff, resume, per instance. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "holdoff.h"

static void test_server(void)
{
  struct holdoff *h = holdoff_new();
  struct holdoff_target *s;
  int64_t now = 1000000, wait, last = 0;
  CHECK(h != NULL);
  s = &h->server;
  CHECK_INT(holdoff_next_probe_in(h, now), INT32_MAX);
  CHECK(!holdoff_probe_due(h, s, now));
  /* The first failure holds, later ones while held change nothing. */
  CHECK_INT(holdoff_fail(h, s, "evolution_unreachable", now), 1);
  CHECK_INT(holdoff_fail(h, s, "evolution_timeout", now), 0);
  CHECK_STR(s->reason, "evolution_unreachable");
  CHECK(holdoff_instance_held(h, "any"));
  wait = holdoff_next_probe_in(h, now);
  CHECK(wait >= HOLDOFF_FIRST_PROBE_MS * 8 / 10 && wait <= HOLDOFF_FIRST_PROBE_MS * 12 / 10);
  CHECK(!holdoff_probe_due(h, s, now));
  /* Failed probes double the wait up to the cap; one probe at a time. */
  for(int i = 0; i < 8; i++) {
    now += holdoff_next_probe_in(h, now);
    CHECK(holdoff_probe_due(h, s, now));
    CHECK(!holdoff_probe_due(h, s, now));
    CHECK_INT(holdoff_next_probe_in(h, now), INT32_MAX);
    CHECK_INT(holdoff_fail(h, s, "evolution_unreachable", now), 0);
    wait = holdoff_next_probe_in(h, now);
    CHECK(wait <= HOLDOFF_MAX_PROBE_MS * 12 / 10);
    if(i < 3)
      CHECK(wait > last);
    last = wait;
  }
  CHECK(wait >= HOLDOFF_MAX_PROBE_MS * 8 / 10);
  CHECK_INT(s->probes_total, 8);
  /* An aborted probe lets the next one start at once. */
  now += holdoff_next_probe_in(h, now);
  CHECK(holdoff_probe_due(h, s, now));
  holdoff_probe_gone(h, s);
  CHECK(holdoff_probe_due(h, s, now));
  /* It answers: resumed once, counted. */
  CHECK_INT(holdoff_ok(h, s), 1);
  CHECK_INT(holdoff_ok(h, s), 0);
  CHECK(!holdoff_instance_held(h, "any"));
  CHECK_INT(s->held_total, 1);
  CHECK_INT(s->resumed_total, 1);
  /* Held again: the backoff starts over. */
  CHECK_INT(holdoff_fail(h, s, "evolution_http_503", now), 1);
  CHECK(holdoff_next_probe_in(h, now) <= HOLDOFF_FIRST_PROBE_MS * 12 / 10);
out:
  holdoff_free(h);
}

static void test_instances(void)
{
  struct holdoff *h = holdoff_new();
  struct holdoff_target *a, *b;
  char *json = NULL;
  struct metrics_out o = {0};
  int64_t now = 5000;
  CHECK(h != NULL);
  a = holdoff_instance(h, "inst-a");
  b = holdoff_instance(h, "inst-b");
  CHECK(a && b && a != b);
  CHECK(holdoff_instance(h, "inst-a") == a);
  CHECK(holdoff_instance_find(h, "inst-c") == NULL);
  /* One instance held never holds the other. */
  CHECK_INT(holdoff_fail(h, a, "evolution_session_error", now), 1);
  CHECK(holdoff_instance_held(h, "inst-a"));
  CHECK(!holdoff_instance_held(h, "inst-b"));
  CHECK(!holdoff_instance_held(h, "inst-c"));
  /* While the server is held, instances wait for it: only its probe is scheduled. */
  CHECK(holdoff_next_probe_in(h, now) <= HOLDOFF_FIRST_PROBE_MS * 12 / 10);
  holdoff_fail(h, &h->server, "evolution_unreachable", now);
  now += HOLDOFF_FIRST_PROBE_MS * 2;
  CHECK_INT(holdoff_next_probe_in(h, now), 0);
  CHECK(holdoff_probe_due(h, &h->server, now));
  CHECK_INT(holdoff_next_probe_in(h, now), INT32_MAX);
  holdoff_ok(h, &h->server);
  CHECK_INT(holdoff_next_probe_in(h, now), 0);
  /* /health lists the held instances; /metrics every target, state and transitions. */
  json = holdoff_json(h);
  CHECK(json && strstr(json, "\"server\":{\"state\":\"ok\""));
  CHECK(strstr(json, "\"instance\":\"inst-a\"") && strstr(json, "evolution_session_error"));
  CHECK(!strstr(json, "inst-b"));
  holdoff_metrics(h, &o);
  CHECK(!o.oom);
  CHECK(strstr(o.buf, "msg_consumer_evolution_held{target=\"instance\",instance=\"inst-a\"} 1"));
  CHECK(strstr(o.buf, "msg_consumer_evolution_held{target=\"instance\",instance=\"inst-b\"} 0"));
  CHECK(strstr(o.buf, "msg_consumer_evolution_holdoff_transitions_total{target=\"server\","
                      "instance=\"\",to=\"resumed\"} 1"));
out:
  metrics_out_free(&o);
  free(json);
  holdoff_free(h);
}

int main(void)
{
  static const struct check_test tests[] = {{"server", test_server},
                                            {"instances", test_instances}};
  return CHECK_RUN(tests);
}
