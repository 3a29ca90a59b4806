/* Config loader: YAML file (libyaml event API) -> generic tree -> struct cfg, driven by one key table. */
#include "cfg.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yaml.h>

/* Enum fields are written through an int pointer by the generic loader. */
_Static_assert(sizeof(enum cfg_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_log_format) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_queue_type) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_api_version) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_in_doubt) == sizeof(int), "enum size");

#define MAX_FILE_SIZE (4u * 1024 * 1024)
/* Our schema nests three levels; the limit only stops hostile input from exhausting the stack. */
#define MAX_DEPTH 64
#define MAX_SHOWN 80 /* bytes of a bad value quoted back in an error */
#define REDACTED "<redacted>"

#define MS_SECOND UINT64_C(1000)
#define MS_MINUTE (60 * MS_SECOND)
#define MS_HOUR (60 * MS_MINUTE)
#define MS_DAY (24 * MS_HOUR)
#define KIB UINT64_C(1024)
#define MIB (1024 * KIB)

/* ---------------------------------------------------------------------------------------------
 * Growable string. Allocation failure is sticky and checked once by the owner.
 */
struct sbuf {
  char *p;
  size_t len, cap;
  bool oom;
};

static void sb_putn(struct sbuf *b, const char *s, size_t n)
{
  /* The size check also tells GCC's -O3 range analysis that len + n cannot wrap, which it
   * otherwise reports as a bogus -Wstringop-overflow. */
  if(b->oom || n > SIZE_MAX / 4 || b->len > SIZE_MAX / 4) {
    b->oom = true;
    return;
  }
  if(b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while(cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if(!p) {
      b->oom = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s)
{
  sb_putn(b, s, strlen(s));
}

static void sb_vprintf(struct sbuf *b, const char *fmt, va_list ap)
  __attribute__((format(printf, 2, 0)));
static void sb_vprintf(struct sbuf *b, const char *fmt, va_list ap)
{
  char small[256];
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(small, sizeof(small), fmt, ap);
  if(n < 0) {
    b->oom = true;
  }
  else if((size_t)n < sizeof(small)) {
    sb_putn(b, small, (size_t)n);
  }
  else {
    char *big = malloc((size_t)n + 1);
    if(!big)
      b->oom = true;
    else {
      vsnprintf(big, (size_t)n + 1, fmt, ap2);
      sb_putn(b, big, (size_t)n);
      free(big);
    }
  }
  va_end(ap2);
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  sb_vprintf(b, fmt, ap);
  va_end(ap);
}

/* Quotes a value for an error line: escapes what would break the one-line format, truncates. */
static void sb_quote(struct sbuf *b, const char *s, size_t n)
{
  size_t shown = n > MAX_SHOWN ? MAX_SHOWN : n;
  sb_putn(b, "\"", 1);
  for(size_t i = 0; i < shown; i++) {
    unsigned char c = (unsigned char)s[i];
    if(c == '"' || c == '\\')
      sb_printf(b, "\\%c", c);
    else if(c < 0x20 || c == 0x7f)
      sb_printf(b, "\\x%02x", c);
    else
      sb_putn(b, (const char *)&c, 1);
  }
  if(shown < n)
    sb_puts(b, "...");
  sb_putn(b, "\"", 1);
}

/* ---------------------------------------------------------------------------------------------
 * The key table. Every key of DESIGN §5 is declared once here; nothing below names a key except
 * the environment overrides.
 */
enum ktype {
  K_STR,           /* any string */
  K_NONEMPTY,      /* non-empty string; max = longest length when non-zero */
  K_BOOL,          /* true/false, yes/no, on/off */
  K_UINT,          /* unsigned, min..max */
  K_COUNT,         /* size_t integer, min..max */
  K_DOUBLE,        /* double, dmin..dmax */
  K_DURATION,      /* uint64_t milliseconds, min..max (or 0 with F_ZERO_OK) */
  K_SIZE,          /* size_t bytes, min..max */
  K_ENUM,          /* int, one of names */
  K_LISTEN,        /* host:port string */
  K_URL,           /* string starting with one of schemes */
  K_INSTANCE,      /* [A-Za-z0-9._-]{1,64} */
  K_STR_LIST,      /* char ** + size_t count; elements non-empty; at most max_n */
  K_DURATION_LIST, /* uint64_t * + size_t count; elements min..max; at most max_n */
  K_TENANTS,       /* struct cfg_tenant * + size_t count: api.keys, parsed by apply_tenants */
};

#define F_SECRET 1u      /* never quote the value back */
#define F_SECRET_URL 2u  /* quote the value back with the userinfo hidden */
#define F_ZERO_OK 4u     /* a duration of 0 means "off" and is allowed outside min..max */
#define F_STRIP_SLASH 8u /* drop one trailing '/' (a base URL we append paths to) */

struct enum_name {
  const char *name;
  int value;
};

struct key {
  const char *name; /* dotted path; its prefixes are the sections */
  enum ktype type;
  unsigned flags;
  const char *def;              /* default, written as in the file */
  const char *const *def_list;  /* default of a list key, NULL-terminated */
  uint64_t min, max;            /* integers, durations (ms), sizes (bytes), string length */
  double dmin, dmax;            /* K_DOUBLE */
  size_t max_n;                 /* lists */
  const struct enum_name *names; /* K_ENUM, terminated by a NULL name */
  const char *const *schemes;   /* K_URL, NULL-terminated */
  bool (*elem_check)(const char *s); /* K_STR_LIST: extra rule for each element */
  const char *elem_expect;      /* ...and what it expects, for the error message */
  size_t off, off_n;            /* offsetof the field, and of the list count */
};

static const struct enum_name LOG_LEVELS[] = {
  {"debug", CFG_LOG_DEBUG}, {"info", CFG_LOG_INFO}, {"warn", CFG_LOG_WARN},
  {"error", CFG_LOG_ERROR}, {NULL, 0}};
static const struct enum_name LOG_FORMATS[] = {
  {"json", CFG_LOG_JSON}, {"text", CFG_LOG_TEXT}, {NULL, 0}};
static const struct enum_name QUEUE_TYPES[] = {
  {"quorum", CFG_QUEUE_QUORUM}, {"classic", CFG_QUEUE_CLASSIC}, {NULL, 0}};
static const struct enum_name API_VERSIONS[] = {
  {"v1", CFG_EVO_V1}, {"v2", CFG_EVO_V2}, {NULL, 0}};
static const struct enum_name IN_DOUBT[] = {
  {"resend", CFG_IN_DOUBT_RESEND}, {"park", CFG_IN_DOUBT_PARK}, {NULL, 0}};
static const char *const AMQP_SCHEMES[] = {"amqp://", "amqps://", NULL};
static const char *const HTTP_SCHEMES[] = {"http://", "https://", NULL};
static const char *const NO_KEYS[] = {NULL};
static const char *const DEFAULT_DELAYS[] = {"5s", "5s", "5s", NULL};
static const char *const DEFAULT_CALLBACK_DELAYS[] = {"5s", "30s", "2m", "10m", "1h", NULL};

static bool valid_instance_rate(const char *s);

/* An IP literal (api.trusted_proxies). */
static bool valid_ip_literal(const char *s)
{
  unsigned char buf[16];
  return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

#define AT(m) .off = offsetof(struct cfg, m)
/* AMQP short strings hold at most 255 bytes. */
#define AMQP_NAME(n, d, m) {.name = n, .type = K_NONEMPTY, .def = d, .max = 255, AT(m)}

static const struct key KEYS[] = {
  {.name = "broker.url", .type = K_URL, .flags = F_SECRET_URL,
   .def = "amqp://guest:guest@localhost:5672/%2f", .schemes = AMQP_SCHEMES, AT(broker.url)},
  {.name = "broker.urls", .type = K_STR_LIST, .flags = F_SECRET_URL, .def_list = NO_KEYS,
   .max_n = 64, .elem_check = cfg_valid_amqp_url,
   .elem_expect = "an amqp:// or amqps:// URL with a host and an optional port 1-65535",
   AT(broker.urls), .off_n = offsetof(struct cfg, broker.n_urls)},
  {.name = "broker.heartbeat", .type = K_DURATION, .flags = F_ZERO_OK, .def = "30s",
   .min = MS_SECOND, .max = MS_HOUR, AT(broker.heartbeat_ms)},
  {.name = "broker.connection_name", .type = K_NONEMPTY, .def = "msg", .max = 200,
   AT(broker.connection_name)},
  {.name = "broker.tls.ca_file", .type = K_STR, .def = "", AT(broker.tls.ca_file)},
  {.name = "broker.tls.cert_file", .type = K_STR, .def = "", AT(broker.tls.cert_file)},
  {.name = "broker.tls.key_file", .type = K_STR, .def = "", AT(broker.tls.key_file)},
  {.name = "broker.tls.verify_peer", .type = K_BOOL, .def = "true", AT(broker.tls.verify_peer)},

  AMQP_NAME("topology.exchange", "messages", topology.exchange),
  /* Leaves room for the ".lane.<instance>" suffix of the rate-limited lanes. */
  {.name = "topology.queue", .type = K_NONEMPTY, .def = "messages.send", .max = 184,
   AT(topology.queue)},
  {.name = "topology.queue_type", .type = K_ENUM, .def = "quorum", .names = QUEUE_TYPES,
   AT(topology.queue_type)},
  /* Leaves room for the ".<delay>" suffix of each retry queue. */
  {.name = "topology.retry_queue_prefix", .type = K_NONEMPTY, .def = "messages.retry",
   .max = 200, AT(topology.retry_queue_prefix)},
  AMQP_NAME("topology.dead_letter_queue", "messages.dead", topology.dead_letter_queue),
  AMQP_NAME("topology.status_stream", "messages.status", topology.status_stream),
  {.name = "topology.status_retention", .type = K_DURATION, .def = "24h", .min = MS_MINUTE,
   .max = 365 * MS_DAY, AT(topology.status_retention_ms)},
  /* Leaves room for the ".retry.<delay>" and ".dead" suffixes. */
  {.name = "topology.callback_queue", .type = K_NONEMPTY, .def = "messages.callbacks",
   .max = 200, AT(topology.callback_queue)},

  {.name = "api.listen", .type = K_LISTEN, .def = "0.0.0.0:8001", AT(api.listen)},
  {.name = "api.threads", .type = K_UINT, .def = "64", .min = 1, .max = 1024, AT(api.threads)},
  {.name = "api.max_body", .type = K_SIZE, .def = "64KiB", .min = KIB, .max = 16 * MIB,
   AT(api.max_body)},
  {.name = "api.api_keys", .type = K_STR_LIST, .flags = F_SECRET, .def_list = NO_KEYS,
   .max_n = 1024, AT(api.api_keys), .off_n = offsetof(struct cfg, api.n_api_keys)},
  {.name = "api.api_keys_file", .type = K_STR, .def = "", AT(api.api_keys_file)},
  {.name = "api.keys", .type = K_TENANTS, .flags = F_SECRET, .max_n = 1024, AT(api.tenants),
   .off_n = offsetof(struct cfg, api.n_tenants)},
  {.name = "api.max_batch_body", .type = K_SIZE, .def = "4MiB", .min = KIB, .max = 64 * MIB,
   AT(api.max_batch_body)},
  {.name = "api.cache_max_tasks", .type = K_COUNT, .def = "1000000", .min = 1,
   .max = 100000000, AT(api.cache_max_tasks)},
  /* Hostile clients: CivetWeb keeps at most 64 header lines and silently drops the rest, so
   * msg-api refuses what it would cut (reply.c), and slow senders get deadlines. */
  {.name = "api.max_header_size", .type = K_SIZE, .def = "16KiB", .min = KIB, .max = MIB,
   AT(api.max_header_size)},
  {.name = "api.header_timeout", .type = K_DURATION, .def = "5s", .min = 100,
   .max = 5 * MS_MINUTE, AT(api.header_timeout_ms)},
  {.name = "api.body_timeout", .type = K_DURATION, .def = "10s", .min = 100,
   .max = 10 * MS_MINUTE, AT(api.body_timeout_ms)},
  {.name = "api.keep_alive_timeout", .type = K_DURATION, .def = "5s", .min = 100,
   .max = 5 * MS_MINUTE, AT(api.keep_alive_timeout_ms)},
  {.name = "api.snapshot_interval", .type = K_DURATION, .def = "1m", .min = 0,
   .max = 5 * MS_MINUTE, AT(api.snapshot_interval_ms)},
  {.name = "api.metrics_public", .type = K_BOOL, .def = "false", AT(api.metrics_public)},
  {.name = "api.trusted_proxies", .type = K_STR_LIST, .def_list = NO_KEYS, .max_n = 256,
   .elem_check = valid_ip_literal, .elem_expect = "an IPv4 or IPv6 address",
   AT(api.trusted_proxies), .off_n = offsetof(struct cfg, api.n_trusted_proxies)},

  {.name = "consumer.prefetch", .type = K_UINT, .def = "64", .min = 1, .max = 65535,
   AT(consumer.prefetch)},
  {.name = "consumer.shutdown_grace", .type = K_DURATION, .def = "25s", .min = 0,
   .max = MS_HOUR, AT(consumer.shutdown_grace_ms)},
  {.name = "consumer.history_window", .type = K_DURATION, .def = "1m", .min = 0,
   .max = MS_DAY, AT(consumer.history_window_ms)},
  {.name = "consumer.health_listen", .type = K_LISTEN, .def = "0.0.0.0:8002",
   AT(consumer.health_listen)},
  {.name = "consumer.health_threads", .type = K_UINT, .def = "16", .min = 2, .max = 256,
   AT(consumer.health_threads)},
  {.name = "consumer.health_timeout", .type = K_DURATION, .def = "1s", .min = 100,
   .max = MS_MINUTE, AT(consumer.health_timeout_ms)},

  {.name = "evolution.url", .type = K_URL, .flags = F_STRIP_SLASH | F_SECRET_URL,
   .def = "http://localhost:8080",
   .schemes = HTTP_SCHEMES, AT(evolution.url)},
  {.name = "evolution.api_key", .type = K_STR, .flags = F_SECRET, .def = "",
   AT(evolution.api_key)},
  {.name = "evolution.instance", .type = K_INSTANCE, .def = "default", AT(evolution.instance)},
  {.name = "evolution.api_version", .type = K_ENUM, .def = "v2", .names = API_VERSIONS,
   AT(evolution.api_version)},
  {.name = "evolution.timeout", .type = K_DURATION, .def = "30s", .min = 100, .max = 10 * MS_MINUTE,
   AT(evolution.timeout_ms)},
  {.name = "evolution.connect_timeout", .type = K_DURATION, .def = "5s", .min = 100,
   .max = 5 * MS_MINUTE, AT(evolution.connect_timeout_ms)},
  {.name = "evolution.rate_limit", .type = K_DOUBLE, .def = "0", .dmin = 0, .dmax = 1e6,
   AT(evolution.rate_limit)},
  {.name = "evolution.rate_burst", .type = K_UINT, .def = "1", .min = 1, .max = 100000,
   AT(evolution.rate_burst)},
  {.name = "evolution.rate_limits", .type = K_STR_LIST, .def_list = NO_KEYS, .max_n = 4096,
   .elem_check = valid_instance_rate, .elem_expect = "\"<instance>=<sends per second>\"",
   AT(evolution.rate_limits), .off_n = offsetof(struct cfg, evolution.n_rate_limits)},
  {.name = "evolution.reconcile", .type = K_BOOL, .def = "true", AT(evolution.reconcile)},
  {.name = "evolution.in_doubt", .type = K_ENUM, .def = "resend", .names = IN_DOUBT,
   AT(evolution.in_doubt)},

  {.name = "retry.delays", .type = K_DURATION_LIST, .def_list = DEFAULT_DELAYS, .min = 1,
   .max = MS_DAY, .max_n = 32, AT(retry.delays_ms), .off_n = offsetof(struct cfg, retry.n_delays)},

  {.name = "callbacks.secret", .type = K_STR, .flags = F_SECRET, .def = "", AT(callbacks.secret)},
  {.name = "callbacks.allow_hosts", .type = K_STR_LIST, .def_list = NO_KEYS, .max_n = 1024,
   AT(callbacks.allow_hosts), .off_n = offsetof(struct cfg, callbacks.n_allow_hosts)},
  {.name = "callbacks.timeout", .type = K_DURATION, .def = "5s", .min = 100, .max = 5 * MS_MINUTE,
   AT(callbacks.timeout_ms)},
  {.name = "callbacks.retry_delays", .type = K_DURATION_LIST, .def_list = DEFAULT_CALLBACK_DELAYS,
   .min = 1, .max = MS_DAY, .max_n = 32, AT(callbacks.retry_delays_ms),
   .off_n = offsetof(struct cfg, callbacks.n_retry_delays)},
  {.name = "callbacks.concurrency", .type = K_UINT, .def = "32", .min = 1, .max = 1024,
   AT(callbacks.concurrency)},

  {.name = "webhooks.secret", .type = K_STR, .flags = F_SECRET, .def = "", AT(webhooks.secret)},
  {.name = "webhooks.header", .type = K_NONEMPTY, .def = "X-Webhook-Secret", .max = 100,
   AT(webhooks.header)},
  {.name = "webhooks.jwt_key", .type = K_STR, .flags = F_SECRET, .def = "",
   AT(webhooks.jwt_key)},

  {.name = "log.level", .type = K_ENUM, .def = "info", .names = LOG_LEVELS, AT(log.level)},
  {.name = "log.format", .type = K_ENUM, .def = "json", .names = LOG_FORMATS, AT(log.format)},
  {.name = "log.file", .type = K_STR, .def = "", AT(log.file)},
  {.name = "log.access", .type = K_BOOL, .def = "true", AT(log.access)},
};
#define N_KEYS (sizeof(KEYS) / sizeof(KEYS[0]))

/* Variables of the system this service replaces; they win over the file. APP_HOST and APP_PORT
 * share api.listen and are handled apart. */
static const struct {
  const char *var, *key;
} ENV_OVERRIDES[] = {
  {"EVOLUTION_API_URL", "evolution.url"},
  {"EVOLUTION_API_KEY", "evolution.api_key"},
  {"EVOLUTION_INSTANCE_NAME", "evolution.instance"},
  {"LOG_LEVEL", "log.level"},
};

static const struct key *find_key(const char *name)
{
  for(size_t i = 0; i < N_KEYS; i++)
    if(!strcmp(KEYS[i].name, name))
      return &KEYS[i];
  return NULL;
}

static bool is_section(const char *name)
{
  size_t n = strlen(name);
  for(size_t i = 0; i < N_KEYS; i++)
    if(!strncmp(KEYS[i].name, name, n) && KEYS[i].name[n] == '.')
      return true;
  return false;
}

/* ---------------------------------------------------------------------------------------------
 * Value parsers (public ones first).
 */
static int parse_digits(const char *s, const char **end, uint64_t *out)
{
  /* strtoull accepts a sign and leading blanks; a config value must not. */
  if(!isdigit((unsigned char)*s))
    return -1;
  char *e;
  errno = 0;
  unsigned long long v = strtoull(s, &e, 10);
  if(errno == ERANGE || v > UINT64_MAX)
    return -1;
  *end = e;
  *out = v;
  return 0;
}

int cfg_parse_duration(const char *text, uint64_t *out)
{
  static const struct {
    const char *unit;
    uint64_t ms;
  } units[] = {{"ms", 1}, {"s", MS_SECOND}, {"m", MS_MINUTE}, {"h", MS_HOUR}, {"d", MS_DAY}};
  const char *end;
  uint64_t v;
  if(!text || parse_digits(text, &end, &v))
    return -1;
  for(size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
    if(strcmp(end, units[i].unit))
      continue;
    if(v > UINT64_MAX / units[i].ms)
      return -1;
    *out = v * units[i].ms;
    return 0;
  }
  return -1; /* no unit, or an unknown one: "5" is ambiguous, so it is refused */
}

int cfg_parse_size(const char *text, uint64_t *out)
{
  static const struct {
    const char *unit;
    uint64_t mult;
  } units[] = {{"", 1}, {"B", 1}, {"KiB", KIB}, {"MiB", MIB}, {"GiB", 1024 * MIB},
               {"KB", 1000}, {"MB", 1000000}, {"GB", 1000000000}};
  const char *end;
  uint64_t v;
  if(!text || parse_digits(text, &end, &v))
    return -1;
  for(size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
    if(strcmp(end, units[i].unit))
      continue;
    if(v > UINT64_MAX / units[i].mult)
      return -1;
    *out = v * units[i].mult;
    return 0;
  }
  return -1;
}

static bool valid_host(const char *h, size_t n)
{
  if(n == 0)
    return true; /* all interfaces */
  if(h[0] == '[') {
    if(n < 3 || h[n - 1] != ']')
      return false;
    bool colon = false;
    for(size_t i = 1; i < n - 1; i++) {
      char c = h[i];
      if(c == ':')
        colon = true;
      else if(!isxdigit((unsigned char)c) && c != '.')
        return false;
    }
    return colon;
  }
  for(size_t i = 0; i < n; i++) {
    char c = h[i];
    /* '_' appears in container service names, so it is tolerated. */
    if(!isalnum((unsigned char)c) && c != '.' && c != '-' && c != '_')
      return false;
  }
  return true;
}

static int parse_port(const char *s, unsigned *port)
{
  const char *end;
  uint64_t v;
  if(parse_digits(s, &end, &v) || *end || v < 1 || v > 65535)
    return -1;
  *port = (unsigned)v;
  return 0;
}

/* The host is written without the brackets of an IPv6 literal: getaddrinfo wants it bare. Either
 * output pointer may be NULL to validate only. */
int cfg_split_listen(const char *text, char **host, unsigned *port)
{
  if(!text)
    return -1;
  const char *colon = strrchr(text, ':');
  unsigned p;
  if(!colon || parse_port(colon + 1, &p))
    return -1;
  size_t n = (size_t)(colon - text);
  if(!valid_host(text, n))
    return -1;
  if(host) {
    const char *h = text;
    if(n && text[0] == '[') {
      h++;
      n -= 2;
    }
    char *copy = malloc(n + 1);
    if(!copy)
      return -1;
    memcpy(copy, h, n);
    copy[n] = '\0';
    *host = copy;
  }
  if(port)
    *port = p;
  return 0;
}

static int parse_bool(const char *s, bool *out)
{
  static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
  for(size_t i = 0; i < 3; i++) {
    if(!strcasecmp(s, yes[i])) {
      *out = true;
      return 0;
    }
    if(!strcasecmp(s, no[i])) {
      *out = false;
      return 0;
    }
  }
  return -1;
}

static int parse_double(const char *s, double *out)
{
  /* strtod also takes "nan", "inf", hex floats and leading blanks; plain decimals only here. */
  if(!*s || strspn(s, "0123456789.eE+-") != strlen(s))
    return -1;
  char *e;
  errno = 0;
  double v = strtod(s, &e);
  if(*e || errno == ERANGE || !isfinite(v))
    return -1;
  *out = v;
  return 0;
}

static bool valid_instance(const char *s)
{
  size_t n = strlen(s);
  if(n < 1 || n > 64)
    return false;
  return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

/* Splits "<instance>=<rate>" of evolution.rate_limits; returns the rate, or -1 when the entry
 * is not valid. The instance part is the first `*name_len` bytes. */
static double parse_instance_rate(const char *s, size_t *name_len)
{
  const char *eq = strchr(s, '=');
  char name[65], *end;
  double rate;
  if(!eq || eq == s || (size_t)(eq - s) >= sizeof name)
    return -1;
  memcpy(name, s, (size_t)(eq - s));
  name[eq - s] = '\0';
  if(!valid_instance(name) || !eq[1] || isspace((unsigned char)eq[1]))
    return -1;
  errno = 0;
  rate = strtod(eq + 1, &end);
  if(errno || *end || !(rate >= 0 && rate <= 1e6))
    return -1;
  *name_len = (size_t)(eq - s);
  return rate;
}

static bool valid_instance_rate(const char *s)
{
  size_t n;
  return parse_instance_rate(s, &n) >= 0;
}

int cfg_any_rate_limit(const struct cfg *cfg)
{
  if(cfg->evolution.rate_limit > 0)
    return 1;
  for(size_t i = 0; i < cfg->evolution.n_rate_limits; i++) {
    size_t n;
    if(parse_instance_rate(cfg->evolution.rate_limits[i], &n) > 0)
      return 1;
  }
  return 0;
}

double cfg_instance_rate(const struct cfg *cfg, const char *instance)
{
  size_t want = strlen(instance);
  for(size_t i = 0; i < cfg->evolution.n_rate_limits; i++) {
    size_t n;
    double rate = parse_instance_rate(cfg->evolution.rate_limits[i], &n);
    if(rate >= 0 && n == want && !memcmp(cfg->evolution.rate_limits[i], instance, n))
      return rate;
  }
  return cfg->evolution.rate_limit;
}

/* The part after "scheme://" of an amqp(s) or http(s) URL: [userinfo@]host[:port] then an
 * optional path; the host a name, an IPv4 address or an [IPv6] literal, the port 1-65535. */
static bool valid_url_rest(const char *s, const char *p)
{
  const char *auth_end, *host, *host_end, *at = NULL;
  for(const char *c = s; *c; c++)
    if((unsigned char)*c <= ' ' || *c == 0x7f || *c == ',')
      return false;
  auth_end = p + strcspn(p, "/?#");
  for(const char *c = p; c < auth_end; c++)
    if(*c == '@')
      at = c;
  host = at ? at + 1 : p;
  if(*host == '[') {
    host_end = memchr(host, ']', (size_t)(auth_end - host));
    if(!host_end || host_end == host + 1)
      return false;
    host_end++;
  }
  else {
    host_end = host;
    while(host_end < auth_end && *host_end != ':')
      host_end++;
    if(host_end == host || !valid_host(host, (size_t)(host_end - host)))
      return false;
  }
  if(host_end < auth_end) {
    /* ":port": digits only, 1-65535 (an empty port means the default, as rabbitmq-c reads it). */
    unsigned long port = 0;
    const char *c = host_end + 1;
    if(*host_end != ':')
      return false;
    if(c == auth_end)
      return true;
    for(; c < auth_end; c++) {
      if(*c < '0' || *c > '9')
        return false;
      port = port * 10 + (unsigned long)(*c - '0');
      if(port > 65535)
        return false;
    }
    if(port == 0)
      return false;
  }
  return true;
}

bool cfg_valid_amqp_url(const char *s)
{
  if(!strncasecmp(s, "amqp://", 7))
    return valid_url_rest(s, s + 7);
  if(!strncasecmp(s, "amqps://", 8))
    return valid_url_rest(s, s + 8);
  return false;
}

static bool valid_url(const struct key *k, const char *s)
{
  for(const char *const *sc = k->schemes; *sc; sc++) {
    size_t n = strlen(*sc);
    if(!strncasecmp(s, *sc, n))
      return valid_url_rest(s, s + n);
  }
  return false;
}

/* Human form of a bound: the largest unit that divides it, so "24h" rather than "1d". */
static void sb_duration(struct sbuf *b, uint64_t ms)
{
  if(ms == 0)
    sb_puts(b, "0s");
  else if(ms % MS_DAY == 0 && ms > MS_DAY)
    sb_printf(b, "%llud", (unsigned long long)(ms / MS_DAY));
  else if(ms % MS_HOUR == 0)
    sb_printf(b, "%lluh", (unsigned long long)(ms / MS_HOUR));
  else if(ms % MS_MINUTE == 0)
    sb_printf(b, "%llum", (unsigned long long)(ms / MS_MINUTE));
  else if(ms % MS_SECOND == 0)
    sb_printf(b, "%llus", (unsigned long long)(ms / MS_SECOND));
  else
    sb_printf(b, "%llums", (unsigned long long)ms);
}

static void sb_size(struct sbuf *b, uint64_t v)
{
  if(v && v % (1024 * MIB) == 0)
    sb_printf(b, "%lluGiB", (unsigned long long)(v / (1024 * MIB)));
  else if(v && v % MIB == 0)
    sb_printf(b, "%lluMiB", (unsigned long long)(v / MIB));
  else if(v && v % KIB == 0)
    sb_printf(b, "%lluKiB", (unsigned long long)(v / KIB));
  else
    sb_printf(b, "%lluB", (unsigned long long)v);
}

/* What a key (or, with elem, one element of a list key) expects, for "expected <this>". */
static void sb_expected(struct sbuf *b, const struct key *k, bool elem)
{
  switch(k->type) {
  case K_STR:
    sb_puts(b, "a string");
    break;
  case K_NONEMPTY:
    sb_puts(b, "a non-empty string");
    if(k->max)
      sb_printf(b, " of at most %llu bytes", (unsigned long long)k->max);
    break;
  case K_BOOL:
    sb_puts(b, "a boolean (true/false, yes/no, on/off)");
    break;
  case K_UINT:
  case K_COUNT:
    sb_printf(b, "an integer between %llu and %llu", (unsigned long long)k->min,
              (unsigned long long)k->max);
    break;
  case K_DOUBLE:
    sb_printf(b, "a number between %.15g and %.15g", k->dmin, k->dmax);
    break;
  case K_DURATION:
  case K_DURATION_LIST:
    if(k->type == K_DURATION_LIST && !elem) {
      sb_printf(b, "a list of at most %zu durations", k->max_n);
      break;
    }
    sb_puts(b, "a duration (e.g. 250ms, 5s, 2m, 24h) between ");
    sb_duration(b, k->min);
    sb_puts(b, " and ");
    sb_duration(b, k->max);
    if(k->flags & F_ZERO_OK)
      sb_puts(b, " or 0");
    break;
  case K_SIZE:
    sb_puts(b, "a size (e.g. 512KiB, 1MiB) between ");
    sb_size(b, k->min);
    sb_puts(b, " and ");
    sb_size(b, k->max);
    break;
  case K_ENUM:
    sb_puts(b, "one of ");
    for(const struct enum_name *e = k->names; e->name; e++)
      sb_printf(b, "%s%s", e == k->names ? "" : ", ", e->name);
    break;
  case K_LISTEN:
    sb_puts(b, "host:port");
    break;
  case K_URL:
    sb_puts(b, "an ");
    for(const char *const *s = k->schemes; *s; s++)
      sb_printf(b, "%s%s", s == k->schemes ? "" : " or ", *s);
    sb_puts(b, " URL");
    break;
  case K_INSTANCE:
    sb_puts(b, "an instance name of 1-64 characters from A-Z a-z 0-9 . _ -");
    break;
  case K_TENANTS:
    sb_puts(b, "a list of {name, key or key_file, instances, scopes}");
    break;
  case K_STR_LIST:
    if(k->elem_expect)
      sb_printf(b, elem ? "%s" : "a list of %s", k->elem_expect);
    else
      sb_puts(b, elem ? "a non-empty string" : "a list of non-empty strings");
    break;
  }
}

/* The "got ..." part: the value quoted, unless it is a secret. */
static void sb_shown(struct sbuf *b, const struct key *k, const char *v, size_t n)
{
  if((k->flags & F_SECRET) && n) {
    sb_puts(b, REDACTED);
    return;
  }
  if(k->flags & F_SECRET_URL) {
    /* Hide everything between the scheme and the last '@': user and password. */
    const char *at = NULL;
    for(size_t i = 0; i < n; i++)
      if(v[i] == '@')
        at = v + i;
    if(at) {
      const char *start = v;
      for(size_t i = 0; i + 3 <= (size_t)(at - v); i++)
        if(!memcmp(v + i, "://", 3)) {
          start = v + i + 3;
          break;
        }
      struct sbuf t = {0};
      sb_putn(&t, v, (size_t)(start - v));
      sb_puts(&t, REDACTED);
      sb_putn(&t, at, n - (size_t)(at - v));
      if(t.oom)
        b->oom = true;
      else
        sb_quote(b, t.p, t.len);
      free(t.p);
      return;
    }
  }
  sb_quote(b, v, n);
}

/* ---------------------------------------------------------------------------------------------
 * Storing values into struct cfg.
 */
enum { SET_OK = 0, SET_BAD = -1, SET_OOM = -2 };

static void *field_of(struct cfg *cfg, size_t off)
{
  return (char *)cfg + off;
}

static int set_string(struct cfg *cfg, const struct key *k, const char *s)
{
  size_t n = strlen(s);
  if((k->flags & F_STRIP_SLASH) && n && s[n - 1] == '/')
    n--;
  char *copy = malloc(n + 1);
  if(!copy)
    return SET_OOM;
  memcpy(copy, s, n);
  copy[n] = '\0';
  char **f = field_of(cfg, k->off);
  free(*f);
  *f = copy;
  return SET_OK;
}

/* Converts one scalar of a non-list key and stores it; the field is untouched on failure. */
static int set_value(struct cfg *cfg, const struct key *k, const char *s)
{
  void *f = field_of(cfg, k->off);
  uint64_t v;
  const char *end;
  switch(k->type) {
  case K_STR:
    return set_string(cfg, k, s);
  case K_NONEMPTY:
    if(!*s || (k->max && strlen(s) > k->max))
      return SET_BAD;
    return set_string(cfg, k, s);
  case K_BOOL: {
    bool b;
    if(parse_bool(s, &b))
      return SET_BAD;
    *(bool *)f = b;
    return SET_OK;
  }
  case K_UINT:
  case K_COUNT:
    if(parse_digits(s, &end, &v) || *end || v < k->min || v > k->max)
      return SET_BAD;
    if(k->type == K_UINT)
      *(unsigned *)f = (unsigned)v;
    else
      *(size_t *)f = (size_t)v;
    return SET_OK;
  case K_DOUBLE: {
    double d;
    if(parse_double(s, &d) || d < k->dmin || d > k->dmax)
      return SET_BAD;
    *(double *)f = d;
    return SET_OK;
  }
  case K_DURATION:
    /* A bare "0" reads naturally for "off", so it is taken although "5" is not. */
    if((k->flags & F_ZERO_OK) && !strcmp(s, "0"))
      v = 0;
    else if(cfg_parse_duration(s, &v))
      return SET_BAD;
    if(!(v == 0 && (k->flags & F_ZERO_OK)) && (v < k->min || v > k->max))
      return SET_BAD;
    *(uint64_t *)f = v;
    return SET_OK;
  case K_SIZE:
    if(cfg_parse_size(s, &v) || v < k->min || v > k->max || v > SIZE_MAX)
      return SET_BAD;
    *(size_t *)f = (size_t)v;
    return SET_OK;
  case K_ENUM:
    for(const struct enum_name *e = k->names; e->name; e++)
      if(!strcasecmp(s, e->name)) {
        *(int *)f = e->value;
        return SET_OK;
      }
    return SET_BAD;
  case K_LISTEN:
    if(cfg_split_listen(s, NULL, NULL))
      return SET_BAD;
    return set_string(cfg, k, s);
  case K_URL:
    if(!valid_url(k, s))
      return SET_BAD;
    return set_string(cfg, k, s);
  case K_INSTANCE:
    if(!valid_instance(s))
      return SET_BAD;
    return set_string(cfg, k, s);
  case K_STR_LIST:
  case K_DURATION_LIST:
  case K_TENANTS:
    break; /* lists go through set_list, tenants through apply_tenants */
  }
  return SET_BAD;
}

/* Validates one element of a list key into slot i of the new array. */
static int set_elem(const struct key *k, void *arr, size_t i, const char *s)
{
  if(k->type == K_STR_LIST) {
    if(!*s || (k->elem_check && !k->elem_check(s)))
      return SET_BAD;
    char *copy = strdup(s);
    if(!copy)
      return SET_OOM;
    ((char **)arr)[i] = copy;
    return SET_OK;
  }
  uint64_t v;
  if(cfg_parse_duration(s, &v) || v < k->min || v > k->max)
    return SET_BAD;
  ((uint64_t *)arr)[i] = v;
  return SET_OK;
}

static void free_list(const struct key *k, void *arr, size_t n)
{
  if(k->type == K_STR_LIST)
    for(size_t i = 0; i < n; i++)
      free(((char **)arr)[i]);
  free(arr);
}

static void *new_list(const struct key *k, size_t n)
{
  size_t elem = k->type == K_STR_LIST ? sizeof(char *) : sizeof(uint64_t);
  return calloc(n ? n : 1, elem);
}

/* Replaces a list field by arr (n entries); arr is owned by the cfg afterwards. */
static void commit_list(struct cfg *cfg, const struct key *k, void *arr, size_t n)
{
  void **f = field_of(cfg, k->off);
  size_t *fn = field_of(cfg, k->off_n);
  free_list(k, *f, *fn);
  *f = n ? arr : NULL;
  *fn = n;
  if(!n)
    free(arr);
}

/* ---------------------------------------------------------------------------------------------
 * Error collection: every problem gets a position, the lot is sorted into file order at the end.
 */
struct err {
  size_t line, col, seq;
  char *msg;
};

struct loader {
  const char *path;
  struct cfg *cfg;
  struct err *errs;
  size_t n_errs, cap_errs, seq;
  bool oom;
  yaml_parser_t parser;
};

/* Environment errors have no position; they sort after the file's. */
#define LINE_ENV SIZE_MAX

static void add_err(struct loader *L, size_t line, size_t col, struct sbuf *msg)
{
  if(msg->oom || L->oom) {
    L->oom = true;
    free(msg->p);
    return;
  }
  if(L->n_errs == L->cap_errs) {
    size_t cap = L->cap_errs ? 2 * L->cap_errs : 8;
    struct err *e = realloc(L->errs, cap * sizeof(*e));
    if(!e) {
      L->oom = true;
      free(msg->p);
      return;
    }
    L->errs = e;
    L->cap_errs = cap;
  }
  L->errs[L->n_errs++] = (struct err){line, col, L->seq++, msg->p};
  msg->p = NULL;
}

static void errf(struct loader *L, size_t line, size_t col, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));
static void errf(struct loader *L, size_t line, size_t col, const char *fmt, ...)
{
  struct sbuf b = {0};
  if(line == LINE_ENV)
    ; /* the message names the variable itself */
  else if(line == 0)
    sb_printf(&b, "%s: ", L->path);
  else
    sb_printf(&b, "%s:%zu:%zu: ", L->path, line, col);
  va_list ap;
  va_start(ap, fmt);
  sb_vprintf(&b, fmt, ap);
  va_end(ap);
  add_err(L, line, col, &b);
}

static int cmp_err(const void *a, const void *b)
{
  const struct err *x = a, *y = b;
  if(x->line != y->line)
    return x->line < y->line ? -1 : 1;
  if(x->col != y->col)
    return x->col < y->col ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* ---------------------------------------------------------------------------------------------
 * YAML events -> a small tree. Building our own tree (rather than the document API) keeps the
 * position of aliases and anchors, which the document API resolves away.
 */
enum nkind { N_SCALAR, N_MAP, N_SEQ, N_ALIAS };

struct ynode {
  enum nkind kind;
  bool anchored;
  bool plain; /* unquoted scalar */
  char *text; /* scalars: NUL-terminated copy; may hold NULs too, hence len */
  size_t len;
  size_t line, col; /* 1-based */
  struct ynode **kids; /* mappings: key, value, key, value...; sequences: items */
  size_t n, cap;
};

static void node_free(struct ynode *n)
{
  if(!n)
    return;
  for(size_t i = 0; i < n->n; i++)
    node_free(n->kids[i]);
  free(n->kids);
  free(n->text);
  free(n);
}

static int add_kid(struct ynode *parent, struct ynode *kid)
{
  if(parent->n == parent->cap) {
    size_t cap = parent->cap ? 2 * parent->cap : 8;
    struct ynode **k = realloc(parent->kids, cap * sizeof(*k));
    if(!k)
      return -1;
    parent->kids = k;
    parent->cap = cap;
  }
  parent->kids[parent->n++] = kid;
  return 0;
}

static void parser_error(struct loader *L)
{
  yaml_parser_t *p = &L->parser;
  if(p->error == YAML_MEMORY_ERROR) {
    L->oom = true;
  }
  else if(p->error == YAML_READER_ERROR) {
    /* The reader's marks stay at 0; the offset is the useful position. */
    errf(L, 0, 0, "%s at byte %zu", p->problem ? p->problem : "cannot read", p->problem_offset);
  }
  else {
    errf(L, p->problem_mark.line + 1, p->problem_mark.column + 1, "%s%s%s",
         p->problem ? p->problem : "invalid YAML", p->context ? ", " : "",
         p->context ? p->context : "");
  }
}

static int next_event(struct loader *L, yaml_event_t *ev)
{
  if(!yaml_parser_parse(&L->parser, ev)) {
    parser_error(L);
    return -1;
  }
  return 0;
}

/* Builds the node that starts with *ev (consumed here) and everything up to its end event.
 * Returns -1 after a syntax error or OOM (already recorded); *out is then NULL. */
static int build(struct loader *L, yaml_event_t *ev, int depth, struct ynode **out)
{
  *out = NULL;
  struct ynode *n = calloc(1, sizeof(*n));
  if(!n) {
    yaml_event_delete(ev);
    L->oom = true;
    return -1;
  }
  n->line = ev->start_mark.line + 1;
  n->col = ev->start_mark.column + 1;
  yaml_event_type_t end_type = YAML_NO_EVENT;
  switch(ev->type) {
  case YAML_SCALAR_EVENT:
    n->kind = N_SCALAR;
    n->anchored = ev->data.scalar.anchor != NULL;
    n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    n->len = ev->data.scalar.length;
    n->text = malloc(n->len + 1);
    if(!n->text) {
      L->oom = true;
      goto fail;
    }
    memcpy(n->text, ev->data.scalar.value, n->len);
    n->text[n->len] = '\0';
    break;
  case YAML_ALIAS_EVENT:
    n->kind = N_ALIAS;
    break;
  case YAML_MAPPING_START_EVENT:
    n->kind = N_MAP;
    n->anchored = ev->data.mapping_start.anchor != NULL;
    end_type = YAML_MAPPING_END_EVENT;
    break;
  case YAML_SEQUENCE_START_EVENT:
    n->kind = N_SEQ;
    n->anchored = ev->data.sequence_start.anchor != NULL;
    end_type = YAML_SEQUENCE_END_EVENT;
    break;
  default:
    /* The parser only hands out node events here. */
    errf(L, n->line, n->col, "unexpected YAML event");
    goto fail;
  }
  yaml_event_delete(ev);
  if(end_type != YAML_NO_EVENT) {
    if(depth >= MAX_DEPTH) {
      errf(L, n->line, n->col, "nesting deeper than %d levels", MAX_DEPTH);
      goto fail;
    }
    for(;;) {
      struct ynode *kid;
      if(next_event(L, ev))
        goto fail;
      if(ev->type == end_type) {
        yaml_event_delete(ev);
        break;
      }
      if(build(L, ev, depth + 1, &kid))
        goto fail;
      if(add_kid(n, kid)) {
        node_free(kid);
        L->oom = true;
        goto fail;
      }
    }
  }
  *out = n;
  return 0;
fail:
  if(ev->type != YAML_NO_EVENT)
    yaml_event_delete(ev);
  node_free(n);
  return -1;
}

/* Parses the whole stream into *root (NULL for an empty stream). Returns -1 when the file
 * cannot be used at all; the reason is recorded. */
static int parse_tree(struct loader *L, struct ynode **root)
{
  yaml_event_t ev;
  *root = NULL;
  if(next_event(L, &ev))
    return -1;
  yaml_event_delete(&ev); /* STREAM-START */
  if(next_event(L, &ev))
    return -1;
  if(ev.type == YAML_STREAM_END_EVENT) {
    yaml_event_delete(&ev);
    return 0;
  }
  yaml_event_delete(&ev); /* DOCUMENT-START */
  if(next_event(L, &ev))
    return -1;
  if(build(L, &ev, 0, root))
    return -1;
  if(next_event(L, &ev))
    goto fail;
  yaml_event_delete(&ev); /* DOCUMENT-END */
  if(next_event(L, &ev))
    goto fail;
  if(ev.type == YAML_DOCUMENT_START_EVENT) {
    errf(L, ev.start_mark.line + 1, ev.start_mark.column + 1,
         "multiple documents are not supported");
    yaml_event_delete(&ev);
    goto fail;
  }
  yaml_event_delete(&ev); /* STREAM-END */
  return 0;
fail:
  node_free(*root);
  *root = NULL;
  return -1;
}

/* ---------------------------------------------------------------------------------------------
 * ${VAR} expansion.
 */
enum { EXP_OK = 0, EXP_UNSET = 1, EXP_SYNTAX = 2, EXP_OOM = -1 };

/* Expands ${VAR}, ${VAR:-default} and $$ in s. On EXP_OK *out is malloc'd; on EXP_UNSET *name is
 * the missing variable, malloc'd. A '$' followed by anything else stays literal, so passwords
 * holding a '$' need no escaping. */
static int expand_env(const char *s, char **out, char **name)
{
  struct sbuf b = {0};
  int rc = EXP_OK;
  sb_puts(&b, "");
  while(*s) {
    if(s[0] != '$' || (s[1] != '$' && s[1] != '{')) {
      sb_putn(&b, s++, 1);
      continue;
    }
    if(s[1] == '$') {
      sb_putn(&b, "$", 1);
      s += 2;
      continue;
    }
    const char *nm = s + 2;
    size_t nlen = 0;
    if(isalpha((unsigned char)nm[0]) || nm[0] == '_')
      while(isalnum((unsigned char)nm[nlen]) || nm[nlen] == '_')
        nlen++;
    const char *def = NULL, *close;
    if(nlen && nm[nlen] == '}') {
      close = nm + nlen;
    }
    else if(nlen && nm[nlen] == ':' && nm[nlen + 1] == '-') {
      def = nm + nlen + 2;
      close = strchr(def, '}');
    }
    else {
      close = NULL;
    }
    if(!close) {
      rc = EXP_SYNTAX;
      goto fail;
    }
    char *var = strndup(nm, nlen);
    if(!var) {
      rc = EXP_OOM;
      goto fail;
    }
    const char *val = getenv(var);
    if(def && (!val || !*val)) {
      sb_putn(&b, def, (size_t)(close - def));
      free(var);
    }
    else if(!val) {
      *name = var;
      rc = EXP_UNSET;
      goto fail;
    }
    else {
      sb_puts(&b, val);
      free(var);
    }
    s = close + 1;
  }
  if(b.oom) {
    rc = EXP_OOM;
    goto fail;
  }
  *out = b.p;
  return EXP_OK;
fail:
  free(b.p);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Tree -> struct cfg, generically over KEYS.
 */
static const char *kind_name(const struct ynode *n)
{
  return n->kind == N_MAP ? "a mapping" : n->kind == N_SEQ ? "a list" : "an alias";
}

/* Reports the node as found, after "got ". */
static void sb_got(struct sbuf *b, const struct key *k, const struct ynode *v)
{
  if(v->kind == N_SCALAR)
    sb_shown(b, k, v->text, v->len);
  else
    sb_puts(b, kind_name(v));
}

static void err_expected(struct loader *L, const struct ynode *at, const char *kpath,
                         const struct key *k, bool elem, const struct ynode *got,
                         const char *text)
{
  struct sbuf b = {0};
  sb_printf(&b, "%s:%zu:%zu: %s: expected ", L->path, at->line, at->col, kpath);
  sb_expected(&b, k, elem);
  sb_puts(&b, ", got ");
  if(text)
    sb_shown(&b, k, text, strlen(text));
  else
    sb_got(&b, k, got);
  add_err(L, at->line, at->col, &b);
}

/* Anchors and aliases are refused: a config is read by people, and the document would no longer
 * say what each key holds. Returns true when v must be skipped. */
static bool check_alias(struct loader *L, const struct ynode *v, const char *kpath)
{
  if(v->kind == N_ALIAS) {
    errf(L, v->line, v->col, "%s: YAML aliases are not supported", kpath);
    return true;
  }
  if(v->anchored)
    errf(L, v->line, v->col, "%s: YAML anchors are not supported", kpath);
  return false;
}

/* Expands a scalar node; returns the new string or NULL after reporting why. */
static char *expand_node(struct loader *L, const struct key *k, const struct ynode *v,
                         const char *kpath)
{
  char *out = NULL, *name = NULL;
  if(strlen(v->text) != v->len) {
    err_expected(L, v, kpath, k, true, v, NULL);
    return NULL;
  }
  switch(expand_env(v->text, &out, &name)) {
  case EXP_OK:
    return out;
  case EXP_UNSET:
    errf(L, v->line, v->col, "%s: environment variable %s is not set", kpath, name);
    free(name);
    return NULL;
  case EXP_SYNTAX:
    errf(L, v->line, v->col,
         "%s: expected ${NAME} or ${NAME:-default} after \"${\" (write $$ for a literal $)",
         kpath);
    return NULL;
  default:
    L->oom = true;
    return NULL;
  }
}

/* A list key's value must be a list of at most max_n entries; false after reporting. */
static bool is_list_of(struct loader *L, const struct key *k, const struct ynode *v,
                       const char *kpath)
{
  if(v->kind != N_SEQ) {
    err_expected(L, v, kpath, k, false, v, NULL);
    return false;
  }
  if(v->n > k->max_n) {
    errf(L, v->line, v->col, "%s: expected at most %zu entries, got %zu", kpath, k->max_n, v->n);
    return false;
  }
  return true;
}

static void apply_list(struct loader *L, const struct key *k, const struct ynode *v,
                       const char *kpath)
{
  if(!is_list_of(L, k, v, kpath))
    return;
  void *arr = new_list(k, v->n);
  if(!arr) {
    L->oom = true;
    return;
  }
  bool ok = true;
  for(size_t i = 0; i < v->n; i++) {
    const struct ynode *e = v->kids[i];
    struct sbuf ep = {0};
    sb_printf(&ep, "%s[%zu]", kpath, i);
    if(ep.oom) {
      L->oom = true;
      ok = false;
      break;
    }
    if(check_alias(L, e, ep.p)) {
      ok = false;
    }
    else if(e->kind != N_SCALAR) {
      err_expected(L, e, ep.p, k, true, e, NULL);
      ok = false;
    }
    else {
      char *s = expand_node(L, k, e, ep.p);
      if(!s) {
        ok = false;
      }
      else {
        int rc = set_elem(k, arr, i, s);
        if(rc == SET_OOM)
          L->oom = true;
        else if(rc == SET_BAD)
          err_expected(L, e, ep.p, k, true, e, s);
        if(rc)
          ok = false;
        free(s);
      }
    }
    free(ep.p);
  }
  if(ok)
    commit_list(L->cfg, k, arr, v->n);
  else
    free_list(k, arr, v->n);
}

static void apply_scalar(struct loader *L, const struct key *k, const struct ynode *v,
                         const char *kpath)
{
  if(v->kind != N_SCALAR) {
    err_expected(L, v, kpath, k, false, v, NULL);
    return;
  }
  char *s = expand_node(L, k, v, kpath);
  if(!s)
    return;
  int rc = set_value(L->cfg, k, s);
  if(rc == SET_OOM)
    L->oom = true;
  else if(rc == SET_BAD)
    err_expected(L, v, kpath, k, false, v, s);
  free(s);
}

static bool is_null(const struct ynode *v)
{
  return v->kind == N_SCALAR && v->plain &&
         (v->len == 0 || !strcmp(v->text, "~") || !strcmp(v->text, "null"));
}

static void apply_tenants(struct loader *L, const struct key *k, const struct ynode *v,
                          const char *kpath);

static void walk_mapping(struct loader *L, const struct ynode *m, const char *prefix)
{
  for(size_t i = 0; i + 1 < m->n; i += 2) {
    const struct ynode *kn = m->kids[i], *v = m->kids[i + 1];
    if(kn->kind != N_SCALAR) {
      errf(L, kn->line, kn->col, "%s%sexpected a key name, got %s", prefix, *prefix ? ": " : "",
           kind_name(kn));
      continue;
    }
    struct sbuf p = {0};
    sb_printf(&p, "%s%s%.*s", prefix, *prefix ? "." : "", (int)kn->len, kn->text);
    if(p.oom) {
      free(p.p);
      L->oom = true;
      return;
    }
    const char *kpath = p.p;
    bool dup = false;
    for(size_t j = 0; j < i && !dup; j += 2) {
      const struct ynode *o = m->kids[j];
      if(o->kind == N_SCALAR && o->len == kn->len && !memcmp(o->text, kn->text, kn->len)) {
        errf(L, kn->line, kn->col, "%s: duplicate key (first defined at line %zu)", kpath,
             o->line);
        dup = true;
      }
    }
    /* A key with a '.' or a NUL would otherwise match a nested key of the table. */
    bool odd = memchr(kn->text, '.', kn->len) || strlen(kn->text) != kn->len;
    const struct key *k = odd ? NULL : find_key(kpath);
    if(!dup && kn->anchored)
      errf(L, kn->line, kn->col, "%s: YAML anchors are not supported", kpath);
    if(dup) {
      /* Reported; the second value is not looked at. */
    }
    else if(k) {
      if(!check_alias(L, v, kpath)) {
        if(k->type == K_TENANTS)
          apply_tenants(L, k, v, kpath);
        else if(k->type == K_STR_LIST || k->type == K_DURATION_LIST)
          apply_list(L, k, v, kpath);
        else
          apply_scalar(L, k, v, kpath);
      }
    }
    else if(!odd && is_section(kpath)) {
      if(check_alias(L, v, kpath))
        ; /* reported */
      else if(v->kind == N_MAP)
        walk_mapping(L, v, kpath);
      else if(!is_null(v)) {
        /* An empty section ("log:" with every key commented out) is fine. */
        struct sbuf b = {0};
        sb_printf(&b, "%s:%zu:%zu: %s: expected a mapping, got ", L->path, v->line, v->col,
                  kpath);
        if(v->kind == N_SCALAR)
          sb_quote(&b, v->text, v->len);
        else
          sb_puts(&b, kind_name(v));
        add_err(L, v->line, v->col, &b);
      }
    }
    else {
      errf(L, kn->line, kn->col, "%s: unknown key", kpath);
    }
    free(p.p);
  }
}

/* ---------------------------------------------------------------------------------------------
 * Defaults and environment overrides.
 */
static int apply_defaults(struct loader *L)
{
  for(size_t i = 0; i < N_KEYS; i++) {
    const struct key *k = &KEYS[i];
    int rc = SET_OK;
    if(k->type == K_TENANTS)
      continue; /* none by default */
    if(k->type == K_STR_LIST || k->type == K_DURATION_LIST) {
      size_t n = 0;
      while(k->def_list[n])
        n++;
      void *arr = new_list(k, n);
      if(!arr)
        return SET_OOM;
      for(size_t j = 0; j < n && !rc; j++)
        rc = set_elem(k, arr, j, k->def_list[j]);
      if(rc) {
        free_list(k, arr, n);
      }
      else
        commit_list(L->cfg, k, arr, n);
    }
    else {
      rc = set_value(L->cfg, k, k->def);
    }
    if(rc == SET_BAD)
      errf(L, 0, 0, "%s: built-in default is invalid (a bug)", k->name);
    else if(rc)
      return rc;
  }
  return SET_OK;
}

static const char *env(const char *name)
{
  const char *v = getenv(name);
  return v && *v ? v : NULL; /* an empty variable counts as unset */
}

static void env_expected(struct loader *L, const char *var, const struct key *k, const char *v)
{
  struct sbuf b = {0};
  sb_printf(&b, "$%s: expected ", var);
  sb_expected(&b, k, false);
  sb_puts(&b, ", got ");
  sb_shown(&b, k, v, strlen(v));
  add_err(L, LINE_ENV, 0, &b);
}

/* APP_HOST and APP_PORT each replace one half of api.listen. */
static void apply_app_listen(struct loader *L)
{
  const char *eh = env("APP_HOST"), *ep = env("APP_PORT");
  char *host = NULL;
  unsigned port;
  struct sbuf b = {0};
  if(!eh && !ep)
    return;
  if(cfg_split_listen(L->cfg->api.listen, &host, &port))
    goto fail; /* only after a bad file value, already reported */
  if(eh) {
    size_t n = strlen(eh);
    bool bracketed = n && eh[0] == '[';
    /* A bare IPv6 address is accepted and bracketed for the host:port form. */
    struct sbuf h = {0};
    sb_printf(&h, "%s%s%s", !bracketed && strchr(eh, ':') ? "[" : "", eh,
              !bracketed && strchr(eh, ':') ? "]" : "");
    if(h.oom) {
      L->oom = true;
      goto fail;
    }
    if(!h.len || !valid_host(h.p, h.len)) {
      struct sbuf e = {0};
      sb_puts(&e, "$APP_HOST: expected a host name, an IPv4 address or an IPv6 address, got ");
      sb_quote(&e, eh, n);
      add_err(L, LINE_ENV, 0, &e);
      free(h.p);
      goto fail;
    }
    free(host);
    host = h.p; /* kept with brackets, ready to print */
  }
  else if(strchr(host, ':')) {
    char *h = NULL;
    if(asprintf(&h, "[%s]", host) < 0) {
      L->oom = true;
      goto fail;
    }
    free(host);
    host = h;
  }
  if(ep && parse_port(ep, &port)) {
    struct sbuf e = {0};
    sb_puts(&e, "$APP_PORT: expected a port 1-65535, got ");
    sb_quote(&e, ep, strlen(ep));
    add_err(L, LINE_ENV, 0, &e);
    goto fail;
  }
  sb_printf(&b, "%s:%u", host, port);
  if(b.oom) {
    L->oom = true;
    goto fail;
  }
  free(L->cfg->api.listen);
  L->cfg->api.listen = b.p;
  b.p = NULL;
fail:
  free(b.p);
  free(host);
}

/* $AMQP_URL: one broker URL, or several separated by commas (a cluster); it replaces both
 * broker.url and broker.urls. */
static void apply_amqp_url(struct loader *L)
{
  const struct key *k = find_key("broker.urls");
  const char *v = env("AMQP_URL"), *p;
  struct cfg *c = L->cfg;
  char **list;
  size_t n = 1, i = 0;
  if(!v)
    return;
  for(p = v; *p; p++)
    n += *p == ',';
  if(n > k->max_n) {
    env_expected(L, "AMQP_URL", k, v);
    return;
  }
  list = new_list(k, n);
  if(!list) {
    L->oom = true;
    return;
  }
  for(p = v;; p++) {
    size_t len = strcspn(p, ",");
    const char *b = p, *e = p + len;
    while(b < e && (*b == ' ' || *b == '\t'))
      b++;
    while(e > b && (e[-1] == ' ' || e[-1] == '\t'))
      e--;
    if(!(list[i] = strndup(b, (size_t)(e - b)))) {
      L->oom = true;
      free_list(k, list, i);
      return;
    }
    if(!cfg_valid_amqp_url(list[i++])) {
      struct sbuf m = {0};
      sb_puts(&m, "$AMQP_URL: expected an amqp:// or amqps:// URL, or several separated by "
                  "commas, got ");
      sb_shown(&m, k, list[i - 1], strlen(list[i - 1]));
      add_err(L, LINE_ENV, 0, &m);
      free_list(k, list, i);
      return;
    }
    p += len;
    if(!*p)
      break;
  }
  {
    /* broker.url follows, for whatever reads the single address. */
    char *first = strdup(list[0]);
    if(!first) {
      L->oom = true;
      free_list(k, list, n);
      return;
    }
    free(c->broker.url);
    c->broker.url = first;
  }
  commit_list(c, k, list, n);
}

/* Every daemon reads its addresses from broker.urls: a lone broker.url becomes its only entry. */
static void settle_broker_urls(struct loader *L)
{
  struct cfg *c = L->cfg;
  if(c->broker.n_urls)
    return;
  c->broker.urls = calloc(1, sizeof *c->broker.urls);
  if(!c->broker.urls || !(c->broker.urls[0] = strdup(c->broker.url))) {
    L->oom = true;
    return;
  }
  c->broker.n_urls = 1;
}

static void apply_env(struct loader *L)
{
  apply_amqp_url(L);
  for(size_t i = 0; i < sizeof(ENV_OVERRIDES) / sizeof(ENV_OVERRIDES[0]); i++) {
    const char *v = env(ENV_OVERRIDES[i].var);
    if(!v)
      continue;
    const struct key *k = find_key(ENV_OVERRIDES[i].key);
    int rc = set_value(L->cfg, k, v);
    if(rc == SET_OOM)
      L->oom = true;
    else if(rc == SET_BAD)
      env_expected(L, ENV_OVERRIDES[i].var, k, v);
  }
  apply_app_listen(L);
}

/* ---------------------------------------------------------------------------------------------
 * Entry points.
 */
void cfg_free(struct cfg *cfg)
{
  if(!cfg)
    return;
  for(size_t i = 0; i < N_KEYS; i++) {
    const struct key *k = &KEYS[i];
    void *f = field_of(cfg, k->off);
    switch(k->type) {
    case K_STR:
    case K_NONEMPTY:
    case K_LISTEN:
    case K_URL:
    case K_INSTANCE:
      free(*(char **)f);
      break;
    case K_STR_LIST:
    case K_DURATION_LIST:
      free_list(k, *(void **)f, *(size_t *)field_of(cfg, k->off_n));
      break;
    case K_TENANTS:
      cfg_tenants_free(*(struct cfg_tenant **)f, *(size_t *)field_of(cfg, k->off_n));
      break;
    default:
      break;
    }
  }
  free(cfg->path);
  free(cfg);
}

/* Reads the whole file so that read errors (a directory, EIO) are told apart from YAML ones. */
static int read_file(struct loader *L, char **buf, size_t *len)
{
  struct sbuf b = {0};
  FILE *f = fopen(L->path, "rb");
  if(!f) {
    errf(L, 0, 0, "cannot open: %s", strerror(errno));
    return -1;
  }
  char chunk[8192];
  size_t n;
  sb_puts(&b, "");
  while((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
    sb_putn(&b, chunk, n);
    if(b.len > MAX_FILE_SIZE) {
      errf(L, 0, 0, "file is larger than %u bytes", MAX_FILE_SIZE);
      goto fail;
    }
  }
  if(ferror(f)) {
    errf(L, 0, 0, "cannot read: %s", strerror(errno));
    goto fail;
  }
  if(b.oom) {
    L->oom = true;
    goto fail;
  }
  fclose(f);
  *buf = b.p;
  *len = b.len;
  return 0;
fail:
  fclose(f);
  free(b.p);
  return -1;
}

/* Joins the sorted errors; NULL only when memory ran out even for that. */
static char *join_errors(struct loader *L)
{
  struct sbuf b = {0};
  if(L->oom) {
    sb_printf(&b, "%s: out of memory\n", L->path);
    return b.p;
  }
  qsort(L->errs, L->n_errs, sizeof(*L->errs), cmp_err);
  for(size_t i = 0; i < L->n_errs; i++) {
    sb_puts(&b, L->errs[i].msg);
    sb_puts(&b, "\n");
  }
  if(b.oom) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* Adds the keys of api.api_keys_file (one per line; blank lines and lines starting with '#'
 * skipped; surrounding whitespace trimmed) to api.api_keys, so keys can come from a mounted
 * Kubernetes Secret. The keys themselves never appear in an error. */
static void load_key_file(struct loader *L)
{
  struct cfg *c = L->cfg;
  FILE *f;
  char line[1024];
  size_t lineno = 0;
  if(!c->api.api_keys_file[0])
    return;
  f = fopen(c->api.api_keys_file, "r");
  if(!f) {
    errf(L, 0, 0, "api.api_keys_file: cannot read \"%s\": %s", c->api.api_keys_file,
         strerror(errno));
    return;
  }
  while(fgets(line, sizeof line, f)) {
    char *start = line, *end, **grown, *key;
    lineno++;
    if(!strchr(line, '\n') && !feof(f)) {
      errf(L, 0, 0, "api.api_keys_file: %s:%zu: line longer than %zu bytes",
           c->api.api_keys_file, lineno, sizeof line - 2);
      break;
    }
    while(*start == ' ' || *start == '\t')
      start++;
    end = start + strlen(start);
    while(end > start && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t'))
      *--end = '\0';
    if(!*start || *start == '#')
      continue;
    grown = realloc(c->api.api_keys, (c->api.n_api_keys + 1) * sizeof *grown);
    key = grown ? strdup(start) : NULL;
    if(grown)
      c->api.api_keys = grown;
    if(!key) {
      L->oom = true;
      break;
    }
    c->api.api_keys[c->api.n_api_keys++] = key;
  }
  fclose(f);
}

struct cfg *cfg_load(const char *path, char **errors)
{
  struct loader L = {.path = path ? path : "(no path)"};
  struct ynode *root = NULL;
  char *buf = NULL;
  size_t len = 0;
  bool parser_ready = false;
  struct cfg *cfg = NULL;

  L.cfg = calloc(1, sizeof(*L.cfg));
  if(!L.cfg) {
    L.oom = true;
    goto done;
  }
  L.cfg->path = strdup(L.path);
  if(!L.cfg->path || apply_defaults(&L)) {
    L.oom = true;
    goto done;
  }
  if(!path) {
    errf(&L, 0, 0, "no configuration file given");
    goto done;
  }
  if(read_file(&L, &buf, &len))
    goto done;
  if(!yaml_parser_initialize(&L.parser)) {
    L.oom = true;
    goto done;
  }
  parser_ready = true;
  yaml_parser_set_input_string(&L.parser, (const unsigned char *)buf, len);
  if(parse_tree(&L, &root))
    goto done;

  if(root && root->kind == N_MAP) {
    if(!check_alias(&L, root, "(top level)"))
      walk_mapping(&L, root, "");
  }
  else if(root && !is_null(root)) {
    struct sbuf b = {0};
    sb_printf(&b, "%s:%zu:%zu: expected a mapping at the top level, got ", L.path, root->line,
              root->col);
    if(root->kind == N_SCALAR)
      sb_quote(&b, root->text, root->len);
    else
      sb_puts(&b, kind_name(root));
    add_err(&L, root->line, root->col, &b);
  }
  apply_env(&L);
  if(L.n_errs == 0)
    load_key_file(&L);
  if(L.n_errs == 0 && !L.oom)
    settle_broker_urls(&L);

done:
  if(!L.oom && L.n_errs == 0) {
    cfg = L.cfg;
    L.cfg = NULL;
    if(errors)
      *errors = NULL;
  }
  else if(errors) {
    *errors = join_errors(&L);
  }
  for(size_t i = 0; i < L.n_errs; i++)
    free(L.errs[i].msg);
  free(L.errs);
  node_free(root);
  if(parser_ready)
    yaml_parser_delete(&L.parser);
  free(buf);
  cfg_free(L.cfg);
  return cfg;
}

/* ---------------------------------------------------------------------------------------------
 * api.keys: the tenants, a list of mappings the generic table cannot describe.
 */
static const struct enum_name SCOPES[] = {{"send", CFG_SCOPE_SEND},
                                          {"read", CFG_SCOPE_READ},
                                          {"cancel", CFG_SCOPE_CANCEL},
                                          {"admin", CFG_SCOPE_ADMIN},
                                          {NULL, 0}};

void cfg_tenants_free(struct cfg_tenant *t, size_t n)
{
  if(!t)
    return;
  for(size_t i = 0; i < n; i++) {
    free(t[i].name);
    free(t[i].key);
    free(t[i].key_file);
    for(size_t j = 0; j < t[i].n_instances; j++)
      free(t[i].instances[j]);
    free(t[i].instances);
  }
  free(t);
}

/* The key in `path`: its first line that is not blank nor a '#' comment, trimmed. Returns a
 * malloc'd string, or NULL after reporting at `at`. */
static char *read_tenant_key(struct loader *L, const struct ynode *at, const char *kpath,
                             const char *path)
{
  char line[1024], *key = NULL;
  FILE *f = fopen(path, "r");
  if(!f) {
    errf(L, at->line, at->col, "%s: cannot read \"%s\": %s", kpath, path, strerror(errno));
    return NULL;
  }
  while(!key && fgets(line, sizeof line, f)) {
    char *start = line, *end;
    if(!strchr(line, '\n') && !feof(f)) {
      errf(L, at->line, at->col, "%s: \"%s\": line longer than %zu bytes", kpath, path,
           sizeof line - 2);
      fclose(f);
      return NULL;
    }
    while(*start == ' ' || *start == '\t')
      start++;
    end = start + strlen(start);
    while(end > start && strchr("\r\n \t", end[-1]))
      *--end = '\0';
    if(*start && *start != '#' && !(key = strdup(start)))
      L->oom = true;
  }
  fclose(f);
  if(!key && !L->oom)
    errf(L, at->line, at->col, "%s: \"%s\" holds no key", kpath, path);
  return key;
}

/* A scalar of one tenant field, expanded; NULL after reporting. */
static char *tenant_scalar(struct loader *L, const struct key *k, const struct ynode *v,
                           const char *kpath, const char *expect)
{
  char *s;
  if(check_alias(L, v, kpath))
    return NULL;
  if(v->kind != N_SCALAR) {
    errf(L, v->line, v->col, "%s: expected %s, got %s", kpath, expect, kind_name(v));
    return NULL;
  }
  s = expand_node(L, k, v, kpath);
  if(s && !*s) {
    errf(L, v->line, v->col, "%s: expected %s, got \"\"", kpath, expect);
    free(s);
    return NULL;
  }
  return s;
}

/* One list field of a tenant (instances, scopes): each element checked by `ok`; `add` stores
 * it. Returns false after reporting. */
static bool tenant_list(struct loader *L, const struct key *k, const struct ynode *v,
                        const char *kpath, const char *list_expect, const char *expect,
                        struct cfg_tenant *t, bool (*add)(struct cfg_tenant *t, char *s))
{
  bool good = true;
  if(check_alias(L, v, kpath))
    return false;
  if(v->kind != N_SEQ) {
    errf(L, v->line, v->col, "%s: expected %s", kpath, list_expect);
    return false;
  }
  for(size_t i = 0; i < v->n && !L->oom; i++) {
    struct sbuf ep = {0};
    char *s;
    sb_printf(&ep, "%s[%zu]", kpath, i);
    if(ep.oom) {
      L->oom = true;
      break;
    }
    s = tenant_scalar(L, k, v->kids[i], ep.p, expect);
    if(s && !add(t, s)) {
      struct sbuf b = {0};
      sb_printf(&b, "%s:%zu:%zu: %s: expected %s, got ", L->path, v->kids[i]->line,
                v->kids[i]->col, ep.p, expect);
      sb_quote(&b, s, strlen(s));
      add_err(L, v->kids[i]->line, v->kids[i]->col, &b);
      free(s);
      good = false;
    }
    else if(!s)
      good = false;
    free(ep.p);
  }
  return good;
}

static bool add_instance(struct cfg_tenant *t, char *s)
{
  char **grown;
  if(!strcmp(s, "*")) {
    t->all_instances = true;
    free(s);
    return true;
  }
  if(!valid_instance(s))
    return false;
  grown = realloc(t->instances, (t->n_instances + 1) * sizeof *grown);
  if(!grown)
    return false;
  t->instances = grown;
  t->instances[t->n_instances++] = s;
  return true;
}

static bool add_scope(struct cfg_tenant *t, char *s)
{
  for(const struct enum_name *e = SCOPES; e->name; e++)
    if(!strcmp(s, e->name)) {
      t->scopes |= (unsigned)e->value;
      free(s);
      return true;
    }
  return false;
}

static void apply_tenant(struct loader *L, const struct key *k, const struct ynode *m,
                         const char *ipath, struct cfg_tenant *t)
{
  const struct ynode *instances = NULL, *scopes = NULL, *key_file = NULL;
  bool has_key = false, has_file = false, has_name = false;
  for(size_t i = 0; i + 1 < m->n && !L->oom; i += 2) {
    const struct ynode *kn = m->kids[i], *v = m->kids[i + 1];
    struct sbuf fp = {0};
    const char *f = kn->kind == N_SCALAR ? kn->text : "";
    sb_printf(&fp, "%s.%s", ipath, f);
    if(fp.oom) {
      L->oom = true;
      break;
    }
    for(size_t j = 0; j < i; j += 2)
      if(m->kids[j]->kind == N_SCALAR && !strcmp(m->kids[j]->text, f)) {
        errf(L, kn->line, kn->col, "%s: duplicate key (first defined at line %zu)", fp.p,
             m->kids[j]->line);
        f = "";
        break;
      }
    if(!*f)
      ; /* reported above, or not a scalar key (reported below) */
    else if(!strcmp(f, "name")) {
      has_name = true;
      t->name = tenant_scalar(L, k, v, fp.p, "a name of 1-64 characters from A-Z a-z 0-9 . _ -");
      if(t->name && !valid_instance(t->name)) {
        struct sbuf b = {0};
        sb_printf(&b, "%s:%zu:%zu: %s: expected a name of 1-64 characters from A-Z a-z 0-9 . _ "
                  "-, got ", L->path, v->line, v->col, fp.p);
        sb_quote(&b, t->name, strlen(t->name));
        add_err(L, v->line, v->col, &b);
        free(t->name);
        t->name = NULL;
      }
    }
    else if(!strcmp(f, "key")) {
      has_key = true;
      free(t->key);
      t->key = tenant_scalar(L, k, v, fp.p, "a non-empty key");
    }
    else if(!strcmp(f, "key_file")) {
      has_file = true;
      free(t->key_file);
      if((t->key_file = tenant_scalar(L, k, v, fp.p, "a file name")))
        key_file = v;
    }
    else if(!strcmp(f, "instances"))
      instances = v;
    else if(!strcmp(f, "scopes"))
      scopes = v;
    else
      errf(L, kn->line, kn->col, "%s: unknown key", kn->kind == N_SCALAR ? fp.p : ipath);
    if(instances == v)
      tenant_list(L, k, v, fp.p, "a list of instance names or [\"*\"]",
                  "an instance name (A-Z a-z 0-9 . _ -, 1-64) or \"*\"", t, add_instance);
    if(scopes == v)
      tenant_list(L, k, v, fp.p, "a list of scopes (send, read, cancel, admin)",
                  "one of send, read, cancel, admin", t, add_scope);
    free(fp.p);
  }
  if(!has_name && !L->oom)
    errf(L, m->line, m->col, "%s: expected a name", ipath);
  if(has_key == has_file && !L->oom)
    errf(L, m->line, m->col, "%s: expected exactly one of key and key_file", ipath);
  else if(key_file && t->key_file) {
    struct sbuf fp = {0};
    sb_printf(&fp, "%s.key_file", ipath);
    if(!fp.oom)
      t->key = read_tenant_key(L, key_file, fp.p, t->key_file);
    free(fp.p);
  }
  if(!t->key_file && !(t->key_file = strdup("")))
    L->oom = true;
  /* Without instances a key may send through every instance; without scopes it may do
   * everything but administer. */
  if(!instances)
    t->all_instances = true;
  if(!scopes)
    t->scopes = CFG_SCOPE_SEND | CFG_SCOPE_READ | CFG_SCOPE_CANCEL;
}

static void apply_tenants(struct loader *L, const struct key *k, const struct ynode *v,
                          const char *kpath)
{
  struct cfg_tenant *t;
  size_t n;
  if(is_null(v) || !is_list_of(L, k, v, kpath))
    return;
  n = v->n;
  if(!(t = calloc(n ? n : 1, sizeof *t))) {
    L->oom = true;
    return;
  }
  for(size_t i = 0; i < n && !L->oom; i++) {
    const struct ynode *e = v->kids[i];
    struct sbuf ip = {0};
    sb_printf(&ip, "%s[%zu]", kpath, i);
    if(ip.oom) {
      L->oom = true;
      break;
    }
    if(check_alias(L, e, ip.p))
      ;
    else if(e->kind != N_MAP)
      errf(L, e->line, e->col, "%s: expected a mapping {name, key or key_file, instances, "
           "scopes}, got %s", ip.p, e->kind == N_SCALAR ? "a scalar" : kind_name(e));
    else {
      /* Several keys may share a tenant name (a send key and a read-only one, say), but a
       * key is one tenant's: the same key twice could not say whose a request is. */
      apply_tenant(L, k, e, ip.p, &t[i]);
      for(size_t j = 0; j < i && t[i].key; j++)
        if(t[j].key && !strcmp(t[j].key, t[i].key))
          errf(L, e->line, e->col, "%s: the same key as %s[%zu]", ip.p, kpath, j);
    }
    free(ip.p);
  }
  cfg_tenants_free(*(struct cfg_tenant **)field_of(L->cfg, k->off),
                   *(size_t *)field_of(L->cfg, k->off_n));
  *(struct cfg_tenant **)field_of(L->cfg, k->off) = t;
  *(size_t *)field_of(L->cfg, k->off_n) = n;
}
