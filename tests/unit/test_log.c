/* Unit tests of common/log.h: credentials in URLs never reach a line, and the log file is
 * opened again after it was moved (what SIGHUP does for logrotate). */
#include "log.h"

#include "check.h"

#include <fcntl.h>
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
  static char buf[8192];
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

int main(void)
{
  static const struct check_test tests[] = {{"redacts_url_credentials", test_redacts_url_credentials},
                                            {"reopen_after_move", test_reopen_after_move}};
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
