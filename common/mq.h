/* AMQP helpers over rabbitmq-c: connect with a connection name, declare the topology of
 * DESIGN §3, read header tables. The caller's thread owns the connection it gets. */
#ifndef MSG_MQ_H
#define MSG_MQ_H

#include <amqp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

#include "cfg.h"

/* Routing keys on the work exchange. Retry queues are bound with "retry.<delay>". */
#define MQ_KEY_SEND "send"
#define MQ_KEY_DEAD "dead"
/* Quorum queue poison guard: a job whose deliveries keep failing without an ack (a consumer
 * crashing on it) is dead-lettered to the dead queue after this many returns. */
#define MQ_DELIVERY_LIMIT 10

/* Connects and logs in to cfg->broker.url (amqps:// uses TLS with cfg->broker.tls), announcing
 * "<cfg->broker.connection_name>-<role>@<host name>" as the connection name (role: "api",
 * "api-status", "consumer", "callbacks", "admin" for dead-letter reads and redrives) and the
 * capabilities connection.blocked and consumer_cancel_notify. Each connect and each RPC is bounded by
 * `timeout_ms`. Returns the connection (caller destroys it with mq_close or, after a socket
 * error, amqp_destroy_connection), or NULL with a reason in err[errlen]. */
amqp_connection_state_t mq_connect(const struct cfg *cfg, const char *role, int timeout_ms,
                                   char *err, size_t errlen);

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

#endif
