/* msg-consumer's operator commands (--dead-letters, --redrive): the command-line face of the
 * dead-letter module, with the same defaults and bounds as msg-api's /dead-letters endpoints. */
#include "admin.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deadletters.h"
#include "util.h"


enum {
  OPT_DEAD_LETTERS = CLI_EXTRA_VAL,
  OPT_LIMIT,
  OPT_REDRIVE,
  OPT_REASON,
  OPT_INSTANCE,
  OPT_TASK_ID,
  OPT_MAX,
  OPT_RATE
};

enum admin_mode { ADMIN_NONE, ADMIN_DEAD_LETTERS, ADMIN_REDRIVE };

struct admin {
  enum admin_mode mode;
  size_t limit;
  struct redrive_filter filter; /* task_ids points into ids */
  const char **ids;             /* borrowed from argv; the array is ours */
  size_t ids_cap;
  const char *listing_opt;      /* the last option seen that only --dead-letters takes */
  const char *redrive_opt;      /* the last option seen that only --redrive takes */
  char why[160];                /* the reason handed back by take() */
};

static const struct option admin_opts[] = {
  {"dead-letters", no_argument, NULL, OPT_DEAD_LETTERS},
  {"limit", required_argument, NULL, OPT_LIMIT},
  {"redrive", no_argument, NULL, OPT_REDRIVE},
  {"reason", required_argument, NULL, OPT_REASON},
  {"instance", required_argument, NULL, OPT_INSTANCE},
  {"task-id", required_argument, NULL, OPT_TASK_ID},
  {"max", required_argument, NULL, OPT_MAX},
  {"rate", required_argument, NULL, OPT_RATE},
  {NULL, 0, NULL, 0}};

static const char *const admin_usage[] = {
  "[--config FILE] --dead-letters [--limit N]",
  "[--config FILE] --redrive [--reason R] [--instance I] [--task-id ID]... [--max N] [--rate R]",
  NULL};

static const char admin_help[] =
  "Operator commands: run once against the broker, print JSON on stdout and exit, with the\n"
  "same --config file and environment as the daemon.\n"
  "      --dead-letters  list the parked jobs, oldest first, leaving them parked:\n"
  "                      {\"count\", \"messages\": [...]}\n"
  "      --limit N       list at most N of them (1-1000, default 20)\n"
  "      --redrive       move parked jobs back to delivery with a fresh attempt count and\n"
  "                      their tasks back to PENDING: {\"moved\", \"scanned\", \"task_ids\"}\n"
  "      --reason R      only jobs parked for reason R (x-failure-reason, e.g.\n"
  "                      retries_exhausted or permanent)\n"
  "      --instance I    only jobs for the Evolution API instance I\n"
  "      --task-id ID    only this task; repeat for more\n"
  "      --max N         move at most N jobs (1-100000, default 100)\n"
  "      --rate R        move at most R jobs per second, 0.1-100000 (default 0: as fast as confirmed)\n"
  "  Exit status: 0 done (also when nothing matched), 1 broker unreachable or the redrive\n"
  "  stopped part-way, 2 bad usage (nothing is moved).\n";

struct admin *admin_create(void)
{
  struct admin *a = calloc(1, sizeof *a);
  if(!a)
    return NULL;
  a->limit = DEAD_PEEK_DEFAULT;
  a->filter.max = DEAD_REDRIVE_DEFAULT;
  return a;
}

void admin_destroy(struct admin *a)
{
  if(!a)
    return;
  free(a->ids);
  free(a);
}

int admin_requested(const struct admin *a)
{
  return a->mode != ADMIN_NONE;
}

/* A whole number from min to max, or NULL with the reason in a->why. */
static const char *parse_count(struct admin *a, const char *opt, const char *arg, long min,
                               long max, size_t *out)
{
  char *end;
  long v;
  errno = 0;
  v = strtol(arg, &end, 10);
  if(!*arg || *end || errno || v < min || v > max) {
    snprintf(a->why, sizeof a->why, "%s: expected a whole number from %ld to %ld, got \"%.40s\"",
             opt, min, max, arg);
    return a->why;
  }
  *out = (size_t)v;
  return NULL;
}

static const char *add_task_id(struct admin *a, const char *id)
{
  if(!util_is_uuid(id)) {
    snprintf(a->why, sizeof a->why, "--task-id: expected a task id (a UUID), got \"%.40s\"",
             id);
    return a->why;
  }
  if(a->filter.n_task_ids == a->ids_cap) {
    size_t cap = a->ids_cap ? 2 * a->ids_cap : 8;
    const char **ids = realloc(a->ids, cap * sizeof *ids);
    if(!ids)
      return "out of memory";
    a->ids = ids;
    a->ids_cap = cap;
    a->filter.task_ids = ids;
  }
  a->ids[a->filter.n_task_ids++] = id;
  return NULL;
}

static const char *set_mode(struct admin *a, enum admin_mode mode)
{
  if(a->mode != ADMIN_NONE && a->mode != mode)
    return "--dead-letters and --redrive cannot be combined";
  a->mode = mode;
  return NULL;
}

/* cli_extra.take: records one option, or checks the whole once the last is in (val 0). */
static const char *take(void *ctx, int val, const char *arg)
{
  struct admin *a = ctx;
  switch(val) {
  case OPT_DEAD_LETTERS: return set_mode(a, ADMIN_DEAD_LETTERS);
  case OPT_REDRIVE: return set_mode(a, ADMIN_REDRIVE);
  case OPT_LIMIT:
    a->listing_opt = "--limit";
    return parse_count(a, "--limit", arg, 1, DEAD_PEEK_MAX, &a->limit);
  case OPT_MAX:
    a->redrive_opt = "--max";
    return parse_count(a, "--max", arg, 1, DEAD_REDRIVE_MAX, &a->filter.max);
  case OPT_RATE: {
    char *end;
    double rate;
    a->redrive_opt = "--rate";
    errno = 0;
    rate = strtod(arg, &end);
    if(!*arg || *end || errno || !isfinite(rate) ||
       (rate != 0 && !(rate >= DEAD_RATE_MIN && rate <= DEAD_RATE_MAX))) {
      snprintf(a->why, sizeof a->why,
               "--rate: expected 0 (no limit) or 0.1 to 100000 jobs per second, got \"%.40s\"",
               arg);
      return a->why;
    }
    a->filter.rate = rate;
    return NULL;
  }
  case OPT_REASON:
    a->redrive_opt = "--reason";
    a->filter.reason = arg;
    return NULL;
  case OPT_INSTANCE:
    a->redrive_opt = "--instance";
    a->filter.instance = arg;
    return NULL;
  case OPT_TASK_ID:
    a->redrive_opt = "--task-id";
    return add_task_id(a, arg);
  case 0:
    if(a->listing_opt && a->mode != ADMIN_DEAD_LETTERS) {
      snprintf(a->why, sizeof a->why, "%s goes with --dead-letters", a->listing_opt);
      return a->why;
    }
    if(a->redrive_opt && a->mode != ADMIN_REDRIVE) {
      snprintf(a->why, sizeof a->why, "%s goes with --redrive", a->redrive_opt);
      return a->why;
    }
    return NULL;
  default: return "unknown option";
  }
}

void admin_cli_extra(struct admin *a, struct cli_extra *out)
{
  memset(out, 0, sizeof *out);
  out->options = admin_opts;
  out->usage = admin_usage;
  out->help = admin_help;
  out->take = take;
  out->ctx = a;
}

int admin_run(const struct admin *a, const struct cfg *cfg)
{
  char err[512];
  json_t *doc, *stopped;
  int rc = 0;
  if(a->mode == ADMIN_DEAD_LETTERS)
    doc = dead_peek(cfg, a->limit, err, sizeof err);
  else
    doc = dead_redrive(cfg, &a->filter, err, sizeof err);
  if(!doc) {
    fprintf(stderr, "msg-consumer: %s: %s\n",
            a->mode == ADMIN_DEAD_LETTERS ? "cannot list the parked jobs" : "cannot redrive", err);
    return 1;
  }
  if(json_dumpf(doc, stdout, JSON_INDENT(2)) || putchar('\n') == EOF || fflush(stdout)) {
    fprintf(stderr, "msg-consumer: cannot write to stdout\n");
    rc = 1;
  }
  /* What stopped a redrive part-way; the jobs it moved are in the report. */
  stopped = json_object_get(doc, "error");
  if(json_is_string(stopped)) {
    fprintf(stderr, "msg-consumer: the redrive stopped part-way: %s\n",
            json_string_value(stopped));
    rc = 1;
  }
  json_decref(doc);
  return rc;
}
