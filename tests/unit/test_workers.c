/* Unit tests for api/workers.h: the fleet from its heartbeats. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "util.h"
#include "workers.h"

#define T0 INT64_C(1800000000000)

static int beat(struct workers *w, const char *id, int64_t at_ms, int stopping, int64_t now_ms,
                const char *started)
{
  char at[UTIL_TIME_LEN], body[512], err[128];
  snprintf(body, sizeof body,
           "{\"v\":1,\"kind\":\"worker\",\"worker_id\":\"%s\",\"host\":\"h\",\"pid\":1,"
           "\"started_at\":\"%s\",\"at\":\"%s\",\"interval_ms\":5000,\"stopping\":%s,"
           "\"in_flight\":3}",
           id, started, util_format_time(at_ms, at), stopping ? "true" : "false");
  return workers_note(w, body, strlen(body), now_ms, err, sizeof err);
}

static void test_fleet(void)
{
  struct workers *w = workers_new();
  char err[128], *text = NULL;
  json_t *doc = NULL, *list;
  CHECK(w != NULL);
  CHECK_INT(beat(w, "a:1", T0, 0, T0, "2027-01-15T08:00:00.000Z"), 0);
  CHECK_INT(beat(w, "b:2", T0 + 1000, 0, T0 + 1000, "2027-01-15T08:00:05.000Z"), 0);
  CHECK_INT(workers_live(w, T0 + 1000), 2);
  /* Listed newest start first, with last_seen, without the wire-only fields. */
  text = workers_json(w, T0 + 2000);
  doc = text ? json_loads(text, 0, NULL) : NULL;
  list = json_object_get(doc, "workers");
  CHECK_INT(json_integer_value(json_object_get(doc, "count")), 2);
  CHECK_STR(json_string_value(json_object_get(json_array_get(list, 0), "worker_id")), "b:2");
  CHECK(json_object_get(json_array_get(list, 0), "last_seen") != NULL);
  CHECK(json_object_get(json_array_get(list, 0), "kind") == NULL);
  CHECK_INT(json_integer_value(json_object_get(json_array_get(list, 1), "in_flight")), 3);
  /* Three missed beats (15 s) and a worker is gone; a newer beat brings it back. */
  CHECK_INT(workers_live(w, T0 + 15000), 2);
  CHECK_INT(workers_live(w, T0 + 15001), 1);
  CHECK_INT(beat(w, "a:1", T0 + 20000, 0, T0 + 20000, "2027-01-15T08:00:00.000Z"), 0);
  CHECK_INT(workers_live(w, T0 + 20000), 1); /* b's last beat is 19 s old by now */
  /* A beat read late (a replica catching up) never replaces a newer one. */
  CHECK_INT(beat(w, "a:1", T0, 0, T0 + 20000, "2027-01-15T08:00:00.000Z"), 0);
  CHECK_INT(workers_live(w, T0 + 34000), 1);
  /* A beat stamped in the future counts from when it arrived. */
  CHECK_INT(beat(w, "c:3", T0 + 999999, 0, T0 + 21000, "2027-01-15T08:01:00.000Z"), 0);
  CHECK_INT(workers_live(w, T0 + 35500), 1); /* a is gone (15.5 s), c is not (14.5 s) */
  CHECK_INT(workers_live(w, T0 + 36001), 0);
  /* A worker that says it stops is dropped at once. */
  CHECK_INT(beat(w, "a:1", T0 + 30000, 1, T0 + 30000, "2027-01-15T08:00:00.000Z"), 0);
  CHECK_INT(workers_live(w, T0 + 30000), 1);
  /* Not heartbeats. */
  CHECK_INT(workers_note(w, "{}", 2, T0, err, sizeof err), -1);
  CHECK_INT(workers_note(w, "[1]", 3, T0, err, sizeof err), -1);
  CHECK_INT(workers_note(w, "nope", 4, T0, err, sizeof err), -1);
  CHECK_INT(workers_note(w, "{\"kind\":\"task\",\"worker_id\":\"x\",\"at\":\"2027-01-15T08:00:00Z\","
                            "\"interval_ms\":5000}", 74, T0, err, sizeof err), -1);
out:
  json_decref(doc);
  free(text);
  workers_free(w);
}

int main(void)
{
  static const struct check_test tests[] = {{"fleet", test_fleet}};
  return CHECK_RUN(tests);
}
