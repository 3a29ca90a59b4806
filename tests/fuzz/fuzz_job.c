/* libFuzzer target: the job parser (common/job.c) the consumer runs on every delivery, from
 * any AMQP producer. A decoded job must encode and decode to itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct job *job = NULL, *again = NULL;
  char err[256];
  size_t len;
  char *out;
  if(job_decode((const char *)data, size, &job, err, sizeof err))
    return 0;
  out = job_encode(job, &len);
  if(!out || job_decode(out, len, &again, err, sizeof err) || strcmp(job->phone, again->phone) ||
     strcmp(job->message, again->message) || strcmp(job->instance_name, again->instance_name))
    abort();
  job_free(again);
  job_free(job);
  free(out);
  return 0;
}
