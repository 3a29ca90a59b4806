/* Idempotency-Key handling: claims while a first request waits for its confirm, replays from
 * the task cache, and requests whose outcome is unknown (in_doubt.h). */
#include "http_internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

static struct idem_claim **find_claim(struct http_server *srv, const char *key)
{
  struct idem_claim **pp = &srv->claims;
  while(*pp && strcmp((*pp)->key, key))
    pp = &(*pp)->next;
  return pp;
}

/* Claims `key` for this request, waiting (bounded) while another request holds it. Returns 1
 * when claimed (release with idem_release), 0 when the wait timed out. */
int idem_claim(struct http_server *srv, struct idem_claim *claim, const char *key)
{
  struct timespec deadline;
  int ok = 1;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += CONFIRM_WAIT_MS / 1000 + 1;
  snprintf(claim->key, sizeof claim->key, "%s", key);
  claim->next = NULL;
  pthread_mutex_lock(&srv->idem_lock);
  while(*find_claim(srv, key))
    if(pthread_cond_timedwait(&srv->idem_done, &srv->idem_lock, &deadline)) {
      ok = 0;
      break;
    }
  if(ok) {
    claim->next = srv->claims;
    srv->claims = claim;
  }
  pthread_mutex_unlock(&srv->idem_lock);
  return ok;
}

void idem_release(struct http_server *srv, struct idem_claim *claim)
{
  struct idem_claim **pp;
  pthread_mutex_lock(&srv->idem_lock);
  pp = find_claim(srv, claim->key);
  if(*pp)
    *pp = claim->next;
  pthread_cond_broadcast(&srv->idem_done);
  pthread_mutex_unlock(&srv->idem_lock);
}

/* The 202 of a repeat answered from the first request with its Idempotency-Key. */
int idem_reply_replayed(struct mg_connection *conn, struct http_server *srv,
                          const char *task_id, enum task_status status)
{
  atomic_fetch_add(&srv->metrics.replays, 1);
  return http_reply(conn, 202,
               json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "message",
                         "Message already accepted with this Idempotency-Key", "task_id", task_id,
                         "status", status_name(status)),
               "Idempotent-Replayed", "true");
}

/* Answers a repeat of an earlier request with the same Idempotency-Key: the first task's id,
 * or 422 when the key was used for a different request. Returns 0 when the key is new. */
int idem_replay(struct mg_connection *conn, struct http_server *srv, const struct job *job,
                const char *scoped)
{
  char task_id[UTIL_UUID_LEN];
  uint64_t hash;
  enum task_status status;
  if(!task_cache_find_idempotent(srv->deps.cache, scoped, task_id, &hash, &status))
    return 0;
  if(hash && hash != job_request_hash(job))
    return http_reply_error(conn, 422, "idempotency_key_reused",
                       "this Idempotency-Key was used for a different request", "Idempotency-Key",
                       NULL, NULL);
  return idem_reply_replayed(conn, srv, task_id, status);
}

/* The 504 of a request whose outcome is unknown. */
int idem_reply_outcome_unknown(struct mg_connection *conn, const char *task_id)
{
  char location[UTIL_UUID_LEN + 8];
  snprintf(location, sizeof location, "/tasks/%s", task_id);
  return http_reply(conn, 504,
               json_pack("{s:b, s:s, s:{s:s, s:s}}", "success", 0, "task_id", task_id, "error",
                         "code", "outcome_unknown", "message", OUTCOME_UNKNOWN_MESSAGE),
               "Location", location);
}

/* A repeat of a request whose outcome was unknown (in_doubt.h): 504 again while its confirm is
 * still awaited, 202 with its task id once it came; after a refusal or a lost connection the
 * job goes out again with the same task id (job->task_id is set, 0 returned). */
int idem_repeat_in_doubt(struct mg_connection *conn, struct http_server *srv, struct job *job,
                         const char *scoped)
{
  enum in_doubt_state state;
  uint64_t hash;
  char known[UTIL_UUID_LEN];
  if(!in_doubt_get(srv->in_doubt, scoped, known, &hash, &state))
    return 0;
  if(hash != job_request_hash(job))
    return http_reply_error(conn, 422, "idempotency_key_reused",
                       "this Idempotency-Key was used for a different request", "Idempotency-Key",
                       NULL, NULL);
  if(state == IN_DOUBT_PENDING)
    return idem_reply_outcome_unknown(conn, known);
  if(state == IN_DOUBT_CONFIRMED) {
    enum task_status status = TASK_PENDING;
    int attempt;
    task_cache_status(srv->deps.cache, known, &status, &attempt);
    return idem_reply_replayed(conn, srv, known, status);
  }
  memcpy(job->task_id, known, UTIL_UUID_LEN);
  return 0;
}

/* The publisher's late word on a job whose request was answered 504 (publisher thread). */
void idem_on_late_outcome(const char *task_id, enum pub_result result, void *ctx)
{
  struct http_server *srv = ctx;
  in_doubt_settle(srv->in_doubt, task_id,
                  result == PUB_OK         ? IN_DOUBT_CONFIRMED
                  : result == PUB_REJECTED ? IN_DOUBT_REFUSED
                                           : IN_DOUBT_LOST);
  log_event(CFG_LOG_INFO, "late outcome of a job answered 504", "task_id", task_id, "outcome",
            result == PUB_OK ? "confirmed" : result == PUB_REJECTED ? "refused" : "lost", NULL);
}
