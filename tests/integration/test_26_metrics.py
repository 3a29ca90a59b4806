"""Prometheus metrics on msg-api (/metrics, no key needed) and on msg-consumer's health
listener: valid text format, the counters move with traffic, no task ids or phone numbers in
labels; promtool (Debian's prometheus package, installed by .ci/run) accepts both."""
import os
import re
import shutil
import subprocess
import time
import unittest

from harness import IntegrationTest, http, post_message, wait_for, wait_task_status

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')


def parse(text):
    """{(name, labels): value}; checks every line's shape and HELP/TYPE before samples."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"bad metrics line: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or family in typed, f"{name} has no TYPE line"
        samples[(name, m.group(3) or "")] = float(m.group(4))
    return samples


class MetricsTest(IntegrationTest):
    def check_common(self, text, phone_digits, task_id):
        self.assertNotIn(task_id, text)
        self.assertNotIn(phone_digits, text)
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                               capture_output=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        elif os.environ.get("CI"):
            self.fail("promtool is missing: .ci/run installs Debian's prometheus package")

    def test_counters_move(self):
        cfg, api, consumer = self.start_stack()
        r = post_message(api, "+52123456789", "metrics")
        self.assertEqual(r.status, 202, r.body)
        task_id = r.json["task_id"]
        wait_task_status(api, task_id, "SUCCESS")
        http("GET", api.base_url + "/no-such-thing")
        # A request is counted once its answer is written: the scrape may come first.
        wait_for(lambda: parse(http("GET", api.base_url + "/metrics").body.decode()).get(
            ("msg_api_http_requests_total", 'route="unmatched",method="other",status="404"')) == 1,
            5,
            what="the 404 counted")

        m = http("GET", api.base_url + "/metrics")
        self.assertEqual(m.status, 200)
        self.assertTrue(m.headers["content-type"].startswith("text/plain"))
        text = m.body.decode()
        s = parse(text)
        self.assertEqual(s[("msg_api_http_requests_total",
                            'route="/messages",method="POST",status="202"')], 1)
        self.assertEqual(s[("msg_api_http_requests_total",
                            'route="unmatched",method="other",status="404"')], 1)
        self.assertEqual(s[("msg_api_publishes_total", 'outcome="ack"')], 1)
        self.assertEqual(s[("msg_api_publish_confirm_duration_seconds_count", "")], 1)
        self.assertEqual(s[("msg_api_publish_confirm_duration_seconds_bucket", 'le="+Inf"')], 1)
        self.assertEqual(s[("msg_api_ready", "")], 1)
        self.assertGreaterEqual(s[("msg_api_task_cache_tasks", "")], 1)
        self.assertEqual(s[("msg_api_task_success_duration_seconds_count", "")], 1)
        self.check_process(s, "msg-api")
        self.check_common(text, "52123456789", task_id)

        def delivered():
            c = parse(http("GET", consumer.base_url + "/metrics").body.decode())
            return c.get(("msg_consumer_deliveries_total", 'outcome="success"')) == 1
        wait_for(delivered, 15, what="the consumer's success counter")
        text = http("GET", consumer.base_url + "/metrics").body.decode()
        c = parse(text)
        self.assertEqual(c[("msg_consumer_evolution_request_duration_seconds_count", "")], 1)
        self.assertEqual(c[("msg_consumer_delivery_duration_seconds_count", "")], 1)
        self.assertEqual(c[("msg_consumer_broker_connections_total", "")], 1)
        self.assertEqual(c[("msg_consumer_ready", "")], 1)
        self.assertEqual(c[("msg_consumer_evolution_responses_total", 'code="sent"')], 1)
        self.assertEqual(c[("msg_consumer_parked_total", 'reason="permanent"')], 0)
        self.check_process(c, "msg-consumer")
        self.check_common(text, "52123456789", task_id)

    def check_process(self, s, service):
        """process_* as client libraries export them, and the build info."""
        self.assertGreater(s[("process_resident_memory_bytes", "")], 1 << 20)
        self.assertGreater(s[("process_cpu_seconds_total", "")], 0)
        self.assertGreater(s[("process_open_fds", "")], 3)
        start = s[("process_start_time_seconds", "")]
        self.assertLess(abs(start - time.time()), 600, start)
        builds = [k for k in s if k[0] == "msg_build_info"]
        self.assertEqual(len(builds), 1, builds)
        self.assertIn(f'service="{service}"', builds[0][1])


if __name__ == "__main__":
    unittest.main(verbosity=2)
