/* Unit tests for api/in_doubt.h: requests with an unknown outcome, by Idempotency-Key. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "in_doubt.h"

#define T1 "0b7c1a2e-51c2-4d3e-9f00-000000000001"
#define T2 "0b7c1a2e-51c2-4d3e-9f00-000000000002"
#define T3 "0b7c1a2e-51c2-4d3e-9f00-000000000003"

static void test_in_doubt(void)
{
  struct in_doubt *t = in_doubt_new(2);
  char id[UTIL_UUID_LEN];
  uint64_t hash;
  enum in_doubt_state state;
  CHECK(t != NULL);
  CHECK(!in_doubt_get(t, "k1", id, &hash, &state));
  CHECK_INT(in_doubt_put(t, "k1", T1, 11, IN_DOUBT_PENDING), 0);
  CHECK(in_doubt_get(t, "k1", id, &hash, &state));
  CHECK_STR(id, T1);
  CHECK_INT(hash, 11);
  CHECK_INT(state, IN_DOUBT_PENDING);

  /* The late outcome moves the state of that task only. */
  CHECK_INT(in_doubt_put(t, "k2", T2, 22, IN_DOUBT_LOST), 0);
  in_doubt_settle(t, T1, IN_DOUBT_CONFIRMED);
  CHECK(in_doubt_get(t, "k1", id, &hash, &state));
  CHECK_INT(state, IN_DOUBT_CONFIRMED);
  CHECK(in_doubt_get(t, "k2", id, &hash, &state));
  CHECK_INT(state, IN_DOUBT_LOST);
  in_doubt_settle(t, T3, IN_DOUBT_REFUSED); /* not held: nothing happens */

  /* Putting a key again replaces its entry; forgetting removes it. */
  CHECK_INT(in_doubt_put(t, "k2", T2, 22, IN_DOUBT_PENDING), 0);
  CHECK(in_doubt_get(t, "k2", id, &hash, &state));
  CHECK_INT(state, IN_DOUBT_PENDING);
  in_doubt_forget(t, "k2");
  CHECK(!in_doubt_get(t, "k2", id, &hash, &state));

  /* Bounded: the oldest entry goes first. */
  CHECK_INT(in_doubt_put(t, "k3", T3, 33, IN_DOUBT_PENDING), 0);
  CHECK_INT(in_doubt_put(t, "k4", T3, 44, IN_DOUBT_PENDING), 0);
  CHECK(in_doubt_get(t, "k4", id, &hash, &state));
  CHECK(!in_doubt_get(t, "k1", id, &hash, &state) || !in_doubt_get(t, "k3", id, &hash, &state));
out:
  in_doubt_free(t);
}

int main(void)
{
  static const struct check_test tests[] = {{"in_doubt", test_in_doubt}};
  return CHECK_RUN(tests);
}
