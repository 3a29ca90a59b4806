/* Unit tests of api/request.h: the POST /messages body rules of DESIGN §2 and their errors. */
#include "request.h"
#include "util.h"

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_INSTANCE "default-inst"

static struct job job;
static struct request_error err;

static void reset(void)
{
  free(job.message);
  free(job.instance_name);
  memset(&job, 0, sizeof job);
  memset(&err, 0, sizeof err);
}

static int parse(const char *body)
{
  reset();
  return request_parse_message(body, strlen(body), DEFAULT_INSTANCE, &job, &err);
}

/* Expects `body` to fail with exactly status, code and field; the job stays untouched. */
static int fails(const char *body, int status, const char *code, const char *field)
{
  int rc = parse(body);
  int good = rc == -1 && err.status == status && err.code && !strcmp(err.code, code) &&
             !strcmp(err.field, field) && err.message[0] && !job.message &&
             !job.instance_name && !job.phone[0];
  if(!good)
    fprintf(stderr, "body %.120s\n  got:  rc %d, %d %s field \"%s\" (%s)\n  want: %d %s field "
            "\"%s\"\n", body, rc, err.status, err.code ? err.code : "(null)", err.field,
            err.message, status, code, field);
  return good;
}

static void test_valid(void)
{
  CHECK(parse("{\"phone\": \"+52 123 456 789\", \"message\": \"Hola\", \"instance_name\": "
              "\"my-inst\"}") == 0);
  CHECK_STR(job.phone, "+52123456789");
  CHECK_STR(job.message, "Hola");
  CHECK_STR(job.instance_name, "my-inst");
  /* Default instance, escapes and non-ASCII text kept as they are. */
  CHECK(parse("{\"message\":\"Ol\\u00e1\\n\\\"x\\\" 你好\",\"phone\":\"52123456789\"}") == 0);
  CHECK_STR(job.phone, "+52123456789");
  CHECK_STR(job.message, "Ol\xc3\xa1\n\"x\" 你好");
  CHECK_STR(job.instance_name, DEFAULT_INSTANCE);
  /* null instance_name means the default. */
  CHECK(parse("{\"phone\":\"52123456789\",\"message\":\"Hola\",\"instance_name\":null}") == 0);
  CHECK_STR(job.instance_name, DEFAULT_INSTANCE);
  /* Brackets inside strings are not nesting. */
  CHECK(parse("{\"phone\":\"52123456789\",\"message\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
              "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{\\\"[[[[\"}") == 0);
  /* Whitespace around the document. */
  CHECK(parse(" \n{\"phone\":\"52123456789\",\"message\":\"x\"}\n ") == 0);
  /* Only the given length is read. */
  {
    const char *body = "{\"phone\":\"52123456789\",\"message\":\"x\"}garbage";
    reset();
    CHECK(request_parse_message(body, strlen(body) - 7, DEFAULT_INSTANCE, &job, &err) == 0);
    CHECK_STR(job.message, "x");
  }
out:
  reset();
}

static void test_fields_untouched(void)
{
  /* task_id, created_at_ms and idempotency_key are the caller's. */
  reset();
  memcpy(job.task_id, "keep", 5);
  job.created_at_ms = 42;
  job.idempotency_key = "k";
  {
    const char *body = "{\"phone\":\"52123456789\",\"message\":\"x\"}";
    CHECK(request_parse_message(body, strlen(body), DEFAULT_INSTANCE, &job, &err) == 0);
  }
  CHECK_STR(job.task_id, "keep");
  CHECK_INT(job.created_at_ms, 42);
  CHECK_STR(job.idempotency_key, "k");
out:
  job.idempotency_key = NULL;
  reset();
}

static void test_invalid_json(void)
{
  reset();
  CHECK(request_parse_message("", 0, DEFAULT_INSTANCE, &job, &err) == -1);
  CHECK_INT(err.status, 400);
  CHECK_STR(err.code, "invalid_json");
  CHECK_STR(err.field, "");
  CHECK(fails("{\"phone\": \"52123456789\",\n \"message\": }", 400, "invalid_json", ""));
  CHECK(strstr(err.message, "line") != NULL);
  CHECK(strstr(err.message, "column") != NULL);
  CHECK(strstr(err.message, "line 2") != NULL);
  CHECK(fails("{", 400, "invalid_json", ""));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",}", 400, "invalid_json", ""));
  CHECK(fails("{'phone':'52123456789'}", 400, "invalid_json", ""));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\"} {}", 400, "invalid_json", ""));
  CHECK(fails("phone=52123456789&message=x", 400, "invalid_json", ""));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"\xff\"}", 400, "invalid_json", ""));
  /* Duplicate keys are ambiguous: refused, whichever value would have won. */
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"phone\":\"52999999999\"}", 400,
              "invalid_json", ""));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"message\":\"x\"}", 400,
              "invalid_json", ""));
out:
  reset();
}

static void test_depth(void)
{
  char body[512];
  size_t n = 0;
  int depth;
  /* {"phone": [[...]]}: the object is level 1, so REQUEST_MAX_DEPTH - 1 arrays fit. */
  for(depth = REQUEST_MAX_DEPTH - 1; depth <= REQUEST_MAX_DEPTH; depth++) {
    n = (size_t)snprintf(body, sizeof body, "{\"message\":\"x\",\"phone\":");
    for(int i = 0; i < depth; i++)
      body[n++] = '[';
    for(int i = 0; i < depth; i++)
      body[n++] = ']';
    body[n++] = '}';
    body[n] = '\0';
    if(depth == REQUEST_MAX_DEPTH - 1)
      CHECK(fails(body, 422, "invalid_field", "phone")); /* parsed, then a wrong type */
    else
      CHECK(fails(body, 400, "invalid_json", ""));
  }
  /* Deep and unterminated: still refused before parsing, without reading past len. */
  memset(body, '[', 300);
  body[300] = '\0';
  CHECK(fails(body, 400, "invalid_json", ""));
out:
  reset();
}

static void test_not_object(void)
{
  CHECK(fails("[]", 422, "invalid_body", ""));
  CHECK(fails("[{\"phone\":\"52123456789\",\"message\":\"x\"}]", 422, "invalid_body", ""));
  /* Any JSON value that is not an object is a valid document of the wrong shape. */
  CHECK(fails("\"hello\"", 422, "invalid_body", ""));
  CHECK(fails("42", 422, "invalid_body", ""));
  CHECK(fails("null", 422, "invalid_body", ""));
  CHECK(fails("true", 422, "invalid_body", ""));
out:
  reset();
}

static void test_unknown_field(void)
{
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"extra\":1}", 422, "unknown_field",
              "extra"));
  CHECK(strstr(err.message, "extra") != NULL);
  CHECK(fails("{\"Phone\":\"52123456789\",\"message\":\"x\"}", 422, "unknown_field", "Phone"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"instance\":\"a\"}", 422,
              "unknown_field", "instance"));
  /* A long key is named, cut to fit. */
  {
    char body[400], want[61];
    memset(want, 'k', 60);
    want[60] = '\0';
    snprintf(body, sizeof body, "{\"%s%s\":1}", want, "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkk");
    CHECK(fails(body, 422, "unknown_field", want));
  }
out:
  reset();
}

static void test_missing(void)
{
  CHECK(fails("{}", 422, "missing_field", "phone"));
  CHECK(fails("{\"message\":\"x\"}", 422, "missing_field", "phone"));
  CHECK(strstr(err.message, "phone") != NULL);
  CHECK(fails("{\"phone\":null,\"message\":\"x\"}", 422, "missing_field", "phone"));
  CHECK(fails("{\"phone\":\"52123456789\"}", 422, "missing_field", "message"));
  CHECK(strstr(err.message, "message") != NULL);
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":null}", 422, "missing_field", "message"));
out:
  reset();
}

static void test_wrong_types(void)
{
  CHECK(fails("{\"phone\":52123456789,\"message\":\"x\"}", 422, "invalid_field", "phone"));
  CHECK(fails("{\"phone\":[\"52123456789\"],\"message\":\"x\"}", 422, "invalid_field", "phone"));
  CHECK(fails("{\"phone\":true,\"message\":\"x\"}", 422, "invalid_field", "phone"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":5}", 422, "invalid_field", "message"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":{\"text\":\"x\"}}", 422, "invalid_field",
              "message"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"instance_name\":5}", 422,
              "invalid_field", "instance_name"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"instance_name\":false}", 422,
              "invalid_field", "instance_name"));
out:
  reset();
}

static void test_invalid_values(void)
{
  CHECK(fails("{\"phone\":\"abc\",\"message\":\"x\"}", 422, "invalid_field", "phone"));
  CHECK(fails("{\"phone\":\"\",\"message\":\"x\"}", 422, "invalid_field", "phone"));
  CHECK(fails("{\"phone\":\"1234567\",\"message\":\"x\"}", 422, "invalid_field", "phone"));
  CHECK(fails("{\"phone\":\"0521234567\",\"message\":\"x\"}", 422, "invalid_field", "phone"));
  CHECK(fails("{\"phone\":\"52+123456789\",\"message\":\"x\"}", 422, "invalid_field", "phone"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"\"}", 422, "invalid_field", "message"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"   \"}", 422, "invalid_field", "message"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\" \\u00a0\\u3000\\t\\n\"}", 422,
              "invalid_field", "message"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"instance_name\":\"../admin\"}", 422,
              "invalid_field", "instance_name"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"instance_name\":\"\"}", 422,
              "invalid_field", "instance_name"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"instance_name\":\"a/b\"}", 422,
              "invalid_field", "instance_name"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"instance_name\":\"..\"}", 422,
              "invalid_field", "instance_name"));
  CHECK(fails("{\"phone\":\"52123456789\",\"message\":\"x\",\"instance_name\":\"%2e%2e\"}", 422,
              "invalid_field", "instance_name"));
  /* The first fault is reported: phone before message before instance_name. */
  CHECK(fails("{\"instance_name\":\"..\",\"message\":\"\",\"phone\":\"x\"}", 422,
              "invalid_field", "phone"));
out:
  reset();
}

static void test_message_length(void)
{
  /* 4096 characters of 'é' (written as \u00e9) fit; 4097 do not. */
  size_t cap = 64 + 6 * (JOB_MESSAGE_MAX_CHARS + 1);
  char *body = malloc(cap);
  CHECK(body != NULL);
  for(int extra = 0; extra <= 1; extra++) {
    size_t n = (size_t)snprintf(body, cap, "{\"phone\":\"52123456789\",\"message\":\"");
    for(int i = 0; i < JOB_MESSAGE_MAX_CHARS + extra; i++) {
      memcpy(body + n, "\\u00e9", 6);
      n += 6;
    }
    memcpy(body + n, "\"}", 3);
    if(!extra) {
      CHECK(parse(body) == 0);
      CHECK_INT(strlen(job.message), 2 * JOB_MESSAGE_MAX_CHARS);
    }
    else
      CHECK(fails(body, 422, "invalid_field", "message"));
  }
out:
  free(body);
  reset();
}

/* expires_at or ttl become job->expires_at_ms; bad or past values name their field. */
static void test_expiry(void)
{
  int64_t before = util_now_ms();
  CHECK(parse("{\"phone\":\"+52123456789\",\"message\":\"x\",\"ttl\":\"10m\"}") == 0);
  CHECK(job.expires_at_ms >= before + 600000 && job.expires_at_ms <= util_now_ms() + 600000);
  CHECK(parse("{\"phone\":\"+52123456789\",\"message\":\"x\",\"ttl\":30}") == 0);
  CHECK(job.expires_at_ms >= before + 30000 && job.expires_at_ms <= util_now_ms() + 30000);
  CHECK(parse("{\"phone\":\"+52123456789\",\"message\":\"x\",\"expires_at\":"
              "\"2999-01-01T00:00:00Z\"}") == -1); /* more than 30 days away */
  CHECK(parse("{\"phone\":\"+52123456789\",\"message\":\"x\",\"ttl\":null}") == 0);
  CHECK_INT(job.expires_at_ms, 0);
  CHECK(fails("{\"phone\":\"+52123456789\",\"message\":\"x\",\"expires_at\":"
              "\"2001-01-01T00:00:00Z\"}", 422, "invalid_field", "expires_at"));
  CHECK(fails("{\"phone\":\"+52123456789\",\"message\":\"x\",\"ttl\":\"soon\"}", 422,
              "invalid_field", "ttl"));
  CHECK(fails("{\"phone\":\"+52123456789\",\"message\":\"x\",\"ttl\":0}", 422,
              "invalid_field", "ttl"));
  CHECK(fails("{\"phone\":\"+52123456789\",\"message\":\"x\",\"ttl\":\"1m\","
              "\"expires_at\":\"2030-01-01T00:00:00Z\"}", 422, "invalid_field", "ttl"));
out:
  reset();
}

/* POST /dead-letters/redrive: defaults, bounds on rate and max, and the 30 s plan. */
static int redrive(const char *body, int want_status, const char *want_field)
{
  struct request_redrive r;
  int rc = request_parse_redrive(body, strlen(body), &r, &err);
  if(!want_status) {
    if(rc)
      fprintf(stderr, "  %s refused: %s\n", body, err.message);
    else
      request_redrive_free(&r);
    return rc == 0;
  }
  if(rc != -1 || err.status != want_status || strcmp(err.field, want_field)) {
    fprintf(stderr, "  %s: rc %d status %d field %s\n", body, rc, rc ? err.status : 0,
            rc ? err.field : "");
    if(!rc)
      request_redrive_free(&r);
    return 0;
  }
  return 1;
}

static void test_redrive(void)
{
  struct request_redrive r;
  CHECK(request_parse_redrive("", 0, &r, &err) == 0);
  CHECK(r.filter.max == DEAD_REDRIVE_DEFAULT && r.filter.rate == 0 && !r.filter.reason);
  request_redrive_free(&r);
  CHECK(redrive("{\"max\": 5, \"rate\": 2, \"reason\": \"permanent\"}", 0, ""));
  CHECK(redrive("{\"rate\": 0.1, \"max\": 4}", 0, ""));   /* 3 pauses of 10 s: 30 s */
  CHECK(redrive("{\"rate\": 0.1, \"max\": 5}", 422, "rate")); /* 40 s */
  CHECK(redrive("{\"rate\": 1e-9, \"max\": 1}", 422, "rate"));
  CHECK(redrive("{\"rate\": 1e-300}", 422, "rate"));
  CHECK(redrive("{\"rate\": 1e300}", 422, "rate"));
  CHECK(redrive("{\"rate\": -1}", 422, "rate"));
  CHECK(redrive("{\"rate\": \"fast\"}", 422, "rate"));
  CHECK(redrive("{\"max\": 0}", 422, "max"));
  CHECK(redrive("{\"max\": 100001}", 422, "max"));
  CHECK(redrive("{\"task_ids\": [\"x\"]}", 422, "task_ids"));
  CHECK(redrive("{\"nope\": 1}", 422, "nope"));
  CHECK(redrive("[1]", 422, ""));
  CHECK(redrive("{", 400, ""));
out:;
}

int main(void)
{
  static const struct check_test tests[] = {
    {"redrive", test_redrive},
    {"valid", test_valid},
    {"fields_untouched", test_fields_untouched},
    {"invalid_json", test_invalid_json},
    {"depth", test_depth},
    {"not_object", test_not_object},
    {"unknown_field", test_unknown_field},
    {"missing", test_missing},
    {"wrong_types", test_wrong_types},
    {"invalid_values", test_invalid_values},
    {"message_length", test_message_length},
    {"expiry", test_expiry},
  };
  return CHECK_RUN(tests);
}
