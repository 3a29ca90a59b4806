/* Command line shared by msg-api and msg-consumer: --config, --check-config, --version, --help. */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#define DEFAULT_CONFIG "config/service.yaml"

static void usage(FILE *out, const char *prog, const char *summary)
{
  fprintf(out,
          "Usage: %s [--config FILE] [--check-config]\n"
          "%s\n\n"
          "  -c, --config FILE   configuration file (default: $MSG_CONFIG, else %s)\n"
          "  -t, --check-config  validate the configuration, print any errors, exit 0 or 1\n"
          "  -V, --version       print the version and exit\n"
          "  -h, --help          print this help and exit\n\n"
          "Environment variables override the file: AMQP_URL, EVOLUTION_API_URL,\n"
          "EVOLUTION_API_KEY, EVOLUTION_INSTANCE_NAME, APP_HOST, APP_PORT, LOG_LEVEL.\n",
          prog, summary, DEFAULT_CONFIG);
}

struct cfg *cli_load(int argc, char **argv, const char *prog, const char *summary,
                     int *exit_code)
{
  static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                       {"check-config", no_argument, NULL, 't'},
                                       {"version", no_argument, NULL, 'V'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *path = getenv("MSG_CONFIG");
  int check = 0, c;
  char *errors = NULL;
  struct cfg *cfg;
  if(!path || !*path)
    path = DEFAULT_CONFIG;
  while((c = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
    switch(c) {
    case 'c': path = optarg; break;
    case 't': check = 1; break;
    case 'V':
      printf("%s %s\n", prog, MSG_VERSION);
      *exit_code = 0;
      return NULL;
    case 'h':
      usage(stdout, prog, summary);
      *exit_code = 0;
      return NULL;
    default:
      usage(stderr, prog, summary);
      *exit_code = 2;
      return NULL;
    }
  }
  if(optind < argc) {
    fprintf(stderr, "%s: unexpected argument: %s\n", prog, argv[optind]);
    usage(stderr, prog, summary);
    *exit_code = 2;
    return NULL;
  }
  cfg = cfg_load(path, &errors);
  if(!cfg) {
    fputs(errors ? errors : "out of memory\n", stderr);
    free(errors);
    *exit_code = 1;
    return NULL;
  }
  if(check) {
    printf("%s: configuration OK\n", path);
    cfg_free(cfg);
    *exit_code = 0;
    return NULL;
  }
  return cfg;
}
