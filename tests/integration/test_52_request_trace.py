#!/usr/bin/env python3
"""Integration (issue 19): one request followed end to end. A POST with X-Request-Id: abc-123
and a traceparent gets that id back; msg-api's access line, the consumer's delivery line, the
task document, GET /tasks?request_id=, the headers the fake Evolution API and the callback
receiver saw all carry it, and the calls made on the request's behalf continue its trace (same
trace id, new span). A request without an id, or with one that is not an id, gets one of ours.
Every log line of both daemons is typed JSON (the harness checks that for every test)."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_36_receipts_callbacks as receipts  # noqa: E402  (its receiver)
from harness import IntegrationTest, http, wait_for, wait_task_status  # noqa: E402

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class RequestTraceTest(IntegrationTest):

    def test_request_id_end_to_end(self):
        receiver = receipts.Receiver()
        self.addCleanup(receiver.close)
        cfg, api, cons = self.start_stack(
            {"callbacks": {"secret": receipts.CALLBACK_SECRET, "allow_hosts": ["127.0.0.1"],
                           "retry_delays": ["1s"]},
             "log": {"format": "json"}})
        r = http("POST", api.base_url + "/messages",
                 {"phone": "+5511987654321", "message": "traced", "callback_url": receiver.url},
                 {"X-Request-Id": "abc-123", "traceparent": PARENT})
        self.assertEqual(r.status, 202, r.body)
        self.assertEqual(r.headers.get("x-request-id"), "abc-123")
        task_id = r.json["task_id"]
        doc = wait_task_status(api, task_id, "SUCCESS")
        self.assertEqual(doc["request_id"], "abc-123", doc)
        found = http("GET", api.base_url + "/tasks?request_id=abc-123").json["tasks"]
        self.assertEqual([d["task_id"] for d in found], [task_id])

        # msg-api's access line for the POST: route pattern, typed status, tenant never the key.
        access = [o for o in json_lines(api.log()) if o.get("msg") == "request"
                  and o.get("request_id") == "abc-123"]
        self.assertEqual(len(access), 1, access)
        self.assertEqual(access[0]["method"], "POST")
        self.assertEqual(access[0]["route"], "/messages")
        self.assertEqual(access[0]["status"], 202)
        self.assertEqual(access[0]["task_id"], task_id)
        self.assertIsInstance(access[0]["duration_ms"], float)
        self.assertGreater(access[0]["bytes"], 0)
        self.assertEqual(access[0]["client"], "127.0.0.1")
        # The GET of the task names its route, not the path with the id in it.
        gets = [o for o in json_lines(api.log()) if o.get("msg") == "request"
                and o.get("method") == "GET" and o.get("task_id") == task_id]
        self.assertTrue(gets)
        self.assertEqual({o["route"] for o in gets}, {"/tasks/{task_id}"})

        # The consumer's delivery line.
        wait_for(lambda: any(o.get("msg") == "message delivered" for o in json_lines(cons.log())),
                 10, what="the delivery line")
        delivered = [o for o in json_lines(cons.log()) if o.get("msg") == "message delivered"]
        self.assertEqual(delivered[0]["request_id"], "abc-123", delivered)
        self.assertEqual(delivered[0]["attempt"], 1)

        # What Evolution API saw: the id, and a child of the trace.
        sent = self.fake.requests()
        self.assertEqual(len(sent), 1)
        h = {k.lower(): v for k, v in sent[0]["headers"].items()}
        self.assertEqual(h.get("x-request-id"), "abc-123", h)
        tp = h.get("traceparent", "")
        self.assertRegex(tp, rf"^00-{TRACE}-[0-9a-f]{{16}}-01$")
        self.assertNotEqual(tp, PARENT)

        # What the callback receiver saw.
        wait_for(lambda: receiver.requests, 15, what="the SUCCESS callback")
        cb = receiver.requests[0]["headers"]
        self.assertEqual(cb.get("x-request-id"), "abc-123", cb)
        self.assertRegex(cb.get("traceparent", ""), rf"^00-{TRACE}-[0-9a-f]{{16}}-01$")

        # No id, or one that is not an id: ours, a UUID.
        for sent_id in (None, "has spaces in it", "x" * 65):
            headers = {"X-Request-Id": sent_id} if sent_id else {}
            r = http("POST", api.base_url + "/messages",
                     {"phone": "+5511987654321", "message": "untraced"}, headers)
            self.assertEqual(r.status, 202, r.body)
            self.assertRegex(r.headers.get("x-request-id", ""),
                             r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        # Errors are named too.
        r = http("GET", api.base_url + "/nowhere", None, {"X-Request-Id": "err-1"})
        self.assertEqual((r.status, r.headers.get("x-request-id")), (404, "err-1"))


if __name__ == "__main__":
    unittest.main()
