"""Status callbacks (consumer/callbacks.c): msg-consumer takes callback messages from
topology.callback_queue and POSTs each body verbatim, signed, to the URL it names. A receiver in
this process (http.server on 127.0.0.1) records every request and fails on command. Covered: the
signature verifies as README "Status callbacks" says, the event id header, a byte-identical body;
two 500s and then success on the third try (through the same retry queue twice); a receiver that
always fails ends in <callback_queue>.dead with callback_failed after every retry; a host outside
callbacks.allow_hosts is parked with callback_url_refused and never requested; a SIGTERM while a
callback is in flight finishes it before exiting."""
import hashlib
import hmac
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import re
import secrets
import signal
import threading
import time
import unittest
import urllib.parse
import uuid

import harness
from harness import IntegrationTest, http, mgmt_publish, queue_get, wait_for, wait_queue_messages

SECRET = "whsec_" + secrets.token_hex(16)
DELAYS = ["200ms", "200ms", "500ms"]


class Receiver:
    """A callback receiver on 127.0.0.1: records every request (path, headers, body, time) and
    answers per path: /fail-N answers 500 to the first N requests, /down always 500, /slow
    answers 200 after 1.5 s, anything else 200."""

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.seen = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                              "body": body, "at": time.time()})
                    n = receiver.seen[self.path] = receiver.seen.get(self.path, 0) + 1
                m = re.fullmatch(r"/fail-(\d+)/.*", self.path)
                status = 200
                if self.path.startswith("/down/") or (m and n <= int(m.group(1))):
                    status = 500
                if self.path.startswith("/slow/"):
                    time.sleep(1.5)
                reply = b'{"ok": true}' if status == 200 else b'{"error": "scripted"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                try:
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the dispatcher gave up on this request (its connection was closed)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def to(self, prefix):
        with self.lock:
            return [r for r in self.requests if r["path"].startswith(prefix)]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def verify_signature(header, body, secret=SECRET):
    """README "Status callbacks": t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>.
    Returns the time stamp when the signature is right, else None."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    mac = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return int(parts["t"]) if hmac.compare_digest(mac, parts["v1"]) else None


def free_port_not(port):
    """A free port other than `port`."""
    p = harness.free_port()
    return p if p != port else harness.free_port()


class CallbacksTest(IntegrationTest):
    def start_dispatcher(self, allow=("127.0.0.1",), connection_name="msg"):
        cfg = self.config({
            "broker": {"connection_name": connection_name},
            "callbacks": {"secret": SECRET, "allow_hosts": list(allow), "timeout": "3s",
                          "retry_delays": DELAYS, "concurrency": 8}})
        self.cq = cfg.callback_queue  # <exchange>.callbacks: this test's own
        self.receiver = Receiver()
        self.addCleanup(self.receiver.stop)
        consumer = self.start_consumer(cfg)
        wait_for(lambda: re.search(r"(?m)^msg_consumer_callbacks_connected 1$",
                                   http("GET", consumer.base_url + "/metrics").body.decode()),
                 15, what="the callback dispatcher consuming")
        return consumer

    def publish(self, url, body, event_id=None, headers=None):
        event_id = event_id or str(uuid.uuid4())
        props = {"delivery_mode": 2, "content_type": "application/json", "message_id": event_id,
                 "headers": dict({"x-callback-url": url}, **(headers or {}))}
        self.assertTrue(mgmt_publish("amq.default", self.cq, body, props), "routed")
        return event_id

    def test_name_resolving_to_an_internal_address_is_never_called(self):
        """"localhost" is on the allow-list, but it resolves to 127.0.0.1, which is not: the
        address actually connected to is checked, so the callback is parked, never requested.
        A port rule is kept too: "127.0.0.1:<other port>" does not admit the receiver's port."""
        self.start_dispatcher(allow=("localhost", f"127.0.0.1:{free_port_not(0)}"))
        r = self.receiver
        hidden = self.publish(f"http://localhost:{r.port}/internal/a", '{"n": 1}')
        other_port = self.publish(r.url("/port/b"), '{"n": 2}')
        dead = f"{self.cq}.dead"
        msgs = wait_queue_messages(
            dead, lambda ms: {m["properties"]["message_id"] for m in ms} >= {hidden, other_port}, 20)
        by_id = {m["properties"]["message_id"]: m["properties"]["headers"] for m in msgs}
        self.assertEqual(by_id[hidden]["x-failure-reason"], "callback_url_refused")
        self.assertIn("resolved to the internal address", by_id[hidden]["x-last-error"])
        self.assertEqual(by_id[other_port]["x-failure-reason"], "callback_url_refused")
        self.assertIn("not allowed on this port", by_id[other_port]["x-last-error"])
        self.assertEqual(r.to("/internal/") + r.to("/port/"), [])

    def test_dispatch_retry_and_park(self):
        consumer = self.start_dispatcher()
        r = self.receiver
        # Deliberate spacing, escapes and non-ASCII: the body must arrive byte for byte.
        body = ('{"event": "message.status",  "task_id":"t-1", "status":"SUCCESS",'
                ' "text":"ol\u00e1 \\u2713 \u2713", "n": 1.50}')
        ok_id = self.publish(r.url("/ok/a?x=1"), body)
        flaky_id = self.publish(r.url("/fail-2/b"), '{"n": 2}')
        down_id = self.publish(r.url("/down/c"), '{"n": 3}')
        refused_id = self.publish(f"http://localhost:{r.port}/refused/d", '{"n": 4}')
        no_url_id = str(uuid.uuid4())
        self.assertTrue(mgmt_publish("amq.default", self.cq, '{"n": 5}',
                                     {"delivery_mode": 2, "message_id": no_url_id}))

        # Delivered, signed, verbatim.
        got = wait_for(lambda: r.to("/ok/"), 15, what="the callback")
        self.assertEqual(len(got), 1)
        req = got[0]
        self.assertEqual(req["path"], "/ok/a?x=1")
        self.assertEqual(req["body"], body.encode("utf-8"))
        h = {k.lower(): v for k, v in req["headers"].items()}
        self.assertEqual(h["x-msg-event-id"], ok_id)
        self.assertEqual(h["content-type"], "application/json")
        self.assertRegex(h["user-agent"], r"^msg-consumer/\d+\.\d+\.\d+$")
        self.assertRegex(h["x-msg-signature"], r"^t=\d+,v1=[0-9a-f]{64}$")
        t = verify_signature(h["x-msg-signature"], req["body"])
        self.assertIsNotNone(t, "the signature verifies with the secret")
        self.assertLess(abs(t - req["at"]), 5)
        self.assertIsNone(verify_signature(h["x-msg-signature"], req["body"], "other secret"))
        self.assertIsNone(verify_signature(h["x-msg-signature"], req["body"] + b" "))

        # Two 500s, then success on the third try, through retry.200ms twice.
        got = wait_for(lambda: len(r.to("/fail-2/")) >= 3 and r.to("/fail-2/"), 15,
                       what="three tries of the flaky callback")
        for req in got:
            self.assertEqual(req["body"], b'{"n": 2}')
            h = {k.lower(): v for k, v in req["headers"].items()}
            self.assertEqual(h["x-msg-event-id"], flaky_id)
            self.assertIsNotNone(verify_signature(h["x-msg-signature"], req["body"]))
        self.assertGreaterEqual(got[1]["at"] - got[0]["at"], 0.15, "waited in the retry queue")

        # Always failing: 1 + 3 tries, then parked with the reason.
        dead = f"{self.cq}.dead"
        msgs = wait_queue_messages(
            dead, lambda ms: {m["properties"]["message_id"] for m in ms} >= {down_id, refused_id,
                                                                            no_url_id}, 20)
        by_id = {m["properties"]["message_id"]: m for m in msgs}
        down = by_id[down_id]["properties"]["headers"]
        self.assertEqual(down["x-failure-reason"], "callback_failed")
        self.assertEqual(down["x-attempts"], 4)
        self.assertEqual(down["x-last-error"], "the receiver answered HTTP 500")
        self.assertEqual(down["x-callback-url"], r.url("/down/c"))
        self.assertNotIn("x-death", down)
        self.assertEqual(by_id[down_id]["payload"], '{"n": 3}')
        self.assertEqual(len(r.to("/down/")), 4)

        # A host outside the allow-list: parked at once, never requested.
        refused = by_id[refused_id]["properties"]["headers"]
        self.assertEqual(refused["x-failure-reason"], "callback_url_refused")
        self.assertEqual(refused["x-attempts"], 1)
        self.assertIn('"localhost" is not allowed', refused["x-last-error"])
        self.assertEqual(r.to("/refused/"), [])
        self.assertEqual(by_id[no_url_id]["properties"]["headers"]["x-failure-reason"],
                         "callback_url_refused")

        # Nothing else parked, nothing left behind, nothing requested twice after success.
        self.assertEqual(set(by_id), {down_id, refused_id, no_url_id})
        self.assertEqual(queue_get(self.cq), [])
        for d in set(DELAYS):
            self.assertEqual(queue_get(f"{self.cq}.retry.{d}"), [])
        self.assertEqual(len(r.to("/ok/")), 1)
        self.assertEqual(len(r.to("/fail-2/")), 3)

        metrics = http("GET", consumer.base_url + "/metrics").body.decode()
        counts = dict(re.findall(r'^msg_consumer_callbacks_total\{outcome="(\w+)"\} (\S+)$',
                                 metrics, re.M))
        self.assertEqual(float(counts["delivered"]), 2)
        self.assertEqual(float(counts["retried"]), 2 + 3)
        self.assertEqual(float(counts["parked"]), 3)
        self.assertRegex(metrics, r'(?m)^msg_consumer_callback_request_duration_seconds_count 8$')
        self.assertRegex(metrics, r"(?m)^msg_consumer_callbacks_connected 1$")
        self.assertNotIn(SECRET, consumer.log())

    def test_connection_loss_loses_nothing(self):
        """The dispatcher's connection is closed under a callback in flight: the broker requeues
        it, the dispatcher reconnects and POSTs it again (callbacks are at-least-once)."""
        name = f"cb-{secrets.token_hex(4)}"
        consumer = self.start_dispatcher(connection_name=name)

        def ours():
            return [c["name"] for c in harness._mgmt("GET", "/api/connections?columns=name,client_properties")
                    if c.get("client_properties", {}).get("connection_name", "").startswith(f"{name}-callbacks@")]
        # Found first: the management API may list a new connection a few seconds late.
        conns = wait_for(ours, 15, what="the callbacks connection in the management API")
        # The management UI says who is who: product and version beside the name, and a
        # consumer tag naming role, host and pid.
        props = [c["client_properties"] for c in
                 harness._mgmt("GET", "/api/connections?columns=name,client_properties")
                 if c["name"] == conns[0]][0]
        self.assertEqual(props.get("product"), "msg-consumer", props)
        self.assertRegex(props.get("version", ""), r"^\d+\.\d+", props)
        tags = wait_for(lambda: [c["consumer_tag"] for c in harness._mgmt("GET", "/api/consumers")
                                 if c["queue"]["name"] == self.cq], 15,
                        what="the dispatcher's consumer in the management API")
        self.assertRegex(tags[0], rf"^msg-callbacks@.+:{consumer.pid}:\d+$")
        event_id = self.publish(self.receiver.url("/slow/y"), '{"again": true}')
        wait_for(lambda: self.receiver.to("/slow/"), 10, what="the slow callback to start")
        harness._mgmt("DELETE", f"/api/connections/{urllib.parse.quote(conns[0], safe='')}")
        got = wait_for(lambda: len(self.receiver.to("/slow/")) >= 2 and self.receiver.to("/slow/"),
                       20, what="the callback again after the reconnect")
        self.assertEqual({r["headers"]["X-Msg-Event-Id"] for r in got}, {event_id})
        wait_for(lambda: re.search(r'(?m)^msg_consumer_callbacks_total\{outcome="delivered"\} 1$',
                                   http("GET", consumer.base_url + "/metrics").body.decode()),
                 10, what="the callback acked")
        self.assertRegex(consumer.log(), r"callbacks: (broker connection lost|connection closed)")
        self.assertEqual(consumer.log().count("callbacks: consuming"), 2, "reconnected once")
        consumer.begin_stop()
        self.assertEqual(consumer.stop(timeout=15), 0)
        self.assertEqual(queue_get(self.cq), [])
        self.assertEqual(queue_get(f"{self.cq}.dead"), [])

    def test_sigterm_finishes_the_callback_in_flight(self):
        consumer = self.start_dispatcher()
        event_id = self.publish(self.receiver.url("/slow/x"), '{"slow": true}')
        wait_for(lambda: self.receiver.to("/slow/"), 10, what="the slow callback to start")
        consumer.begin_stop()
        self.assertEqual(consumer.stop(timeout=15), 0)
        self.assertEqual(len(self.receiver.to("/slow/")), 1)
        # Answered within the grace period, so acked: nothing comes back, nothing parked.
        self.assertEqual(queue_get(self.cq), [])
        self.assertEqual(queue_get(f"{self.cq}.dead"), [])
        self.assertIn("callback delivered", consumer.log())
        self.assertIn(event_id, consumer.log())

    def test_second_sigterm_gives_the_callback_back(self):
        """A second signal ends the drain at once (exit status 1): the callback in flight is not
        acked, so the broker has it again."""
        consumer = self.start_dispatcher()
        event_id = self.publish(self.receiver.url("/slow/z"), '{"z": 1}')
        wait_for(lambda: self.receiver.to("/slow/"), 10, what="the slow callback to start")
        consumer.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "callbacks: stopping" in consumer.log(), 5, what="the drain to start")
        consumer.proc.send_signal(signal.SIGTERM)
        self.assertEqual(consumer.stop(timeout=10), 1)
        back = wait_for(lambda: queue_get(self.cq), 10, what="the callback back in its queue")
        self.assertEqual([m["properties"]["message_id"] for m in back], [event_id])
        self.assertNotIn("callback delivered", consumer.log())


if __name__ == "__main__":
    unittest.main()
