#!/usr/bin/env python3
"""Integration (issue 15 §3): the consumer fleet. Each msg-consumer sends a heartbeat on the
status stream every 5 s; any msg-api replica lists the live ones at GET /workers. A consumer
shows up within 10 s of its start, a SIGKILLed one is gone after three missed beats (15 s), and
one stopped with SIGTERM says so and is gone at once."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import IntegrationTest, free_port, http, post_message, wait_for  # noqa: E402


def workers(api):
    r = http("GET", api.base_url + "/workers")
    assert r.status == 200, (r.status, r.body)
    return r.json


def pids(api):
    return sorted(w["pid"] for w in workers(api)["workers"])


class WorkersTest(IntegrationTest):

    def test_fleet_appears_and_goes(self):
        cfg, api, first = self.start_stack()
        second_api = self.start_api(self.config_like(cfg, {"api": {"listen": f"127.0.0.1:{free_port()}"}}))
        t = time.monotonic()
        second = self.start_consumer(self.config_like(
            cfg, {"consumer": {"health_listen": f"127.0.0.1:{free_port()}"}}))
        both = sorted([first.pid, second.pid])
        wait_for(lambda: pids(api) == both, 10, interval=0.2, what="both consumers in /workers")
        appeared = time.monotonic() - t
        # Any replica answers, with the same fleet.
        wait_for(lambda: pids(second_api) == both, 10, interval=0.2, what="the other replica")
        r = post_message(api, "+5511987654321", "counted")
        self.assertEqual(r.status, 202, r.body)
        wait_for(lambda: sum(w["succeeded"] for w in workers(api)["workers"]) == 1, 15,
                 interval=0.5, what="the send in a heartbeat")
        doc = workers(api)
        self.assertEqual(doc["count"], 2, doc)
        w = doc["workers"][0]
        for key in ("worker_id", "host", "pid", "version", "started_at", "at", "last_seen",
                    "in_flight", "prefetch", "held", "succeeded", "retried", "parked", "lanes",
                    "consuming", "evolution"):
            self.assertIn(key, w, w)
        self.assertEqual(w["worker_id"], f"{w['host']}:{w['pid']}")
        self.assertEqual(w["evolution"]["server"]["state"], "ok", w)
        self.assertTrue(w["consuming"], w)
        # Newest start first.
        self.assertEqual(doc["workers"][0]["pid"], second.pid, doc)

        # SIGKILL: no last word; gone after three missed beats.
        t = time.monotonic()
        self.assertEqual(second.kill(), -9)
        wait_for(lambda: pids(api) == [first.pid], 25, interval=0.5, what="the killed consumer to go")
        gone_after_kill = time.monotonic() - t
        self.assertGreater(gone_after_kill, 5, "dropped before it missed a beat")
        # SIGTERM: it says it stops, and is gone at once.
        t = time.monotonic()
        first.stop()
        wait_for(lambda: pids(api) == [], 5, interval=0.2, what="the stopped consumer to go")
        gone_after_stop = time.monotonic() - t
        print(f"\n[workers] appeared_s={appeared:.1f} gone_after_sigkill_s={gone_after_kill:.1f} "
              f"gone_after_sigterm_s={gone_after_stop:.1f}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
