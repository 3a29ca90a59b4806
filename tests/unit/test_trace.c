/* Unit tests for common/trace.h (request ids, W3C traceparent) and their ride on the job. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "job.h"
#include "trace.h"

#define PARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static void test_ids(void)
{
  char id[TRACE_REQUEST_ID_MAX + 1], long_id[80];
  memset(long_id, 'a', 65);
  long_id[65] = '\0';
  CHECK(trace_request_id_ok("abc-123"));
  CHECK(trace_request_id_ok("req_1.2:3"));
  CHECK(!trace_request_id_ok(""));
  CHECK(!trace_request_id_ok("has space"));
  CHECK(!trace_request_id_ok("new\nline"));
  CHECK(!trace_request_id_ok("quote\""));
  CHECK(!trace_request_id_ok(long_id));
  long_id[64] = '\0';
  CHECK(trace_request_id_ok(long_id));
  trace_new_request_id(id);
  CHECK(trace_request_id_ok(id));
  CHECK_INT(strlen(id), 36);
out:;
}

static void test_traceparent(void)
{
  char tp[TRACE_PARENT_LEN], child[TRACE_PARENT_LEN];
  CHECK(trace_parent_ok(PARENT));
  CHECK(trace_parent_ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
  CHECK(!trace_parent_ok("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
  CHECK(!trace_parent_ok("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
  CHECK(!trace_parent_ok("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"));
  CHECK(!trace_parent_ok("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
  CHECK(!trace_parent_ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-"));
  CHECK(!trace_parent_ok(NULL));
  trace_new_parent(tp);
  CHECK(trace_parent_ok(tp));
  /* A child: the same trace and flags, another span. */
  trace_child(PARENT, child);
  CHECK(trace_parent_ok(child));
  CHECK(!strncmp(child, PARENT, 36));
  CHECK(strcmp(child + 36, PARENT + 36) != 0);
  CHECK_STR(child + 53, "01");
  /* A bad parent starts a trace of its own. */
  trace_child("garbage", child);
  CHECK(trace_parent_ok(child));
out:;
}

static void test_job_carries_them(void)
{
  struct job job = {.task_id = "123e4567-e89b-42d3-a456-426614174000", .phone = "+52123456789",
                    .message = "hola", .instance_name = "default", .created_at_ms = 1800000000000,
                    .request_id = "abc-123", .traceparent = PARENT};
  struct job *back = NULL;
  char err[128], *text;
  size_t len;
  text = job_encode(&job, &len);
  CHECK(text != NULL);
  CHECK_INT(job_decode(text, len, &back, err, sizeof err), 0);
  CHECK_STR(back->request_id, "abc-123");
  CHECK_STR(back->traceparent, PARENT);
  job_free(back);
  back = NULL;
  free(text);
  /* Not valid: dropped, the job still decodes. */
  job.request_id = "not valid!";
  job.traceparent = "00-xyz";
  text = job_encode(&job, &len);
  CHECK_INT(job_decode(text, len, &back, err, sizeof err), 0);
  CHECK(back->request_id == NULL && back->traceparent == NULL);
out:
  job_free(back);
  free(text);
}

int main(void)
{
  static const struct check_test tests[] = {{"ids", test_ids},
                                            {"traceparent", test_traceparent},
                                            {"job_carries_them", test_job_carries_them}};
  return CHECK_RUN(tests);
}
