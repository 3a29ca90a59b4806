/* Status-callback URLs: the allow-list check shared by msg-api and msg-consumer. libcurl's URL
 * API parses here (only its parser, no transfer): the consumer sends the request with the same
 * parser, so the host that is checked is the host that is called. */
#include "callback_url.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

/* An IP literal in binary, for comparisons that do not depend on how it was written. */
struct ip {
  int family; /* 0: not an IP literal */
  unsigned char addr[16];
};

/* Reads text[0..n) ("10.0.0.7", "::1" or "[::1]") as an IP literal. */
static struct ip parse_ip(const char *text, size_t n)
{
  struct ip ip = {0};
  char buf[64];
  if(n >= 2 && text[0] == '[' && text[n - 1] == ']') {
    text++;
    n -= 2;
  }
  if(n == 0 || n >= sizeof buf)
    return ip;
  memcpy(buf, text, n);
  buf[n] = '\0';
  if(inet_pton(AF_INET, buf, ip.addr) == 1)
    ip.family = AF_INET;
  else if(inet_pton(AF_INET6, buf, ip.addr) == 1)
    ip.family = AF_INET6;
  return ip;
}

static size_t without_trailing_dot(const char *s, size_t n)
{
  return n > 1 && s[n - 1] == '.' ? n - 1 : n;
}

/* Splits an allow-list entry into its host part (length *hlen) and its port (0 when it names
 * none): "host:8443", "10.0.0.7:8080", "[::1]:9000"; "::1" is an address, not a port. */
static void split_entry(const char *entry, size_t *hlen, unsigned *port)
{
  size_t n = strlen(entry);
  const char *colon = NULL;
  *port = 0;
  *hlen = n;
  if(entry[0] == '[') {
    const char *close = strchr(entry, ']');
    if(close && close[1] == ':')
      colon = close + 1;
  }
  else if(strchr(entry, ':') == strrchr(entry, ':'))
    colon = strchr(entry, ':');
  if(colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1) &&
     strlen(colon + 1) <= 5) {
    unsigned long p = strtoul(colon + 1, NULL, 10);
    if(p >= 1 && p <= 65535) {
      *port = (unsigned)p;
      *hlen = (size_t)(colon - entry);
    }
  }
}

/* Does one allow-list entry admit host[0..hlen) (no trailing dot; brackets kept for IPv6) on
 * `port` (0: whatever port the entry names)? */
static int entry_matches(const char *entry, const char *host, size_t hlen, const struct ip *hip,
                         unsigned port)
{
  size_t elen;
  unsigned eport;
  struct ip eip;
  split_entry(entry, &elen, &eport);
  if(eport && port && eport != port)
    return 0;
  elen = without_trailing_dot(entry, elen);
  if(elen > 2 && entry[0] == '*' && entry[1] == '.') {
    /* "*.example.com": at least one label in front of ".example.com". An IP address has no
     * subdomains, though "*.0.0.1" would match "127.0.0.1" as text. */
    const char *suffix = entry + 1;
    size_t slen = elen - 1;
    return !hip->family && hlen > slen && host[hlen - slen - 1] != '.' &&
           !strncasecmp(host + hlen - slen, suffix, slen);
  }
  eip = parse_ip(entry, elen);
  if(eip.family || hip->family)
    return eip.family == hip->family &&
           !memcmp(eip.addr, hip->addr, eip.family == AF_INET ? 4 : 16);
  return elen == hlen && !strncasecmp(entry, host, hlen);
}

/* 1 when a connection to `ip` could reach an internal service: loopback, link-local, private
 * (RFC 1918, unique-local), shared (100.64/10) and unspecified addresses, also written as an
 * IPv4-mapped or NAT64 IPv6 address. */
static int is_internal(const struct ip *ip)
{
  const unsigned char *a = ip->addr;
  static const unsigned char MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const unsigned char NAT64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  static const unsigned char ZERO[16] = {0};
  if(ip->family == AF_INET6) {
    struct ip v4 = {AF_INET, {0}};
    if(!memcmp(a, MAPPED, 12) || !memcmp(a, NAT64, 12)) {
      memcpy(v4.addr, a + 12, 4);
      return is_internal(&v4);
    }
    return !memcmp(a, ZERO, 15) /* :: and ::1 */ || (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) ||
           (a[0] & 0xfe) == 0xfc;
  }
  return a[0] == 0 || a[0] == 10 || a[0] == 127 || (a[0] == 169 && a[1] == 254) ||
         (a[0] == 172 && (a[1] & 0xf0) == 16) || (a[0] == 192 && a[1] == 168) ||
         (a[0] == 100 && (a[1] & 0xc0) == 64);
}

int callback_addr_allowed(const struct sockaddr *addr, char *const *allow_hosts, size_t n,
                          char *err, size_t errlen)
{
  struct ip ip = {0};
  char text[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if(addr->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const void *)addr;
    ip.family = AF_INET;
    memcpy(ip.addr, &in->sin_addr, 4);
    port = ntohs(in->sin_port);
  }
  else if(addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const void *)addr;
    ip.family = AF_INET6;
    memcpy(ip.addr, &in6->sin6_addr, 16);
    port = ntohs(in6->sin6_port);
  }
  else
    return util_fail(err, errlen, "The callback host resolved to an address that is not IP.");
  if(!is_internal(&ip))
    return 0;
  /* Listed as such: an entry that is this very address (and port, when it names one). */
  for(size_t i = 0; i < n; i++) {
    size_t elen;
    unsigned eport;
    struct ip eip;
    if(!allow_hosts[i])
      continue;
    split_entry(allow_hosts[i], &elen, &eport);
    eip = parse_ip(allow_hosts[i], elen);
    if(eip.family == ip.family && !memcmp(eip.addr, ip.addr, ip.family == AF_INET ? 4 : 16) &&
       (!eport || !port || eport == port))
      return 0;
  }
  inet_ntop(ip.family, ip.addr, text, sizeof text);
  return util_fail(err, errlen,
                   "The callback host resolved to the internal address %s, which "
                   "callbacks.allow_hosts does not list.",
                   text);
}

int callback_url_check(const char *url, char *const *allow_hosts, size_t n, char *err,
                       size_t errlen)
{
  CURLU *u = NULL;
  CURLUcode uc;
  char *scheme = NULL, *host = NULL, *part = NULL;
  const char *sep;
  size_t hlen;
  struct ip hip;
  unsigned port;
  int rc = -1, any_host = 0;
  if(!url || !*url)
    return util_fail(err, errlen, "The callback URL is empty.");
  if(strnlen(url, CALLBACK_URL_MAX + 1) > CALLBACK_URL_MAX)
    return util_fail(err, errlen, "The callback URL is longer than %d characters.",
                     CALLBACK_URL_MAX);
  u = curl_url();
  if(!u)
    return util_fail(err, errlen, "The callback URL could not be checked (out of memory).");
  uc = curl_url_set(u, CURLUPART_URL, url, 0);
  if(uc == CURLUE_UNSUPPORTED_SCHEME || uc == CURLUE_BAD_SCHEME) {
    util_fail(err, errlen, "The callback URL must start with http:// or https://.");
    goto out;
  }
  if(uc != CURLUE_OK) {
    util_fail(err, errlen, "The callback URL is not a valid URL (%s).", curl_url_strerror(uc));
    goto out;
  }
  if(curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
     (strcmp(scheme, "http") && strcmp(scheme, "https"))) {
    util_fail(err, errlen, "The callback URL must start with http:// or https://.");
    goto out;
  }
  /* curl reads "http:///x" as host "x"; a URL that names no host after "//" has none. */
  sep = strstr(url, "://");
  if(!sep || sep[3] == '/' || sep[3] == '\\') {
    util_fail(err, errlen, "The callback URL has no host.");
    goto out;
  }
  if(curl_url_get(u, CURLUPART_USER, &part, 0) == CURLUE_OK ||
     curl_url_get(u, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK ||
     curl_url_get(u, CURLUPART_OPTIONS, &part, 0) == CURLUE_OK) {
    util_fail(err, errlen, "The callback URL must not contain a user name or password.");
    goto out;
  }
  if(curl_url_get(u, CURLUPART_ZONEID, &part, 0) == CURLUE_OK) {
    util_fail(err, errlen, "The callback URL must not name an IPv6 zone.");
    goto out;
  }
  if(curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host) {
    util_fail(err, errlen, "The callback URL has no host.");
    goto out;
  }
  hlen = strlen(host);
  for(size_t i = 0; i < hlen; i++)
    if((unsigned char)host[i] >= 0x80) {
      /* IDNA mapping would change the name after this check; the ASCII form cannot change. */
      util_fail(err, errlen,
                "The callback URL's host must be written in ASCII (its punycode form).");
      goto out;
    }
  if(!n) {
    util_fail(err, errlen, "Callback URLs are not accepted: no callback host is allowed here.");
    goto out;
  }
  if(curl_url_get(u, CURLUPART_PORT, &part, CURLU_DEFAULT_PORT) != CURLUE_OK) {
    util_fail(err, errlen, "The callback URL has no port.");
    goto out;
  }
  port = (unsigned)strtoul(part, NULL, 10); /* digits, as libcurl wrote them */
  hlen = without_trailing_dot(host, hlen);
  hip = parse_ip(host, hlen);
  for(size_t i = 0; i < n; i++)
    if(allow_hosts[i] && entry_matches(allow_hosts[i], host, hlen, &hip, port)) {
      rc = 0;
      goto out;
    }
    else if(allow_hosts[i] && entry_matches(allow_hosts[i], host, hlen, &hip, 0))
      any_host = 1; /* the host is listed, with another port */
  util_fail(err, errlen, "The callback URL's host \"%.*s\" is not allowed%s.",
            hlen > 200 ? 200 : (int)hlen, host, any_host ? " on this port" : "");
out:
  curl_free(part);
  curl_free(host);
  curl_free(scheme);
  curl_url_cleanup(u);
  return rc;
}
