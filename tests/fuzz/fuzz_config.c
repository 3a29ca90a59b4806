/* libFuzzer target: the configuration loader (common/cfg.c) on any file content: it either
 * returns a configuration whose every field holds a valid value, or one error line per
 * problem, each in the "path:line:column: " form and ending in '\n'. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cfg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fd = -1;
static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char *errors = NULL;
  struct cfg *c;
  if(fd < 0) {
    fd = memfd_create("fuzz-config", 0);
    if(fd < 0)
      abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  if(ftruncate(fd, 0) || pwrite(fd, data, size, 0) != (ssize_t)size)
    abort();
  c = cfg_load(path, &errors);
  if(c) {
    if(errors || !c->broker.n_urls || !c->api.threads || !c->api.max_header_size ||
       !c->consumer.health_threads)
      abort();
    for(size_t i = 0; i < c->api.n_tenants; i++)
      if(!c->api.tenants[i].name || !c->api.tenants[i].key || !c->api.tenants[i].scopes)
        abort();
    cfg_free(c);
  }
  else {
    if(!errors || !*errors || errors[strlen(errors) - 1] != '\n')
      abort();
    free(errors);
  }
  return 0;
}
