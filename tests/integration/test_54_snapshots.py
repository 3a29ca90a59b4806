#!/usr/bin/env python3
"""Integration: cache snapshots on the broker (issue 18, api/snapshots.c).

One msg-api replica at a time (the holder of an exclusive queue) writes its task cache to the
stream "<status>.snapshots" and an index record to "<status>.snapshots.index"; a new replica
loads the newest complete snapshot and follows the status stream only from the offset it
covers. So:

- a new replica answers every task exactly as the replica that lived through the stream did
  (documents, idempotency keys, failures), while it read only the events after the snapshot;
- it follows the stream from there (tasks posted later are seen);
- only one replica writes; when it stops, another takes over and writes; it writes again once a
  quarter of its cache's size in events came, not for every change;
- an index record whose parts are not on the broker (a writer that died, retention) makes a new
  replica replay the whole stream instead, and it still knows every task.
"""

import json
import os
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (IntegrationTest, free_port, get_task, http, mgmt_publish,  # noqa: E402
                     post_message, wait_for, wait_task_status)

PHONE = "+5511912345678"
NOT_ON_WHATSAPP = "5511987654321"
TASKS = 20
FINAL = ("SUCCESS", "FAILURE")


def health(api):
    r = http("GET", api.base_url + "/health")
    return r.json


class SnapshotTest(IntegrationTest):
    def post_tasks(self, api, n, tag):
        ids = []
        for i in range(n):
            r = post_message(api, PHONE, f"{tag} {i}")
            self.assertEqual(r.status, 202, r.body)
            ids.append(r.json["task_id"])
        return ids

    def settle(self, api, ids):
        for task_id in ids:
            wait_task_status(api, task_id, FINAL, timeout=30)

    def wait_snapshot_covering(self, api, offset, timeout=30):
        """Waits until `api` wrote a snapshot that covers status stream offset `offset`."""
        def covered():
            last = health(api)["snapshots"]["last_written"]
            return last and last["status_offset"] >= offset
        wait_for(covered, timeout, interval=0.2, what=f"a snapshot covering offset {offset}")
        return health(api)["snapshots"]["last_written"]

    def replica(self, cfg, interval="1s"):
        other = self.config_like(cfg, {"api": {"listen": f"127.0.0.1:{free_port()}",
                                               "snapshot_interval": interval}})
        return self.start_api(other, ready_timeout=60)

    def documents(self, api, ids):
        docs = {}
        for task_id in ids:
            r = get_task(api, task_id)
            self.assertEqual(r.status, 200, (task_id, r.body))
            docs[task_id] = r.json
        return docs

    def test_new_replica_loads_the_snapshot(self):
        cfg, a, _ = self.start_stack({"api": {"snapshot_interval": "1s"}},
                                     not_on_whatsapp=[NOT_ON_WHATSAPP])
        ids = self.post_tasks(a, TASKS, "snap")
        idem = post_message(a, PHONE, "once", headers={"Idempotency-Key": "snap-key-1"})
        self.assertEqual(idem.status, 202, idem.body)
        failed = post_message(a, "+" + NOT_ON_WHATSAPP, "nobody")
        self.assertEqual(failed.status, 202, failed.body)
        ids += [idem.json["task_id"], failed.json["task_id"]]
        self.settle(a, ids)
        self.assertEqual(get_task(a, failed.json["task_id"]).json["status"], "FAILURE")

        # A's cache is what a full replay gives; a snapshot that covers all of it.
        time.sleep(0.5)
        seen = health(a)
        self.assertTrue(seen["snapshots"]["writer"], seen)
        last = self.wait_snapshot_covering(a, seen["status_stream"]["offset"])
        self.assertGreaterEqual(last["tasks"], len(ids), last)
        expected = self.documents(a, ids)

        b = self.replica(cfg)
        hb = health(b)
        loaded = hb["snapshots"]["loaded"]
        self.assertIsNotNone(loaded, hb)
        self.assertGreaterEqual(loaded["tasks"], len(ids), loaded)
        self.assertGreaterEqual(loaded["status_offset"], seen["status_stream"]["offset"], loaded)
        # B read the snapshot, not the stream: A applied 3+ events per task, B a handful.
        self.assertLess(hb["status_stream"]["events_applied"],
                        seen["status_stream"]["events_applied"] // 2, (hb, seen))
        self.assertFalse(hb["snapshots"]["writer"], hb)
        self.assertEqual(self.documents(b, ids), expected)

        # The idempotency key is known to B: the same request gives the same task.
        again = post_message(b, PHONE, "once", headers={"Idempotency-Key": "snap-key-1"})
        self.assertIn(again.status, (200, 202), again.body)
        self.assertEqual(again.json["task_id"], idem.json["task_id"], again.body)

        # B follows the stream from the snapshot's offset: later tasks are seen.
        later = self.post_tasks(b, 3, "later")
        self.settle(b, later)
        self.settle(a, later)

        # Only A writes; when A stops, B takes the lock and writes.
        written_b = health(b)["snapshots"]["written"]
        self.assertEqual(written_b, 0)
        a.stop()
        wait_for(lambda: health(b)["snapshots"]["written"] > 0, 30, interval=0.2,
                 what="replica B writing a snapshot once A stopped")
        self.assertTrue(health(b)["snapshots"]["writer"])

        # A third replica loads B's snapshot: it knows the later tasks too.
        c = self.replica(cfg, interval="0s")
        hc = health(c)
        self.assertIsNotNone(hc["snapshots"]["loaded"], hc)
        self.assertFalse(hc["snapshots"]["enabled"], hc)
        for task_id in later:
            self.assertIn(get_task(c, task_id).json["status"], FINAL)
        self.assertEqual(self.documents(c, ids), expected)

        # The writer waits for a quarter of its cache's size in events (3 per task here) before
        # it writes again, however short its interval (1 s): one task is too few, three enough.
        written = health(b)["snapshots"]["written"]
        quarter = health(b)["cache"]["tasks"] // 4
        self.assertGreater(quarter, 3, "the cache must be large enough for the check")
        self.settle(b, self.post_tasks(b, 1, "few"))
        time.sleep(2.5)
        self.assertEqual(health(b)["snapshots"]["written"], written, "wrote for 3 events")
        self.settle(b, self.post_tasks(b, quarter // 3 + 1, "enough"))
        wait_for(lambda: health(b)["snapshots"]["written"] > written, 15, interval=0.2,
                 what="a snapshot once a quarter of the cache's size in events came")

    def test_incomplete_snapshot_means_a_full_replay(self):
        cfg, a, _ = self.start_stack({"api": {"snapshot_interval": "1s"}})
        ids = self.post_tasks(a, 5, "replay")
        self.settle(a, ids)
        expected = self.documents(a, ids)
        a.stop()
        # The newest index record names a snapshot none of whose parts exist.
        ghost = str(uuid.uuid4())
        record = {"v": 1, "snapshot": ghost, "status_offset": 10**9, "from": int(time.time()),
                  "parts": 3, "tasks": 99}
        self.assertTrue(mgmt_publish("amq.default", cfg.data["topology"]["status_stream"]
                                     + ".snapshots.index", json.dumps(record),
                                     {"type": "status.snapshot.index", "delivery_mode": 2}))
        d = self.replica(cfg, interval="0s")
        hd = health(d)
        self.assertIsNone(hd["snapshots"]["loaded"], hd)
        self.assertIn("not whole", d.log())
        self.assertEqual(self.documents(d, ids), expected)


if __name__ == "__main__":
    unittest.main()
