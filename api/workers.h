/* The consumer fleet as msg-api sees it: the last heartbeat of each msg-consumer, read from the
 * status stream ("worker.heartbeat" messages, DESIGN §3), so every replica knows every worker.
 * A worker is listed while its last beat is younger than three of its intervals and it did not
 * say it was stopping. Thread-safe: the status reader writes, HTTP workers read. */
#ifndef MSG_WORKERS_H
#define MSG_WORKERS_H

#include <stddef.h>
#include <stdint.h>

/* Workers remembered at most; the one seen longest ago makes room. */
#define WORKERS_MAX 4096

struct workers;

struct workers *workers_new(void); /* NULL when out of memory */
void workers_free(struct workers *w); /* NULL is a no-op */

/* Takes one heartbeat (the message body) received at now_ms. Returns 0, or -1 when it is not
 * a heartbeat (reason in err). */
int workers_note(struct workers *w, const char *body, size_t len, int64_t now_ms, char *err,
                 size_t errlen);

/* {"count": n, "workers": [heartbeat + "last_seen"], ...} of the live workers at now_ms, newest
 * start first; malloc'd, NULL when out of memory. */
char *workers_json(struct workers *w, int64_t now_ms);

/* Live workers at now_ms. */
size_t workers_live(struct workers *w, int64_t now_ms);

#endif
