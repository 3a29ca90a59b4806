#!/usr/bin/env python3
"""Integration: evolution.api_version v1 sends v1.8's body shape (DESIGN §4, research §3)."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import EVOLUTION_INSTANCE, EVOLUTION_KEY, IntegrationTest, post_message, wait_task_status  # noqa: E402


class V1Test(IntegrationTest):

    def test_v1_body_and_key(self):
        cfg, api, _ = self.start_stack({"evolution": {"api_version": "v1"}}, api_version="v1")
        text = "Hola Carlos, versão 1 ✓"
        r = post_message(api, "+52 123 456 789", text)
        self.assertEqual(r.status, 202, r.body)
        doc = wait_task_status(api, r.json["task_id"], ("SUCCESS", "FAILURE"))
        time.sleep(0.3)
        reqs = self.fake.requests()
        self.assertEqual(len(reqs), 1, reqs)
        req = reqs[0]
        self.assertEqual(req["path"], f"/message/sendText/{EVOLUTION_INSTANCE}")
        self.assertEqual(req["headers"].get("apikey"), EVOLUTION_KEY)
        self.assertEqual(req["json"], {"number": "52123456789", "textMessage": {"text": text}})
        self.assertEqual(req["status"], 201)
        self.assertRegex(req["key_id"], r"^BAE5[0-9A-F]{12}$")
        self.assertEqual(doc["status"], "SUCCESS", doc)
        self.assertEqual(doc["attempts"], 1)
        self.assertEqual(doc["result"], {"success": True, "phone": "+52123456789",
                                         "evolution_key": req["key_id"]})

    def test_v1_transient_failure_retries(self):
        cfg, api, _ = self.start_stack({"evolution": {"api_version": "v1"}}, api_version="v1",
                                       faults=[{"action": "timed_out_500", "times": 1}])
        r = post_message(api, "+5511987654321", "v1 retry")
        self.assertEqual(r.status, 202, r.body)
        doc = wait_task_status(api, r.json["task_id"], ("SUCCESS", "FAILURE"))
        self.assertEqual(doc["status"], "SUCCESS", doc)
        self.assertEqual(doc["attempts"], 2, doc)
        reqs = self.fake.requests()
        self.assertEqual([q["status"] for q in reqs], [500, 201], reqs)
        self.assertEqual(reqs[0]["json"], reqs[1]["json"])
        self.assertEqual(doc["result"]["evolution_key"], reqs[1]["key_id"])


if __name__ == "__main__":
    unittest.main()
