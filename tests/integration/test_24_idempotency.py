"""Idempotency-Key: a repeat within the status retention returns the first task's id and sends
nothing again, on any api replica; the same key with another body is refused."""
import threading
import time
import unittest

from harness import IntegrationTest, free_port, post_message, wait_task_status


class IdempotencyTest(IntegrationTest):
    def test_repeat_returns_first_task(self):
        cfg, api, _ = self.start_stack()
        key = {"Idempotency-Key": "order-1234-otp"}
        first = post_message(api, "+52123456789", "code 1234", headers=key)
        self.assertEqual(first.status, 202, first.body)
        task_id = first.json["task_id"]
        wait_task_status(api, task_id, "SUCCESS")

        again = post_message(api, "+52 123 456 789", "code 1234", headers=key)
        self.assertEqual(again.status, 202, again.body)
        self.assertEqual(again.json["task_id"], task_id)
        self.assertEqual(again.json["status"], "SUCCESS")
        self.assertEqual(again.headers.get("idempotent-replayed"), "true")

        other = post_message(api, "+52123456789", "code 9999", headers=key)
        self.assertEqual(other.status, 422, other.body)
        self.assertEqual(other.json["error"]["code"], "idempotency_key_reused")
        self.assertEqual(other.json["error"]["field"], "Idempotency-Key")

        # Another replica learns the key from the status stream.
        replica = self.start_api(self.config_like(cfg, {"api": {"listen": f"127.0.0.1:{free_port()}"}}))
        third = post_message(replica, "+52123456789", "code 1234", headers=key)
        self.assertEqual(third.status, 202, third.body)
        self.assertEqual(third.json["task_id"], task_id)
        time.sleep(1)
        self.assertEqual(self.fake.stats()["sent"], 1)

        bad = post_message(api, "+52123456789", "x", headers={"Idempotency-Key": "caf\u00e9".encode().decode("latin-1")})
        self.assertEqual(bad.status, 422, bad.body)
        self.assertEqual(bad.json["error"]["field"], "Idempotency-Key")

    def test_concurrent_repeats_publish_once(self):
        cfg, api, _ = self.start_stack()
        key = {"Idempotency-Key": "burst-1"}
        results = []

        def post():
            results.append(post_message(api, "+52123456789", "burst", headers=key))
        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual([r.status for r in results], [202] * 8)
        ids = {r.json["task_id"] for r in results}
        self.assertEqual(len(ids), 1, ids)
        wait_task_status(api, ids.pop(), "SUCCESS")
        time.sleep(1)
        self.assertEqual(self.fake.stats()["sent"], 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
