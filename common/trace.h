/* Request ids and W3C trace context (traceparent), so one request can be followed from its
 * HTTP call through the job, every status event, the Evolution call and the status callback. */
#ifndef MSG_TRACE_H
#define MSG_TRACE_H

#include <stddef.h>

/* A request id: 1-64 characters from A-Z a-z 0-9 . _ : - (what a proxy or client sends as
 * X-Request-Id; anything else is replaced by one of ours). */
#define TRACE_REQUEST_ID_MAX 64
/* "00-" 32 hex "-" 16 hex "-" 2 hex, and NUL. */
#define TRACE_PARENT_LEN 56

/* 1 when s is a request id as above. */
int trace_request_id_ok(const char *s);

/* A new request id (a random UUID) into out[TRACE_REQUEST_ID_MAX + 1]. */
void trace_new_request_id(char *out);

/* 1 when s is a traceparent of version 00 with non-zero trace and parent ids (W3C Trace
 * Context §3.2; upper-case hex is refused, as the spec says). */
int trace_parent_ok(const char *s);

/* A new traceparent (a new trace, sampled) into out[TRACE_PARENT_LEN]. */
void trace_new_parent(char *out);

/* The traceparent of a call made on behalf of `parent`: the same trace id, a new span id,
 * the same flags. out[TRACE_PARENT_LEN]; a parent that is not valid starts a new trace. */
void trace_child(const char *parent, char *out);

#endif
