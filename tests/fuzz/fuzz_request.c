/* libFuzzer target: the POST /messages body parser and validator (api/request.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct job job = {0};
  struct request_error err;
  if(request_parse_message((const char *)data, size, "default", &job, &err) == 0) {
    /* A success must hold what the consumer will accept again. */
    if(job_check_message(job.message, strlen(job.message)) != JOB_FIELD_OK ||
       job_check_instance(job.instance_name) != JOB_FIELD_OK || job.phone[0] != '+')
      abort();
    free(job.message);
    free(job.instance_name);
    free(job.callback_url);
  }
  else if(err.status != 400 && err.status != 422 && err.status != 503)
    abort();
  return 0;
}
