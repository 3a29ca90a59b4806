#!/usr/bin/env python3
"""Integration (issue 18): a consumer that starts on a long status stream takes new jobs once
it has read the stream's last consumer.history_window, not its whole retention, and still
never sends a job whose fate lies in the part it has not read yet.

Before the consumer starts: a job is posted and cancelled (OLD_CANCELLED), another is posted
(OLD), then HISTORY status events of other tasks fill the stream, one per stream message (the
slowest kind to read), and the window of 4 s passes. Then FRESH is posted and the consumer
starts. It must
- send FRESH before it has read the history (its log says "status history read" after FRESH's
  delivery line: the order of the lines, not a clock, is what is checked);
- keep OLD waiting, unacked, until the history is read, then send it once;
- never send OLD_CANCELLED: its CANCELLED event is in the history, which the consumer had not
  read when the job reached it.
"""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (AMQP_URL, SOURCE_ROOT, IntegrationTest, get_task, http,  # noqa: E402
                     post_message, wait_for)

HISTORY = 300_000  # status events of other tasks, one per stream message
WINDOW_S = 4


def ceiling_tool():
    """bench_broker_ceiling of this build (tests/bench), which fills a stream quickly: ctest
    names it in MSG_CEILING_BIN; by hand it is looked for under MSG_BIN_DIR or build/."""
    if os.environ.get("MSG_CEILING_BIN"):
        return os.environ["MSG_CEILING_BIN"]
    for base in (os.environ.get("MSG_BIN_DIR"), os.path.join(SOURCE_ROOT, "build")):
        if base:
            path = os.path.join(base, "tests", "bench", "bench_broker_ceiling")
            if os.access(path, os.X_OK):
                return path
    raise RuntimeError("bench_broker_ceiling not found: build the tests/bench targets")


def log_lines(daemon):
    with open(daemon.log_path, "rb") as f:
        return [json.loads(line) for line in f if line.startswith(b"{")]


class ConsumerHistoryTest(IntegrationTest):

    def test_new_jobs_go_before_the_history_is_read(self):
        cfg, api, _ = self.start_stack({"consumer": {"history_window": f"{WINDOW_S}s"}},
                                       consumer=False)
        stream = None
        with open(cfg) as f:
            for line in f:
                if line.strip().startswith("status_stream:"):
                    stream = line.split(":", 1)[1].strip().strip('"')
        self.assertTrue(stream, "no status_stream in the config")

        r = post_message(api, "+5511900000001", "old, then cancelled")
        self.assertEqual(r.status, 202, r.body)
        old_cancelled = r.json["task_id"]
        r = http("DELETE", api.base_url + f"/tasks/{old_cancelled}")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["status"], "CANCELLED")
        r = post_message(api, "+5511900000002", "old, sent after the history")
        self.assertEqual(r.status, 202, r.body)
        old = r.json["task_id"]
        posted_old = time.time()

        subprocess.run([ceiling_tool(), "--url", AMQP_URL, "--status-events", stream,
                        "--count", str(HISTORY), "--window", "1000"],
                       check=True, stdout=subprocess.DEVNULL, timeout=300)
        # Both old jobs are now well before the window of a consumer that starts now.
        time.sleep(max(0.0, posted_old + 2 * WINDOW_S - time.time()))

        r = post_message(api, "+5511900000003", "fresh")
        self.assertEqual(r.status, 202, r.body)
        fresh = r.json["task_id"]
        cons = self.start_consumer(cfg)

        wait_for(lambda: get_task(api, fresh).json["status"] == "SUCCESS", 30,
                 what="the fresh job to be sent")
        wait_for(lambda: http("GET", cons.base_url + "/health").json["history"]["loaded"], 120,
                 interval=0.2, what="the consumer to read the status history")
        wait_for(lambda: get_task(api, old).json["status"] == "SUCCESS", 30,
                 what="the old job to be sent once the history is read")
        time.sleep(1)  # anything wrongly sent would show by now

        sent = [r["text"] for r in self.fake.requests() if r["sent"]]
        self.assertEqual(sorted(sent), ["fresh", "old, sent after the history"], sent)
        self.assertEqual(get_task(api, old_cancelled).json["status"], "CANCELLED")

        lines = log_lines(cons)
        order = [(l.get("msg"), l.get("task_id")) for l in lines
                 if l.get("msg") in ("message delivered", "status history read: every job may go now")]
        names = {fresh: "fresh", old: "old"}
        seen = [names.get(t, "history read") if m == "message delivered" else "history read"
                for m, t in order]
        self.assertEqual(seen, ["fresh", "history read", "old"], order)
        read = [l for l in lines if l.get("msg") == "status history read: every job may go now"][0]
        self.assertEqual(read["jobs_waiting"], 2, read)  # OLD and OLD_CANCELLED waited
        skipped = [l for l in lines if l.get("msg") == "task cancelled, not sending"]
        self.assertEqual([l["task_id"] for l in skipped], [old_cancelled], skipped)
        health = http("GET", cons.base_url + "/health").json
        self.assertEqual(health["history"], {"loaded": True, "waiting": 0}, health)


if __name__ == "__main__":
    unittest.main()
