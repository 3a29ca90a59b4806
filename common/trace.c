/* Request ids and W3C trace context: see trace.h. */
#include "trace.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

int trace_request_id_ok(const char *s)
{
  size_t n = s ? strlen(s) : 0;
  if(n < 1 || n > TRACE_REQUEST_ID_MAX)
    return 0;
  for(size_t i = 0; i < n; i++)
    if(!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
         (s[i] >= '0' && s[i] <= '9') || strchr("._:-", s[i])))
      return 0;
  return 1;
}

void trace_new_request_id(char *out)
{
  char id[UTIL_UUID_LEN];
  if(util_uuid4(id))
    snprintf(id, sizeof id, "req-%lld", (long long)util_mono_us());
  snprintf(out, TRACE_REQUEST_ID_MAX + 1, "%s", id);
}

/* n lower-case hex digits, not all zero. */
static int hex_field(const char *s, size_t n)
{
  int nonzero = 0;
  for(size_t i = 0; i < n; i++) {
    if(!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
    nonzero |= s[i] != '0';
  }
  return nonzero;
}

int trace_parent_ok(const char *s)
{
  if(!s || strlen(s) != TRACE_PARENT_LEN - 1 || strncmp(s, "00-", 3) || s[35] != '-' ||
     s[52] != '-')
    return 0;
  /* The flags may be 00. */
  return hex_field(s + 3, 32) && hex_field(s + 36, 16) &&
         (hex_field(s + 53, 2) || !strcmp(s + 53, "00"));
}

/* n random lower-case hex digits, not all zero. */
static void random_hex(char *out, size_t n)
{
  unsigned char bytes[16];
  static const char HEX[] = "0123456789abcdef";
  do {
    if(util_random(bytes, (n + 1) / 2)) {
      unsigned long long x = (unsigned long long)util_mono_us() * 6364136223846793005ULL + 1;
      for(size_t i = 0; i < sizeof bytes; i++, x = x * 6364136223846793005ULL + 1442695040888963407ULL)
        bytes[i] = (unsigned char)(x >> 56);
    }
    for(size_t i = 0; i < n; i++)
      out[i] = HEX[(bytes[i / 2] >> (i % 2 ? 0 : 4)) & 15];
  } while(!hex_field(out, n));
  out[n] = '\0';
}

void trace_new_parent(char *out)
{
  char trace[33], span[17];
  random_hex(trace, 32);
  random_hex(span, 16);
  snprintf(out, TRACE_PARENT_LEN, "00-%s-%s-01", trace, span);
}

void trace_child(const char *parent, char *out)
{
  char span[17];
  if(!trace_parent_ok(parent)) {
    trace_new_parent(out);
    return;
  }
  random_hex(span, 16);
  snprintf(out, TRACE_PARENT_LEN, "00-%.32s-%s-%s", parent + 3, span, parent + 53);
}
