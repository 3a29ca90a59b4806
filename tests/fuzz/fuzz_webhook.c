/* libFuzzer target: the Evolution API webhook parser (api/webhook.c), which reads bodies from
 * whoever holds the webhook secret. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct webhook_receipt out[WEBHOOK_MAX_RECEIPTS];
  char err[160];
  int n = webhook_parse((const char *)data, size, INT64_C(1795867200000), out,
                        WEBHOOK_MAX_RECEIPTS, err, sizeof err);
  if(n < -1 || n > WEBHOOK_MAX_RECEIPTS)
    abort();
  /* Every receipt names a message and a real state, as the status stream will require. */
  for(int i = 0; i < n; i++)
    if(!out[i].key[0] || strlen(out[i].key) > STATUS_KEY_MAX || out[i].state == DELIVERY_NONE ||
       out[i].state >= DELIVERY_STATES || job_check_instance(out[i].instance[0] ? out[i].instance : "x"))
      abort();
  return 0;
}
