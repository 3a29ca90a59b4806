/* Per-instance lanes and their token buckets (see lanes.h). */
#include "lanes.h"

#include "reload.h"

#include <stdlib.h>
#include <string.h>

struct lane_table {
  const struct cfg *cfg;
  struct lane **lanes; /* creation order */
  size_t n, cap;
  size_t *slots; /* open addressing: index + 1, 0 = empty; size is a power of two */
  size_t n_slots;
};

static uint64_t hash_name(const char *s)
{
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for(; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

struct lane_table *lanes_new(const struct cfg *cfg)
{
  struct lane_table *t = calloc(1, sizeof *t);
  if(!t)
    return NULL;
  t->cfg = cfg;
  t->n_slots = 64;
  t->slots = calloc(t->n_slots, sizeof *t->slots);
  if(!t->slots) {
    free(t);
    return NULL;
  }
  return t;
}

void lanes_free(struct lane_table *t)
{
  if(!t)
    return;
  for(size_t i = 0; i < t->n; i++)
    free(t->lanes[i]);
  free(t->lanes);
  free(t->slots);
  free(t);
}

static size_t *find_slot(struct lane_table *t, const char *instance)
{
  size_t mask = t->n_slots - 1, i = (size_t)hash_name(instance) & mask;
  while(t->slots[i] && strcmp(t->lanes[t->slots[i] - 1]->instance, instance))
    i = (i + 1) & mask;
  return &t->slots[i];
}

static int grow(struct lane_table *t)
{
  size_t n_slots = t->n_slots * 2, *slots = calloc(n_slots, sizeof *slots), *old = t->slots;
  if(!slots)
    return -1;
  t->slots = slots;
  t->n_slots = n_slots;
  for(size_t i = 0; i < t->n; i++)
    *find_slot(t, t->lanes[i]->instance) = i + 1;
  free(old);
  return 0;
}

struct lane *lanes_get(struct lane_table *t, const char *instance, int64_t now_us)
{
  size_t *slot = find_slot(t, instance);
  struct lane *l;
  if(*slot)
    return t->lanes[*slot - 1];
  if(strlen(instance) > JOB_INSTANCE_MAX)
    return NULL;
  /* At most half full, so probes stay short and always end. */
  if((t->n + 1) * 2 > t->n_slots) {
    if(grow(t))
      return NULL;
    slot = find_slot(t, instance);
  }
  if(t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 16;
    struct lane **lanes = realloc(t->lanes, cap * sizeof *lanes);
    if(!lanes)
      return NULL;
    t->lanes = lanes;
    t->cap = cap;
  }
  if(!(l = calloc(1, sizeof *l)))
    return NULL;
  strcpy(l->instance, instance);
  l->rate = cfg_instance_rate(t->cfg, instance);
  l->burst = l->tokens = t->cfg->evolution.rate_burst;
  l->refilled_us = now_us;
  l->index = t->n;
  l->forward_tail = &l->forward_head;
  l->wait_tail = &l->wait_head;
  t->lanes[t->n++] = l;
  *slot = t->n;
  return l;
}

size_t lanes_count(const struct lane_table *t)
{
  return t->n;
}

struct lane *lanes_at(const struct lane_table *t, size_t i)
{
  return t->lanes[i];
}

static void refill(struct lane *l, int64_t now_us)
{
  if(now_us > l->refilled_us) {
    l->tokens += (double)(now_us - l->refilled_us) * l->rate / 1e6;
    if(l->tokens > l->burst)
      l->tokens = l->burst;
  }
  l->refilled_us = now_us;
}

/* After a SIGHUP (reload.h) the lane takes its rate and burst again. */
static void refresh(struct lane *l)
{
  unsigned gen = reload_generation();
  if(l->rates_gen == gen)
    return;
  reload_rate(l->instance, &l->rate, &l->burst);
  if(l->tokens > l->burst)
    l->tokens = l->burst;
  l->rates_gen = gen;
}

int lane_take(struct lane *l, int64_t now_us)
{
  refresh(l);
  if(l->rate <= 0)
    return 1;
  refill(l, now_us);
  if(l->tokens < 1)
    return 0;
  l->tokens -= 1;
  return 1;
}

int64_t lane_wait_us(struct lane *l, int64_t now_us)
{
  refresh(l);
  if(l->rate <= 0)
    return 0;
  refill(l, now_us);
  if(l->tokens >= 1)
    return 0;
  /* Rounded up, so a wake-up never comes a microsecond before the token. */
  return (int64_t)((1 - l->tokens) * 1e6 / l->rate) + 1;
}

static void push(struct lane_item ***tail, struct lane_item *it)
{
  it->next = NULL;
  **tail = it;
  *tail = &it->next;
}

static struct lane_item *pop(struct lane_item **head, struct lane_item ***tail)
{
  struct lane_item *it = *head;
  if(it && !(*head = it->next))
    *tail = head;
  return it;
}

void lane_hold_for_open(struct lane *l, struct lane_item *it)
{
  push(&l->forward_tail, it);
}

struct lane_item *lane_next_for_open(struct lane *l)
{
  return pop(&l->forward_head, &l->forward_tail);
}

int lane_has_held_for_open(const struct lane *l)
{
  return l->forward_head != NULL;
}

int lane_admit(struct lane *l, struct lane_item *it, int64_t now_us)
{
  /* First come, first served: a token never lets a job overtake one already waiting. */
  if(!l->wait_head && lane_take(l, now_us))
    return 1;
  push(&l->wait_tail, it);
  l->waiting++;
  return 0;
}

struct lane_item *lane_next_ready(struct lane *l, int64_t now_us)
{
  if(!l->wait_head || !lane_take(l, now_us))
    return NULL;
  l->waiting--;
  return pop(&l->wait_head, &l->wait_tail);
}

struct lane_item *lane_next_held(struct lane *l)
{
  struct lane_item *it = pop(&l->wait_head, &l->wait_tail);
  if(it)
    l->waiting--;
  return it;
}

size_t lane_held(const struct lane *l)
{
  return l->waiting;
}

void lane_reset(struct lane *l)
{
  l->open = 0;
  l->consumer_tag[0] = '\0';
}
