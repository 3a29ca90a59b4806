/* AMQP helpers over rabbitmq-c: connect with a connection name, declare the topology of
 * DESIGN §3, read header tables. The caller's thread owns the connection it gets. */
#ifndef MSG_MQ_H
#define MSG_MQ_H

#include <amqp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

#include "cfg.h"
#include "confirms.h"

/* Routing keys on the work exchange. Retry queues are bound with "retry.<delay>". */
#define MQ_KEY_SEND "send"
#define MQ_KEY_DEAD "dead"
/* Quorum queue poison guard: a job whose deliveries keep failing without an ack (a consumer
 * crashing on it) is dead-lettered to the dead queue after this many returns. */
#define MQ_DELIVERY_LIMIT 10

/* Connects and logs in to one of cfg->broker.urls (tried in turn from a random one; amqps://
 * uses TLS with cfg->broker.tls), announcing "<cfg->broker.connection_name>-<role>@<host name>"
 * as the connection name (role: "api", "api-status", "consumer", "callbacks", "admin" for
 * dead-letter reads and redrives), product and version, and the capabilities
 * connection.blocked and consumer_cancel_notify. Each connect and each RPC is bounded by
 * `timeout_ms`. For one-shot work; daemons hold a session (below). Returns the connection
 * (caller destroys it with mq_close or, after a socket error, amqp_destroy_connection), or NULL
 * with the last address's reason in err[errlen]. */
amqp_connection_state_t mq_connect(const struct cfg *cfg, const char *role, int timeout_ms,
                                   char *err, size_t errlen);

/* A session: the one long-lived broker connection of a thread, over the addresses of
 * cfg->broker.urls. It starts at a random address and, when a connection fails or is lost,
 * moves on to the next; after a whole round of failures it waits a backoff with jitter
 * (MQ_BACKOFF_MIN_MS doubling to MQ_BACKOFF_MAX_MS), the same for every connection of both
 * daemons. Each successful open bumps the generation: a delivery tag or a confirm sequence
 * from an older generation means nothing on the new connection. One thread owns a session. */
#define MQ_BACKOFF_MIN_MS 200
#define MQ_BACKOFF_MAX_MS 5000
struct mq_session;

/* A closed session for `role` (see mq_connect); cfg is borrowed. NULL when out of memory. */
struct mq_session *mq_session_new(const struct cfg *cfg, const char *role);

/* Destroys the connection, if any, and frees the session; NULL is a no-op. */
void mq_session_free(struct mq_session *s);

/* Drops any connection and opens one to the next address. Returns the connection (owned by the
 * session, valid until mq_session_lost/close/free), or NULL with the reason in err. */
amqp_connection_state_t mq_session_open(struct mq_session *s, int timeout_ms, char *err,
                                        size_t errlen);

/* How long to wait before the next mq_session_open after a failed one: 0 while addresses of
 * this round are left, else the backoff with jitter. */
int mq_session_retry_delay_ms(struct mq_session *s);

/* The connection failed (socket error, broker close): destroys it without the close RPC; the
 * next open starts at the following address. No-op when closed. */
void mq_session_lost(struct mq_session *s);

/* Closes a healthy connection politely (bounded by the RPC timeout). No-op when closed. */
void mq_session_close(struct mq_session *s);

/* The live connection (NULL when closed), its generation (0 before the first open), and the
 * host:port it is connected to ("" when closed). */
amqp_connection_state_t mq_session_conn(const struct mq_session *s);
unsigned mq_session_generation(const struct mq_session *s);
const char *mq_session_address(const struct mq_session *s);

/* Writes a consumer tag that says who consumes ("msg-consumer@host:pid:n"), for the management
 * UI's consumer list, into buf. */
void mq_consumer_tag(const char *role, char *buf, size_t len);

/* Opens `channel`; returns 0 or -1 with a reason in err. */
int mq_channel_open(amqp_connection_state_t conn, amqp_channel_t channel, char *err,
                    size_t errlen);

/* Declares the work exchange, the job queue, one retry queue per distinct retry delay, the dead
 * queue and the status stream, with their bindings, on `channel`. Idempotent while the
 * arguments are unchanged. Returns 0, or -1 with the broker's reason in err. */
int mq_declare_topology(amqp_connection_state_t conn, amqp_channel_t channel,
                        const struct cfg *cfg, char *err, size_t errlen);

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

/* Declares the lane of `instance` on `channel`. Returns 0, or -1 with the reason in err. */
int mq_declare_lane(amqp_connection_state_t conn, amqp_channel_t channel, const struct cfg *cfg,
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

/* Declares the callback queues on `channel`; idempotent while the arguments are unchanged.
 * Returns 0, or -1 with the broker's reason in err. */
int mq_declare_callback_topology(amqp_connection_state_t conn, amqp_channel_t channel,
                                 const struct cfg *cfg, char *err, size_t errlen);

/* Describes an RPC reply that was not AMQP_RESPONSE_NORMAL into buf; returns buf. */
char *mq_reply_text(amqp_rpc_reply_t reply, char *buf, size_t len);

/* Closes channel 1.. and the connection politely (bounded by the RPC timeout set at connect)
 * and destroys it. Use only on a healthy connection; NULL is a no-op. */
void mq_close(amqp_connection_state_t conn);

/* Looks a key up in a header table (keys are not NUL-terminated); NULL when absent. The value
 * is borrowed from the table. */
const amqp_field_value_t *mq_table_get(const amqp_table_t *table, const char *key);

/* Reads an integer header of any AMQP integer kind; returns 0 and writes *out, or -1. */
int mq_table_get_int(const amqp_table_t *table, const char *key, int64_t *out);

/* Builders for table entries; strings are borrowed until the table is sent. */
amqp_table_entry_t mq_entry_str(const char *key, const char *value);
amqp_table_entry_t mq_entry_i64(const char *key, int64_t value);
amqp_table_entry_t mq_entry_bool(const char *key, int value);

/* ---- confirmed publishing ---------------------------------------------------------------
 * The publisher of one connection: a channel in confirm mode whose publishes each have an
 * owner, settled exactly once through the settle function: CONFIRM_ACKED, CONFIRM_REFUSED
 * (nack or basic.return), or CONFIRM_LOST. One rule for every daemon: when a publish fails the
 * publisher is broken, mq_pump says so, the owner drops the connection and calls
 * mq_publisher_lost, which settles every unconfirmed owner as lost; no later confirm can
 * settle a wrong owner. A channel the broker keeps nacking (NACK_STREAK_REOPEN in a row) is
 * replaced by a fresh one with the other channel number, its publishes settled as lost. */
struct mq_publisher;

/* A publisher on channel `a` (and `b` when a is replaced); fn(owner, outcome, ctx) settles.
 * NULL when out of memory. */
struct mq_publisher *mq_publisher_new(amqp_channel_t a, amqp_channel_t b, confirms_settle_fn fn,
                                      void *ctx);
void mq_publisher_free(struct mq_publisher *p); /* settles nothing; NULL is a no-op */

/* On a new connection: settles what was in flight as lost, opens the channel, confirm.select.
 * Returns 0, or -1 with the broker's reason in err. */
int mq_publisher_start(struct mq_publisher *p, amqp_connection_state_t conn, char *err,
                       size_t errlen);

/* The connection is gone: every unconfirmed owner is settled CONFIRM_LOST. */
void mq_publisher_lost(struct mq_publisher *p);

/* Results of mq_publisher_publish. */
#define MQ_PUBLISH_OK 0
#define MQ_PUBLISH_FAILED (-1)    /* tracked: settled as lost when the connection is dropped */
#define MQ_PUBLISH_UNTRACKED (-2) /* nothing sent, the owner is not tracked (closed, broken or
                                     out of memory); drop the connection */

/* Publishes body (borrowed for the call) with props; `owner` is settled by its confirm. */
int mq_publisher_publish(struct mq_publisher *p, amqp_connection_state_t conn,
                         const char *exchange, const char *routing_key, int mandatory,
                         const amqp_basic_properties_t *props, const void *body, size_t len,
                         void *owner);

/* Marks the oldest open publish whose owner matches as returned (settled refused at its ack). */
void mq_publisher_mark_returned(struct mq_publisher *p, int (*matches)(void *owner, void *arg),
                                void *arg);

amqp_channel_t mq_publisher_channel(const struct mq_publisher *p); /* the live number */
size_t mq_publisher_outstanding(const struct mq_publisher *p);
int mq_publisher_broken(const struct mq_publisher *p);
unsigned long long mq_publisher_reopens(const struct mq_publisher *p); /* channels replaced */

/* ---- the frame reader --------------------------------------------------------------------
 * The one place that reads AMQP frames. Confirms on the publishers' channels go to them; the
 * rest to the handlers (each optional). Messages are borrowed for the call; a deliver handler
 * may keep one by copying *m and zeroing it (mq_take_message): it then destroys the copy with
 * amqp_destroy_message. */
struct mq_handlers {
  void *ctx;
  struct mq_publisher *publishers[2]; /* e.g. the jobs' one and a stream's marker one */
  void (*deliver)(void *ctx, amqp_channel_t ch, uint64_t tag, int redelivered,
                  amqp_message_t *m);
  /* A basic.return: the publisher's owner is found by the handler (mq_publisher_mark_returned)
   * before its ack arrives. Return 0 to go on, non-zero to drop the connection. */
  int (*returned)(void *ctx, amqp_channel_t ch, amqp_message_t *m);
  /* The broker cancelled a consumer: return 0 to go on, non-zero (or no handler) to drop. */
  int (*cancelled)(void *ctx, amqp_channel_t ch);
  void (*blocked)(void *ctx, int blocked); /* connection.blocked (1) / unblocked (0) */
};

/* Reads and dispatches every frame available without blocking. Returns 0, or -1 when the
 * connection must be dropped (socket error, a channel or the connection closed by the broker,
 * a broken publisher), with the reason in why. */
int mq_pump(amqp_connection_state_t conn, const struct mq_handlers *h, char *why, size_t len);

/* For one-shot work: pumps frames through h (whose publishers include p) until every publish
 * of p is settled. Returns 0, or -1 when the connection must be dropped or timeout_ms passed,
 * with the reason in why. */
int mq_publisher_wait(struct mq_publisher *p, amqp_connection_state_t conn,
                      const struct mq_handlers *h, int timeout_ms, char *why, size_t len);

/* Moves a delivered message out of mq_pump's hands into *out (see mq_handlers). */
void mq_take_message(amqp_message_t *m, amqp_message_t *out);

/* 1 when rabbitmq-c holds input already read from the socket (poll would not wake for it). */
int mq_pending_input(amqp_connection_state_t conn);

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
struct mq_stream *mq_stream_new(const struct cfg *cfg, const char *role, amqp_channel_t channel,
                                amqp_channel_t marker_a, amqp_channel_t marker_b,
                                uint16_t prefetch);
void mq_stream_free(struct mq_stream *st); /* NULL is a no-op */

/* On a new connection: opens the channels, subscribes, publishes the marker; not caught up
 * until the marker is read back. Returns 0, or -1 with the reason in err. */
int mq_stream_start(struct mq_stream *st, amqp_connection_state_t conn, char *err,
                    size_t errlen);

/* The connection is gone: not caught up; the offset is kept for the resume. */
void mq_stream_lost(struct mq_stream *st);

/* A delivery on the stream's channel (m borrowed): tracks the offset, gives credit, and says
 * what it was (MQ_STREAM_*). */
int mq_stream_delivery(struct mq_stream *st, amqp_connection_state_t conn, uint64_t tag,
                       const amqp_message_t *m);

/* Once per loop turn: gives the credit owed, sends a refused marker again. Returns 0, or -1
 * when the connection must be dropped. */
int mq_stream_tick(struct mq_stream *st, amqp_connection_state_t conn);
void mq_stream_flush(struct mq_stream *st, amqp_connection_state_t conn);

int mq_stream_caught_up(const struct mq_stream *st);
int64_t mq_stream_offset(const struct mq_stream *st); /* -1 before any */
amqp_channel_t mq_stream_channel(const struct mq_stream *st);
/* The marker's publisher, for mq_handlers (its confirms must reach it). */
struct mq_publisher *mq_stream_publisher(struct mq_stream *st);

#endif
