/* The api's routing table: every path and method msg-api answers, in one place. */
#include "routes.h"

#include <string.h>

const struct route ROUTES[ROUTE_COUNT] = {
  [ROUTE_ROOT] = {"/", "GET", "GET, HEAD", 1},
  [ROUTE_LIVEZ] = {"/livez", "GET", "GET, HEAD", 1},
  [ROUTE_READYZ] = {"/readyz", "GET", "GET, HEAD", 1},
  [ROUTE_HEALTH] = {"/health", "GET", "GET, HEAD", 0},
  [ROUTE_OPENAPI] = {"/openapi.json", "GET", "GET, HEAD", 1},
  [ROUTE_DOCS] = {"/docs", "GET", "GET, HEAD", 1},
  [ROUTE_MESSAGES] = {"/messages", "POST", "POST", 0},
  [ROUTE_TASK] = {"/tasks/{task_id}", "GET", "GET, HEAD", 0},
  [ROUTE_METRICS] = {"/metrics", "GET", "GET, HEAD", 1},
};

int route_match(const char *path, const char **param)
{
  for(int i = 0; i < ROUTE_COUNT; i++) {
    const char *pat = ROUTES[i].pattern, *brace = strchr(pat, '{');
    if(!brace) {
      if(!strcmp(path, pat))
        return i;
      continue;
    }
    /* "/tasks/{task_id}": the prefix, then one non-empty segment. */
    if(!strncmp(path, pat, (size_t)(brace - pat)) && path[brace - pat] &&
       !strchr(path + (brace - pat), '/')) {
      *param = path + (brace - pat);
      return i;
    }
  }
  return -1;
}

int route_allows(const struct route *r, const char *method)
{
  if(!strcmp(method, r->method))
    return 1;
  return !strcmp(r->method, "GET") && !strcmp(method, "HEAD");
}
