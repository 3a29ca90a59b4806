"""A job that keeps coming back without an outcome (consumers dying on it) is parked by the
consumer on its last delivery before the queue's poison guard would dead-letter it silently:
its task ends FAILURE with error.code poison_job, and it is never sent."""
import unittest

from harness import (IntegrationTest, post_message, queue_get, queue_info, wait_for,
                     wait_task_status)


class PoisonJobTest(IntegrationTest):
    def test_last_delivery_parks_with_failure(self):
        cfg, api, _ = self.start_stack(consumer=False)
        limit = queue_info(cfg.queue)["arguments"]["x-delivery-limit"]
        task_id = post_message(api, "+5511987654321", "poison").json["task_id"]
        # Returned limit - 1 times, as consumers that crash on it would do.
        for _ in range(limit - 1):
            got = queue_get(cfg.queue, count=1, ackmode="reject_requeue_true")
            self.assertEqual(len(got), 1)
        self.start_consumer(cfg)
        doc = wait_task_status(api, task_id, "FAILURE")
        self.assertEqual(doc["error"]["code"], "poison_job", doc)
        self.assertIn(f"delivered {limit} times", doc["error"]["message"])
        self.assertEqual(self.fake.requests(), [], "a poison job is not sent")
        dead = wait_for(lambda: queue_get(cfg.dead_queue), 10, interval=0.2,
                        what="the job in the dead queue")
        self.assertEqual(len(dead), 1, dead)
        headers = dead[0]["properties"]["headers"]
        self.assertEqual(headers["x-failure-reason"], "delivery_limit", headers)
        self.assertEqual(headers["x-error-code"], "poison_job", headers)
        self.assertEqual(queue_get(cfg.queue), [])

    def test_fewer_returns_still_deliver(self):
        cfg, api, _ = self.start_stack(consumer=False)
        task_id = post_message(api, "+5511987654321", "returned twice").json["task_id"]
        for _ in range(2):
            self.assertEqual(len(queue_get(cfg.queue, count=1, ackmode="reject_requeue_true")), 1)
        self.start_consumer(cfg)
        wait_task_status(api, task_id, "SUCCESS")
        self.assertEqual(len(self.fake.requests()), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
