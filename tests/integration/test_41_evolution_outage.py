#!/usr/bin/env python3
"""Integration (issue 14): Evolution API stopped for OUTAGE_SECONDS (default 60) under a steady
stream of POSTs, with retry.delays [1s, 1s, 1s], which would exhaust every retry of a message
within 3 s. The consumer holds off instead (README "Evolution outages"):

- no task ends FAILURE; every accepted task ends SUCCESS;
- the fake sent each number exactly once, sends cut by the stop included (in doubt: asked in
  findMessages, then sent once);
- /health says the server is held while it is out, /metrics counts one hold and one resume, and
  the log has one line for each;
- the backlog (everything accepted before Evolution came back) is sent within 20 s after it
  returns (the probe backoff is capped at 5 s).

A summary line ("[outage] accepted=... drain_s=...") goes to stderr. By hand, longer:
    OUTAGE_SECONDS=300 MSG_BIN_DIR=build python3 tests/integration/test_41_evolution_outage.py
"""

import json
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import IntegrationTest, PostStream, get_task, http, wait_for  # noqa: E402

OUTAGE_SECONDS = float(os.environ.get("OUTAGE_SECONDS", "60"))
RATE = 20  # POSTs per second
DRAIN_BOUND_S = 20


def metric(base_url, name, labels):
    text = http("GET", base_url + "/metrics", timeout=5).body.decode()
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class EvolutionOutageTest(IntegrationTest):

    def test_outage_parks_nothing_and_sends_each_once(self):
        # 100 ms per send: some are in flight when Evolution stops (cut: in doubt, looked up).
        cfg, api, cons = self.start_stack({"retry": {"delays": ["1s", "1s", "1s"]}},
                                          latency_ms=100)
        stream = PostStream(api, "outage", threads=2, rate=RATE)
        time.sleep(5)
        self.fake.stop()
        stopped, stopped_mono = time.time(), time.monotonic()
        # Held: the consumer says so while Evolution is away.
        wait_for(lambda: http("GET", cons.base_url + "/health").json["evolution"]["server"]["state"]
                 == "held", 15, interval=0.2, what="the consumer to hold Evolution API off")
        health = http("GET", cons.base_url + "/health").json
        self.assertEqual(health["status"], "degraded", health)
        self.assertEqual(health["evolution"]["server"]["reason"], "evolution_unreachable", health)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.time() - stopped)))
        self.fake.start()
        back, back_mono = time.time(), time.monotonic()
        accepted_before = set(stream.accepted())
        time.sleep(5)
        results = stream.stop()
        accepted = stream.accepted()
        self.assertTrue(accepted, results[:5])
        # Every accepted message goes out once: wait for the fake to have sent them all.
        try:
            wait_for(lambda: self.fake.stats()["sent"] >= len(accepted), 60, interval=0.5,
                     what="every accepted message to be sent")
        finally:
            stats = self.fake.stats()
        twice = {n: c for n, c in stats["sent_by_number"].items() if c > 1}
        self.assertEqual(twice, {}, "numbers that got the message more than once")
        self.assertEqual(stats["sent"], len(accepted), stats["sent"])
        # Every task SUCCESS, none FAILURE (the status events may trail the sends a little).
        def final_statuses():
            return {t: get_task(api, t).json["status"] for t in accepted}
        wait_for(lambda: set(final_statuses().values()) == {"SUCCESS"}, 30, interval=1,
                 what="every task to reach SUCCESS")
        # The backlog: the last send of a task accepted before Evolution came back.
        sends = {r["text"]: r["time"] for r in self.fake.requests() if r["sent"]}
        backlog = [sends[accepted[t]["text"]] for t in accepted_before]
        drain = max(backlog) - back
        cut = [r for r in self.fake.requests() if r["fault"] == "stopped"]
        lookups = self.fake.stats()["find_requests"]
        log = cons.log()
        print(f"\n[outage] accepted={len(accepted)} accepted_during_outage="
              f"{sum(1 for r in accepted.values() if stopped_mono <= r['t0'] < back_mono)} "
              f"outage_s={back - stopped:.1f} backlog={len(backlog)} drain_s={drain:.2f} "
              f"cut_by_stop={len(cut)} lookups={lookups} sent_twice={len(twice)}", file=sys.stderr)
        self.assertLess(drain, DRAIN_BOUND_S, "the backlog took too long to drain")
        self.assertEqual(log.count("Evolution API unavailable: holding its jobs"), 1, log[-3000:])
        self.assertEqual(log.count("Evolution API answers again: resuming"), 1, log[-3000:])
        self.assertEqual(metric(cons.base_url, "msg_consumer_evolution_holdoff_transitions_total",
                                'target="server",instance="",to="held"'), 1)
        self.assertEqual(metric(cons.base_url, "msg_consumer_evolution_held",
                                'target="server",instance=""'), 0)
        self.assertNotIn("retries_exhausted", log)


if __name__ == "__main__":
    unittest.main()
