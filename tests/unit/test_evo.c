/* Unit tests of consumer/evo.h: the classification of Evolution API answers (research §4.2,
 * with the exact bodies of §3 and §8), whose fault each failure is (hold-off) and whether it
 * leaves the send in doubt, the sendText request bodies, and findMessages (§5). */
#include "evo.h"

#include "check.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_V2 "3EB0EFD331EA140F004CA75141E8169B9EED7629"
#define KEY_V1 "BAE594145F4C59B4"

/* §3.1: a real 2.3.x 201. */
static const char SUCCESS_V2[] =
  "{\"key\":{\"remoteJid\":\"5516997453521@s.whatsapp.net\",\"fromMe\":true,\"id\":\"" KEY_V2 "\"},"
  "\"pushName\":\"Voc\xc3\xaa\",\"status\":\"PENDING\",\"message\":{\"conversation\":\"oi teste\"},"
  "\"messageType\":\"conversation\",\"messageTimestamp\":1760859935,"
  "\"instanceId\":\"c9482c80-d4f3-4582-a484-1b5af43db273\",\"source\":\"unknown\"}";

/* §3.3: v1's raw Baileys message. */
static const char SUCCESS_V1[] =
  "{\"key\":{\"remoteJid\":\"553198296801@s.whatsapp.net\",\"fromMe\":true,\"id\":\"" KEY_V1 "\"},"
  "\"message\":{\"extendedTextMessage\":{\"text\":\"Ol\xc3\xa1!\"}},"
  "\"messageTimestamp\":\"1717689097\",\"status\":\"PENDING\"}";

/* The §4.1 envelope around a payload. */
#define ENVELOPE(status, error, payload)                                                \
  "{\"status\":" #status ",\"error\":\"" error "\",\"response\":{\"message\":" payload "}}"
#define BAD_REQUEST(payload) ENVELOPE(400, "Bad Request", payload)

static struct evo_outcome out;

static void classify(enum evo_transport net, long status, const char *body)
{
  memset(&out, 0x5a, sizeof out); /* everything must be written */
  evo_classify(net, status, body, body ? strlen(body) : 0, 1, &out);
}

/* Checks class and code of an HTTP answer; prints the outcome when it is not the expected one. */
static int is(long status, const char *body, enum evo_class cls, const char *code)
{
  classify(EVO_NET_OK, status, body);
  if(out.cls != cls || strcmp(out.code, code) || out.http_status != status ||
     strlen(out.message) == 0 || (cls != EVO_SUCCESS && out.key_id[0])) {
    fprintf(stderr, "HTTP %ld %.100s\n  got:  class %d code %s key_id \"%s\" (%s)\n  want: class "
            "%d code %s\n", status, body ? body : "(null)", (int)out.cls, out.code, out.key_id,
            out.message, (int)cls, code);
    return 0;
  }
  return 1;
}

/* Checks the scope and doubt of the last outcome. */
static int scope_is(enum evo_scope scope, int ambiguous)
{
  if(out.scope != scope || out.ambiguous != ambiguous) {
    fprintf(stderr, "  %s: scope %d ambiguous %d, want scope %d ambiguous %d\n", out.code,
            (int)out.scope, out.ambiguous, (int)scope, ambiguous);
    return 0;
  }
  return 1;
}

static void test_scopes(void)
{
  /* The server is out: refused, timed out, reset, 5xx. Only a request written out whole can
   * have been carried out, and only a gateway's 502/504 or a transport failure hide one. */
  evo_classify(EVO_NET_CONNECT, 0, NULL, 0, 0, &out);
  CHECK(scope_is(EVO_SCOPE_SERVER, 0));
  /* Refused on the retry libcurl makes after a reused connection died with the request. */
  classify(EVO_NET_CONNECT, 0, NULL);
  CHECK(scope_is(EVO_SCOPE_SERVER, 1));
  classify(EVO_NET_TIMEOUT, 0, NULL);
  CHECK(scope_is(EVO_SCOPE_SERVER, 1));
  evo_classify(EVO_NET_TIMEOUT, 0, NULL, 0, 0, &out);
  CHECK(scope_is(EVO_SCOPE_SERVER, 0));
  classify(EVO_NET_OTHER, 0, NULL);
  CHECK(scope_is(EVO_SCOPE_SERVER, 1));
  CHECK(is(503, "<html>unavailable</html>", EVO_TRANSIENT, "evolution_http_503"));
  CHECK(scope_is(EVO_SCOPE_SERVER, 0));
  CHECK(is(504, "", EVO_TRANSIENT, "evolution_http_504"));
  CHECK(scope_is(EVO_SCOPE_SERVER, 1));
  CHECK(is(502, "", EVO_TRANSIENT, "evolution_http_502"));
  CHECK(scope_is(EVO_SCOPE_SERVER, 1));
  CHECK(is(500, ENVELOPE(500, "Internal Server Error", "\"boom\""), EVO_TRANSIENT,
           "evolution_http_500"));
  CHECK(scope_is(EVO_SCOPE_SERVER, 0));
  /* The instance's session is closed or not loaded (§4.2): its jobs wait, the others go. */
  CHECK(is(500, ENVELOPE(500, "Internal Server Error", "\"Connection Closed\""), EVO_TRANSIENT,
           "evolution_http_500"));
  CHECK(scope_is(EVO_SCOPE_INSTANCE, 0));
  CHECK(is(500, ENVELOPE(500, "Internal Server Error",
                         "\"Cannot read properties of undefined (reading 'textMessage')\""),
           EVO_TRANSIENT, "evolution_http_500"));
  CHECK(scope_is(EVO_SCOPE_INSTANCE, 0));
  CHECK(is(400, BAD_REQUEST("[\"Error: Connection Closed\"]"), EVO_TRANSIENT,
           "evolution_session_error"));
  CHECK(scope_is(EVO_SCOPE_INSTANCE, 0));
  /* "Timed Out" from the send stage may have sent it. */
  CHECK(is(400, BAD_REQUEST("[\"Error: Timed Out\"]"), EVO_TRANSIENT, "evolution_session_error"));
  CHECK(scope_is(EVO_SCOPE_INSTANCE, 1));
  /* The message's own: retried, not held. */
  CHECK(is(400, BAD_REQUEST("[\"SessionError: No sessions\"]"), EVO_TRANSIENT,
           "evolution_session_error"));
  CHECK(scope_is(EVO_SCOPE_MESSAGE, 0));
  CHECK(is(429, "", EVO_TRANSIENT, "evolution_rate_limited"));
  CHECK(scope_is(EVO_SCOPE_MESSAGE, 0));
  CHECK(is(201, SUCCESS_V2, EVO_SUCCESS, "sent"));
  CHECK(scope_is(EVO_SCOPE_MESSAGE, 0));
out:;
}

/* A findMessages page (research §5) with the records given. */
#define FIND_PAGE(pages, records)                                                       \
  "{\"messages\":{\"total\":3,\"pages\":" #pages ",\"currentPage\":1,\"records\":[" records "]}}"
#define RECORD(id, from_me, text)                                                       \
  "{\"id\":\"c1\",\"key\":{\"id\":\"" id "\",\"remoteJid\":\"52123456789@s.whatsapp.net\","   \
  "\"fromMe\":" from_me "},\"messageType\":\"conversation\",\"message\":{\"conversation\":\"" \
  text "\"},\"messageTimestamp\":1760859935}"

static int find(const char *body, const char *text)
{
  memset(&out, 0, sizeof out);
  return evo_find_parse(body, strlen(body), text, &out);
}

static void test_find_parse(void)
{
  const char *ext = FIND_PAGE(1, "{\"key\":{\"id\":\"EXT1\",\"fromMe\":true},\"message\":"
                                 "{\"extendedTextMessage\":{\"text\":\"code 1\"}}}");
  /* The record with the same text, sent by us, is the one. */
  CHECK_INT(find(FIND_PAGE(2, RECORD("A1", "true", "other") "," RECORD("A2", "true", "code 1")),
                 "code 1"), 2);
  CHECK_INT(out.found, 1);
  CHECK_STR(out.key_id, "A2");
  /* A message from the other side with that text, or another text, is not. */
  CHECK_INT(find(FIND_PAGE(1, RECORD("B1", "false", "code 1") "," RECORD("B2", "true", "code 12")),
                 "code 1"), 1);
  CHECK_INT(out.found, 0);
  CHECK_INT(find(FIND_PAGE(1, ""), "code 1"), 1);
  CHECK_INT(out.found, 0);
  /* A message sent with a link preview keeps its text elsewhere. */
  CHECK_INT(find(ext, "code 1"), 1);
  CHECK_INT(out.found, 1);
  CHECK_STR(out.key_id, "EXT1");
  /* Not a findMessages answer. */
  CHECK_INT(find("{\"messages\":[]}", "x"), -1);
  CHECK_INT(find("<html>", "x"), -1);
out:;
}

static void test_find_body(void)
{
  /* fromMe messages to the number's JID, both ends of the range (Evolution ignores one alone). */
  char *text = evo_find_body("+52123456789", 1700000000000, 1700000600000, 2, 50);
  json_t *o = text ? json_loads(text, 0, NULL) : NULL;
  json_t *where = json_object_get(o, "where");
  CHECK(o != NULL);
  CHECK_STR(json_string_value(json_object_get(json_object_get(where, "key"), "remoteJid")),
            "52123456789@s.whatsapp.net");
  CHECK(json_is_true(json_object_get(json_object_get(where, "key"), "fromMe")));
  CHECK_STR(json_string_value(json_object_get(json_object_get(where, "messageTimestamp"), "gte")),
            "2023-11-14T22:13:20.000Z");
  CHECK_STR(json_string_value(json_object_get(json_object_get(where, "messageTimestamp"), "lte")),
            "2023-11-14T22:23:20.000Z");
  CHECK_INT(json_integer_value(json_object_get(o, "page")), 2);
  CHECK_INT(json_integer_value(json_object_get(o, "offset")), 50);
  json_decref(o);
  o = NULL;
  free(text);
  text = NULL;
  {
    /* The JID as Evolution's createJid stores it (the fake's create_jid does the same). */
    static const char *const cases[][2] = {
      {"5511987654321", "5511987654321"}, /* São Paulo (11): the 9 stays */
      {"5531987654321", "553187654321"},  /* Belo Horizonte (31), mobile: the 9 goes */
      {"5531926543210", "5531926543210"}, /* ...but not before a local digit below 7 */
      {"5215512345678", "525512345678"},  /* Mexico, 13 digits */
      {"5491123456789", "541123456789"},  /* Argentina, 13 digits */
      {"525512345678", "525512345678"},   /* already 12 */
      {"14155550100", "14155550100"},
    };
    for(size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      char d[32];
      snprintf(d, sizeof d, "%s", cases[i][0]);
      evo_jid_digits(d);
      CHECK_STR(d, cases[i][1]);
    }
  }
out:
  json_decref(o);
  free(text);
}

static void test_success(void)
{
  CHECK(is(201, SUCCESS_V2, EVO_SUCCESS, "sent"));
  CHECK_STR(out.key_id, KEY_V2);
  CHECK_INT(out.config_fault, 0);
  CHECK(is(201, SUCCESS_V1, EVO_SUCCESS, "sent"));
  CHECK_STR(out.key_id, KEY_V1);
  CHECK(is(200, SUCCESS_V2, EVO_SUCCESS, "sent"));
  CHECK_STR(out.key_id, KEY_V2);
  /* Clients ignore unknown fields and key order. */
  CHECK(is(201, "{\"status\":\"PENDING\",\"contextInfo\":{},\"key\":{\"id\":\"ABC\"}}",
           EVO_SUCCESS, "sent"));
  CHECK_STR(out.key_id, "ABC");
  /* An id of 100 characters (the documented maximum) is kept whole. */
  {
    char body[256], id[101];
    memset(id, 'A', 100);
    id[100] = '\0';
    snprintf(body, sizeof body, "{\"key\":{\"id\":\"%s\"}}", id);
    CHECK(is(201, body, EVO_SUCCESS, "sent"));
    CHECK_STR(out.key_id, id);
  }
out:;
}

static void test_success_without_id(void)
{
  /* The Meta integration answers 201 with Meta's error object (research §3, caveat). */
  CHECK(is(201, "{\"error\":{\"message\":\"(#131030) Recipient phone number not in allowed list\","
                "\"type\":\"OAuthException\",\"code\":131030}}",
           EVO_PERMANENT, "evolution_no_message_id"));
  CHECK(is(201, "", EVO_PERMANENT, "evolution_no_message_id"));
  CHECK(is(201, NULL, EVO_PERMANENT, "evolution_no_message_id"));
  CHECK(is(201, "not json", EVO_PERMANENT, "evolution_no_message_id"));
  CHECK(is(201, "{\"key\":{}}", EVO_PERMANENT, "evolution_no_message_id"));
  CHECK(is(201, "{\"key\":{\"id\":\"\"}}", EVO_PERMANENT, "evolution_no_message_id"));
  CHECK(is(201, "{\"key\":{\"id\":42}}", EVO_PERMANENT, "evolution_no_message_id"));
  CHECK(is(201, "{\"key\":\"3EB0\"}", EVO_PERMANENT, "evolution_no_message_id"));
  CHECK(is(201, "[{\"key\":{\"id\":\"3EB0\"}}]", EVO_PERMANENT, "evolution_no_message_id"));
  CHECK(is(200, "{\"id\":\"3EB0\"}", EVO_PERMANENT, "evolution_no_message_id"));
  {
    char body[256], id[102];
    memset(id, 'A', 101);
    id[101] = '\0';
    snprintf(body, sizeof body, "{\"key\":{\"id\":\"%s\"}}", id);
    CHECK(is(201, body, EVO_PERMANENT, "evolution_no_message_id"));
  }
out:;
}

static void test_transport(void)
{
  static const struct {
    enum evo_transport net;
    const char *code;
  } cases[] = {
    {EVO_NET_TIMEOUT, "evolution_timeout"},
    {EVO_NET_CONNECT, "evolution_unreachable"},
    {EVO_NET_OTHER, "evolution_transport"},
  };
  for(size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    classify(cases[i].net, 0, NULL);
    CHECK_INT(out.cls, EVO_TRANSIENT);
    CHECK_STR(out.code, cases[i].code);
    CHECK_INT(out.http_status, 0);
    CHECK_INT(out.config_fault, 0);
    CHECK(out.message[0] != '\0');
    CHECK(out.key_id[0] == '\0');
  }
out:;
}

static void test_unauthorized(void)
{
  /* 401/403: our configuration is wrong; retried like a transient fault, and flagged. */
  CHECK(is(401, ENVELOPE(401, "Unauthorized", "\"Unauthorized\""), EVO_TRANSIENT,
           "evolution_unauthorized"));
  CHECK_INT(out.config_fault, 1);
  CHECK(is(401, "", EVO_TRANSIENT, "evolution_unauthorized"));
  CHECK_INT(out.config_fault, 1);
  CHECK(is(403, ENVELOPE(403, "Forbidden", "[\"Missing global api key\"]"), EVO_TRANSIENT,
           "evolution_unauthorized"));
  CHECK_INT(out.config_fault, 1);
out:;
}

static void test_not_found(void)
{
  CHECK(is(404, ENVELOPE(404, "Not Found", "[\"The \\\"my-instance\\\" instance does not exist\"]"),
           EVO_PERMANENT, "evolution_not_found"));
  CHECK_STR(out.message, "The \"my-instance\" instance does not exist");
  CHECK(is(404, ENVELOPE(404, "Not Found", "[\"Cannot POST /message/sendTex/x\"]"), EVO_PERMANENT,
           "evolution_not_found"));
  CHECK_STR(out.message, "Cannot POST /message/sendTex/x");
  CHECK(is(404, "<html>nginx</html>", EVO_PERMANENT, "evolution_not_found"));
out:;
}

static void test_timeout_and_rate(void)
{
  CHECK(is(408, "", EVO_TRANSIENT, "evolution_http_408"));
  CHECK(is(429, "Too Many Requests", EVO_TRANSIENT, "evolution_rate_limited"));
  CHECK_INT(out.config_fault, 0);
out:;
}

static void test_server_errors(void)
{
  /* §4.2: raw errors escaping to the middleware come out as 500 with a string. */
  CHECK(is(500, ENVELOPE(500, "Internal Server Error", "\"Connection Closed\""), EVO_TRANSIENT,
           "evolution_http_500"));
  CHECK(strstr(out.message, "Connection Closed") != NULL);
  CHECK(is(500, ENVELOPE(500, "Internal Server Error", "\"Timed Out\""), EVO_TRANSIENT,
           "evolution_http_500"));
  CHECK(strstr(out.message, "Timed Out") != NULL);
  CHECK(is(500, ENVELOPE(500, "Internal Server Error", "[\"Error: Connection Closed\"]"),
           EVO_TRANSIENT, "evolution_http_500"));
  CHECK(is(500, ENVELOPE(500, "Internal Server Error",
                         "\"Cannot read properties of undefined (reading 'textMessage')\""),
           EVO_TRANSIENT, "evolution_http_500"));
  CHECK(is(500, "", EVO_TRANSIENT, "evolution_http_500"));
  /* Reverse proxies: non-Evolution bodies. */
  CHECK(is(502, "<html><body><h1>502 Bad Gateway</h1></body></html>", EVO_TRANSIENT,
           "evolution_http_502"));
  CHECK(is(503, "<html>Service Unavailable</html>", EVO_TRANSIENT, "evolution_http_503"));
  CHECK(is(503, "{\"error\":\"maintenance\"}", EVO_TRANSIENT, "evolution_http_503"));
  CHECK(is(504, "upstream timed out", EVO_TRANSIENT, "evolution_http_504"));
  CHECK_INT(out.config_fault, 0);
out:;
}

static void test_license_required(void)
{
  /* 2.4.0-rc not activated: 503 without the envelope; nothing will change until an operator
   * acts. */
  CHECK(is(503, "{\"error\":\"service not activated\",\"code\":\"LICENSE_REQUIRED\","
                "\"register_url\":\"https://example.invalid/register\",\"instance_id\":\"abc\","
                "\"docs_url\":\"https://example.invalid/docs\",\"message\":\"activate\"}",
           EVO_PERMANENT, "evolution_license_required"));
  CHECK_INT(out.config_fault, 1);
  /* The code matters, not the status alone. */
  CHECK(is(503, "{\"code\":\"OTHER\"}", EVO_TRANSIENT, "evolution_http_503"));
  CHECK(is(503, "{\"code\":1}", EVO_TRANSIENT, "evolution_http_503"));
out:;
}

static void test_bad_request_permanent(void)
{
  CHECK(is(400, BAD_REQUEST("[{\"jid\":\"5511999999999@s.whatsapp.net\",\"exists\":false,"
                            "\"number\":\"5511999999999\"}]"),
           EVO_PERMANENT, "number_not_on_whatsapp"));
  /* 2.3.x adds name and lid. */
  CHECK(is(400, BAD_REQUEST("[{\"jid\":\"5511999999999@s.whatsapp.net\",\"exists\":false,"
                            "\"number\":\"5511999999999\",\"name\":\"Ana\",\"lid\":\"123@lid\"}]"),
           EVO_PERMANENT, "number_not_on_whatsapp"));
  /* Schema errors: a nested array. */
  CHECK(is(400, BAD_REQUEST("[[\"instance requires property \\\"text\\\"\"]]"), EVO_PERMANENT,
           "evolution_bad_request"));
  CHECK_STR(out.message, "instance requires property \"text\"");
  CHECK(is(400, BAD_REQUEST("[[\"instance requires property \\\"number\\\"\","
                            "\"instance requires property \\\"text\\\"\"]]"),
           EVO_PERMANENT, "evolution_bad_request"));
  CHECK(is(400, BAD_REQUEST("[[\"Invalid format\"]]"), EVO_PERMANENT, "evolution_bad_request"));
  CHECK(is(400, BAD_REQUEST("[\"Text is required\"]"), EVO_PERMANENT, "evolution_text_required"));
  CHECK_STR(out.message, "Text is required");
  /* Malformed JSON we sent (§4.2: a bare string, "Internal Server Error" in a 400). */
  CHECK(is(400, ENVELOPE(400, "Internal Server Error",
                         "\"Unexpected token } in JSON at position 42\""),
           EVO_PERMANENT, "evolution_bad_request"));
  /* Anything else is permanent (fewer duplicates). */
  CHECK(is(400, BAD_REQUEST("[\"Something new\"]"), EVO_PERMANENT, "evolution_bad_request"));
  CHECK(is(400, "Bad Request", EVO_PERMANENT, "evolution_bad_request"));
  CHECK(is(400, "<html>400</html>", EVO_PERMANENT, "evolution_bad_request"));
  CHECK(is(400, "", EVO_PERMANENT, "evolution_bad_request"));
  CHECK(is(400, "{}", EVO_PERMANENT, "evolution_bad_request"));
  CHECK(is(400, BAD_REQUEST("[]"), EVO_PERMANENT, "evolution_bad_request"));
  CHECK(is(400, BAD_REQUEST("[{\"jid\":\"x\",\"exists\":true}]"), EVO_PERMANENT,
           "evolution_bad_request"));
out:;
}

static void test_bad_request_transient(void)
{
  static const char *const bodies[] = {
    BAD_REQUEST("[\"Error: Connection Closed\"]"),
    BAD_REQUEST("[\"Error: Timed Out\"]"),
    BAD_REQUEST("[\"Error: rate-overlimit\"]"),
    BAD_REQUEST("[\"SessionError: No sessions\"]"),
    BAD_REQUEST("[\"Error: Stream Errored (conflict)\"]"),
    BAD_REQUEST("[\"WebSocket was closed before the connection was established\"]"),
    BAD_REQUEST("\"Connection Closed\""),
  };
  for(size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
    CHECK(is(400, bodies[i], EVO_TRANSIENT, "evolution_session_error"));
    CHECK_INT(out.config_fault, 0);
  }
out:;
}

static void test_already_sent(void)
{
  CHECK(is(400, BAD_REQUEST("[\"PrismaClientKnownRequestError: \\nInvalid `prisma.message.create()`"
                            " invocation:\\n\\nUnique constraint failed on the fields: (`id`)\"]"),
           EVO_ALREADY_SENT, "sent_unconfirmed"));
  CHECK(out.key_id[0] == '\0');
  CHECK(is(400, BAD_REQUEST("[\"PrismaClientKnownRequestError: \xe2\x80\xa6\"]"), EVO_ALREADY_SENT,
           "sent_unconfirmed"));
out:;
}

static void test_other_status(void)
{
  CHECK(is(422, BAD_REQUEST("[\"Unprocessable\"]"), EVO_PERMANENT, "evolution_http_422"));
  CHECK(is(422, "", EVO_PERMANENT, "evolution_http_422"));
  CHECK(is(405, "", EVO_PERMANENT, "evolution_http_405"));
  CHECK(is(413, "", EVO_PERMANENT, "evolution_http_413"));
out:;
}

static void test_length_respected(void)
{
  /* Only `len` bytes are read: a body cut before key.id has no id. */
  const char *body = SUCCESS_V2;
  memset(&out, 0, sizeof out);
  evo_classify(EVO_NET_OK, 201, body, 20, 1, &out);
  CHECK_INT(out.cls, EVO_PERMANENT);
  evo_classify(EVO_NET_OK, 201, body, strlen(body), 1, &out);
  CHECK_INT(out.cls, EVO_SUCCESS);
out:;
}

static void test_request_body(void)
{
  struct job job = {.task_id = "123e4567-e89b-42d3-a456-426614174000",
                    .phone = "+52123456789",
                    .message = "Hola \"mundo\"\n\xf0\x9f\x98\x80 \\",
                    .instance_name = "default",
                    .created_at_ms = 0};
  char *text = NULL;
  json_t *o = NULL, *tm;
  text = evo_request_body(&job, CFG_EVO_V2);
  CHECK(text != NULL);
  o = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
  CHECK(json_is_object(o));
  CHECK_INT(json_object_size(o), 2);
  CHECK_STR(json_string_value(json_object_get(o, "number")), "52123456789");
  CHECK_STR(json_string_value(json_object_get(o, "text")), job.message);
  json_decref(o);
  o = NULL;
  free(text);

  text = evo_request_body(&job, CFG_EVO_V1);
  CHECK(text != NULL);
  o = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
  CHECK(json_is_object(o));
  CHECK_INT(json_object_size(o), 2);
  CHECK_STR(json_string_value(json_object_get(o, "number")), "52123456789");
  tm = json_object_get(o, "textMessage");
  CHECK(json_is_object(tm));
  CHECK_INT(json_object_size(tm), 1);
  CHECK_STR(json_string_value(json_object_get(tm, "text")), job.message);
out:
  json_decref(o);
  free(text);
}

int main(void)
{
  static const struct check_test tests[] = {
    {"success", test_success},
    {"scopes", test_scopes},
    {"find_parse", test_find_parse},
    {"find_body", test_find_body},
    {"success_without_id", test_success_without_id},
    {"transport", test_transport},
    {"unauthorized", test_unauthorized},
    {"not_found", test_not_found},
    {"timeout_and_rate", test_timeout_and_rate},
    {"server_errors", test_server_errors},
    {"license_required", test_license_required},
    {"bad_request_permanent", test_bad_request_permanent},
    {"bad_request_transient", test_bad_request_transient},
    {"already_sent", test_already_sent},
    {"other_status", test_other_status},
    {"length_respected", test_length_respected},
    {"request_body", test_request_body},
  };
  return CHECK_RUN(tests);
}
