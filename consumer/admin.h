/* msg-consumer's operator commands: --dead-letters lists parked jobs and --redrive moves them
 * back to delivery; each runs once against the broker, prints JSON on stdout and exits instead
 * of starting the daemon. */
#ifndef MSG_ADMIN_H
#define MSG_ADMIN_H

#include "cfg.h"
#include "cli.h"

struct admin;

/* Creates the (empty) operator command; NULL when out of memory. Caller frees with
 * admin_destroy. */
struct admin *admin_create(void);

/* Frees it; NULL is a no-op. */
void admin_destroy(struct admin *a);

/* Fills *out with the operator options for cli_load_ext, which records them into `a` and
 * rejects bad values and combinations (exit status 2). *out borrows `a` and static text, so it
 * is valid while `a` lives. Arguments recorded from argv are borrowed from it. */
void admin_cli_extra(struct admin *a, struct cli_extra *out);

/* Returns 1 when the command line asked for an operator command rather than the daemon. */
int admin_requested(const struct admin *a);

/* Runs the requested command against cfg's broker (cfg borrowed): the JSON document on stdout,
 * a one-line error on stderr. Returns the exit status: 0 done (also when nothing was moved), 1
 * when the broker could not be reached or the redrive stopped part-way (the report still goes
 * to stdout; jobs not moved stay parked). */
int admin_run(const struct admin *a, const struct cfg *cfg);

#endif
