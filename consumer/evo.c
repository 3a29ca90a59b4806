/* Evolution API client: sends texts through sendText with libcurl's multi interface, so many
 * requests are in flight from one thread, and classifies every answer (research §4.2). */
#include "evo.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "trace.h"
#include "util.h"

/* sendText answers are small; a larger body is cut (the classifier only needs the start). A
 * findMessages page of FIND_PER_PAGE records, each with its whole message, can be larger. */
#define RESPONSE_MAX 65536
#define FIND_RESPONSE_MAX (4 * 1024 * 1024)
/* findMessages pages of this many records, and at most this many pages per lookup (an instance
 * that sent more than that to one number in the window is asked no further: not found). */
#define FIND_PER_PAGE 50
#define FIND_MAX_PAGES 20

struct transfer {
  struct transfer *prev, *next;
  enum evo_request kind;
  CURL *easy;
  struct curl_slist *headers;
  int base_headers; /* the content type, Expect and apikey are in headers */
  char *body; /* POSTFIELDS are not copied by libcurl: owned here until the transfer ends */
  char *resp;
  size_t resp_len, resp_max;
  void *owner;
  /* EVO_REQ_FIND: what is looked for (copied: the owner may be freed while the lookup runs,
   * when the broker connection goes), and where the pages are */
  char *text, *instance;
  char phone[JOB_PHONE_LEN];
  int64_t from_ms, to_ms;
  int page;
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

/* 400 answers whose message names a passing fault (research §4.2): not sent, retry. The first
 * ones say the instance's WhatsApp session is down, a fault of every message of that instance
 * (held off); "Timed Out" from the send stage may also mean it went out (in doubt). The last
 * ones are this message's own (a group's crypto session, WhatsApp throttling): retried. */
static const struct {
  const char *marker;
  enum evo_scope scope;
  int ambiguous;
} TRANSIENT_400[] = {
  {"Connection Closed", EVO_SCOPE_INSTANCE, 0}, {"Stream Errored", EVO_SCOPE_INSTANCE, 0},
  {"WebSocket", EVO_SCOPE_INSTANCE, 0},         {"Timed Out", EVO_SCOPE_INSTANCE, 1},
  {"rate-overlimit", EVO_SCOPE_MESSAGE, 0},     {"No sessions", EVO_SCOPE_MESSAGE, 0},
  {"SessionError", EVO_SCOPE_MESSAGE, 0},
};

/* 500 answers with a bare message from the number check, before any send: the instance's
 * session is closed or it is not loaded (research §4.2). */
static const char *const INSTANCE_500_MARKERS[] = {"Connection Closed", "Timed Out",
                                                   "reading 'textMessage'"};

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
    for(size_t i = 0; i < sizeof TRANSIENT_400 / sizeof TRANSIENT_400[0]; i++)
      if(strstr(text, TRANSIENT_400[i].marker)) {
        set(o, EVO_TRANSIENT, "evolution_session_error", text);
        o->scope = TRANSIENT_400[i].scope;
        o->ambiguous = TRANSIENT_400[i].ambiguous;
        return;
      }
    set(o, EVO_PERMANENT, strstr(text, "Text is required") ? "evolution_text_required"
                                                           : "evolution_bad_request",
        text);
    return;
  }
  set(o, EVO_PERMANENT, "evolution_bad_request", "Evolution API answered 400");
}

/* A 500 whose bare message says the instance, not the server, is at fault. */
static int instance_500(json_t *root)
{
  const char *text = root ? payload_text(error_payload(root)) : NULL;
  for(size_t i = 0; text && i < sizeof INSTANCE_500_MARKERS / sizeof INSTANCE_500_MARKERS[0]; i++)
    if(strstr(text, INSTANCE_500_MARKERS[i]))
      return 1;
  return 0;
}

void evo_classify(enum evo_transport net, long status, const char *body, size_t len, int sent,
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
    o->scope = EVO_SCOPE_SERVER;
    o->ambiguous = sent; /* it may be sending it right now */
    return;
  case EVO_NET_CONNECT:
    set(o, EVO_TRANSIENT, "evolution_unreachable", "cannot connect to Evolution API");
    o->scope = EVO_SCOPE_SERVER;
    /* libcurl retries a request whose reused connection died, on a new one: when that connect
     * is refused, the request may have reached Evolution on the old one. */
    o->ambiguous = sent;
    return;
  case EVO_NET_OTHER:
    set(o, EVO_TRANSIENT, "evolution_transport", "the connection to Evolution API failed");
    o->scope = EVO_SCOPE_SERVER;
    o->ambiguous = sent;
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
    /* Evolution answers 500 before its send stage (research §2.4): not sent. A gateway in
     * front answering 502 or 504 may have given up on a request Evolution carried out. */
    o->scope = status == 500 && instance_500(root) ? EVO_SCOPE_INSTANCE : EVO_SCOPE_SERVER;
    o->ambiguous = status == 502 || status == 504;
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

/* ---- findMessages ------------------------------------------------------------------------ */

/* The text of a stored message: a plain one, or one sent with a link preview. */
static const char *record_text(json_t *record)
{
  json_t *m = json_object_get(record, "message");
  json_t *ext = json_object_get(m, "extendedTextMessage");
  if(json_is_string(json_object_get(m, "conversation")))
    return json_string_value(json_object_get(m, "conversation"));
  if(json_is_string(json_object_get(ext, "text")))
    return json_string_value(json_object_get(ext, "text"));
  return NULL;
}

int evo_find_parse(const char *body, size_t len, const char *text, struct evo_outcome *out)
{
  json_t *root = body && len ? json_loadb(body, len, 0, NULL) : NULL;
  json_t *messages = json_object_get(root, "messages");
  json_t *records = json_object_get(messages, "records");
  json_t *pages = json_object_get(messages, "pages");
  json_t *record;
  size_t i;
  int n_pages;
  if(!json_is_array(records)) {
    json_decref(root);
    return -1;
  }
  n_pages = json_is_integer(pages) && json_integer_value(pages) > 1 &&
                    json_integer_value(pages) < 1000000
                ? (int)json_integer_value(pages)
                : 1;
  json_array_foreach(records, i, record) {
    json_t *key = json_object_get(record, "key");
    json_t *id = json_object_get(key, "id");
    const char *t = record_text(record);
    if(json_is_true(json_object_get(key, "fromMe")) && t && !strcmp(t, text) &&
       json_is_string(id) && json_string_length(id) > 0 && json_string_length(id) <= 100) {
      out->found = 1;
      snprintf(out->key_id, sizeof out->key_id, "%s", json_string_value(id));
      break;
    }
  }
  json_decref(root);
  return n_pages;
}

void evo_jid_digits(char *digits)
{
  size_t n = strlen(digits);
  if(n == 13 && (!strncmp(digits, "52", 2) || !strncmp(digits, "54", 2)))
    memmove(digits + 2, digits + 3, n - 2); /* Mexico, Argentina: the 3rd digit goes */
  else if(n == 13 && !strncmp(digits, "55", 2) && digits[5] >= '7' &&
          (digits[2] - '0') * 10 + (digits[3] - '0') >= 31)
    memmove(digits + 4, digits + 5, n - 4); /* Brazil: the mobile 9 goes where WhatsApp has none */
}

char *evo_find_body(const char *phone, int64_t from_ms, int64_t to_ms, int page, int per_page)
{
  char digits[JOB_PHONE_LEN], jid[JOB_PHONE_LEN + 32], from[UTIL_TIME_LEN], to[UTIL_TIME_LEN];
  json_t *o;
  char *out;
  job_phone_digits(phone, digits);
  evo_jid_digits(digits);
  /* Evolution stores the JID and compares it exactly (research §5): ask for that one. */
  snprintf(jid, sizeof jid, "%s@s.whatsapp.net", digits);
  /* Evolution applies the time range only when both ends are given (research §5). */
  o = json_pack("{s:{s:{s:s, s:b}, s:{s:s, s:s}}, s:i, s:i}", "where", "key", "remoteJid", jid,
                "fromMe", 1, "messageTimestamp", "gte", util_format_time(from_ms, from), "lte",
                util_format_time(to_ms, to), "page", page, "offset", per_page);
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
  size_t n = size * nmemb, room = t->resp_max - t->resp_len;
  if(!t->resp) {
    t->resp = malloc(t->resp_max + 1);
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

static void transfer_destroy(struct transfer *t)
{
  curl_easy_cleanup(t->easy);
  curl_slist_free_all(t->headers);
  free(t->body);
  free(t->resp);
  free(t->text);
  free(t->instance);
  free(t);
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
  transfer_destroy(t);
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

/* Adds the request id and a child of the trace context of `job` to t's headers, so Evolution
 * API's own logs (and a proxy in front) can be matched with ours. Returns 0 or -1. */
static int add_trace_headers(struct transfer *t, const struct job *job)
{
  char line[TRACE_PARENT_LEN + TRACE_REQUEST_ID_MAX + 32];
  struct curl_slist *h;
  if(job->request_id) {
    snprintf(line, sizeof line, "X-Request-Id: %s", job->request_id);
    if(!(h = curl_slist_append(t->headers, line)))
      return -1;
    t->headers = h;
  }
  if(job->traceparent) {
    char child[TRACE_PARENT_LEN];
    trace_child(job->traceparent, child);
    snprintf(line, sizeof line, "traceparent: %s", child);
    if(!(h = curl_slist_append(t->headers, line)))
      return -1;
    t->headers = h;
  }
  return 0;
}

/* Sets up t->easy for `path` under evolution.url (POST with t->body when it is set, else GET)
 * and starts it. Returns 0, or -1 (t is then left to the caller). */
static int transfer_start(struct evo_client *c, struct transfer *t, const char *path)
{
  char url[1024];
  struct curl_slist *h;
  snprintf(url, sizeof url, "%s%s", c->cfg->evolution.url, path);
  if(!t->easy && !(t->easy = curl_easy_init()))
    return -1;
  if(!t->base_headers) {
    t->base_headers = 1;
    h = curl_slist_append(t->headers, "Content-Type: application/json");
    if(h)
      t->headers = h;
    /* Without this curl may wait for a 100 Continue that never comes. */
    if(h && (h = curl_slist_append(t->headers, "Expect:")))
      t->headers = h;
    if(h && c->cfg->evolution.api_key[0] &&
       (h = curl_slist_append(t->headers, c->apikey_header)))
      t->headers = h;
    if(!h)
      return -1;
  }
  curl_easy_setopt(t->easy, CURLOPT_URL, url);
  if(t->body) {
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(t->body));
  }
  else
    curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
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
  if(curl_multi_add_handle(c->multi, t->easy) != CURLM_OK)
    return -1;
  return 0;
}

/* Starts t and links it in; on failure frees it. Returns 0 or -1. */
static int transfer_begin(struct evo_client *c, struct transfer *t, const char *path)
{
  if(!t->resp_max)
    t->resp_max = RESPONSE_MAX;
  if(transfer_start(c, t, path)) {
    transfer_destroy(t);
    return -1;
  }
  t->next = c->head;
  if(c->head)
    c->head->prev = t;
  c->head = t;
  c->in_flight++;
  return 0;
}

int evo_send(struct evo_client *c, const struct job *job, void *owner)
{
  struct transfer *t = calloc(1, sizeof *t);
  char path[256];
  if(!t)
    return -1;
  t->kind = EVO_REQ_SEND;
  t->owner = owner;
  if(!(t->body = evo_request_body(job, c->cfg->evolution.api_version)) ||
     add_trace_headers(t, job)) {
    curl_slist_free_all(t->headers);
    free(t->body);
    free(t);
    return -1;
  }
  /* The instance name passed job_check_instance, so it is safe in a URL path as is. */
  snprintf(path, sizeof path, "/message/sendText/%s", job->instance_name);
  return transfer_begin(c, t, path);
}

/* The findMessages path of t's job. */
static void find_path(const struct transfer *t, char *path, size_t len)
{
  snprintf(path, len, "/chat/findMessages/%s", t->instance);
}

int evo_find(struct evo_client *c, const struct job *job, int64_t from_ms, int64_t to_ms,
             void *owner)
{
  struct transfer *t = calloc(1, sizeof *t);
  char path[256];
  if(!t)
    return -1;
  t->kind = EVO_REQ_FIND;
  t->owner = owner;
  t->resp_max = FIND_RESPONSE_MAX;
  t->from_ms = from_ms;
  t->to_ms = to_ms;
  t->page = 1;
  snprintf(t->phone, sizeof t->phone, "%s", job->phone);
  t->text = strdup(job->message);
  t->instance = strdup(job->instance_name);
  if(!t->text || !t->instance ||
     !(t->body = evo_find_body(t->phone, t->from_ms, t->to_ms, t->page, FIND_PER_PAGE))) {
    transfer_destroy(t);
    return -1;
  }
  find_path(t, path, sizeof path);
  return transfer_begin(c, t, path);
}

int evo_connection_state(struct evo_client *c, const char *instance, void *owner)
{
  struct transfer *t = calloc(1, sizeof *t);
  char path[256];
  if(!t)
    return -1;
  t->kind = EVO_REQ_STATE;
  t->owner = owner;
  snprintf(path, sizeof path, "/instance/connectionState/%s", instance);
  return transfer_begin(c, t, path);
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

/* The outcome of a connectionState probe. */
static void state_outcome(const struct transfer *t, CURLcode rc, long status,
                          struct evo_outcome *out)
{
  json_t *root, *state;
  if(rc != CURLE_OK || status != 200) {
    /* Classified like a send: a refused connection or a 5xx holds, any other answer shows the
     * server is there. */
    evo_classify(rc == CURLE_OK ? EVO_NET_OK : transport_of(rc), status, t->resp, t->resp_len, 0,
                 out);
    return;
  }
  memset(out, 0, sizeof *out);
  out->http_status = status;
  out->cls = EVO_SUCCESS;
  root = json_loadb(t->resp ? t->resp : "", t->resp_len, 0, NULL);
  state = json_object_get(json_object_get(root, "instance"), "state");
  if(json_is_string(state))
    snprintf(out->state, sizeof out->state, "%s", json_string_value(state));
  snprintf(out->code, sizeof out->code, "connection_state");
  snprintf(out->message, sizeof out->message, "instance state \"%s\"", out->state);
  json_decref(root);
}

/* The outcome of one findMessages page. Returns 1 when t was restarted for the next page
 * (nothing to report yet), else 0 with *out filled. */
static int find_outcome(struct evo_client *c, struct transfer *t, CURLcode rc, long status,
                        struct evo_outcome *out)
{
  int pages;
  char path[256], *body;
  memset(out, 0, sizeof *out);
  out->http_status = status;
  if(rc != CURLE_OK || status != 200) {
    evo_classify(rc == CURLE_OK ? EVO_NET_OK : transport_of(rc), status, t->resp, t->resp_len, 0,
                 out);
    if(rc == CURLE_OK) {
      /* Evolution answered, but not with records: the server is there, and findMessages
       * cannot tell (evolution.in_doubt decides). Only an unreachable server holds. */
      out->cls = EVO_PERMANENT;
      out->scope = EVO_SCOPE_MESSAGE;
      out->ambiguous = 0;
      out->config_fault = 0;
    }
    return 0;
  }
  pages = evo_find_parse(t->resp, t->resp_len, t->text, out);
  if(pages < 0) {
    out->cls = EVO_PERMANENT;
    snprintf(out->code, sizeof out->code, "evolution_find_unreadable");
    snprintf(out->message, sizeof out->message, "findMessages answered something unreadable");
    return 0;
  }
  out->cls = EVO_SUCCESS;
  snprintf(out->code, sizeof out->code, out->found ? "found" : "not_found");
  if(out->found || t->page >= pages || t->page >= FIND_MAX_PAGES)
    return 0;
  /* The next page, on the same handle. */
  t->page++;
  body = evo_find_body(t->phone, t->from_ms, t->to_ms, t->page, FIND_PER_PAGE);
  if(!body) {
    out->cls = EVO_PERMANENT;
    snprintf(out->code, sizeof out->code, "out_of_memory");
    return 0;
  }
  free(t->body);
  t->body = body;
  t->resp_len = 0;
  curl_multi_remove_handle(c->multi, t->easy);
  find_path(t, path, sizeof path);
  if(transfer_start(c, t, path)) {
    out->cls = EVO_PERMANENT;
    snprintf(out->code, sizeof out->code, "out_of_memory");
    return 0;
  }
  return 1;
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
    long request_bytes = 0;
    void *owner;
    if(m->msg != CURLMSG_DONE)
      continue;
    /* The message dies with the handle: read everything first. */
    rc = m->data.result;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
    curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
    /* Counts every request written, also on a reused connection that died before libcurl
     * retried on a new one (where the upload count starts again). */
    curl_easy_getinfo(m->easy_handle, CURLINFO_REQUEST_SIZE, &request_bytes);
    if(t->kind == EVO_REQ_FIND) {
      if(find_outcome(c, t, rc, status, &out))
        continue;
    }
    else if(t->kind == EVO_REQ_STATE)
      state_outcome(t, rc, status, &out);
    else
      /* Only a request that went out can have been carried out. */
      evo_classify(rc == CURLE_OK ? EVO_NET_OK : transport_of(rc), status, t->resp, t->resp_len,
                   request_bytes > 0, &out);
    out.request = t->kind;
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
