#!/usr/bin/env python3
"""Integration (issue 14): one Evolution instance's WhatsApp session closes while another works.
The consumer holds off that instance only (README "Evolution outages"): its jobs go round a delay
queue without spending attempts, while the other instance's messages keep flowing, with the
same latency. Once the session is open again, the held ones are sent, each once, and every task
ends SUCCESS. A summary line ("[instance-outage] ...") gives the other instance's latency before
and during the closure (POST to the fake's receipt of the send)."""

import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import IntegrationTest, get_task, http, post_message, wait_for  # noqa: E402

BROKEN, WORKING = "inst-a", "inst-b"
CLOSED_SECONDS = 15
RATE = 10  # POSTs per second to each instance


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


class InstanceOutageTest(IntegrationTest):

    def test_one_closed_session_holds_only_its_instance(self):
        cfg, api, cons = self.start_stack({"retry": {"delays": ["1s", "1s", "1s"]},
                                           "evolution": {"instance": WORKING}},
                                          instances=(BROKEN, WORKING))
        posted = []  # (instance, text, task_id, wall time)
        stop = threading.Event()

        def load():
            n = 0
            while not stop.is_set():
                for inst in (BROKEN, WORKING):
                    text = f"{inst}-{n}"
                    t = time.time()
                    r = post_message(api, f"+5511{900000000 + n:09d}{0 if inst == BROKEN else 1}",
                                     text, instance=inst)
                    self.assertEqual(r.status, 202, r.body)
                    posted.append((inst, text, r.json["task_id"], t))
                n += 1
                stop.wait(1 / RATE)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(5)
        self.fake.config(connection_states={BROKEN: "close"})
        closed = time.time()
        wait_for(lambda: [i["instance"] for i in
                          http("GET", cons.base_url + "/health").json["evolution"]["instances"]]
                 == [BROKEN], 10, interval=0.2, what=f"the consumer to hold {BROKEN} off")
        health = http("GET", cons.base_url + "/health").json
        self.assertEqual(health["evolution"]["server"]["state"], "ok", health)
        self.assertEqual(health["evolution"]["instances"][0]["state"], "held", health)
        time.sleep(max(0.0, CLOSED_SECONDS - (time.time() - closed)))
        # The working instance's messages posted during the closure were all sent during it.
        sent_at = {r["text"]: r["time"] for r in self.fake.requests() if r["sent"]}
        # The held instance's tasks: the ones tried show RETRY, why and when it is tried again;
        # the others wait as PENDING (not taken yet). None was sent, none failed.
        held_docs = [get_task(api, p[2]).json for p in posted if p[0] == BROKEN and p[3] > closed]
        self.assertTrue(held_docs)
        self.assertEqual({d["status"] for d in held_docs} - {"PENDING", "RETRY"}, set(),
                         [d for d in held_docs if d["status"] not in ("PENDING", "RETRY")][:3])
        # The send that found the session closed may be of a task posted just before `closed`:
        # look for the RETRY among every task of the held instance, not only the later ones.
        retried = [d for d in (get_task(api, p[2]).json for p in posted if p[0] == BROKEN)
                   if d["status"] == "RETRY"]
        held_doc = retried[0] if retried else None
        reopened = time.time()
        self.fake.config(connection_states={})
        time.sleep(3)
        stop.set()
        loader.join(10)

        during = [p for p in posted if p[0] == WORKING and closed + 1 < p[3] < reopened - 2]
        self.assertTrue(during)
        not_flowing = [p[1] for p in during if p[1] not in sent_at]
        self.assertEqual(not_flowing, [], f"{WORKING} messages not sent while {BROKEN} was closed")
        self.assertIsNotNone(held_doc, f"no {BROKEN} task showed RETRY while held")
        self.assertEqual(held_doc["error"]["code"], "evolution_session_error", held_doc)
        self.assertIn("held until Evolution API instance answers again", held_doc["error"]["message"])
        self.assertIsNotNone(held_doc["next_retry_at"], held_doc)

        # Once open again: every task SUCCESS, each number sent once.
        wait_for(lambda: self.fake.stats()["sent"] >= len(posted), 40, interval=0.5,
                 what="every message to be sent")
        stats = self.fake.stats()
        self.assertEqual({n: c for n, c in stats["sent_by_number"].items() if c > 1}, {})
        self.assertEqual(stats["sent"], len(posted))
        wait_for(lambda: all(get_task(api, p[2]).json["status"] == "SUCCESS" for p in posted), 30,
                 interval=1, what="every task to reach SUCCESS")

        sent_at = {r["text"]: r["time"] for r in self.fake.requests() if r["sent"]}
        before = [sent_at[p[1]] - p[3] for p in posted if p[0] == WORKING and p[3] < closed]
        while_closed = [sent_at[p[1]] - p[3] for p in during]
        broken_late = [sent_at[p[1]] - reopened for p in posted
                       if p[0] == BROKEN and closed + 1 < p[3] < reopened]
        log = cons.log()
        print(f"\n[instance-outage] {WORKING} latency ms before: p50={percentile(before, .5) * 1e3:.1f} "
              f"p99={percentile(before, .99) * 1e3:.1f} (n={len(before)}); while {BROKEN} closed: "
              f"p50={percentile(while_closed, .5) * 1e3:.1f} p99={percentile(while_closed, .99) * 1e3:.1f} "
              f"(n={len(while_closed)}); {BROKEN} held={len(broken_late)} all sent "
              f"{max(broken_late):.1f} s after reopening", file=sys.stderr)
        self.assertIn("Evolution instance unavailable: holding its jobs", log)
        self.assertIn("Evolution instance answers again: resuming", log)
        self.assertNotIn("Evolution API unavailable", log)


if __name__ == "__main__":
    unittest.main()
