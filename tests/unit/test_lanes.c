/* Unit tests for consumer/lanes.h: per-instance rates from the configuration, and the token
 * bucket that paces each rate-limited instance. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfg.h"
#include "check.h"
#include "lanes.h"

#define SEC 1000000

/* Loads a configuration whose evolution section is `evolution` (YAML lines). */
static struct cfg *load(const char *evolution, char **errors)
{
  char path[] = "/tmp/test_lanes_XXXXXX";
  int fd = mkstemp(path);
  struct cfg *cfg;
  FILE *f;
  *errors = NULL;
  if(fd < 0 || !(f = fdopen(fd, "w")))
    return NULL;
  fprintf(f, "evolution:\n%s", evolution);
  fclose(f);
  cfg = cfg_load(path, errors);
  unlink(path);
  return cfg;
}

static void test_rates_from_config(void)
{
  char *errors = NULL;
  struct cfg *cfg = load("  rate_limit: 2.5\n  rate_burst: 3\n"
                         "  rate_limits: [\"bulk=0.2\", \"otp=0\", \"fast.one=100\"]\n",
                         &errors);
  CHECK(cfg);
  CHECK(cfg_instance_rate(cfg, "bulk") == 0.2);
  CHECK(cfg_instance_rate(cfg, "otp") == 0);
  CHECK(cfg_instance_rate(cfg, "fast.one") == 100);
  CHECK(cfg_instance_rate(cfg, "other") == 2.5);
  /* A prefix of a listed name is another instance. */
  CHECK(cfg_instance_rate(cfg, "bul") == 2.5);
  CHECK(cfg_instance_rate(cfg, "bulk2") == 2.5);
  CHECK_INT(cfg->evolution.rate_burst, 3);
  CHECK_INT(cfg_any_rate_limit(cfg), 1);
  cfg_free(cfg);
  free(errors);
  /* Overrides that all say "unlimited" (in any spelling) limit nothing. */
  cfg = load("  rate_limits: [\"otp=0\", \"bulk=0.0\"]\n", &errors);
  CHECK(cfg);
  CHECK_INT(cfg_any_rate_limit(cfg), 0);
out:
  cfg_free(cfg);
  free(errors);
}

static void test_bad_entries_are_config_errors(void)
{
  static const char *const bad[] = {"bulk", "=5", "bulk=", "bulk=-1", "bulk=fast", "bulk= 5",
                                    "bad/name=5", "bulk=5x", "bulk=2000000"};
  for(size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char yaml[128], *errors = NULL;
    struct cfg *cfg;
    snprintf(yaml, sizeof yaml, "  rate_limits: [\"%s\"]\n", bad[i]);
    cfg = load(yaml, &errors);
    if(cfg || !errors || !strstr(errors, ":2:") ||
       !strstr(errors, "evolution.rate_limits[0]: expected \"<instance>=<sends per second>\"")) {
      fprintf(stderr, "entry %s: got %s\n", bad[i], errors ? errors : "no error");
      cfg_free(cfg);
      free(errors);
      CHECK(0);
    }
    free(errors);
  }
out:;
}

static void test_bucket_paces(void)
{
  char *errors = NULL;
  struct cfg *cfg = load("  rate_limits: [\"slow=5\"]\n  rate_burst: 2\n", &errors);
  struct lane_table *t = cfg ? lanes_new(cfg) : NULL;
  struct lane *l, *free_lane;
  int64_t now = 1000 * (int64_t)SEC;
  CHECK(t);
  l = lanes_get(t, "slow", now);
  CHECK(l);
  CHECK(lanes_get(t, "slow", now) == l);
  /* The burst goes at once, then one every 200 ms. */
  CHECK_INT(lane_take(l, now), 1);
  CHECK_INT(lane_take(l, now), 1);
  CHECK_INT(lane_take(l, now), 0);
  CHECK(lane_wait_us(l, now) > SEC / 5 - 10 && lane_wait_us(l, now) <= SEC / 5 + 1);
  CHECK_INT(lane_take(l, now + SEC / 5 - 1000), 0);
  now += SEC / 5;
  CHECK_INT(lane_take(l, now), 1);
  CHECK_INT(lane_take(l, now), 0);
  /* A quiet spell refills no more than the burst. */
  now += 60 * (int64_t)SEC;
  CHECK_INT(lane_take(l, now), 1);
  CHECK_INT(lane_take(l, now), 1);
  CHECK_INT(lane_take(l, now), 0);
  /* Over any second, at most rate + burst sends. */
  {
    int sent = 0;
    for(int64_t t_us = now; t_us < now + SEC; t_us += 1000)
      sent += lane_take(l, t_us);
    CHECK(sent <= 5 + 2);
    CHECK(sent >= 4);
  }
  /* An instance without a rate is never held. */
  free_lane = lanes_get(t, "other", now);
  CHECK(free_lane);
  CHECK(free_lane->rate == 0);
  for(int i = 0; i < 1000; i++)
    CHECK_INT(lane_take(free_lane, now), 1);
  CHECK_INT(lane_wait_us(free_lane, now), 0);
out:
  lanes_free(t);
  cfg_free(cfg);
  free(errors);
}

/* Many lanes: each found again, in creation order, across the table's growth. */
static void test_many_lanes(void)
{
  char *errors = NULL, name[32];
  struct cfg *cfg = load("  rate_limit: 1\n", &errors);
  struct lane_table *t = cfg ? lanes_new(cfg) : NULL;
  CHECK(t);
  for(int i = 0; i < 5000; i++) {
    struct lane *l;
    snprintf(name, sizeof name, "inst-%d", i);
    l = lanes_get(t, name, 0);
    CHECK(l);
    CHECK_INT(l->index, i);
  }
  CHECK_INT(lanes_count(t), 5000);
  for(int i = 0; i < 5000; i++) {
    snprintf(name, sizeof name, "inst-%d", i);
    CHECK(lanes_get(t, name, 0) == lanes_at(t, (size_t)i));
  }
  CHECK_INT(lanes_count(t), 5000);
out:
  lanes_free(t);
  cfg_free(cfg);
  free(errors);
}

/* Held jobs: first come, first served behind the bucket; released in order. */
static void test_held_jobs(void)
{
  char *errors = NULL;
  struct cfg *cfg = load("  rate_limits: [\"slow=5\"]\n  rate_burst: 1\n", &errors);
  struct lane_table *t = cfg ? lanes_new(cfg) : NULL;
  struct lane_item a, b, c, f1, f2;
  struct lane *l;
  int64_t now = 1000 * (int64_t)SEC;
  CHECK(t);
  l = lanes_get(t, "slow", now);
  CHECK(l);
  CHECK_INT(lane_admit(l, &a, now), 1); /* the burst of one */
  CHECK_INT(lane_admit(l, &b, now), 0);
  CHECK_INT(lane_admit(l, &c, now), 0);
  CHECK_INT(lane_held(l), 2);
  CHECK(lane_next_ready(l, now) == NULL); /* no token yet */
  CHECK(lane_next_ready(l, now + SEC / 5) == &b);
  /* A newcomer never overtakes c, even with a token there. */
  CHECK_INT(lane_admit(l, &a, now + 2 * SEC), 0);
  CHECK(lane_next_ready(l, now + 2 * SEC) == &c);
  CHECK(lane_next_held(l) == &a);
  CHECK(lane_next_held(l) == NULL);
  CHECK_INT(lane_held(l), 0);

  CHECK(!lane_has_held_for_open(l));
  lane_hold_for_open(l, &f1);
  lane_hold_for_open(l, &f2);
  CHECK(lane_has_held_for_open(l));
  CHECK(lane_next_for_open(l) == &f1);
  CHECK(lane_next_for_open(l) == &f2);
  CHECK(lane_next_for_open(l) == NULL);
  l->open = 1;
  lane_reset(l);
  CHECK_INT(l->open, 0);
out:
  lanes_free(t);
  cfg_free(cfg);
  free(errors);
}

int main(void)
{
  static const struct check_test tests[] = {{"rates_from_config", test_rates_from_config},
                                            {"bad_entries", test_bad_entries_are_config_errors},
                                            {"bucket_paces", test_bucket_paces},
                                            {"many_lanes", test_many_lanes},
                                            {"held_jobs", test_held_jobs}};
  return check_run(tests, sizeof tests / sizeof tests[0]);
}
