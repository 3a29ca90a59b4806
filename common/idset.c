/* A bounded set of task ids (UUIDs) that forgets the oldest first. */
#include "idset.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Ids are stored as their 16 bytes: a million of them take 48 MiB (table at half load plus the
 * insertion ring) instead of the hundreds a string map would. The table starts small and
 * doubles as it fills, because its slots are touched at random: a table sized for the maximum
 * up front would be resident in full after a few thousand ids. The ring is filled in order, so
 * only its used part is ever resident. A version-4 UUID is never all zeroes, so a zero slot
 * means empty. */
struct key {
  unsigned char b[16];
};

struct idset {
  struct key *table; /* open addressing, linear probing, cap slots (a power of two) */
  size_t cap, max_cap;
  struct key *ring;  /* insertion order, max entries, for forgetting the oldest */
  size_t max, head, count;
};

static int parse(const char *id, struct key *k)
{
  size_t n = 0;
  if(!util_is_uuid(id))
    return -1;
  for(const char *p = id; *p && n < 32; p++) {
    int v;
    if(*p == '-')
      continue;
    v = (*p >= '0' && *p <= '9') ? *p - '0' : ((*p | 0x20) - 'a' + 10);
    if(n % 2 == 0)
      k->b[n / 2] = (unsigned char)(v << 4);
    else
      k->b[n / 2] |= (unsigned char)v;
    n++;
  }
  return 0;
}

static int is_empty(const struct key *k)
{
  static const struct key zero;
  return !memcmp(k, &zero, sizeof zero);
}

static size_t slot_of(const struct idset *s, const struct key *k)
{
  uint64_t h;
  /* Random UUID bytes are already uniform; mix anyway for ids that are not random. */
  memcpy(&h, k->b, sizeof h);
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return (size_t)h & (s->cap - 1);
}

struct idset *idset_new(size_t max)
{
  struct idset *s = calloc(1, sizeof *s);
  if(!s)
    return NULL;
  if(max < 1)
    max = 1;
  s->max_cap = 16;
  while(s->max_cap < max * 2)
    s->max_cap <<= 1;
  s->cap = s->max_cap < 1024 ? s->max_cap : 1024;
  s->max = max;
  s->table = calloc(s->cap, sizeof *s->table);
  s->ring = calloc(max, sizeof *s->ring);
  if(!s->table || !s->ring) {
    idset_free(s);
    return NULL;
  }
  return s;
}

void idset_free(struct idset *s)
{
  if(!s)
    return;
  free(s->table);
  free(s->ring);
  free(s);
}

static size_t find(const struct idset *s, const struct key *k)
{
  size_t i = slot_of(s, k);
  while(!is_empty(&s->table[i]) && memcmp(&s->table[i], k, sizeof *k))
    i = (i + 1) & (s->cap - 1);
  return i;
}

/* Removes the key at slot i, shifting later entries of its probe run back (no tombstones). */
static void remove_at(struct idset *s, size_t i)
{
  size_t j = i;
  memset(&s->table[i], 0, sizeof s->table[i]);
  for(;;) {
    size_t home;
    j = (j + 1) & (s->cap - 1);
    if(is_empty(&s->table[j]))
      return;
    home = slot_of(s, &s->table[j]);
    /* Move table[j] into the hole when the hole lies on its probe path from home to j. */
    if((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
      s->table[i] = s->table[j];
      memset(&s->table[j], 0, sizeof s->table[j]);
      i = j;
    }
  }
}

/* Doubles the table (keeping at most half of it used); -1 when out of memory. */
static int grow(struct idset *s)
{
  struct key *old = s->table;
  size_t old_cap = s->cap;
  struct key *table = calloc(old_cap * 2, sizeof *table);
  if(!table)
    return -1;
  s->table = table;
  s->cap = old_cap * 2;
  for(size_t i = 0; i < old_cap; i++)
    if(!is_empty(&old[i]))
      s->table[find(s, &old[i])] = old[i];
  free(old);
  return 0;
}

int idset_add(struct idset *s, const char *id)
{
  struct key k;
  size_t i;
  if(parse(id, &k))
    return -1;
  if((s->count + 1) * 2 > s->cap && s->cap < s->max_cap && grow(s))
    return -1;
  i = find(s, &k);
  if(!is_empty(&s->table[i]))
    return 0;
  if(s->count == s->max) {
    remove_at(s, find(s, &s->ring[s->head]));
    s->head = (s->head + 1) % s->max;
    s->count--;
    i = find(s, &k); /* the shift may have moved the hole */
  }
  s->table[i] = k;
  s->ring[(s->head + s->count) % s->max] = k;
  s->count++;
  return 1;
}

int idset_has(const struct idset *s, const char *id)
{
  struct key k;
  if(parse(id, &k))
    return 0;
  return !is_empty(&s->table[find(s, &k)]);
}

size_t idset_size(const struct idset *s)
{
  return s->count;
}
