/* Hold-off of Evolution targets: see holdoff.h. */
#include "holdoff.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct holdoff *holdoff_new(void)
{
  struct holdoff *h = calloc(1, sizeof *h);
  if(!h)
    return NULL;
  if(pthread_mutex_init(&h->lock, NULL)) {
    free(h);
    return NULL;
  }
  h->rng = (unsigned long long)util_now_ms() * 6364136223846793005ULL + 1442695040888963407ULL;
  return h;
}

void holdoff_free(struct holdoff *h)
{
  if(!h)
    return;
  for(size_t i = 0; i < h->n_instances; i++)
    free(h->instances[i]);
  free(h->instances);
  pthread_mutex_destroy(&h->lock);
  free(h);
}

struct holdoff_target *holdoff_instance_find(struct holdoff *h, const char *instance)
{
  /* Instances are few (one per WhatsApp number of the service): a scan is enough. */
  for(size_t i = 0; i < h->n_instances; i++)
    if(!strcmp(h->instances[i]->instance, instance))
      return h->instances[i];
  return NULL;
}

struct holdoff_target *holdoff_instance(struct holdoff *h, const char *instance)
{
  struct holdoff_target *t = holdoff_instance_find(h, instance), **grown;
  if(t || h->n_instances >= HOLDOFF_MAX_INSTANCES || strlen(instance) >= sizeof t->instance)
    return t;
  if(!(t = calloc(1, sizeof *t)))
    return NULL;
  snprintf(t->instance, sizeof t->instance, "%s", instance);
  pthread_mutex_lock(&h->lock);
  if(h->n_instances == h->cap_instances) {
    size_t cap = h->cap_instances ? h->cap_instances * 2 : 8;
    if(!(grown = realloc(h->instances, cap * sizeof *grown))) {
      pthread_mutex_unlock(&h->lock);
      free(t);
      return NULL;
    }
    h->instances = grown;
    h->cap_instances = cap;
  }
  h->instances[h->n_instances++] = t;
  pthread_mutex_unlock(&h->lock);
  return t;
}

int holdoff_instance_held(struct holdoff *h, const char *instance)
{
  struct holdoff_target *t;
  if(h->server.held)
    return 1;
  t = holdoff_instance_find(h, instance);
  return t && t->held;
}

/* The wait before the next probe: the backoff with ±20% jitter, so that a fleet of consumers
 * does not probe in step. */
static int64_t jittered(struct holdoff *h, uint64_t ms)
{
  h->rng = h->rng * 6364136223846793005ULL + 1442695040888963407ULL;
  return (int64_t)(ms * (80 + (h->rng >> 33) % 41) / 100);
}

int holdoff_fail(struct holdoff *h, struct holdoff_target *t, const char *reason, int64_t now_ms)
{
  int became = 0;
  pthread_mutex_lock(&h->lock);
  if(!t->held) {
    t->held = became = 1;
    t->held_since_ms = util_now_ms();
    t->backoff_ms = HOLDOFF_FIRST_PROBE_MS;
    t->held_total++;
    snprintf(t->reason, sizeof t->reason, "%s", reason);
    t->next_probe_ms = now_ms + jittered(h, t->backoff_ms);
  }
  else if(t->probing) {
    t->backoff_ms = t->backoff_ms * 2 > HOLDOFF_MAX_PROBE_MS ? HOLDOFF_MAX_PROBE_MS
                                                             : t->backoff_ms * 2;
    snprintf(t->reason, sizeof t->reason, "%s", reason);
    t->next_probe_ms = now_ms + jittered(h, t->backoff_ms);
  }
  t->probing = 0;
  pthread_mutex_unlock(&h->lock);
  return became;
}

int holdoff_ok(struct holdoff *h, struct holdoff_target *t)
{
  int was;
  pthread_mutex_lock(&h->lock);
  was = t->held;
  if(was)
    t->resumed_total++;
  t->held = t->probing = 0;
  t->reason[0] = '\0';
  pthread_mutex_unlock(&h->lock);
  return was;
}

int holdoff_probe_due(struct holdoff *h, struct holdoff_target *t, int64_t now_ms)
{
  int due;
  pthread_mutex_lock(&h->lock);
  due = t->held && !t->probing && now_ms >= t->next_probe_ms;
  if(due) {
    t->probing = 1;
    t->probes_total++;
  }
  pthread_mutex_unlock(&h->lock);
  return due;
}

void holdoff_probe_gone(struct holdoff *h, struct holdoff_target *t)
{
  pthread_mutex_lock(&h->lock);
  t->probing = 0;
  pthread_mutex_unlock(&h->lock);
}

static int64_t wait_of(const struct holdoff_target *t, int64_t now_ms, int64_t best)
{
  int64_t in;
  if(!t->held || t->probing)
    return best;
  in = t->next_probe_ms - now_ms;
  if(in < 0)
    in = 0;
  return in < best ? in : best;
}

int64_t holdoff_next_probe_in(struct holdoff *h, int64_t now_ms)
{
  int64_t best = wait_of(&h->server, now_ms, INT32_MAX);
  /* While the server is held its instances are not probed: they cannot answer either. */
  for(size_t i = 0; !h->server.held && i < h->n_instances; i++)
    best = wait_of(h->instances[i], now_ms, best);
  return best;
}

static json_t *target_json(const struct holdoff_target *t)
{
  char since[UTIL_TIME_LEN];
  json_t *o = json_pack("{s:s, s:I, s:I}", "state", t->held ? "held" : "ok", "held_total",
                        (json_int_t)t->held_total, "probes_total", (json_int_t)t->probes_total);
  if(o && t->instance[0])
    json_object_set_new(o, "instance", json_string(t->instance));
  if(o && t->held) {
    json_object_set_new(o, "since", json_string(util_format_time(t->held_since_ms, since)));
    json_object_set_new(o, "reason", json_string(t->reason));
  }
  return o;
}

json_t *holdoff_doc(struct holdoff *h)
{
  json_t *o = json_object(), *list = json_array();
  if(!o || !list) {
    json_decref(o);
    json_decref(list);
    return NULL;
  }
  pthread_mutex_lock(&h->lock);
  json_object_set_new(o, "server", target_json(&h->server));
  for(size_t i = 0; i < h->n_instances; i++)
    if(h->instances[i]->held)
      json_array_append_new(list, target_json(h->instances[i]));
  pthread_mutex_unlock(&h->lock);
  json_object_set_new(o, "instances", list);
  return o;
}

char *holdoff_json(struct holdoff *h)
{
  json_t *o = holdoff_doc(h);
  char *out = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  return out;
}

static void target_samples(struct metrics_out *o, const struct holdoff_target *t, int which)
{
  char labels[128];
  if(t->instance[0])
    snprintf(labels, sizeof labels, "target=\"instance\",instance=\"%s\"", t->instance);
  else
    snprintf(labels, sizeof labels, "target=\"server\",instance=\"\"");
  if(which == 0)
    metrics_sample(o, "msg_consumer_evolution_held", labels, t->held);
  else {
    char with[160];
    snprintf(with, sizeof with, "%s,to=\"held\"", labels);
    metrics_sample(o, "msg_consumer_evolution_holdoff_transitions_total", with,
                   (double)t->held_total);
    snprintf(with, sizeof with, "%s,to=\"resumed\"", labels);
    metrics_sample(o, "msg_consumer_evolution_holdoff_transitions_total", with,
                   (double)t->resumed_total);
  }
}

void holdoff_metrics(struct holdoff *h, struct metrics_out *o)
{
  pthread_mutex_lock(&h->lock);
  metrics_family(o, "msg_consumer_evolution_held", "gauge",
                 "1 while jobs of this Evolution target (the server, or one instance) are held "
                 "off because it is out.");
  target_samples(o, &h->server, 0);
  for(size_t i = 0; i < h->n_instances; i++)
    target_samples(o, h->instances[i], 0);
  metrics_family(o, "msg_consumer_evolution_holdoff_transitions_total", "counter",
                 "Times an Evolution target was held off (to=held) or resumed (to=resumed).");
  target_samples(o, &h->server, 1);
  for(size_t i = 0; i < h->n_instances; i++)
    target_samples(o, h->instances[i], 1);
  pthread_mutex_unlock(&h->lock);
}
