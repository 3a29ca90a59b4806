/* Unit tests for consumer/task_memory.h: sent, cancelled and unrecorded sends. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "task_memory.h"

#define T1 "0b7c1a2e-51c2-4d3e-9f00-000000000001"
#define T2 "0b7c1a2e-51c2-4d3e-9f00-000000000002"
#define T3 "0b7c1a2e-51c2-4d3e-9f00-000000000003"

static void test_memory(void)
{
  struct task_memory *m = task_memory_new(2);
  char key[TASK_MEMORY_KEY_LEN];
  CHECK(m != NULL);
  CHECK(!task_memory_sent(m, T1));
  task_memory_note_sent(m, T1);
  task_memory_note_cancelled(m, T2);
  CHECK(task_memory_sent(m, T1));
  CHECK(!task_memory_cancelled(m, T1));
  CHECK(task_memory_cancelled(m, T2));
  CHECK(!task_memory_unrecorded(m, T1, key));

  /* An unrecorded send counts as sent, and keeps its key until it is recorded. */
  task_memory_note_unrecorded(m, T3, "3EB0ABCD");
  CHECK(task_memory_sent(m, T3));
  CHECK(task_memory_unrecorded(m, T3, key));
  CHECK_STR(key, "3EB0ABCD");
  task_memory_note_unrecorded(m, T3, "3EB0NEWER");
  CHECK(task_memory_unrecorded(m, T3, key));
  CHECK_STR(key, "3EB0NEWER");
  task_memory_recorded(m, T3);
  CHECK(!task_memory_unrecorded(m, T3, key));
  CHECK(task_memory_sent(m, T3));
  CHECK(!task_memory_unrecorded(m, "", key));

  /* Bounded: the oldest sent task is forgotten first. */
  CHECK_INT(task_memory_sent_count(m), 2);
  task_memory_note_sent(m, T2);
  CHECK_INT(task_memory_sent_count(m), 2);
  CHECK(!task_memory_sent(m, T1));
  CHECK(task_memory_sent(m, T2));
out:
  task_memory_free(m);
}

int main(void)
{
  static const struct check_test tests[] = {{"memory", test_memory}};
  return CHECK_RUN(tests);
}
