/* The checks every unit test uses. Not assert(): they must survive -DNDEBUG. A failed check
 * reports file:line and ends the current test function (each defines an `out:` label). */
#ifndef MSG_TEST_CHECK_H
#define MSG_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int failures, checks;

#define CHECK(cond)                                                                \
  do {                                                                             \
    checks++;                                                                      \
    if(!(cond)) {                                                                  \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);     \
      failures++;                                                                  \
      goto out;                                                                    \
    }                                                                              \
  } while(0)

#define CHECK_STR(got, want)                                                       \
  do {                                                                             \
    const char *g_ = (got), *w_ = (want);                                          \
    checks++;                                                                      \
    if(!g_ || strcmp(g_, w_)) {                                                    \
      fprintf(stderr, "%s:%d: %s\n  got:  %s\n  want: %s\n", __FILE__, __LINE__,   \
              #got, g_ ? g_ : "(null)", w_);                                       \
      failures++;                                                                  \
      goto out;                                                                    \
    }                                                                              \
  } while(0)

/* Integer equality that prints both values. */
#define CHECK_INT(got, want)                                                       \
  do {                                                                             \
    long long g_ = (long long)(got), w_ = (long long)(want);                       \
    checks++;                                                                      \
    if(g_ != w_) {                                                                 \
      fprintf(stderr, "%s:%d: %s\n  got:  %lld\n  want: %lld\n", __FILE__,         \
              __LINE__, #got, g_, w_);                                             \
      failures++;                                                                  \
      goto out;                                                                    \
    }                                                                              \
  } while(0)

struct check_test {
  const char *name;
  void (*fn)(void);
};

/* Runs each test, prints "ok"/"FAIL" per test and a summary; returns main's exit status. */
static inline int check_run(const struct check_test *tests, size_t n)
{
  int failed_tests = 0;
  for(size_t i = 0; i < n; i++) {
    int before = failures;
    tests[i].fn();
    printf("%s %s\n", failures == before ? "ok  " : "FAIL", tests[i].name);
    if(failures != before)
      failed_tests++;
  }
  printf("%d checks, %d failed; %d of %zu tests failed\n", checks, failures, failed_tests, n);
  return failures ? 1 : 0;
}

#define CHECK_RUN(tests) check_run((tests), sizeof(tests) / sizeof((tests)[0]))

#endif
