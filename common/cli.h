/* Command line shared by msg-api and msg-consumer: --config, --check-config, --version, --help,
 * plus the options one program adds (msg-consumer's operator commands). */
#ifndef MSG_CLI_H
#define MSG_CLI_H

#include <getopt.h>

#include "cfg.h"

/* The first `val` an added option may use: every shared option is a short letter below it. */
#define CLI_EXTRA_VAL 256

/* Options a program adds to the shared ones. Everything is borrowed for the call. */
struct cli_extra {
  /* getopt_long entries ending with a zeroed one: long options only, each val >=
   * CLI_EXTRA_VAL. */
  const struct option *options;
  /* More forms for --help's "Usage:" lines, each without the program name; NULL-terminated. */
  const char *const *usage;
  /* Their --help text, printed after the shared options. */
  const char *help;
  /* Called with ctx for each of `options` in command-line order, with its val and argument
   * (NULL when it takes none), then once with val 0 after the last one. Returns NULL to go on,
   * or a one-line reason (borrowed from ctx until the next call): the program then ends with
   * usage status 2, before the configuration is loaded. */
  const char *(*take)(void *ctx, int val, const char *arg);
  void *ctx;
};

/* Parses the command line and loads the configuration. Handles --help, --version and
 * --check-config itself (printing to stdout/stderr) and returns the exit status the program
 * must end with in *exit_code, with NULL as the result. Otherwise returns the loaded
 * configuration (caller frees with cfg_free). The config file is --config FILE, else
 * $MSG_CONFIG, else config/service.yaml. `summary` is one line printed by --help. */
struct cfg *cli_load(int argc, char **argv, const char *prog, const char *summary,
                     int *exit_code);

/* cli_load with the options of `extra` (borrowed; NULL: none, which is cli_load) accepted too
 * and handed to extra->take; a bad one ends like an unknown option, with *exit_code 2. Also
 * 1 with a message on stderr when out of memory. */
struct cfg *cli_load_ext(int argc, char **argv, const char *prog, const char *summary,
                         const struct cli_extra *extra, int *exit_code);

/* What SIGHUP does first in both daemons: opens the log file again (logrotate) and reads the
 * configuration file `path` again. Returns the new configuration (caller frees with cfg_free),
 * or NULL when it has errors, which are logged: the daemon then keeps what it has. */
struct cfg *cli_reload(const char *path);

#endif
