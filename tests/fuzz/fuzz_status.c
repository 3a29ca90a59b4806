/* libFuzzer target: the status-event parser (common/status.c), which reads whatever any
 * producer put on the status stream. A decoded event must encode and decode to itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct status_event ev, again;
  char err[256];
  size_t len;
  char *out;
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
