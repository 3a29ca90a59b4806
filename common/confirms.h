/* Publisher-confirm bookkeeping: maps the sequence numbers of publishes on a confirm channel to
 * their owners, and settles them as the broker's basic.ack / basic.nack frames arrive (single or
 * "multiple", in any order). One instance per channel; not thread-safe (one owner thread). */
#ifndef MSG_CONFIRMS_H
#define MSG_CONFIRMS_H

#include <stddef.h>
#include <stdint.h>

struct confirms;

/* What became of a publish: the broker took it (ack), refused it (nack, or returned
 * unroutable: it does not have it), or the channel or connection went first (lost: it may or
 * may not have it). */
#define CONFIRM_ACKED 1
#define CONFIRM_REFUSED 0
#define CONFIRM_LOST (-1)

/* Called once per settled publish with its owner (may be NULL) and ok = one of CONFIRM_*. */
typedef void (*confirms_settle_fn)(void *owner, int ok, void *ctx);

/* Creates an empty tracker whose first publish will be sequence 1. NULL when out of memory. */
struct confirms *confirms_new(confirms_settle_fn fn, void *ctx);

/* Frees the tracker without settling anything; NULL is a no-op. */
void confirms_free(struct confirms *c);

/* Records the next publish and returns its sequence number, or 0 when out of memory (then the
 * message must not be published). */
uint64_t confirms_add(struct confirms *c, void *owner);

/* Settles `tag` (and, with multiple, every earlier outstanding tag). Unknown tags are ignored. */
void confirms_settle(struct confirms *c, uint64_t tag, int multiple, int ok);

/* Marks a returned (unroutable) publish: its owner is settled with ok = 0 when its ack arrives.
 * The broker sends basic.return before the ack, so the return is matched to the oldest
 * outstanding publish whose owner matches(owner, arg). */
void confirms_mark_returned(struct confirms *c, int (*matches)(void *owner, void *arg), void *arg);

/* Settles everything outstanding as CONFIRM_LOST (the channel or connection is gone) and restarts
 * numbering at 1, as a fresh confirm.select does. */
void confirms_fail_all(struct confirms *c);

/* Number of publishes waiting for their confirm. */
size_t confirms_outstanding(const struct confirms *c);

#endif
