/* Unit tests for common/callback_url.h: which callback URLs the allow-list admits, and the
 * sentence given for each refusal. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "callback_url.h"
#include "check.h"

static char *const ALLOW[] = {"hooks.example.com", "*.clients.example.net", "127.0.0.1", "::1",
                              "[2001:db8::7]", "Upper.Example.ORG."};
#define N_ALLOW (sizeof ALLOW / sizeof ALLOW[0])

/* 1 when the URL is admitted; otherwise 0 and, with want, the sentence must be exactly it. */
static int ok(const char *url)
{
  char err[256] = "";
  int rc = callback_url_check(url, ALLOW, N_ALLOW, err, sizeof err);
  if(rc)
    fprintf(stderr, "  %s refused: %s\n", url, err);
  return rc == 0;
}

static int refused(const char *url, const char *want)
{
  char err[256] = "";
  int rc = callback_url_check(url, ALLOW, N_ALLOW, err, sizeof err);
  if(rc != -1 || strcmp(err, want)) {
    fprintf(stderr, "  %s: rc %d, \"%s\"\n  want \"%s\"\n", url, rc, err, want);
    return 0;
  }
  return 1;
}

static void test_allowed(void)
{
  CHECK(ok("https://hooks.example.com/status"));
  CHECK(ok("http://hooks.example.com:8080/a/b?x=1#frag"));
  CHECK(ok("HTTPS://HOOKS.Example.Com/x")); /* scheme and host case do not matter */
  CHECK(ok("https://hooks.example.com./x")); /* one trailing dot: the same host */
  CHECK(ok("https://a.clients.example.net/x"));
  CHECK(ok("https://deep.a.clients.example.net/x"));
  CHECK(ok("http://127.0.0.1:9000/cb"));
  CHECK(ok("http://2130706433/cb")); /* curl normalises numeric IPv4 forms to 127.0.0.1 */
  CHECK(ok("http://127.1/cb"));
  CHECK(ok("http://[::1]:9000/cb"));
  CHECK(ok("http://[0:0:0:0:0:0:0:1]/cb")); /* IP literals compare as addresses */
  CHECK(ok("http://[2001:db8:0::7]/cb"));
  CHECK(ok("https://upper.example.org/"));
out:;
}

static void test_refused(void)
{
  static const char *const not_http = "The callback URL must start with http:// or https://.";
  char *long_url = NULL;
  CHECK(refused("", "The callback URL is empty."));
  CHECK(refused(NULL, "The callback URL is empty."));
  CHECK(refused("ftp://hooks.example.com/x", not_http));
  CHECK(refused("file:///etc/passwd", not_http));
  CHECK(refused("javascript:alert(1)", not_http));
  CHECK(refused("hooks.example.com/x", not_http));
  CHECK(refused("//hooks.example.com/x", not_http));
  CHECK(refused("http:///hooks.example.com", "The callback URL has no host."));
  CHECK(refused("http://", "The callback URL is not a valid URL (No host part in the URL)."));
  CHECK(refused("https://user@hooks.example.com/x",
                "The callback URL must not contain a user name or password."));
  CHECK(refused("https://user:pw@hooks.example.com/x",
                "The callback URL must not contain a user name or password."));
  CHECK(refused("https://:@hooks.example.com/x",
                "The callback URL must not contain a user name or password."));
  CHECK(refused("https://hooks.example.com x/",
                "The callback URL is not a valid URL (Bad hostname)."));
  CHECK(refused("http://[fe80::1%25eth0]/", "The callback URL must not name an IPv6 zone."));
  CHECK(refused("https://evil.com/", "The callback URL's host \"evil.com\" is not allowed."));
  /* Look-alikes of allowed hosts. */
  CHECK(refused("https://hooks.example.com.evil.com/",
                "The callback URL's host \"hooks.example.com.evil.com\" is not allowed."));
  CHECK(refused("https://xhooks.example.com/",
                "The callback URL's host \"xhooks.example.com\" is not allowed."));
  CHECK(refused("https://hooks.example.com@evil.com/",
                "The callback URL must not contain a user name or password."));
  CHECK(refused("https://evil.com#@hooks.example.com/",
                "The callback URL's host \"evil.com\" is not allowed."));
  /* A wildcard admits subdomains only: not the domain itself, not an empty label. */
  CHECK(refused("https://clients.example.net/",
                "The callback URL's host \"clients.example.net\" is not allowed."));
  CHECK(refused("https://evilclients.example.net/",
                "The callback URL's host \"evilclients.example.net\" is not allowed."));
  CHECK(refused("http://127.0.0.2/", "The callback URL's host \"127.0.0.2\" is not allowed."));
  CHECK(refused("http://[::2]/", "The callback URL's host \"[::2]\" is not allowed."));
  CHECK(refused("http://[::ffff:127.0.0.1]/",
                "The callback URL's host \"[::ffff:127.0.0.1]\" is not allowed."));
  CHECK(refused("https://hooks.ex%C3%A4mple.com/",
                "The callback URL's host must be written in ASCII (its punycode form)."));
  /* 2048 bytes pass the length check, 2049 do not. */
  long_url = malloc(CALLBACK_URL_MAX + 2);
  CHECK(long_url != NULL);
  memset(long_url, 'a', CALLBACK_URL_MAX + 1);
  memcpy(long_url, "https://hooks.example.com/", 26);
  long_url[CALLBACK_URL_MAX] = '\0';
  CHECK(ok(long_url));
  long_url[CALLBACK_URL_MAX] = 'a';
  long_url[CALLBACK_URL_MAX + 1] = '\0';
  CHECK(refused(long_url, "The callback URL is longer than 2048 characters."));
out:
  free(long_url);
}

static void test_wildcard_never_matches_ips(void)
{
  char *const allow[] = {"*.0.0.1"};
  char err[256];
  CHECK(callback_url_check("http://127.0.0.1/", allow, 1, err, sizeof err) == -1);
out:;
}

/* "host:port" entries admit that port only; a host without a port admits any. */
static void test_ports(void)
{
  char *const allow[] = {"hooks.example.com:8443", "10.0.0.7:8080", "[::1]:9000", "::1",
                         "*.example.net:443", "any.example.org"};
  char err[256];
  CHECK(!callback_url_check("https://hooks.example.com:8443/x", allow, 6, err, sizeof err));
  CHECK(callback_url_check("https://hooks.example.com/x", allow, 6, err, sizeof err) == -1);
  CHECK_STR(err, "The callback URL's host \"hooks.example.com\" is not allowed on this port.");
  CHECK(callback_url_check("http://hooks.example.com:8080/", allow, 6, err, sizeof err) == -1);
  CHECK(!callback_url_check("http://10.0.0.7:8080/", allow, 6, err, sizeof err));
  CHECK(callback_url_check("http://10.0.0.7/", allow, 6, err, sizeof err) == -1);
  CHECK(!callback_url_check("http://[::1]:9000/", allow, 6, err, sizeof err));
  CHECK(!callback_url_check("http://[::1]:1234/", allow, 6, err, sizeof err)); /* "::1": any */
  CHECK(!callback_url_check("https://a.example.net/", allow, 6, err, sizeof err));
  CHECK(callback_url_check("http://a.example.net/", allow, 6, err, sizeof err) == -1);
  CHECK(!callback_url_check("http://any.example.org:1/", allow, 6, err, sizeof err));
out:;
}

static int addr_ok(const char *text, char *const *allow, size_t n)
{
  struct sockaddr_in v4 = {.sin_family = AF_INET};
  struct sockaddr_in6 v6 = {.sin6_family = AF_INET6};
  char err[256] = "";
  int rc;
  if(inet_pton(AF_INET, text, &v4.sin_addr) == 1)
    rc = callback_addr_allowed((struct sockaddr *)&v4, allow, n, err, sizeof err);
  else if(inet_pton(AF_INET6, text, &v6.sin6_addr) == 1)
    rc = callback_addr_allowed((struct sockaddr *)&v6, allow, n, err, sizeof err);
  else
    return -2;
  return rc == 0;
}

/* The address connected to: internal ranges only when the allow-list names that address. */
static void test_connected_address(void)
{
  char *const names[] = {"hooks.example.com", "localhost"};
  char *const listed[] = {"localhost", "127.0.0.1", "[fd00::5]:8443", "10.1.2.3"};
  static const char *const INTERNAL[] = {"127.0.0.1", "127.9.9.9", "10.0.0.1", "172.16.0.1",
                                         "172.31.255.255", "192.168.1.1", "169.254.169.254",
                                         "100.64.0.1", "0.0.0.0", "::1", "::", "fe80::1",
                                         "fd00::5", "fc00::1", "::ffff:127.0.0.1",
                                         "64:ff9b::a00:1"};
  for(size_t i = 0; i < sizeof INTERNAL / sizeof INTERNAL[0]; i++) {
    if(addr_ok(INTERNAL[i], names, 2) != 0)
      fprintf(stderr, "  %s was let through\n", INTERNAL[i]);
    CHECK(addr_ok(INTERNAL[i], names, 2) == 0);
  }
  CHECK(addr_ok("93.184.216.34", names, 2) == 1);
  CHECK(addr_ok("172.32.0.1", names, 2) == 1);
  CHECK(addr_ok("2606:2800:220:1::1", names, 2) == 1);
  CHECK(addr_ok("127.0.0.1", listed, 4) == 1);
  CHECK(addr_ok("fd00::5", listed, 4) == 1);
  CHECK(addr_ok("10.1.2.3", listed, 4) == 1);
  CHECK(addr_ok("10.1.2.4", listed, 4) == 0);
  CHECK(addr_ok("::1", listed, 4) == 0);
out:;
}

static void test_empty_allow_list(void)
{
  char err[256];
  CHECK(callback_url_check("https://hooks.example.com/", NULL, 0, err, sizeof err) == -1);
  CHECK_STR(err, "Callback URLs are not accepted: no callback host is allowed here.");
  /* Without an error buffer. */
  CHECK(callback_url_check("https://hooks.example.com/", NULL, 0, NULL, 0) == -1);
out:;
}

int main(void)
{
  static const struct check_test tests[] = {{"allowed", test_allowed},
                                            {"refused", test_refused},
                                            {"wildcard_never_matches_ips",
                                             test_wildcard_never_matches_ips},
                                            {"ports", test_ports},
                                            {"connected_address", test_connected_address},
                                            {"empty_allow_list", test_empty_allow_list}};
  return check_run(tests, sizeof tests / sizeof tests[0]);
}
