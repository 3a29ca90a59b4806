/* Who may call msg-api: API keys and their tenants, instances and scopes (api.keys, and
 * api.api_keys as keys with every scope and no tenant), swapped whole on SIGHUP; the webhook's
 * own secret or JWT. */
#include "http_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sign.h"
#include "util.h"

/* One set of keys, immutable once published. A reload publishes a new one; the old ones stay
 * (a request may still hold one of their keys) until the server is freed. */
struct keyset {
  struct api_key *keys;
  size_t n;
  struct keyset *retired;
};

/* The caller when no key is configured at all: the service is open, as before tenants. */
static const struct api_key OPEN_ACCESS = {.scopes = CFG_SCOPES_ALL, .all_instances = 1};

static void keyset_free(struct keyset *ks)
{
  if(!ks)
    return;
  for(size_t i = 0; i < ks->n; i++) {
    free(ks->keys[i].key);
    for(size_t j = 0; j < ks->keys[i].n_instances; j++)
      free(ks->keys[i].instances[j]);
    free(ks->keys[i].instances);
  }
  free(ks->keys);
  free(ks);
}

/* The counters of tenant `name`, added to the table the first time (srv->keys_lock held).
 * NULL when the table is full: that tenant is then not counted. */
static struct tenant_stats *stats_of(struct http_server *srv, const char *name)
{
  size_t n = atomic_load(&srv->n_tenant_stats);
  for(size_t i = 0; i < n; i++)
    if(!strcmp(srv->tenant_stats[i].name, name))
      return &srv->tenant_stats[i];
  if(n == TENANT_STATS_MAX)
    return NULL;
  snprintf(srv->tenant_stats[n].name, sizeof srv->tenant_stats[n].name, "%s", name);
  atomic_store(&srv->n_tenant_stats, n + 1); /* published after its name */
  return &srv->tenant_stats[n];
}

static int copy_key(struct api_key *k, const char *key, const char *tenant, unsigned scopes,
                    int all_instances, char *const *instances, size_t n_instances)
{
  k->key = strdup(key);
  k->len = strlen(key);
  snprintf(k->tenant, sizeof k->tenant, "%s", tenant);
  k->scopes = scopes;
  k->all_instances = all_instances;
  k->instances = n_instances ? calloc(n_instances, sizeof *k->instances) : NULL;
  if(!k->key || (n_instances && !k->instances))
    return -1;
  for(size_t i = 0; i < n_instances; i++)
    if(!(k->instances[k->n_instances++] = strdup(instances[i])))
      return -1;
  return 0;
}

int http_keys_load(struct http_server *srv, const struct cfg *cfg)
{
  struct keyset *ks = calloc(1, sizeof *ks);
  size_t n = cfg->api.n_api_keys + cfg->api.n_tenants;
  int rc = 0;
  if(!ks || !(ks->keys = calloc(n ? n : 1, sizeof *ks->keys))) {
    free(ks);
    return -1;
  }
  pthread_mutex_lock(&srv->keys_lock);
  for(size_t i = 0; i < cfg->api.n_api_keys && !rc; i++)
    rc = copy_key(&ks->keys[ks->n++], cfg->api.api_keys[i], "", CFG_SCOPES_ALL, 1, NULL, 0);
  for(size_t i = 0; i < cfg->api.n_tenants && !rc; i++) {
    const struct cfg_tenant *t = &cfg->api.tenants[i];
    struct api_key *k = &ks->keys[ks->n++];
    rc = copy_key(k, t->key, t->name, t->scopes, t->all_instances, t->instances,
                  t->n_instances);
    k->stats = stats_of(srv, t->name);
  }
  if(rc) {
    pthread_mutex_unlock(&srv->keys_lock);
    keyset_free(ks);
    return -1;
  }
  ks->retired = atomic_load(&srv->keys);
  atomic_store(&srv->keys, ks);
  pthread_mutex_unlock(&srv->keys_lock);
  return 0;
}

void http_keys_free(struct http_server *srv)
{
  struct keyset *ks = atomic_load(&srv->keys);
  while(ks) {
    struct keyset *next = ks->retired;
    keyset_free(ks);
    ks = next;
  }
  atomic_store(&srv->keys, NULL);
}

/* The configured key equal to `given`, compared with every key in time that depends only on
 * the lengths, so a client cannot find a key byte by byte from response times. */
static const struct api_key *key_matching(const struct keyset *ks, const char *given)
{
  size_t glen = strlen(given);
  const struct api_key *found = NULL;
  for(size_t i = 0; i < ks->n; i++)
    if(sign_equal(ks->keys[i].key, ks->keys[i].len, given, glen))
      found = &ks->keys[i];
  return found;
}

const struct api_key *http_authenticate(struct mg_connection *conn, struct http_server *srv)
{
  const struct keyset *ks = atomic_load(&srv->keys);
  const char *auth = mg_get_header(conn, "Authorization");
  const char *key = mg_get_header(conn, "X-API-Key");
  const struct api_key *who = NULL;
  if(!ks || !ks->n)
    return &OPEN_ACCESS;
  if(auth && !strncasecmp(auth, "Bearer ", 7))
    who = key_matching(ks, auth + 7);
  if(!who && key)
    who = key_matching(ks, key);
  if(who && who->stats)
    atomic_fetch_add(&who->stats->requests, 1);
  return who;
}

int http_may_see(const struct api_key *who, const char *tenant)
{
  return (who->scopes & CFG_SCOPE_ADMIN) || !strcmp(who->tenant, tenant ? tenant : "");
}

int http_may_use(const struct api_key *who, const char *instance)
{
  if(who->all_instances)
    return 1;
  for(size_t i = 0; i < who->n_instances; i++)
    if(!strcmp(who->instances[i], instance))
      return 1;
  return 0;
}

void http_count_tenant(const struct api_key *who, int accepted, int refused)
{
  if(!who->stats)
    return;
  if(accepted)
    atomic_fetch_add(&who->stats->accepted, (unsigned long long)accepted);
  if(refused)
    atomic_fetch_add(&who->stats->refused, (unsigned long long)refused);
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
