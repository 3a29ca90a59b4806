/* The api's routing table: every path and method msg-api answers, in one place, so the
 * dispatcher, the 404/405 answers and the OpenAPI check all read the same list. */
#ifndef MSG_ROUTES_H
#define MSG_ROUTES_H

#include <stddef.h>

enum route_id {
  ROUTE_ROOT,
  ROUTE_LIVEZ,
  ROUTE_READYZ,
  ROUTE_HEALTH,
  ROUTE_OPENAPI,
  ROUTE_DOCS,
  ROUTE_MESSAGES,
  ROUTE_BATCH,
  ROUTE_TASK,
  ROUTE_TASK_CANCEL,
  ROUTE_METRICS,
  ROUTE_DEAD_LETTERS,
  ROUTE_REDRIVE,
  ROUTE_WEBHOOK,
  ROUTE_WORKERS,
  ROUTE_TASKS,
  ROUTE_STATS,
  ROUTE_DASHBOARD,
  ROUTE_COUNT
};

struct route {
  const char *pattern; /* OpenAPI form: "/tasks/{task_id}"; one trailing {param} at most */
  const char *method;  /* the documented method; GET routes also answer HEAD */
  int open;            /* 1: answered without an API key (probes, banner, docs) */
  unsigned scope;      /* CFG_SCOPE_* a key needs here (0: any valid key) */
};

extern const struct route ROUTES[ROUTE_COUNT];

#define ROUTE_NO_PATH (-1)   /* no route has this path: 404 */
#define ROUTE_NO_METHOD (-2) /* the path exists, not with this method: 405 */

/* Finds the route of a (decoded) request path and method. Returns its id, ROUTE_NO_PATH or
 * ROUTE_NO_METHOD; *param points into path at the value of the trailing {param}, if any; with
 * ROUTE_NO_METHOD, allow[allow_len] receives the methods the path takes ("GET, HEAD, DELETE"). */
int route_find(const char *path, const char *method, const char **param, char *allow,
               size_t allow_len);

#endif
