"""No resend after redelivery: a consumer killed after Evolution API accepted a message and the
SUCCESS event was recorded, but before its ack, leaves the job to be delivered again; the next
consumer recognises the task from the status stream and acks without a second send."""
import unittest

from harness import (IntegrationTest, post_message, queue_info, wait_for, wait_task_status)


class RedeliveryTest(IntegrationTest):
    def test_killed_before_ack_is_not_sent_twice(self):
        cfg, api, _ = self.start_stack(consumer=False)
        # The failpoint makes the consumer SIGKILL itself right before its first ack.
        doomed = self.start_consumer(cfg, env={"MSG_FAILPOINT": "crash_before_ack"})
        r = post_message(api, "+52123456789", "only once please")
        self.assertEqual(r.status, 202, r.body)
        task_id = r.json["task_id"]
        wait_for(lambda: not doomed.running(), 15, what="the consumer to crash before its ack")
        self.assertEqual(doomed.proc.returncode, -9)
        self.assertEqual(self.fake.stats()["sent"], 1)
        doc = wait_task_status(api, task_id, "SUCCESS")

        second = self.start_consumer(cfg)
        queue = cfg.data["topology"]["queue"]
        wait_for(lambda: "already delivered" in second.log(), 15,
                 what="the redelivered job to be recognised")
        wait_for(lambda: queue_info(queue).get("messages", 1) == 0, 15,
                 what="the redelivered job to be acked")
        self.assertEqual(self.fake.stats()["sent"], 1, "the message was sent twice")
        again = wait_task_status(api, task_id, "SUCCESS")
        self.assertEqual(again["result"]["evolution_key"], doc["result"]["evolution_key"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
