/* The api's HTTP layer on CivetWeb: routing, the JSON error shape, and the endpoints of
 * DESIGN §2. */
#ifndef MSG_HTTP_H
#define MSG_HTTP_H

#include <stddef.h>

#include "cfg.h"
#include "publisher.h"
#include "status_reader.h"
#include "task_cache.h"

/* What the handlers need; everything is borrowed and outlives the server. */
struct http_deps {
  const struct cfg *cfg;
  struct publisher *publisher;
  struct status_reader *reader;
  struct task_cache *cache;
  struct snapshot_writer *snapshots; /* NULL when api.snapshot_interval is 0 */
};

struct http_server;

/* Starts listening on cfg->api.listen with cfg->api.threads workers. NULL with a reason in err
 * (e.g. the port is taken). */
struct http_server *http_start(const struct http_deps *deps, char *err, size_t errlen);

/* Makes /readyz and /health answer 503 so load balancers stop sending, keeps serving, and
 * returns once no request has started for quiet_ms (or after max_ms). */
void http_drain(struct http_server *srv, int quiet_ms, int max_ms);

/* Takes the API keys of `fresh` (a configuration read again on SIGHUP: api.api_keys,
 * api.api_keys_file, api.keys and their key files); requests from then on use them. `fresh`
 * is not kept. Returns 0, or -1 when out of memory (the keys in force stay). */
int http_reload(struct http_server *srv, const struct cfg *fresh);

/* Stops accepting, waits for requests in flight, frees the server. NULL is a no-op. */
void http_stop(struct http_server *srv);

#endif
