/* Publisher-confirm bookkeeping: maps the sequence numbers of publishes on a confirm channel to
 * their owners, and settles them as the broker's basic.ack / basic.nack frames arrive. */
#include "confirms.h"

#include <stdlib.h>

/* Outstanding publishes form a ring indexed by sequence number: slot (seq - head_seq) from the
 * head. Sequence numbers are contiguous, so lookups are O(1) and settled slots are popped from
 * the head as soon as they are contiguous. */
struct slot {
  void *owner;
  unsigned char state; /* SLOT_OPEN, SLOT_RETURNED, SLOT_DONE */
};

enum { SLOT_OPEN, SLOT_RETURNED, SLOT_DONE };

struct confirms {
  struct slot *ring;
  size_t cap, head, count; /* count = slots from head_seq to next_seq - 1 */
  uint64_t head_seq, next_seq;
  size_t open;
  confirms_settle_fn fn;
  void *ctx;
};

struct confirms *confirms_new(confirms_settle_fn fn, void *ctx)
{
  struct confirms *c = calloc(1, sizeof *c);
  if(!c)
    return NULL;
  c->cap = 1024;
  c->ring = calloc(c->cap, sizeof *c->ring);
  if(!c->ring) {
    free(c);
    return NULL;
  }
  c->head_seq = c->next_seq = 1;
  c->fn = fn;
  c->ctx = ctx;
  return c;
}

void confirms_free(struct confirms *c)
{
  if(!c)
    return;
  free(c->ring);
  free(c);
}

static struct slot *at(struct confirms *c, size_t i)
{
  return &c->ring[(c->head + i) % c->cap];
}

static int grow(struct confirms *c)
{
  size_t ncap = c->cap * 2;
  struct slot *n = malloc(ncap * sizeof *n);
  if(!n)
    return -1;
  for(size_t i = 0; i < c->count; i++)
    n[i] = *at(c, i);
  free(c->ring);
  c->ring = n;
  c->cap = ncap;
  c->head = 0;
  return 0;
}

uint64_t confirms_add(struct confirms *c, void *owner)
{
  struct slot *s;
  if(c->count == c->cap && grow(c))
    return 0;
  s = at(c, c->count++);
  s->owner = owner;
  s->state = SLOT_OPEN;
  c->open++;
  return c->next_seq++;
}

static void settle_slot(struct confirms *c, struct slot *s, int ok)
{
  void *owner = s->owner;
  if(s->state == SLOT_DONE)
    return;
  if(s->state == SLOT_RETURNED)
    ok = CONFIRM_REFUSED;
  s->state = SLOT_DONE;
  s->owner = NULL;
  c->open--;
  c->fn(owner, ok, c->ctx);
}

static void pop_done(struct confirms *c)
{
  while(c->count && at(c, 0)->state == SLOT_DONE) {
    c->head = (c->head + 1) % c->cap;
    c->count--;
    c->head_seq++;
  }
}

void confirms_settle(struct confirms *c, uint64_t tag, int multiple, int ok)
{
  if(tag < c->head_seq || tag >= c->next_seq)
    return;
  if(multiple) {
    /* Settling may re-enter the tracker through the callback only to add publishes, which
     * never touches the slots below tag. */
    for(uint64_t seq = c->head_seq; seq <= tag; seq++)
      settle_slot(c, at(c, (size_t)(seq - c->head_seq)), ok);
  }
  else
    settle_slot(c, at(c, (size_t)(tag - c->head_seq)), ok);
  pop_done(c);
}

void confirms_mark_returned(struct confirms *c, int (*matches)(void *owner, void *arg), void *arg)
{
  for(size_t i = 0; i < c->count; i++) {
    struct slot *s = at(c, i);
    if(s->state == SLOT_OPEN && matches(s->owner, arg)) {
      s->state = SLOT_RETURNED;
      return;
    }
  }
}

void confirms_fail_all(struct confirms *c)
{
  while(c->count) {
    settle_slot(c, at(c, 0), CONFIRM_LOST);
    pop_done(c);
  }
  c->head = 0;
  c->head_seq = c->next_seq = 1;
}

size_t confirms_outstanding(const struct confirms *c)
{
  return c->open;
}
