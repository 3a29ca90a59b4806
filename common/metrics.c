/* Prometheus metrics: lock-free counters and histograms, rendered in the text format. */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double METRICS_BUCKET_BOUNDS[METRICS_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                                       0.05,  0.1,    0.25,  0.5,  1,
                                                       2.5,   5,      10,    30};

void metrics_observe(struct metrics_hist *h, double seconds)
{
  int i;
  for(i = 0; i < METRICS_BUCKETS && seconds > METRICS_BUCKET_BOUNDS[i]; i++)
    ;
  if(i < METRICS_BUCKETS)
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->sum_us,
                            seconds > 0 ? (unsigned long long)(seconds * 1e6 + 0.5) : 0,
                            memory_order_relaxed);
}

static void put(struct metrics_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct metrics_out *o, const char *fmt, ...)
{
  va_list ap;
  int n;
  if(o->oom)
    return;
  for(;;) {
    size_t room = o->cap - o->len;
    va_start(ap, fmt);
    n = vsnprintf(o->buf ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if(n < 0) {
      o->oom = 1;
      return;
    }
    if((size_t)n < room) {
      o->len += (size_t)n;
      return;
    }
    {
      size_t cap = o->cap ? o->cap * 2 : 4096;
      char *b;
      while(cap - o->len <= (size_t)n)
        cap *= 2;
      b = realloc(o->buf, cap);
      if(!b) {
        o->oom = 1;
        return;
      }
      o->buf = b;
      o->cap = cap;
    }
  }
}

void metrics_family(struct metrics_out *o, const char *name, const char *type, const char *help)
{
  put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_sample(struct metrics_out *o, const char *name, const char *labels, double value)
{
  if(labels && *labels)
    put(o, "%s{%s} %.17g\n", name, labels, value);
  else
    put(o, "%s %.17g\n", name, value);
}

void metrics_hist_samples(struct metrics_out *o, const char *name, const char *labels,
                          const struct metrics_hist *h)
{
  unsigned long long cumulative = 0, count = atomic_load(&h->count);
  const char *sep = labels && *labels ? "," : "";
  labels = labels ? labels : "";
  for(int i = 0; i < METRICS_BUCKETS; i++) {
    cumulative += atomic_load(&h->buckets[i]);
    put(o, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, METRICS_BUCKET_BOUNDS[i],
        cumulative);
  }
  /* Observations may land between the loads above; +Inf never reads below a finite bucket. */
  if(count < cumulative)
    count = cumulative;
  put(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, count);
  if(*labels) {
    put(o, "%s_sum{%s} %.6f\n", name, labels, (double)atomic_load(&h->sum_us) / 1e6);
    put(o, "%s_count{%s} %llu\n", name, labels, count);
  }
  else {
    put(o, "%s_sum %.6f\n", name, (double)atomic_load(&h->sum_us) / 1e6);
    put(o, "%s_count %llu\n", name, count);
  }
}

void metrics_out_free(struct metrics_out *o)
{
  free(o->buf);
  o->buf = NULL;
  o->len = o->cap = 0;
}
