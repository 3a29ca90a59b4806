/* Small helpers shared by both daemons: clocks, timestamps, task ids, error texts. */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

int64_t util_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_mono_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

char *util_format_time(int64_t ms, char *buf)
{
  time_t secs = (time_t)(ms / 1000);
  int millis = (int)(ms % 1000);
  struct tm tm;
  if(millis < 0) {
    millis += 1000;
    secs -= 1;
  }
  gmtime_r(&secs, &tm);
  /* strftime cannot print milliseconds, and snprintf of the whole stamp trips
   * -Wformat-truncation on the theoretical 5-digit years; append them by hand. */
  strftime(buf, UTIL_TIME_LEN - 5, "%Y-%m-%dT%H:%M:%S", &tm);
  {
    size_t n = strlen(buf);
    buf[n] = '.';
    buf[n + 1] = (char)('0' + millis / 100);
    buf[n + 2] = (char)('0' + millis / 10 % 10);
    buf[n + 3] = (char)('0' + millis % 10);
    buf[n + 4] = 'Z';
    buf[n + 5] = '\0';
  }
  return buf;
}

static int digits(const char **p, int n, int *out)
{
  int v = 0;
  for(int i = 0; i < n; i++) {
    if(!isdigit((unsigned char)**p))
      return -1;
    v = v * 10 + (**p - '0');
    (*p)++;
  }
  *out = v;
  return 0;
}

static int days_in_month(int y, int mo)
{
  static const int DAYS[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return DAYS[mo - 1] + (mo == 2 && leap);
}

int util_parse_time(const char *text, int64_t *ms)
{
  const char *p = text;
  int y, mo, d, h, mi, s, millis = 0, off = 0;
  struct tm tm;
  if(digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' ||
     digits(&p, 2, &d) || (*p != 'T' && *p != 't' && *p != ' '))
    return -1;
  p++;
  if(digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' || digits(&p, 2, &s))
    return -1;
  if(*p == '.') {
    int scale = 100;
    p++;
    if(!isdigit((unsigned char)*p))
      return -1;
    while(isdigit((unsigned char)*p)) {
      millis += (*p - '0') * scale;
      scale /= 10;
      p++;
    }
  }
  if(*p == 'Z' || *p == 'z')
    p++;
  else if(*p == '+' || *p == '-') {
    int sign = *p++ == '-' ? -1 : 1, oh, om;
    if(digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
      return -1;
    off = sign * (oh * 60 + om);
  }
  else
    return -1;
  /* Before 1970 is no time a message was handled, and later than 9999 does not print in four
   * digits: both are refused so that what is parsed formats back the same. */
  if(*p || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 ||
     s > 60)
    return -1;
  memset(&tm, 0, sizeof tm);
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  *ms = ((int64_t)timegm(&tm) - (int64_t)off * 60) * 1000 + millis;
  return 0;
}

/* Random bytes come from the kernel 512 at a time into a per-thread pool: one getrandom()
 * per 32 task ids instead of one each (the accept path makes two or three ids a request). The
 * pool is never shared between threads, and the daemons do not fork once started. */
#define RANDOM_POOL 512
int util_random(void *out, size_t n)
{
  static _Thread_local unsigned char pool[RANDOM_POOL];
  static _Thread_local size_t left;
  unsigned char *o = out;
  while(n) {
    size_t take;
    if(!left) {
      size_t got = 0;
      while(got < sizeof pool) {
        ssize_t r = getrandom(pool + got, sizeof pool - got, 0);
        if(r < 0) {
          if(errno == EINTR)
            continue;
          return -1;
        }
        got += (size_t)r;
      }
      left = sizeof pool;
    }
    take = n < left ? n : left;
    /* Bytes handed out are wiped from the pool, so they are given once only. */
    memcpy(o, pool + sizeof pool - left, take);
    memset(pool + sizeof pool - left, 0, take);
    left -= take;
    o += take;
    n -= take;
  }
  return 0;
}

int util_uuid4(char *buf)
{
  unsigned char b[16];
  if(util_random(b, sizeof b))
    return -1;
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  snprintf(buf, UTIL_UUID_LEN,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
           b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
           b[15]);
  return 0;
}

int util_is_uuid(const char *s)
{
  for(int i = 0; i < 36; i++) {
    if(i == 8 || i == 13 || i == 18 || i == 23) {
      if(s[i] != '-')
        return 0;
    }
    else if(!isxdigit((unsigned char)s[i]))
      return 0;
  }
  return s[36] == '\0';
}

int util_fail(char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;
  if(err && errlen) {
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* Decodes one UTF-8 sequence at s (len bytes left); returns its length and the code point, or
 * 0 when it is malformed, overlong, a surrogate or beyond U+10FFFF. */
size_t util_utf8_next(const unsigned char *s, size_t len, unsigned *cp)
{
  unsigned c = s[0], v;
  size_t n, i;
  if(c < 0x80) {
    *cp = c;
    return 1;
  }
  if(c >= 0xc2 && c <= 0xdf) {
    n = 2;
    v = c & 0x1f;
  }
  else if(c >= 0xe0 && c <= 0xef) {
    n = 3;
    v = c & 0x0f;
  }
  else if(c >= 0xf0 && c <= 0xf4) {
    n = 4;
    v = c & 0x07;
  }
  else
    return 0;
  if(len < n)
    return 0;
  for(i = 1; i < n; i++) {
    if((s[i] & 0xc0) != 0x80)
      return 0;
    v = (v << 6) | (s[i] & 0x3f);
  }
  if((n == 3 && v < 0x800) || (n == 4 && (v < 0x10000 || v > 0x10ffff)) ||
     (v >= 0xd800 && v <= 0xdfff))
    return 0;
  *cp = v;
  return n;
}

void util_utf8_sanitize(char *s)
{
  size_t len = strlen(s), off = 0;
  while(off < len) {
    unsigned cp;
    size_t n = util_utf8_next((const unsigned char *)s + off, len - off, &cp);
    if(!n) {
      s[off] = '?';
      n = 1;
    }
    off += n;
  }
}
