#!/usr/bin/env python3
"""Integration: transient failures go through the retry queues and come back (DESIGN §3, §4);
exhausted retries park the job with its headers; one delay queue used again and again loses
nothing (RabbitMQ's dead-letter cycle detection would drop it silently)."""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (IntegrationTest, post_message, queue_get, queue_info, wait_for,  # noqa: E402
                     wait_queue_messages, watch_task)

PHONE = "+5511987654321"
# A failure of the message's own (WhatsApp throttling this send): retried through the retry
# queues. Outages (refused, 5xx, a closed session) are held off instead: test_41, test_42.
RATE_LIMITED = {"action": "status", "status": 429,
                "body": {"status": 429, "error": "Too Many Requests",
                         "response": {"message": ["rate-overlimit"]}}}


def rate_limited(times=None):
    return dict(RATE_LIMITED, times=times)


def statuses(docs):
    return [d["status"] for d in docs]


class RetryTest(IntegrationTest):

    def assert_retry_doc(self, doc, attempt, code, delay_s):
        """A RETRY document: error and next_retry_at set, next_retry_at ≈ updated_at + delay."""
        self.assertEqual(doc["status"], "RETRY", doc)
        self.assertEqual(doc["attempts"], attempt, doc)
        self.assertIsNone(doc["result"], doc)
        self.assertIsInstance(doc["error"], dict, doc)
        self.assertEqual(set(doc["error"]), {"code", "message"}, doc)
        self.assertEqual(doc["error"]["code"], code, doc)
        self.assertTrue(doc["error"]["message"], doc)
        updated = self.assertTime(doc["updated_at"])
        retry_at = self.assertTime(doc["next_retry_at"])
        self.assertAlmostEqual(retry_at - updated, delay_s, delta=0.25, msg=doc)

    def assert_queue_empty(self, queue):
        """No message ready in `queue` (read through the management API, which, unlike the
        queue's statistics, is not seconds behind). Only for queues without consumers, or
        once every task is settled."""
        wait_for(lambda: queue_get(queue) == [], 5, interval=0.2, what=f"{queue} to be empty")

    def test_one_transient_failure_then_success(self):
        cfg, api, _ = self.start_stack(
            faults=[rate_limited(1)])
        r = post_message(api, PHONE, "retry once")
        self.assertEqual(r.status, 202, r.body)
        task_id = r.json["task_id"]
        seen = watch_task(api, task_id, ("SUCCESS", "FAILURE"))
        self.assertEqual(statuses(seen)[-1], "SUCCESS", seen)
        self.assertIn("RETRY", statuses(seen), seen)
        retry = seen[statuses(seen).index("RETRY")]
        self.assert_retry_doc(retry, 1, "evolution_rate_limited", 1.0)
        self.assertIn("429", retry["error"]["message"])
        # Status moves forward only: nothing after RETRY goes back to PENDING.
        after = statuses(seen)[statuses(seen).index("RETRY"):]
        self.assertTrue(set(after) <= {"RETRY", "STARTED", "SUCCESS"}, seen)
        done = seen[-1]
        self.assertEqual(done["attempts"], 2, done)
        self.assertIsNone(done["error"], done)
        self.assertIsNone(done["next_retry_at"], done)
        # The retry came after the delay, not at once.
        self.assertGreaterEqual(self.assertTime(done["updated_at"]) - self.assertTime(retry["updated_at"]), 0.9)
        time.sleep(0.5)
        reqs = self.fake.requests()
        self.assertEqual([(q["status"], q["fault"]) for q in reqs],
                         [(429, "status"), (201, None)], reqs)
        self.assertEqual(reqs[0]["json"], reqs[1]["json"])
        self.assertEqual(done["result"], {"success": True, "phone": PHONE,
                                          "evolution_key": reqs[1]["key_id"]})
        self.assert_queue_empty(cfg.retry_queue("1s"))
        self.assertEqual(queue_get(cfg.dead_queue), [])

    def test_retries_exhausted_park_the_job(self):
        cfg, api, _ = self.start_stack(
            {"retry": {"delays": ["1s", "1s"]}},
            faults=[rate_limited()])  # always
        r = post_message(api, PHONE, "always failing")
        self.assertEqual(r.status, 202, r.body)
        task_id = r.json["task_id"]
        seen = watch_task(api, task_id, ("SUCCESS", "FAILURE"), timeout=20)
        failure = seen[-1]
        self.assertEqual(failure["status"], "FAILURE", seen)
        retries = [d for d in seen if d["status"] == "RETRY"]
        self.assertEqual(sorted({d["attempts"] for d in retries}), [1, 2], seen)
        for d in retries:
            self.assert_retry_doc(d, d["attempts"], "evolution_rate_limited", 1.0)
        self.assertEqual(failure["attempts"], 3, failure)
        self.assertEqual(failure["error"]["code"], "evolution_rate_limited", failure)
        self.assertIn("429", failure["error"]["message"])
        self.assertIsNone(failure["result"], failure)
        self.assertIsNone(failure["next_retry_at"], failure)

        dead = wait_queue_messages(cfg.dead_queue, lambda ms: len(ms) >= 1, 10)
        time.sleep(0.5)
        dead = queue_get(cfg.dead_queue)
        self.assertEqual(len(dead), 1, dead)
        props = dead[0]["properties"]
        headers = props["headers"]
        self.assertEqual(headers["x-failure-reason"], "retries_exhausted", headers)
        self.assertEqual(headers["x-attempts"], 3, headers)
        self.assertIn("429", headers["x-last-error"])
        failed_at = self.assertTime(headers["x-failed-at"], near=time.time())
        self.assertLessEqual(abs(failed_at - self.assertTime(failure["updated_at"])), 2)
        self.assertNotIn("x-death", headers)  # never copied onto a parked job
        self.assertEqual(props.get("message_id"), task_id)
        job = json.loads(dead[0]["payload"])
        self.assertEqual(job["task_id"], task_id)
        self.assertEqual(job["phone"], PHONE)
        self.assertEqual(job["message"], "always failing")

        reqs = self.fake.requests()
        self.assertEqual([q["status"] for q in reqs], [429, 429, 429], reqs)
        self.assert_queue_empty(cfg.queue)
        self.assert_queue_empty(cfg.retry_queue("1s"))
        # Parked means parked: no fourth attempt.
        time.sleep(1.5)
        self.assertEqual(len(self.fake.requests()), 3)

    def test_same_delay_queue_three_times_in_a_row(self):
        cfg, api, _ = self.start_stack(
            {"retry": {"delays": ["1s", "1s", "1s"]}},
            faults=[rate_limited(3)])
        r = post_message(api, PHONE, "three strikes")
        self.assertEqual(r.status, 202, r.body)
        seen = watch_task(api, r.json["task_id"], ("SUCCESS", "FAILURE"), timeout=25)
        done = seen[-1]
        self.assertEqual(done["status"], "SUCCESS", seen)
        self.assertEqual(done["attempts"], 4, done)
        self.assertEqual(sorted({d["attempts"] for d in seen if d["status"] == "RETRY"}),
                         [1, 2, 3], seen)
        time.sleep(0.5)
        reqs = self.fake.requests()
        self.assertEqual([q["status"] for q in reqs], [429, 429, 429, 201], reqs)
        self.assertEqual(done["result"]["evolution_key"], reqs[3]["key_id"])
        self.assertEqual(queue_get(cfg.dead_queue), [])
        self.assert_queue_empty(cfg.retry_queue("1s"))

    def test_different_delays_use_their_own_queues(self):
        """[1s, 2s]: the second retry waits in the 2s queue, about two seconds."""
        cfg, api, _ = self.start_stack(
            {"retry": {"delays": ["1s", "2s"]}},
            faults=[rate_limited(2)])
        r = post_message(api, PHONE, "two delays")
        self.assertEqual(r.status, 202, r.body)
        seen = watch_task(api, r.json["task_id"], ("SUCCESS", "FAILURE"), timeout=25)
        self.assertEqual(seen[-1]["status"], "SUCCESS", seen)
        self.assertEqual(seen[-1]["attempts"], 3, seen)
        retries = {d["attempts"]: d for d in seen if d["status"] == "RETRY"}
        self.assertEqual(sorted(retries), [1, 2], seen)
        self.assert_retry_doc(retries[1], 1, "evolution_rate_limited", 1.0)
        self.assert_retry_doc(retries[2], 2, "evolution_rate_limited", 2.0)
        reqs = self.fake.requests()
        self.assertEqual([q["status"] for q in reqs], [429, 429, 201], reqs)
        self.assertGreaterEqual(reqs[1]["time"] - reqs[0]["time"], 0.9)
        self.assertGreaterEqual(reqs[2]["time"] - reqs[1]["time"], 1.9)
        for name in (cfg.retry_queue("1s"), cfg.retry_queue("2s")):
            self.assertEqual(queue_info(name)["arguments"].get("x-message-ttl"),
                             {"1s": 1000, "2s": 2000}[name.rsplit(".", 1)[1]])

    def test_wrong_api_key_is_retried_then_parked(self):
        """401 is a configuration fault: retried like a transient failure, logged loudly."""
        cfg, api, consumer = self.start_stack({"evolution": {"api_key": "not-the-key"}})
        r = post_message(api, PHONE, "wrong key")
        self.assertEqual(r.status, 202, r.body)
        seen = watch_task(api, r.json["task_id"], ("SUCCESS", "FAILURE"))
        failure = seen[-1]
        self.assertEqual(failure["status"], "FAILURE", seen)
        self.assertEqual(failure["attempts"], 3, failure)
        self.assertEqual(failure["error"]["code"], "evolution_unauthorized", failure)
        self.assertEqual(sorted({d["attempts"] for d in seen if d["status"] == "RETRY"}), [1, 2], seen)
        self.assertEqual([q["status"] for q in self.fake.requests()], [401, 401, 401])
        dead = wait_queue_messages(cfg.dead_queue, lambda ms: len(ms) >= 1, 10)
        self.assertEqual(dead[0]["properties"]["headers"]["x-failure-reason"], "retries_exhausted")
        self.assertEqual(dead[0]["properties"]["headers"]["x-attempts"], 3)
        self.assertIn("configuration fault", consumer.log())
        self.assertNotIn("not-the-key", consumer.log())

    def test_server_errors_hold_without_spending_retries(self):
        """503 twice with one retry configured: held off (the task says RETRY with the outage's
        error, "held", no retry queue), sent once Evolution answers: SUCCESS at attempt 3."""
        cfg, api, consumer = self.start_stack(
            {"retry": {"delays": ["1s"]}},
            faults=[{"action": "status", "status": 503, "times": 2,
                     "body": {"status": 503, "error": "Service Unavailable",
                              "response": {"message": "busy"}}}])
        r = post_message(api, PHONE, "held twice")
        self.assertEqual(r.status, 202, r.body)
        seen = watch_task(api, r.json["task_id"], ("SUCCESS", "FAILURE"), timeout=20)
        self.assertEqual(seen[-1]["status"], "SUCCESS", seen)
        self.assertEqual(seen[-1]["attempts"], 3, seen)
        held = [d for d in seen if d["status"] == "RETRY"]
        self.assertTrue(held, seen)
        for d in held:
            self.assertEqual(d["error"]["code"], "evolution_http_503", d)
            self.assertIn("held until Evolution API", d["error"]["message"], d)
            self.assertIsNotNone(d["next_retry_at"], d)
        self.assertEqual([q["status"] for q in self.fake.requests()], [503, 503, 201])
        self.assertEqual(queue_info(cfg.retry_queue("1s")).get("messages", 0), 0)
        log = consumer.log()
        self.assertEqual(log.count("Evolution API unavailable: holding its jobs"), 1, log)
        self.assertEqual(log.count("Evolution API answers again: resuming"), 1, log)

    def test_timeout_holds_and_is_in_doubt(self):
        """A timeout after the request went out may hide a send: held off without a RETRY (the
        task stays STARTED), asked in findMessages, sent once: SUCCESS at attempt 2."""
        cfg, api, consumer = self.start_stack({"evolution": {"timeout": "1s"}},
                                              faults=[{"action": "hang", "seconds": 5, "times": 1}])
        r = post_message(api, PHONE, "slow gateway")
        self.assertEqual(r.status, 202, r.body)
        seen = watch_task(api, r.json["task_id"], ("SUCCESS", "FAILURE"))
        self.assertEqual(seen[-1]["status"], "SUCCESS", seen)
        self.assertEqual(seen[-1]["attempts"], 2, seen)
        self.assertNotIn("RETRY", statuses(seen), seen)
        reqs = self.fake.requests()
        self.assertEqual([q["fault"] for q in reqs], ["hang", None], reqs)
        self.assertEqual(seen[-1]["result"]["evolution_key"], reqs[1]["key_id"])
        self.assertIn("in doubt: asking Evolution API whether it went out", consumer.log())

if __name__ == "__main__":
    unittest.main()
