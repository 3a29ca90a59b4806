/* Unit tests of api/task_cache.h: the task document of DESIGN §2 and the forward-only rule. */
#include "task_cache.h"

#include "check.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ID1 "123e4567-e89b-42d3-a456-426614174001"
#define ID2 "123e4567-e89b-42d3-a456-426614174002"
#define T0 INT64_C(1795867200000) /* 2026-11-28T12:00:00.000Z */
#define KEY "3EB0EFD331EA140F004CA75141E8169B9EED7629"
/* The fixed times above must not expire whatever day the tests run. */
#define RETENTION_MS (INT64_C(100) * 365 * 24 * 3600 * 1000)

static struct status_event ev(const char *id, enum task_status s, int attempt, int64_t at)
{
  struct status_event e = {.status = s, .attempt = attempt, .at_ms = at};
  snprintf(e.task_id, sizeof e.task_id, "%s", id);
  return e;
}

/* Renders and parses the document of `id`; NULL when unknown. Caller decrefs. */
static json_t *doc_of(struct task_cache *c, const char *id)
{
  char *text = task_cache_render(c, id);
  json_t *doc;
  if(!text)
    return NULL;
  doc = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
  free(text);
  return doc;
}

static const char *str_at(json_t *doc, const char *key)
{
  return json_string_value(json_object_get(doc, key));
}

static int is_null_at(json_t *doc, const char *key)
{
  return json_is_null(json_object_get(doc, key));
}

static void test_lifecycle(void)
{
  struct task_cache *c = task_cache_new(100, RETENTION_MS);
  json_t *doc = NULL, *result;
  struct status_event e;
  CHECK(c != NULL);
  CHECK_INT(task_cache_size(c), 0);

  e = ev(ID1, TASK_PENDING, 0, T0);
  e.created_at_ms = T0;
  e.phone = "+52123456789";
  CHECK_INT(task_cache_apply(c, &e), 1);
  CHECK_INT(task_cache_size(c), 1);
  doc = doc_of(c, ID1);
  CHECK(doc != NULL);
  CHECK_STR(str_at(doc, "task_id"), ID1);
  CHECK_STR(str_at(doc, "status"), "PENDING");
  CHECK_INT(json_integer_value(json_object_get(doc, "attempts")), 0);
  CHECK_STR(str_at(doc, "created_at"), "2026-11-28T12:00:00.000Z");
  CHECK_STR(str_at(doc, "updated_at"), "2026-11-28T12:00:00.000Z");
  CHECK(is_null_at(doc, "result"));
  CHECK(is_null_at(doc, "error"));
  CHECK(is_null_at(doc, "next_retry_at"));
  json_decref(doc);
  doc = NULL;

  e = ev(ID1, TASK_STARTED, 1, T0 + 1500);
  CHECK_INT(task_cache_apply(c, &e), 1);
  doc = doc_of(c, ID1);
  CHECK(doc != NULL);
  CHECK_STR(str_at(doc, "status"), "STARTED");
  CHECK_INT(json_integer_value(json_object_get(doc, "attempts")), 1);
  CHECK_STR(str_at(doc, "created_at"), "2026-11-28T12:00:00.000Z");
  CHECK_STR(str_at(doc, "updated_at"), "2026-11-28T12:00:01.500Z");
  CHECK(is_null_at(doc, "result"));
  json_decref(doc);
  doc = NULL;

  e = ev(ID1, TASK_SUCCESS, 1, T0 + 2250);
  e.created_at_ms = T0; /* the consumer repeats the job's created_at */
  e.phone = "+52123456789";
  e.evolution_key = KEY;
  CHECK_INT(task_cache_apply(c, &e), 1);
  doc = doc_of(c, ID1);
  CHECK(doc != NULL);
  CHECK_INT(json_object_size(doc), 10); /* request_id included, null without one */
  CHECK_STR(str_at(doc, "task_id"), ID1);
  CHECK_STR(str_at(doc, "status"), "SUCCESS");
  CHECK_INT(json_integer_value(json_object_get(doc, "attempts")), 1);
  CHECK_STR(str_at(doc, "created_at"), "2026-11-28T12:00:00.000Z");
  CHECK_STR(str_at(doc, "updated_at"), "2026-11-28T12:00:02.250Z");
  result = json_object_get(doc, "result");
  CHECK(json_is_object(result));
  CHECK(json_is_true(json_object_get(result, "success")));
  CHECK_STR(str_at(result, "phone"), "+52123456789");
  CHECK_STR(str_at(result, "evolution_key"), KEY);
  CHECK(is_null_at(doc, "error"));
  CHECK(is_null_at(doc, "next_retry_at"));
  json_decref(doc);
  doc = NULL;

  /* Late and duplicate events never move a finished task. */
  e = ev(ID1, TASK_STARTED, 1, T0 + 3000);
  CHECK_INT(task_cache_apply(c, &e), 0);
  e = ev(ID1, TASK_STARTED, 2, T0 + 3000);
  CHECK_INT(task_cache_apply(c, &e), 0);
  e = ev(ID1, TASK_RETRY, 1, T0 + 3000);
  e.error_code = "evolution_http_500";
  CHECK_INT(task_cache_apply(c, &e), 0);
  e = ev(ID1, TASK_PENDING, 0, T0 + 3000);
  CHECK_INT(task_cache_apply(c, &e), 0);
  e = ev(ID1, TASK_SUCCESS, 1, T0 + 3000);
  e.evolution_key = "OTHER";
  CHECK_INT(task_cache_apply(c, &e), 0);
  e = ev(ID1, TASK_FAILURE, 2, T0 + 3000);
  e.error_code = "late";
  CHECK_INT(task_cache_apply(c, &e), 0);
  doc = doc_of(c, ID1);
  CHECK(doc != NULL);
  CHECK_STR(str_at(doc, "status"), "SUCCESS");
  CHECK_STR(str_at(doc, "updated_at"), "2026-11-28T12:00:02.250Z");
  CHECK_STR(str_at(json_object_get(doc, "result"), "evolution_key"), KEY);
  CHECK(is_null_at(doc, "error"));
  CHECK_INT(task_cache_size(c), 1);
out:
  json_decref(doc);
  task_cache_free(c);
}

static void test_duplicates(void)
{
  struct task_cache *c = task_cache_new(100, RETENTION_MS);
  struct status_event e;
  json_t *doc = NULL;
  CHECK(c != NULL);
  e = ev(ID1, TASK_PENDING, 0, T0);
  CHECK_INT(task_cache_apply(c, &e), 1);
  e.at_ms = T0 + 5;
  CHECK_INT(task_cache_apply(c, &e), 0);
  e = ev(ID1, TASK_STARTED, 1, T0 + 10);
  CHECK_INT(task_cache_apply(c, &e), 1);
  CHECK_INT(task_cache_apply(c, &e), 0);
  /* The PENDING arriving after STARTED is late. */
  e = ev(ID1, TASK_PENDING, 0, T0 + 20);
  CHECK_INT(task_cache_apply(c, &e), 0);
  doc = doc_of(c, ID1);
  CHECK(doc != NULL);
  CHECK_STR(str_at(doc, "status"), "STARTED");
  CHECK_STR(str_at(doc, "updated_at"), "2026-11-28T12:00:00.010Z");
  /* Without created_at in any event, the first event's time stands in. */
  CHECK_STR(str_at(doc, "created_at"), "2026-11-28T12:00:00.000Z");
  CHECK_INT(task_cache_size(c), 1);
out:
  json_decref(doc);
  task_cache_free(c);
}

static void test_retry(void)
{
  struct task_cache *c = task_cache_new(100, RETENTION_MS);
  struct status_event e;
  json_t *doc = NULL, *error;
  CHECK(c != NULL);
  e = ev(ID2, TASK_PENDING, 0, T0);
  e.created_at_ms = T0;
  e.phone = "+52123456789";
  CHECK_INT(task_cache_apply(c, &e), 1);
  e = ev(ID2, TASK_STARTED, 1, T0 + 100);
  CHECK_INT(task_cache_apply(c, &e), 1);
  e = ev(ID2, TASK_RETRY, 1, T0 + 200);
  e.error_code = "evolution_http_500";
  e.error_message = "Evolution API answered 500: Timed Out";
  e.next_retry_at_ms = T0 + 5200;
  CHECK_INT(task_cache_apply(c, &e), 1);
  doc = doc_of(c, ID2);
  CHECK(doc != NULL);
  CHECK_STR(str_at(doc, "status"), "RETRY");
  CHECK_INT(json_integer_value(json_object_get(doc, "attempts")), 1);
  error = json_object_get(doc, "error");
  CHECK(json_is_object(error));
  CHECK_STR(str_at(error, "code"), "evolution_http_500");
  CHECK_STR(str_at(error, "message"), "Evolution API answered 500: Timed Out");
  CHECK_STR(str_at(doc, "next_retry_at"), "2026-11-28T12:00:05.200Z");
  CHECK(is_null_at(doc, "result"));
  json_decref(doc);
  doc = NULL;

  /* A duplicate RETRY of attempt 1 is ignored. */
  CHECK_INT(task_cache_apply(c, &e), 0);

  e = ev(ID2, TASK_STARTED, 2, T0 + 5300);
  CHECK_INT(task_cache_apply(c, &e), 1);
  doc = doc_of(c, ID2);
  CHECK(doc != NULL);
  CHECK_STR(str_at(doc, "status"), "STARTED");
  CHECK_INT(json_integer_value(json_object_get(doc, "attempts")), 2);
  CHECK(is_null_at(doc, "next_retry_at"));
  CHECK_STR(str_at(doc, "created_at"), "2026-11-28T12:00:00.000Z");
  json_decref(doc);
  doc = NULL;

  /* The STARTED of attempt 1 arriving now is late. */
  e = ev(ID2, TASK_STARTED, 1, T0 + 5400);
  CHECK_INT(task_cache_apply(c, &e), 0);

  e = ev(ID2, TASK_FAILURE, 2, T0 + 5500);
  e.error_code = "number_not_on_whatsapp";
  e.error_message = "the number is not on WhatsApp";
  CHECK_INT(task_cache_apply(c, &e), 1);
  doc = doc_of(c, ID2);
  CHECK(doc != NULL);
  CHECK_STR(str_at(doc, "status"), "FAILURE");
  CHECK_INT(json_integer_value(json_object_get(doc, "attempts")), 2);
  CHECK_STR(str_at(json_object_get(doc, "error"), "code"), "number_not_on_whatsapp");
  CHECK(is_null_at(doc, "result"));
  CHECK(is_null_at(doc, "next_retry_at"));
  json_decref(doc);
  doc = NULL;
  /* FAILURE is as final as SUCCESS. */
  e = ev(ID2, TASK_SUCCESS, 2, T0 + 6000);
  e.evolution_key = KEY;
  CHECK_INT(task_cache_apply(c, &e), 0);
out:
  json_decref(doc);
  task_cache_free(c);
}

static void test_unknown(void)
{
  struct task_cache *c = task_cache_new(10, RETENTION_MS);
  struct status_event e = ev(ID1, TASK_PENDING, 0, T0);
  CHECK(c != NULL);
  CHECK(task_cache_render(c, ID1) == NULL);
  CHECK_INT(task_cache_apply(c, &e), 1);
  CHECK(task_cache_render(c, ID2) == NULL);
  CHECK(task_cache_render(c, "") == NULL);
  CHECK(task_cache_render(c, "nonsense") == NULL);
out:
  task_cache_free(c);
}

/* Tasks older than the retention are forgotten: not rendered, and dropped on the next apply. */
static void test_retention(void)
{
  const int64_t hour = 3600 * 1000, now = util_now_ms();
  struct task_cache *c = task_cache_new(100, hour);
  struct status_event old = ev(ID1, TASK_PENDING, 0, now - 2 * hour);
  struct status_event fresh = ev(ID2, TASK_PENDING, 0, now - hour / 2);
  char *doc = NULL;
  CHECK(c);
  CHECK_INT(task_cache_apply(c, &old), 1);
  doc = task_cache_render(c, ID1);
  CHECK(doc == NULL);
  CHECK_INT(task_cache_apply(c, &fresh), 1);
  CHECK_INT(task_cache_size(c), 1);
  doc = task_cache_render(c, ID2);
  CHECK(doc != NULL);
out:
  free(doc);
  task_cache_free(c);
}

static void id_for(int i, char out[UTIL_UUID_LEN])
{
  snprintf(out, UTIL_UUID_LEN, "00000000-0000-4000-8000-%012d", i);
}

static void test_eviction(void)
{
  enum { MAX = 5 };
  struct task_cache *c = task_cache_new(MAX, RETENTION_MS);
  char id[UTIL_UUID_LEN];
  char *text = NULL;
  CHECK(c != NULL);
  for(int i = 1; i <= MAX; i++) {
    struct status_event e;
    id_for(i, id);
    e = ev(id, TASK_PENDING, 0, T0 + i);
    CHECK_INT(task_cache_apply(c, &e), 1);
  }
  CHECK_INT(task_cache_size(c), MAX);
  /* Updating a held task makes no room and drops nothing. */
  {
    struct status_event e;
    id_for(2, id);
    e = ev(id, TASK_STARTED, 1, T0 + 100);
    CHECK_INT(task_cache_apply(c, &e), 1);
    CHECK_INT(task_cache_size(c), MAX);
  }
  /* Each new task drops the oldest one (by first sight). */
  for(int i = MAX + 1; i <= MAX + 3; i++) {
    struct status_event e;
    id_for(i, id);
    e = ev(id, TASK_PENDING, 0, T0 + i);
    CHECK_INT(task_cache_apply(c, &e), 1);
    CHECK_INT(task_cache_size(c), MAX);
    id_for(i - MAX, id);
    CHECK(task_cache_render(c, id) == NULL);
  }
  for(int i = 4; i <= MAX + 3; i++) {
    id_for(i, id);
    text = task_cache_render(c, id);
    CHECK(text != NULL);
    CHECK(strstr(text, id) != NULL);
    free(text);
    text = NULL;
  }
  /* A dropped task seen again comes back as new (and drops the next oldest, task 4). */
  {
    struct status_event e;
    id_for(1, id);
    e = ev(id, TASK_STARTED, 1, T0 + 200);
    CHECK_INT(task_cache_apply(c, &e), 1);
    CHECK_INT(task_cache_size(c), MAX);
    id_for(4, id);
    CHECK(task_cache_render(c, id) == NULL);
  }
out:
  free(text);
  task_cache_free(c);
}

static void test_many(void)
{
  /* Enough tasks to chain buckets: all findable, size exact. */
  enum { N = 5000 };
  struct task_cache *c = task_cache_new(N, RETENTION_MS);
  char id[UTIL_UUID_LEN];
  char *text = NULL;
  CHECK(c != NULL);
  for(int i = 0; i < N; i++) {
    struct status_event e;
    id_for(i, id);
    e = ev(id, TASK_PENDING, 0, T0);
    CHECK_INT(task_cache_apply(c, &e), 1);
  }
  CHECK_INT(task_cache_size(c), N);
  for(int i = 0; i < N; i += 97) {
    id_for(i, id);
    text = task_cache_render(c, id);
    CHECK(text != NULL);
    free(text);
    text = NULL;
  }
out:
  free(text);
  task_cache_free(c);
}

static struct status_event receipt(const char *id, const char *key, enum delivery_state d,
                                   int64_t at)
{
  struct status_event e = {.status = TASK_RECEIPT, .delivery = d, .at_ms = at,
                           .evolution_key = (char *)key};
  if(id)
    snprintf(e.task_id, sizeof e.task_id, "%s", id);
  return e;
}

static const char *delivery_at(json_t *doc, const char *key)
{
  return json_string_value(json_object_get(json_object_get(doc, "delivery"), key));
}

/* Receipts move "delivery" up only (duplicates and reordering ignored, errors recorded beside
 * the state), found by task id or by Evolution key, and kept when they precede the SUCCESS. */
static void test_receipts(void)
{
  struct task_cache *c = task_cache_new(100, RETENTION_MS);
  json_t *doc = NULL;
  struct status_event e;
  char id[UTIL_UUID_LEN], *url = NULL;
  CHECK(c != NULL);
  e = ev(ID1, TASK_PENDING, 0, T0);
  e.callback_url = "https://hooks.example.com/msg";
  CHECK_INT(task_cache_apply(c, &e), 1);
  doc = doc_of(c, ID1);
  CHECK(is_null_at(doc, "delivery"));
  json_decref(doc);
  doc = NULL;
  CHECK_INT(task_cache_find_by_key(c, KEY, id), 0);

  /* Before the SUCCESS: kept aside by key, not visible yet. */
  e = receipt(NULL, KEY, DELIVERY_SERVER_ACK, T0 + 100);
  CHECK_INT(task_cache_apply(c, &e), 0);
  e = ev(ID1, TASK_SUCCESS, 1, T0 + 200);
  e.evolution_key = KEY;
  e.phone = "+52123456789";
  CHECK_INT(task_cache_apply(c, &e), 1);
  CHECK_INT(task_cache_find_by_key(c, KEY, id), 1);
  CHECK_STR(id, ID1);
  doc = doc_of(c, ID1);
  CHECK_STR(delivery_at(doc, "state"), "server_ack");
  CHECK_STR(delivery_at(doc, "sent_at"), "2026-11-28T12:00:00.200Z");
  CHECK_STR(delivery_at(doc, "server_ack_at"), "2026-11-28T12:00:00.100Z");
  CHECK(json_is_null(json_object_get(json_object_get(doc, "delivery"), "read_at")));
  json_decref(doc);
  doc = NULL;

  /* send.message after the SUCCESS: nothing new. */
  CHECK_INT(task_cache_receipt_is_news(c, ID1, DELIVERY_SENT, &url), 0);
  CHECK(url == NULL);
  /* READ before DELIVERY_ACK: the state is the maximum; the late one still gets its time. */
  CHECK_INT(task_cache_receipt_is_news(c, ID1, DELIVERY_READ, &url), 1);
  CHECK_STR(url, "https://hooks.example.com/msg");
  free(url);
  url = NULL;
  e = receipt(NULL, KEY, DELIVERY_READ, T0 + 900);
  CHECK_INT(task_cache_apply(c, &e), 1);
  e = receipt(ID1, KEY, DELIVERY_DELIVERED, T0 + 500);
  CHECK_INT(task_cache_apply(c, &e), 1);
  e = receipt(ID1, KEY, DELIVERY_READ, T0 + 950); /* a duplicate */
  CHECK_INT(task_cache_apply(c, &e), 0);
  CHECK_INT(task_cache_receipt_is_news(c, ID1, DELIVERY_READ, &url), 0);
  CHECK(url == NULL);
  e = receipt(ID1, KEY, DELIVERY_ERROR, T0 + 1000);
  CHECK_INT(task_cache_apply(c, &e), 1);
  doc = doc_of(c, ID1);
  CHECK_STR(delivery_at(doc, "state"), "read");
  CHECK_STR(delivery_at(doc, "delivered_at"), "2026-11-28T12:00:00.500Z");
  CHECK_STR(delivery_at(doc, "read_at"), "2026-11-28T12:00:00.900Z");
  CHECK_STR(delivery_at(doc, "error_at"), "2026-11-28T12:00:01.000Z");
  CHECK_STR(str_at(doc, "status"), "SUCCESS");
  json_decref(doc);
  doc = NULL;

  /* A receipt for a message nobody knows is kept, and harms nothing. */
  e = receipt(NULL, "UNKNOWNKEY", DELIVERY_READ, T0);
  CHECK_INT(task_cache_apply(c, &e), 0);
  CHECK_INT(task_cache_size(c), 1);
out:
  free(url);
  json_decref(doc);
  task_cache_free(c);
}

/* A replica owes the callbacks of the receipts it got before the task's SUCCESS, and pays them
 * once, after that SUCCESS; later receipts are paid at once. */
static void test_owed_callbacks(void)
{
  struct task_cache *c = task_cache_new(100, RETENTION_MS);
  struct status_event e;
  char id[UTIL_UUID_LEN], *url = NULL, *key = NULL;
  int64_t at[DELIVERY_STATES];
  unsigned owed = 0;
  CHECK(c != NULL);
  e = ev(ID2, TASK_PENDING, 0, T0);
  e.callback_url = "https://hooks.example.com/x";
  CHECK_INT(task_cache_apply(c, &e), 1);
  e = receipt(NULL, KEY, DELIVERY_SERVER_ACK, T0 + 10);
  CHECK_INT(task_cache_apply(c, &e), 0);
  CHECK_INT(task_cache_owe_callback(c, KEY, DELIVERY_SERVER_ACK, id, &url), 0);
  CHECK(url == NULL);
  e = receipt(NULL, KEY, DELIVERY_DELIVERED, T0 + 20);
  CHECK_INT(task_cache_apply(c, &e), 0);
  CHECK_INT(task_cache_owe_callback(c, KEY, DELIVERY_DELIVERED, id, &url), 0);
  e = receipt(NULL, KEY, DELIVERY_SENT, T0 + 5);
  CHECK_INT(task_cache_apply(c, &e), 0);
  CHECK_INT(task_cache_owe_callback(c, KEY, DELIVERY_SENT, id, &url), 0);
  CHECK_INT(task_cache_take_owed(c, ID2, &owed, at, &url, &key), 0);
  e = ev(ID2, TASK_SUCCESS, 1, T0 + 30);
  e.evolution_key = KEY;
  CHECK_INT(task_cache_apply(c, &e), 1);
  CHECK_INT(task_cache_take_owed(c, ID2, &owed, at, &url, &key), 1);
  CHECK_INT(owed, (1u << DELIVERY_SERVER_ACK) | (1u << DELIVERY_DELIVERED));
  CHECK(at[DELIVERY_SERVER_ACK] == T0 + 10);
  CHECK_STR(url, "https://hooks.example.com/x");
  CHECK_STR(key, KEY);
  free(url);
  free(key);
  url = key = NULL;
  CHECK_INT(task_cache_take_owed(c, ID2, &owed, at, &url, &key), 0);
  /* Known now: the caller pays at once. */
  e = receipt(NULL, KEY, DELIVERY_READ, T0 + 40);
  CHECK_INT(task_cache_apply(c, &e), 1);
  CHECK_INT(task_cache_owe_callback(c, KEY, DELIVERY_READ, id, &url), 1);
  CHECK_STR(id, ID2);
  CHECK_STR(url, "https://hooks.example.com/x");
out:
  free(url);
  free(key);
  task_cache_free(c);
}

static void test_free_null(void)
{
  task_cache_free(NULL);
  CHECK(1);
out:;
}

int main(void)
{
  static const struct check_test tests[] = {
    {"lifecycle", test_lifecycle},
    {"duplicates", test_duplicates},
    {"retry", test_retry},
    {"unknown", test_unknown},
    {"eviction", test_eviction},
    {"many", test_many},
    {"retention", test_retention},
    {"receipts", test_receipts},
    {"owed_callbacks", test_owed_callbacks},
    {"free_null", test_free_null},
  };
  return CHECK_RUN(tests);
}
