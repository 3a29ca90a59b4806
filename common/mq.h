/* The AMQP engine: the only code that talks to rabbitmq-c. Sessions (one connection over the
 * addresses of a broker or cluster, with one backoff for everyone), the topology's names and
 * declarations, confirmed publishing with typed outcomes, one frame reader that dispatches to
 * handlers, and a follower of the status stream that catches up without clocks. Its types
 * are its own: nothing outside common/ sees a rabbitmq-c type. One thread owns a session and
 * everything used on it. */
#ifndef MSG_MQ_H
#define MSG_MQ_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "confirms.h"

/* Routing keys on the work exchange. Retry queues are bound with "retry.<delay>". */
#define MQ_KEY_SEND "send"
#define MQ_KEY_DEAD "dead"
/* Quorum queue poison guard: a job whose deliveries keep failing without an ack (a consumer
 * crashing on it) is dead-lettered to the dead queue after this many returns. */
#define MQ_DELIVERY_LIMIT 10
/* Room for a consumer tag (an AMQP short string) and its NUL. */
#define MQ_TAG_LEN 256

/* ---- sessions ----------------------------------------------------------------------------
 * A session: the broker connection of one thread, over the addresses of cfg->broker.urls. It
 * starts at a random address and, when a connection fails or is lost, moves on to the next;
 * after a whole round of failures it waits a backoff with jitter (MQ_BACKOFF_MIN_MS doubling
 * to MQ_BACKOFF_MAX_MS), the same for every connection of both daemons. Each successful open
 * bumps the generation: a delivery tag or a confirm sequence from an older generation means
 * nothing on the new connection. The connection is named "<broker.connection_name>-<role>@
 * <host>" (role: "api", "api-status", "consumer", "callbacks", "admin"), with product,
 * version and the capabilities connection.blocked and consumer_cancel_notify. */
#define MQ_BACKOFF_MIN_MS 200
#define MQ_BACKOFF_MAX_MS 5000
struct mq_session;

/* A closed session for `role`; cfg is borrowed. NULL when out of memory. */
struct mq_session *mq_session_new(const struct cfg *cfg, const char *role);

/* Destroys the connection, if any, and frees the session; NULL is a no-op. */
void mq_session_free(struct mq_session *s);

/* Drops any connection and opens one to the next address; each connect and each RPC later on
 * is bounded by timeout_ms. Returns 0, or -1 with the reason in err. */
int mq_session_open(struct mq_session *s, int timeout_ms, char *err, size_t errlen);

/* For one-shot work: tries every address once, from a random one. Returns 0 or -1 (err holds
 * the last address's reason). */
int mq_session_open_any(struct mq_session *s, int timeout_ms, char *err, size_t errlen);

/* How long to wait before the next mq_session_open after a failed one: 0 while addresses of
 * this round are left, else the backoff with jitter. */
int mq_session_retry_delay_ms(struct mq_session *s);

/* The connection failed (socket error, broker close): destroys it without the close RPC; the
 * next open starts at the following address. No-op when closed. */
void mq_session_lost(struct mq_session *s);

/* Closes a healthy connection politely (bounded by the RPC timeout). No-op when closed. */
void mq_session_close(struct mq_session *s);

int mq_session_connected(const struct mq_session *s);
unsigned mq_session_generation(const struct mq_session *s); /* 0 before the first open */
const char *mq_session_address(const struct mq_session *s); /* host:port, "" when closed */
/* The socket to poll for input, -1 when closed. */
int mq_session_fd(const struct mq_session *s);
/* 1 when input already read from the socket waits (poll would not wake for it). */
int mq_session_pending_input(const struct mq_session *s);
/* Waits up to timeout_ms for input on the session's socket; returns at once when rabbitmq-c
 * already holds some (poll would not wake for it) or when the session is closed. */
void mq_session_wait_input(const struct mq_session *s, int timeout_ms);
/* The highest channel number the broker allows. */
int mq_session_channel_max(const struct mq_session *s);

/* ---- channels, consumers, acks ----------------------------------------------------------- */

/* Opens a channel; returns 0 or -1 with the reason in err. */
int mq_channel_open(struct mq_session *s, uint16_t ch, char *err, size_t errlen);

/* Closes a channel and waits for the broker's answer (what was delivered on it and not acked
 * goes back to its queue). */
void mq_channel_close(struct mq_session *s, uint16_t ch);

/* Sets the channel's prefetch and consumes `queue` with a tag that says who consumes
 * ("msg-<role>@host:pid:n"), written to tag. `offset` >= 0 consumes a stream from that offset,
 * MQ_FROM_FIRST from its start, MQ_NOT_A_STREAM for a queue. Returns 0 or -1 with err. */
#define MQ_NOT_A_STREAM (-2)
#define MQ_FROM_FIRST (-1)
/* A stream from a time (Unix seconds): its first chunk written then or later. */
#define MQ_FROM_TIME(unix_s) (-16 - (int64_t)(unix_s))
int mq_consume(struct mq_session *s, uint16_t ch, const char *queue, uint16_t prefetch,
               int64_t offset, const char *role, char tag[MQ_TAG_LEN], char *err,
               size_t errlen);

/* Cancels a consumer without waiting for the broker's answer (the loop keeps running). */
void mq_cancel(struct mq_session *s, uint16_t ch, const char *tag);

/* Acks (multiple: every delivery up to tag) or nacks a delivery of this connection. Return 0,
 * or -1 when the connection is gone (the broker then requeues by itself). */
int mq_ack(struct mq_session *s, uint16_t ch, uint64_t tag, int multiple);
int mq_nack(struct mq_session *s, uint16_t ch, uint64_t tag, int requeue);

/* The message count of `queue` (passive declare). Returns 0, or -1 with err. */
int mq_queue_depth(struct mq_session *s, uint16_t ch, const char *queue, uint32_t *depth,
                   char *err, size_t errlen);

/* ---- messages -----------------------------------------------------------------------------
 * A received message (a delivery, a basic.get, a basic.return). Handlers get it borrowed for
 * the call; mq_message_take keeps it. */
struct mq_message;

const void *mq_message_body(const struct mq_message *m, size_t *len);
/* An integer header of any AMQP integer kind: 0 and *out written, or -1. */
int mq_message_header_int(const struct mq_message *m, const char *key, int64_t *out);
/* A string header, copied NUL-terminated: 0, -1 when absent or not a string, -2 when it does
 * not fit (buf is then ""). */
int mq_message_header_str(const struct mq_message *m, const char *key, char *buf, size_t len);
/* The same, malloc'd (caller frees): NULL with *rc = -1 (absent) or -2 (out of memory). */
char *mq_message_header_dup(const struct mq_message *m, const char *key, int *rc);

enum mq_prop { MQ_PROP_MESSAGE_ID, MQ_PROP_CORRELATION_ID, MQ_PROP_TYPE };
/* A property, copied NUL-terminated: 0, -1 when absent, -2 when it does not fit. */
int mq_message_prop(const struct mq_message *m, enum mq_prop which, char *buf, size_t len);

/* Moves a borrowed message out of the handler's hands: a heap copy the caller frees with
 * mq_message_free; NULL when out of memory (the borrowed one is then left as it was). */
struct mq_message *mq_message_take(struct mq_message *m);
void mq_message_free(struct mq_message *m); /* NULL is a no-op */

/* ---- what a publish carries ---------------------------------------------------------------
 * Every publish is persistent, application/json, stamped with the time. Strings are borrowed
 * for the call; NULL leaves a property out. */
enum mq_header_kind { MQ_HEADER_STR, MQ_HEADER_INT };
struct mq_header {
  const char *key;
  enum mq_header_kind kind;
  const char *str;
  int64_t num;
};
struct mq_header mq_header_str(const char *key, const char *value);
struct mq_header mq_header_int(const char *key, int64_t value);

struct mq_props {
  const char *message_id, *correlation_id, *reply_to, *type, *app_id;
  const struct mq_header *headers;
  size_t n_headers;
};

/* ---- confirmed publishing ---------------------------------------------------------------
 * The publisher of one session: a channel in confirm mode whose publishes each have an owner,
 * settled exactly once through the settle function: CONFIRM_ACKED, CONFIRM_REFUSED (nack or
 * basic.return), or CONFIRM_LOST. One rule for every daemon: when a publish fails the
 * publisher is broken, mq_pump says so, the owner drops the connection and calls
 * mq_publisher_lost, which settles every unconfirmed owner as lost; no later confirm can
 * settle a wrong owner. A channel the broker keeps nacking (three publishes in a row) is
 * replaced by a fresh one with the other channel number, its publishes settled as lost: a
 * quorum queue's client state lives in the channel, and one that learnt of a leader before it
 * moved can be nacked until that node comes back. */
struct mq_publisher;

/* A publisher on channel `a` (and `b` when a is replaced); fn(owner, outcome, ctx) settles.
 * NULL when out of memory. */
struct mq_publisher *mq_publisher_new(uint16_t a, uint16_t b, confirms_settle_fn fn, void *ctx);
void mq_publisher_free(struct mq_publisher *p); /* settles nothing; NULL is a no-op */

/* On a new connection: settles what was in flight as lost, opens the channel, confirm.select.
 * Returns 0, or -1 with the broker's reason in err. */
int mq_publisher_start(struct mq_publisher *p, struct mq_session *s, char *err, size_t errlen);

/* The connection is gone: every unconfirmed owner is settled CONFIRM_LOST. */
void mq_publisher_lost(struct mq_publisher *p);

/* Results of mq_publisher_publish. */
#define MQ_PUBLISH_OK 0
#define MQ_PUBLISH_FAILED (-1)    /* tracked: settled as lost when the connection is dropped */
#define MQ_PUBLISH_UNTRACKED (-2) /* nothing sent, the owner is not tracked (closed, broken or
                                     out of memory); drop the connection */

/* Publishes body (borrowed for the call); `owner` is settled by its confirm. mandatory: a
 * message no queue takes comes back (basic.return) and is settled refused. */
int mq_publisher_publish(struct mq_publisher *p, struct mq_session *s, const char *exchange,
                         const char *routing_key, int mandatory, const struct mq_props *props,
                         const void *body, size_t len, void *owner);

/* Publishes a received message again: its body and properties (user_id dropped: it must name
 * the publishing connection's user), its headers less those named in `drop` (NULL-terminated),
 * plus `extra`. Results as mq_publisher_publish. */
int mq_publisher_republish(struct mq_publisher *p, struct mq_session *s, const char *exchange,
                           const char *routing_key, int mandatory, const struct mq_message *m,
                           const char *const *drop, const struct mq_header *extra,
                           size_t n_extra, void *owner);

/* Marks the oldest open publish whose owner matches as returned (settled refused at its ack). */
void mq_publisher_mark_returned(struct mq_publisher *p, int (*matches)(void *owner, void *arg),
                                void *arg);

uint16_t mq_publisher_channel(const struct mq_publisher *p); /* the live number */
size_t mq_publisher_outstanding(const struct mq_publisher *p);
int mq_publisher_broken(const struct mq_publisher *p);
unsigned long long mq_publisher_reopens(const struct mq_publisher *p); /* channels replaced */

/* ---- the frame reader --------------------------------------------------------------------
 * The one place that reads AMQP frames. Confirms on the publishers' channels go to them; the
 * rest to the handlers (each optional). Messages are borrowed for the call. */
struct mq_handlers {
  void *ctx;
  struct mq_publisher *publishers[2]; /* e.g. the jobs' one and a stream's marker one */
  void (*deliver)(void *ctx, uint16_t ch, uint64_t tag, int redelivered, struct mq_message *m);
  /* A basic.return: the publisher's owner is found by the handler (mq_publisher_mark_returned)
   * before its ack arrives. Return 0 to go on, non-zero to drop the connection. */
  int (*returned)(void *ctx, uint16_t ch, struct mq_message *m);
  /* The broker cancelled a consumer: return 0 to go on, non-zero (or no handler) to drop. */
  int (*cancelled)(void *ctx, uint16_t ch);
  void (*blocked)(void *ctx, int blocked); /* connection.blocked (1) / unblocked (0) */
};

/* Reads and dispatches every frame available without blocking. Returns 0, or -1 when the
 * connection must be dropped (socket error, a channel or the connection closed by the broker,
 * a broken publisher), with the reason in why. */
int mq_pump(struct mq_session *s, const struct mq_handlers *h, char *why, size_t len);

/* For one-shot work: pumps frames through h (whose publishers include p) until every publish
 * of p is settled. Returns 0, or -1 when the connection must be dropped or timeout_ms passed,
 * with the reason in why. */
int mq_publisher_wait(struct mq_publisher *p, struct mq_session *s, const struct mq_handlers *h,
                      int timeout_ms, char *why, size_t len);

/* For one-shot work: takes the next message of `queue` unacked (basic.get). Returns 1 with *m
 * (caller frees with mq_message_free) and its tag, 0 when the queue is empty, -1 on error. */
int mq_get(struct mq_session *s, uint16_t ch, const char *queue, struct mq_message **m,
           uint64_t *tag);

/* ---- stream following --------------------------------------------------------------------
 * Follows the status stream on one channel: from its first offset at boot, then after the last
 * offset read at every reconnect, giving credit (acks) in batches. Catch-up without clocks:
 * right after subscribing it publishes a marker of its own (type "message.marker", confirmed
 * on its own publisher's channels) and is caught up when it reads that marker back, which
 * proves that it has read everything published before it subscribed. Every reader skips every
 * marker. */
struct mq_stream;

/* Results of mq_stream_delivery. */
#define MQ_STREAM_EVENT 0     /* a status message for the caller to decode */
#define MQ_STREAM_SKIP 1      /* a marker of another reader */
#define MQ_STREAM_CAUGHT_UP 2 /* our own marker: everything before the subscription is read */

/* A follower of cfg->topology.status_stream on `channel`, publishing its markers on
 * marker_a/marker_b; `role` names its consumer tag and markers. NULL when out of memory. */
struct mq_stream *mq_stream_new(const struct cfg *cfg, const char *role, uint16_t channel,
                                uint16_t marker_a, uint16_t marker_b, uint16_t prefetch);
void mq_stream_free(struct mq_stream *st); /* NULL is a no-op */

/* On a new connection: opens the channels, subscribes, publishes the marker; not caught up
 * until the marker is read back. Returns 0, or -1 with the reason in err. */
int mq_stream_start(struct mq_stream *st, struct mq_session *s, char *err, size_t errlen);

/* The connection is gone: not caught up; the offset is kept for the resume. */
void mq_stream_lost(struct mq_stream *st);

/* A delivery on the stream's channel (m borrowed): tracks the offset, gives credit, and says
 * what it was (MQ_STREAM_*). */
int mq_stream_delivery(struct mq_stream *st, struct mq_session *s, uint64_t tag,
                       const struct mq_message *m);

/* Once per loop turn: gives the credit owed, sends a refused marker again. Returns 0, or -1
 * when the connection must be dropped. */
int mq_stream_tick(struct mq_stream *st, struct mq_session *s);

int mq_stream_caught_up(const struct mq_stream *st);
int64_t mq_stream_offset(const struct mq_stream *st); /* -1 before any */
int64_t mq_stream_first_offset(const struct mq_stream *st); /* first read, -1 before any */
/* Before the first start: the first subscription begins at this time (Unix ms; the stream's
 * timestamps are the broker's, to the second) instead of the stream's first message. */
void mq_stream_start_at(struct mq_stream *st, int64_t unix_ms);
/* Before the first start: this follower publishes no catch-up marker (it is never caught up;
 * the caller decides where it stops). */
void mq_stream_without_marker(struct mq_stream *st);
/* Before the first start: the first subscription begins at stream offset `offset`. */
void mq_stream_start_from(struct mq_stream *st, int64_t offset);
/* Before the first start: follow the stream `queue` instead of the status stream (its markers
 * go there too). */
void mq_stream_set_queue(struct mq_stream *st, const char *queue);
uint16_t mq_stream_channel(const struct mq_stream *st);
/* The marker's publisher, for mq_handlers (its confirms must reach it). */
struct mq_publisher *mq_stream_publisher(struct mq_stream *st);

/* ---- topology ------------------------------------------------------------------------------ */

/* Declares the work exchange, the job queue, one retry queue per distinct retry delay, the dead
 * queue and the status stream, with their bindings, on `ch`. Idempotent while the arguments
 * are unchanged. Returns 0, or -1 with the broker's reason in err. */
int mq_declare_topology(struct mq_session *s, uint16_t ch, const struct cfg *cfg, char *err,
                        size_t errlen);

/* The api's cache snapshots (api/snapshots.c): the stream "<status_stream>.snapshots" holds
 * them, "<status_stream>.snapshots.index" says which one is complete and where it starts; both
 * keep MQ_SNAPSHOT_MAX_AGE (the writer refreshes a snapshot well within it). */
#define MQ_SNAPSHOT_MAX_AGE "1200s"
void mq_snapshot_stream_name(const struct cfg *cfg, char *buf, size_t len);
void mq_snapshot_index_name(const struct cfg *cfg, char *buf, size_t len);

/* Declares the exclusive (one connection at a time, gone with it) queue `name` on `ch`: a lock
 * across processes. Returns 1 when this connection holds it, 0 when another one does (the
 * channel is reopened), -1 with err when the connection must be dropped. */
int mq_claim_exclusive(struct mq_session *s, uint16_t ch, const char *name, char *err,
                       size_t errlen);

/* Writes the retry queue name for a delay ("messages.retry.5s") into buf. */
void mq_retry_queue_name(const struct cfg *cfg, uint64_t delay_ms, char *buf, size_t len);

/* Writes the routing key of a delay's retry queue ("retry.5s") into buf. */
void mq_retry_routing_key(uint64_t delay_ms, char *buf, size_t len);

/* Scheduled sends wait in delay queues "<exchange>.delay.<d>" (routing key "delay.<d>") that
 * dead-letter back to the job queue: 250ms, then powers of 4 seconds from 1s to 1048576s
 * (12 days). A job hops through them, the largest that fits each time, so any send_at up to 30
 * days is reached in at most ~30 hops without holding anything unacked in a consumer. */
#define MQ_N_DELAYS 12
extern const uint64_t MQ_DELAYS_MS[MQ_N_DELAYS];

/* The delay queue for a job still `remaining_ms` from its send_at: the largest delay that does
 * not overshoot, or the shortest (250ms) when less than that remains, so a job is never sent
 * early and at most 250ms late. */
uint64_t mq_schedule_hop(int64_t remaining_ms);

/* Writes the name ("messages.delay.4s") and the routing key ("delay.4s") of a delay queue. */
void mq_delay_queue_name(const struct cfg *cfg, uint64_t delay_ms, char *buf, size_t len);
void mq_delay_routing_key(uint64_t delay_ms, char *buf, size_t len);

/* Rate-limited instances get a lane: the quorum queue "<topology.queue>.lane.<instance>",
 * bound with routing key "lane.<instance>", single active consumer (one consumer process at a
 * time paces the instance, whatever the replica count), dead-lettering like the job queue. */
void mq_lane_queue_name(const struct cfg *cfg, const char *instance, char *buf, size_t len);
void mq_lane_routing_key(const char *instance, char *buf, size_t len);

/* Declares the lane of `instance` on `ch`. Returns 0, or -1 with the reason in err. */
int mq_declare_lane(struct mq_session *s, uint16_t ch, const struct cfg *cfg,
                    const char *instance, char *err, size_t errlen);

/* Status callbacks (consumer/callbacks.c), all through the default exchange by queue name:
 * <topology.callback_queue> (what the dispatcher consumes; dead-letters to its dead queue
 * after MQ_DELIVERY_LIMIT returns), one "<callback_queue>.retry.<delay>" per distinct
 * callbacks.retry_delays entry (TTL = the delay, then back to <callback_queue>), and
 * "<callback_queue>.dead" (parked callbacks). Quorum queues with at-least-once dead-lettering
 * unless topology.queue_type is classic, like the job queues. */
void mq_callback_retry_queue_name(const struct cfg *cfg, uint64_t delay_ms, char *buf,
                                  size_t len);
void mq_callback_dead_queue_name(const struct cfg *cfg, char *buf, size_t len);

/* Declares the callback queues on `ch`; idempotent while the arguments are unchanged.
 * Returns 0, or -1 with the broker's reason in err. */
int mq_declare_callback_topology(struct mq_session *s, uint16_t ch, const struct cfg *cfg,
                                 char *err, size_t errlen);

#endif
