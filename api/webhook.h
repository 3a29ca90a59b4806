/* Evolution API webhooks (research/evolution-api.md §6): which deliveries a webhook body
 * reports, separate from HTTP so it can be unit tested and fuzzed. */
#ifndef MSG_WEBHOOK_H
#define MSG_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

#include "job.h"
#include "status.h"

/* Receipts one webhook body may carry (messages.update data can be an array). */
#define WEBHOOK_MAX_RECEIPTS 64

/* One delivery receipt: our message `key` (Evolution's key.id, what SUCCESS recorded as
 * evolution_key) reached `state` at `at_ms`. */
struct webhook_receipt {
  char key[STATUS_KEY_MAX + 1];
  enum delivery_state state;
  int64_t at_ms;
  char instance[JOB_INSTANCE_MAX + 1]; /* "" when the envelope named none (or a bad one) */
};

/* Parses a webhook body of `len` bytes (the v2 or v1 envelope {"event", "instance", "data"}).
 * messages.update gives one receipt per update of a message we sent (fromMe) with a status
 * that says something: SERVER_ACK → server_ack, DELIVERY_ACK → delivered, READ and PLAYED →
 * read, ERROR → error (v2 keyId, v1 id; numeric statuses 0-5 too). send.message gives "sent".
 * Times come from the update's datetime (v1, Unix ms) when present, else now_ms: Evolution's
 * date_time is server-local time with a misleading "Z". Other events give no receipt.
 * Returns the number of receipts written to out[0..max), or -1 when the body is not a webhook
 * envelope (too deep, not JSON, no event name), with a reason in err[errlen]. */
int webhook_parse(const char *body, size_t len, int64_t now_ms, struct webhook_receipt *out,
                  size_t max, char *err, size_t errlen);

#endif
