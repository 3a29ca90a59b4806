/* Unit tests of common/job.h: the field rules of DESIGN §2 and the job schema of DESIGN §3. */
#include "job.h"

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UUID "123e4567-e89b-42d3-a456-426614174000"

/* ---- phone ---------------------------------------------------------------------------------- */

static enum job_field_error phone(const char *in, char out[JOB_PHONE_LEN])
{
  memset(out, '#', JOB_PHONE_LEN);
  out[JOB_PHONE_LEN - 1] = '\0';
  return job_normalize_phone(in, out);
}

static void test_phone_accepts(void)
{
  static const char *const same[] = {
    "+52123456789", "52123456789", "+52 123 456 789", "52-123-456-789", "+52.123.456.789",
    "+52 (123) 456-789", "(52)123456789", " +52123456789 ", "5 2 1 2 3 4 5 6 7 8 9",
    "+(52) 1-2.3 456789",
  };
  char out[JOB_PHONE_LEN];
  for(size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
    CHECK_INT(phone(same[i], out), JOB_FIELD_OK);
    CHECK_STR(out, "+52123456789");
  }
  /* 8 and 15 digits are the bounds. */
  CHECK_INT(phone("12345678", out), JOB_FIELD_OK);
  CHECK_STR(out, "+12345678");
  CHECK_INT(phone("+123456789012345", out), JOB_FIELD_OK);
  CHECK_STR(out, "+123456789012345");
  CHECK_INT(phone("+1 (234) 567-890-12345", out), JOB_FIELD_OK);
  CHECK_STR(out, "+123456789012345");
out:;
}

static void test_phone_refuses(void)
{
  static const struct {
    const char *in;
    enum job_field_error want;
  } cases[] = {
    {"", JOB_PHONE_LENGTH},
    {"+", JOB_PHONE_LENGTH},
    {" - . ( ) ", JOB_PHONE_LENGTH},
    {"1234567", JOB_PHONE_LENGTH},              /* 7 digits */
    {"+1 234 567", JOB_PHONE_LENGTH},
    {"1234567890123456", JOB_PHONE_LENGTH},     /* 16 digits */
    {"+1234567890123456789012", JOB_PHONE_LENGTH},
    {"052123456789", JOB_PHONE_LEADING_ZERO},
    {"+052123456789", JOB_PHONE_LEADING_ZERO},
    {"(0)52123456789", JOB_PHONE_LEADING_ZERO},
    {"52+123456789", JOB_PHONE_BAD_CHAR},       /* '+' in the middle */
    {"52123456789+", JOB_PHONE_BAD_CHAR},
    {"++52123456789", JOB_PHONE_BAD_CHAR},
    {"+ +52123456789", JOB_PHONE_BAD_CHAR},
    {"52123456789a", JOB_PHONE_BAD_CHAR},
    {"abc52123456789", JOB_PHONE_BAD_CHAR},
    {"five2123456789", JOB_PHONE_BAD_CHAR},
    {"52_123_456_789", JOB_PHONE_BAD_CHAR},
    {"52/123/456/789", JOB_PHONE_BAD_CHAR},
    {"52\t123456789", JOB_PHONE_BAD_CHAR},
    {"52123456789@s.whatsapp.net", JOB_PHONE_BAD_CHAR},
    {"\xef\xbc\x95\xef\xbc\x92" "123456789", JOB_PHONE_BAD_CHAR}, /* full-width digits */
    {"+52\xc2\xa0" "123456789", JOB_PHONE_BAD_CHAR},               /* no-break space */
  };
  char out[JOB_PHONE_LEN];
  for(size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    enum job_field_error got = phone(cases[i].in, out);
    if(got != cases[i].want)
      fprintf(stderr, "phone \"%s\"\n", cases[i].in);
    CHECK_INT(got, cases[i].want);
    CHECK(out[0] == '#'); /* untouched on failure */
  }
out:;
}

static void test_phone_digits(void)
{
  char out[JOB_PHONE_LEN];
  job_phone_digits("+52123456789", out);
  CHECK_STR(out, "52123456789");
  job_phone_digits("+123456789012345", out);
  CHECK_STR(out, "123456789012345");
out:;
}

/* ---- message -------------------------------------------------------------------------------- */

static enum job_field_error msg(const char *s)
{
  return job_check_message(s, strlen(s));
}

/* `count` copies of `unit`, NUL-terminated; caller frees. */
static char *repeat(const char *unit, size_t count, size_t *len)
{
  size_t u = strlen(unit);
  char *s = malloc(u * count + 1);
  if(!s)
    return NULL;
  for(size_t i = 0; i < count; i++)
    memcpy(s + i * u, unit, u);
  s[u * count] = '\0';
  *len = u * count;
  return s;
}

static void test_message_basic(void)
{
  CHECK_INT(msg("Hola"), JOB_FIELD_OK);
  CHECK_INT(msg("x"), JOB_FIELD_OK);
  CHECK_INT(msg(" x "), JOB_FIELD_OK);
  CHECK_INT(msg("Olá! ¿Qué tal? 你好 😀"), JOB_FIELD_OK);
  CHECK_INT(msg("line one\nline two"), JOB_FIELD_OK);
  CHECK_INT(msg("\xc2\xa0x"), JOB_FIELD_OK);
  CHECK_INT(job_check_message("", 0), JOB_MESSAGE_EMPTY);
  CHECK_INT(job_check_message("abc", 0), JOB_MESSAGE_EMPTY);
out:;
}

static void test_message_blank(void)
{
  static const char *const blank[] = {
    " ", "   ", "\t", "\n", "\r\n", " \t\n\v\f\r",
    "\xc2\xa0",              /* U+00A0 no-break space */
    "\xe3\x80\x80",          /* U+3000 ideographic space */
    " \xc2\xa0\xe3\x80\x80\n",
    "\xe2\x80\x83",          /* U+2003 em space */
    "\xe2\x80\xa8",          /* U+2028 line separator */
    "\xe2\x80\xaf",          /* U+202F narrow no-break space */
    "\xc2\x85",              /* U+0085 next line */
    "\xe1\x9a\x80",          /* U+1680 ogham space mark */
  };
  for(size_t i = 0; i < sizeof blank / sizeof blank[0]; i++) {
    if(msg(blank[i]) != JOB_MESSAGE_BLANK)
      fprintf(stderr, "blank case %zu\n", i);
    CHECK_INT(msg(blank[i]), JOB_MESSAGE_BLANK);
  }
out:;
}

static void test_message_length(void)
{
  static const char *const units[] = {"a", "\xc3\xa9" /* é */, "\xe4\xbd\xa0" /* 你 */,
                                      "\xf0\x9f\x98\x80" /* 😀 */};
  char *s = NULL;
  size_t len;
  for(size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    s = repeat(units[i], JOB_MESSAGE_MAX_CHARS, &len);
    CHECK(s != NULL);
    CHECK_INT(job_check_message(s, len), JOB_FIELD_OK);
    free(s);
    s = repeat(units[i], JOB_MESSAGE_MAX_CHARS + 1, &len);
    CHECK(s != NULL);
    CHECK_INT(job_check_message(s, len), JOB_MESSAGE_TOO_LONG);
    free(s);
    s = NULL;
  }
  /* 4095 ASCII characters and one 4-byte character: 4096 characters, 4099 bytes. */
  s = repeat("a", 4095, &len);
  CHECK(s != NULL);
  {
    char *t = realloc(s, len + 5);
    CHECK(t != NULL);
    s = t;
    memcpy(s + len, "\xf0\x9f\x98\x80", 5);
    CHECK_INT(job_check_message(s, len + 4), JOB_FIELD_OK);
  }
out:
  free(s);
}

static void test_message_bad_utf8(void)
{
  static const struct {
    const char *bytes;
    size_t len;
  } bad[] = {
#define B(s) {s, sizeof(s) - 1}
    B("\xc0\xaf"),                 /* overlong '/' */
    B("\xc1\xbf"),                 /* overlong */
    B("\xe0\x80\xaf"),             /* overlong 3-byte '/' */
    B("\xe0\x9f\xbf"),             /* overlong 3-byte U+07FF */
    B("\xf0\x80\x80\xaf"),         /* overlong 4-byte */
    B("\xf0\x8f\xbf\xbf"),         /* overlong 4-byte U+FFFF */
    B("\xed\xa0\x80"),             /* U+D800 surrogate */
    B("\xed\xbf\xbf"),             /* U+DFFF surrogate */
    B("\xed\xa0\xbd\xed\xb8\x80"), /* CESU-8 surrogate pair */
    B("\xf4\x90\x80\x80"),         /* U+110000 */
    B("\xf5\x80\x80\x80"),
    B("\xff"),
    B("\xfe"),
    B("\x80"),                     /* lone continuation */
    B("abc\xbf"),
    B("\xc3"),                     /* truncated 2-byte */
    B("ok\xc3"),
    B("\xe4\xbd"),                 /* truncated 3-byte */
    B("\xf0\x9f\x98"),             /* truncated 4-byte */
    B("\xc3\x28"),                 /* bad continuation */
    B("\xe4\x28\xa0"),
    B("a\0b"),                     /* NUL */
    B("\0"),
#undef B
  };
  for(size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    enum job_field_error got = job_check_message(bad[i].bytes, bad[i].len);
    if(got != JOB_MESSAGE_BAD_UTF8)
      fprintf(stderr, "bad utf-8 case %zu\n", i);
    CHECK_INT(got, JOB_MESSAGE_BAD_UTF8);
  }
  /* The length given is what is checked: a truncated sequence before a later NUL. */
  CHECK_INT(job_check_message("\xe4\xbd\xa0", 2), JOB_MESSAGE_BAD_UTF8);
  /* The largest code points of each length are fine. */
  CHECK_INT(msg("\xdf\xbf\xef\xbf\xbf\xf4\x8f\xbf\xbf"), JOB_FIELD_OK);
  CHECK_INT(msg("\xee\x80\x80"), JOB_FIELD_OK); /* U+E000, just past the surrogates */
out:;
}

/* ---- instance, idempotency key -------------------------------------------------------------- */

static void test_instance(void)
{
  static const char *const good[] = {"default", "a", "A-Z_a.z-0.9", "my-instance", "inst_01",
                                     "...", ".hidden", "a..b"};
  static const char *const bad[] = {"", ".", "..", "../admin", "a/b", "/", "%2e%2e", "a b",
                                    "a%20b", "a?b", "a#b", "a\\b", "inst\n", "é", "a:b",
                                    "a@b", "a+b", "a~b"};
  char name[JOB_INSTANCE_MAX + 2];
  for(size_t i = 0; i < sizeof good / sizeof good[0]; i++)
    CHECK_INT(job_check_instance(good[i]), JOB_FIELD_OK);
  for(size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if(job_check_instance(bad[i]) != JOB_INSTANCE_BAD)
      fprintf(stderr, "instance \"%s\"\n", bad[i]);
    CHECK_INT(job_check_instance(bad[i]), JOB_INSTANCE_BAD);
  }
  memset(name, 'a', JOB_INSTANCE_MAX);
  name[JOB_INSTANCE_MAX] = '\0';
  CHECK_INT(job_check_instance(name), JOB_FIELD_OK); /* 64 */
  name[JOB_INSTANCE_MAX] = 'a';
  name[JOB_INSTANCE_MAX + 1] = '\0';
  CHECK_INT(job_check_instance(name), JOB_INSTANCE_BAD); /* 65 */
out:;
}

static void test_idempotency_key(void)
{
  char key[JOB_IDEMPOTENCY_KEY_MAX + 2];
  CHECK_INT(job_check_idempotency_key("k"), JOB_FIELD_OK);
  CHECK_INT(job_check_idempotency_key("order-1234:retry #2 {x}~"), JOB_FIELD_OK);
  CHECK_INT(job_check_idempotency_key(" "), JOB_FIELD_OK); /* space is printable */
  CHECK_INT(job_check_idempotency_key(""), JOB_IDEMPOTENCY_KEY_BAD);
  CHECK_INT(job_check_idempotency_key("a\tb"), JOB_IDEMPOTENCY_KEY_BAD);
  CHECK_INT(job_check_idempotency_key("a\nb"), JOB_IDEMPOTENCY_KEY_BAD);
  CHECK_INT(job_check_idempotency_key("a\x7f"), JOB_IDEMPOTENCY_KEY_BAD);
  CHECK_INT(job_check_idempotency_key("cl\xc3\xa9"), JOB_IDEMPOTENCY_KEY_BAD);
  memset(key, 'k', JOB_IDEMPOTENCY_KEY_MAX);
  key[JOB_IDEMPOTENCY_KEY_MAX] = '\0';
  CHECK_INT(job_check_idempotency_key(key), JOB_FIELD_OK); /* 255 */
  key[JOB_IDEMPOTENCY_KEY_MAX] = 'k';
  key[JOB_IDEMPOTENCY_KEY_MAX + 1] = '\0';
  CHECK_INT(job_check_idempotency_key(key), JOB_IDEMPOTENCY_KEY_BAD); /* 256 */
out:;
}

static void test_error_texts(void)
{
  for(int e = JOB_FIELD_OK; e <= JOB_IDEMPOTENCY_KEY_BAD; e++) {
    const char *t = job_field_error_text((enum job_field_error)e);
    CHECK(t != NULL && *t);
  }
out:;
}

/* ---- encode / decode ------------------------------------------------------------------------ */

static void test_round_trip(void)
{
  struct job in = {.task_id = UUID,
                   .phone = "+52123456789",
                   .message = "Hola \"mundo\" \\ \n\t 你好 😀 \xc2\xa0",
                   .instance_name = "my-instance",
                   .idempotency_key = NULL,
                   .created_at_ms = INT64_C(1795867200123)};
  struct job *out = NULL;
  char err[256] = "";
  size_t len = 0;
  char *body = job_encode(&in, &len);
  CHECK(body != NULL);
  CHECK_INT(len, strlen(body));
  CHECK(strstr(body, "\"v\":1") != NULL);
  CHECK(strstr(body, "\"created_at\":\"2026-11-28T12:00:00.123Z\"") != NULL);
  CHECK(strstr(body, "idempotency_key") == NULL);
  if(job_decode(body, len, &out, err, sizeof err))
    fprintf(stderr, "decode: %s\n", err);
  CHECK(out != NULL);
  CHECK_STR(out->task_id, in.task_id);
  CHECK_STR(out->phone, in.phone);
  CHECK_STR(out->message, in.message);
  CHECK_STR(out->instance_name, in.instance_name);
  CHECK(out->idempotency_key == NULL);
  CHECK_INT(out->created_at_ms, in.created_at_ms);
  job_free(out);
  out = NULL;
  free(body);

  in.idempotency_key = "order-42";
  body = job_encode(&in, &len);
  CHECK(body != NULL);
  CHECK(job_decode(body, len, &out, err, sizeof err) == 0);
  CHECK_STR(out->idempotency_key, "order-42");
  CHECK_STR(out->message, in.message);
out:
  job_free(out);
  free(body);
}

/* Decodes `body`, expecting a refusal whose reason contains `reason`. */
static int refused(const char *body, const char *reason)
{
  struct job *out = (struct job *)&out; /* must not be written on failure */
  char err[256] = "";
  int rc = job_decode(body, strlen(body), &out, err, sizeof err);
  if(rc != -1 || out != (struct job *)&out || !strstr(err, reason)) {
    fprintf(stderr, "body %s\n  rc %d, err \"%s\", want \"%s\"\n", body, rc, err, reason);
    if(rc == 0)
      job_free(out);
    return 0;
  }
  return 1;
}

#define REST "\"phone\":\"+52123456789\",\"message\":\"Hola\",\"instance_name\":\"default\""
#define GOOD_TIME "\"created_at\":\"2026-11-28T12:00:00.000Z\""

static void test_decode_refuses(void)
{
  struct job *out = NULL;
  char err[256];
  /* The baseline is accepted, so each refusal below is about its one change. */
  const char *ok = "{\"v\":1,\"task_id\":\"" UUID "\"," REST "," GOOD_TIME "}";
  CHECK(job_decode(ok, strlen(ok), &out, err, sizeof err) == 0);
  job_free(out);
  out = NULL;

  CHECK(refused("{\"v\":2,\"task_id\":\"" UUID "\"," REST "," GOOD_TIME "}", "version"));
  CHECK(refused("{\"v\":0,\"task_id\":\"" UUID "\"," REST "," GOOD_TIME "}", "version"));
  CHECK(refused("{\"v\":\"1\",\"task_id\":\"" UUID "\"," REST "," GOOD_TIME "}", "bad job"));
  CHECK(refused("{\"task_id\":\"" UUID "\"," REST "," GOOD_TIME "}", "bad job"));
  CHECK(refused("{\"v\":1," REST "," GOOD_TIME "}", "bad job"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\"," REST "}", "bad job"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\",\"message\":\"Hola\",\"instance_name\":"
                "\"default\"," GOOD_TIME "}", "bad job"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\",\"phone\":\"+52123456789\","
                "\"instance_name\":\"default\"," GOOD_TIME "}", "bad job"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\",\"phone\":\"+52123456789\","
                "\"message\":\"Hola\"," GOOD_TIME "}", "bad job"));
  CHECK(refused("{\"v\":1,\"task_id\":\"not-a-uuid\"," REST "," GOOD_TIME "}",
                "task_id is not a UUID"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "x\"," REST "," GOOD_TIME "}",
                "task_id is not a UUID"));
  CHECK(refused("{\"v\":1,\"task_id\":\"\"," REST "," GOOD_TIME "}", "task_id is not a UUID"));
  CHECK(refused("{\"v\":1,\"task_id\":12," REST "," GOOD_TIME "}", "bad job"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\",\"phone\":\"0123456789\",\"message\":\"Hola\","
                "\"instance_name\":\"default\"," GOOD_TIME "}", "phone"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\",\"phone\":\"12ab\",\"message\":\"Hola\","
                "\"instance_name\":\"default\"," GOOD_TIME "}", "phone"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\",\"phone\":\"+52123456789\",\"message\":\" \","
                "\"instance_name\":\"default\"," GOOD_TIME "}", "message"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\",\"phone\":\"+52123456789\",\"message\":\"\","
                "\"instance_name\":\"default\"," GOOD_TIME "}", "message"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\",\"phone\":\"+52123456789\",\"message\":\"Hola\","
                "\"instance_name\":\"../admin\"," GOOD_TIME "}", "instance_name"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\",\"phone\":\"+52123456789\",\"message\":\"Hola\","
                "\"instance_name\":\"\"," GOOD_TIME "}", "instance_name"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\"," REST ",\"created_at\":\"yesterday\"}",
                "created_at"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\"," REST ",\"created_at\":\"2026-11-28\"}",
                "created_at"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\"," REST ",\"created_at\":1795867200000}",
                "bad job"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\"," REST "," GOOD_TIME
                ",\"idempotency_key\":\"\"}", "idempotency_key"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\"," REST "," GOOD_TIME
                ",\"idempotency_key\":\"a\\nb\"}", "idempotency_key"));
  CHECK(refused("not json", "not JSON"));
  CHECK(refused("", "not JSON"));
  CHECK(refused("[1,2]", "bad job"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\"," REST "," GOOD_TIME, "not JSON"));
  CHECK(refused("{\"v\":1,\"v\":1,\"task_id\":\"" UUID "\"," REST "," GOOD_TIME "}", "not JSON"));
  CHECK(refused("{\"v\":1,\"task_id\":\"" UUID "\"," REST "," GOOD_TIME
                ",\"phone\":\"+52999999999\"}", "not JSON"));
  /* The length given is what is read. */
  {
    char err2[256] = "";
    out = NULL;
    CHECK(job_decode(ok, strlen(ok) - 1, &out, err2, sizeof err2) == -1);
    CHECK(out == NULL);
  }
out:
  job_free(out);
}

static void test_free_null(void)
{
  job_free(NULL);
  CHECK(1);
out:;
}

int main(void)
{
  static const struct check_test tests[] = {
    {"phone_accepts", test_phone_accepts},
    {"phone_refuses", test_phone_refuses},
    {"phone_digits", test_phone_digits},
    {"message_basic", test_message_basic},
    {"message_blank", test_message_blank},
    {"message_length", test_message_length},
    {"message_bad_utf8", test_message_bad_utf8},
    {"instance", test_instance},
    {"idempotency_key", test_idempotency_key},
    {"error_texts", test_error_texts},
    {"round_trip", test_round_trip},
    {"decode_refuses", test_decode_refuses},
    {"free_null", test_free_null},
  };
  return CHECK_RUN(tests);
}
