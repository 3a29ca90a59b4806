"""Scheduled send (send_at): held in the broker's delay queues, not in a consumer's memory; the
task shows SCHEDULED; never sent before its time, sent within about a second after it, also
across a consumer restart; cancellable."""
import datetime
import time
import unittest

from harness import IntegrationTest, get_task, http, parse_rfc3339, wait_for, wait_task_status


def rfc3339(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class ScheduledTest(IntegrationTest):
    def post_at(self, api, text, when):
        r = http("POST", f"{api.base_url}/messages",
                 {"phone": "+52123456789", "message": text, "send_at": rfc3339(when)})
        self.assertEqual(r.status, 202, r.body)
        self.assertEqual(r.json["status"], "SCHEDULED")
        return r.json["task_id"]

    def first_sent_time(self, text):
        for q in self.fake.requests():
            if q["text"] == text:
                return q["time"]
        return None

    def test_sent_on_time_not_before(self):
        cfg, api, _ = self.start_stack()
        send_at = time.time() + 4
        task_id = self.post_at(api, "scheduled one", send_at)
        self.assertEqual(get_task(api, task_id).json["status"], "SCHEDULED")
        time.sleep(2)
        self.assertEqual(self.fake.requests(), [], "sent before its time")
        doc = wait_task_status(api, task_id, "SUCCESS", timeout=15)
        sent = self.first_sent_time("scheduled one")
        self.assertIsNotNone(sent)
        self.assertGreaterEqual(sent, send_at - 0.05)
        self.assertLess(sent, send_at + 1.5)
        self.assertEqual(doc["attempts"], 1)
        self.assertEqual(len(self.fake.requests()), 1)

    def test_across_consumer_restart(self):
        cfg, api, consumer = self.start_stack()
        send_at = time.time() + 5
        task_id = self.post_at(api, "survives a restart", send_at)
        time.sleep(1)
        self.assertEqual(consumer.stop(), 0)
        time.sleep(1.5)
        self.start_consumer(cfg)
        wait_task_status(api, task_id, "SUCCESS", timeout=20)
        sent = self.first_sent_time("survives a restart")
        self.assertGreaterEqual(sent, send_at - 0.05)
        self.assertLess(sent, send_at + 1.5)
        self.assertEqual(len(self.fake.requests()), 1)

    def test_cancel_scheduled(self):
        cfg, api, _ = self.start_stack()
        task_id = self.post_at(api, "never", time.time() + 2)
        r = http("DELETE", f"{api.base_url}/tasks/{task_id}")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["status"], "CANCELLED")
        time.sleep(4)
        self.assertEqual(self.fake.requests(), [])
        self.assertEqual(get_task(api, task_id).json["status"], "CANCELLED")

    def test_validation(self):
        cfg, api, _ = self.start_stack(consumer=False)
        for extra in ({"send_at": "2001-01-01T00:00:00Z"}, {"send_at": "later"},
                      {"send_at": rfc3339(time.time() + 40 * 86400)},
                      {"send_at": rfc3339(time.time() + 120), "ttl": "1m"}):
            r = http("POST", f"{api.base_url}/messages",
                     {"phone": "+52123456789", "message": "x", **extra})
            self.assertEqual(r.status, 422, (extra, r.body))
            self.assertEqual(r.json["error"]["field"], "send_at", extra)


if __name__ == "__main__":
    unittest.main(verbosity=2)
