"""Per-instance rate limit across consumer replicas: with two msg-consumer processes and
`rate_limits: ["slow=5"]`, instance "slow" never gets more than 5 sends in any second (plus the
burst), while instance "fast" is served at full speed next to it. The limit lives in the broker
(a lane queue per limited instance with a single active consumer), so it does not multiply with
the replica count, and it survives the active consumer's death."""
import re
import sys
import time
import unittest

from harness import (EVOLUTION_INSTANCE, IntegrationTest, free_port, http, post_message,
                     queue_info, wait_for)

RATE, BURST = 5, 2
SLOW, FAST = "slow", "fast"


def metric(consumer_listen, name):
    r = http("GET", f"http://{consumer_listen}/metrics")
    m = re.search(rf"^{re.escape(name)} (\S+)$", r.body.decode(), re.MULTILINE)
    return float(m.group(1)) if m else None


class RateLimitTest(IntegrationTest):
    def stack(self):
        self.fake = self.start_fake(instances=(EVOLUTION_INSTANCE, SLOW, FAST))
        cfg = self.config({"evolution": {"rate_limits": [f"{SLOW}={RATE}"], "rate_burst": BURST}})
        api = self.start_api(cfg)
        first = self.start_consumer(cfg)
        cfg2 = self.config_like(cfg, {"consumer": {"health_listen": f"127.0.0.1:{free_port()}"}})
        second = self.start_consumer(cfg2)
        return cfg, cfg2, api, first, second

    def post_all(self, api, instance, n, tag):
        ids = []
        for i in range(n):
            r = post_message(api, f"+5215500{i:06d}", f"{tag} {i}", instance=instance)
            self.assertEqual(r.status, 202, r.body)
            ids.append(r.json["task_id"])
        return ids

    def sends(self, instance, tag):
        return sorted(q["time"] for q in self.fake.requests()
                      if q["instance"] == instance and q.get("sent") and tag in (q.get("text") or ""))

    def done(self, api, ids):
        return all(http("GET", f"{api.base_url}/tasks/{t}").json["status"] == "SUCCESS" for t in ids)

    def max_in_any_second(self, times):
        # Every window that could hold the most sends starts at a send.
        return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)

    def test_limit_holds_across_replicas_and_other_instance_runs_free(self):
        cfg, cfg2, api, first, second = self.stack()
        slow_ids = self.post_all(api, SLOW, 30, "paced")
        fast_ids = self.post_all(api, FAST, 30, "free")
        wait_for(lambda: self.done(api, fast_ids), 15, what="the unlimited instance's 30 sends")
        wait_for(lambda: self.done(api, slow_ids), 30, what="the limited instance's 30 sends")

        slow, fast = self.sends(SLOW, "paced"), self.sends(FAST, "free")
        self.assertEqual(len(slow), 30, "each limited message sent exactly once")
        self.assertEqual(len(fast), 30, "each unlimited message sent exactly once")
        busiest = self.max_in_any_second(slow)
        print(f"\n[rate limit] slow: 30 sends over {slow[-1] - slow[0]:.2f}s, at most {busiest} in "
              f"any second (limit {RATE} + burst {BURST}); fast: 30 sends over "
              f"{fast[-1] - fast[0]:.2f}s, done {slow[-1] - fast[-1]:.2f}s before slow",
              file=sys.stderr)
        # The times are when the fake got each request: one send delayed on a loaded machine
        # can land in the next window, hence one of slack. Two replicas each pacing on their
        # own would show 10 or more, and finish in half the time.
        self.assertLessEqual(busiest, RATE + BURST + 1, f"{busiest} sends in one second")
        # Paced, not just bursty: 30 sends at 5/s after a burst of 2 take at least 5.6 s.
        self.assertGreaterEqual(slow[-1] - slow[0], (30 - BURST) / RATE - 0.3)
        # The other instance was not held behind the limited one's backlog.
        self.assertLess(fast[-1], slow[14], "the unlimited instance waited for the limited one")

        # The lane: one quorum queue with a single active consumer, consumed by both replicas.
        lane_name = f"{cfg.queue}.lane.{SLOW}"
        lane = queue_info(lane_name)
        self.assertEqual(lane["arguments"].get("x-single-active-consumer"), True)
        self.assertEqual(lane["arguments"].get("x-queue-type"), "quorum")
        # The management statistics lag by a few seconds.
        wait_for(lambda: queue_info(lane_name).get("consumers") == 2, 15,
                 what="both consumers subscribed to the lane")
        wait_for(lambda: queue_info(lane_name).get("messages") == 0, 15, what="an empty lane")
        forwarded = sum(metric(c, "msg_consumer_rate_limit_forwarded_total")
                        for c in (cfg.data["consumer"]["health_listen"],
                                  cfg2.data["consumer"]["health_listen"]))
        self.assertEqual(forwarded, 30, "only the limited instance's jobs go through its lane")

    def test_limit_survives_the_active_consumer_dying(self):
        cfg, cfg2, api, first, second = self.stack()
        slow_ids = self.post_all(api, SLOW, 25, "failover")
        wait_for(lambda: len(self.sends(SLOW, "failover")) >= 6, 10, what="the first paced sends")
        # Kill whichever consumer holds the lane; the other one takes it over.
        active = first if metric(cfg.data["consumer"]["health_listen"],
                                 "msg_consumer_deliveries_total{outcome=\"success\"}") else second
        active.kill()
        wait_for(lambda: self.done(api, slow_ids), 40, what="the rest after a failover")
        slow = self.sends(SLOW, "failover")
        texts = [q["text"] for q in self.fake.requests() if q["instance"] == SLOW and q.get("sent")]
        # Every message went out; a kill between a send and its SUCCESS record may repeat it once.
        self.assertEqual(len(set(texts)), 25)
        self.assertLessEqual(len(texts), 26)
        # The new active consumer starts with a full bucket: at most one extra burst.
        busiest = self.max_in_any_second(slow)
        self.assertLessEqual(busiest, RATE + 2 * BURST + 1, f"{busiest} sends in one second")


if __name__ == "__main__":
    unittest.main(verbosity=2)
