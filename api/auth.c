/* Who may call msg-api: API keys for the endpoints, the webhook's own secret or JWT. */
#include "http_internal.h"

#include <string.h>
#include <strings.h>

#include "sign.h"
#include "util.h"

/* Compares a presented key with every configured key in time that depends only on the lengths,
 * so a client cannot find a key byte by byte from response times. */
static int key_matches(const struct cfg *cfg, const char *given)
{
  size_t glen = strlen(given);
  int found = 0;
  for(size_t i = 0; i < cfg->api.n_api_keys; i++)
    found |= sign_equal(cfg->api.api_keys[i], strlen(cfg->api.api_keys[i]), given, glen);
  return found;
}

/* 1 when the request may go on: no keys configured, or a valid key in
 * "Authorization: Bearer <key>" or "X-API-Key: <key>". */
int http_authorized(struct mg_connection *conn, const struct cfg *cfg)
{
  const char *auth = mg_get_header(conn, "Authorization");
  const char *key = mg_get_header(conn, "X-API-Key");
  if(!cfg->api.n_api_keys)
    return 1;
  if(auth && !strncasecmp(auth, "Bearer ", 7) && key_matches(cfg, auth + 7))
    return 1;
  return key && key_matches(cfg, key);
}

/* Evolution API signs nothing: the webhook carries a shared secret in a header of our
 * choosing (webhook.headers), or, from 2.3 on, an HS256 JWT made with jwt_key. */
#define WEBHOOK_JWT_LEEWAY_S 60
/* A webhook JWT must expire, and within the hour: one without exp would be good for ever. */
#define WEBHOOK_JWT_MAX_AHEAD_S 3600
int http_webhook_authorized(struct mg_connection *conn, const struct cfg *cfg)
{
  const char *given = mg_get_header(conn, cfg->webhooks.header);
  const char *auth = mg_get_header(conn, "Authorization");
  char why[128];
  if(cfg->webhooks.secret[0] && given &&
     sign_equal(cfg->webhooks.secret, strlen(cfg->webhooks.secret), given, strlen(given)))
    return 1;
  if(cfg->webhooks.jwt_key[0] && auth && !strncasecmp(auth, "Bearer ", 7) &&
     !sign_jwt_hs256_verify(auth + 7, cfg->webhooks.jwt_key, util_now_ms() / 1000,
                            WEBHOOK_JWT_LEEWAY_S, WEBHOOK_JWT_MAX_AHEAD_S, why, sizeof why))
    return 1;
  return 0;
}

