/* msg-probe: the container HEALTHCHECK, so the runtime image needs neither a shell nor curl.
 *
 *   msg-probe [URL]
 *
 * URL is http://HOST[:PORT][/PATH] (default port 80, default path /); without an argument it is
 * $MSG_PROBE_URL, else http://127.0.0.1:8001/livez (msg-api's liveness endpoint). Sends one
 * "GET PATH HTTP/1.0" and exits 0 when the answer's status is 2xx, 1 otherwise (bad URL, no
 * connection, timeout, other status), with the reason on stderr. The whole probe gives up after
 * $MSG_PROBE_TIMEOUT seconds (default 3). Plain C and sockets, no libraries beyond libc. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define DEFAULT_URL "http://127.0.0.1:8001/livez"

static void on_alarm(int sig)
{
  static const char msg[] = "msg-probe: timed out\n";
  (void)sig;
  if(write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
    /* nothing more to say */
  }
  _exit(1);
}

static int fail(const char *what, const char *detail)
{
  fprintf(stderr, "msg-probe: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  return 1;
}

/* Splits http://HOST[:PORT][/PATH] into its parts; IPv6 hosts are written [addr]. */
static int parse_url(const char *url, char *host, size_t hostlen, char *port, size_t portlen,
                     const char **path)
{
  const char *p, *end, *colon;
  size_t n;

  if(strncmp(url, "http://", 7))
    return -1;
  p = url + 7;
  end = p + strcspn(p, "/?#");
  *path = *end == '/' ? end : "/";
  if(*end && *end != '/')
    return -1; /* a query or fragment without a path: not worth supporting */
  if(*p == '[') {
    const char *close = memchr(p, ']', (size_t)(end - p));
    if(!close)
      return -1;
    n = (size_t)(close - p - 1);
    if(!n || n >= hostlen)
      return -1;
    memcpy(host, p + 1, n);
    host[n] = 0;
    colon = close + 1 < end && close[1] == ':' ? close + 1 : NULL;
    if(!colon && close + 1 != end)
      return -1;
  }
  else {
    colon = memchr(p, ':', (size_t)(end - p));
    n = (size_t)((colon ? colon : end) - p);
    if(!n || n >= hostlen)
      return -1;
    memcpy(host, p, n);
    host[n] = 0;
  }
  if(colon) {
    n = (size_t)(end - colon - 1);
    if(!n || n >= portlen || strspn(colon + 1, "0123456789") < n)
      return -1;
    memcpy(port, colon + 1, n);
    port[n] = 0;
  }
  else {
    if(portlen < 3)
      return -1;
    strcpy(port, "80");
  }
  return 0;
}

int main(int argc, char **argv)
{
  const char *url = argc > 1 ? argv[1] : getenv("MSG_PROBE_URL");
  const char *tmo = getenv("MSG_PROBE_TIMEOUT");
  char host[256], port[8], req[2048], resp[64];
  const char *path;
  struct addrinfo hints, *res, *ai;
  int fd = -1, rc, len;
  size_t got = 0, sent = 0;
  unsigned timeout = 3;

  if(argc > 2 || (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))) {
    fprintf(stderr, "usage: msg-probe [http://HOST[:PORT][/PATH]]\n"
                    "exit 0 when the URL answers 2xx; default $MSG_PROBE_URL, else " DEFAULT_URL
                    "\n");
    return argc > 2 ? 2 : 0;
  }
  if(!url || !*url)
    url = DEFAULT_URL;
  if(tmo && *tmo) {
    char *e;
    unsigned long t = strtoul(tmo, &e, 10);
    if(*e || t < 1 || t > 3600)
      return fail("MSG_PROBE_TIMEOUT: expected whole seconds, 1..3600, got", tmo);
    timeout = (unsigned)t;
  }
  if(parse_url(url, host, sizeof host, port, sizeof port, &path))
    return fail("expected http://HOST[:PORT][/PATH], got", url);

  signal(SIGALRM, on_alarm);
  signal(SIGPIPE, SIG_IGN);
  alarm(timeout);

  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  rc = getaddrinfo(host, port, &hints, &res);
  if(rc)
    return fail(host, gai_strerror(rc));
  for(ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if(fd < 0)
      continue;
    if(!connect(fd, ai->ai_addr, ai->ai_addrlen))
      break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if(fd < 0)
    return fail("cannot connect", strerror(errno));

  len = snprintf(req, sizeof req,
                 "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: msg-probe\r\nConnection: close\r\n\r\n",
                 path, host);
  if(len < 0 || (size_t)len >= sizeof req)
    return fail("URL too long", NULL);
  while(sent < (size_t)len) {
    ssize_t w = write(fd, req + sent, (size_t)len - sent);
    if(w < 0 && errno == EINTR)
      continue;
    if(w <= 0)
      return fail("cannot send the request", strerror(errno));
    sent += (size_t)w;
  }
  /* The status line's first 12 bytes ("HTTP/1.1 200") are all we need. */
  while(got < 12) {
    ssize_t r = read(fd, resp + got, sizeof resp - 1 - got);
    if(r < 0 && errno == EINTR)
      continue;
    if(r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  resp[got] = 0;
  if(got < 12 || strncmp(resp, "HTTP/1.", 7) || resp[8] != ' ' || resp[9] < '1' ||
     resp[9] > '5' || resp[10] < '0' || resp[10] > '9' || resp[11] < '0' || resp[11] > '9') {
    resp[strcspn(resp, "\r\n")] = 0;
    return fail("not an HTTP answer", got ? resp : "connection closed");
  }
  if(resp[9] != '2') {
    resp[12] = 0;
    return fail("unhealthy answer", resp + 9);
  }
  return 0;
}
