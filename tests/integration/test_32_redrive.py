"""Dead-letter redrive: parked jobs are listed without being removed, and a redrive returns
them to delivery (fresh attempts, task back to PENDING) so they reach SUCCESS once Evolution
API recovers; only matching jobs move, and the parked copy goes only after the move."""
import threading
import time
import unittest

from harness import IntegrationTest, http, queue_info, wait_for, wait_task_status


class RedriveTest(IntegrationTest):
    def park_three(self, tag):
        """A stack without retries whose first three messages are parked; (cfg, api, ids)."""
        cfg, api, _ = self.start_stack({"retry": {"delays": []}})
        self.fake.config(faults=[{"action": "status", "status": 429, "times": None}])
        ids = [http("POST", f"{api.base_url}/messages",
                    {"phone": "+52123456789", "message": f"{tag} {i}"}).json["task_id"]
               for i in range(3)]
        for task_id in ids:
            doc = wait_task_status(api, task_id, "FAILURE")
            self.assertEqual(doc["error"]["code"], "evolution_rate_limited")
        return cfg, api, ids

    def test_redrive_after_recovery(self):
        cfg, api, ids = self.park_three("parked")

        listed = http("GET", f"{api.base_url}/dead-letters?limit=10")
        self.assertEqual(listed.status, 200, listed.body)
        self.assertEqual(listed.json["count"], 3)
        self.assertEqual(sorted(m["task_id"] for m in listed.json["messages"]), sorted(ids))
        for m in listed.json["messages"]:
            self.assertEqual(m["reason"], "retries_exhausted")
            self.assertEqual(m["attempts"], 1)
        # Listing left them parked.
        wait_for(lambda: queue_info(cfg.dead_queue).get("messages") == 3, 15,
                 what="3 parked jobs")

        self.fake.config(faults=[])
        r = http("POST", f"{api.base_url}/dead-letters/redrive",
                 {"task_ids": ids[:2], "reason": "retries_exhausted"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["moved"], 2)
        self.assertEqual(sorted(r.json["task_ids"]), sorted(ids[:2]))
        for task_id in ids[:2]:
            doc = wait_task_status(api, task_id, "SUCCESS")
            self.assertEqual(doc["attempts"], 1)
            self.assertIsNone(doc["error"])
        self.assertEqual(http("GET", f"{api.base_url}/tasks/{ids[2]}").json["status"], "FAILURE")
        wait_for(lambda: queue_info(cfg.dead_queue).get("messages") == 1, 15,
                 what="the third job still parked")

        rest = http("POST", f"{api.base_url}/dead-letters/redrive", {"reason": "permanent"})
        self.assertEqual(rest.json["moved"], 0)
        rest = http("POST", f"{api.base_url}/dead-letters/redrive", {})
        self.assertEqual(rest.json["moved"], 1)
        wait_task_status(api, ids[2], "SUCCESS")
        self.assertEqual(sorted(self.fake.stats()["sent_by_text"]),
                         ["parked 0", "parked 1", "parked 2"])

    def test_validation(self):
        cfg, api, _ = self.start_stack(consumer=False)
        url = f"{api.base_url}/dead-letters/redrive"
        for body, field in (({"max": 0}, "max"), ({"task_ids": ["x"]}, "task_ids"),
                            ({"nope": 1}, "nope"), ({"rate": "fast"}, "rate")):
            r = http("POST", url, body)
            self.assertEqual(r.status, 422, (body, r.body))
            self.assertEqual(r.json["error"]["field"], field)
        self.assertEqual(http("GET", f"{api.base_url}/dead-letters?limit=0").status, 422)

    def test_rate_bounds(self):
        """A rate that would hold the worker for ages (or overflow a time) is refused with 422;
        the cap is on the planned duration, (max - 1) / rate <= 30 s."""
        cfg, api, _ = self.start_stack(consumer=False)
        url = f"{api.base_url}/dead-letters/redrive"
        for body in ({"rate": 1e-9, "max": 1}, {"rate": 1e-300}, {"rate": -1}, {"rate": 1e9},
                     {"rate": 0.5, "max": 100}, {"rate": 1, "max": 32}):
            t0 = time.monotonic()
            r = http("POST", url, body)
            self.assertError(r, 422, "invalid_field", field="rate")
            self.assertLess(time.monotonic() - t0, 2, body)
        for body in ({"rate": 0.1, "max": 1}, {"rate": 1, "max": 31}, {"rate": 0}):
            r = http("POST", url, body)
            self.assertEqual(r.status, 200, (body, r.body))
            self.assertEqual(r.json["moved"], 0)

    def test_stop_ends_a_slow_redrive(self):
        """SIGTERM during a paced redrive ends it at once: the answer says it stopped, the rest
        stays parked, and msg-api exits 0 within its drain, not after the redrive's pauses."""
        cfg, api, _ = self.park_three("slow")
        wait_for(lambda: queue_info(cfg.dead_queue).get("messages") == 3, 15, what="3 parked")
        got = {}

        def redrive():
            got["r"] = http("POST", f"{api.base_url}/dead-letters/redrive",
                            {"rate": 0.1, "max": 3}, timeout=40)
            got["t"] = time.monotonic()
        worker = threading.Thread(target=redrive)
        worker.start()
        time.sleep(2)
        t0 = time.monotonic()
        api.begin_stop()
        code = api.stop(timeout=15)
        stopped_in = time.monotonic() - t0
        worker.join(20)
        self.assertEqual(code, 0, api.log_tail())
        self.assertLess(stopped_in, 8, "msg-api waited for the redrive's pauses")
        r = got["r"]
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["moved"], 1, r.body)
        self.assertEqual(r.json["stopped"], "stopping", r.body)


if __name__ == "__main__":
    unittest.main(verbosity=2)
