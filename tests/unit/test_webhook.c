/* Unit tests of api/webhook.h: Evolution API webhook bodies (research §6) to receipts. */
#include "webhook.h"

#include "check.h"

#include <stdint.h>
#include <string.h>

#define NOW INT64_C(1795867200000)

static int parse(const char *body, struct webhook_receipt *out, size_t max)
{
  char err[160];
  return webhook_parse(body, strlen(body), NOW, out, max, err, sizeof err);
}

static void test_v2_update(void)
{
  struct webhook_receipt r[4];
  CHECK_INT(parse("{\"event\":\"messages.update\",\"instance\":\"shop-1\",\"data\":{\"keyId\":"
                  "\"3EB0EF\",\"remoteJid\":\"5511@s.whatsapp.net\",\"fromMe\":true,\"status\":"
                  "\"DELIVERY_ACK\",\"instanceId\":\"c9\"},\"date_time\":\"2020-01-01T00:00:00Z\","
                  "\"apikey\":null}", r, 4), 1);
  CHECK_STR(r[0].key, "3EB0EF");
  CHECK_INT(r[0].state, DELIVERY_DELIVERED);
  CHECK_STR(r[0].instance, "shop-1");
  /* date_time is server-local time with a "Z": not trusted; the receipt time is ours. */
  CHECK(r[0].at_ms == NOW);
out:;
}

static void test_v1_update(void)
{
  struct webhook_receipt r[4];
  CHECK_INT(parse("{\"event\":\"messages.update\",\"instance\":\"t\",\"data\":{\"remoteJid\":\"x\","
                  "\"id\":\"BAE513\",\"fromMe\":true,\"status\":\"READ\",\"datetime\":1795867199000,"
                  "\"owner\":\"t\"}}", r, 4), 1);
  CHECK_STR(r[0].key, "BAE513");
  CHECK_INT(r[0].state, DELIVERY_READ);
  CHECK(r[0].at_ms == NOW - 1000);
  /* A datetime far from now is another clock's: ignored. */
  CHECK_INT(parse("{\"event\":\"messages.update\",\"data\":{\"id\":\"B\",\"status\":\"READ\","
                  "\"datetime\":5}}", r, 4), 1);
  CHECK(r[0].at_ms == NOW);
  CHECK_STR(r[0].instance, "");
out:;
}

static void test_statuses(void)
{
  static const struct {
    const char *status;
    int state;
  } cases[] = {{"\"SERVER_ACK\"", DELIVERY_SERVER_ACK}, {"\"READ\"", DELIVERY_READ},
               {"\"PLAYED\"", DELIVERY_READ},           {"\"ERROR\"", DELIVERY_ERROR},
               {"\"read\"", DELIVERY_READ},             {"2", DELIVERY_SERVER_ACK},
               {"3", DELIVERY_DELIVERED},               {"0", DELIVERY_ERROR},
               {"\"PENDING\"", -1},                     {"\"DELETED\"", -1},
               {"1", -1},                               {"9", -1},
               {"null", -1},                            {"\"\"", -1}};
  for(size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct webhook_receipt r[1];
    char body[160];
    int n;
    snprintf(body, sizeof body,
             "{\"event\":\"messages.update\",\"data\":{\"keyId\":\"K\",\"status\":%s}}",
             cases[i].status);
    n = parse(body, r, 1);
    if(cases[i].state < 0)
      CHECK_INT(n, 0);
    else {
      CHECK_INT(n, 1);
      CHECK_INT(r[0].state, cases[i].state);
    }
  }
out:;
}

static void test_array_and_skips(void)
{
  struct webhook_receipt r[2];
  /* Not ours (fromMe false), no key, a key with a space, then two good ones, capped at 2. */
  CHECK_INT(parse("{\"event\":\"MESSAGES_UPDATE\",\"data\":[{\"keyId\":\"A\",\"fromMe\":false,"
                  "\"status\":\"READ\"},{\"status\":\"READ\"},{\"keyId\":\"a b\",\"status\":"
                  "\"READ\"},{\"key\":{\"id\":\"C\"},\"status\":\"READ\"},{\"keyId\":\"D\","
                  "\"status\":\"SERVER_ACK\"},{\"keyId\":\"E\",\"status\":\"READ\"}]}", r, 2), 2);
  CHECK_STR(r[0].key, "C");
  CHECK_STR(r[1].key, "D");
out:;
}

static void test_send_message_and_others(void)
{
  struct webhook_receipt r[2];
  CHECK_INT(parse("{\"event\":\"send.message\",\"instance\":\"i\",\"data\":{\"key\":{\"id\":\"3EB0\","
                  "\"fromMe\":true},\"status\":\"PENDING\"}}", r, 2), 1);
  CHECK_STR(r[0].key, "3EB0");
  CHECK_INT(r[0].state, DELIVERY_SENT);
  CHECK_INT(parse("{\"event\":\"connection.update\",\"data\":{\"state\":\"open\"}}", r, 2), 0);
  CHECK_INT(parse("{\"event\":\"messages.update\"}", r, 2), 0);
  CHECK_INT(parse("{\"data\":{}}", r, 2), -1);
  CHECK_INT(parse("[1,2]", r, 2), -1);
  CHECK_INT(parse("not json", r, 2), -1);
  {
    char deep[200];
    memset(deep, '[', sizeof deep - 1);
    deep[sizeof deep - 1] = '\0';
    CHECK_INT(parse(deep, r, 2), -1);
  }
out:;
}

int main(void)
{
  static const struct check_test tests[] = {{"v2_update", test_v2_update},
                                            {"v1_update", test_v1_update},
                                            {"statuses", test_statuses},
                                            {"array_and_skips", test_array_and_skips},
                                            {"send_message_and_others", test_send_message_and_others}};
  return check_run(tests, sizeof tests / sizeof tests[0]);
}
