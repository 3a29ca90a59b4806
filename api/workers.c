/* The consumer fleet from its heartbeats: see workers.h. */
#include "workers.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* A beat counts as missed after its interval; three missed and the worker is gone. */
#define MISSED_BEATS 3

struct worker_entry {
  char *id;
  json_t *beat;      /* the last heartbeat as received */
  int64_t seen_ms;   /* when it was sent (its "at"), never later than when it arrived */
  int64_t interval_ms;
  int stopping;
};

struct workers {
  pthread_mutex_t lock;
  struct worker_entry *e;
  size_t n;
};

struct workers *workers_new(void)
{
  struct workers *w = calloc(1, sizeof *w);
  if(!w)
    return NULL;
  if(!(w->e = calloc(WORKERS_MAX, sizeof *w->e)) || pthread_mutex_init(&w->lock, NULL)) {
    free(w->e);
    free(w);
    return NULL;
  }
  return w;
}

static void entry_clear(struct worker_entry *e)
{
  free(e->id);
  json_decref(e->beat);
  memset(e, 0, sizeof *e);
}

void workers_free(struct workers *w)
{
  if(!w)
    return;
  for(size_t i = 0; i < w->n; i++)
    entry_clear(&w->e[i]);
  free(w->e);
  pthread_mutex_destroy(&w->lock);
  free(w);
}

static int alive(const struct worker_entry *e, int64_t now_ms)
{
  return !e->stopping && now_ms - e->seen_ms <= MISSED_BEATS * e->interval_ms;
}

int workers_note(struct workers *w, const char *body, size_t len, int64_t now_ms, char *err,
                 size_t errlen)
{
  json_error_t je;
  json_t *beat = json_loadb(body, len, 0, &je);
  const char *id = NULL, *kind = NULL, *at = NULL;
  json_int_t interval = 0;
  int stopping = 0;
  int64_t at_ms;
  size_t i, slot;
  char *copy;
  if(!beat || json_unpack_ex(beat, &je, 0, "{s:s, s:s, s:s, s:I, s?b}", "kind", &kind,
                             "worker_id", &id, "at", &at, "interval_ms", &interval, "stopping",
                             &stopping) ||
     strcmp(kind, "worker") || !*id || strlen(id) > 512 || util_parse_time(at, &at_ms) ||
     interval < 100 || interval > 3600000) {
    snprintf(err, errlen, "not a worker heartbeat%s%s", beat ? ": " : "", beat ? je.text : "");
    json_decref(beat);
    return -1;
  }
  if(!(copy = strdup(id))) {
    json_decref(beat);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  pthread_mutex_lock(&w->lock);
  for(i = 0; i < w->n && strcmp(w->e[i].id, id); i++)
    ;
  slot = i;
  if(slot == w->n) {
    if(w->n < WORKERS_MAX)
      w->n++;
    else {
      /* Full: the worker seen longest ago makes room. */
      slot = 0;
      for(i = 1; i < w->n; i++)
        if(w->e[i].seen_ms < w->e[slot].seen_ms)
          slot = i;
    }
    entry_clear(&w->e[slot]);
    w->e[slot].id = copy;
    copy = NULL;
  }
  else if(at_ms < w->e[slot].seen_ms) {
    /* An older beat read after a newer one (a replica catching up): the newer stays. */
    pthread_mutex_unlock(&w->lock);
    free(copy);
    json_decref(beat);
    return 0;
  }
  free(copy);
  json_decref(w->e[slot].beat);
  w->e[slot].beat = beat;
  w->e[slot].seen_ms = at_ms < now_ms ? at_ms : now_ms;
  w->e[slot].interval_ms = interval;
  w->e[slot].stopping = stopping;
  pthread_mutex_unlock(&w->lock);
  return 0;
}

size_t workers_live(struct workers *w, int64_t now_ms)
{
  size_t n = 0;
  pthread_mutex_lock(&w->lock);
  for(size_t i = 0; i < w->n; i++)
    n += (size_t)alive(&w->e[i], now_ms);
  pthread_mutex_unlock(&w->lock);
  return n;
}

static int by_start(const void *a, const void *b)
{
  const char *sa = json_string_value(json_object_get(*(json_t *const *)a, "started_at"));
  const char *sb = json_string_value(json_object_get(*(json_t *const *)b, "started_at"));
  /* RFC 3339 in UTC with fixed width: text order is time order. Newest first. */
  return strcmp(sb ? sb : "", sa ? sa : "");
}

char *workers_json(struct workers *w, int64_t now_ms)
{
  json_t *list = json_array(), **items = NULL, *doc;
  size_t n = 0;
  char *out = NULL, seen[UTIL_TIME_LEN];
  if(!list)
    return NULL;
  pthread_mutex_lock(&w->lock);
  items = calloc(w->n ? w->n : 1, sizeof *items);
  for(size_t i = 0; items && i < w->n; i++) {
    json_t *copy;
    if(!alive(&w->e[i], now_ms) || !(copy = json_deep_copy(w->e[i].beat)))
      continue;
    json_object_del(copy, "v");
    json_object_del(copy, "kind");
    json_object_del(copy, "stopping");
    json_object_set_new(copy, "last_seen", json_string(util_format_time(w->e[i].seen_ms, seen)));
    items[n++] = copy;
  }
  pthread_mutex_unlock(&w->lock);
  if(!items) {
    json_decref(list);
    return NULL;
  }
  qsort(items, n, sizeof *items, by_start);
  for(size_t i = 0; i < n; i++)
    json_array_append_new(list, items[i]);
  free(items);
  doc = json_pack("{s:I, s:o}", "count", (json_int_t)n, "workers", list);
  if(doc)
    out = json_dumps(doc, JSON_COMPACT);
  json_decref(doc);
  return out;
}
