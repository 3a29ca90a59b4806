/* Small helpers shared by both daemons: clocks, timestamps, task ids, error texts. */
#ifndef MSG_UTIL_H
#define MSG_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Wall-clock time in milliseconds since the Unix epoch. */
int64_t util_now_ms(void);

/* Monotonic time in milliseconds, for deadlines and latencies. */
int64_t util_mono_ms(void);

/* Monotonic time in microseconds, for latency metrics. */
int64_t util_mono_us(void);

/* Formats `ms` (Unix epoch milliseconds) as RFC 3339 UTC with milliseconds,
 * "2026-11-28T12:00:00.000Z", into buf (at least UTIL_TIME_LEN bytes). Returns buf. */
#define UTIL_TIME_LEN 32
char *util_format_time(int64_t ms, char *buf);

/* Parses the RFC 3339 form util_format_time writes (also without milliseconds, and with a
 * numeric offset). Returns 0 and writes *ms on success, -1 otherwise. */
int util_parse_time(const char *text, int64_t *ms);

/* n random bytes (the kernel's CSPRNG, through a per-thread pool) into out. Returns 0, or -1
 * when the system has no randomness to give. */
int util_random(void *out, size_t n);
/* Writes a random (version 4) UUID in its 36-character lower-case form plus NUL into buf.
 * Returns 0, or -1 when the system has no randomness to give. */
#define UTIL_UUID_LEN 37
int util_uuid4(char *buf);

/* Returns 1 when `s` is a UUID in the canonical 8-4-4-4-12 hexadecimal form, else 0. */
int util_is_uuid(const char *s);

/* Writes a printf-formatted reason into err[errlen] (nothing when err is NULL or errlen 0) and
 * returns -1: the "-1 with a reason in err" of functions that fail that way. */
int util_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Decodes one UTF-8 sequence at s (len bytes left); returns its length and the code point, or
 * 0 when it is malformed, overlong, a surrogate or beyond U+10FFFF. */
size_t util_utf8_next(const unsigned char *s, size_t len, unsigned *cp);

/* Makes the NUL-terminated `s` valid UTF-8 in place: every byte that does not begin a valid
 * sequence (a text cut inside a character, a stray byte a client sent) becomes '?'. JSON
 * libraries refuse invalid UTF-8, so error texts go through this before they are answered. */
void util_utf8_sanitize(char *s);

#endif
