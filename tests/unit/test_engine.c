/* Unit tests for the AMQP engine (common/mq.h) without a broker: the rabbitmq-c calls it makes
 * are replaced at link time by the scripted calls below (definitions in the executable win over
 * the shared library), so a test says which frames the "broker" sends and which publish fails. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "mq_internal.h"

/* ---- the scripted broker ----------------------------------------------------------------- */

#define MAX_FRAMES 64
#define MAX_OWNERS 64

static struct {
  amqp_frame_t frames[MAX_FRAMES];
  amqp_basic_ack_t acks[MAX_FRAMES];
  amqp_basic_nack_t nacks[MAX_FRAMES];
  size_t n_frames, next_frame;
  int fail_next_publish;          /* the next amqp_basic_publish returns a socket error */
  amqp_channel_t last_publish_ch; /* channel of the last publish */
  unsigned publishes;
  amqp_channel_t opened[16];      /* channels opened, in order */
  size_t n_opened;
  amqp_channel_t closed_sent;     /* channel.close sent for it (0: none) */
  char last_message_id[256];
} broker;

static int dummy_connection;
#define CONN ((amqp_connection_state_t)(void *)&dummy_connection)

/* A session holding the scripted connection. */
static struct cfg test_cfg;
static struct mq_session *scripted_session(void)
{
  struct mq_session *s;
  test_cfg.broker.n_urls = 1;
  test_cfg.topology.status_stream = "messages.status";
  s = mq_session_new(&test_cfg, "test");
  if(s)
    mq_session_adopt(s, CONN);
  return s;
}

static void scripted_session_free(struct mq_session *s)
{
  if(s)
    mq_session_adopt(s, NULL); /* the scripted connection is not rabbitmq-c's to destroy */
  mq_session_free(s);
}

static struct mq_session *S; /* the session of the running test */

static void broker_reset(void)
{
  memset(&broker, 0, sizeof broker);
}

static void push_confirm(amqp_channel_t ch, int ack, uint64_t tag, int multiple)
{
  size_t i = broker.n_frames++;
  amqp_frame_t *f = &broker.frames[i];
  memset(f, 0, sizeof *f);
  f->frame_type = AMQP_FRAME_METHOD;
  f->channel = ch;
  if(ack) {
    broker.acks[i].delivery_tag = tag;
    broker.acks[i].multiple = (amqp_boolean_t)multiple;
    f->payload.method.id = AMQP_BASIC_ACK_METHOD;
    f->payload.method.decoded = &broker.acks[i];
  }
  else {
    broker.nacks[i].delivery_tag = tag;
    broker.nacks[i].multiple = (amqp_boolean_t)multiple;
    f->payload.method.id = AMQP_BASIC_NACK_METHOD;
    f->payload.method.decoded = &broker.nacks[i];
  }
}

static void push_method(amqp_channel_t ch, amqp_method_number_t id)
{
  amqp_frame_t *f = &broker.frames[broker.n_frames++];
  memset(f, 0, sizeof *f);
  f->frame_type = AMQP_FRAME_METHOD;
  f->channel = ch;
  f->payload.method.id = id;
}

int amqp_basic_publish(amqp_connection_state_t state, amqp_channel_t channel,
                       amqp_bytes_t exchange, amqp_bytes_t routing_key, amqp_boolean_t mandatory,
                       amqp_boolean_t immediate, struct amqp_basic_properties_t_ const *properties,
                       amqp_bytes_t body)
{
  (void)state, (void)exchange, (void)routing_key, (void)mandatory, (void)immediate, (void)body;
  if(broker.fail_next_publish) {
    broker.fail_next_publish = 0;
    return AMQP_STATUS_SOCKET_ERROR;
  }
  broker.publishes++;
  broker.last_publish_ch = channel;
  if(properties && (properties->_flags & AMQP_BASIC_MESSAGE_ID_FLAG))
    snprintf(broker.last_message_id, sizeof broker.last_message_id, "%.*s",
             (int)properties->message_id.len, (const char *)properties->message_id.bytes);
  return AMQP_STATUS_OK;
}

amqp_channel_open_ok_t *amqp_channel_open(amqp_connection_state_t state, amqp_channel_t channel)
{
  static amqp_channel_open_ok_t ok;
  (void)state;
  broker.opened[broker.n_opened++ % 16] = channel;
  return &ok;
}

amqp_confirm_select_ok_t *amqp_confirm_select(amqp_connection_state_t state,
                                              amqp_channel_t channel)
{
  static amqp_confirm_select_ok_t ok;
  (void)state, (void)channel;
  return &ok;
}

amqp_basic_qos_ok_t *amqp_basic_qos(amqp_connection_state_t state, amqp_channel_t channel,
                                    uint32_t prefetch_size, uint16_t prefetch_count,
                                    amqp_boolean_t global)
{
  static amqp_basic_qos_ok_t ok;
  (void)state, (void)channel, (void)prefetch_size, (void)prefetch_count, (void)global;
  return &ok;
}

amqp_basic_consume_ok_t *amqp_basic_consume(amqp_connection_state_t state,
                                            amqp_channel_t channel, amqp_bytes_t queue,
                                            amqp_bytes_t consumer_tag, amqp_boolean_t no_local,
                                            amqp_boolean_t no_ack, amqp_boolean_t exclusive,
                                            amqp_table_t arguments)
{
  static amqp_basic_consume_ok_t ok;
  (void)state, (void)channel, (void)queue, (void)consumer_tag, (void)no_local, (void)no_ack;
  (void)exclusive, (void)arguments;
  return &ok;
}

int amqp_basic_ack(amqp_connection_state_t state, amqp_channel_t channel, uint64_t delivery_tag,
                   amqp_boolean_t multiple)
{
  (void)state, (void)channel, (void)delivery_tag, (void)multiple;
  return AMQP_STATUS_OK;
}

int amqp_send_method(amqp_connection_state_t state, amqp_channel_t channel,
                     amqp_method_number_t id, void *decoded)
{
  (void)state, (void)decoded;
  if(id == AMQP_CHANNEL_CLOSE_METHOD)
    broker.closed_sent = channel;
  return AMQP_STATUS_OK;
}

int amqp_simple_wait_frame_noblock(amqp_connection_state_t state, amqp_frame_t *decoded_frame,
                                   const struct timeval *tv)
{
  (void)state, (void)tv;
  if(broker.next_frame == broker.n_frames)
    return AMQP_STATUS_TIMEOUT;
  *decoded_frame = broker.frames[broker.next_frame++];
  return AMQP_STATUS_OK;
}

void amqp_maybe_release_buffers(amqp_connection_state_t state)
{
  (void)state;
}

/* ---- what the publisher settled ---------------------------------------------------------- */

static struct {
  int outcome[MAX_OWNERS + 1]; /* by owner number; 99 = not settled */
  int times[MAX_OWNERS + 1];   /* settlements per owner: must never exceed 1 */
} settled;

static int owners[MAX_OWNERS + 1]; /* owner i is &owners[i] */

static void settle(void *owner, int ok, void *ctx)
{
  int i = (int)((int *)owner - owners);
  (void)ctx;
  settled.outcome[i] = ok;
  settled.times[i]++;
}

static void settled_reset(void)
{
  for(int i = 0; i <= MAX_OWNERS; i++) {
    settled.outcome[i] = 99;
    settled.times[i] = 0;
  }
}

static int publish(struct mq_publisher *p, int owner)
{
  struct mq_props props;
  memset(&props, 0, sizeof props);
  return mq_publisher_publish(p, S, "x", "send", 1, &props, "{}", 2, &owners[owner]);
}

static int pump(struct mq_publisher *p, char *why, size_t len)
{
  struct mq_handlers h;
  memset(&h, 0, sizeof h);
  h.publishers[0] = p;
  return mq_pump(S, &h, why, len);
}

/* A publish failing inside a window of confirms in flight: every owner still unconfirmed is
 * settled as lost, exactly once, and no later confirm settles a wrong owner. */
static void test_failed_publish_settles_the_window(void)
{
  char err[256], why[256];
  struct mq_publisher *p = mq_publisher_new(3, 4, settle, NULL);
  broker_reset();
  settled_reset();
  S = scripted_session();
  CHECK(p != NULL && S != NULL);
  CHECK_INT(mq_publisher_start(p, S, err, sizeof err), 0);
  for(int i = 1; i <= 5; i++)
    CHECK_INT(publish(p, i), MQ_PUBLISH_OK);
  push_confirm(3, 1, 2, 1); /* owners 1 and 2 confirmed */
  CHECK_INT(pump(p, why, sizeof why), 0);
  CHECK_INT(settled.outcome[1], CONFIRM_ACKED);
  CHECK_INT(settled.outcome[2], CONFIRM_ACKED);
  CHECK_INT(settled.times[3], 0);

  broker.fail_next_publish = 1;
  CHECK_INT(publish(p, 6), MQ_PUBLISH_FAILED);
  CHECK(mq_publisher_broken(p));
  /* Nothing more goes out on a broken publisher, and the reader says the connection must go,
   * before it reads a confirm that would now settle the wrong owner. */
  CHECK_INT(publish(p, 7), MQ_PUBLISH_UNTRACKED);
  push_confirm(3, 1, 4, 1);
  CHECK_INT(pump(p, why, sizeof why), -1);
  CHECK_STR(why, "a publish failed");
  CHECK_INT(settled.times[3], 0);

  mq_publisher_lost(p); /* the owner dropped the connection */
  for(int i = 3; i <= 6; i++) {
    CHECK_INT(settled.outcome[i], CONFIRM_LOST);
    CHECK_INT(settled.times[i], 1);
  }
  CHECK_INT(settled.times[7], 0);
  CHECK_INT(mq_publisher_outstanding(p), 0);

  /* A new connection numbers from 1 again: its confirms settle its own publishes only. */
  broker.next_frame = broker.n_frames = 0;
  CHECK_INT(mq_publisher_start(p, S, err, sizeof err), 0);
  CHECK_INT(publish(p, 8), MQ_PUBLISH_OK);
  CHECK_INT(publish(p, 9), MQ_PUBLISH_OK);
  push_confirm(3, 1, 1, 0);
  push_confirm(3, 1, 5, 1); /* a tag never published on this connection: ignored */
  CHECK_INT(pump(p, why, sizeof why), 0);
  CHECK_INT(settled.outcome[8], CONFIRM_ACKED);
  CHECK_INT(settled.times[9], 0);
  for(int i = 1; i <= 7; i++)
    CHECK(settled.times[i] <= 1);
  push_confirm(3, 0, 2, 0);
  CHECK_INT(pump(p, why, sizeof why), 0);
  CHECK_INT(settled.outcome[9], CONFIRM_REFUSED);
out:
  mq_publisher_free(p);
  scripted_session_free(S);
}

/* A channel the broker keeps nacking is replaced by a fresh one: what was in flight on it is
 * lost, its late frames are ignored, and its number is reused only after its close-ok. */
static void test_nacking_channel_is_replaced(void)
{
  char err[256], why[256];
  struct mq_publisher *p = mq_publisher_new(3, 4, settle, NULL);
  broker_reset();
  settled_reset();
  S = scripted_session();
  CHECK(p != NULL && S != NULL);
  CHECK_INT(mq_publisher_start(p, S, err, sizeof err), 0);
  for(int i = 1; i <= 4; i++)
    CHECK_INT(publish(p, i), MQ_PUBLISH_OK);
  CHECK_INT(broker.last_publish_ch, 3);
  push_confirm(3, 0, 1, 0);
  push_confirm(3, 0, 2, 0);
  CHECK_INT(pump(p, why, sizeof why), 0);
  CHECK_INT(mq_publisher_channel(p), 3); /* two nacks are weather, not a stuck channel */
  push_confirm(3, 0, 3, 0);
  push_confirm(3, 1, 4, 0); /* late, on the channel being replaced: ignored */
  push_confirm(3, 1, 1, 0); /* ditto */
  CHECK_INT(pump(p, why, sizeof why), 0);
  CHECK_INT(mq_publisher_channel(p), 4);
  CHECK_INT(broker.closed_sent, 3);
  CHECK_INT(mq_publisher_reopens(p), 1);
  for(int i = 1; i <= 3; i++)
    CHECK_INT(settled.outcome[i], CONFIRM_REFUSED);
  CHECK_INT(settled.outcome[4], CONFIRM_LOST);
  CHECK_INT(settled.times[4], 1);

  CHECK_INT(publish(p, 5), MQ_PUBLISH_OK);
  CHECK_INT(broker.last_publish_ch, 4);
  push_confirm(4, 1, 1, 0);
  CHECK_INT(pump(p, why, sizeof why), 0);
  CHECK_INT(settled.outcome[5], CONFIRM_ACKED);

  /* Channel 3 has not answered its close yet: a second stuck channel drops the connection. */
  for(int i = 6; i <= 8; i++)
    CHECK_INT(publish(p, i), MQ_PUBLISH_OK);
  push_confirm(4, 0, 4, 1);
  CHECK_INT(pump(p, why, sizeof why), -1);
  CHECK_STR(why, "the broker keeps nacking publishes");

  /* A new connection starts on the first number again. Once the replaced channel's close-ok
   * came, its number is free for the next replacement. */
  mq_publisher_lost(p);
  CHECK_INT(mq_publisher_start(p, S, err, sizeof err), 0);
  CHECK_INT(mq_publisher_channel(p), 3);
  for(int i = 10; i <= 12; i++)
    CHECK_INT(publish(p, i), MQ_PUBLISH_OK);
  push_confirm(3, 0, 3, 1); /* one frame, three publishes refused */
  CHECK_INT(pump(p, why, sizeof why), 0);
  CHECK_INT(mq_publisher_channel(p), 4);
  push_method(3, AMQP_CHANNEL_CLOSE_OK_METHOD);
  CHECK_INT(publish(p, 13), MQ_PUBLISH_OK);
  CHECK_INT(publish(p, 14), MQ_PUBLISH_OK);
  CHECK_INT(publish(p, 15), MQ_PUBLISH_OK);
  push_confirm(4, 0, 3, 1);
  CHECK_INT(pump(p, why, sizeof why), 0);
  CHECK_INT(mq_publisher_channel(p), 3);
  CHECK_INT(broker.closed_sent, 4);
  CHECK_INT(settled.outcome[15], CONFIRM_REFUSED);
out:
  mq_publisher_free(p);
  scripted_session_free(S);
}

/* A stream follower is caught up when it reads its own marker, whatever else it reads first. */
static void test_stream_catches_up_on_its_marker(void)
{
  char err[256], own[256];
  struct mq_stream *st;
  struct mq_message msg;
  amqp_message_t *mp = &msg.msg;
  amqp_table_entry_t off;
  broker_reset();
  S = scripted_session();
  st = mq_stream_new(&test_cfg, "test", 2, 5, 6, 100);
  CHECK(st != NULL && S != NULL);
  CHECK_INT(mq_stream_start(st, S, err, sizeof err), 0);
  CHECK(!mq_stream_caught_up(st));
  CHECK(!strncmp(broker.last_message_id, "marker:test@", 12));
  snprintf(own, sizeof own, "%s", broker.last_message_id);

  memset(&msg, 0, sizeof msg);
#define m (*mp)
  off = mq_entry_i64("x-stream-offset", 41);
  m.properties._flags = AMQP_BASIC_HEADERS_FLAG;
  m.properties.headers.num_entries = 1;
  m.properties.headers.entries = &off;
  CHECK_INT(mq_stream_delivery(st, S, 1, &msg), MQ_STREAM_EVENT);
  CHECK_INT(mq_stream_offset(st), 41);

  /* Another reader's marker (even one stamped in the future) proves nothing. */
  m.properties._flags |= AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
  m.properties.type = amqp_cstring_bytes("message.marker");
  m.properties.message_id = amqp_cstring_bytes("marker:other@host:1:1:ff");
  m.properties.timestamp = UINT64_C(4102444800);
  off = mq_entry_i64("x-stream-offset", 42);
  CHECK_INT(mq_stream_delivery(st, S, 2, &msg), MQ_STREAM_SKIP);
  CHECK(!mq_stream_caught_up(st));

  m.properties.message_id = amqp_cstring_bytes(own);
  off = mq_entry_i64("x-stream-offset", 43);
  CHECK_INT(mq_stream_delivery(st, S, 3, &msg), MQ_STREAM_CAUGHT_UP);
  CHECK(mq_stream_caught_up(st));
  CHECK_INT(mq_stream_offset(st), 43);

  /* A lost connection forgets "caught up" but keeps the offset to resume after. */
  mq_stream_lost(st);
  CHECK(!mq_stream_caught_up(st));
  CHECK_INT(mq_stream_offset(st), 43);
  CHECK_INT(mq_stream_start(st, S, err, sizeof err), 0);
  CHECK(strcmp(own, broker.last_message_id) != 0); /* a new marker per subscription */
#undef m
out:
  mq_stream_free(st);
  scripted_session_free(S);
}

int main(void)
{
  static const struct check_test tests[] = {
    {"failed_publish_settles_the_window", test_failed_publish_settles_the_window},
    {"nacking_channel_is_replaced", test_nacking_channel_is_replaced},
    {"stream_catches_up_on_its_marker", test_stream_catches_up_on_its_marker},
  };
  return CHECK_RUN(tests);
}
