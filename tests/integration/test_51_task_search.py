#!/usr/bin/env python3
"""Integration (issue 15 §1, §2): GET /tasks searches the cache, newest first: by status (one or
several), instance, phone and created_at bounds, exactly (the answer is compared with what the
test sent); pages of `limit` with next_cursor stay stable while new tasks arrive; bad
parameters get 422 naming the field; a key with a tenant sees only its tenant's tasks. GET /stats
counts the same tasks by status, instance and error code, with rates and latency percentiles."""

import os
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import IntegrationTest, http, wait_for  # noqa: E402

A, B = "inst-a", "inst-b"
P1, P2, BAD = "+5511911110001", "+5511922220002", "+5511933330003"
KEYS = [{"name": "acme", "key": "acme-key", "scopes": ["send", "read"]},
        {"name": "beta", "key": "beta-key", "scopes": ["send", "read"]},
        {"name": "ops", "key": "ops-key", "scopes": ["admin", "read", "send"]}]


class TaskSearchTest(IntegrationTest):

    def setUp(self):
        super().setUp()
        self.cfg, self.api, _ = self.start_stack({"api": {"keys": KEYS}}, instances=(A, B),
                                                 not_on_whatsapp=[BAD.lstrip("+")])
        self.sent = []  # (task_id, key, instance, phone) in the order sent

    def send(self, key, instance, phone, text):
        r = http("POST", self.api.base_url + "/messages",
                 {"phone": phone, "message": text, "instance_name": instance}, {"X-API-Key": key})
        self.assertEqual(r.status, 202, r.body)
        self.sent.append((r.json["task_id"], key, instance, phone))
        time.sleep(0.003)  # distinct created_at, so "newest first" is checkable
        return r.json["task_id"]

    def search(self, key="ops-key", **params):
        r = http("GET", self.api.base_url + "/tasks?" + urllib.parse.urlencode(params, doseq=True),
                 None, {"X-API-Key": key})
        return r

    def ids(self, key="ops-key", **params):
        r = self.search(key, **params)
        self.assertEqual(r.status, 200, r.body)
        docs = r.json["tasks"]
        created = [d["created_at"] for d in docs]
        self.assertEqual(created, sorted(created, reverse=True), "not newest first")
        return [d["task_id"] for d in docs]

    def test_search_is_exact_and_pages_are_stable(self):
        for i in range(6):
            self.send("acme-key", A, P1, f"a{i}")
        for i in range(4):
            self.send("beta-key", B, P2, f"b{i}")
        for i in range(2):
            self.send("acme-key", A, BAD, f"bad{i}")
        final = {"SUCCESS", "FAILURE"}
        wait_for(lambda: {d["status"] for d in self.search(limit=500).json["tasks"]} <= final
                 and len(self.search(limit=500).json["tasks"]) == 12, 20, interval=0.3,
                 what="every task to end")
        newest_first = [t for t, *_ in reversed(self.sent)]
        self.assertEqual(self.ids(limit=500), newest_first)
        self.assertEqual(self.ids(status="FAILURE"), [t for t, _, _, p in reversed(self.sent) if p == BAD])
        self.assertEqual(self.ids(status="SUCCESS,FAILURE"), newest_first)
        self.assertEqual(self.ids(status=["SUCCESS", "FAILURE"]), newest_first)
        self.assertEqual(self.ids(status="PENDING"), [])
        self.assertEqual(self.ids(instance=B), [t for t, _, i, _ in reversed(self.sent) if i == B])
        self.assertEqual(self.ids(phone=P1), [t for t, _, _, p in reversed(self.sent) if p == P1])
        self.assertEqual(self.ids(phone="55 11 91111-0001"), self.ids(phone=P1))
        self.assertEqual(self.ids(instance=A, status="SUCCESS"),
                         [t for t, _, i, p in reversed(self.sent) if i == A and p != BAD])
        # created_at bounds, inclusive, from the documents themselves.
        docs = self.search(limit=500).json["tasks"]
        mid = docs[5]["created_at"]
        self.assertEqual(self.ids(since=mid, limit=500), [d["task_id"] for d in docs[:6]])
        self.assertEqual(self.ids(until=mid, limit=500), [d["task_id"] for d in docs[5:]])
        # A tenant's key sees its tenant's tasks only; admin sees all.
        self.assertEqual(self.ids("beta-key", limit=500),
                         [t for t, k, _, _ in reversed(self.sent) if k == "beta-key"])
        self.assertEqual(self.ids("acme-key", instance=B), [])

        # Pages of 5 while new tasks arrive: the pages after the first never shift.
        page1 = self.search(limit=5).json
        self.assertEqual([d["task_id"] for d in page1["tasks"]], newest_first[:5])
        for i in range(3):
            self.send("acme-key", A, P1, f"late{i}")
        seen = [d["task_id"] for d in page1["tasks"]]
        cursor = page1["next_cursor"]
        while cursor:
            page = self.search(limit=5, cursor=cursor).json
            seen += [d["task_id"] for d in page["tasks"]]
            cursor = page["next_cursor"]
        self.assertEqual(seen, newest_first)
        # The late ones are on a fresh first page.
        self.assertEqual(self.ids(limit=3), [t for t, *_ in reversed(self.sent[-3:])])

        # Bad parameters: 422 naming the field.
        for params, field in (({"limit": 0}, "limit"), ({"limit": 501}, "limit"),
                              ({"status": "DONE"}, "status"), ({"cursor": "nope"}, "cursor"),
                              ({"since": "yesterday"}, "since"), ({"phone": "abc"}, "phone"),
                              ({"instance": "no spaces"}, "instance")):
            self.assertError(self.search(**params), 422, "invalid_field", field=field)
        self.assertEqual(self.search("wrong-key").status, 401)

        # GET /stats over the same tasks (issue 15 §2), once the late ones are sent too.
        wait_for(lambda: len(self.ids(status="SUCCESS", limit=500)) == 13, 20, interval=0.3,
                 what="the late tasks to succeed")
        st = http("GET", self.api.base_url + "/stats", None, {"X-API-Key": "ops-key"}).json
        self.assertEqual(st["total"], 15, st)
        self.assertEqual(st["by_status"]["SUCCESS"], 13, st)
        self.assertEqual(st["by_status"]["FAILURE"], 2, st)
        self.assertEqual(st["by_status"]["PENDING"], 0, st)
        self.assertEqual(st["by_instance"][B]["SUCCESS"], 4, st)
        self.assertEqual(st["by_instance"][A]["FAILURE"], 2, st)
        self.assertEqual(st["failures_by_code"], {"number_not_on_whatsapp": 2}, st)
        self.assertAlmostEqual(st["rates_per_second"]["accepted"]["1m"], 15 / 60, places=3)
        self.assertAlmostEqual(st["rates_per_second"]["failure"]["15m"], 2 / 900, places=4)
        lat = st["success_latency_seconds"]
        self.assertEqual(lat["count"], 13, st)
        self.assertTrue(0 < lat["p50"] <= lat["p90"] <= lat["p99"] < 10, st)
        beta = http("GET", self.api.base_url + "/stats", None, {"X-API-Key": "beta-key"}).json
        self.assertEqual(beta["total"], 4, beta)
        self.assertEqual(list(beta["by_instance"]), [B], beta)


if __name__ == "__main__":
    unittest.main()
