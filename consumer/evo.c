/* Evolution API client: sends texts through sendText with libcurl's multi interface, so many
 * requests are in flight from one thread, and classifies every answer (research §4.2). */
#include "evo.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Evolution's answers are small; a larger body is cut (the classifier only needs the start). */
#define RESPONSE_MAX 65536

struct transfer {
  struct transfer *prev, *next;
  CURL *easy;
  struct curl_slist *headers;
  char *body; /* POSTFIELDS are not copied by libcurl: owned here until the transfer ends */
  char *resp;
  size_t resp_len;
  void *owner;
};

struct evo_client {
  const struct cfg *cfg;
  CURLM *multi;
  struct transfer *head;
  size_t in_flight;
  evo_done_fn done;
  void *ctx;
  char apikey_header[512];
};

/* ---- classification ------------------------------------------------------------------------ */

/* 400 answers whose message names a passing fault of the WhatsApp session: not sent, retry. */
static const char *const TRANSIENT_400_MARKERS[] = {
  "Connection Closed", "Timed Out", "rate-overlimit", "No sessions", "SessionError",
  "Stream Errored",    "WebSocket",
};

static void set(struct evo_outcome *o, enum evo_class cls, const char *code, const char *msg)
{
  o->cls = cls;
  snprintf(o->code, sizeof o->code, "%s", code);
  snprintf(o->message, sizeof o->message, "%s", msg);
}

/* Evolution's error envelope is {"status", "error", "response": {"message": X}} where X is a
 * string, an array of strings, an array of one array (schema errors) or an array of one
 * object (not on WhatsApp). Returns X (borrowed from root) or NULL. */
static json_t *error_payload(json_t *root)
{
  json_t *resp = json_object_get(root, "response");
  return resp ? json_object_get(resp, "message") : NULL;
}

/* A short text of the payload for humans: the first string found. */
static const char *payload_text(json_t *payload)
{
  if(json_is_string(payload))
    return json_string_value(payload);
  if(json_is_array(payload) && json_array_size(payload)) {
    json_t *first = json_array_get(payload, 0);
    if(json_is_string(first))
      return json_string_value(first);
    if(json_is_array(first) && json_is_string(json_array_get(first, 0)))
      return json_string_value(json_array_get(first, 0));
  }
  return NULL;
}

static void classify_400(json_t *root, struct evo_outcome *o)
{
  json_t *payload = root ? error_payload(root) : NULL;
  json_t *first = json_is_array(payload) ? json_array_get(payload, 0) : NULL;
  const char *text = payload_text(payload);
  if(json_is_object(first)) {
    json_t *exists = json_object_get(first, "exists");
    if(json_is_false(exists)) {
      set(o, EVO_PERMANENT, "number_not_on_whatsapp", "the number is not on WhatsApp");
      return;
    }
  }
  if(json_is_array(first)) {
    set(o, EVO_PERMANENT, "evolution_bad_request", text ? text : "request refused by schema");
    return;
  }
  if(text) {
    if(strstr(text, "Prisma")) {
      /* The database write after the send failed: the message went out (research §4.2). */
      set(o, EVO_ALREADY_SENT, "sent_unconfirmed",
          "Evolution API sent the message but failed to record it; not resending");
      return;
    }
    for(size_t i = 0; i < sizeof TRANSIENT_400_MARKERS / sizeof TRANSIENT_400_MARKERS[0]; i++)
      if(strstr(text, TRANSIENT_400_MARKERS[i])) {
        set(o, EVO_TRANSIENT, "evolution_session_error", text);
        return;
      }
    set(o, EVO_PERMANENT, strstr(text, "Text is required") ? "evolution_text_required"
                                                           : "evolution_bad_request",
        text);
    return;
  }
  set(o, EVO_PERMANENT, "evolution_bad_request", "Evolution API answered 400");
}

void evo_classify(enum evo_transport net, long status, const char *body, size_t len,
                  struct evo_outcome *o)
{
  json_t *root = NULL;
  char msg[128];
  memset(o, 0, sizeof *o);
  o->http_status = status;
  switch(net) {
  case EVO_NET_OK: break;
  case EVO_NET_TIMEOUT:
    set(o, EVO_TRANSIENT, "evolution_timeout", "Evolution API did not answer in time");
    return;
  case EVO_NET_CONNECT:
    set(o, EVO_TRANSIENT, "evolution_unreachable", "cannot connect to Evolution API");
    return;
  case EVO_NET_OTHER:
    set(o, EVO_TRANSIENT, "evolution_transport", "the connection to Evolution API failed");
    return;
  }
  if(body && len)
    root = json_loadb(body, len, 0, NULL);
  if(status >= 200 && status < 300) {
    json_t *key = root ? json_object_get(root, "key") : NULL;
    json_t *id = key ? json_object_get(key, "id") : NULL;
    if(json_is_string(id) && json_string_length(id) > 0 && json_string_length(id) <= 100) {
      set(o, EVO_SUCCESS, "sent", "accepted by Evolution API");
      snprintf(o->key_id, sizeof o->key_id, "%s", json_string_value(id));
    }
    else
      /* The Meta integration answers 201 with Meta's error object and no key.id. */
      set(o, EVO_PERMANENT, "evolution_no_message_id",
          "Evolution API answered success without a message id");
  }
  else if(status == 400)
    classify_400(root, o);
  else if(status == 401 || status == 403) {
    o->config_fault = 1;
    set(o, EVO_TRANSIENT, "evolution_unauthorized",
        "Evolution API refused the API key (check evolution.api_key)");
  }
  else if(status == 404) {
    const char *text = root ? payload_text(error_payload(root)) : NULL;
    set(o, EVO_PERMANENT, "evolution_not_found",
        text ? text : "Evolution API does not know this instance or route");
  }
  else if(status == 408 || status == 429) {
    snprintf(msg, sizeof msg, "Evolution API answered %ld", status);
    set(o, EVO_TRANSIENT, status == 408 ? "evolution_http_408" : "evolution_rate_limited", msg);
  }
  else if(status == 503 && root && json_is_string(json_object_get(root, "code")) &&
          !strcmp(json_string_value(json_object_get(root, "code")), "LICENSE_REQUIRED")) {
    o->config_fault = 1;
    set(o, EVO_PERMANENT, "evolution_license_required",
        "Evolution API is not activated (LICENSE_REQUIRED)");
  }
  else if(status >= 500 && status < 600) {
    const char *text = root ? payload_text(error_payload(root)) : NULL;
    char code[32];
    snprintf(code, sizeof code, "evolution_http_%ld", status);
    snprintf(msg, sizeof msg, "Evolution API answered %ld%s%s", status, text ? ": " : "",
             text ? text : "");
    set(o, EVO_TRANSIENT, code, msg);
  }
  else {
    char code[32];
    snprintf(code, sizeof code, "evolution_http_%ld", status);
    snprintf(msg, sizeof msg, "Evolution API answered %ld", status);
    set(o, EVO_PERMANENT, code, msg);
  }
  json_decref(root);
}

char *evo_request_body(const struct job *job, enum cfg_api_version version)
{
  char digits[JOB_PHONE_LEN];
  json_t *o;
  char *out;
  job_phone_digits(job->phone, digits);
  if(version == CFG_EVO_V1)
    o = json_pack("{s:s, s:{s:s}}", "number", digits, "textMessage", "text", job->message);
  else
    o = json_pack("{s:s, s:s}", "number", digits, "text", job->message);
  if(!o)
    return NULL;
  out = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return out;
}

/* ---- transfers ----------------------------------------------------------------------------- */

static size_t on_data(char *data, size_t size, size_t nmemb, void *arg)
{
  struct transfer *t = arg;
  size_t n = size * nmemb, room = RESPONSE_MAX - t->resp_len;
  if(!t->resp) {
    t->resp = malloc(RESPONSE_MAX + 1);
    if(!t->resp)
      return 0;
  }
  if(n > room)
    n = room;
  memcpy(t->resp + t->resp_len, data, n);
  t->resp_len += n;
  return size * nmemb;
}

struct evo_client *evo_client_new(const struct cfg *cfg, evo_done_fn done, void *ctx)
{
  struct evo_client *c = calloc(1, sizeof *c);
  if(!c)
    return NULL;
  c->cfg = cfg;
  c->done = done;
  c->ctx = ctx;
  c->multi = curl_multi_init();
  if(!c->multi) {
    free(c);
    return NULL;
  }
  /* In-flight requests are bounded by the AMQP prefetch, not by curl queueing (a queued
   * transfer's timeout would run while it waits). */
  curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)cfg->consumer.prefetch + 4);
  snprintf(c->apikey_header, sizeof c->apikey_header, "apikey: %s", cfg->evolution.api_key);
  return c;
}

static void transfer_free(struct evo_client *c, struct transfer *t)
{
  if(t->prev)
    t->prev->next = t->next;
  else
    c->head = t->next;
  if(t->next)
    t->next->prev = t->prev;
  curl_multi_remove_handle(c->multi, t->easy);
  curl_easy_cleanup(t->easy);
  curl_slist_free_all(t->headers);
  free(t->body);
  free(t->resp);
  free(t);
  c->in_flight--;
}

void evo_abort_all(struct evo_client *c, void (*abort_fn)(void *owner, void *ctx), void *ctx)
{
  while(c->head) {
    void *owner = c->head->owner;
    transfer_free(c, c->head);
    if(abort_fn)
      abort_fn(owner, ctx);
  }
}

void evo_client_free(struct evo_client *c)
{
  if(!c)
    return;
  evo_abort_all(c, NULL, NULL);
  curl_multi_cleanup(c->multi);
  free(c);
}

int evo_send(struct evo_client *c, const struct job *job, void *owner)
{
  struct transfer *t = calloc(1, sizeof *t);
  char url[1024];
  struct curl_slist *h;
  if(!t)
    return -1;
  t->owner = owner;
  t->easy = curl_easy_init();
  t->body = evo_request_body(job, c->cfg->evolution.api_version);
  /* The instance name passed job_check_instance, so it is safe in a URL path as is. */
  snprintf(url, sizeof url, "%s/message/sendText/%s", c->cfg->evolution.url, job->instance_name);
  h = curl_slist_append(NULL, "Content-Type: application/json");
  if(h)
    t->headers = h;
  /* Without this curl may wait for a 100 Continue that never comes. */
  if(h && (h = curl_slist_append(t->headers, "Expect:")))
    t->headers = h;
  if(h && c->cfg->evolution.api_key[0] && (h = curl_slist_append(t->headers, c->apikey_header)))
    t->headers = h;
  if(!t->easy || !t->body || !h) {
    curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    free(t->body);
    free(t);
    return -1;
  }
  curl_easy_setopt(t->easy, CURLOPT_URL, url);
  curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
  curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(t->body));
  curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
  curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long)c->cfg->evolution.timeout_ms);
  curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)c->cfg->evolution.connect_timeout_ms);
  curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
  curl_easy_setopt(t->easy, CURLOPT_USERAGENT, "msg-consumer/" MSG_VERSION);
  /* Redirects would carry the apikey header elsewhere. */
  curl_easy_setopt(t->easy, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(t->easy, CURLOPT_MAXAGE_CONN, 60L);
  if(curl_multi_add_handle(c->multi, t->easy) != CURLM_OK) {
    curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    free(t->body);
    free(t);
    return -1;
  }
  t->next = c->head;
  if(c->head)
    c->head->prev = t;
  c->head = t;
  c->in_flight++;
  return 0;
}

static enum evo_transport transport_of(CURLcode rc)
{
  switch(rc) {
  case CURLE_OK: return EVO_NET_OK;
  case CURLE_OPERATION_TIMEDOUT: return EVO_NET_TIMEOUT;
  case CURLE_COULDNT_CONNECT:
  case CURLE_COULDNT_RESOLVE_HOST: return EVO_NET_CONNECT;
  default: return EVO_NET_OTHER;
  }
}

void evo_run(struct evo_client *c, const int *extra_fds, int n_extra, int timeout_ms)
{
  struct curl_waitfd waits[4];
  int running, left;
  CURLMsg *m;
  if(n_extra > 4)
    n_extra = 4;
  for(int i = 0; i < n_extra; i++) {
    waits[i].fd = extra_fds[i];
    waits[i].events = CURL_WAIT_POLLIN;
    waits[i].revents = 0;
  }
  curl_multi_poll(c->multi, waits, (unsigned)n_extra, timeout_ms, NULL);
  curl_multi_perform(c->multi, &running);
  while((m = curl_multi_info_read(c->multi, &left))) {
    struct transfer *t = NULL;
    struct evo_outcome out;
    CURLcode rc;
    long status = 0;
    void *owner;
    if(m->msg != CURLMSG_DONE)
      continue;
    /* The message dies with the handle: read everything first. */
    rc = m->data.result;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
    curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
    evo_classify(rc == CURLE_OK ? EVO_NET_OK : transport_of(rc), status, t->resp, t->resp_len,
                 &out);
    if(rc != CURLE_OK)
      snprintf(out.message + strlen(out.message), sizeof out.message - strlen(out.message),
               ": %s", curl_easy_strerror(rc));
    owner = t->owner;
    transfer_free(c, t);
    c->done(owner, &out, c->ctx);
  }
}

size_t evo_in_flight(const struct evo_client *c)
{
  return c->in_flight;
}
