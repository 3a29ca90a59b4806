/* Logging: one line per event on stderr (or log.file), JSON or text, safe to call from any
 * thread, with credentials in URLs masked. */
#include "log.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static enum cfg_log_level threshold = CFG_LOG_INFO;
static enum cfg_log_format format = CFG_LOG_TEXT;
static const char *component = "msg";

static const char *const LEVEL_NAMES[] = {"debug", "info", "warn", "error"};

/* A line is assembled in a fixed buffer and written with one write(2), so lines from several
 * threads never interleave. A JSON line stays valid whatever it is given: each value is cut at
 * VALUE_MAX_BYTES (on a character boundary, with a marker saying how much was left out), and a
 * field that no longer fits is left out whole, the line then saying "truncated": true. */
#define LINE_MAX_BYTES 4096
#define VALUE_MAX_BYTES 1024
/* Room kept at the end of a JSON line for ,"truncated":true}\n */
#define LINE_TAIL_BYTES 24

struct line {
  char buf[LINE_MAX_BYTES];
  size_t len;
  int full; /* something did not fit */
};

static void put(struct line *l, const char *s, size_t n)
{
  size_t room = sizeof l->buf - 2 - l->len; /* keep space for '\n' */
  if(n > room) {
    n = room;
    l->full = 1;
  }
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void puts_(struct line *l, const char *s)
{
  put(l, s, strlen(s));
}

/* Where the user name and password of a URL in `s` start and end ("amqp://user:pw@host":
 * the part between "://" and the last '@' before the host ends). Returns 1 and sets *from and
 * *to (the '@') for the first such URL at or after s, else 0. */
static int find_userinfo(const char *s, const char **from, const char **to)
{
  const char *p = s;
  while((p = strstr(p, "://"))) {
    const char *q = p + 3, *at = NULL;
    for(; *q && !strchr("/?# \t\"'", *q); q++)
      if(*q == '@')
        at = q;
    if(at) {
      *from = p + 3;
      *to = at;
      return 1;
    }
    p = q;
  }
  return 0;
}

/* Every log line goes through here: credentials in a URL never reach the log, whichever
 * module logged it (the user name and password of "amqp://guest:secret@host" are written
 * "***"). */
static void put_text(struct line *l, const char *s, int json);

/* The end of the longest prefix of s, at most max bytes, that ends on a character boundary. */
static size_t cut_at(const char *s, size_t len, size_t max)
{
  if(len <= max)
    return len;
  while(max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
    max--;
  return max;
}

static void put_json_string(struct line *l, const char *s)
{
  size_t len = strlen(s), keep = cut_at(s, len, VALUE_MAX_BYTES);
  put(l, "\"", 1);
  if(keep == len)
    put_text(l, s, 1);
  else {
    char head[VALUE_MAX_BYTES + 1], marker[64];
    memcpy(head, s, keep);
    head[keep] = '\0';
    put_text(l, head, 1);
    snprintf(marker, sizeof marker, "...[%zu more bytes]", len - keep);
    puts_(l, marker);
  }
  put(l, "\"", 1);
}

/* Keys whose values are text even when they look like numbers (an instance named "2024"). */
static int text_key(const char *k)
{
  static const char *const KEYS[] = {"task_id", "request_id", "trace_id", "traceparent",
                                     "instance", "phone", "tenant", "key", "name", "id",
                                     "evolution_key", "queue", "consumer_tag", "version",
                                     "path", "worker_id", "code", "error", "detail", NULL};
  for(int i = 0; KEYS[i]; i++)
    if(!strcmp(k, KEYS[i]))
      return 1;
  return 0;
}

/* 1 when v is written as a JSON number or boolean as it is: an integer or decimal in JSON's
 * own form (no leading zeros, no '+'), or true/false. */
static int typed_value(const char *v)
{
  const char *p = v;
  if(!strcmp(v, "true") || !strcmp(v, "false"))
    return 1;
  if(*p == '-')
    p++;
  if(*p == '0')
    p++;
  else if(*p >= '1' && *p <= '9')
    while(*p >= '0' && *p <= '9')
      p++;
  else
    return 0;
  if(*p == '.') {
    if(!(p[1] >= '0' && p[1] <= '9'))
      return 0;
    for(p++; *p >= '0' && *p <= '9'; p++)
      ;
  }
  return !*p && p - v <= 24;
}

/* The length of the UTF-8 character at s (at most n bytes), or 0 when it is not a valid one
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t utf8_char(const unsigned char *s, size_t n)
{
  size_t len;
  unsigned cp;
  if(s[0] < 0x80)
    return 1;
  if(s[0] >= 0xc2 && s[0] <= 0xdf)
    len = 2, cp = s[0] & 0x1f;
  else if(s[0] >= 0xe0 && s[0] <= 0xef)
    len = 3, cp = s[0] & 0x0f;
  else if(s[0] >= 0xf0 && s[0] <= 0xf4)
    len = 4, cp = s[0] & 0x07;
  else
    return 0;
  if(len > n)
    return 0;
  for(size_t i = 1; i < len; i++) {
    if((s[i] & 0xc0) != 0x80)
      return 0;
    cp = cp << 6 | (s[i] & 0x3f);
  }
  if((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
    return 0;
  return len;
}

static void put_plain(struct line *l, const char *s, size_t n, int json)
{
  for(size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    if(json && c >= 0x80) {
      /* Valid characters as they are, anything else as U+FFFD: always valid JSON text. */
      size_t len = utf8_char((const unsigned char *)s + i, n - i);
      if(len) {
        put(l, s + i, len);
        i += len - 1;
      }
      else
        put(l, "\\ufffd", 6);
      continue;
    }
    if(!json)
      put(l, (const char *)&c, 1);
    else if(c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      put(l, esc, 2);
    }
    else if(c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      put(l, esc, 6);
    }
    else
      put(l, (const char *)&c, 1);
  }
}

static void put_text(struct line *l, const char *s, int json)
{
  const char *from, *to;
  while(find_userinfo(s, &from, &to)) {
    put_plain(l, s, (size_t)(from - s), json);
    puts_(l, "***");
    s = to;
  }
  put_plain(l, s, strlen(s), json);
}

void log_setup(enum cfg_log_level level, enum cfg_log_format fmt, const char *name)
{
  threshold = level;
  format = fmt;
  component = name;
}

/* The log file of log_open_file, kept for log_reopen; "" = stderr as inherited. */
static char log_path[4096];

int log_open_file(const char *path)
{
  int fd;
  snprintf(log_path, sizeof log_path, "%s", path ? path : "");
  if(!log_path[0])
    return 0;
  fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if(fd < 0)
    return -1;
  /* dup2 swaps fd 2 at once: a line being written goes wholly to the old file or the new. */
  if(dup2(fd, STDERR_FILENO) < 0) {
    close(fd);
    return -1;
  }
  close(fd);
  return 0;
}

int log_reopen(void)
{
  char path[sizeof log_path];
  memcpy(path, log_path, sizeof path);
  return log_open_file(path);
}

int log_enabled(enum cfg_log_level level)
{
  return level >= threshold;
}

static void vlog(enum cfg_log_level level, const char *msg, va_list ap)
{
  /* Allocated per call on the caller's stack would cost 4 KiB of a CivetWeb worker's small
   * stack; a thread-local buffer costs nothing there. */
  static _Thread_local struct line l;
  char ts[UTIL_TIME_LEN];
  const char *k;
  int truncated = 0;
  l.len = 0;
  l.full = 0;
  util_format_time(util_now_ms(), ts);
  if(format == CFG_LOG_JSON) {
    puts_(&l, "{\"ts\":\"");
    puts_(&l, ts);
    puts_(&l, "\",\"level\":\"");
    puts_(&l, LEVEL_NAMES[level]);
    puts_(&l, "\",\"component\":");
    put_json_string(&l, component);
    puts_(&l, ",\"msg\":");
    put_json_string(&l, msg);
    while((k = va_arg(ap, const char *))) {
      const char *v = va_arg(ap, const char *);
      size_t before = l.len;
      if(truncated)
        continue;
      puts_(&l, ",");
      put_json_string(&l, k);
      puts_(&l, ":");
      if(!v)
        puts_(&l, "null");
      else if(typed_value(v) && !text_key(k))
        puts_(&l, v); /* numbers as numbers, booleans as booleans */
      else
        put_json_string(&l, v);
      if(l.full || l.len > sizeof l.buf - LINE_TAIL_BYTES) {
        /* This field does not fit: the line goes out without it (and the rest), still JSON. */
        l.len = before;
        l.full = 0;
        truncated = 1;
      }
    }
    puts_(&l, truncated ? ",\"truncated\":true}" : "}");
  }
  else {
    puts_(&l, ts);
    puts_(&l, " ");
    puts_(&l, component);
    puts_(&l, " ");
    puts_(&l, LEVEL_NAMES[level]);
    puts_(&l, ": ");
    put_text(&l, msg, 0);
    while((k = va_arg(ap, const char *))) {
      const char *v = va_arg(ap, const char *);
      puts_(&l, " ");
      puts_(&l, k);
      puts_(&l, "=");
      put_text(&l, v ? v : "-", 0);
    }
  }
  l.buf[l.len++] = '\n';
  /* A failed log write has nowhere to be reported. */
  if(write(STDERR_FILENO, l.buf, l.len) < 0)
    return;
}

void log_event(enum cfg_log_level level, const char *msg, ...)
{
  va_list ap;
  if(level < threshold)
    return;
  va_start(ap, msg);
  vlog(level, msg, ap);
  va_end(ap);
}

static void log_fields_none(enum cfg_log_level level, const char *msg, ...)
{
  va_list ap;
  va_start(ap, msg);
  vlog(level, msg, ap);
  va_end(ap);
}

void log_printf(enum cfg_log_level level, const char *fmt, ...)
{
  char msg[1024];
  va_list ap;
  if(level < threshold)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  log_fields_none(level, msg, (const char *)NULL);
}
