"""A receipt's status callback survives a failed publish: when msg-api cannot put the callback
of a delivery receipt on the callback queue, the webhook answers 503 and the receipt is NOT
recorded yet; Evolution's retry of the same webhook, once the queue is back, records the
receipt and the callback arrives, once. (Before the fix in api/http.c publish_receipt the
status event went out first: the retry found the receipt already applied, no longer "news",
and the callback was never sent.)

How the callback publish is made to fail, reliably. The callback queue is consumed by
msg-consumer's callback dispatcher, which, when the broker cancels its consumer (queue
deleted), rebuilds its connection and declares the queue again at once; its worker declares it
too on every connect. So msg-consumer is stopped first (SIGTERM, exit 0), then the queue is
deleted through the management API; msg-api declares its topology only when it connects, so
from then on nothing declares the queue. Two ways to fail, one test each:
  - "refusing": a queue of the same name that holds nothing and refuses every publish
    (x-max-length 0, x-overflow reject-publish) is put in its place: the broker nacks the
    callback publish;
  - "deleted": the queue stays deleted: the mandatory publish comes back with basic.return
    (followed, as RabbitMQ does, by a basic.ack: msg-api must count the return, not the ack).
Then the stand-in (if any) is deleted, a new msg-consumer declares the queue exactly as the
daemons do (common/mq.c mq_declare_callback_topology) and dispatches what lands in it, and the
same webhook body is POSTed again, as Evolution retries a 5xx."""
import json
import time
import unittest
import urllib.error
import urllib.parse

import test_36_receipts_callbacks as receipts  # noqa: E402  (its receiver and signature check)
from harness import (EVOLUTION_INSTANCE, IntegrationTest, _mgmt, _vhost, get_task, http,
                     queue_info, wait_for, wait_task_status)

WEBHOOK_SECRET = "wh-secret-for-tests"
CALLBACK_SECRET = receipts.CALLBACK_SECRET  # what receipts.verify_signature checks


class Receiver(receipts.Receiver):
    """test_36's callback receiver (answers 200, records every request), with lookups by the
    callback body."""

    def bodies(self):
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests]

    def matching(self, task_id, kind, value):
        """The requests for `task_id` of type `kind` whose status/delivery is `value`."""
        key = "status" if kind == "task.status" else "delivery"
        with self.lock:
            found = []
            for r in self.requests:
                doc = json.loads(r["body"])
                if (doc.get("task_id") == task_id and doc.get("type") == kind
                        and doc.get(key) == value):
                    found.append(dict(r, json=doc))
            return found


class ReceiptCallbackRetryTest(IntegrationTest):
    def verify_signature(self, req):
        receipts.verify_signature(self, req)
        self.assertEqual(req["headers"].get("x-msg-event-id"), req["json"]["event_id"])

    def queue_exists(self, name):
        try:
            queue_info(name)
            return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise

    def break_queue(self, queue, how):
        """Makes msg-api's publish to `queue` fail: "deleted" (the mandatory publish comes back
        with basic.return) or "refusing" (a queue of that name that holds nothing and refuses
        every publish: x-max-length 0, x-overflow reject-publish, so the broker nacks it)."""
        path = f"/api/queues/{_vhost()}/{urllib.parse.quote(queue, safe='')}"
        _mgmt("DELETE", path)
        self.assertFalse(self.queue_exists(queue), f"{queue} still exists")
        if how == "refusing":
            _mgmt("PUT", path, {"durable": True, "auto_delete": False,
                                "arguments": {"x-max-length": 0, "x-overflow": "reject-publish"}})
        return path

    def scenario(self, how):
        t0 = time.monotonic()
        receiver = Receiver()
        self.addCleanup(receiver.close)
        self.fake = self.start_fake()
        cfg = self.config({
            "webhooks": {"secret": WEBHOOK_SECRET},
            "callbacks": {"secret": CALLBACK_SECRET, "allow_hosts": ["127.0.0.1"],
                          "retry_delays": ["200ms", "500ms"], "timeout": "2s"},
        })
        api = self.start_api(cfg)
        consumer = self.start_consumer(cfg)
        # Evolution sends only SERVER_ACK by itself: the DELIVERY_ACK is ours to send.
        self.fake.config(webhook_url=f"{api.base_url}/webhooks/evolution",
                         webhook_headers={"X-Webhook-Secret": WEBHOOK_SECRET},
                         webhook_receipts=["SERVER_ACK"], webhook_delay_ms=30)

        r = http("POST", f"{api.base_url}/messages",
                 {"phone": "+52123456789", "message": "receipt callback retry",
                  "callback_url": receiver.url})
        self.assertEqual(r.status, 202, r.body)
        task_id = r.json["task_id"]
        doc = wait_task_status(api, task_id, "SUCCESS")
        key = doc["result"]["evolution_key"]
        wait_for(lambda: (get_task(api, task_id).json.get("delivery") or {}).get("state")
                 == "server_ack", 15, what="delivery server_ack")
        # The path works before the fault: SUCCESS and server_ack callbacks came.
        wait_for(lambda: receiver.matching(task_id, "task.status", "SUCCESS")
                 and receiver.matching(task_id, "task.delivery", "server_ack"), 15,
                 what="the SUCCESS and server_ack callbacks")
        wait_for(lambda: self.fake.stats()["webhooks_pending"] == 0, 10,
                 what="the fake's own webhooks to finish")

        # Stop the dispatcher (it would declare the queue again), then break the queue.
        self.assertEqual(consumer.stop(), 0, consumer.log_tail())
        queue = cfg.callback_queue
        path = self.break_queue(queue, how)

        # Exactly what Evolution would POST, sent twice: once now, once as its retry.
        webhook = {"event": "messages.update", "instance": EVOLUTION_INSTANCE,
                   "data": {"keyId": key, "remoteJid": "52123456789@s.whatsapp.net",
                            "fromMe": True, "status": "DELIVERY_ACK"},
                   "destination": f"{api.base_url}/webhooks/evolution",
                   "date_time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                   "sender": "5511999999999@s.whatsapp.net", "server_url": self.fake.url,
                   "apikey": None}
        headers = {"X-Webhook-Secret": WEBHOOK_SECRET}
        t1 = time.monotonic()
        first = http("POST", f"{api.base_url}/webhooks/evolution", webhook, headers, timeout=15)
        first_s = time.monotonic() - t1
        self.assertGreaterEqual(first.status, 500,
                                f"a refused callback publish ({how} queue) must fail the webhook "
                                f"(Evolution retries only a 5xx): {first.status} {first.body[:300]!r}")
        self.assertError(first, 503, "broker_unavailable")
        # Nothing was recorded: the receipt is still news for the retry.
        self.assertEqual(get_task(api, task_id).json["delivery"]["state"], "server_ack")
        self.assertFalse(receiver.matching(task_id, "task.delivery", "delivered"))
        if how == "deleted":
            self.assertFalse(self.queue_exists(queue), "something declared the callback queue again")
        else:
            self.assertEqual(queue_info(queue).get("messages", 0), 0)
            _mgmt("DELETE", path)

        # The queue comes back as the daemons declare it: a new msg-consumer does that on
        # connect, and its dispatcher then delivers what is published there.
        # (Its /readyz means the worker declared it; the metric, that the dispatcher consumes
        # it. The management API's consumer count lags by its statistics interval, 5 s.)
        consumer = self.start_consumer(cfg)
        wait_for(lambda: "msg_consumer_callbacks_connected 1"
                 in http("GET", f"{consumer.base_url}/metrics").body.decode(), 15,
                 what="the new callback dispatcher to consume")
        self.assertTrue(self.queue_exists(queue), f"{queue} was not declared again")
        self.assertIn(queue_info(queue).get("arguments", {}).get("x-dead-letter-routing-key"),
                      (f"{queue}.dead",), "not the queue the daemons declare")

        retry = http("POST", f"{api.base_url}/webhooks/evolution", webhook, headers, timeout=15)
        self.assertEqual(retry.status, 200, retry.body)
        self.assertEqual((retry.json["receipts"], retry.json["applied"]), (1, 1), retry.json)
        wait_for(lambda: receiver.matching(task_id, "task.delivery", "delivered"), 15,
                 what="the delivered callback after the webhook's retry")
        self.assertEqual(get_task(api, task_id).json["delivery"]["state"], "delivered")
        time.sleep(0.5)  # a duplicate would come now
        delivered = receiver.matching(task_id, "task.delivery", "delivered")
        self.assertEqual(len(delivered), 1, [r["json"] for r in delivered])
        self.verify_signature(delivered[0])
        body = delivered[0]["json"]
        self.assertEqual(body["event_id"], f"{task_id}.delivery.delivered")
        self.assertEqual(body["evolution_key"], key)
        # Every callback the receiver got is for this task, and each came once.
        ids = [b["event_id"] for b in receiver.bodies()]
        self.assertEqual(len(ids), len(set(ids)), ids)
        self.assertEqual(sorted((b["type"], b.get("status") or b.get("delivery"))
                                for b in receiver.bodies()),
                         [("task.delivery", "delivered"), ("task.delivery", "server_ack"),
                          ("task.status", "SUCCESS")])
        print(f"\nreceipt callback retry ({how} queue): first webhook {first.status} in "
              f"{first_s:.2f}s, retry {retry.status}, {body['event_id']} called back once; "
              f"{time.monotonic() - t0:.1f}s", flush=True)

    def test_callback_refused_by_the_broker_is_sent_on_the_webhook_retry(self):
        """The broker nacks the callback publish (the queue refuses every message)."""
        self.scenario("refusing")

    def test_callback_returned_unroutable_is_sent_on_the_webhook_retry(self):
        """The callback queue is gone: the mandatory publish comes back (basic.return)."""
        self.scenario("deleted")

if __name__ == "__main__":
    unittest.main(verbosity=2)
