#!/usr/bin/env python3
"""Integration: the api keeps no state of its own (DESIGN §1, §3): a restarted api, and any other
replica, answers for every task from the status stream."""

import os
import sys
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import IntegrationTest, free_port, get_task, post_message, wait_task_status  # noqa: E402


class RestartTest(IntegrationTest):

    def test_restarted_api_and_second_replica_answer(self):
        cfg, api, _ = self.start_stack()
        r = post_message(api, "+5511987654321", "antes do reinício")
        self.assertEqual(r.status, 202, r.body)
        task_id = r.json["task_id"]
        done = wait_task_status(api, task_id, "SUCCESS")
        key = self.fake.requests()[0]["key_id"]
        self.assertEqual(done["result"]["evolution_key"], key)

        self.assertEqual(api.stop(), 0, api.log_tail())
        # start_api waits for /health = 200, which includes "status stream caught up": the
        # very first answer must already know the task.
        api2 = self.start_api(cfg)
        r = get_task(api2, task_id)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json, done)

        # A second replica, same topology, another port.
        cfg3 = self.config_like(cfg, {"api": {"listen": f"127.0.0.1:{free_port()}"}})
        api3 = self.start_api(cfg3)
        self.assertNotEqual(api3.base_url, api2.base_url)
        r = get_task(api3, task_id)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json, done)

        # A task accepted by one replica is answered by the other, through to SUCCESS.
        r = post_message(api3, "+5511987654322", "pela réplica")
        self.assertEqual(r.status, 202, r.body)
        other = r.json["task_id"]
        doc2 = wait_task_status(api2, other, "SUCCESS")
        doc3 = wait_task_status(api3, other, "SUCCESS")
        self.assertEqual(doc2, doc3)
        self.assertEqual(doc2["result"]["evolution_key"], self.fake.requests()[1]["key_id"])
        self.assertEqual(doc2["result"]["phone"], "+5511987654322")

        # Unknown ids stay unknown everywhere; nothing was sent twice.
        for a in (api2, api3):
            self.assertEqual(get_task(a, str(uuid.uuid4())).status, 404)
        self.assertEqual(len(self.fake.requests()), 2)

    def test_task_accepted_while_no_consumer_runs(self):
        """A job accepted with no consumer running waits in the queue (PENDING on every
        replica, also after an api restart) and is delivered once a consumer starts."""
        cfg, api, _ = self.start_stack(consumer=False)
        r = post_message(api, "+5511987654321", "espera")
        self.assertEqual(r.status, 202, r.body)
        task_id = r.json["task_id"]
        doc = get_task(api, task_id)
        self.assertEqual(doc.status, 200, doc.body)
        self.assertEqual(doc.json["status"], "PENDING")
        self.assertEqual(doc.json["attempts"], 0)
        self.assertIsNone(doc.json["result"])
        self.assertEqual(api.stop(), 0)
        api = self.start_api(cfg)
        pending = get_task(api, task_id)
        self.assertEqual(pending.status, 200, pending.body)
        self.assertEqual(pending.json, doc.json)
        self.start_consumer(cfg)
        done = wait_task_status(api, task_id, "SUCCESS")
        self.assertEqual(done["created_at"], doc.json["created_at"])
        self.assertEqual(done["attempts"], 1)
        self.assertEqual(done["result"]["evolution_key"], self.fake.requests()[0]["key_id"])


if __name__ == "__main__":
    unittest.main()
