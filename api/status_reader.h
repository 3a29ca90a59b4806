/* The api's status reader: one thread owns an AMQP connection that consumes the status stream,
 * from the start of retention at boot and then live, into the task cache. */
#ifndef MSG_STATUS_READER_H
#define MSG_STATUS_READER_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "metrics.h"
#include "task_cache.h"

struct status_reader;

/* Starts the reader thread; cfg and cache are borrowed and must outlive it. NULL with a reason
 * in err when the thread cannot start. */
struct status_reader *status_reader_start(const struct cfg *cfg, struct task_cache *cache,
                                          char *err, size_t errlen);

struct publisher;

/* Lets the reader send the status callbacks of delivery receipts that came before their task's
 * SUCCESS, once that SUCCESS is read (until then, none are sent). */
void status_reader_set_publisher(struct status_reader *r, struct publisher *pub);

/* Stops the thread, closes its connection and frees the reader. NULL is a no-op. */
void status_reader_stop(struct status_reader *r);

/* The consumer fleet this reader follows (GET /workers); lives as long as the reader. */
struct workers *status_reader_workers(struct status_reader *r);

/* 202 → SUCCESS times of the tasks seen succeed since the reader caught up. */
const struct metrics_hist *status_reader_success_latency(struct status_reader *r);

/* 1 once connected and caught up: the reader read back the marker it published right after
 * subscribing, so every event published before the subscription is applied. */
int status_reader_ready(struct status_reader *r);

/* Events applied so far, and the stream offset of the last one read (-1 before any). */
uint64_t status_reader_events(struct status_reader *r);

/* Successful subscriptions to the stream so far (the first one included). */
unsigned long long status_reader_connects(struct status_reader *r);

/* Wall-clock time (ms) at which the last event was read, 0 before any. */
int64_t status_reader_last_event_ms(struct status_reader *r);
int64_t status_reader_offset(struct status_reader *r);

struct snapshot_loaded;
/* What the start-up loaded from a snapshot (api/snapshots.h): id "" when none. */
void status_reader_loaded(struct status_reader *r, struct snapshot_loaded *out);

#endif
