/* Prometheus metrics: lock-free counters and histograms updated from any thread, rendered in
 * the text exposition format. Names follow the conventions: base units, _total counters,
 * _seconds histograms, no task ids or phone numbers as labels. */
#ifndef MSG_METRICS_H
#define MSG_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Latency buckets (seconds) shared by every histogram here: 1 ms to 30 s. */
#define METRICS_BUCKETS 14
extern const double METRICS_BUCKET_BOUNDS[METRICS_BUCKETS];

struct metrics_hist {
  atomic_ullong buckets[METRICS_BUCKETS]; /* non-cumulative counts; +Inf is count */
  atomic_ullong count;
  atomic_ullong sum_us; /* sum in microseconds, so it stays an integer atomic */
};

/* Records one observation of `seconds`. */
void metrics_observe(struct metrics_hist *h, double seconds);

/* A growing text buffer for one /metrics answer. */
struct metrics_out {
  char *buf;
  size_t len, cap;
  int oom;
};

/* Writes "# HELP" and "# TYPE" lines for a family; type is "counter", "gauge", "histogram". */
void metrics_family(struct metrics_out *o, const char *name, const char *type, const char *help);

/* Writes one sample: name{labels} value; labels is "" or 'a="x",b="y"'. */
void metrics_sample(struct metrics_out *o, const char *name, const char *labels, double value);

/* Writes the _bucket, _sum and _count samples of a histogram with the given labels. */
void metrics_hist_samples(struct metrics_out *o, const char *name, const char *labels,
                          const struct metrics_hist *h);

/* Writes the process_* families Prometheus client libraries export (CPU seconds, resident and
 * virtual memory, start time, open and maximum file descriptors, from /proc) and
 * msg_build_info{service,version} 1. */
void metrics_process(struct metrics_out *o, const char *service, const char *version);

/* Frees the buffer (the struct itself is the caller's). */
void metrics_out_free(struct metrics_out *o);

#endif
