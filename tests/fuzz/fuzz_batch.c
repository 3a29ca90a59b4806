/* libFuzzer target: the POST /messages/batch body parser (api/request.c), and the error texts
 * it gives being made valid UTF-8 as the api answers them. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct request_item *items = NULL;
  struct request_error err;
  size_t n = 0;
  if(request_parse_batch((const char *)data, size, "default", 50, &items, &n, &err) == 0) {
    if(n < 1 || n > 50)
      abort();
    for(size_t i = 0; i < n; i++) {
      json_t *s;
      if(items[i].ok) {
        if(job_check_instance(items[i].job.instance_name) != JOB_FIELD_OK)
          abort();
        continue;
      }
      util_utf8_sanitize(items[i].err.message);
      util_utf8_sanitize(items[i].err.field);
      if(!(s = json_pack("{s:s, s:s}", "message", items[i].err.message, "field",
                         items[i].err.field)))
        abort();
      json_decref(s);
    }
    request_items_free(items, n);
  }
  else if(err.status != 400 && err.status != 422 && err.status != 503)
    abort();
  return 0;
}
