/* Status-callback URLs: the allow-list check shared by msg-api and msg-consumer. libcurl's URL
 * API parses here (only its parser, no transfer): the consumer sends the request with the same
 * parser, so the host that is checked is the host that is called. */
#include "callback_url.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <stdio.h>
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

/* Does one allow-list entry admit host[0..hlen) (no trailing dot; brackets kept for IPv6)? */
static int entry_matches(const char *entry, const char *host, size_t hlen, const struct ip *hip)
{
  size_t elen = without_trailing_dot(entry, strlen(entry));
  struct ip eip;
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

int callback_url_check(const char *url, char *const *allow_hosts, size_t n, char *err,
                       size_t errlen)
{
  CURLU *u = NULL;
  CURLUcode uc;
  char *scheme = NULL, *host = NULL, *part = NULL;
  const char *sep;
  size_t hlen;
  struct ip hip;
  int rc = -1;
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
  hlen = without_trailing_dot(host, hlen);
  hip = parse_ip(host, hlen);
  for(size_t i = 0; i < n; i++)
    if(allow_hosts[i] && entry_matches(allow_hosts[i], host, hlen, &hip)) {
      rc = 0;
      goto out;
    }
  util_fail(err, errlen, "The callback URL's host \"%.*s\" is not allowed.",
            hlen > 200 ? 200 : (int)hlen, host);
out:
  curl_free(part);
  curl_free(host);
  curl_free(scheme);
  curl_url_cleanup(u);
  return rc;
}
