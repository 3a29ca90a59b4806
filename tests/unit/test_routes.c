/* Unit tests for api/routes.h: matching, and the routing table agreeing with the OpenAPI
 * document both ways (every route documented, every documented operation routed). */
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "routes.h"

static const char *openapi_path;

static void test_match(void)
{
  const char *param = NULL;
  char allow[64];
  CHECK_INT(route_find("/", "GET", &param, allow, sizeof allow), ROUTE_ROOT);
  CHECK_INT(route_find("/", "HEAD", &param, allow, sizeof allow), ROUTE_ROOT);
  CHECK_INT(route_find("/messages", "POST", &param, allow, sizeof allow), ROUTE_MESSAGES);
  CHECK_INT(route_find("/messages", "GET", &param, allow, sizeof allow), ROUTE_NO_METHOD);
  CHECK_STR(allow, "POST");
  CHECK_INT(route_find("/messages", "HEAD", &param, allow, sizeof allow), ROUTE_NO_METHOD);
  CHECK_INT(route_find("/messagesx", "POST", &param, allow, sizeof allow), ROUTE_NO_PATH);
  CHECK_INT(route_find("/messages/", "POST", &param, allow, sizeof allow), ROUTE_NO_PATH);
  CHECK_INT(route_find("/tasks/abc", "GET", &param, allow, sizeof allow), ROUTE_TASK);
  CHECK_STR(param, "abc");
  CHECK_INT(route_find("/tasks/xyz", "DELETE", &param, allow, sizeof allow), ROUTE_TASK_CANCEL);
  CHECK_STR(param, "xyz");
  CHECK_INT(route_find("/tasks/abc", "POST", &param, allow, sizeof allow), ROUTE_NO_METHOD);
  CHECK_STR(allow, "GET, HEAD, DELETE");
  CHECK_INT(route_find("/tasks/", "GET", &param, allow, sizeof allow), ROUTE_NO_PATH);
  CHECK_INT(route_find("/tasks", "GET", &param, allow, sizeof allow), ROUTE_TASKS);
  CHECK_INT(route_find("/tasks", "DELETE", &param, allow, sizeof allow), ROUTE_NO_METHOD);
  CHECK_INT(route_find("/workers", "GET", &param, allow, sizeof allow), ROUTE_WORKERS);
  CHECK_INT(route_find("/tasks/a/b", "GET", &param, allow, sizeof allow), ROUTE_NO_PATH);
  CHECK_INT(route_find("/healthz", "GET", &param, allow, sizeof allow), ROUTE_NO_PATH);
out:;
}

static void lower(const char *in, char *out, size_t n)
{
  size_t i;
  for(i = 0; in[i] && i + 1 < n; i++)
    out[i] = (char)tolower((unsigned char)in[i]);
  out[i] = '\0';
}

static void test_table_matches_openapi(void)
{
  json_error_t je;
  json_t *doc = json_load_file(openapi_path, 0, &je), *paths, *item, *op;
  const char *path, *method;
  size_t documented = 0;
  CHECK(doc);
  paths = json_object_get(doc, "paths");
  CHECK(json_is_object(paths));
  /* Every route is documented with its method. */
  for(int i = 0; i < ROUTE_COUNT; i++) {
    char m[16];
    lower(ROUTES[i].method, m, sizeof m);
    item = json_object_get(paths, ROUTES[i].pattern);
    if(!item || !json_object_get(item, m))
      fprintf(stderr, "route %s %s is not in %s\n", ROUTES[i].method, ROUTES[i].pattern,
              openapi_path);
    CHECK(item && json_object_get(item, m));
    /* An open route says so in the document (security: []), and only open ones do. */
    op = json_object_get(item, m);
    {
      json_t *sec = json_object_get(op, "security");
      int doc_open = json_is_array(sec) && json_array_size(sec) == 0;
      if(doc_open != ROUTES[i].open)
        fprintf(stderr, "route %s: open=%d but the document says %d\n", ROUTES[i].pattern,
                ROUTES[i].open, doc_open);
      CHECK_INT(doc_open, ROUTES[i].open);
    }
  }
  /* Every documented operation is routed. */
  json_object_foreach(paths, path, item) {
    json_object_foreach(item, method, op) {
      int found = 0;
      for(int i = 0; i < ROUTE_COUNT; i++) {
        char m[16];
        lower(ROUTES[i].method, m, sizeof m);
        if(!strcmp(ROUTES[i].pattern, path) && !strcmp(m, method))
          found = 1;
      }
      if(!found)
        fprintf(stderr, "documented %s %s has no route\n", method, path);
      CHECK(found);
      documented++;
    }
  }
  CHECK_INT(documented, ROUTE_COUNT);
out:
  json_decref(doc);
}

int main(int argc, char **argv)
{
  static const struct check_test tests[] = {{"match", test_match},
                                            {"table_matches_openapi", test_table_matches_openapi}};
  if(argc != 2) {
    fprintf(stderr, "usage: test_routes OPENAPI_JSON\n");
    return 2;
  }
  openapi_path = argv[1];
  return check_run(tests, sizeof tests / sizeof tests[0]);
}
