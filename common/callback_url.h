/* Status-callback URLs: the one check msg-api applies when a client names a callback URL and
 * msg-consumer applies again before every POST (callbacks.allow_hosts). */
#ifndef MSG_CALLBACK_URL_H
#define MSG_CALLBACK_URL_H

#include <stddef.h>

/* Longest callback URL accepted, in bytes. */
#define CALLBACK_URL_MAX 2048

/* Checks `url` against the allow-list allow_hosts[0..n) (borrowed; callbacks.allow_hosts).
 * Returns 0 when the URL is http:// or https://, names a host, carries no user name or
 * password, is at most CALLBACK_URL_MAX bytes, and its host matches an entry: an exact host
 * name or IP literal ("hooks.example.com", "10.0.0.7", "::1" or "[::1]"), or "*.example.com"
 * for any subdomain of example.com (not example.com itself, never an IP address), each with an
 * optional port ("hooks.example.com:8443", "[::1]:9000": only that port; none: any); host names
 * compare case-insensitively and one trailing dot is ignored. The URL is parsed by libcurl's
 * URL API, the parser that later sends the request, so both agree on what the host is (numeric
 * IPv4 forms such as "http://2130706433/" are normalised to 127.0.0.1 before matching).
 * Otherwise returns -1 with one user-facing sentence in err[errlen] (msg-api answers it with
 * 422). err may be NULL. Thread-safe; needs no curl_global_init. */
int callback_url_check(const char *url, char *const *allow_hosts, size_t n, char *err,
                       size_t errlen);

struct sockaddr;
/* The second check, on the address the consumer is about to connect to (a name may resolve to
 * anything): 0 when `addr` is a public address, or an internal one (loopback, link-local,
 * private, unique-local, shared, unspecified; IPv4-mapped and NAT64 forms too) that
 * allow_hosts lists as an IP literal (with this port, when the entry names one). Else -1 with a
 * sentence in err[errlen]. */
int callback_addr_allowed(const struct sockaddr *addr, char *const *allow_hosts, size_t n,
                          char *err, size_t errlen);

#endif
