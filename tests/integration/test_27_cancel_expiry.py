"""Cancel (DELETE /tasks/{id}) and expiry (expires_at / ttl): a cancelled or expired message is
never sent; expiry ends FAILURE "expired" and parks the job."""
import time
import unittest
import uuid

from harness import (IntegrationTest, get_task, http, post_message, queue_info, wait_for,
                     wait_queue_messages, wait_task_status)


def delete_task(api, task_id):
    return http("DELETE", f"{api.base_url}/tasks/{task_id}")


class CancelTest(IntegrationTest):
    def test_cancel_pending_is_never_sent(self):
        cfg, api, _ = self.start_stack(consumer=False)
        task_id = post_message(api, "+52123456789", "cancel me").json["task_id"]
        r = delete_task(api, task_id)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["status"], "CANCELLED")
        self.assertEqual(r.json["error"]["code"], "cancelled")
        again = delete_task(api, task_id)  # idempotent
        self.assertEqual(again.status, 200)
        consumer = self.start_consumer(cfg)
        wait_for(lambda: "task cancelled, not sending" in consumer.log(), 15,
                 what="the consumer to drop the cancelled job")
        wait_for(lambda: queue_info(cfg.queue).get("messages", 1) == 0, 10, what="an empty queue")
        self.assertEqual(self.fake.requests(), [])
        self.assertEqual(get_task(api, task_id).json["status"], "CANCELLED")

    def test_cancel_while_waiting_for_retry(self):
        cfg, api, _ = self.start_stack({"retry": {"delays": ["3s"]}})
        self.fake.config(faults=[{"action": "status", "status": 429, "times": None}])
        task_id = post_message(api, "+52123456789", "retry then cancel").json["task_id"]
        wait_task_status(api, task_id, "RETRY")
        r = delete_task(api, task_id)
        self.assertEqual(r.status, 200, r.body)
        time.sleep(5)  # past the retry delay: the job came back and was dropped
        self.assertEqual(len(self.fake.requests()), 1)
        self.assertEqual(get_task(api, task_id).json["status"], "CANCELLED")
        # The management API reports queue depths a few seconds late.
        wait_for(lambda: queue_info(cfg.queue).get("messages") == 0, 10, what="an empty queue")

    def test_conflict_and_unknown(self):
        cfg, api, _ = self.start_stack()
        task_id = post_message(api, "+52123456789", "sent already").json["task_id"]
        wait_task_status(api, task_id, "SUCCESS")
        r = delete_task(api, task_id)
        self.assertEqual(r.status, 409, r.body)
        self.assertEqual(r.json["error"]["code"], "not_cancellable")
        self.assertEqual(delete_task(api, str(uuid.uuid4())).status, 404)
        self.assertEqual(delete_task(api, "not-a-uuid").status, 404)
        allow = http("POST", f"{api.base_url}/tasks/{task_id}")
        self.assertEqual(allow.status, 405)
        self.assertEqual(allow.headers["allow"], "GET, HEAD, DELETE")


class ExpiryTest(IntegrationTest):
    def test_expired_job_is_never_sent(self):
        cfg, api, _ = self.start_stack(consumer=False)
        r = http("POST", f"{api.base_url}/messages",
                 {"phone": "+52123456789", "message": "your code is 1234", "ttl": "1s"})
        self.assertEqual(r.status, 202, r.body)
        task_id = r.json["task_id"]
        time.sleep(1.5)
        self.start_consumer(cfg)
        doc = wait_task_status(api, task_id, "FAILURE")
        self.assertEqual(doc["error"]["code"], "expired")
        self.assertEqual(self.fake.requests(), [])
        parked = wait_queue_messages(cfg.dead_queue, lambda m: len(m) == 1, 10)
        self.assertEqual(parked[0]["properties"]["headers"]["x-failure-reason"], "expired")

    def test_unexpired_job_is_sent(self):
        cfg, api, _ = self.start_stack()
        r = http("POST", f"{api.base_url}/messages",
                 {"phone": "+52123456789", "message": "in time", "ttl": 60})
        self.assertEqual(r.status, 202, r.body)
        wait_task_status(api, r.json["task_id"], "SUCCESS")

    def test_validation(self):
        cfg, api, _ = self.start_stack(consumer=False)
        base = {"phone": "+52123456789", "message": "x"}
        cases = [({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
                 ({"expires_at": "tomorrow"}, "expires_at"),
                 ({"ttl": "abc"}, "ttl"), ({"ttl": -5}, "ttl"), ({"ttl": "90d"}, "ttl"),
                 ({"ttl": "1m", "expires_at": "2999-01-01T00:00:00Z"}, "ttl")]
        for extra, field in cases:
            r = http("POST", f"{api.base_url}/messages", {**base, **extra})
            self.assertEqual(r.status, 422, (extra, r.body))
            self.assertEqual(r.json["error"]["field"], field, extra)
        # Nothing reached the broker (the management API reports depths a few seconds late).
        wait_for(lambda: queue_info(cfg.queue).get("messages") is not None, 15,
                 what="queue statistics")
        self.assertEqual(queue_info(cfg.queue)["messages"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
