#!/usr/bin/env python3
"""Integration: dead-letter redrive from the command line. `msg-consumer --dead-letters` lists the
parked jobs and leaves them parked; `msg-consumer --redrive` moves the matching ones back to
delivery (by reason and --max, or by --task-id) so they reach SUCCESS once Evolution API
recovers, while the rest stay parked; a bad option exits 2 and moves nothing; an unreachable
broker exits 1 with one line on stderr."""

import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (OVERRIDE_VARS, IntegrationTest, executable, free_port, http,  # noqa: E402
                     post_message, queue_info, sanitizer_reports, wait_for, wait_task_status)

NOT_ON_WHATSAPP = "+5511987654321"


class RedriveCliTest(IntegrationTest):

    def admin(self, cfg, *args, env=None):
        """Runs `msg-consumer --config CFG ARGS` to completion with no override variables but
        `env`; fails the test on any sanitizer report. Returns the CompletedProcess."""
        child_env = {k: v for k, v in os.environ.items() if k not in OVERRIDE_VARS}
        child_env.update(env or {})
        p = subprocess.run([executable("msg-consumer"), "--config", cfg, *args],
                           capture_output=True, text=True, timeout=60, env=child_env,
                           stdin=subprocess.DEVNULL)
        self.assertEqual(sanitizer_reports(p.stderr), [], p.stderr)
        return p

    def admin_json(self, cfg, *args):
        """admin() that must exit 0 and print one JSON document on stdout; returns it."""
        p = self.admin(cfg, *args)
        self.assertEqual(p.returncode, 0, (args, p.stdout, p.stderr))
        return json.loads(p.stdout)

    def parked(self, cfg):
        return queue_info(cfg.dead_queue).get("messages")

    def test_list_and_redrive(self):
        cfg, api, _ = self.start_stack({"retry": {"delays": []}},
                                       not_on_whatsapp=[NOT_ON_WHATSAPP.lstrip("+")])
        # One job parked as "permanent", then four as "retries_exhausted" (the first failure is
        # final with no retry delays).
        permanent = post_message(api, NOT_ON_WHATSAPP, "not on whatsapp").json["task_id"]
        self.assertEqual(wait_task_status(api, permanent, "FAILURE")["error"]["code"],
                         "number_not_on_whatsapp")
        self.fake.config(faults=[{"action": "status", "status": 429, "times": None}])
        text_of = {post_message(api, "+52123456789", f"parked {i}").json["task_id"]: f"parked {i}"
                   for i in range(4)}
        exhausted = list(text_of)
        for task_id in exhausted:
            self.assertEqual(wait_task_status(api, task_id, "FAILURE")["error"]["code"],
                             "evolution_rate_limited")
        wait_for(lambda: self.parked(cfg) == 5, 15, what="5 parked jobs")

        listed = self.admin_json(cfg, "--dead-letters")
        self.assertEqual(listed["count"], 5)
        by_id = {m["task_id"]: m for m in listed["messages"]}
        self.assertEqual(set(by_id), set(exhausted) | {permanent})
        self.assertEqual(by_id[permanent]["reason"], "permanent")
        self.assertEqual(by_id[permanent]["error_code"], "number_not_on_whatsapp")
        for task_id in exhausted:
            self.assertEqual(by_id[task_id]["reason"], "retries_exhausted")
            self.assertEqual(by_id[task_id]["error_code"], "evolution_rate_limited")
            self.assertEqual(by_id[task_id]["attempts"], 1)
        page = self.admin_json(cfg, "--dead-letters", "--limit", "2")
        self.assertEqual((page["count"], len(page["messages"])), (5, 2))
        # Listing left them parked.
        wait_for(lambda: self.parked(cfg) == 5, 15, what="5 jobs still parked after listing")

        # Bad option values: usage error, exit 2, nothing moved.
        for args in (("--redrive", "--max", "many"), ("--redrive", "--max", "0"),
                     ("--redrive", "--rate", "-1"), ("--redrive", "--task-id", "not-a-uuid"),
                     ("--redrive", "--limit", "3"), ("--dead-letters", "--redrive")):
            with self.subTest(args=args):
                p = self.admin(cfg, *args)
                self.assertEqual(p.returncode, 2, (p.stdout, p.stderr))
                self.assertEqual(p.stdout, "")
                self.assertTrue(p.stderr.startswith("msg-consumer: "), p.stderr)
                self.assertIn("Usage:", p.stderr)
        self.assertEqual(self.parked(cfg), 5)

        # By reason, at most two: exactly two of the four move, and they are sent once the
        # fake recovers; the permanent one and the other two stay parked.
        self.fake.config(faults=[])
        report = self.admin_json(cfg, "--redrive", "--reason", "retries_exhausted", "--max", "2")
        self.assertEqual(report["moved"], 2, report)
        self.assertEqual(len(report["task_ids"]), 2, report)
        self.assertLessEqual(set(report["task_ids"]), set(exhausted), report)
        self.assertNotIn("error", report)
        moved = report["task_ids"]
        rest = [t for t in exhausted if t not in moved]
        for task_id in moved:
            doc = wait_task_status(api, task_id, "SUCCESS")
            self.assertEqual(doc["attempts"], 1)
            self.assertIsNone(doc["error"])
        wait_for(lambda: self.parked(cfg) == 3, 15, what="3 jobs still parked")
        listed = self.admin_json(cfg, "--dead-letters")
        self.assertEqual(listed["count"], 3)
        self.assertEqual({m["task_id"] for m in listed["messages"]}, set(rest) | {permanent})

        # By task id: just that one.
        report = self.admin_json(cfg, "--redrive", "--task-id", rest[0])
        self.assertEqual((report["moved"], report["task_ids"]), (1, [rest[0]]), report)
        wait_task_status(api, rest[0], "SUCCESS")
        wait_for(lambda: self.parked(cfg) == 2, 15, what="2 jobs still parked")
        for task_id in (rest[1], permanent):
            self.assertEqual(http("GET", f"{api.base_url}/tasks/{task_id}").json["status"],
                             "FAILURE")

        # Nothing matching is not an error.
        report = self.admin_json(cfg, "--redrive", "--reason", "malformed")
        self.assertEqual(report["moved"], 0, report)
        self.assertEqual(report["scanned"], 2, report)
        self.assertEqual(self.admin_json(cfg, "--dead-letters")["count"], 2)
        self.assertEqual(sorted(self.fake.stats()["sent_by_text"]),
                         sorted(text_of[t] for t in exhausted if t != rest[1]))

    def test_broker_unreachable(self):
        cfg = self.config()
        closed = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2f"
        for args in (("--dead-letters",), ("--redrive", "--max", "1")):
            with self.subTest(args=args):
                p = self.admin(cfg, *args, env={"AMQP_URL": closed})
                self.assertEqual(p.returncode, 1, (p.stdout, p.stderr))
                self.assertEqual(p.stdout, "")
                self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
                self.assertTrue(p.stderr.startswith("msg-consumer: cannot "), p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
