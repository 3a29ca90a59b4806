/* libFuzzer target: the status-message parser (common/status.c: single events and batches),
 * which reads whatever any producer put on the status stream. A decoded event must encode and
 * decode to itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void count(const struct status_event *ev, void *ctx)
{
  if(!ev->task_id[0])
    abort();
  ++*(size_t *)ctx;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct status_event ev, again;
  char err[256];
  size_t len;
  char *out;
  size_t n = 0;
  /* Batches ({"events": [...]}) go through the same per-event decoder. */
  status_message_decode((const char *)data, size, count, &n, err, sizeof err);
  if(status_event_decode((const char *)data, size, &ev, err, sizeof err))
    return 0;
  out = status_event_encode(&ev, &len);
  if(!out)
    abort();
  if(status_event_decode(out, len, &again, err, sizeof err) || again.status != ev.status ||
     again.attempt != ev.attempt || strcmp(again.task_id, ev.task_id) ||
     again.request_hash != ev.request_hash)
    abort();
  status_event_clear(&again);
  status_event_clear(&ev);
  free(out);
  return 0;
}
