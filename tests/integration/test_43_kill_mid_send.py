#!/usr/bin/env python3
"""Integration (issue 14): the consumer SIGKILLed three times with sends in flight (Evolution
takes 300 ms per send, real ones 0.3-2 s), under a steady stream of POSTs. Every send in flight
at a kill is redelivered; its task is still STARTED, so the consumer that takes it asks
findMessages first and records the send it finds (result.reconciled) instead of sending again
(README "Evolution outages and in-doubt sends"):

- with evolution.reconcile (the default): no number gets the message twice, every task SUCCESS,
  and some were reconciled;
- with evolution.reconcile: false, the same run sends duplicates: the guard is what saves them.

A summary line ("[kill-mid-send] ...") goes to stderr for each run.
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import IntegrationTest, PostStream, get_task, wait_for  # noqa: E402

LATENCY_MS = 300
RATE = 40
KILLS = 3


class KillMidSendTest(IntegrationTest):

    def run_with_kills(self, reconcile):
        # evolution.timeout bounds how long a send of a dead consumer may still be under way:
        # the lookup waits that long after it began.
        cfg, api, cons = self.start_stack({"evolution": {"reconcile": reconcile, "timeout": "2s"},
                                           "retry": {"delays": ["1s", "1s", "1s"]}},
                                          latency_ms=LATENCY_MS)
        stream = PostStream(api, f"kill-{reconcile}", threads=4, rate=RATE)
        in_flight_at_kills = []
        for _ in range(KILLS):
            time.sleep(3)
            wait_for(lambda: self.fake.stats()["in_flight"] > 0, 10, interval=0.01,
                     what="sends in flight")
            in_flight_at_kills.append(self.fake.stats()["in_flight"])
            self.assertEqual(cons.kill(), -9)
            cons = self.start_consumer(cfg, ready_timeout=30)
        time.sleep(2)
        stream.stop()
        accepted = stream.accepted()
        self.assertTrue(accepted)
        wait_for(lambda: all(get_task(api, t).json["status"] in ("SUCCESS", "FAILURE")
                             for t in accepted), 60, interval=1, what="every task to end")
        docs = {t: get_task(api, t).json for t in accepted}
        stats = self.fake.stats()
        twice = {n: c for n, c in stats["sent_by_number"].items() if c > 1}
        reconciled = [d for d in docs.values() if (d["result"] or {}).get("reconciled")]
        print(f"\n[kill-mid-send] reconcile={reconcile} accepted={len(accepted)} kills={KILLS} "
              f"in_flight_at_kills={in_flight_at_kills} sent={stats['sent']} "
              f"numbers_sent_twice={len(twice)} reconciled={len(reconciled)} "
              f"lookups={stats['find_requests']}", file=sys.stderr)
        return docs, twice, reconciled, cons

    def test_reconcile_sends_each_once(self):
        docs, twice, reconciled, cons = self.run_with_kills(True)
        self.assertEqual(twice, {}, "numbers that got the message more than once")
        self.assertEqual({d["status"] for d in docs.values()}, {"SUCCESS"},
                         [d for d in docs.values() if d["status"] != "SUCCESS"][:3])
        self.assertTrue(reconciled, "no in-doubt send was found in findMessages")
        for d in reconciled:
            self.assertTrue(d["result"]["evolution_key"], d)
        sent_keys = {r["key_id"] for r in self.fake.requests() if r["sent"]}
        self.assertTrue({d["result"]["evolution_key"] for d in reconciled} <= sent_keys)

    def test_without_reconcile_the_kills_send_twice(self):
        docs, twice, reconciled, _ = self.run_with_kills(False)
        self.assertTrue(twice, "expected duplicates without evolution.reconcile")
        self.assertEqual(reconciled, [])


if __name__ == "__main__":
    unittest.main()
