/* Logging: one line per event on stderr, JSON or text, safe to call from any thread. */
#ifndef MSG_LOG_H
#define MSG_LOG_H

#include "cfg.h"

/* Sets the threshold, the format and the component name ("msg-api"), which is borrowed and
 * must outlive logging. Call once before starting threads; defaults are info, text, "msg". */
void log_setup(enum cfg_log_level level, enum cfg_log_format format, const char *component);

/* Sends the log (fd 2, so whatever else writes to stderr too) to `path`, appending, created
 * 0640 if missing; "" or NULL keeps stderr. Returns 0, or -1 with errno. Call before threads. */
int log_open_file(const char *path);

/* Opens the log file of log_open_file again (after logrotate moved it; SIGHUP). Safe while
 * other threads log. Returns 0 (also when logging to stderr), or -1 with errno. */
int log_reopen(void);

/* Returns 1 when messages of `level` are written. */
int log_enabled(enum cfg_log_level level);

/* Writes one event: a human message followed by key/value string pairs ending with NULL,
 * e.g. log_event(CFG_LOG_INFO, "delivered", "task_id", id, "attempt", "1", NULL).
 * A NULL value is written as null (JSON) or '-' (text). The user name and password of any URL
 * in the message or a value are written as "***". Never pass other secrets. */
void log_event(enum cfg_log_level level, const char *msg, ...)
  __attribute__((sentinel));

/* printf-style convenience for events without fields. */
void log_printf(enum cfg_log_level level, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_printf(CFG_LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_printf(CFG_LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_printf(CFG_LOG_WARN, __VA_ARGS__)
#define log_error(...) log_printf(CFG_LOG_ERROR, __VA_ARGS__)

#endif
