/* Evolution API webhooks: from a webhook body to delivery receipts (see webhook.h). */
#include "webhook.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "request.h"

/* Evolution's statuses (src/utils/renderStatus.ts: 0 ERROR ... 5 PLAYED) to ours; PENDING
 * (still on the phone) and DELETED say nothing about delivery. */
static enum delivery_state map_status(json_t *status)
{
  static const struct {
    const char *name;
    enum delivery_state state;
  } NAMES[] = {{"ERROR", DELIVERY_ERROR},       {"SERVER_ACK", DELIVERY_SERVER_ACK},
               {"DELIVERY_ACK", DELIVERY_DELIVERED}, {"READ", DELIVERY_READ},
               {"PLAYED", DELIVERY_READ}};
  static const enum delivery_state NUMBERS[] = {DELIVERY_ERROR,     DELIVERY_NONE,
                                                DELIVERY_SERVER_ACK, DELIVERY_DELIVERED,
                                                DELIVERY_READ,      DELIVERY_READ};
  if(json_is_integer(status)) {
    json_int_t n = json_integer_value(status);
    return n >= 0 && n < 6 ? NUMBERS[n] : DELIVERY_NONE;
  }
  if(json_is_string(status))
    for(size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++)
      if(!strcasecmp(json_string_value(status), NAMES[i].name))
        return NAMES[i].state;
  return DELIVERY_NONE;
}

/* A message id as Evolution prints them: 1-128 printable ASCII characters, no spaces. */
static int copy_key(json_t *v, char out[STATUS_KEY_MAX + 1])
{
  const char *s = json_string_value(v);
  size_t n = s ? strlen(s) : 0;
  if(!n || n > STATUS_KEY_MAX)
    return -1;
  for(size_t i = 0; i < n; i++)
    if(s[i] <= ' ' || s[i] > '~')
      return -1;
  memcpy(out, s, n + 1);
  return 0;
}

/* The event name in either spelling: "messages.update" (body) or "MESSAGES_UPDATE". */
static int event_is(const char *event, const char *dotted)
{
  size_t n = strlen(dotted);
  if(strlen(event) != n)
    return 0;
  for(size_t i = 0; i < n; i++) {
    char a = event[i] == '_' ? '.' : event[i];
    if((a | 0x20) != (dotted[i] | 0x20))
      return 0;
  }
  return 1;
}

static int add_update(json_t *data, const char *instance, int64_t now_ms,
                      struct webhook_receipt *r)
{
  json_t *from_me = json_object_get(data, "fromMe"), *key = json_object_get(data, "keyId");
  json_t *when = json_object_get(data, "datetime");
  if(!json_is_object(data) || json_is_false(from_me))
    return 0; /* an update of a message someone sent us */
  if(!key)
    key = json_object_get(data, "id"); /* v1 */
  if(!key)
    key = json_object_get(json_object_get(data, "key"), "id");
  if(copy_key(key, r->key))
    return 0;
  r->state = map_status(json_object_get(data, "status"));
  if(r->state == DELIVERY_NONE)
    return 0;
  /* v1's datetime is Unix ms; a value far from now is someone else's clock, not a time. */
  r->at_ms = now_ms;
  if(json_is_integer(when) && json_integer_value(when) > now_ms - 7 * 86400000LL &&
     json_integer_value(when) < now_ms + 86400000LL)
    r->at_ms = json_integer_value(when);
  snprintf(r->instance, sizeof r->instance, "%s", instance);
  return 1;
}

int webhook_parse(const char *body, size_t len, int64_t now_ms, struct webhook_receipt *out,
                  size_t max, char *err, size_t errlen)
{
  json_error_t je;
  json_t *root, *data;
  const char *event, *instance;
  size_t n = 0;
  if(request_too_deep(body, len)) {
    snprintf(err, errlen, "the JSON nests too deeply");
    return -1;
  }
  root = json_loadb(body, len, 0, &je);
  if(!root) {
    snprintf(err, errlen, "malformed JSON at line %d, column %d: %s", je.line, je.column,
             je.text);
    return -1;
  }
  event = json_string_value(json_object_get(root, "event"));
  if(!event) {
    snprintf(err, errlen, "not an Evolution API webhook: no \"event\"");
    json_decref(root);
    return -1;
  }
  instance = json_string_value(json_object_get(root, "instance"));
  if(!instance || job_check_instance(instance) != JOB_FIELD_OK)
    instance = "";
  data = json_object_get(root, "data");
  if(event_is(event, "messages.update")) {
    if(json_is_array(data)) {
      size_t i;
      json_t *item;
      json_array_foreach(data, i, item) {
        if(n == max)
          break;
        n += (size_t)add_update(item, instance, now_ms, &out[n]);
      }
    }
    else if(max)
      n += (size_t)add_update(data, instance, now_ms, &out[n]);
  }
  else if(event_is(event, "send.message") && max) {
    /* data is sendText's success body: Evolution accepted our message. */
    json_t *key = json_object_get(data, "key");
    if(json_is_object(key) && !json_is_false(json_object_get(key, "fromMe")) &&
       !copy_key(json_object_get(key, "id"), out[0].key)) {
      out[0].state = DELIVERY_SENT;
      out[0].at_ms = now_ms;
      snprintf(out[0].instance, sizeof out[0].instance, "%s", instance);
      n = 1;
    }
  }
  json_decref(root);
  return (int)n;
}
