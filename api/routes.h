/* The api's routing table: every path and method msg-api answers, in one place, so the
 * dispatcher, the 404/405 answers and the OpenAPI check all read the same list. */
#ifndef MSG_ROUTES_H
#define MSG_ROUTES_H

enum route_id {
  ROUTE_ROOT,
  ROUTE_LIVEZ,
  ROUTE_READYZ,
  ROUTE_HEALTH,
  ROUTE_OPENAPI,
  ROUTE_DOCS,
  ROUTE_MESSAGES,
  ROUTE_TASK,
  ROUTE_METRICS,
  ROUTE_COUNT
};

struct route {
  const char *pattern; /* OpenAPI form: "/tasks/{task_id}"; one trailing {param} at most */
  const char *method;  /* the documented method; GET routes also answer HEAD */
  const char *allow;   /* the Allow header of a 405 */
  int open;            /* 1: answered without an API key (probes, banner, docs) */
};

extern const struct route ROUTES[ROUTE_COUNT];

/* Finds the route of a (decoded) request path. Returns its id, or -1 for no route; *param
 * points into path at the value of the trailing {param}, if the route has one. */
int route_match(const char *path, const char **param);

/* 1 when `method` is accepted on route r. */
int route_allows(const struct route *r, const char *method);

#endif
