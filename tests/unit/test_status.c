/* Unit tests of common/status.h: status events on the wire and the forward-only rank. */
#include "status.h"

#include "check.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UUID "123e4567-e89b-42d3-a456-426614174000"
#define T0 INT64_C(1795867200000) /* 2026-11-28T12:00:00.000Z */

static void test_names(void)
{
  static const char *const names[] = {"PENDING", "STARTED", "RETRY",
                                      "SUCCESS", "FAILURE", "CANCELLED"};
  static const enum task_status values[] = {TASK_PENDING, TASK_STARTED, TASK_RETRY,
                                            TASK_SUCCESS, TASK_FAILURE, TASK_CANCELLED};
  enum task_status s;
  for(size_t i = 0; i < 6; i++) {
    CHECK_STR(status_name(values[i]), names[i]);
    s = (enum task_status)-1;
    CHECK(status_from_name(names[i], &s) == 0);
    CHECK_INT(s, values[i]);
  }
  s = TASK_RETRY;
  CHECK(status_from_name("pending", &s) == -1);
  CHECK(status_from_name("", &s) == -1);
  CHECK(status_from_name("SUCCESS ", &s) == -1);
  CHECK(status_from_name("SUCCES", &s) == -1);
  CHECK(status_from_name("CANCELED", &s) == -1);
  CHECK_INT(s, TASK_RETRY); /* untouched */
out:;
}

static void test_rank(void)
{
  /* PENDING < STARTED(1) < RETRY(1) < STARTED(2) < RETRY(2) < ... < SUCCESS == FAILURE. */
  int64_t prev = status_rank(TASK_PENDING, 0);
  for(int a = 1; a <= 50; a++) {
    int64_t started = status_rank(TASK_STARTED, a), retry = status_rank(TASK_RETRY, a);
    CHECK(started > prev);
    CHECK(retry > started);
    CHECK(status_rank(TASK_SUCCESS, a) > retry);
    CHECK(status_rank(TASK_FAILURE, a) > retry);
    prev = retry;
  }
  CHECK(status_rank(TASK_STARTED, 1) > status_rank(TASK_PENDING, 0));
  CHECK(status_rank(TASK_STARTED, 2) > status_rank(TASK_RETRY, 1));
  CHECK(status_rank(TASK_RETRY, 1) > status_rank(TASK_STARTED, 1));
  CHECK(status_rank(TASK_STARTED, 1000000) > status_rank(TASK_RETRY, 999999));
  /* Finished ranks above any attempt, and both finishes rank the same whatever the attempt. */
  CHECK(status_rank(TASK_SUCCESS, 1) > status_rank(TASK_STARTED, 1000000));
  CHECK(status_rank(TASK_SUCCESS, 1) > status_rank(TASK_RETRY, 1000000));
  CHECK_INT(status_rank(TASK_SUCCESS, 1), status_rank(TASK_FAILURE, 1));
  CHECK_INT(status_rank(TASK_SUCCESS, 1), status_rank(TASK_FAILURE, 4));
  CHECK_INT(status_rank(TASK_SUCCESS, 3), status_rank(TASK_SUCCESS, 1));
  CHECK_INT(status_rank(TASK_PENDING, 0), status_rank(TASK_PENDING, 0));
  /* A cancel ends a waiting task, but a send that raced it still shows as what happened. */
  CHECK(status_rank(TASK_CANCELLED, 1) > status_rank(TASK_RETRY, 1000000));
  CHECK(status_rank(TASK_CANCELLED, 0) > status_rank(TASK_STARTED, 1000000));
  CHECK(status_rank(TASK_SUCCESS, 1) > status_rank(TASK_CANCELLED, 1));
  CHECK(status_rank(TASK_FAILURE, 1) > status_rank(TASK_CANCELLED, 1));
out:;
}

static int decode_str(const char *body, struct status_event *ev, char *err, size_t errlen)
{
  return status_event_decode(body, strlen(body), ev, err, errlen);
}

static void test_round_trip_full(void)
{
  struct status_event in = {.task_id = UUID,
                            .status = TASK_RETRY,
                            .attempt = 2,
                            .at_ms = T0 + 7001,
                            .created_at_ms = T0 + 1,
                            .phone = "+52123456789",
                            .evolution_key = "3EB0EFD331EA140F004CA75141E8169B9EED7629",
                            .error_code = "evolution_http_500",
                            .error_message = "Evolution API answered 500: \"Timed Out\"",
                            .next_retry_at_ms = T0 + 12001,
                            .idempotency_key = "order-42"};
  struct status_event out = {0};
  char err[256] = "";
  size_t len = 0;
  char *body = status_event_encode(&in, &len);
  CHECK(body != NULL);
  CHECK_INT(len, strlen(body));
  CHECK(strstr(body, "\"v\":1") != NULL);
  CHECK(strstr(body, "\"status\":\"RETRY\"") != NULL);
  CHECK(strstr(body, "\"at\":\"2026-11-28T12:00:07.001Z\"") != NULL);
  CHECK(strstr(body, "\"next_retry_at\":\"2026-11-28T12:00:12.001Z\"") != NULL);
  if(status_event_decode(body, len, &out, err, sizeof err))
    fprintf(stderr, "decode: %s\n", err);
  CHECK_STR(out.task_id, UUID);
  CHECK_INT(out.status, TASK_RETRY);
  CHECK_INT(out.attempt, 2);
  CHECK_INT(out.at_ms, in.at_ms);
  CHECK_INT(out.created_at_ms, in.created_at_ms);
  CHECK_STR(out.phone, in.phone);
  CHECK_STR(out.evolution_key, in.evolution_key);
  CHECK_STR(out.error_code, in.error_code);
  CHECK_STR(out.error_message, in.error_message);
  CHECK_INT(out.next_retry_at_ms, in.next_retry_at_ms);
  CHECK_STR(out.idempotency_key, in.idempotency_key);
  status_event_clear(&out);
  CHECK(out.phone == NULL && out.error_code == NULL && out.task_id[0] == '\0');
out:
  status_event_clear(&out);
  free(body);
}

static void test_round_trip_minimal(void)
{
  static const enum task_status all[] = {TASK_PENDING, TASK_STARTED, TASK_RETRY, TASK_SUCCESS,
                                         TASK_FAILURE};
  struct status_event out = {0};
  char *body = NULL;
  for(size_t i = 0; i < 5; i++) {
    struct status_event in = {.task_id = UUID, .status = all[i], .attempt = (int)i,
                              .at_ms = T0};
    char err[256] = "";
    size_t len;
    body = status_event_encode(&in, &len);
    CHECK(body != NULL);
    /* Absent optional fields stay absent on the wire and NULL/0 after decoding. */
    CHECK(strstr(body, "phone") == NULL);
    CHECK(strstr(body, "result") == NULL);
    CHECK(strstr(body, "error") == NULL);
    CHECK(strstr(body, "next_retry_at") == NULL);
    CHECK(strstr(body, "created_at") == NULL);
    CHECK(strstr(body, "idempotency_key") == NULL);
    CHECK(status_event_decode(body, len, &out, err, sizeof err) == 0);
    CHECK_STR(out.task_id, UUID);
    CHECK_INT(out.status, all[i]);
    CHECK_INT(out.attempt, (int)i);
    CHECK_INT(out.at_ms, T0);
    CHECK(out.phone == NULL && out.evolution_key == NULL && out.error_code == NULL &&
          out.error_message == NULL && out.idempotency_key == NULL);
    CHECK_INT(out.created_at_ms, 0);
    CHECK_INT(out.next_retry_at_ms, 0);
    status_event_clear(&out);
    free(body);
    body = NULL;
  }
  /* A SUCCESS carries result {success, phone, evolution_key}. */
  {
    struct status_event in = {.task_id = UUID, .status = TASK_SUCCESS, .attempt = 1,
                              .at_ms = T0, .phone = "+52123456789", .evolution_key = "BAE5"};
    char err[256];
    size_t len;
    body = status_event_encode(&in, &len);
    CHECK(body != NULL);
    CHECK(strstr(body, "\"result\":{") != NULL);
    CHECK(strstr(body, "\"success\":true") != NULL);
    CHECK(strstr(body, "\"evolution_key\":\"BAE5\"") != NULL);
    CHECK(status_event_decode(body, len, &out, err, sizeof err) == 0);
    CHECK_STR(out.evolution_key, "BAE5");
    CHECK_STR(out.phone, "+52123456789");
  }
out:
  status_event_clear(&out);
  free(body);
}

/* Expects `body` to be refused, with *ev left empty. */
static int refused(const char *body)
{
  struct status_event ev;
  char err[256] = "";
  memset(&ev, 0x5a, sizeof ev);
  if(decode_str(body, &ev, err, sizeof err) != -1) {
    fprintf(stderr, "accepted: %s\n", body);
    status_event_clear(&ev);
    return 0;
  }
  if(!err[0] || ev.phone || ev.evolution_key || ev.error_code || ev.error_message ||
     ev.idempotency_key || ev.task_id[0]) {
    fprintf(stderr, "refused without a reason or with a non-empty event: %s (%s)\n", body, err);
    return 0;
  }
  return 1;
}

#define HEAD "\"v\":1,\"task_id\":\"" UUID "\""
#define AT "\"at\":\"2026-11-28T12:00:00.000Z\""

static void test_decode_refuses(void)
{
  struct status_event ev = {0};
  char err[256];
  const char *ok = "{" HEAD ",\"status\":\"STARTED\",\"attempt\":1," AT "}";
  CHECK(decode_str(ok, &ev, err, sizeof err) == 0);
  status_event_clear(&ev);

  CHECK(refused(""));
  CHECK(refused("nope"));
  CHECK(refused("[]"));
  CHECK(refused("{" HEAD ",\"status\":\"STARTED\",\"attempt\":1," AT)); /* truncated */
  CHECK(refused("{\"v\":2,\"task_id\":\"" UUID "\",\"status\":\"STARTED\",\"attempt\":1," AT "}"));
  CHECK(refused("{\"task_id\":\"" UUID "\",\"status\":\"STARTED\",\"attempt\":1," AT "}"));
  CHECK(refused("{\"v\":1,\"status\":\"STARTED\",\"attempt\":1," AT "}"));
  CHECK(refused("{\"v\":1,\"task_id\":\"x\",\"status\":\"STARTED\",\"attempt\":1," AT "}"));
  CHECK(refused("{" HEAD ",\"attempt\":1," AT "}"));
  CHECK(refused("{" HEAD ",\"status\":\"DONE\",\"attempt\":1," AT "}"));
  CHECK(refused("{" HEAD ",\"status\":\"started\",\"attempt\":1," AT "}"));
  CHECK(refused("{" HEAD ",\"status\":3,\"attempt\":1," AT "}"));
  CHECK(refused("{" HEAD ",\"status\":\"STARTED\"," AT "}"));
  CHECK(refused("{" HEAD ",\"status\":\"STARTED\",\"attempt\":-1," AT "}"));
  CHECK(refused("{" HEAD ",\"status\":\"STARTED\",\"attempt\":1000001," AT "}"));
  CHECK(refused("{" HEAD ",\"status\":\"STARTED\",\"attempt\":\"1\"," AT "}"));
  CHECK(refused("{" HEAD ",\"status\":\"STARTED\",\"attempt\":1}"));
  CHECK(refused("{" HEAD ",\"status\":\"STARTED\",\"attempt\":1,\"at\":\"now\"}"));
  CHECK(refused("{" HEAD ",\"status\":\"STARTED\",\"attempt\":1,\"at\":1795867200000}"));
  CHECK(refused("{" HEAD ",\"status\":\"RETRY\",\"attempt\":1," AT ",\"next_retry_at\":\"soon\"}"));
  CHECK(refused("{" HEAD ",\"status\":\"PENDING\",\"attempt\":0," AT ",\"created_at\":\"x\"}"));
  CHECK(refused("{" HEAD ",\"status\":\"PENDING\",\"attempt\":0," AT ",\"phone\":5}"));
  CHECK(refused("{" HEAD ",\"status\":\"SUCCESS\",\"attempt\":1," AT ",\"result\":\"ok\"}"));
  CHECK(refused("{" HEAD ",\"status\":\"SUCCESS\",\"attempt\":1," AT
                ",\"result\":{\"evolution_key\":7}}"));
  CHECK(refused("{" HEAD ",\"status\":\"FAILURE\",\"attempt\":1," AT ",\"error\":\"boom\"}"));
  CHECK(refused("{" HEAD ",\"status\":\"FAILURE\",\"attempt\":1," AT ",\"error\":{\"code\":1}}"));
out:
  status_event_clear(&ev);
}

static void test_clear_zeroed(void)
{
  struct status_event ev = {0};
  status_event_clear(&ev);
  status_event_clear(&ev);
  CHECK(ev.phone == NULL);
out:;
}

struct collected {
  int n;
  char ids[4][UTIL_UUID_LEN];
  enum task_status statuses[4];
};

static void collect(const struct status_event *ev, void *ctx)
{
  struct collected *c = ctx;
  if(c->n < 4) {
    memcpy(c->ids[c->n], ev->task_id, UTIL_UUID_LEN);
    c->statuses[c->n] = ev->status;
  }
  c->n++;
}

/* Many events share one stream message; a reader sees each of them, and a bad event in a batch
 * does not hide the good ones. */
static void test_batch(void)
{
  struct status_event a = {.status = TASK_PENDING, .at_ms = 1795867200000},
                      b = {.status = TASK_SUCCESS, .attempt = 1, .at_ms = 1795867200500};
  char *bodies[2] = {NULL, NULL}, *joined = NULL, err[128];
  size_t lens[2], len;
  struct collected got = {0};
  const char *bad_batch = "{\"v\":1,\"events\":[{\"v\":1},{\"v\":1,\"task_id\":"
                          "\"123e4567-e89b-42d3-a456-426614174002\",\"status\":\"STARTED\","
                          "\"attempt\":1,\"at\":\"2026-11-28T12:00:00.000Z\"}]}";
  snprintf(a.task_id, sizeof a.task_id, "123e4567-e89b-42d3-a456-426614174001");
  snprintf(b.task_id, sizeof b.task_id, "123e4567-e89b-42d3-a456-426614174002");
  bodies[0] = status_event_encode(&a, &lens[0]);
  bodies[1] = status_event_encode(&b, &lens[1]);
  CHECK(bodies[0] && bodies[1]);
  joined = status_batch_join(bodies, lens, 2, &len);
  CHECK(joined);
  CHECK_INT(len, strlen(joined));
  CHECK_INT(status_message_decode(joined, len, collect, &got, err, sizeof err), 0);
  CHECK_INT(got.n, 2);
  CHECK_STR(got.ids[0], a.task_id);
  CHECK_STR(got.ids[1], b.task_id);
  CHECK_INT(got.statuses[1], TASK_SUCCESS);
  /* A single event is a message too. */
  memset(&got, 0, sizeof got);
  CHECK_INT(status_message_decode(bodies[1], lens[1], collect, &got, err, sizeof err), 0);
  CHECK_INT(got.n, 1);
  memset(&got, 0, sizeof got);
  CHECK_INT(status_message_decode(bad_batch, strlen(bad_batch), collect, &got, err, sizeof err),
            -1);
  CHECK_INT(got.n, 1);
  CHECK_INT(got.statuses[0], TASK_STARTED);
  CHECK_INT(status_message_decode("nope", 4, collect, &got, err, sizeof err), -1);
out:
  free(bodies[0]);
  free(bodies[1]);
  free(joined);
}

/* Receipts travel without a task id when the api could not tell it; callbacks have stable ids. */
static void test_receipts_and_callbacks(void)
{
  struct status_event r = {.status = TASK_RECEIPT, .delivery = DELIVERY_DELIVERED,
                           .at_ms = 1795867200000, .evolution_key = "3EB0AA", .instance = "shop"};
  struct status_event out = {0}, s = {.status = TASK_SUCCESS, .attempt = 2, .generation = 1,
                                      .at_ms = 1795867200000, .evolution_key = "3EB0AA"};
  char err[256], id[STATUS_EVENT_ID_LEN], *body = NULL;
  size_t len;
  json_t *doc = NULL;
  body = status_event_encode(&r, &len);
  CHECK(body);
  CHECK(!strstr(body, "task_id"));
  CHECK_INT(status_event_decode(body, len, &out, err, sizeof err), 0);
  CHECK_INT(out.status, TASK_RECEIPT);
  CHECK_INT(out.delivery, DELIVERY_DELIVERED);
  CHECK_STR(out.evolution_key, "3EB0AA");
  CHECK_STR(out.task_id, "");
  status_event_clear(&out);
  free(body);
  body = NULL;
  /* A receipt needs its message id and a known state; a status needs its task id. */
  {
    static const char *const bad[] = {
      "{\"v\":1,\"status\":\"RECEIPT\",\"attempt\":0,\"at\":\"2026-11-28T12:00:00Z\","
      "\"delivery\":\"read\"}",
      "{\"v\":1,\"status\":\"RECEIPT\",\"attempt\":0,\"at\":\"2026-11-28T12:00:00Z\","
      "\"evolution_key\":\"K\",\"delivery\":\"lost\"}",
      "{\"v\":1,\"status\":\"SUCCESS\",\"attempt\":1,\"at\":\"2026-11-28T12:00:00Z\"}"};
    static const char good[] =
      "{\"v\":1,\"status\":\"RECEIPT\",\"attempt\":0,\"at\":\"2026-11-28T12:00:00Z\","
      "\"evolution_key\":\"K\",\"delivery\":\"read\"}";
    for(size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
      CHECK_INT(status_event_decode(bad[i], strlen(bad[i]), &out, err, sizeof err), -1);
    CHECK_INT(status_event_decode(good, strlen(good), &out, err, sizeof err), 0);
    status_event_clear(&out);
  }

  memcpy(s.task_id, "123e4567-e89b-42d3-a456-426614174001", UTIL_UUID_LEN);
  body = status_callback_body(&s, id, &len);
  CHECK(body);
  CHECK_STR(id, "123e4567-e89b-42d3-a456-426614174001.SUCCESS.2.1");
  doc = json_loadb(body, len, 0, NULL);
  CHECK(doc);
  CHECK_STR(json_string_value(json_object_get(doc, "event_id")), id);
  CHECK_STR(json_string_value(json_object_get(doc, "type")), "task.status");
  CHECK_STR(json_string_value(json_object_get(json_object_get(doc, "result"), "evolution_key")),
            "3EB0AA");
  json_decref(doc);
  doc = NULL;
  free(body);
  memcpy(r.task_id, s.task_id, UTIL_UUID_LEN);
  body = status_callback_body(&r, id, &len);
  CHECK(body);
  CHECK_STR(id, "123e4567-e89b-42d3-a456-426614174001.delivery.delivered");
  CHECK(strstr(body, "\"type\":\"task.delivery\""));
out:
  json_decref(doc);
  free(body);
}

int main(void)
{
  static const struct check_test tests[] = {
    {"names", test_names},
    {"receipts_and_callbacks", test_receipts_and_callbacks},
    {"rank", test_rank},
    {"round_trip_full", test_round_trip_full},
    {"round_trip_minimal", test_round_trip_minimal},
    {"decode_refuses", test_decode_refuses},
    {"clear_zeroed", test_clear_zeroed},
    {"batch", test_batch},
  };
  return CHECK_RUN(tests);
}
