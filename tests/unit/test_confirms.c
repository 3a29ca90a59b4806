/* Unit tests of common/confirms.h: publisher-confirm bookkeeping without a broker. */
#include "confirms.h"

#include "check.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Every settlement, in order. Owners are small integers cast to pointers. */
#define MAX_LOG 8192
struct rec {
  struct confirms *c;
  size_t n;
  intptr_t owner[MAX_LOG];
  int ok[MAX_LOG];
  /* When add_on_settle is set, settling owner add_on_settle publishes owner add_owner. */
  intptr_t add_on_settle, add_owner;
  uint64_t added_seq;
};

static void on_settle(void *owner, int ok, void *ctx)
{
  struct rec *r = ctx;
  if(r->n < MAX_LOG) {
    r->owner[r->n] = (intptr_t)owner;
    r->ok[r->n] = ok;
  }
  r->n++;
  if(r->add_on_settle && (intptr_t)owner == r->add_on_settle) {
    r->add_on_settle = 0;
    r->added_seq = confirms_add(r->c, (void *)r->add_owner);
  }
}

static struct rec *rec_new(void)
{
  struct rec *r = calloc(1, sizeof *r);
  if(r)
    r->c = confirms_new(on_settle, r);
  if(r && !r->c) {
    free(r);
    return NULL;
  }
  return r;
}

static void rec_free(struct rec *r)
{
  if(r) {
    confirms_free(r->c);
    free(r);
  }
}

#define P(i) ((void *)(intptr_t)(i))

static void test_single(void)
{
  struct rec *r = rec_new();
  CHECK(r != NULL);
  CHECK_INT(confirms_outstanding(r->c), 0);
  CHECK_INT(confirms_add(r->c, P(11)), 1);
  CHECK_INT(confirms_add(r->c, P(12)), 2);
  CHECK_INT(confirms_add(r->c, P(13)), 3);
  CHECK_INT(confirms_outstanding(r->c), 3);
  confirms_settle(r->c, 1, 0, 1);
  CHECK_INT(r->n, 1);
  CHECK_INT(r->owner[0], 11);
  CHECK_INT(r->ok[0], 1);
  CHECK_INT(confirms_outstanding(r->c), 2);
  confirms_settle(r->c, 2, 0, 1);
  confirms_settle(r->c, 3, 0, 1);
  CHECK_INT(r->n, 3);
  CHECK_INT(r->owner[1], 12);
  CHECK_INT(r->owner[2], 13);
  CHECK_INT(confirms_outstanding(r->c), 0);
  /* Numbering goes on after everything is settled. */
  CHECK_INT(confirms_add(r->c, P(14)), 4);
out:
  rec_free(r);
}

static void test_multiple(void)
{
  struct rec *r = rec_new();
  CHECK(r != NULL);
  for(int i = 1; i <= 5; i++)
    CHECK_INT(confirms_add(r->c, P(100 + i)), i);
  confirms_settle(r->c, 3, 1, 1); /* acks 1..3 */
  CHECK_INT(r->n, 3);
  for(int i = 0; i < 3; i++) {
    CHECK_INT(r->owner[i], 101 + i);
    CHECK_INT(r->ok[i], 1);
  }
  CHECK_INT(confirms_outstanding(r->c), 2);
  confirms_settle(r->c, 5, 1, 0); /* nacks 4..5 */
  CHECK_INT(r->n, 5);
  CHECK_INT(r->owner[3], 104);
  CHECK_INT(r->owner[4], 105);
  CHECK_INT(r->ok[3], 0);
  CHECK_INT(r->ok[4], 0);
  CHECK_INT(confirms_outstanding(r->c), 0);
out:
  rec_free(r);
}

static void test_out_of_order(void)
{
  struct rec *r = rec_new();
  CHECK(r != NULL);
  for(int i = 1; i <= 6; i++)
    confirms_add(r->c, P(i));
  confirms_settle(r->c, 4, 0, 1);
  confirms_settle(r->c, 2, 0, 0);
  CHECK_INT(r->n, 2);
  CHECK_INT(r->owner[0], 4);
  CHECK_INT(r->ok[0], 1);
  CHECK_INT(r->owner[1], 2);
  CHECK_INT(r->ok[1], 0);
  CHECK_INT(confirms_outstanding(r->c), 4);
  /* A multiple ack over settled tags settles only the open ones, each once. */
  confirms_settle(r->c, 5, 1, 1);
  CHECK_INT(r->n, 5);
  CHECK_INT(r->owner[2], 1);
  CHECK_INT(r->owner[3], 3);
  CHECK_INT(r->owner[4], 5);
  CHECK(r->ok[2] && r->ok[3] && r->ok[4]);
  CHECK_INT(confirms_outstanding(r->c), 1);
  /* Settling an already settled tag again does nothing. */
  confirms_settle(r->c, 4, 0, 0);
  confirms_settle(r->c, 5, 1, 0);
  CHECK_INT(r->n, 5);
  confirms_settle(r->c, 6, 0, 1);
  CHECK_INT(r->n, 6);
  CHECK_INT(r->owner[5], 6);
  CHECK_INT(confirms_outstanding(r->c), 0);
out:
  rec_free(r);
}

static void test_nack(void)
{
  struct rec *r = rec_new();
  CHECK(r != NULL);
  confirms_add(r->c, P(1));
  confirms_add(r->c, NULL); /* owners may be NULL */
  confirms_settle(r->c, 1, 0, 0);
  confirms_settle(r->c, 2, 0, 0);
  CHECK_INT(r->n, 2);
  CHECK_INT(r->owner[0], 1);
  CHECK_INT(r->ok[0], 0);
  CHECK_INT(r->owner[1], 0);
  CHECK_INT(r->ok[1], 0);
out:
  rec_free(r);
}

static void test_unknown_tags(void)
{
  struct rec *r = rec_new();
  CHECK(r != NULL);
  confirms_settle(r->c, 1, 0, 1); /* nothing published yet */
  confirms_settle(r->c, 1, 1, 1);
  CHECK_INT(r->n, 0);
  confirms_add(r->c, P(1));
  confirms_add(r->c, P(2));
  confirms_settle(r->c, 0, 0, 1);
  confirms_settle(r->c, 0, 1, 1);
  confirms_settle(r->c, 3, 0, 1);
  confirms_settle(r->c, 99, 1, 1);
  confirms_settle(r->c, UINT64_MAX, 1, 1);
  CHECK_INT(r->n, 0);
  CHECK_INT(confirms_outstanding(r->c), 2);
  confirms_settle(r->c, 1, 0, 1);
  confirms_settle(r->c, 1, 0, 1); /* popped: now below the head */
  CHECK_INT(r->n, 1);
  CHECK_INT(confirms_outstanding(r->c), 1);
out:
  rec_free(r);
}

static int owner_is(void *owner, void *arg)
{
  return owner == arg;
}

static void test_returned(void)
{
  struct rec *r = rec_new();
  CHECK(r != NULL);
  confirms_add(r->c, P(1));
  confirms_add(r->c, P(2));
  confirms_add(r->c, P(2));
  confirms_add(r->c, P(3));
  /* Matches the oldest open publish of owner 2: tag 2. */
  confirms_mark_returned(r->c, owner_is, P(2));
  /* No match: nothing marked. */
  confirms_mark_returned(r->c, owner_is, P(77));
  CHECK_INT(r->n, 0);
  CHECK_INT(confirms_outstanding(r->c), 4);
  confirms_settle(r->c, 4, 1, 1); /* ack 1..4 */
  CHECK_INT(r->n, 4);
  CHECK_INT(r->owner[0], 1);
  CHECK_INT(r->ok[0], 1);
  CHECK_INT(r->owner[1], 2);
  CHECK_INT(r->ok[1], 0); /* returned, then acked: not delivered */
  CHECK_INT(r->owner[2], 2);
  CHECK_INT(r->ok[2], 1);
  CHECK_INT(r->owner[3], 3);
  CHECK_INT(r->ok[3], 1);
  /* Single ack of a returned publish. */
  confirms_add(r->c, P(9));
  confirms_mark_returned(r->c, owner_is, P(9));
  confirms_settle(r->c, 5, 0, 1);
  CHECK_INT(r->n, 5);
  CHECK_INT(r->owner[4], 9);
  CHECK_INT(r->ok[4], 0);
out:
  rec_free(r);
}

static void test_fail_all(void)
{
  struct rec *r = rec_new();
  CHECK(r != NULL);
  for(int i = 1; i <= 5; i++)
    confirms_add(r->c, P(i));
  confirms_settle(r->c, 2, 0, 1);
  CHECK_INT(r->n, 1);
  confirms_fail_all(r->c);
  CHECK_INT(r->n, 5);
  CHECK_INT(r->owner[1], 1);
  CHECK_INT(r->owner[2], 3);
  CHECK_INT(r->owner[3], 4);
  CHECK_INT(r->owner[4], 5);
  for(int i = 1; i < 5; i++)
    CHECK_INT(r->ok[i], CONFIRM_LOST);
  CHECK_INT(confirms_outstanding(r->c), 0);
  /* Numbering restarts at 1, and the old tags do not confuse the new ones. */
  CHECK_INT(confirms_add(r->c, P(21)), 1);
  CHECK_INT(confirms_add(r->c, P(22)), 2);
  confirms_settle(r->c, 2, 1, 1);
  CHECK_INT(r->n, 7);
  CHECK_INT(r->owner[5], 21);
  CHECK_INT(r->owner[6], 22);
  CHECK(r->ok[5] && r->ok[6]);
  /* fail_all on an empty tracker only resets. */
  confirms_fail_all(r->c);
  CHECK_INT(r->n, 7);
  CHECK_INT(confirms_add(r->c, P(31)), 1);
  /* A returned publish failed by fail_all is reported once. */
  confirms_mark_returned(r->c, owner_is, P(31));
  confirms_fail_all(r->c);
  CHECK_INT(r->n, 8);
  CHECK_INT(r->owner[7], 31);
  CHECK_INT(r->ok[7], 0);
out:
  rec_free(r);
}

static void test_growth(void)
{
  enum { N = 3000 };
  struct rec *r = rec_new();
  CHECK(r != NULL);
  /* Wrap the ring first: 1000 in, 600 out, then far past 1024 outstanding. */
  for(int i = 1; i <= 1000; i++)
    CHECK_INT(confirms_add(r->c, P(i)), i);
  confirms_settle(r->c, 600, 1, 1);
  CHECK_INT(r->n, 600);
  for(int i = 1001; i <= N; i++)
    CHECK_INT(confirms_add(r->c, P(i)), i);
  CHECK_INT(confirms_outstanding(r->c), N - 600);
  /* Settle the rest out of order: odd tags one by one, then everything with one multiple. */
  for(int i = N - 1; i > 600; i -= 2)
    confirms_settle(r->c, (uint64_t)i, 0, 1);
  CHECK_INT(r->n, 600 + (N - 600) / 2);
  confirms_settle(r->c, N, 1, 1);
  CHECK_INT(r->n, N);
  CHECK_INT(confirms_outstanding(r->c), 0);
  {
    /* Each owner settled exactly once, all acked. */
    static unsigned char seen[N + 1];
    for(size_t k = 0; k < r->n; k++) {
      intptr_t o = r->owner[k];
      CHECK(o >= 1 && o <= N);
      CHECK(!seen[o]);
      seen[o] = 1;
      CHECK(r->ok[k] == 1);
    }
  }
  CHECK_INT(confirms_add(r->c, P(1)), N + 1);
out:
  rec_free(r);
}

static void test_add_during_settle(void)
{
  struct rec *r = rec_new();
  CHECK(r != NULL);
  /* Exactly full ring, so the publish added from the callback has to grow it mid-settle. */
  for(int i = 1; i <= 1024; i++)
    confirms_add(r->c, P(i));
  r->add_on_settle = 2;
  r->add_owner = 5000;
  confirms_settle(r->c, 4, 1, 1); /* settling 2 adds tag 1025 */
  CHECK_INT(r->added_seq, 1025);
  CHECK_INT(r->n, 4);
  for(int i = 0; i < 4; i++)
    CHECK_INT(r->owner[i], i + 1);
  CHECK_INT(confirms_outstanding(r->c), 1024 - 4 + 1);
  confirms_settle(r->c, 1025, 0, 1);
  CHECK_INT(r->n, 5);
  CHECK_INT(r->owner[4], 5000);
  confirms_settle(r->c, 1024, 1, 1);
  CHECK_INT(r->n, 1025);
  CHECK_INT(r->owner[1024], 1024);
  CHECK_INT(confirms_outstanding(r->c), 0);
  /* Adding during a single settle. */
  r->add_on_settle = 7000;
  r->add_owner = 7001;
  confirms_add(r->c, P(7000));
  confirms_settle(r->c, 1026, 0, 1);
  CHECK_INT(r->added_seq, 1027);
  CHECK_INT(confirms_outstanding(r->c), 1);
  confirms_settle(r->c, 1027, 0, 1);
  CHECK_INT(r->owner[r->n - 1], 7001);
  CHECK_INT(confirms_outstanding(r->c), 0);
out:
  rec_free(r);
}

static void test_free_null(void)
{
  confirms_free(NULL);
  CHECK(1);
out:;
}

int main(void)
{
  static const struct check_test tests[] = {
    {"single", test_single},
    {"multiple", test_multiple},
    {"out_of_order", test_out_of_order},
    {"nack", test_nack},
    {"unknown_tags", test_unknown_tags},
    {"returned", test_returned},
    {"fail_all", test_fail_all},
    {"growth", test_growth},
    {"add_during_settle", test_add_during_settle},
    {"free_null", test_free_null},
  };
  return CHECK_RUN(tests);
}
