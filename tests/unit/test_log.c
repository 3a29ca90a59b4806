/* Unit tests of common/log.h: credentials in URLs never reach a line, and the log file is
 * opened again after it was moved (what SIGHUP does for logrotate). */
#include "log.h"

#include "check.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/msg-test-log-XXXXXX";
static char path[256], moved[256];
static int saved_stderr = -1;

/* The whole content of `p` (static buffer). */
static const char *slurp(const char *p)
{
  static char buf[65536];
  FILE *f = fopen(p, "r");
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  buf[n] = '\0';
  if(f)
    fclose(f);
  return buf;
}

static void restore_stderr(void)
{
  dup2(saved_stderr, STDERR_FILENO);
}

static void test_redacts_url_credentials(void)
{
  const char *got;
  CHECK(log_open_file(path) == 0);
  log_setup(CFG_LOG_INFO, CFG_LOG_TEXT, "t");
  log_event(CFG_LOG_INFO, "started", "evolution", "https://admin:hunter2@evo.example.com/x",
            "broker", "amqp://guest:pa@ss@10.0.0.1:5672/%2f", NULL);
  log_setup(CFG_LOG_INFO, CFG_LOG_JSON, "t");
  log_event(CFG_LOG_INFO, "cannot reach amqps://u:topsecret@h:5671/v", "plain",
            "http://host/path@not-userinfo", NULL);
  log_printf(CFG_LOG_WARN, "retrying %s", "http://k:v@a.b");
  restore_stderr();
  got = slurp(path);
  CHECK(!strstr(got, "hunter2"));
  CHECK(!strstr(got, "guest"));
  CHECK(!strstr(got, "topsecret"));
  CHECK(!strstr(got, "k:v@"));
  CHECK(strstr(got, "evolution=https://***@evo.example.com/x"));
  CHECK(strstr(got, "broker=amqp://***@10.0.0.1:5672/%2f"));
  CHECK(strstr(got, "\"msg\":\"cannot reach amqps://***@h:5671/v\""));
  CHECK(strstr(got, "\"plain\":\"http://host/path@not-userinfo\""));
  CHECK(strstr(got, "retrying http://***@a.b"));
out:
  restore_stderr();
}

static void test_reopen_after_move(void)
{
  CHECK(log_open_file(path) == 0);
  log_event(CFG_LOG_INFO, "before the move", NULL);
  CHECK(rename(path, moved) == 0);
  log_event(CFG_LOG_INFO, "still the old file", NULL);
  CHECK(log_reopen() == 0);
  log_event(CFG_LOG_INFO, "in the new file", NULL);
  restore_stderr();
  CHECK(strstr(slurp(moved), "still the old file"));
  CHECK(!strstr(slurp(moved), "in the new file"));
  CHECK(strstr(slurp(path), "in the new file"));
  CHECK(!strstr(slurp(path), "before the move"));
out:
  restore_stderr();
}

/* Every line of the file `p` is one JSON object; returns the last one (caller decrefs). */
static json_t *last_json_line(const char *p)
{
  const char *text = slurp(p), *start = text, *nl;
  json_t *last = NULL;
  while((nl = strchr(start, '\n'))) {
    json_error_t e;
    json_t *o = json_loadb(start, (size_t)(nl - start), 0, &e);
    if(!json_is_object(o)) {
      fprintf(stderr, "not a JSON line (%s): %.200s\n", e.text, start);
      json_decref(o);
      json_decref(last);
      return NULL;
    }
    json_decref(last);
    last = o;
    start = nl + 1;
  }
  return last;
}

static void test_typed_and_always_valid(void)
{
  char big[10240], cut_utf8[8] = {'a', (char)0xc3, '\0'};
  json_t *o = NULL;
  const char *v;
  /* A 10 KB value of two-byte characters, and bytes that are not UTF-8. */
  for(size_t i = 0; i + 1 < sizeof big; i += 2) {
    big[i] = (char)0xc3;
    big[i + 1] = (char)0xa9; /* é */
  }
  big[sizeof big - 1] = '\0';
  CHECK(log_open_file(path) == 0);
  log_setup(CFG_LOG_INFO, CFG_LOG_JSON, "t");
  log_event(CFG_LOG_INFO, "typed", "attempt", "2", "latency_ms", "13", "ratio", "0.25",
            "negative", "-4", "ok", "true", "instance", "2024", "zip", "007", "plus", "+1",
            "task_id", "12", "empty", "", NULL);
  o = last_json_line(path);
  CHECK(o != NULL);
  CHECK(json_is_integer(json_object_get(o, "attempt")));
  CHECK_INT(json_integer_value(json_object_get(o, "latency_ms")), 13);
  CHECK(json_is_real(json_object_get(o, "ratio")));
  CHECK_INT(json_integer_value(json_object_get(o, "negative")), -4);
  CHECK(json_is_true(json_object_get(o, "ok")));
  CHECK_STR(json_string_value(json_object_get(o, "instance")), "2024"); /* a name, not a number */
  CHECK_STR(json_string_value(json_object_get(o, "zip")), "007");
  CHECK_STR(json_string_value(json_object_get(o, "plus")), "+1");
  CHECK_STR(json_string_value(json_object_get(o, "task_id")), "12");
  CHECK_STR(json_string_value(json_object_get(o, "empty")), "");
  json_decref(o);
  /* 10 KB: one valid line, the value cut on a character boundary with a marker. */
  log_event(CFG_LOG_INFO, "big", "field", big, "after", "x", NULL);
  o = last_json_line(path);
  CHECK(o != NULL);
  v = json_string_value(json_object_get(o, "field"));
  CHECK(v && strlen(v) < 1100 && strstr(v, "more bytes]"));
  CHECK_STR(json_string_value(json_object_get(o, "after")), "x");
  json_decref(o);
  /* Many big fields: those that do not fit are left out whole, and the line says so. */
  log_event(CFG_LOG_INFO, "many", "a", big, "b", big, "c", big, "d", big, "e", big, NULL);
  o = last_json_line(path);
  CHECK(o != NULL);
  CHECK(json_is_true(json_object_get(o, "truncated")));
  CHECK(json_object_get(o, "a") && !json_object_get(o, "e"));
  json_decref(o);
  /* A character cut short, and a stray byte: U+FFFD, still valid. */
  log_event(CFG_LOG_INFO, "bad utf-8", "v", cut_utf8, "w", "\xff\xfe", NULL);
  o = last_json_line(path);
  CHECK(o != NULL);
  CHECK_STR(json_string_value(json_object_get(o, "v")), "a\xef\xbf\xbd");
  json_decref(o);
  o = NULL;
out:
  json_decref(o);
  restore_stderr();
}

int main(void)
{
  static const struct check_test tests[] = {{"redacts_url_credentials", test_redacts_url_credentials},
                                            {"reopen_after_move", test_reopen_after_move},
                                            {"typed_and_always_valid", test_typed_and_always_valid}};
  int rc;
  saved_stderr = dup(STDERR_FILENO);
  if(saved_stderr < 0 || !mkdtemp(dir))
    return 1;
  snprintf(path, sizeof path, "%s/msg.log", dir);
  snprintf(moved, sizeof moved, "%s/msg.log.1", dir);
  rc = check_run(tests, sizeof tests / sizeof tests[0]);
  unlink(path);
  unlink(moved);
  rmdir(dir);
  return rc;
}
