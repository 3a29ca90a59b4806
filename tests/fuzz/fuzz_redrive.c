/* libFuzzer target: the POST /dead-letters/redrive body validator (api/request.c): whatever it
 * accepts stays within the bounds that keep an HTTP worker from being held (rate, max, the
 * planned duration), and its error texts can always be answered. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct request_redrive r;
  struct request_error err;
  if(request_parse_redrive((const char *)data, size, &r, &err) == 0) {
    const struct redrive_filter *f = &r.filter;
    if(f->max < 1 || f->max > DEAD_REDRIVE_MAX ||
       (f->rate != 0 && (f->rate < DEAD_RATE_MIN || f->rate > DEAD_RATE_MAX)) ||
       (f->rate > 0 && (double)(f->max - 1) / f->rate * 1000.0 > REQUEST_REDRIVE_MAX_MS))
      abort();
    for(size_t i = 0; i < f->n_task_ids; i++)
      if(!util_is_uuid(f->task_ids[i]))
        abort();
    request_redrive_free(&r);
  }
  else {
    json_t *s;
    if(err.status != 400 && err.status != 422)
      abort();
    util_utf8_sanitize(err.message);
    util_utf8_sanitize(err.field);
    if(!(s = json_pack("{s:s, s:s}", "message", err.message, "field", err.field)))
      abort();
    json_decref(s);
  }
  return 0;
}
