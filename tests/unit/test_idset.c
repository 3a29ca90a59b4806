/* Unit tests for common/idset.h: the bounded set of task ids the consumer keeps. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "idset.h"
#include "util.h"

static void test_add_has(void)
{
  struct idset *s = idset_new(10);
  const char *a = "7d1c2a3b-0000-4000-8000-000000000001";
  CHECK(s);
  CHECK_INT(idset_has(s, a), 0);
  CHECK_INT(idset_add(s, a), 1);
  CHECK_INT(idset_add(s, a), 0);
  CHECK_INT(idset_has(s, a), 1);
  /* Upper-case hex is the same id. */
  CHECK_INT(idset_has(s, "7D1C2A3B-0000-4000-8000-000000000001"), 1);
  CHECK_INT(idset_size(s), 1);
  CHECK_INT(idset_add(s, "not-a-uuid"), -1);
  CHECK_INT(idset_has(s, "not-a-uuid"), 0);
  CHECK_INT(idset_has(s, ""), 0);
out:
  idset_free(s);
}

/* Filling past the bound forgets exactly the oldest ids, and every survivor stays findable
 * after the backward-shift deletions. */
static void test_forgets_oldest(void)
{
  enum { MAX = 1000, TOTAL = 5000 };
  struct idset *s = idset_new(MAX);
  static char ids[TOTAL][UTIL_UUID_LEN];
  CHECK(s);
  for(int i = 0; i < TOTAL; i++) {
    CHECK(util_uuid4(ids[i]) == 0);
    CHECK_INT(idset_add(s, ids[i]), 1);
    CHECK(idset_size(s) <= MAX);
  }
  CHECK_INT(idset_size(s), MAX);
  for(int i = 0; i < TOTAL; i++)
    CHECK_INT(idset_has(s, ids[i]), i >= TOTAL - MAX);
out:
  idset_free(s);
}

static void test_tiny(void)
{
  struct idset *s = idset_new(1);
  CHECK(s);
  CHECK_INT(idset_add(s, "11111111-1111-4111-8111-111111111111"), 1);
  CHECK_INT(idset_add(s, "22222222-2222-4222-8222-222222222222"), 1);
  CHECK_INT(idset_has(s, "11111111-1111-4111-8111-111111111111"), 0);
  CHECK_INT(idset_has(s, "22222222-2222-4222-8222-222222222222"), 1);
  CHECK_INT(idset_size(s), 1);
out:
  idset_free(s);
}

int main(void)
{
  static const struct check_test tests[] = {
    {"add_has", test_add_has}, {"forgets_oldest", test_forgets_oldest}, {"tiny", test_tiny}};
  return check_run(tests, sizeof tests / sizeof tests[0]);
}
