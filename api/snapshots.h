/* Snapshots of the task cache on the broker, so that a new replica does not replay the whole
 * status stream (DESIGN §3). One replica at a time (the holder of an exclusive queue) writes
 * its cache, as status events that rebuild it, to the stream "<status_stream>.snapshots", then
 * an index record to "<status_stream>.snapshots.index" naming the snapshot, its parts and the
 * status stream offset it covers: every event before that offset was applied when the copy
 * began. A starting replica reads the index, loads the newest complete snapshot, then follows
 * the status stream from that offset. That stays correct because applying an event is
 * monotonic and idempotent (task_cache_apply): what the copy saw of events after the offset is
 * simply applied again, and any event the copy missed comes after the offset. */
#ifndef MSG_SNAPSHOTS_H
#define MSG_SNAPSHOTS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "mq.h"
#include "task_cache.h"

/* What a start-up loaded. */
struct snapshot_loaded {
  char id[64];           /* the snapshot's id */
  int64_t status_offset; /* the status stream is followed from here */
  int64_t written_ms;    /* when it was written (Unix ms) */
  uint64_t tasks, events, parts;
  double seconds;        /* reading and applying it */
};

/* Channels the loader uses on the caller's session, beside the caller's own: 5 to 10. */
#define SNAPSHOT_LOAD_FIRST_CH 5

/* Loads the newest complete snapshot into `cache` on session s (whose topology is declared),
 * within the thread that owns s; returns early when *stopping. Returns 1 with *out filled, 0
 * when there is none or it cannot be read whole (the cache may then hold part of it, which is
 * harmless: replaying the stream from its start only adds to it), -1 when the connection must
 * be dropped (reason in err). */
int snapshot_load(struct mq_session *s, const struct cfg *cfg, struct task_cache *cache,
                  const atomic_int *stopping, struct snapshot_loaded *out, char *err,
                  size_t errlen);

/* ---- the writer -------------------------------------------------------------------------- */

struct status_reader;
struct snapshot_writer;

/* Starts the writer thread (its own connection, role "api-snapshot") when
 * cfg->api.snapshot_interval_ms is not 0; NULL with err[0] == 0 when it is, NULL with a
 * reason in err when the thread cannot start. Everything is borrowed and must outlive it. */
struct snapshot_writer *snapshot_writer_start(const struct cfg *cfg, struct task_cache *cache,
                                              struct status_reader *reader, char *err,
                                              size_t errlen);
void snapshot_writer_stop(struct snapshot_writer *w); /* NULL is a no-op */

struct snapshot_writer_stats {
  int holder;                  /* this replica is the one that writes */
  unsigned long long written, failed;
  int64_t last_ms;             /* when the last one was complete (Unix ms), 0 before any */
  int64_t last_status_offset;  /* the offset it covers, -1 before any */
  uint64_t last_tasks;
  double last_seconds;
};
/* All zero (last_status_offset -1) for NULL. */
void snapshot_writer_stats(struct snapshot_writer *w, struct snapshot_writer_stats *out);

#endif
