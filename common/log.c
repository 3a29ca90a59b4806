/* Logging: one line per event on stderr, JSON or text, safe to call from any thread. */
#include "log.h"

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
 * threads never interleave; longer lines are cut, which is fine for logs. */
#define LINE_MAX_BYTES 4096

struct line {
  char buf[LINE_MAX_BYTES];
  size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
  size_t room = sizeof l->buf - 2 - l->len; /* keep space for '\n' */
  if(n > room)
    n = room;
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void puts_(struct line *l, const char *s)
{
  put(l, s, strlen(s));
}

static void put_json_string(struct line *l, const char *s)
{
  put(l, "\"", 1);
  for(; *s; s++) {
    unsigned char c = (unsigned char)*s;
    char esc[8];
    if(c == '"' || c == '\\') {
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
  put(l, "\"", 1);
}

void log_setup(enum cfg_log_level level, enum cfg_log_format fmt, const char *name)
{
  threshold = level;
  format = fmt;
  component = name;
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
  l.len = 0;
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
      puts_(&l, ",");
      put_json_string(&l, k);
      puts_(&l, ":");
      if(v)
        put_json_string(&l, v);
      else
        puts_(&l, "null");
    }
    puts_(&l, "}");
  }
  else {
    puts_(&l, ts);
    puts_(&l, " ");
    puts_(&l, component);
    puts_(&l, " ");
    puts_(&l, LEVEL_NAMES[level]);
    puts_(&l, ": ");
    puts_(&l, msg);
    while((k = va_arg(ap, const char *))) {
      const char *v = va_arg(ap, const char *);
      puts_(&l, " ");
      puts_(&l, k);
      puts_(&l, "=");
      puts_(&l, v ? v : "-");
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
