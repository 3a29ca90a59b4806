/* Unit tests of common/util.h: RFC 3339 timestamps, UUIDs and UTF-8 clean-up. */
#include "util.h"

#include "check.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 2026-11-28T12:00:00.000Z */
#define T2026 INT64_C(1795867200000)

static void test_format(void)
{
  char buf[UTIL_TIME_LEN];
  CHECK_STR(util_format_time(0, buf), "1970-01-01T00:00:00.000Z");
  CHECK(util_format_time(1, buf) == buf);
  CHECK_STR(buf, "1970-01-01T00:00:00.001Z");
  CHECK_STR(util_format_time(999, buf), "1970-01-01T00:00:00.999Z");
  CHECK_STR(util_format_time(1000, buf), "1970-01-01T00:00:01.000Z");
  CHECK_STR(util_format_time(10, buf), "1970-01-01T00:00:00.010Z");
  CHECK_STR(util_format_time(T2026, buf), "2026-11-28T12:00:00.000Z");
  CHECK_STR(util_format_time(INT64_C(951868799999), buf), "2000-02-29T23:59:59.999Z");
  CHECK_STR(util_format_time(INT64_C(2147483648000), buf), "2038-01-19T03:14:08.000Z");
out:;
}

static void test_parse(void)
{
  int64_t ms = -1;
  CHECK(util_parse_time("1970-01-01T00:00:00.000Z", &ms) == 0);
  CHECK_INT(ms, 0);
  CHECK(util_parse_time("2026-11-28T12:00:00.000Z", &ms) == 0);
  CHECK_INT(ms, T2026);
  /* Without milliseconds, lower-case separators. */
  CHECK(util_parse_time("2026-11-28T12:00:00Z", &ms) == 0);
  CHECK_INT(ms, T2026);
  CHECK(util_parse_time("2026-11-28t12:00:00z", &ms) == 0);
  CHECK_INT(ms, T2026);
  /* Numeric offsets: local time minus the offset. */
  CHECK(util_parse_time("2026-11-28T12:00:00+05:30", &ms) == 0);
  CHECK_INT(ms, T2026 - (5 * 60 + 30) * 60000);
  CHECK(util_parse_time("2026-11-28T12:00:00.250-05:30", &ms) == 0);
  CHECK_INT(ms, T2026 + (5 * 60 + 30) * 60000 + 250);
  CHECK(util_parse_time("2026-11-28T12:00:00+00:00", &ms) == 0);
  CHECK_INT(ms, T2026);
  /* Fractions: fewer digits scale up, extra digits below the millisecond are truncated. */
  CHECK(util_parse_time("2026-11-28T12:00:00.5Z", &ms) == 0);
  CHECK_INT(ms, T2026 + 500);
  CHECK(util_parse_time("2026-11-28T12:00:00.05Z", &ms) == 0);
  CHECK_INT(ms, T2026 + 50);
  CHECK(util_parse_time("2026-11-28T12:00:00.123456789Z", &ms) == 0);
  CHECK_INT(ms, T2026 + 123);
  CHECK(util_parse_time("2026-11-28T12:00:00.999999Z", &ms) == 0);
  CHECK_INT(ms, T2026 + 999);
  CHECK(util_parse_time("2000-02-29T23:59:59.999Z", &ms) == 0);
  CHECK_INT(ms, INT64_C(951868799999));
  /* Month lengths and leap years. */
  CHECK(util_parse_time("2024-02-29T00:00:00Z", &ms) == 0);
  CHECK(util_parse_time("2026-01-31T00:00:00Z", &ms) == 0);
  CHECK(util_parse_time("2026-12-31T23:59:59.999Z", &ms) == 0);
  CHECK(util_parse_time("2026-11-30T00:00:00Z", &ms) == 0);
out:;
}

static void test_round_trip(void)
{
  static const int64_t values[] = {0, 1, 9, 10, 99, 100, 999, 1000, 1001, 59999, 86399999,
                                   T2026, T2026 + 1, T2026 + 999, INT64_C(951868799999),
                                   INT64_C(2147483648000), INT64_C(4102444800000)};
  char buf[UTIL_TIME_LEN];
  for(size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
    int64_t back = -1;
    CHECK(util_parse_time(util_format_time(values[i], buf), &back) == 0);
    CHECK_INT(back, values[i]);
  }
  /* And from text: every millisecond of one second survives. */
  for(int m = 0; m < 1000; m++) {
    char text[64];
    int64_t back;
    snprintf(text, sizeof text, "2026-11-28T12:00:00.%03dZ", m);
    CHECK(util_parse_time(text, &back) == 0);
    CHECK_STR(util_format_time(back, buf), text);
  }
out:;
}

static void test_parse_rejects(void)
{
  static const char *const bad[] = {
    "",
    "garbage",
    "2026",
    "2026-11-28",
    "2026-11-28T",
    "2026-11-28T12:00",
    "2026-11-28T12:00:00",      /* no zone */
    "2026-11-28T12:00:00.Z",    /* fraction without digits */
    "2026-11-28T12:00:00.000",  /* no zone */
    "2026-11-28T12:00:00.000ZZ",
    "2026-11-28T12:00:00.000Z ",
    " 2026-11-28T12:00:00.000Z",
    "2026-11-28X12:00:00Z",
    "2026/11/28T12:00:00Z",
    "26-11-28T12:00:00Z",
    "2026-1-28T12:00:00Z",
    "2026-13-28T12:00:00Z",
    "2026-00-28T12:00:00Z",
    "2026-11-00T12:00:00Z",
    "2026-11-32T12:00:00Z",
    "2026-11-31T12:00:00Z",     /* November has 30 days */
    "2026-02-29T12:00:00Z",     /* not a leap year */
    "2026-02-30T12:00:00Z",
    "1900-02-29T12:00:00Z",     /* divisible by 100, not by 400 */
    "2026-04-31T12:00:00Z",
    "2026-11-28T24:00:00Z",
    "2026-11-28T12:60:00Z",
    "2026-11-28T12:00:61Z",
    "2026-11-28T12:00:00+0530",
    "2026-11-28T12:00:00+05",
    "2026-11-28T12:00:00+24:00",
    "2026-11-28T12:00:00+05:60",
    "2026-11-28T12:00:00+5:30",
    "2026-11-28T12:00:00 UTC",
    "2026-11-28T1a:00:00Z",
    "abcd-ef-ghTij:kl:mnZ",
  };
  for(size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int64_t ms = 12345;
    if(util_parse_time(bad[i], &ms) != -1)
      fprintf(stderr, "accepted: \"%s\"\n", bad[i]);
    CHECK(util_parse_time(bad[i], &ms) == -1);
  }
out:;
}

static int hexval(char c)
{
  if(c >= '0' && c <= '9')
    return c - '0';
  if(c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

static int cmp_str(const void *a, const void *b)
{
  return strcmp((const char *)a, (const char *)b);
}

static void test_uuid4(void)
{
  enum { N = 1000 };
  char(*ids)[UTIL_UUID_LEN] = calloc(N, sizeof *ids);
  CHECK(ids != NULL);
  for(int i = 0; i < N; i++) {
    char *u = ids[i];
    memset(u, 'x', UTIL_UUID_LEN);
    CHECK(util_uuid4(u) == 0);
    CHECK_INT(strlen(u), 36);
    for(int j = 0; j < 36; j++) {
      if(j == 8 || j == 13 || j == 18 || j == 23)
        CHECK(u[j] == '-');
      else
        CHECK(hexval(u[j]) >= 0); /* lower-case hex only */
    }
    CHECK(u[14] == '4');                         /* version 4 */
    CHECK((hexval(u[19]) & 0xc) == 0x8);         /* variant 10xx: 8, 9, a or b */
    CHECK(util_is_uuid(u));
  }
  qsort(ids, N, sizeof *ids, cmp_str);
  for(int i = 1; i < N; i++)
    CHECK(strcmp(ids[i - 1], ids[i]) != 0);
out:
  free(ids);
}

static void test_is_uuid(void)
{
  CHECK(util_is_uuid("123e4567-e89b-42d3-a456-426614174000"));
  CHECK(util_is_uuid("00000000-0000-0000-0000-000000000000"));
  CHECK(util_is_uuid("ABCDEF01-2345-6789-ABCD-EF0123456789"));
  CHECK(!util_is_uuid(""));
  CHECK(!util_is_uuid("not-a-uuid"));
  CHECK(!util_is_uuid("123e4567-e89b-42d3-a456-42661417400"));   /* 35 characters */
  CHECK(!util_is_uuid("123e4567-e89b-42d3-a456-4266141740000")); /* 37 characters */
  CHECK(!util_is_uuid("123e4567e89b42d3a456426614174000"));      /* no dashes */
  CHECK(!util_is_uuid("123e4567-e89b-42d3-a456_426614174000"));
  CHECK(!util_is_uuid("123e4567-e89b-42d3-a4560426614174000-"));
  CHECK(!util_is_uuid("g23e4567-e89b-42d3-a456-426614174000"));
  CHECK(!util_is_uuid("{23e4567-e89b-42d3-a456-426614174000}"));
  CHECK(!util_is_uuid(" 123e4567-e89b-42d3-a456-426614174000"));
  CHECK(!util_is_uuid("123e4567-e89b-42d3-a456-426614174000\n"));
out:;
}

static void test_clocks(void)
{
  int64_t now = util_now_ms(), m1 = util_mono_ms(), m2 = util_mono_ms();
  CHECK(now > 0);
  CHECK(m2 >= m1);
out:;
}

static void test_utf8_sanitize(void)
{
  char cut[] = "caf\xc3\xa9 na\xc3"; /* "café na" and half of a 2-byte character */
  char stray[] = "a\xff\xfe b \xed\xa0\x80 \xf0\x9f\x98\x80";
  char fine[] = "ni\xc3\xb1o \xe2\x82\xac";
  util_utf8_sanitize(cut);
  CHECK_STR(cut, "caf\xc3\xa9 na?");
  util_utf8_sanitize(stray); /* bad bytes and a surrogate become '?', the emoji stays */
  CHECK_STR(stray, "a?? b ??? \xf0\x9f\x98\x80");
  util_utf8_sanitize(fine);
  CHECK_STR(fine, "ni\xc3\xb1o \xe2\x82\xac");
out:;
}

int main(void)
{
  static const struct check_test tests[] = {
    {"format", test_format},
    {"parse", test_parse},
    {"round_trip", test_round_trip},
    {"parse_rejects", test_parse_rejects},
    {"uuid4", test_uuid4},
    {"is_uuid", test_is_uuid},
    {"clocks", test_clocks},
    {"utf8_sanitize", test_utf8_sanitize},
  };
  return CHECK_RUN(tests);
}
