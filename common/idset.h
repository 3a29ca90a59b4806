/* A bounded set of task ids (UUIDs) that forgets the oldest first; the consumer uses it to
 * remember which tasks already reached SUCCESS. Not thread-safe (one owner thread). */
#ifndef MSG_IDSET_H
#define MSG_IDSET_H

#include <stddef.h>

struct idset;

/* Creates a set holding at most `max` ids (at least 1). NULL when out of memory. */
struct idset *idset_new(size_t max);

/* Frees the set; NULL is a no-op. */
void idset_free(struct idset *set);

/* Adds a UUID in its canonical text form; the oldest id is forgotten when the set is full.
 * Returns 1 when added, 0 when it was already there, -1 when `id` is not a UUID or memory ran
 * out. */
int idset_add(struct idset *set, const char *id);

/* 1 when the UUID is in the set, else 0 (also for text that is not a UUID). */
int idset_has(const struct idset *set, const char *id);

/* Ids held. */
size_t idset_size(const struct idset *set);

#endif
