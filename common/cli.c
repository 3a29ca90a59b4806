/* Command line shared by msg-api and msg-consumer: --config, --check-config, --version, --help,
 * plus the options one program adds. */
#include "cli.h"

#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_CONFIG "config/service.yaml"

static const struct option shared_opts[] = {{"config", required_argument, NULL, 'c'},
                                            {"check-config", no_argument, NULL, 't'},
                                            {"version", no_argument, NULL, 'V'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};

static void usage(FILE *out, const char *prog, const char *summary,
                  const struct cli_extra *extra)
{
  fprintf(out, "Usage: %s [--config FILE] [--check-config]\n", prog);
  for(const char *const *form = extra ? extra->usage : NULL; form && *form; form++)
    fprintf(out, "       %s %s\n", prog, *form);
  fprintf(out,
          "%s\n\n"
          "  -c, --config FILE   configuration file (default: $MSG_CONFIG, else %s)\n"
          "  -t, --check-config  validate the configuration, print any errors, exit 0 or 1\n"
          "  -V, --version       print the version and exit\n"
          "  -h, --help          print this help and exit\n\n",
          summary, DEFAULT_CONFIG);
  if(extra && extra->help)
    fprintf(out, "%s\n", extra->help);
  fputs("Environment variables override the file: AMQP_URL, EVOLUTION_API_URL,\n"
        "EVOLUTION_API_KEY, EVOLUTION_INSTANCE_NAME, APP_HOST, APP_PORT, LOG_LEVEL.\n",
        out);
}

/* The shared options followed by those of `extra`, in one getopt_long table (caller frees). */
static struct option *merge_options(const struct cli_extra *extra)
{
  size_t n_shared = sizeof shared_opts / sizeof shared_opts[0] - 1, n_extra = 0;
  struct option *all;
  while(extra && extra->options[n_extra].name)
    n_extra++;
  all = calloc(n_shared + n_extra + 1, sizeof *all);
  if(!all)
    return NULL;
  memcpy(all, shared_opts, n_shared * sizeof *all);
  if(n_extra)
    memcpy(all + n_shared, extra->options, n_extra * sizeof *all);
  return all;
}

struct cfg *cli_load_ext(int argc, char **argv, const char *prog, const char *summary,
                         const struct cli_extra *extra, int *exit_code)
{
  const char *path = getenv("MSG_CONFIG"), *why = NULL;
  int check = 0, c;
  char *errors = NULL;
  struct cfg *cfg = NULL;
  struct option *opts = merge_options(extra);
  if(!opts) {
    fprintf(stderr, "%s: out of memory\n", prog);
    *exit_code = 1;
    return NULL;
  }
  if(!path || !*path)
    path = DEFAULT_CONFIG;
  while((c = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
    switch(c) {
    case 'c': path = optarg; break;
    case 't': check = 1; break;
    case 'V':
      printf("%s %s\n", prog, MSG_VERSION);
      *exit_code = 0;
      goto out;
    case 'h':
      usage(stdout, prog, summary, extra);
      *exit_code = 0;
      goto out;
    default:
      if(extra && c >= CLI_EXTRA_VAL) {
        if((why = extra->take(extra->ctx, c, optarg)))
          goto usage_error;
        break;
      }
      usage(stderr, prog, summary, extra); /* getopt_long said what was wrong */
      *exit_code = 2;
      goto out;
    }
  }
  if(optind < argc) {
    fprintf(stderr, "%s: unexpected argument: %s\n", prog, argv[optind]);
    usage(stderr, prog, summary, extra);
    *exit_code = 2;
    goto out;
  }
  if(extra && (why = extra->take(extra->ctx, 0, NULL)))
    goto usage_error;
  cfg = cfg_load(path, &errors);
  if(!cfg) {
    fputs(errors ? errors : "out of memory\n", stderr);
    free(errors);
    *exit_code = 1;
    goto out;
  }
  if(check) {
    printf("%s: configuration OK\n", path);
    cfg_free(cfg);
    cfg = NULL;
    *exit_code = 0;
  }
  goto out;
usage_error:
  fprintf(stderr, "%s: %s\n", prog, why);
  usage(stderr, prog, summary, extra);
  *exit_code = 2;
out:
  free(opts);
  return cfg;
}

struct cfg *cli_load(int argc, char **argv, const char *prog, const char *summary,
                     int *exit_code)
{
  return cli_load_ext(argc, argv, prog, summary, NULL, exit_code);
}

struct cfg *cli_reload(const char *path)
{
  char *errors = NULL;
  struct cfg *fresh;
  if(log_reopen())
    log_event(CFG_LOG_ERROR, "SIGHUP: cannot open the log file again", "reason",
              strerror(errno), NULL);
  fresh = cfg_load(path, &errors);
  if(!fresh) {
    log_event(CFG_LOG_ERROR, "SIGHUP: configuration not reloaded", "errors", errors, NULL);
    free(errors);
  }
  return fresh;
}
