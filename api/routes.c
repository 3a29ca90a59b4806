/* The api's routing table: every path and method msg-api answers, in one place. */
#include "routes.h"

#include "cfg.h"

#include <stdio.h>
#include <string.h>

const struct route ROUTES[ROUTE_COUNT] = {
  [ROUTE_ROOT] = {"/", "GET", 1, 0},
  [ROUTE_LIVEZ] = {"/livez", "GET", 1, 0},
  [ROUTE_READYZ] = {"/readyz", "GET", 1, 0},
  [ROUTE_HEALTH] = {"/health", "GET", 0, 0},
  [ROUTE_OPENAPI] = {"/openapi.json", "GET", 1, 0},
  [ROUTE_DOCS] = {"/docs", "GET", 1, 0},
  [ROUTE_MESSAGES] = {"/messages", "POST", 0, CFG_SCOPE_SEND},
  [ROUTE_BATCH] = {"/messages/batch", "POST", 0, CFG_SCOPE_SEND},
  [ROUTE_TASK] = {"/tasks/{task_id}", "GET", 0, CFG_SCOPE_READ},
  [ROUTE_TASK_CANCEL] = {"/tasks/{task_id}", "DELETE", 0, CFG_SCOPE_CANCEL},
  /* Every tenant's counters: admin, or open when api.metrics_public. */
  [ROUTE_METRICS] = {"/metrics", "GET", 0, CFG_SCOPE_ADMIN},
  [ROUTE_DEAD_LETTERS] = {"/dead-letters", "GET", 0, CFG_SCOPE_ADMIN},
  [ROUTE_REDRIVE] = {"/dead-letters/redrive", "POST", 0, CFG_SCOPE_ADMIN},
  /* Evolution API cannot send our API keys: the webhook has its own secret or JWT. */
  [ROUTE_WEBHOOK] = {"/webhooks/evolution", "POST", 1, 0},
  /* The fleet: hosts and counters of every consumer, an operator's view like /health. */
  [ROUTE_WORKERS] = {"/workers", "GET", 0, CFG_SCOPE_ADMIN},
  [ROUTE_TASKS] = {"/tasks", "GET", 0, CFG_SCOPE_READ},
  [ROUTE_STATS] = {"/stats", "GET", 0, CFG_SCOPE_READ},
  /* The page is open like /docs: it asks for the key, and every call it makes needs one. */
  [ROUTE_DASHBOARD] = {"/dashboard", "GET", 1, 0},
};

/* 1 when `path` fits `pattern`; sets *param for a trailing {param}. */
static int path_matches(const char *pattern, const char *path, const char **param)
{
  const char *brace = strchr(pattern, '{');
  if(!brace)
    return !strcmp(path, pattern);
  /* "/tasks/{task_id}": the prefix, then one non-empty segment. */
  if(!strncmp(path, pattern, (size_t)(brace - pattern)) && path[brace - pattern] &&
     !strchr(path + (brace - pattern), '/')) {
    *param = path + (brace - pattern);
    return 1;
  }
  return 0;
}

static int method_fits(const char *route_method, const char *method)
{
  return !strcmp(method, route_method) || (!strcmp(route_method, "GET") && !strcmp(method, "HEAD"));
}

int route_find(const char *path, const char *method, const char **param, char *allow,
               size_t allow_len)
{
  int path_found = 0;
  size_t used = 0;
  if(allow_len)
    allow[0] = '\0';
  for(int i = 0; i < ROUTE_COUNT; i++) {
    const char *p = NULL;
    if(!path_matches(ROUTES[i].pattern, path, &p))
      continue;
    if(method_fits(ROUTES[i].method, method)) {
      *param = p;
      return i;
    }
    path_found = 1;
  }
  if(!path_found)
    return ROUTE_NO_PATH;
  for(int i = 0; i < ROUTE_COUNT; i++) {
    const char *p;
    int n;
    if(!path_matches(ROUTES[i].pattern, path, &p))
      continue;
    n = snprintf(allow + used, allow_len - used, "%s%s%s", used ? ", " : "", ROUTES[i].method,
                 strcmp(ROUTES[i].method, "GET") ? "" : ", HEAD");
    if(n > 0 && (size_t)n < allow_len - used)
      used += (size_t)n;
  }
  return ROUTE_NO_METHOD;
}
