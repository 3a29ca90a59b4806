#!/usr/bin/env python3
"""Integration (issue 14): evolution.in_doubt: park while findMessages fails. The consumer is
SIGKILLed with sends in flight; their jobs come back in doubt, the lookup answers 500, and the
consumer parks them (FAILURE, code in_doubt, x-failure-reason in_doubt) rather than risk a second
message. None is sent twice; every other task ends SUCCESS."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import IntegrationTest, PostStream, get_task, queue_get, wait_for  # noqa: E402

FIND_FAILS = {"route": "find_messages", "action": "status", "status": 500,
              "body": {"status": 500, "error": "Internal Server Error",
                       "response": {"message": ["database unavailable"]}}}


class InDoubtParkTest(IntegrationTest):

    def test_in_doubt_jobs_are_parked_when_the_lookup_fails(self):
        cfg, api, cons = self.start_stack({"evolution": {"in_doubt": "park", "timeout": "2s"}},
                                          latency_ms=300, faults=[FIND_FAILS])
        stream = PostStream(api, "park", threads=4, rate=30)
        time.sleep(3)
        wait_for(lambda: self.fake.stats()["in_flight"] > 0, 10, interval=0.01, what="sends in flight")
        self.assertEqual(cons.kill(), -9)
        cons = self.start_consumer(cfg, ready_timeout=30)
        time.sleep(3)
        stream.stop()
        accepted = stream.accepted()
        wait_for(lambda: all(get_task(api, t).json["status"] in ("SUCCESS", "FAILURE")
                             for t in accepted), 60, interval=1, what="every task to end")
        docs = {t: get_task(api, t).json for t in accepted}
        failed = {t: d for t, d in docs.items() if d["status"] == "FAILURE"}
        stats = self.fake.stats()
        print(f"\n[in-doubt-park] accepted={len(accepted)} parked_in_doubt={len(failed)} "
              f"lookups={stats['find_requests']} sent={stats['sent']}", file=sys.stderr)
        self.assertTrue(failed, "no in-doubt job was parked")
        for d in failed.values():
            self.assertEqual(d["error"]["code"], "in_doubt", d)
            self.assertIn("findMessages could not tell", d["error"]["message"], d)
        self.assertEqual({n: c for n, c in stats["sent_by_number"].items() if c > 1}, {})
        self.assertGreaterEqual(stats["find_requests"], len(failed))
        dead = queue_get(cfg.dead_queue, count=len(failed) + 10)
        self.assertEqual(sorted(m["properties"]["message_id"] for m in dead), sorted(failed))
        for m in dead:
            self.assertEqual(m["properties"]["headers"]["x-failure-reason"], "in_doubt")
        self.assertIn("in doubt and findMessages failed: parking", cons.log())


if __name__ == "__main__":
    unittest.main()
