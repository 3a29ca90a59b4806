/* The AMQP engine's rabbitmq-c side, for the engine's own files (mq.c) and its unit test: the
 * rest of the code sees only mq.h. */
#ifndef MSG_MQ_INTERNAL_H
#define MSG_MQ_INTERNAL_H

#include <amqp.h>

#include "mq.h"

/* A received message as rabbitmq-c read it (properties in its pool, body malloc'd). */
struct mq_message {
  amqp_message_t msg;
};

/* The session's connection (NULL when closed); a test may hand a session a connection of its
 * own (a scripted one) with mq_session_adopt. */
amqp_connection_state_t mq_session_conn(const struct mq_session *s);
void mq_session_adopt(struct mq_session *s, amqp_connection_state_t conn);

/* Describes an RPC reply that was not AMQP_RESPONSE_NORMAL into buf; returns buf. */
char *mq_reply_text(amqp_rpc_reply_t reply, char *buf, size_t len);

/* Closes the connection politely (bounded by the RPC timeout set at connect) and destroys it.
 * Use only on a healthy connection; NULL is a no-op. */
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
