"""Beyond "sent": delivery receipts from Evolution API webhooks move a task's `delivery` to
delivered and read (also when a receipt comes before the SUCCESS, and when receipts repeat or
come out of order); forged webhooks are refused; status callbacks arrive signed, are retried
when the receiver fails, and a callback URL on a host that is not allowed is refused at
POST /messages."""
import base64
import hashlib
import hmac
import json
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import IntegrationTest, get_task, http, parse_rfc3339, wait_for, wait_task_status

WEBHOOK_SECRET = "wh-secret-for-tests"
JWT_KEY = "jwt-key-for-tests"
CALLBACK_SECRET = "cb-secret-for-tests"


class Receiver:
    """A status-callback receiver on loopback: records every request, fails the first `fail`."""

    def __init__(self, fail=0):
        self.requests, self.fail, self.lock = [], fail, threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                           "body": body, "time": time.time()})
                    failing = outer.fail > 0
                    outer.fail -= 1 if failing else 0
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/msg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def verify_signature(testcase, req):
    """X-Msg-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>."""
    sig = req["headers"].get("x-msg-signature")
    testcase.assertIsNotNone(sig, req["headers"])
    parts = dict(p.split("=", 1) for p in sig.split(","))
    mac = hmac.new(CALLBACK_SECRET.encode(), parts["t"].encode() + b"." + req["body"],
                   hashlib.sha256).hexdigest()
    testcase.assertTrue(hmac.compare_digest(mac, parts["v1"]), "bad callback signature")
    testcase.assertLess(abs(int(parts["t"]) - time.time()), 120)
    testcase.assertEqual(req["headers"].get("x-msg-event-id"), json.loads(req["body"])["event_id"])


def jwt(key, **claims):
    now = int(time.time())
    return signed_jwt(key, {"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook",
                            **claims})


def jwt_without_exp(key):
    return signed_jwt(key, {"iat": int(time.time()), "app": "evolution", "action": "webhook"})


def signed_jwt(key, payload):
    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + \
        b64(json.dumps(payload).encode())
    return head + "." + b64(hmac.new(key.encode(), head.encode(), hashlib.sha256).digest())


class ReceiptsCallbacksTest(IntegrationTest):
    def stack(self, webhook_headers=None, fail=0, webhooks=None):
        self.receiver = Receiver(fail)
        self.addCleanup(self.receiver.close)
        self.fake = self.start_fake()
        cfg = self.config({
            "webhooks": webhooks or {"secret": WEBHOOK_SECRET},
            "callbacks": {"secret": CALLBACK_SECRET, "allow_hosts": ["127.0.0.1"],
                          "retry_delays": ["200ms", "200ms", "500ms"], "timeout": "2s"},
        })
        api = self.start_api(cfg)
        self.start_consumer(cfg)
        self.fake.config(webhook_url=f"{api.base_url}/webhooks/evolution",
                         webhook_headers=webhook_headers or {"X-Webhook-Secret": WEBHOOK_SECRET},
                         webhook_delay_ms=30)
        return cfg, api

    def post(self, api, text, callback=True, **extra):
        body = {"phone": "+52123456789", "message": text, **extra}
        if callback:
            body["callback_url"] = self.receiver.url
        r = http("POST", f"{api.base_url}/messages", body)
        self.assertEqual(r.status, 202, r.body)
        return r.json["task_id"]

    def wait_delivery(self, api, task_id, state, timeout=15):
        def reached():
            d = get_task(api, task_id).json.get("delivery")
            return d and d["state"] == state
        wait_for(reached, timeout, what=f"delivery {state}")
        return get_task(api, task_id).json

    def four_callbacks(self, task_id):
        """Waits for the task's callbacks: exactly one signed SUCCESS, server_ack, delivered
        and read, with distinct event ids. Returns their bodies."""
        wait_for(lambda: len(self.receiver.requests) >= 4, 15, what="four callbacks")
        time.sleep(0.5)
        reqs = self.receiver.requests
        for req in reqs:
            verify_signature(self, req)
        bodies = [json.loads(r["body"]) for r in reqs]
        kinds = sorted((b["type"], b.get("status") or b.get("delivery")) for b in bodies)
        self.assertEqual(kinds, [("task.delivery", "delivered"), ("task.delivery", "read"),
                                 ("task.delivery", "server_ack"), ("task.status", "SUCCESS")])
        self.assertEqual(len({b["event_id"] for b in bodies}), 4)
        self.assertTrue(all(b["task_id"] == task_id for b in bodies))
        return bodies

    def test_receipts_and_signed_callbacks(self):
        cfg, api = self.stack()
        task_id = self.post(api, "receipts please")
        doc = wait_task_status(api, task_id, "SUCCESS")
        doc = self.wait_delivery(api, task_id, "read")
        d = doc["delivery"]
        for k in ("sent_at", "server_ack_at", "delivered_at", "read_at"):
            self.assertTime(d[k], near=time.time(), slack=60)
        self.assertIsNone(d["error_at"])
        self.assertLessEqual(d["server_ack_at"], d["delivered_at"])
        self.assertLessEqual(d["delivered_at"], d["read_at"])
        # One signed callback per change: SUCCESS, then server_ack, delivered, read.
        bodies = self.four_callbacks(task_id)
        success = next(b for b in bodies if b["type"] == "task.status")
        self.assertEqual(success["result"]["evolution_key"], doc["result"]["evolution_key"])

    def test_receipt_before_success_duplicates_and_reordering(self):
        cfg, api = self.stack()
        self.fake.config(webhook_faults=[
            {"match": {"text_contains": "early"}, "early": True},
            {"match": {"text_contains": "twice"}, "duplicate": True, "reverse": True}])
        early = self.post(api, "early receipts", callback=False)
        twice = self.post(api, "twice and backwards", callback=False)
        for task_id in (early, twice):
            wait_task_status(api, task_id, "SUCCESS")
            self.wait_delivery(api, task_id, "read")
            # Reversed, READ comes first: the lower states still get their times, later.
            wait_for(lambda: all(get_task(api, task_id).json["delivery"][k]
                                 for k in ("server_ack_at", "delivered_at", "read_at")), 10,
                     what="every receipt's time")
            self.assertEqual(get_task(api, task_id).json["delivery"]["state"], "read")
        # The early receipts really were answered before the task's SUCCESS was recorded.
        early_doc = get_task(api, early).json
        early_hooks = [h for h in self.fake.webhooks()
                       if h["key_id"] == early_doc["result"]["evolution_key"] and h["status"]]
        self.assertEqual(len(early_hooks), 3, early_hooks)
        self.assertTrue(all(h["http_status"] == 200 for h in early_hooks), early_hooks)
        self.assertLess(max(h["at"] for h in early_hooks), parse_rfc3339(early_doc["updated_at"]))
        # A late, lower receipt never moves the state back.
        key = get_task(api, twice).json["result"]["evolution_key"]
        r = self.fake.send_webhook(instance="test-inst", key_id=key, status="SERVER_ACK")
        self.assertEqual(r["http_status"], 200)
        self.assertEqual(get_task(api, twice).json["delivery"]["state"], "read")

    def test_callbacks_of_receipts_that_came_before_success(self):
        cfg, api = self.stack()
        self.fake.config(webhook_faults=[{"match": {"text_contains": "early"}, "early": True}])
        task_id = self.post(api, "early with a callback")
        wait_task_status(api, task_id, "SUCCESS")
        self.wait_delivery(api, task_id, "read")
        # All three receipts were answered before the SUCCESS; their callbacks still come.
        self.four_callbacks(task_id)

    def test_forged_webhooks_refused(self):
        cfg, api = self.stack()
        task_id = self.post(api, "forgery target", callback=False)
        wait_task_status(api, task_id, "SUCCESS")
        self.wait_delivery(api, task_id, "read")
        key = get_task(api, task_id).json["result"]["evolution_key"]
        for headers in ({}, {"X-Webhook-Secret": "wrong"}, {"jwt_key": "not-our-key"}):
            r = self.fake.send_webhook(instance="test-inst", key_id=key, status="ERROR",
                                       headers=headers)
            self.assertEqual(r["http_status"], 401, headers)
            self.assertEqual(r["attempts"], 1, "401 is not retried by Evolution")
        body = {"event": "messages.update", "instance": "test-inst",
                "data": {"keyId": key, "fromMe": True, "status": "ERROR"}}
        r = http("POST", f"{api.base_url}/webhooks/evolution", body,
                 {"Authorization": "Bearer " + jwt("wrong-key")})
        self.assertError(r, 401, "unauthorized")
        self.assertIsNone(get_task(api, task_id).json["delivery"]["error_at"])
        # With the right secret but another instance's name: not this task's receipt.
        other = {**body, "instance": "another-instance"}
        r = http("POST", f"{api.base_url}/webhooks/evolution", other,
                 {"X-Webhook-Secret": WEBHOOK_SECRET})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["applied"], 0)
        self.assertIsNone(get_task(api, task_id).json["delivery"]["error_at"])

    def test_jwt_webhooks(self):
        cfg, api = self.stack(webhook_headers={"jwt_key": JWT_KEY}, webhooks={"jwt_key": JWT_KEY})
        task_id = self.post(api, "jwt receipts", callback=False)
        wait_task_status(api, task_id, "SUCCESS")
        self.wait_delivery(api, task_id, "read")
        key = get_task(api, task_id).json["result"]["evolution_key"]
        body = {"event": "messages.update", "instance": "test-inst",
                "data": {"keyId": key, "fromMe": True, "status": "ERROR"}}
        expired = jwt(JWT_KEY, iat=int(time.time()) - 4000, exp=int(time.time()) - 3000)
        r = http("POST", f"{api.base_url}/webhooks/evolution", body,
                 {"Authorization": "Bearer " + expired})
        self.assertError(r, 401, "unauthorized")
        # A token must expire, within the hour (plus a minute of clock leeway): one without
        # exp, or good for longer, could be replayed for ever.
        for token in (jwt_without_exp(JWT_KEY), jwt(JWT_KEY, exp=int(time.time()) + 3600 + 120)):
            r = http("POST", f"{api.base_url}/webhooks/evolution", body,
                     {"Authorization": "Bearer " + token})
            self.assertError(r, 401, "unauthorized")
        r = http("POST", f"{api.base_url}/webhooks/evolution", body,
                 {"Authorization": "Bearer " + jwt(JWT_KEY, exp=int(time.time()) + 3500)})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["applied"], 1)
        self.assertIsNotNone(get_task(api, task_id).json["delivery"]["error_at"])

    def test_callback_retried_until_the_receiver_recovers(self):
        cfg, api = self.stack(fail=2)
        self.fake.config(webhook_url=None)
        task_id = self.post(api, "retry my callback")
        wait_task_status(api, task_id, "SUCCESS")
        wait_for(lambda: len(self.receiver.requests) >= 3, 15, what="three callback attempts")
        time.sleep(1)
        reqs = self.receiver.requests
        self.assertEqual(len(reqs), 3, "answered 200 on the third try: no more attempts")
        ids = {r["headers"]["x-msg-event-id"] for r in reqs}
        self.assertEqual(len(ids), 1, "a retry carries the same event id")
        for req in reqs:
            verify_signature(self, req)
        self.assertEqual(reqs[0]["body"], reqs[2]["body"])
        self.assertGreaterEqual(reqs[1]["time"] - reqs[0]["time"], 0.15)

    def test_callback_host_not_allowed(self):
        cfg, api = self.stack()
        for url in ("http://10.0.0.1/hook", "http://localhost:9/hook", "ftp://127.0.0.1/x",
                    "http://user:pw@127.0.0.1/x", "http://2130706434/"):
            r = http("POST", f"{api.base_url}/messages",
                     {"phone": "+52123456789", "message": "x", "callback_url": url})
            self.assertError(r, 422, "invalid_field", "callback_url")
        r = http("POST", f"{api.base_url}/messages/batch", {"messages": [
            {"phone": "+52123456789", "message": "ok", "callback_url": self.receiver.url},
            {"phone": "+52123456789", "message": "no", "callback_url": "http://169.254.169.254/"}]})
        self.assertEqual(r.status, 200, r.body)
        self.assertIn("task_id", r.json["results"][0])
        self.assertEqual(r.json["results"][1]["error"]["field"], "messages[1].callback_url")


if __name__ == "__main__":
    unittest.main(verbosity=2)
