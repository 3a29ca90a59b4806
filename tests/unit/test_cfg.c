/* Unit tests of the config loader (common/cfg.h): defaults, conversions, env overrides and the exact error lines. */
#include "cfg.h"

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *fixture_dir = "cfg";
static const char *shipped_config = "../../config/service.yaml";

static const char *const OVERRIDE_VARS[] = {
  "AMQP_URL", "EVOLUTION_API_URL", "EVOLUTION_API_KEY", "EVOLUTION_INSTANCE_NAME",
  "APP_HOST", "APP_PORT", "LOG_LEVEL", "CFG_T_USER", "CFG_T_HOST", "CFG_T_EMPTY",
  "CFG_T_THREADS", "CFG_T_UNSET", "CFG_T_UNSET_TOO", "MSG_CALLBACK_SECRET", NULL};

static void clear_env(void)
{
  for(const char *const *v = OVERRIDE_VARS; *v; v++)
    unsetenv(*v);
}

static void drop(struct cfg **c)
{
  cfg_free(*c);
  *c = NULL;
}

static char *fixture(const char *name)
{
  static char buf[4096];
  snprintf(buf, sizeof(buf), "%s/%s", fixture_dir, name);
  return buf;
}

static struct cfg *load_fixture(const char *name, char **errors)
{
  return cfg_load(fixture(name), errors);
}

/* Builds the expected error text: each line of `lines` that does not start with '$' gets the
 * fixture's path and a ':' in front, so expectations do not depend on argv[1]. */
static char *expected_for(const char *name, const char *lines)
{
  static char buf[16384];
  const char *path = fixture(name);
  size_t len = 0;
  buf[0] = '\0';
  while(*lines) {
    const char *nl = strchr(lines, '\n');
    size_t n = nl ? (size_t)(nl - lines) + 1 : strlen(lines);
    if(*lines == '$')
      len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%.*s", (int)n, lines);
    else
      len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s:%.*s", path, (int)n, lines);
    lines += n;
  }
  return buf;
}

/* Loads a fixture that must fail and compares the whole error text. */
static void expect_errors(const char *name, const char *lines)
{
  char *errors = NULL;
  int before = failures;
  struct cfg *cfg = load_fixture(name, &errors);
  CHECK(cfg == NULL);
  CHECK_STR(errors, expected_for(name, lines));
out:
  if(failures != before)
    fprintf(stderr, "  (fixture %s)\n", name);
  cfg_free(cfg);
  free(errors);
}

/* The values of DESIGN §5 (with evolution.api_key empty, as EVOLUTION_API_KEY is unset). */
static int check_defaults(const struct cfg *c)
{
  CHECK_STR(c->broker.url, "amqp://guest:guest@localhost:5672/%2f");
  CHECK(c->broker.heartbeat_ms == 30000);
  CHECK_STR(c->broker.connection_name, "msg");
  CHECK_STR(c->broker.tls.ca_file, "");
  CHECK_STR(c->broker.tls.cert_file, "");
  CHECK_STR(c->broker.tls.key_file, "");
  CHECK(c->broker.tls.verify_peer == true);
  CHECK_STR(c->topology.exchange, "messages");
  CHECK_STR(c->topology.queue, "messages.send");
  CHECK(c->topology.queue_type == CFG_QUEUE_QUORUM);
  CHECK_STR(c->topology.retry_queue_prefix, "messages.retry");
  CHECK_STR(c->topology.dead_letter_queue, "messages.dead");
  CHECK_STR(c->topology.status_stream, "messages.status");
  CHECK(c->topology.status_retention_ms == 24ull * 3600 * 1000);
  CHECK_STR(c->api.listen, "0.0.0.0:8001");
  CHECK(c->api.threads == 64);
  CHECK(c->api.max_body == 64 * 1024);
  CHECK(c->api.n_api_keys == 0);
  CHECK(c->api.cache_max_tasks == 1000000);
  CHECK(c->consumer.prefetch == 64);
  CHECK(c->consumer.shutdown_grace_ms == 25000);
  CHECK(c->consumer.history_window_ms == 60000);
  CHECK_STR(c->consumer.health_listen, "0.0.0.0:8002");
  CHECK_STR(c->evolution.url, "http://localhost:8080");
  CHECK_STR(c->evolution.api_key, "");
  CHECK_STR(c->evolution.instance, "default");
  CHECK(c->evolution.api_version == CFG_EVO_V2);
  CHECK(c->evolution.timeout_ms == 30000);
  CHECK(c->evolution.connect_timeout_ms == 5000);
  CHECK(c->evolution.rate_limit == 0.0);
  CHECK(c->retry.n_delays == 3);
  CHECK(c->retry.delays_ms[0] == 5000 && c->retry.delays_ms[1] == 5000 &&
        c->retry.delays_ms[2] == 5000);
  CHECK_STR(c->topology.callback_queue, "messages.callbacks");
  CHECK_STR(c->callbacks.secret, "");
  CHECK(c->callbacks.n_allow_hosts == 0);
  CHECK(c->callbacks.timeout_ms == 5000);
  CHECK(c->callbacks.n_retry_delays == 5);
  CHECK(c->callbacks.retry_delays_ms[0] == 5000 && c->callbacks.retry_delays_ms[1] == 30000 &&
        c->callbacks.retry_delays_ms[2] == 120000 && c->callbacks.retry_delays_ms[3] == 600000 &&
        c->callbacks.retry_delays_ms[4] == 3600000);
  CHECK(c->callbacks.concurrency == 32);
  CHECK(c->log.level == CFG_LOG_INFO);
  CHECK(c->log.format == CFG_LOG_JSON);
  return 0;
out:
  return -1;
}

static void test_shipped_config(void)
{
  char *errors = NULL;
  struct cfg *c = cfg_load(shipped_config, &errors);
  if(!c)
    fprintf(stderr, "%s", errors ? errors : "(no error text)\n");
  CHECK(c != NULL);
  CHECK(errors == NULL);
  CHECK_STR(c->path, shipped_config);
  CHECK(check_defaults(c) == 0);
out:
  drop(&c);
  free(errors);
}

static void test_defaults(void)
{
  static const char *const names[] = {"empty.yaml", "comments_only.yaml"};
  struct cfg *c = NULL;
  char *errors = NULL;
  for(size_t i = 0; i < 2; i++) {
    c = load_fixture(names[i], &errors);
    CHECK(c != NULL && errors == NULL);
    CHECK(check_defaults(c) == 0);
    drop(&c);
    c = NULL;
  }
out:
  drop(&c);
  free(errors);
}

static void test_partial(void)
{
  char *errors = NULL;
  struct cfg *c = load_fixture("partial.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK(c->api.threads == 4);
  CHECK(c->log.level == CFG_LOG_DEBUG); /* "DEBUG": enum names ignore case */
  CHECK(c->evolution.api_version == CFG_EVO_V1);
  CHECK(c->evolution.rate_limit == 2.5);
  /* The rest keeps its defaults. */
  CHECK_STR(c->api.listen, "0.0.0.0:8001");
  CHECK(c->log.format == CFG_LOG_JSON);
  CHECK(c->consumer.prefetch == 64);
  CHECK(c->retry.n_delays == 3);
out:
  drop(&c);
  free(errors);
}

static void test_styles(void)
{
  char *errors = NULL;
  struct cfg *c = load_fixture("styles.yaml", &errors);
  if(errors)
    fprintf(stderr, "%s", errors);
  CHECK(c != NULL && errors == NULL);
  CHECK_STR(c->broker.url, "amqps://u:p@rabbit:5671/prod");
  CHECK(c->broker.heartbeat_ms == 0);
  CHECK_STR(c->broker.tls.ca_file, "/etc/ca.pem");
  CHECK_STR(c->broker.tls.cert_file, "");
  CHECK(c->broker.tls.verify_peer == false);
  CHECK(c->topology.queue_type == CFG_QUEUE_CLASSIC);
  CHECK(c->topology.status_retention_ms == 7ull * 24 * 3600 * 1000);
  CHECK_STR(c->api.listen, "[::1]:9000");
  CHECK(c->api.max_body == 1000000);
  CHECK(c->api.n_api_keys == 2);
  CHECK_STR(c->api.api_keys[0], "first-key");
  CHECK_STR(c->api.api_keys[1], "second-key");
  CHECK(c->api.cache_max_tasks == 5);
  CHECK_STR(c->consumer.health_listen, ":8100");
  CHECK(c->consumer.shutdown_grace_ms == 0);
  CHECK_STR(c->evolution.url, "https://evo.example.com"); /* one trailing '/' dropped */
  CHECK_STR(c->evolution.instance, "shop_1.main-A");
  CHECK(c->evolution.timeout_ms == 1500);
  CHECK(c->retry.n_delays == 3);
  CHECK(c->retry.delays_ms[0] == 250);
  CHECK(c->retry.delays_ms[1] == 120000);
  CHECK(c->retry.delays_ms[2] == 24ull * 3600 * 1000);
  CHECK(c->log.level == CFG_LOG_WARN);
  CHECK(c->log.format == CFG_LOG_TEXT);
out:
  drop(&c);
  free(errors);
}

static void test_no_retries(void)
{
  char *errors = NULL;
  struct cfg *c = load_fixture("no_retries.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK(c->retry.n_delays == 0);
out:
  drop(&c);
  free(errors);
}

static void test_expansion(void)
{
  char *errors = NULL;
  struct cfg *c = NULL;
  clear_env();
  setenv("CFG_T_USER", "bob", 1);
  setenv("CFG_T_EMPTY", "", 1);
  setenv("CFG_T_THREADS", "12", 1);
  c = load_fixture("expand.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  /* $$ is a literal '$'; ${CFG_T_HOST:-localhost} falls back while CFG_T_HOST is unset. */
  CHECK_STR(c->broker.url, "amqp://bob:pa$word@localhost:5672/");
  /* ${VAR:-default}: an empty variable takes the default... */
  CHECK_STR(c->broker.connection_name, "from-default");
  /* ...while ${VAR} of a set but empty variable is just empty. */
  CHECK_STR(c->broker.tls.ca_file, "");
  /* A '$' not followed by '{' or '$' stays, and single quotes do not stop expansion. */
  CHECK_STR(c->broker.tls.cert_file, "literal $x and $ and ");
  /* Expansion happens before conversion. */
  CHECK(c->api.threads == 12);
  drop(&c);

  setenv("CFG_T_HOST", "rabbit.internal", 1);
  c = load_fixture("expand.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK_STR(c->broker.url, "amqp://bob:pa$word@rabbit.internal:5672/");
  drop(&c);

  /* The expanded value is validated like any other. */
  setenv("CFG_T_THREADS", "lots", 1);
  c = load_fixture("expand.yaml", &errors);
  CHECK(c == NULL);
  CHECK_STR(errors, expected_for("expand.yaml", "9:12: api.threads: expected an integer between 1 "
                                                "and 1024, got \"lots\"\n"));
  free(errors);
  errors = NULL;

  unsetenv("CFG_T_USER");
  unsetenv("CFG_T_EMPTY");
  unsetenv("CFG_T_THREADS");
  c = load_fixture("expand.yaml", &errors);
  CHECK(c == NULL);
  CHECK_STR(errors, expected_for("expand.yaml",
    "3:8: broker.url: environment variable CFG_T_USER is not set\n"
    "6:14: broker.tls.ca_file: environment variable CFG_T_EMPTY is not set\n"
    "9:12: api.threads: environment variable CFG_T_THREADS is not set\n"));
out:
  clear_env();
  drop(&c);
  free(errors);
}

/* One fixture per kind of error, with the exact text. */
static void test_error_messages(void)
{
  clear_env();
  expect_errors("unknown_top.yaml", "3:1: brokr: unknown key\n");
  expect_errors("unknown_nested.yaml",
                "3:3: broker.tlss: unknown key\n"
                "6:5: broker.tls.verify: unknown key\n");
  expect_errors("duplicate.yaml",
                "4:3: api.threads: duplicate key (first defined at line 2)\n"
                "6:1: log: duplicate key (first defined at line 5)\n");
  expect_errors("wrong_type.yaml",
                "3:5: broker.url: expected an amqp:// or amqps:// URL, got a mapping\n"
                "4:6: log: expected a mapping, got \"debug\"\n"
                "6:11: retry.delays: expected a list of at most 32 durations, got \"5s\"\n"
                "8:12: api.threads: expected an integer between 1 and 1024, got a list\n");
  expect_errors("bad_duration.yaml",
                "2:14: broker.heartbeat: expected a duration (e.g. 250ms, 5s, 2m, 24h) between "
                "1s and 1h or 0, got \"fast\"\n"
                "4:19: consumer.shutdown_grace: expected a duration (e.g. 250ms, 5s, 2m, 24h) "
                "between 0s and 1h, got \"25\"\n"
                "6:12: evolution.timeout: expected a duration (e.g. 250ms, 5s, 2m, 24h) between "
                "100ms and 10m, got \"5x\"\n");
  expect_errors("out_of_range.yaml",
                "2:14: broker.heartbeat: expected a duration (e.g. 250ms, 5s, 2m, 24h) between "
                "1s and 1h or 0, got \"2h\"\n"
                "4:12: api.threads: expected an integer between 1 and 1024, got \"5000\"\n"
                "5:13: api.max_body: expected a size (e.g. 512KiB, 1MiB) between 1KiB and 16MiB, "
                "got \"32MiB\"\n"
                "6:20: api.cache_max_tasks: expected an integer between 1 and 100000000, got "
                "\"0\"\n"
                "8:13: consumer.prefetch: expected an integer between 1 and 65535, got \"-1\"\n"
                "10:15: evolution.rate_limit: expected a number between 0 and 1000000, got "
                "\"1e9\"\n");
  expect_errors("bad_enum.yaml",
                "2:10: log.level: expected one of debug, info, warn, error, got \"loud\"\n"
                "3:11: log.format: expected one of json, text, got \"xml\"\n"
                "5:15: topology.queue_type: expected one of quorum, classic, got \"stream\"\n"
                "7:16: evolution.api_version: expected one of v1, v2, got \"v3\"\n");
  expect_errors("bad_listen.yaml",
                "2:11: api.listen: expected host:port, got \"80a\"\n"
                "4:18: consumer.health_listen: expected host:port, got \"0.0.0.0:70000\"\n");
  expect_errors("bad_url.yaml",
                "2:8: broker.url: expected an amqp:// or amqps:// URL, got "
                "\"http://<redacted>@localhost/\"\n"
                "4:8: evolution.url: expected an http:// or https:// URL, got "
                "\"ftp://evo.example.com\"\n");
  /* The whole URL is checked, not just its scheme: host, then a port of digits 1-65535. */
  expect_errors("bad_http_url.yaml",
                "2:8: evolution.url: expected an http:// or https:// URL, got "
                "\"http://<redacted>@evo.example.com:notaport/api\"\n");
  expect_errors("bad_instance.yaml",
                "2:13: evolution.instance: expected an instance name of 1-64 characters from "
                "A-Z a-z 0-9 . _ -, got \"my instance\"\n");
  expect_errors("bad_list_elem.yaml",
                "2:16: retry.delays[1]: expected a duration (e.g. 250ms, 5s, 2m, 24h) between "
                "1ms and 24h, got \"5x\"\n"
                "2:20: retry.delays[2]: expected a duration (e.g. 250ms, 5s, 2m, 24h) between "
                "1ms and 24h, got \"48h\"\n"
                "6:7: api.api_keys[1]: expected a non-empty string, got \"\"\n"
                "7:7: api.api_keys[2]: expected a non-empty string, got a list\n");
  expect_errors("too_many_delays.yaml",
                "2:11: retry.delays: expected at most 32 entries, got 33\n");
  expect_errors("bad_scalars.yaml",
                "3:18: broker.tls.verify_peer: expected a boolean (true/false, yes/no, on/off), "
                "got \"maybe\"\n"
                "4:20: broker.connection_name: expected a non-empty string of at most 200 bytes, "
                "got \"\"\n"
                "6:15: evolution.rate_limit: expected a number between 0 and 1000000, got "
                "\"nan\"\n");
  expect_errors("alias.yaml",
                "2:14: broker.heartbeat: YAML anchors are not supported\n"
                "4:19: consumer.shutdown_grace: YAML aliases are not supported\n");
  expect_errors("syntax.yaml",
                "3:4: did not find expected ',' or ']', while parsing a flow sequence\n");
  expect_errors("tab.yaml",
                "2:1: found character that cannot start any token, while scanning for the next "
                "token\n");
  expect_errors("multi_doc.yaml", "3:1: multiple documents are not supported\n");
  expect_errors("root_list.yaml", "1:1: expected a mapping at the top level, got a list\n");
  expect_errors("unset_var.yaml",
                "2:12: evolution.api_key: environment variable CFG_T_UNSET is not set\n"
                "4:8: evolution.url: expected ${NAME} or ${NAME:-default} after \"${\" (write "
                "$$ for a literal $)\n");
  expect_errors("several.yaml",
                "3:14: broker.heartbeat: expected a duration (e.g. 250ms, 5s, 2m, 24h) between "
                "1s and 1h or 0, got \"1y\"\n"
                "4:22: broker.tls.verify: unknown key\n"
                "6:12: api.threads: expected an integer between 1 and 1024, got \"many\"\n"
                "7:11: api.listen: expected host:port, got \"localhost\"\n"
                "8:3: api.extra: unknown key\n"
                "10:10: log.level: expected one of debug, info, warn, error, got \"verbose\"\n"
                "11:3: log.level: duplicate key (first defined at line 10)\n");
  /* Reader (encoding) errors have no useful line: the byte offset is given instead. */
  {
    char want[4608];
    snprintf(want, sizeof(want), "%s: invalid leading UTF-8 octet at byte 30\n",
             fixture("bad_utf8.yaml"));
    char *errors = NULL;
    struct cfg *c = load_fixture("bad_utf8.yaml", &errors);
    CHECK(c == NULL);
    CHECK_STR(errors, want);
  out:
    drop(&c);
    free(errors);
  }
}

static void test_unreadable(void)
{
  char want[4608];
  char *errors = NULL;
  struct cfg *c = load_fixture("does-not-exist.yaml", &errors);
  CHECK(c == NULL);
  snprintf(want, sizeof(want), "%s: cannot open: No such file or directory\n",
           fixture("does-not-exist.yaml"));
  CHECK_STR(errors, want);
  free(errors);
  errors = NULL;

  c = cfg_load(fixture_dir, &errors); /* a directory opens but does not read */
  CHECK(c == NULL);
  snprintf(want, sizeof(want), "%s: cannot read: Is a directory\n", fixture_dir);
  CHECK_STR(errors, want);

  free(errors);
  errors = NULL;
  c = cfg_load(NULL, &errors);
  CHECK(c == NULL);
  CHECK_STR(errors, "(no path): no configuration file given\n");

  /* errors may be NULL when the caller only wants a yes or no. */
  CHECK(cfg_load(fixture("unknown_top.yaml"), NULL) == NULL);
  cfg_free(NULL);
out:
  drop(&c);
  free(errors);
}

static void test_env_overrides(void)
{
  char *errors = NULL;
  struct cfg *c = NULL;
  clear_env();

  setenv("AMQP_URL", "amqps://app:pw@mq.example.com:5671/prod", 1);
  setenv("EVOLUTION_API_URL", "https://evo.example.com/", 1);
  setenv("EVOLUTION_API_KEY", "k-123", 1);
  setenv("EVOLUTION_INSTANCE_NAME", "shop-2", 1);
  setenv("LOG_LEVEL", "WARN", 1);
  c = load_fixture("partial.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK_STR(c->broker.url, "amqps://app:pw@mq.example.com:5671/prod");
  CHECK_STR(c->evolution.url, "https://evo.example.com");
  CHECK_STR(c->evolution.api_key, "k-123");
  CHECK_STR(c->evolution.instance, "shop-2");
  CHECK(c->log.level == CFG_LOG_WARN); /* the file said DEBUG: the environment wins */
  drop(&c);
  clear_env();

  /* An empty variable counts as unset. */
  setenv("LOG_LEVEL", "", 1);
  setenv("APP_PORT", "", 1);
  c = load_fixture("partial.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK(c->log.level == CFG_LOG_DEBUG);
  CHECK_STR(c->api.listen, "0.0.0.0:8001");
  drop(&c);
  clear_env();

  /* APP_HOST and APP_PORT each replace their half of api.listen. */
  setenv("APP_PORT", "9001", 1);
  c = load_fixture("empty.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK_STR(c->api.listen, "0.0.0.0:9001");
  drop(&c);
  clear_env();

  setenv("APP_HOST", "127.0.0.1", 1);
  c = load_fixture("empty.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK_STR(c->api.listen, "127.0.0.1:8001");
  drop(&c);

  setenv("APP_PORT", "80", 1);
  c = load_fixture("empty.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK_STR(c->api.listen, "127.0.0.1:80");
  drop(&c);
  clear_env();

  setenv("APP_HOST", "::", 1); /* a bare IPv6 address gets its brackets */
  c = load_fixture("empty.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK_STR(c->api.listen, "[::]:8001");
  drop(&c);
  clear_env();

  setenv("APP_PORT", "7000", 1); /* the file's IPv6 host keeps its brackets */
  c = load_fixture("styles.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  CHECK_STR(c->api.listen, "[::1]:7000");
  drop(&c);
  c = NULL;
  clear_env();

  /* Bad values: same rules, errors named after the variable, after the file's own errors. */
  setenv("APP_PORT", "abc", 1);
  c = load_fixture("empty.yaml", &errors);
  CHECK(c == NULL);
  CHECK_STR(errors, "$APP_PORT: expected a port 1-65535, got \"abc\"\n");
  free(errors);
  errors = NULL;
  setenv("APP_PORT", "65536", 1);
  c = load_fixture("empty.yaml", &errors);
  CHECK(c == NULL);
  CHECK_STR(errors, "$APP_PORT: expected a port 1-65535, got \"65536\"\n");
  free(errors);
  errors = NULL;
  clear_env();

  setenv("LOG_LEVEL", "loud", 1);
  setenv("EVOLUTION_INSTANCE_NAME", "a b", 1);
  setenv("APP_HOST", "bad host", 1);
  setenv("EVOLUTION_API_URL", "evo:8080", 1);
  c = load_fixture("unknown_top.yaml", &errors);
  CHECK(c == NULL);
  CHECK_STR(errors, expected_for("unknown_top.yaml",
    "3:1: brokr: unknown key\n"
    "$EVOLUTION_API_URL: expected an http:// or https:// URL, got \"evo:8080\"\n"
    "$EVOLUTION_INSTANCE_NAME: expected an instance name of 1-64 characters from A-Z a-z 0-9 . "
    "_ -, got \"a b\"\n"
    "$LOG_LEVEL: expected one of debug, info, warn, error, got \"loud\"\n"
    "$APP_HOST: expected a host name, an IPv4 address or an IPv6 address, got \"bad host\"\n"));
out:
  clear_env();
  drop(&c);
  free(errors);
}

static void test_secrets_hidden(void)
{
  static const char *const secrets[] = {"Sup3rS3cret", "admin", "TopSecretKey", "SecretInList",
                                        "hunter2", "envpass", NULL};
  char *all = NULL, *errors = NULL, *e2 = NULL;
  struct cfg *c = NULL;
  size_t len = 0;
  clear_env();

  c = load_fixture("secrets.yaml", &errors);
  CHECK(c == NULL);
  CHECK_STR(errors, expected_for("secrets.yaml",
    "2:8: broker.url: expected an amqp:// or amqps:// URL, got \"amqpx://<redacted>@rabbit/\"\n"
    "4:13: api.api_keys: expected a list of non-empty strings, got <redacted>\n"
    "6:12: evolution.api_key: expected a string, got a list\n"));
  len = strlen(errors);
  all = errors;
  errors = NULL;

  c = load_fixture("bad_url.yaml", &errors);
  CHECK(c == NULL && errors);
  setenv("AMQP_URL", "redis://user:envpass@host", 1);
  c = load_fixture("empty.yaml", &e2);
  CHECK(c == NULL);
  CHECK_STR(e2, "$AMQP_URL: expected an amqp:// or amqps:// URL, or several separated by "
                "commas, got \"redis://<redacted>@host\"\n");
  char *joined = realloc(all, len + strlen(errors) + strlen(e2) + 1);
  CHECK(joined != NULL);
  all = joined;
  strcat(strcat(all, errors), e2);
  for(const char *const *s = secrets; *s; s++) {
    if(strstr(all, *s))
      fprintf(stderr, "secret \"%s\" leaked in:\n%s", *s, all);
    CHECK(strstr(all, *s) == NULL);
  }
out:
  clear_env();
  drop(&c);
  free(all);
  free(errors);
  free(e2);
}

static void test_parse_duration(void)
{
  uint64_t v = 42;
  CHECK(cfg_parse_duration("250ms", &v) == 0 && v == 250);
  CHECK(cfg_parse_duration("5s", &v) == 0 && v == 5000);
  CHECK(cfg_parse_duration("2m", &v) == 0 && v == 120000);
  CHECK(cfg_parse_duration("24h", &v) == 0 && v == 86400000);
  CHECK(cfg_parse_duration("7d", &v) == 0 && v == 604800000);
  CHECK(cfg_parse_duration("0s", &v) == 0 && v == 0);
  CHECK(cfg_parse_duration("18446744073709551615ms", &v) == 0 && v == UINT64_MAX);
  v = 42;
  CHECK(cfg_parse_duration("5", &v) == -1);
  CHECK(cfg_parse_duration("0", &v) == -1);
  CHECK(cfg_parse_duration("5x", &v) == -1);
  CHECK(cfg_parse_duration("", &v) == -1);
  CHECK(cfg_parse_duration("-1s", &v) == -1);
  CHECK(cfg_parse_duration("+1s", &v) == -1);
  CHECK(cfg_parse_duration(" 1s", &v) == -1);
  CHECK(cfg_parse_duration("1s ", &v) == -1);
  CHECK(cfg_parse_duration("1.5s", &v) == -1);
  CHECK(cfg_parse_duration("1S", &v) == -1);
  CHECK(cfg_parse_duration("s", &v) == -1);
  CHECK(cfg_parse_duration("1h30m", &v) == -1);
  CHECK(cfg_parse_duration("18446744073709551616ms", &v) == -1); /* 2^64 */
  CHECK(cfg_parse_duration("18446744073709551615s", &v) == -1);  /* overflows when scaled */
  CHECK(cfg_parse_duration("213503982335d", &v) == -1);
  CHECK(cfg_parse_duration(NULL, &v) == -1);
  CHECK(v == 42); /* untouched on failure */
out:;
}

static void test_parse_size(void)
{
  uint64_t v = 42;
  CHECK(cfg_parse_size("512", &v) == 0 && v == 512);
  CHECK(cfg_parse_size("512B", &v) == 0 && v == 512);
  CHECK(cfg_parse_size("64KiB", &v) == 0 && v == 65536);
  CHECK(cfg_parse_size("1MiB", &v) == 0 && v == 1048576);
  CHECK(cfg_parse_size("1GiB", &v) == 0 && v == 1073741824);
  CHECK(cfg_parse_size("2KB", &v) == 0 && v == 2000);
  CHECK(cfg_parse_size("3MB", &v) == 0 && v == 3000000);
  CHECK(cfg_parse_size("1GB", &v) == 0 && v == 1000000000);
  CHECK(cfg_parse_size("0", &v) == 0 && v == 0);
  v = 42;
  CHECK(cfg_parse_size("", &v) == -1);
  CHECK(cfg_parse_size("5x", &v) == -1);
  CHECK(cfg_parse_size("-1", &v) == -1);
  CHECK(cfg_parse_size("-1KiB", &v) == -1);
  CHECK(cfg_parse_size("1kib", &v) == -1);
  CHECK(cfg_parse_size("1 KiB", &v) == -1);
  CHECK(cfg_parse_size("1.5MiB", &v) == -1);
  CHECK(cfg_parse_size("KiB", &v) == -1);
  CHECK(cfg_parse_size("18446744073709551616", &v) == -1);
  CHECK(cfg_parse_size("17179869184GiB", &v) == -1); /* 2^34 GiB = 2^64 */
  CHECK(cfg_parse_size(NULL, &v) == -1);
  CHECK(v == 42);
out:;
}

static void test_split_listen(void)
{
  char *host = NULL;
  unsigned port = 0;
  CHECK(cfg_split_listen("0.0.0.0:8001", &host, &port) == 0);
  CHECK_STR(host, "0.0.0.0");
  CHECK(port == 8001);
  free(host);
  host = NULL;
  CHECK(cfg_split_listen(":80", &host, &port) == 0);
  CHECK_STR(host, "");
  CHECK(port == 80);
  free(host);
  host = NULL;
  CHECK(cfg_split_listen("api.example.com:65535", &host, &port) == 0);
  CHECK_STR(host, "api.example.com");
  CHECK(port == 65535);
  free(host);
  host = NULL;
  CHECK(cfg_split_listen("[::1]:1", &host, &port) == 0);
  CHECK_STR(host, "::1"); /* brackets dropped, as getaddrinfo wants */
  CHECK(port == 1);
  free(host);
  host = NULL;
  CHECK(cfg_split_listen("[::]:8001", NULL, NULL) == 0);

  port = 7;
  CHECK(cfg_split_listen("80a", &host, &port) == -1);
  CHECK(cfg_split_listen("8001", &host, &port) == -1);
  CHECK(cfg_split_listen("", &host, &port) == -1);
  CHECK(cfg_split_listen("host:", &host, &port) == -1);
  CHECK(cfg_split_listen("host:0", &host, &port) == -1);
  CHECK(cfg_split_listen("host:65536", &host, &port) == -1);
  CHECK(cfg_split_listen("host:-1", &host, &port) == -1);
  CHECK(cfg_split_listen("host:+80", &host, &port) == -1);
  CHECK(cfg_split_listen("host:99999999999999999999999", &host, &port) == -1);
  CHECK(cfg_split_listen("host:80 ", &host, &port) == -1);
  CHECK(cfg_split_listen("::1:80", &host, &port) == -1); /* IPv6 needs brackets */
  CHECK(cfg_split_listen("[::1:80", &host, &port) == -1);
  CHECK(cfg_split_listen("[]:80", &host, &port) == -1);
  CHECK(cfg_split_listen("[host]:80", &host, &port) == -1);
  CHECK(cfg_split_listen("bad host:80", &host, &port) == -1);
  CHECK(cfg_split_listen(NULL, &host, &port) == -1);
  CHECK(host == NULL && port == 7); /* outputs untouched on failure */
out:
  free(host);
}

/* api.api_keys_file appends its keys to api.api_keys; a missing file is an error that names
 * the file but no key. */
static void test_key_file(void)
{
  char *errors = NULL, path[4200];
  struct cfg *c = NULL;
  snprintf(path, sizeof path, "%s", fixture("api_keys.txt"));
  setenv("CFG_T_KEYS_FILE", path, 1);
  c = load_fixture("key_file.yaml", &errors);
  CHECK(c);
  CHECK(errors == NULL);
  CHECK(c->api.n_api_keys == 3);
  CHECK_STR(c->api.api_keys[0], "inline-key");
  CHECK_STR(c->api.api_keys[1], "key-from-file-1");
  CHECK_STR(c->api.api_keys[2], "key-from-file-2");
  cfg_free(c);
  c = NULL;
  setenv("CFG_T_KEYS_FILE", "/nonexistent/keys.txt", 1);
  c = load_fixture("key_file.yaml", &errors);
  CHECK(c == NULL);
  CHECK_STR(errors, expected_for("key_file.yaml", " api.api_keys_file: cannot read "
                                                  "\"/nonexistent/keys.txt\": No such file or "
                                                  "directory\n"));
out:
  unsetenv("CFG_T_KEYS_FILE");
  free(errors);
  cfg_free(c);
}

/* api.keys: tenants with an inline key or a key file, their instances and scopes, and the
 * defaults (every instance; send, read, cancel). */
static void test_tenants(void)
{
  char *errors = NULL, path[4096];
  struct cfg *c = NULL;
  clear_env();
  snprintf(path, sizeof path, "%s", fixture("tenant.key"));
  setenv("CFG_T_TENANT_KEY", path, 1);
  c = load_fixture("tenants.yaml", &errors);
  CHECK(c);
  CHECK(errors == NULL);
  CHECK(c->api.n_api_keys == 1);
  CHECK(c->api.n_tenants == 3);
  CHECK_STR(c->api.tenants[0].name, "acme");
  CHECK_STR(c->api.tenants[0].key, "acme-key-from-file");
  CHECK_STR(c->api.tenants[0].key_file, path);
  CHECK(c->api.tenants[0].n_instances == 2 && !c->api.tenants[0].all_instances);
  CHECK_STR(c->api.tenants[0].instances[1], "acme-bulk");
  CHECK(c->api.tenants[0].scopes == (CFG_SCOPE_SEND | CFG_SCOPE_READ));
  CHECK_STR(c->api.tenants[1].key, "ops-key");
  CHECK_STR(c->api.tenants[1].key_file, "");
  CHECK(c->api.tenants[1].all_instances && c->api.tenants[1].n_instances == 0);
  CHECK(c->api.tenants[1].scopes == (CFG_SCOPE_ADMIN | CFG_SCOPE_READ));
  CHECK_STR(c->api.tenants[2].name, "beta.team_2");
  CHECK(c->api.tenants[2].all_instances);
  CHECK(c->api.tenants[2].scopes == (CFG_SCOPE_SEND | CFG_SCOPE_READ | CFG_SCOPE_CANCEL));
  cfg_free(c);
  c = NULL;
  expect_errors("bad_tenants.yaml",
                "5:7: api.keys[1]: expected exactly one of key and key_file\n"
                "8:22: api.keys[1].scopes[1]: expected one of send, read, cancel, admin, got "
                "\"fly\"\n"
                "9:19: api.keys[1].instances[0]: expected an instance name (A-Z a-z 0-9 . _ -, "
                "1-64) or \"*\", got \"bad name\"\n"
                "10:7: api.keys[1].color: unknown key\n"
                "11:7: api.keys[2]: expected a mapping {name, key or key_file, instances, scopes}, "
                "got a scalar\n"
                "12:7: api.keys[3]: expected a name\n"
                "13:13: api.keys[4].name: expected a name of 1-64 characters from A-Z a-z 0-9 . _ "
                "-, got \"no/slash\"\n"
                "14:17: api.keys[4].key_file: cannot read \"/nonexistent/key\": No such file or "
                "directory\n"
                "15:15: api.keys[4].scopes: expected a list of scopes (send, read, cancel, "
                "admin)\n");
  expect_errors("duplicate_tenant_key.yaml", "5:7: api.keys[1]: the same key as api.keys[0]\n");
out:
  unsetenv("CFG_T_TENANT_KEY");
  free(errors);
  cfg_free(c);
}

/* broker.urls, its fallback to broker.url, and $AMQP_URL with several URLs. */
static void test_broker_urls(void)
{
  char *errors = NULL;
  struct cfg *c = NULL;
  clear_env();
  c = load_fixture("broker_urls.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  if(!c)
    goto out;
  CHECK_INT(c->broker.n_urls, 3);
  CHECK_STR(c->broker.urls[1], "amqp://guest:guest@[::1]:5673/%2f");
  drop(&c);

  /* A lone broker.url is the only address. */
  c = load_fixture("empty.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  if(!c)
    goto out;
  CHECK_INT(c->broker.n_urls, 1);
  CHECK_STR(c->broker.urls[0], "amqp://guest:guest@localhost:5672/%2f");
  drop(&c);

  /* $AMQP_URL wins over the file, one URL or several (spaces around commas ignored). */
  setenv("AMQP_URL", "amqp://a:b@n1:5681/%2f, amqp://a:b@n2:5682/%2f,amqp://a:b@n3:5683/%2f", 1);
  c = load_fixture("broker_urls.yaml", &errors);
  CHECK(c != NULL && errors == NULL);
  if(!c)
    goto out;
  CHECK_INT(c->broker.n_urls, 3);
  CHECK_STR(c->broker.urls[0], "amqp://a:b@n1:5681/%2f");
  CHECK_STR(c->broker.urls[1], "amqp://a:b@n2:5682/%2f");
  CHECK_STR(c->broker.url, "amqp://a:b@n1:5681/%2f");
  drop(&c);
  setenv("AMQP_URL", "amqp://a:b@n1:5681/%2f,", 1);
  c = load_fixture("empty.yaml", &errors);
  CHECK(c == NULL);
  CHECK_STR(errors, "$AMQP_URL: expected an amqp:// or amqps:// URL, or several separated by "
                    "commas, got \"\"\n");
  free(errors);
  errors = NULL;
  clear_env();

  /* A port that is not one, in either key; the password stays hidden. */
  expect_errors("bad_broker_urls.yaml",
                "2:8: broker.url: expected an amqp:// or amqps:// URL, got "
                "\"amqp://<redacted>@localhost:notaport/x\"\n"
                "5:7: broker.urls[1]: expected an amqp:// or amqps:// URL with a host and an "
                "optional port 1-65535, got \"amqp://<redacted>@host-b:99999/%2f\"\n");
out:
  drop(&c);
  free(errors);
}

int main(int argc, char **argv)
{
  if(argc > 1)
    fixture_dir = argv[1];
  if(argc > 2)
    shipped_config = argv[2];
  clear_env();

  static const struct {
    const char *name;
    void (*fn)(void);
  } tests[] = {
    {"shipped_config", test_shipped_config},
    {"tenants", test_tenants},
    {"defaults", test_defaults},
    {"partial", test_partial},
    {"styles", test_styles},
    {"no_retries", test_no_retries},
    {"expansion", test_expansion},
    {"error_messages", test_error_messages},
    {"unreadable", test_unreadable},
    {"env_overrides", test_env_overrides},
    {"secrets_hidden", test_secrets_hidden},
    {"parse_duration", test_parse_duration},
    {"parse_size", test_parse_size},
    {"split_listen", test_split_listen},
    {"key_file", test_key_file},
    {"broker_urls", test_broker_urls},
  };
  int failed_tests = 0;
  for(size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
    int before = failures;
    tests[i].fn();
    printf("%s %s\n", failures == before ? "ok  " : "FAIL", tests[i].name);
    if(failures != before)
      failed_tests++;
  }
  printf("%d checks, %d failed; %d of %zu tests failed\n", checks, failures, failed_tests,
         sizeof(tests) / sizeof(tests[0]));
  return failures ? 1 : 0;
}
