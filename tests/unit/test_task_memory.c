/* Unit tests for consumer/task_memory.h: sent, cancelled and unrecorded sends. */
#include <limits.h>
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

/* A task id made of n (distinct for distinct n). */
static void id_of(unsigned n, char out[37])
{
  snprintf(out, 37, "%08x-0000-4000-8000-%012x", n, n * 2654435761u);
}

static void test_started(void)
{
  struct task_memory *m = task_memory_new(4);
  char id[37];
  int64_t since = 0, last = 0;
  CHECK(m != NULL);
  /* A STARTED puts the task in doubt until an outcome of that attempt or a later one. */
  task_memory_note_started(m, T1, 1, 1000);
  CHECK(task_memory_in_doubt(m, T1, &since, &last));
  CHECK_INT(since, 1000);
  task_memory_note_outcome(m, T1, 0);
  CHECK(task_memory_in_doubt(m, T1, &since, &last));
  /* Started again (redelivered, sent again): the window opens at the first start. */
  task_memory_note_started(m, T1, 2, 5000);
  CHECK(task_memory_in_doubt(m, T1, &since, &last));
  CHECK_INT(since, 1000);
  CHECK_INT(last, 5000);
  /* RETRY of attempt 1 does not settle attempt 2. */
  task_memory_note_outcome(m, T1, 1);
  CHECK(task_memory_in_doubt(m, T1, &since, &last));
  task_memory_note_outcome(m, T1, 2);
  CHECK(!task_memory_in_doubt(m, T1, &since, &last));
  CHECK_INT(task_memory_started_count(m), 0);
  CHECK(!task_memory_in_doubt(m, T2, &since, &last));
  task_memory_note_started(m, "not-a-uuid", 1, 1);
  CHECK_INT(task_memory_started_count(m), 0);

  /* Many at once, removed in another order: every lookup stays right (probing, deletion). */
  for(unsigned i = 0; i < 20000; i++) {
    id_of(i, id);
    task_memory_note_started(m, id, 1, i);
  }
  CHECK_INT(task_memory_started_count(m), 20000);
  for(unsigned i = 0; i < 20000; i += 2) {
    id_of(i, id);
    task_memory_note_outcome(m, id, INT_MAX);
  }
  CHECK_INT(task_memory_started_count(m), 10000);
  for(unsigned i = 0; i < 20000; i++) {
    id_of(i, id);
    if(task_memory_in_doubt(m, id, &since, &last) != (int)(i % 2) || (i % 2 && since != i)) {
      fprintf(stderr, "task %u: wrong in-doubt answer\n", i);
      failures++;
      break;
    }
  }
  /* Bounded: past TASK_MEMORY_STARTED_MAX a start is not remembered. */
  for(unsigned i = 100000; i < 100000 + TASK_MEMORY_STARTED_MAX; i++) {
    id_of(i, id);
    task_memory_note_started(m, id, 1, 1);
  }
  CHECK_INT(task_memory_started_count(m), TASK_MEMORY_STARTED_MAX);
out:
  task_memory_free(m);
}

int main(void)
{
  static const struct check_test tests[] = {{"memory", test_memory}, {"started", test_started}};
  return CHECK_RUN(tests);
}
