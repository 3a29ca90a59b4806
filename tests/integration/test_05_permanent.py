#!/usr/bin/env python3
"""Integration: permanent refusals of Evolution API fail the task at once and park the job
(DESIGN §4); a Prisma error after the send counts as sent and is never resent."""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (IntegrationTest, post_message, queue_get, wait_queue_messages,  # noqa: E402
                     watch_task)

PHONE = "+5511987654321"


class PermanentTest(IntegrationTest):

    def fail_at_once(self, api, phone, text, instance, code):
        """POSTs, expects FAILURE at the first attempt with error.code `code`, no RETRY on the
        way; returns (task_id, failure document)."""
        r = post_message(api, phone, text, instance)
        self.assertEqual(r.status, 202, r.body)
        task_id = r.json["task_id"]
        seen = watch_task(api, task_id, ("SUCCESS", "FAILURE"))
        failure = seen[-1]
        self.assertEqual(failure["status"], "FAILURE", seen)
        self.assertNotIn("RETRY", [d["status"] for d in seen], seen)
        self.assertEqual(failure["attempts"], 1, failure)
        self.assertEqual(set(failure["error"]), {"code", "message"}, failure)
        self.assertEqual(failure["error"]["code"], code, failure)
        self.assertTrue(failure["error"]["message"], failure)
        self.assertIsNone(failure["result"], failure)
        self.assertIsNone(failure["next_retry_at"], failure)
        return task_id, failure

    def assert_parked(self, cfg, task_id, reason, code):
        dead = wait_queue_messages(cfg.dead_queue, lambda ms: len(ms) >= 1, 10)
        self.assertEqual(len(dead), 1, dead)
        headers = dead[0]["properties"]["headers"]
        self.assertEqual(headers["x-failure-reason"], reason, headers)
        self.assertEqual(headers["x-attempts"], 1, headers)
        self.assertEqual(headers.get("x-error-code"), code, headers)
        self.assertTrue(headers["x-last-error"], headers)
        self.assertTime(headers["x-failed-at"], near=time.time())
        self.assertEqual(json.loads(dead[0]["payload"])["task_id"], task_id)
        return headers

    def test_number_not_on_whatsapp(self):
        cfg, api, _ = self.start_stack(not_on_whatsapp=["5511987654321"])
        task_id, failure = self.fail_at_once(api, PHONE, "ninguém", None, "number_not_on_whatsapp")
        self.assert_parked(cfg, task_id, "permanent", "number_not_on_whatsapp")
        time.sleep(1.5)  # longer than the retry delay: a retry would have shown by now
        reqs = self.fake.requests()
        self.assertEqual(len(reqs), 1, reqs)
        self.assertEqual(reqs[0]["status"], 400)
        self.assertEqual(len(queue_get(cfg.dead_queue)), 1)
        self.assertEqual(queue_get(cfg.queue), [])
        self.assertEqual(queue_get(cfg.retry_queue("1s")), [])

    def test_unknown_instance(self):
        cfg, api, _ = self.start_stack()
        task_id, failure = self.fail_at_once(api, PHONE, "a quem?", "ghost", "evolution_not_found")
        self.assertIn("ghost", failure["error"]["message"])
        self.assert_parked(cfg, task_id, "permanent", "evolution_not_found")
        time.sleep(1.5)
        reqs = self.fake.requests()
        self.assertEqual([(q["path"], q["status"]) for q in reqs],
                         [("/message/sendText/ghost", 404)], reqs)

    def test_schema_refusal_is_permanent(self):
        # The fake in v1 mode refuses the v2 body with a schema error (400, array of array).
        cfg, api, _ = self.start_stack(api_version="v1")
        task_id, _ = self.fail_at_once(api, PHONE, "wrong shape", None, "evolution_bad_request")
        self.assert_parked(cfg, task_id, "permanent", "evolution_bad_request")
        self.assertEqual(len(self.fake.requests()), 1)

    def test_prisma_error_counts_as_sent(self):
        cfg, api, _ = self.start_stack(faults=[{"action": "prisma", "times": 1}])
        r = post_message(api, PHONE, "enviado mas não gravado")
        self.assertEqual(r.status, 202, r.body)
        seen = watch_task(api, r.json["task_id"], ("SUCCESS", "FAILURE"))
        done = seen[-1]
        self.assertEqual(done["status"], "SUCCESS", seen)
        self.assertNotIn("RETRY", [d["status"] for d in seen], seen)
        self.assertEqual(done["attempts"], 1, done)
        # Evolution API gave no message id: there is none to report.
        self.assertEqual(done["result"], {"success": True, "phone": PHONE, "evolution_key": None})
        # ...and the task says why (commit 1985fc4: a SUCCESS event's error is shown).
        self.assertIsInstance(done["error"], dict, done)
        self.assertEqual(set(done["error"]), {"code", "message"}, done)
        self.assertEqual(done["error"]["code"], "sent_unconfirmed", done)
        self.assertTrue(done["error"]["message"], done)
        self.assertIsNone(done["next_retry_at"], done)
        time.sleep(1.5)  # a resend would come after the 1 s retry delay
        reqs = self.fake.requests()
        self.assertEqual([(q["status"], q["fault"], q["sent"]) for q in reqs],
                         [(400, "prisma", True)], reqs)
        self.assertEqual(self.fake.stats()["sent"], 1)
        self.assertEqual(queue_get(cfg.dead_queue), [])


if __name__ == "__main__":
    unittest.main()
