/* Prometheus metrics: lock-free counters and histograms, rendered in the text format. */
#include "metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

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

/* ---- the process: what Prometheus client libraries export as process_* -------------------- */

/* Field n (1-based) of /proc/self/stat after the command name, which may hold spaces. */
static int proc_stat_fields(unsigned long long *utime, unsigned long long *stime,
                            unsigned long long *start_ticks, unsigned long long *vsize,
                            long long *rss_pages)
{
  char buf[1024], *p;
  size_t n;
  FILE *f = fopen("/proc/self/stat", "r");
  if(!f)
    return -1;
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  if(!(p = strrchr(buf, ')')))
    return -1;
  /* After ")": state(3) ... utime(14) stime(15) ... starttime(22) vsize(23) rss(24). */
  return sscanf(p + 2,
                "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
                "%llu %llu %lld",
                utime, stime, start_ticks, vsize, rss_pages) == 5
             ? 0
             : -1;
}

static double boot_time_seconds(void)
{
  char line[256];
  double btime = 0;
  FILE *f = fopen("/proc/stat", "r");
  if(!f)
    return 0;
  while(fgets(line, sizeof line, f))
    if(sscanf(line, "btime %lf", &btime) == 1)
      break;
  fclose(f);
  return btime;
}

static long open_fds(void)
{
  long n = 0;
  struct dirent *e;
  DIR *d = opendir("/proc/self/fd");
  if(!d)
    return -1;
  while((e = readdir(d)))
    n += e->d_name[0] != '.';
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}

void metrics_process(struct metrics_out *o, const char *service, const char *version)
{
  unsigned long long utime, stime, start, vsize;
  long long rss;
  long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE), fds = open_fds();
  struct rlimit lim;
  char labels[160];
  if(!proc_stat_fields(&utime, &stime, &start, &vsize, &rss) && ticks > 0) {
    metrics_family(o, "process_cpu_seconds_total", "counter",
                   "User and system CPU time spent, in seconds.");
    /* The kernel's own per-process clock, to the nanosecond: /proc's ticks are 10 ms, so a
     * quiet daemon read 0 for its first seconds. The ticks stay the fallback. */
    struct timespec cpu;
    metrics_sample(o, "process_cpu_seconds_total", "",
                   !clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu)
                       ? (double)cpu.tv_sec + (double)cpu.tv_nsec / 1e9
                       : (double)(utime + stime) / (double)ticks);
    metrics_family(o, "process_resident_memory_bytes", "gauge", "Resident memory size, in bytes.");
    metrics_sample(o, "process_resident_memory_bytes", "", (double)rss * (double)page);
    metrics_family(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size, in bytes.");
    metrics_sample(o, "process_virtual_memory_bytes", "", (double)vsize);
    metrics_family(o, "process_start_time_seconds", "gauge",
                   "Start time of the process since the Unix epoch, in seconds.");
    metrics_sample(o, "process_start_time_seconds", "",
                   boot_time_seconds() + (double)start / (double)ticks);
  }
  if(fds >= 0) {
    metrics_family(o, "process_open_fds", "gauge", "Open file descriptors.");
    metrics_sample(o, "process_open_fds", "", (double)fds);
  }
  if(!getrlimit(RLIMIT_NOFILE, &lim) && lim.rlim_cur != RLIM_INFINITY) {
    metrics_family(o, "process_max_fds", "gauge", "Limit of open file descriptors.");
    metrics_sample(o, "process_max_fds", "", (double)lim.rlim_cur);
  }
  metrics_family(o, "msg_build_info", "gauge", "Always 1; the labels say which build runs.");
  snprintf(labels, sizeof labels, "service=\"%s\",version=\"%s\"", service, version);
  metrics_sample(o, "msg_build_info", labels, 1);
}
