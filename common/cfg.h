/* Service configuration: the YAML schema of DESIGN §5, loaded from a file plus environment overrides. */
#ifndef MSG_CFG_H
#define MSG_CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cfg_log_level { CFG_LOG_DEBUG, CFG_LOG_INFO, CFG_LOG_WARN, CFG_LOG_ERROR };
enum cfg_log_format { CFG_LOG_JSON, CFG_LOG_TEXT };
enum cfg_queue_type { CFG_QUEUE_QUORUM, CFG_QUEUE_CLASSIC };
enum cfg_api_version { CFG_EVO_V1 = 1, CFG_EVO_V2 = 2 };

/* What a consumer does with an in-doubt job (its send may have gone out) when findMessages
 * cannot tell: send it again (a possible duplicate) or park it (a possible loss). */
enum cfg_in_doubt { CFG_IN_DOUBT_RESEND, CFG_IN_DOUBT_PARK };

/* What an API key may do (api.keys[].scopes). */
#define CFG_SCOPE_SEND 1u   /* POST /messages, /messages/batch */
#define CFG_SCOPE_READ 2u   /* GET /tasks/{id} */
#define CFG_SCOPE_CANCEL 4u /* DELETE /tasks/{id} */
#define CFG_SCOPE_ADMIN 8u  /* dead letters, redrive, /health, /metrics, every tenant's tasks */
#define CFG_SCOPES_ALL 15u

/* One tenant of api.keys; every string owned by the struct cfg. */
struct cfg_tenant {
  char *name;          /* [A-Za-z0-9._-]{1,64}; keys with the same name share a tenant */
  char *key;           /* the key itself (from key, or key_file's first line); a secret */
  char *key_file;      /* "" when the key was given inline; re-read on SIGHUP */
  char **instances;    /* n_instances Evolution instances it may send through */
  size_t n_instances;
  bool all_instances;  /* instances absent or holding "*" */
  unsigned scopes;     /* CFG_SCOPE_* bits; default send, read, cancel */
};

/* Every string below is owned by the struct cfg and freed by cfg_free. Durations are in
 * milliseconds, sizes in bytes. A field always holds a valid value once cfg_load succeeded:
 * the defaults of DESIGN §5 where the file and the environment said nothing. */
struct cfg {
  char *path; /* the file the configuration came from */

  struct {
    char *url;             /* amqp://user:pass@host:port/vhost or amqps:// */
    char **urls;           /* n_urls >= 1 addresses of one broker or cluster, tried in turn:
                              broker.urls when given, else broker.url; $AMQP_URL (one URL or
                              several separated by commas) wins over both */
    size_t n_urls;
    uint64_t heartbeat_ms; /* 0 disables; else 1s..1h */
    char *connection_name; /* prefix: "-<role>@<host name>" is appended at connect time */
    struct {
      char *ca_file, *cert_file, *key_file; /* "" when unset */
      bool verify_peer;
    } tls;
  } broker;

  struct {
    char *exchange, *queue, *retry_queue_prefix, *dead_letter_queue, *status_stream;
    char *callback_queue; /* status callbacks: "<it>", "<it>.retry.<delay>", "<it>.dead" */
    enum cfg_queue_type queue_type;
    uint64_t status_retention_ms; /* 1m..365d */
  } topology;

  struct {
    char *listen;          /* host:port, validated */
    unsigned threads;      /* 1..1024 */
    size_t max_body;       /* 1KiB..16MiB */
    size_t max_batch_body; /* POST /messages/batch, 1KiB..64MiB */
    char **api_keys;       /* n_api_keys strings; empty list = no authentication; the keys of
                              api_keys_file are appended */
    char *api_keys_file;   /* "" or a file with one key per line */
    struct cfg_tenant *tenants; /* api.keys: n_tenants keys with their tenant, instances and
                                   scopes (api_keys are keys with every scope and instance) */
    size_t n_tenants;
    size_t n_api_keys;
    size_t cache_max_tasks; /* 1..100000000 */
    size_t max_header_size;  /* request line and headers, 1KiB..1MiB; more is 431 */
    uint64_t header_timeout_ms, body_timeout_ms, keep_alive_timeout_ms; /* slow clients */
    bool metrics_public;     /* /metrics without an API key */
    uint64_t snapshot_interval_ms; /* cache snapshots on the broker at most this often; 0: none */
    char **trusted_proxies;  /* IP literals whose X-Forwarded-For the access log believes */
    size_t n_trusted_proxies;
  } api;

  struct {
    unsigned prefetch;         /* 1..65535 */
    uint64_t shutdown_grace_ms;
    uint64_t history_window_ms; /* jobs younger than this go before the stream's history is
                                   read (0: the whole history first), 0..1d */
    char *health_listen;       /* host:port, validated */
    unsigned health_threads;   /* health listener workers, 2..256 */
    uint64_t health_timeout_ms; /* deadline for a probe's request to arrive, 100ms..1m */
  } consumer;

  struct {
    char *url;      /* http:// or https:// base URL, no trailing slash kept */
    char *api_key;  /* may be "" (then the request has no apikey header) */
    char *instance; /* [A-Za-z0-9._-]{1,64} */
    enum cfg_api_version api_version;
    uint64_t timeout_ms, connect_timeout_ms;
    double rate_limit; /* sends per second per instance; 0 = unlimited */
    unsigned rate_burst; /* sends allowed at once after a quiet spell, 1..100000 */
    char **rate_limits;  /* "<instance>=<rate>" overrides of rate_limit (validated) */
    size_t n_rate_limits;
    bool reconcile;      /* ask findMessages before sending an in-doubt job again */
    enum cfg_in_doubt in_doubt; /* when that lookup fails: send anyway, or park */
  } evolution;

  struct {
    uint64_t *delays_ms; /* n_delays entries, each 1ms..24h; at most 32 entries */
    size_t n_delays;
  } retry;

  /* Evolution API webhooks (delivery receipts) at msg-api's POST /webhooks/evolution. */
  struct {
    char *secret;   /* expected in header `header` (Evolution's webhook.headers); a secret */
    char *header;   /* header name, default X-Webhook-Secret */
    char *jwt_key;  /* Evolution 2.3+ jwt_key: Authorization: Bearer <HS256 JWT>; a secret */
  } webhooks;

  /* Status callbacks, POSTed by msg-consumer's dispatcher (consumer/callbacks.c). */
  struct {
    char *secret;          /* HMAC key of X-Msg-Signature; "" = callbacks disabled; a secret */
    char **allow_hosts;    /* n_allow_hosts host names, IP literals or "*.domain" entries */
    size_t n_allow_hosts;  /* 0: no callback URL is allowed */
    uint64_t timeout_ms;   /* whole request, 100ms..5m */
    uint64_t *retry_delays_ms; /* n_retry_delays entries, each 1ms..24h; at most 32 */
    size_t n_retry_delays;
    unsigned concurrency;  /* callbacks in flight (the prefetch), 1..1024 */
  } callbacks;

  struct {
    enum cfg_log_level level;
    enum cfg_log_format format;
    char *file;   /* "" = stderr; else appended to, and reopened on SIGHUP */
    bool access;  /* msg-api writes one line per request */
  } log;
};

/* Loads the configuration from `path` (YAML), expands ${VAR} and ${VAR:-default} inside scalar
 * values, then applies the environment overrides AMQP_URL, EVOLUTION_API_URL, EVOLUTION_API_KEY,
 * EVOLUTION_INSTANCE_NAME, APP_HOST, APP_PORT and LOG_LEVEL (read with getenv).
 *
 * On success returns a new struct cfg (caller frees with cfg_free) and sets *errors to NULL.
 * On failure returns NULL and sets *errors to a malloc'd string (caller frees with free) holding
 * one line per problem, each ending in '\n', in file order, in the form
 *   path:line:column: key.path: expected ..., got "..."
 * Problems in an environment variable read `$NAME: expected ..., got "..."`. Every problem of the
 * file is reported, not just the first. */
struct cfg *cfg_load(const char *path, char **errors);

/* The send rate of an Evolution instance: its entry in evolution.rate_limits, else
 * evolution.rate_limit. 0 = unlimited. */
double cfg_instance_rate(const struct cfg *cfg, const char *instance);

/* 1 when some instance has a send rate (evolution.rate_limit or an entry of rate_limits). */
int cfg_any_rate_limit(const struct cfg *cfg);

/* true when s is an amqp:// or amqps:// URL with a host and, if any, a port 1-65535 (the
 * shape rabbitmq-c's amqp_parse_url takes; commas are refused, as they separate URLs). */
bool cfg_valid_amqp_url(const char *s);

/* Frees n tenants as cfg_load made them (cfg_free does it for a whole cfg). */
void cfg_tenants_free(struct cfg_tenant *t, size_t n);

/* Frees everything cfg_load returned. cfg_free(NULL) is a no-op. */
void cfg_free(struct cfg *cfg);

/* Parses a duration such as "250ms", "5s", "2m", "24h", "7d" into milliseconds.
 * Returns 0 and writes *out on success, -1 when the text is not a duration. */
int cfg_parse_duration(const char *text, uint64_t *out);

/* Parses a size such as "512", "64KiB", "1MiB", "1GiB" (also KB/MB/GB as powers of 1000) into
 * bytes. Returns 0 and writes *out on success, -1 otherwise. */
int cfg_parse_size(const char *text, uint64_t *out);

/* Splits "host:port" (host may be empty, a name, an IPv4 address or [IPv6]); returns 0 on
 * success and writes the host (malloc'd, caller frees) and the port, -1 otherwise.
 * An IPv6 host is written without its brackets, as getaddrinfo wants it; host or port may be
 * NULL to validate only. Nothing is written on failure. */
int cfg_split_listen(const char *text, char **host, unsigned *port);

#endif
