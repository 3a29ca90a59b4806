"""One retry queue per delay: a job waiting out a long delay never holds back one waiting out a
short delay (a shared queue with per-message TTLs would expire them in queue order)."""
import time
import unittest

from harness import IntegrationTest, post_message, get_task, wait_for, wait_task_status, parse_rfc3339


class RetryDelaysTest(IntegrationTest):
    def test_short_delay_not_held_behind_long_one(self):
        cfg, api, _ = self.start_stack({"retry": {"delays": ["1s", "10s"]}})
        slow_number, quick_number = "52111111111", "52222222222"
        self.fake.config(faults=[
            {"match": {"number": slow_number}, "times": 2, "action": "status", "status": 429},
            {"match": {"number": quick_number}, "times": 1, "action": "status", "status": 429},
        ])
        slow = post_message(api, "+" + slow_number, "slow one").json["task_id"]

        def slow_in_long_queue():
            doc = get_task(api, slow).json
            return doc["status"] == "RETRY" and doc["attempts"] == 2
        wait_for(slow_in_long_queue, 10, what="the first job to wait out the 10 s delay")
        slow_doc = get_task(api, slow).json
        self.assertEqual(slow_doc["error"]["code"], "evolution_rate_limited")
        long_retry_at = parse_rfc3339(slow_doc["next_retry_at"])

        started = time.time()
        quick = post_message(api, "+" + quick_number, "quick one").json["task_id"]
        quick_doc = wait_task_status(api, quick, "SUCCESS", timeout=8)
        self.assertEqual(quick_doc["attempts"], 2)
        # Retried after its own 1 s delay, while the other job still waits.
        self.assertLess(time.time() - started, 6)
        self.assertEqual(get_task(api, slow).json["status"], "RETRY")
        self.assertLess(parse_rfc3339(quick_doc["updated_at"]), long_retry_at)

        slow_final = wait_task_status(api, slow, "SUCCESS", timeout=20)
        self.assertEqual(slow_final["attempts"], 3)
        # The 10 s delay was respected (scheduling slack aside).
        self.assertGreaterEqual(parse_rfc3339(slow_final["updated_at"]), long_retry_at - 0.5)


if __name__ == "__main__":
    unittest.main(verbosity=2)
