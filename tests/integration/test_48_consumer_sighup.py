"""SIGHUP on msg-consumer: it reloads the send rates (a lane already paced takes the new rate)
and reopens log.file, keeps running and answering its probes, and a file with errors changes
nothing. Before, SIGHUP killed it (exit 129)."""
import os
import signal
import time
import unittest

from harness import (EVOLUTION_INSTANCE, IntegrationTest, http, post_message, to_yaml,
                     wait_for)

LIMITED = "lim"


class ConsumerSighupTest(IntegrationTest):
    def rewrite(self, cfg, data):
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(to_yaml(data) + "\n")

    def test_sighup_reloads_rates_and_reopens_the_log(self):
        self.fake = self.start_fake(instances=(EVOLUTION_INSTANCE, LIMITED))
        log_file = os.path.join(self.tmpdir, "consumer-file.log")
        cfg = self.config({"evolution": {"rate_limits": [f"{LIMITED}=0.5"], "rate_burst": 1},
                           "log": {"file": log_file}})
        api = self.start_api(cfg)
        cons = self.start_consumer(cfg)
        first = post_message(api, "+5215500000001", "warm the lane", instance=LIMITED)
        wait_for(lambda: http("GET", f"{api.base_url}/tasks/{first.json['task_id']}").json["status"]
                 == "SUCCESS", 20, what="the first send of the limited instance")

        data = dict(cfg.data)
        data["evolution"] = {**data["evolution"], "rate_limits": [f"{LIMITED}=100"], "rate_burst": 10}
        self.rewrite(cfg, data)
        os.rename(log_file, log_file + ".1")
        os.kill(cons.pid, signal.SIGHUP)
        wait_for(lambda: os.path.exists(log_file) and "send rates reloaded" in open(log_file).read(),
                 5, what="the reload logged in a reopened log file")
        self.assertTrue(cons.running(), "SIGHUP must not stop msg-consumer")
        self.assertEqual(http("GET", cons.base_url + "/livez").status, 200)

        # At 0.5/s, 8 more sends would take 16 s; at 100/s they take well under that.
        t0 = time.monotonic()
        ids = [post_message(api, f"+52155000001{i:02d}", f"fast {i}", instance=LIMITED).json["task_id"]
               for i in range(8)]
        wait_for(lambda: all(http("GET", f"{api.base_url}/tasks/{t}").json["status"] == "SUCCESS"
                             for t in ids), 30, what="8 sends at the reloaded rate")
        self.assertLess(time.monotonic() - t0, 8, "the new rate was not taken")

        # A file that no longer loads changes nothing and stops nothing.
        with open(cfg, "w") as f:
            f.write("evolution:\n  rate_limits: [nonsense]\n")
        os.kill(cons.pid, signal.SIGHUP)
        wait_for(lambda: "configuration not reloaded" in open(log_file).read(), 5,
                 what="the refused reload logged")
        self.assertTrue(cons.running())
        self.rewrite(cfg, data)


if __name__ == "__main__":
    unittest.main(verbosity=2)
