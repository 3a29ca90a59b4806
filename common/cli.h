/* Command line shared by msg-api and msg-consumer: --config, --check-config, --version, --help. */
#ifndef MSG_CLI_H
#define MSG_CLI_H

#include "cfg.h"

/* Parses the command line and loads the configuration. Handles --help, --version and
 * --check-config itself (printing to stdout/stderr) and returns the exit status the program
 * must end with in *exit_code, with NULL as the result. Otherwise returns the loaded
 * configuration (caller frees with cfg_free). The config file is --config FILE, else
 * $MSG_CONFIG, else config/service.yaml. `summary` is one line printed by --help. */
struct cfg *cli_load(int argc, char **argv, const char *prog, const char *summary,
                     int *exit_code);

#endif
