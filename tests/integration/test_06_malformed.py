#!/usr/bin/env python3
"""Integration: a job that cannot be parsed is parked at once with x-failure-reason malformed and
never loops (DESIGN §4); the consumer keeps delivering; any AMQP client may publish a job."""

import datetime
import json
import os
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (EVOLUTION_INSTANCE, IntegrationTest, get_task, http, mgmt_publish,  # noqa: E402
                     post_message, queue_get, queue_info, wait_for, wait_queue_messages,
                     wait_task_status)

PHONE = "+5511987654321"


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job(**fields):
    body = {"v": 1, "task_id": str(uuid.uuid4()), "phone": PHONE, "message": "olá",
            "instance_name": EVOLUTION_INSTANCE, "created_at": now_rfc3339()}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...})


class MalformedTest(IntegrationTest):

    def test_garbage_is_parked_once_and_delivery_goes_on(self):
        cfg, api, consumer = self.start_stack()
        garbage = [
            "this is not JSON",
            "",
            "[1, 2, 3]",
            job(v=2),                      # unknown schema version
            job(task_id="not-a-uuid"),
            job(phone="not a phone"),
            job(message="   "),
            job(instance_name="../admin"),  # must never become part of a URL path
            job(created_at="yesterday"),
            job(message=...),              # a required field missing
            '{"v": 1, "v": 1}',
        ]
        for payload in garbage:
            self.assertTrue(mgmt_publish(cfg.exchange, "send", payload,
                                         {"content_type": "application/json", "delivery_mode": 2}),
                            f"not routed: {payload!r}")
        dead = wait_queue_messages(cfg.dead_queue, lambda ms: len(ms) >= len(garbage), 10)
        # A valid message still goes through afterwards.
        r = post_message(api, PHONE, "depois do lixo")
        self.assertEqual(r.status, 202, r.body)
        doc = wait_task_status(api, r.json["task_id"], "SUCCESS")
        self.assertEqual(doc["attempts"], 1)
        time.sleep(1.5)  # a parked job that looped would be back by now (retry delay is 1 s)
        dead = queue_get(cfg.dead_queue)
        self.assertEqual(sorted(m["payload"] for m in dead), sorted(garbage),
                         "each malformed job parked exactly once, body unchanged")
        for m in dead:
            headers = m["properties"]["headers"]
            with self.subTest(payload=m["payload"][:60]):
                self.assertEqual(headers["x-failure-reason"], "malformed", headers)
                self.assertEqual(headers["x-attempts"], 1, headers)
                self.assertTrue(headers["x-last-error"], headers)
                self.assertTime(headers["x-failed-at"], near=time.time())
                self.assertNotIn("x-death", headers)
        by_payload = {m["payload"]: m["properties"]["headers"] for m in dead}
        self.assertIn("JSON", by_payload["this is not JSON"]["x-last-error"])
        # Only the valid message reached Evolution API.
        reqs = self.fake.requests()
        self.assertEqual([q["json"] for q in reqs], [{"number": PHONE[1:], "text": "depois do lixo"}])
        # The job queue ends empty (queue statistics lag a few seconds behind).
        wait_for(lambda: queue_info(cfg.queue).get("messages") == 0, 15, interval=0.5,
                 what=f"{cfg.queue} to report 0 messages")
        self.assertEqual(queue_get(cfg.retry_queue("1s")), [])
        self.assertTrue(consumer.running())
        r = http("GET", consumer.base_url + "/readyz")
        self.assertEqual(r.status, 200, r.body)

    def test_job_published_by_another_client(self):
        """Any AMQP client may publish a job (DESIGN §3); the api learns of it through the
        status stream."""
        cfg, api, _ = self.start_stack()
        task_id = str(uuid.uuid4())
        payload = job(task_id=task_id, message="de outro cliente")
        self.assertTrue(mgmt_publish(cfg.exchange, "send", payload, {
            "content_type": "application/json", "delivery_mode": 2, "message_id": task_id,
            "correlation_id": task_id, "reply_to": cfg.status_stream, "type": "message.send"}))
        doc = wait_task_status(api, task_id, "SUCCESS")
        reqs = self.fake.requests()
        self.assertEqual(len(reqs), 1, reqs)
        self.assertEqual(reqs[0]["json"], {"number": PHONE[1:], "text": "de outro cliente"})
        self.assertEqual(doc["result"], {"success": True, "phone": PHONE,
                                         "evolution_key": reqs[0]["key_id"]})
        self.assertEqual(doc["attempts"], 1)
        self.assertEqual(get_task(api, task_id).json, doc)


if __name__ == "__main__":
    unittest.main()
