#!/usr/bin/env python3
"""Self-test of fake_evolution.py: starts it as a subprocess on a free port and checks every
behaviour the integration tests rely on (exact statuses and bodies, the order of the checks,
fresh message ids, fault rules, the control API, v1 mode, clean exit on SIGTERM), and its
webhooks, with a receiver on loopback inside this process (envelopes v2 and v1, header secret,
HS256 JWT, order, duplicate/reverse/early/statuses faults, retries, manual webhooks).

Run directly (ctest does): exit code 0 when every check passes. Standard library only.
"""

import base64
import concurrent.futures
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_evolution.py")
KEY = "selftest-key"
KEY_ID_V2 = re.compile(r"^3EB0[0-9A-F]{36}$")
KEY_ID_V1 = re.compile(r"^BAE5[0-9A-F]{12}$")
RECEIPTS = ["SERVER_ACK", "DELIVERY_ACK", "READ"]
WEBHOOK_DEFAULTS = {"webhook_url": None, "webhook_headers": {}, "webhook_events": ["SEND_MESSAGE", "MESSAGES_UPDATE"],
                    "webhook_by_events": False, "webhook_receipts": RECEIPTS, "webhook_delay_ms": 50,
                    "webhook_retry": 10, "webhook_retry_base_ms": 200, "webhook_retry_max_ms": 5000,
                    "webhook_retry_jitter": 0.2, "webhook_retry_non_retryable": [400, 401, 403, 404, 422],
                    "webhook_timeout_ms": 5000, "webhook_faults": []}


def start_fake(*extra):
    """Starts the fake on a free port; returns (process, base URL)."""
    port_file = tempfile.mktemp(prefix="fake-port-")
    proc = subprocess.Popen([sys.executable, FAKE, "--host", "127.0.0.1", "--port", "0",
                             "--api-key", KEY, "--instances", "inst1,inst2",
                             "--port-file", port_file, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()  # the fake prints it only after writing the port file
    try:
        with open(port_file) as f:
            port = int(f.read())
    except OSError:
        proc.kill()
        raise RuntimeError(f"fake did not start: {line}{proc.stdout.read()}")
    os.unlink(port_file)
    if line.strip() != f"fake-evolution listening on 127.0.0.1:{port}":
        proc.kill()
        raise RuntimeError(f"unexpected start-up line {line!r}")
    return proc, f"http://127.0.0.1:{port}"


def stop_fake(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def call(base, method, path, body=None, headers=None, timeout=5):
    """(status, parsed JSON or text) without raising on 4xx/5xx. A dict/list body is sent as
    JSON with a JSON content type; a str body is sent as is with the given headers."""
    headers = dict(headers or {})
    data = None
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        data = body.encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


class Receiver:
    """A webhook receiver on loopback: records every POST on arrival and answers from a script
    (`plan`: HTTP statuses, or (seconds, status) to answer late; 200 once it is used up)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.got, self.plan = [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.got.append({"path": self.path, "raw": raw, "json": json.loads(raw),
                                         "headers": {k.lower(): v for k, v in self.headers.items()},
                                         "at": time.monotonic()})
                    step = receiver.plan.pop(0) if receiver.plan else 200
                delay, status = step if isinstance(step, tuple) else (0, step)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the fake gave up waiting (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/evolution"

    def reset(self, plan=()):
        with self.lock:
            self.got.clear()
            self.plan[:] = list(plan)

    def requests(self):
        with self.lock:
            return list(self.got)

    def wait(self, n, timeout=5):
        deadline = time.monotonic() + timeout
        while len(got := self.requests()) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return got

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def b64url_decode(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_jwt(token, key):
    """(header, payload, whether the HS256 signature verifies with key)."""
    header, payload, signature = token.split(".")
    expected = hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return (json.loads(b64url_decode(header)), json.loads(b64url_decode(payload)),
            hmac.compare_digest(b64url_decode(signature), expected))


class FakeTestCase(unittest.TestCase):
    args = ()

    @classmethod
    def setUpClass(cls):
        cls.proc, cls.base = start_fake(*cls.args)

    @classmethod
    def tearDownClass(cls):
        stop_fake(cls.proc)

    def setUp(self):
        self.assertEqual(self.ctl("POST", "/_fake/reset")[0], 200)
        self.configure(latency_ms=0, not_on_whatsapp=[], api_key=KEY, instances=["inst1", "inst2"],
                       connection_state="open", connection_states={}, save_messages=True,
                       session_closed_error="connection_closed_400")

    def ctl(self, method, path, body=None):
        return call(self.base, method, path, body)

    def configure(self, **cfg):
        status, body = self.ctl("POST", "/_fake/config", cfg)
        self.assertEqual(status, 200, body)
        return body

    def send(self, body, instance="inst1", key=KEY, **kw):
        headers = {"apikey": key} if key is not None else {}
        return call(self.base, "POST", f"/message/sendText/{instance}", body, headers, **kw)

    def requests(self, since=0):
        return self.ctl("GET", f"/_fake/requests?since={since}")[1]

    def hooks(self, since=0):
        return self.ctl("GET", f"/_fake/webhooks?since={since}")[1]

    def stats(self):
        return self.ctl("GET", "/_fake/stats")[1]

    def wait_idle(self, timeout=5):
        """Waits until no webhook of a sent message is left to go; returns the stats."""
        deadline = time.monotonic() + timeout
        while (stats := self.stats())["webhooks_pending"] and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(stats["webhooks_pending"], 0, "webhooks still pending")
        return stats

    def manual(self, **body):
        return self.ctl("POST", "/_fake/webhook", body)


class V2Test(FakeTestCase):
    def test_root_version(self):
        status, body = call(self.base, "GET", "/")
        self.assertEqual(status, 200)
        self.assertEqual(body["version"], "2.3.6")
        self.assertEqual(body["message"], "Welcome to the Evolution API, it is working!")

    def test_unknown_route(self):
        self.assertEqual(self.send({"number": "1", "text": "x"}, instance="inst1/extra"),
                         (404, {"status": 404, "error": "Not Found",
                                "response": {"message": ["Cannot POST /message/sendText/inst1/extra"]}}))
        self.assertEqual(call(self.base, "GET", "/message/sendText/inst1?a=1"),
                         (404, {"status": 404, "error": "Not Found",
                                "response": {"message": ["Cannot GET /message/sendText/inst1?a=1"]}}))

    def test_check_order(self):
        not_found = (404, {"status": 404, "error": "Not Found",
                           "response": {"message": ['The "nope" instance does not exist']}})
        unauthorized = (401, {"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}})
        # The instance check comes first: a bad key and a bad body still give 404.
        self.assertEqual(self.send({}, instance="nope", key=None), not_found)
        self.assertEqual(self.send({}, instance="nope", key="wrong"), not_found)
        # Then the key, before the schema.
        self.assertEqual(self.send({}, key=None), unauthorized)
        self.assertEqual(self.send({}, key="wrong"), unauthorized)
        # Then the schema, before the blank-text check.
        self.assertEqual(self.send({"number": "5511999999999"}),
                         (400, {"status": 400, "error": "Bad Request",
                                "response": {"message": [['instance requires property "text"']]}}))
        self.assertEqual(self.send({"number": "5511999999999", "text": "  \n"}),
                         (400, {"status": 400, "error": "Bad Request", "response": {"message": ["Text is required"]}}))

    def test_header_name_is_case_insensitive(self):
        status, _ = call(self.base, "POST", "/message/sendText/inst1", {"number": "5511999999999", "text": "hi"},
                         {"APIKEY": KEY})
        self.assertEqual(status, 201)

    def test_schema_errors(self):
        def msg(body):
            status, answer = self.send(body)
            self.assertEqual(status, 400, answer)
            return answer["response"]["message"]
        self.assertEqual(msg({}), [['instance requires property "number"', 'instance requires property "text"']])
        self.assertEqual(msg({"number": 5511999999999, "text": "x"}), [["Invalid format"]])
        self.assertEqual(msg({"number": "5511999999999", "text": 5}), [["text is not of a type(s) string"]])
        # The v1 body sent to v2 (issue #2570).
        self.assertEqual(msg({"number": "5511999999999", "textMessage": {"text": "x"}}),
                         [['instance requires property "text"']])
        self.assertEqual(msg({"number": "1", "text": "x", "delay": "5"}), [["Enter a value in milliseconds"]])

    def test_non_json_content_type_means_empty_body(self):
        status, body = self.send('{"number":"5511999999999","text":"x"}')  # no Content-Type
        self.assertEqual(status, 400)
        self.assertEqual(body["response"]["message"],
                         [['instance requires property "number"', 'instance requires property "text"']])

    def test_malformed_json(self):
        status, body = call(self.base, "POST", "/message/sendText/inst1", '{"number":',
                            {"apikey": KEY, "Content-Type": "application/json"})
        self.assertEqual(status, 400)
        self.assertEqual(body["error"], "Internal Server Error")
        self.assertTrue(body["response"]["message"].startswith("Unexpected token"))
        self.assertEqual(self.requests()[-1]["json"], None)

    def test_not_on_whatsapp(self):
        self.configure(not_on_whatsapp=["5511988887777"])
        self.assertEqual(self.send({"number": "5511988887777", "text": "hi"}),
                         (400, {"status": 400, "error": "Bad Request", "response": {"message": [
                             {"jid": "5511988887777@s.whatsapp.net", "exists": False, "number": "5511988887777"}]}}))
        self.assertEqual(self.send({"number": "5511988886666", "text": "hi"})[0], 201)

    def test_success_body_and_fresh_ids(self):
        before = int(time.time())
        status, body = self.send({"number": "5511999999999", "text": "Olá, código 123"})
        self.assertEqual(status, 201)
        self.assertEqual(set(body), {"key", "pushName", "status", "message", "messageType",
                                     "messageTimestamp", "instanceId", "source"})
        self.assertEqual(body["key"]["remoteJid"], "5511999999999@s.whatsapp.net")
        self.assertIs(body["key"]["fromMe"], True)
        self.assertRegex(body["key"]["id"], KEY_ID_V2)
        self.assertEqual((body["pushName"], body["status"], body["messageType"], body["source"]),
                         ("Você", "PENDING", "conversation", "unknown"))
        self.assertEqual(body["message"], {"conversation": "Olá, código 123"})
        self.assertIsInstance(body["messageTimestamp"], int)
        self.assertGreaterEqual(body["messageTimestamp"], before)
        self.assertRegex(body["instanceId"], r"^[0-9a-f-]{36}$")
        ids = {self.send({"number": "5511999999999", "text": "x"})[1]["key"]["id"] for _ in range(20)}
        self.assertEqual(len(ids | {body["key"]["id"]}), 21)

    def test_number_normalization(self):
        cases = {"+52 1 55 1234 5678": "525512345678@s.whatsapp.net",  # MX drops the 3rd digit
                 "5531987654321": "553187654321@s.whatsapp.net",       # BR drops the mobile 9
                 "5511987654321": "5511987654321@s.whatsapp.net",      # BR DDD < 31 keeps it
                 "+1 (415) 555-2671": "14155552671@s.whatsapp.net",
                 "120363025246125486@g.us": "120363025246125486@g.us"}
        for number, jid in cases.items():
            status, body = self.send({"number": number, "text": "x"})
            self.assertEqual((status, body["key"]["remoteJid"]), (201, jid), number)

    def test_connection_state(self):
        self.assertEqual(call(self.base, "GET", "/instance/connectionState/inst2", headers={"apikey": KEY}),
                         (200, {"instance": {"instanceName": "inst2", "state": "open"}}))
        self.configure(connection_state="close")
        self.assertEqual(call(self.base, "GET", "/instance/connectionState/inst2", headers={"apikey": KEY})[1],
                         {"instance": {"instanceName": "inst2", "state": "close"}})
        self.assertEqual(call(self.base, "GET", "/instance/connectionState/x", headers={"apikey": "bad"})[0], 404)
        self.assertEqual(call(self.base, "GET", "/instance/connectionState/inst1")[0], 401)

    def test_records(self):
        self.send({"number": "5511999999999", "text": "first"})
        status, body = self.send({"number": "5511999999999", "text": "second"}, instance="inst2")
        self.send({}, key="wrong")
        recs = self.requests()
        self.assertEqual([r["index"] for r in recs], [0, 1, 2])
        r = recs[1]
        self.assertEqual((r["method"], r["path"], r["instance"], r["status"], r["key_id"], r["sent"]),
                         ("POST", "/message/sendText/inst2", "inst2", 201, body["key"]["id"], True))
        self.assertEqual(r["headers"]["apikey"], KEY)
        self.assertEqual(r["headers"]["content-type"], "application/json")
        self.assertEqual(r["json"], {"number": "5511999999999", "text": "second"})
        self.assertEqual(json.loads(r["body"]), r["json"])
        self.assertIsInstance(r["time"], float)
        self.assertEqual((recs[2]["status"], recs[2]["key_id"], recs[2]["sent"]), (401, None, False))
        self.assertEqual([x["index"] for x in self.requests(since=2)], [2])
        self.assertEqual(self.ctl("GET", "/_fake/stats")[1],
                         {"total": 3, "in_flight": 0, "by_status": {"201": 2, "401": 1}, "sent": 2,
                          "sent_by_number": {"5511999999999": 2}, "sent_by_text": {"first": 1, "second": 1},
                          "stored_messages": 2, "find_requests": 0, "webhooks_sent": 0, "webhooks_failed": 0, "webhooks_dropped": 0, "webhooks_pending": 0})

    def test_reset(self):
        self.configure(faults=[{"action": "timed_out_500"}])
        self.send({"number": "5511999999999", "text": "x"})
        self.assertEqual(self.ctl("POST", "/_fake/reset"), (200, {"ok": True}))
        self.assertEqual(self.requests(), [])
        self.assertEqual(self.ctl("GET", "/_fake/config")[1]["faults"], [])
        self.assertEqual(self.send({"number": "5511999999999", "text": "x"})[0], 201)

    def test_runtime_config(self):
        self.configure(api_key="new-key", instances=["other"])
        self.assertEqual(self.send({"number": "1", "text": "x"}, instance="inst1", key="new-key")[0], 404)
        self.assertEqual(self.send({"number": "5511999999999", "text": "x"}, instance="other")[0], 401)
        self.assertEqual(self.send({"number": "5511999999999", "text": "x"}, instance="other", key="new-key")[0], 201)
        for bad in ({"latency": 5}, {"latency_ms": -1}, {"faults": [{"action": "explode"}]},
                    {"faults": [{"action": "status"}]}, {"faults": [{"action": "reset", "match": {"phone": "1"}}]}):
            status, body = self.ctl("POST", "/_fake/config", bad)
            self.assertEqual(status, 400, bad)
            self.assertIn("error", body)

    def test_webhooks_off_by_default(self):
        cfg = self.ctl("GET", "/_fake/config")[1]
        self.assertEqual({k: v for k, v in cfg.items() if k.startswith("webhook")}, WEBHOOK_DEFAULTS)
        self.assertEqual(self.send({"number": "5511999999999", "text": "x"})[0], 201)
        self.configure(faults=[{"action": "prisma", "times": 1}])
        self.assertEqual(self.send({"number": "5511999999999", "text": "x"})[0], 400)
        self.assertEqual(self.hooks(), [])
        stats = self.stats()
        self.assertEqual([stats[k] for k in ("webhooks_sent", "webhooks_failed", "webhooks_dropped",
                                             "webhooks_pending")], [0, 0, 0, 0])
        self.assertEqual(self.manual(instance="inst1", key_id="X", status="READ", number="1")[0], 409)

    def test_latency(self):
        self.configure(latency_ms=500)
        t0 = time.monotonic()
        self.assertEqual(self.send({"number": "5511999999999", "text": "x"})[0], 201)
        self.assertGreaterEqual(time.monotonic() - t0, 0.5)
        t0 = time.monotonic()
        self.assertEqual(self.send({}, key="bad")[0], 401)  # rejections are not delayed
        self.assertLess(time.monotonic() - t0, 0.4)

    def test_in_flight_request_is_recorded_on_arrival(self):
        self.configure(latency_ms=1000)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.send, {"number": "5511999999999", "text": "slow"})
            deadline = time.monotonic() + 0.9
            while not (recs := self.requests()) and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertEqual((len(recs), recs[0]["status"], recs[0]["in_flight"]), (1, None, True))
            self.assertEqual(self.ctl("GET", "/_fake/stats")[1]["in_flight"], 1)
            self.assertEqual(pending.result()[0], 201)
        self.assertEqual(self.requests()[0]["status"], 201)

    def test_canned_faults(self):
        expected = {
            "connection_closed_500": (500, "Internal Server Error", "Connection Closed"),
            "connection_closed_400": (400, "Bad Request", ["Error: Connection Closed"]),
            "timed_out_500": (500, "Internal Server Error", "Timed Out"),
            "textmessage_500": (500, "Internal Server Error",
                                "Cannot read properties of undefined (reading 'textMessage')"),
        }
        for action, (status, error, message) in expected.items():
            self.configure(faults=[{"action": action, "times": 1}])
            self.assertEqual(self.send({"number": "5511999999999", "text": "x"}),
                             (status, {"status": status, "error": error, "response": {"message": message}}))
            rec = self.requests()[-1]
            self.assertEqual((rec["status"], rec["fault"], rec["sent"], rec["key_id"]), (status, action, False, None))
            self.assertEqual(self.send({"number": "5511999999999", "text": "x"})[0], 201, action)

    def test_prisma_counts_as_sent(self):
        self.configure(faults=[{"action": "prisma", "times": 1}])
        status, body = self.send({"number": "5511999999999", "text": "x"})
        self.assertEqual(status, 400)
        self.assertEqual(body["error"], "Bad Request")
        self.assertTrue(body["response"]["message"][0].startswith("PrismaClientKnownRequestError: "))
        self.assertEqual(self.ctl("GET", "/_fake/stats")[1]["sent"], 1)
        self.assertEqual(self.requests()[0]["sent"], True)

    def test_license_503(self):
        self.configure(faults=[{"action": "license_503"}])
        status, body = self.send({"number": "5511999999999", "text": "x"})
        self.assertEqual((status, body["code"], body["error"]), (503, "LICENSE_REQUIRED", "service not activated"))
        self.assertNotIn("response", body)

    def test_status_fault_verbatim_with_times(self):
        self.configure(faults=[{"action": "status", "status": 429, "body": {"anything": [1, "two"]},
                                "headers": {"Retry-After": "3"}, "times": 2}])
        for _ in range(2):
            self.assertEqual(self.send({"number": "5511999999999", "text": "x"}), (429, {"anything": [1, "two"]}))
        self.assertEqual(self.send({"number": "5511999999999", "text": "x"})[0], 201)
        rule = self.ctl("GET", "/_fake/config")[1]["faults"][0]
        self.assertEqual((rule["times"], rule["hits"]), (0, 2))
        conn = http.client.HTTPConnection(self.base[7:], timeout=5)
        self.configure(faults=[{"action": "status", "status": 502, "body": "<html>Bad Gateway</html>",
                                "content_type": "text/html"}])
        conn.request("POST", "/message/sendText/inst1", json.dumps({"number": "1234567890", "text": "x"}),
                     {"apikey": KEY, "Content-Type": "application/json"})
        r = conn.getresponse()
        self.assertEqual((r.status, r.getheader("Content-Type"), r.read()), (502, "text/html", b"<html>Bad Gateway</html>"))
        conn.close()

    def test_fault_matching_and_order(self):
        self.configure(faults=[
            {"match": {"number": "5511111111111"}, "action": "timed_out_500"},
            {"match": {"text_contains": "boom"}, "action": "connection_closed_400", "times": 1},
            {"match": {"instance": "inst2"}, "action": "textmessage_500", "times": None},
            {"match": {"text_contains": "boom"}, "action": "license_503"},
        ])
        self.assertEqual(self.send({"number": "+55 11 1111-11111", "text": "a"})[0], 500)  # digits match
        self.assertEqual(self.send({"number": "5511222222222", "text": "a boom b"})[0], 400)
        self.assertEqual(self.send({"number": "5511222222222", "text": "boom"})[0], 503)   # first rule used up
        self.assertEqual(self.send({"number": "5511222222222", "text": "x"}, instance="inst2")[0], 500)
        self.assertEqual(self.send({"number": "5511222222222", "text": "x"}, instance="inst2")[0], 500)
        self.assertEqual(self.send({"number": "5511222222222", "text": "x"})[0], 201)
        # Faults never mask the earlier checks.
        self.assertEqual(self.send({"number": "5511111111111", "text": "x"}, key="bad")[0], 401)

    def test_fail_ratio_is_seeded(self):
        def run():
            self.ctl("POST", "/_fake/reset")
            self.configure(faults=[{"action": "connection_closed_500", "fail_ratio": 0.3, "seed": 7}])
            return [self.send({"number": "5511999999999", "text": "x"})[0] for _ in range(40)]
        first = run()
        self.assertEqual(first, run())
        self.assertTrue(4 <= first.count(500) <= 20, first)
        self.assertEqual(set(first), {201, 500})

    def test_hang_then_close(self):
        self.configure(faults=[{"action": "hang", "seconds": 0.4, "times": 1}])
        t0 = time.monotonic()
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            self.send({"number": "5511999999999", "text": "x"})
        self.assertGreaterEqual(time.monotonic() - t0, 0.4)
        self.configure(faults=[{"action": "hang", "seconds": 5, "times": 1}])
        with self.assertRaises(TimeoutError):  # and a hang longer than the client's timeout
            self.send({"number": "5511999999999", "text": "x"}, timeout=0.3)
        rec = self.requests()[0]
        self.assertEqual((rec["status"], rec["fault"], rec["sent"]), (None, "hang", False))

    def test_reset_fault(self):
        self.configure(faults=[{"action": "reset", "times": 1}])
        with self.assertRaises(ConnectionResetError):
            self.send({"number": "5511999999999", "text": "x"})
        self.assertEqual(self.ctl("GET", "/_fake/stats")[1]["by_status"], {"none": 1})
        self.assertEqual(self.send({"number": "5511999999999", "text": "x"})[0], 201)

    def test_keep_alive(self):
        conn = http.client.HTTPConnection(self.base[7:], timeout=5)
        for _ in range(5):
            conn.request("POST", "/message/sendText/inst1", json.dumps({"number": "5511999999999", "text": "k"}),
                         {"apikey": KEY, "Content-Type": "application/json"})
            r = conn.getresponse()
            self.assertEqual(r.status, 201)
            self.assertEqual(int(r.getheader("Content-Length")), len(r.read()))
            self.assertFalse(r.will_close)
        conn.close()

    def test_chunked_request(self):
        sock = socket.create_connection(("127.0.0.1", int(self.base.rsplit(":", 1)[1])), timeout=5)
        body = json.dumps({"number": "5511999999999", "text": "chunked"}).encode()
        sock.sendall(b"POST /message/sendText/inst1 HTTP/1.1\r\nHost: x\r\napikey: " + KEY.encode() +
                     b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
                     b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 201 "))
        sock.close()
        self.assertEqual(self.requests()[0]["text"], "chunked")

    def test_concurrent_load(self):
        def worker(n):
            conn = http.client.HTTPConnection(self.base[7:], timeout=10)
            ids = []
            for i in range(25):
                conn.request("POST", "/message/sendText/inst1",
                             json.dumps({"number": "5511999999999", "text": f"{n}-{i}"}),
                             {"apikey": KEY, "Content-Type": "application/json"})
                ids.append(json.loads(conn.getresponse().read())["key"]["id"])
            conn.close()
            return ids
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            ids = [i for chunk in pool.map(worker, range(40)) for i in chunk]
        self.assertEqual(len(set(ids)), 1000)
        stats = self.ctl("GET", "/_fake/stats")[1]
        self.assertEqual((stats["total"], stats["sent"], len(stats["sent_by_text"])), (1000, 1000, 1000))


class V1Test(FakeTestCase):
    args = ("--api-version", "v1")

    def test_root_version(self):
        self.assertEqual(call(self.base, "GET", "/")[1]["version"], "1.8.2")

    def test_success_body(self):
        status, body = self.send({"number": "5511999999999", "options": {"delay": 0},
                                  "textMessage": {"text": "Olá!"}})
        self.assertEqual(status, 201)
        self.assertEqual(set(body), {"key", "message", "messageTimestamp", "status"})
        self.assertEqual(body["key"]["remoteJid"], "5511999999999@s.whatsapp.net")
        self.assertIs(body["key"]["fromMe"], True)
        self.assertRegex(body["key"]["id"], KEY_ID_V1)
        self.assertEqual(body["message"], {"extendedTextMessage": {"text": "Olá!"}})
        self.assertRegex(body["messageTimestamp"], r"^\d{10}$")
        self.assertEqual(body["status"], "PENDING")
        self.assertEqual(self.requests()[0]["text"], "Olá!")

    def test_schema(self):
        self.assertEqual(self.send({"number": "5511999999999", "text": "x"}),
                         (400, {"status": 400, "error": "Bad Request",
                                "response": {"message": [['instance requires property "textMessage"']]}}))
        self.assertEqual(self.send({"number": "5511999999999", "textMessage": {"text": ""}})[1]["response"],
                         {"message": [['The "text" cannot be empty']]})
        self.assertEqual(self.send({"number": "5511999999999", "textMessage": {"text": "x"}}, key="x")[0], 401)

    def test_fault_and_not_on_whatsapp(self):
        self.configure(not_on_whatsapp=["5511988887777"], faults=[{"action": "connection_closed_500", "times": 1}])
        self.assertEqual(self.send({"number": "5511999999999", "textMessage": {"text": "x"}})[0], 500)
        self.assertEqual(self.send({"number": "5511988887777", "textMessage": {"text": "x"}})[1]["response"],
                         {"message": [{"jid": "5511988887777@s.whatsapp.net", "exists": False,
                                       "number": "5511988887777"}]})


class WebhookTest(FakeTestCase):
    """Webhooks in v2 mode, to a Receiver in this process."""

    @classmethod
    def setUpClass(cls):
        cls.receiver = Receiver()
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.receiver.close()

    def setUp(self):
        super().setUp()  # the reset also abandons anything a previous test left queued
        self.receiver.reset()
        self.configure(webhook_url=self.receiver.url, webhook_headers={},
                       webhook_events=["SEND_MESSAGE", "MESSAGES_UPDATE"], webhook_by_events=False,
                       webhook_receipts=RECEIPTS, webhook_delay_ms=0, webhook_retry=10,
                       webhook_retry_base_ms=20, webhook_retry_max_ms=5000, webhook_retry_jitter=0,
                       webhook_retry_non_retryable=[400, 401, 403, 404, 422], webhook_timeout_ms=2000)

    def tearDown(self):
        self.wait_idle(10)

    def send_ok(self, text="olá", number="5511999999999", instance="inst1"):
        status, body = self.send({"number": number, "text": text}, instance=instance)
        self.assertEqual(status, 201, body)
        return body

    def received(self):
        """(event, data status) of what the receiver got, in arrival order."""
        return [(g["json"]["event"], g["json"]["data"]["status"]) for g in self.receiver.requests()]

    def test_v2_envelopes_and_order(self):
        before = time.time()
        body = self.send_ok("Olá, código 123")
        self.wait_idle()
        got = self.receiver.requests()
        self.assertEqual(self.received(), [("send.message", "PENDING"), ("messages.update", "SERVER_ACK"),
                                           ("messages.update", "DELIVERY_ACK"), ("messages.update", "READ")])
        envs = [g["json"] for g in got]
        for g, env in zip(got, envs):
            self.assertEqual(set(env), {"event", "instance", "data", "destination", "date_time", "sender",
                                        "server_url", "apikey"})
            self.assertEqual((env["instance"], env["destination"], env["server_url"], env["apikey"]),
                             ("inst1", self.receiver.url, self.base, None))
            self.assertRegex(env["date_time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            when = datetime.datetime.fromisoformat(env["date_time"].replace("Z", "+00:00")).timestamp()
            self.assertTrue(before - 1 <= when <= time.time() + 1, env["date_time"])
            self.assertRegex(env["sender"], r"^\d{10,15}@s\.whatsapp\.net$")
            self.assertEqual(g["path"], "/hooks/evolution")
            self.assertEqual(g["headers"]["content-type"], "application/json")
            self.assertNotIn("authorization", g["headers"])
        self.assertEqual(len({e["sender"] for e in envs}), 1)
        self.assertEqual(envs[0]["data"], body)  # send.message carries exactly the 201 body
        receipts = [e["data"] for e in envs[1:]]
        for d in receipts:
            self.assertEqual(set(d), {"keyId", "remoteJid", "fromMe", "status", "instanceId", "messageId"})
            self.assertEqual((d["keyId"], d["remoteJid"], d["fromMe"], d["instanceId"]),
                             (body["key"]["id"], body["key"]["remoteJid"], True, body["instanceId"]))
            self.assertRegex(d["messageId"], r"^c[0-9a-z]{24}$")
            self.assertNotEqual(d["messageId"], d["keyId"])
        self.assertEqual(len({d["messageId"] for d in receipts}), 1)
        key = body["key"]["id"]
        records = self.hooks()
        self.assertEqual([(r["index"], r["event"], r["instance"], r["status"], r["key_id"], r["attempt"],
                           r["http_status"], r["error"], r["manual"], r["url"]) for r in records],
                         [(i, e, "inst1", st, key, 1, 200, None, False, self.receiver.url)
                          for i, (e, st) in enumerate([("send.message", None), ("messages.update", "SERVER_ACK"),
                                                       ("messages.update", "DELIVERY_ACK"),
                                                       ("messages.update", "READ")])])
        self.assertEqual([r["at"] for r in records], sorted(r["at"] for r in records))
        self.assertTrue(before <= records[0]["at"] <= time.time())
        self.assertEqual([r["index"] for r in self.hooks(since=3)], [3])
        stats = self.stats()
        self.assertEqual([stats[k] for k in ("webhooks_sent", "webhooks_failed", "webhooks_dropped",
                                             "webhooks_pending")], [4, 0, 0, 0])
        # Another instance has another JID.
        self.receiver.reset()
        self.send_ok(instance="inst2")
        self.wait_idle()
        other = self.receiver.requests()[0]["json"]
        self.assertEqual(other["instance"], "inst2")
        self.assertNotEqual(other["sender"], envs[0]["sender"])

    def test_answer_never_waits_for_webhooks(self):
        self.receiver.reset(plan=[(0.7, 200)])  # a slow receiver, busy with send.message
        t0 = time.monotonic()
        self.send_ok()
        self.assertLess(time.monotonic() - t0, 0.5)
        self.assertEqual(len(self.receiver.wait(1)), 1)
        self.wait_idle(10)
        self.assertEqual(len(self.receiver.requests()), 4)

    def test_delay_between_events(self):
        self.configure(webhook_delay_ms=150)
        self.send_ok()
        self.wait_idle()
        at = [g["at"] for g in self.receiver.requests()]
        self.assertEqual(len(at), 4)
        self.assertTrue(all(b - a >= 0.14 for a, b in zip(at, at[1:])), at)

    def test_header_secret_and_forged_receipts(self):
        self.configure(webhook_headers={"x-hook-secret": "s3cret"})
        body = self.send_ok()
        self.wait_idle()
        self.assertEqual([g["headers"].get("x-hook-secret") for g in self.receiver.requests()], ["s3cret"] * 4)
        key = body["key"]["id"]
        # Forged: a wrong secret, then none at all; a duplicate READ with the right one.
        self.assertEqual(self.manual(instance="inst1", key_id=key, status="READ", headers={"x-hook-secret": "wrong"}),
                         (200, {"http_status": 200, "attempts": 1, "error": None}))
        self.assertEqual(self.manual(instance="inst1", key_id=key, status="READ", headers={})[0], 200)
        self.assertEqual(self.manual(instance="inst1", key_id=key, status="READ")[0], 200)
        got = self.receiver.requests()[4:]
        self.assertEqual([g["headers"].get("x-hook-secret") for g in got], ["wrong", None, "s3cret"])
        for g in got:
            self.assertEqual(g["json"]["event"], "messages.update")
            self.assertEqual(g["json"]["data"]["keyId"], key)
            self.assertEqual(g["json"]["data"]["remoteJid"], body["key"]["remoteJid"])  # remembered
        self.assertEqual([(r["manual"], r["status"]) for r in self.hooks(since=4)], [(True, "READ")] * 3)

    def test_jwt_bearer(self):
        self.configure(webhook_headers={"jwt_key": "chave-secreta-€", "x-extra": "1"})
        now = time.time()
        self.send_ok()
        self.wait_idle()
        got = self.receiver.requests()
        self.assertEqual(len(got), 4)
        for g in got:
            self.assertNotIn("jwt_key", g["headers"])
            self.assertEqual(g["headers"]["x-extra"], "1")
            scheme, token = g["headers"]["authorization"].split(" ")
            self.assertEqual(scheme, "Bearer")
            self.assertRegex(token, r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")  # unpadded
            header, payload, valid = decode_jwt(token, "chave-secreta-€")
            self.assertTrue(valid, token)
            self.assertEqual(header, {"alg": "HS256", "typ": "JWT"})
            self.assertEqual(set(payload), {"iat", "exp", "app", "action"})
            self.assertEqual((payload["app"], payload["action"]), ("evolution", "webhook"))
            self.assertEqual(payload["exp"] - payload["iat"], 600)
            self.assertLessEqual(abs(payload["iat"] - now), 5)
            self.assertFalse(decode_jwt(token, "another key")[2])
        # A receipt signed with the wrong key, as a forger would send it.
        self.manual(instance="inst1", key_id="3EB0FORGED", status="READ", number="5511999999999",
                    headers={"jwt_key": "wrong"})
        token = self.receiver.requests()[-1]["headers"]["authorization"].split(" ")[1]
        self.assertFalse(decode_jwt(token, "chave-secreta-€")[2])
        self.assertTrue(decode_jwt(token, "wrong")[2])

    def test_events_subscription_and_by_events(self):
        self.configure(webhook_events=["MESSAGES_UPDATE"])
        self.send_ok()
        self.wait_idle()
        self.assertEqual([e for e, _ in self.received()], ["messages.update"] * 3)
        self.receiver.reset()
        self.configure(webhook_events=["SEND_MESSAGE"])
        self.send_ok()
        self.wait_idle()
        self.assertEqual(self.received(), [("send.message", "PENDING")])
        # An empty list subscribes to everything, as in Evolution's /webhook/set.
        self.assertEqual(self.configure(webhook_events=[])["webhook_events"], ["SEND_MESSAGE", "MESSAGES_UPDATE"])
        self.receiver.reset()
        self.configure(webhook_by_events=True, webhook_receipts=["SERVER_ACK"])
        self.send_ok()
        self.wait_idle()
        got = self.receiver.requests()
        self.assertEqual([g["path"] for g in got],
                         ["/hooks/evolution/send-message", "/hooks/evolution/messages-update"])
        self.assertEqual({g["json"]["destination"] for g in got}, {self.receiver.url})

    def test_receipt_list_and_faults(self):
        self.configure(webhook_receipts=["SERVER_ACK", "DELIVERY_ACK"], webhook_faults=[
            {"match": {"text_contains": "dup"}, "duplicate": True, "times": 1},
            {"match": {"number": "5511888888888"}, "reverse": True},
            {"match": {"instance": "inst2"}, "statuses": ["SERVER_ACK", "ERROR"]},
            {"match": {"text_contains": "both"}, "statuses": RECEIPTS, "reverse": True, "duplicate": True},
            {"match": {"text_contains": "silent"}, "statuses": []},
        ])

        def receipts(**kw):
            self.receiver.reset()
            body = self.send_ok(**kw)
            self.wait_idle()
            got = [g["json"] for g in self.receiver.requests()]
            self.assertEqual(got[0]["event"], "send.message")
            self.assertTrue(all(g["data"]["keyId"] == body["key"]["id"] for g in got[1:]))
            return [g["data"]["status"] for g in got[1:]]

        self.assertEqual(receipts(), ["SERVER_ACK", "DELIVERY_ACK"])
        self.assertEqual(receipts(text="dup"), ["SERVER_ACK", "SERVER_ACK", "DELIVERY_ACK", "DELIVERY_ACK"])
        self.assertEqual(receipts(text="dup"), ["SERVER_ACK", "DELIVERY_ACK"])  # times: 1, used up
        self.assertEqual(receipts(number="+55 11 8888-88888"), ["DELIVERY_ACK", "SERVER_ACK"])
        self.assertEqual(receipts(instance="inst2"), ["SERVER_ACK", "ERROR"])
        self.assertEqual(receipts(text="both"), ["READ", "READ", "DELIVERY_ACK", "DELIVERY_ACK", "SERVER_ACK",
                                                 "SERVER_ACK"])
        self.assertEqual(receipts(text="silent"), [])
        rules = self.ctl("GET", "/_fake/config")[1]["webhook_faults"]
        self.assertEqual([(r["times"], r["hits"]) for r in rules], [(0, 1), (None, 1), (None, 1), (None, 1), (None, 1)])

    def test_early_receipts_come_before_the_answer(self):
        self.configure(webhook_delay_ms=100, webhook_faults=[{"match": {"text_contains": "early"}, "early": True}])
        t0 = time.monotonic()
        body = self.send_ok("early bird")
        answered = time.monotonic()
        got = self.receiver.requests()
        self.assertEqual(len(got), 4)
        self.assertLess(got[-1]["at"], answered)
        self.assertGreaterEqual(answered - t0, 0.3)  # the answer waited for three 100 ms delays
        self.assertEqual(got[1]["json"]["data"]["keyId"], body["key"]["id"])
        # Sent, answered and recorded before the sendText answer.
        self.assertEqual([r["http_status"] for r in self.hooks()], [200] * 4)
        self.assertEqual(self.stats()["webhooks_pending"], 0)
        # Without the rule the answer comes first.
        self.receiver.reset()
        self.send_ok("late")
        self.assertLess(len(self.receiver.requests()), 4)
        self.wait_idle()
        self.assertEqual(len(self.receiver.requests()), 4)

    def test_retry_on_500(self):
        self.configure(webhook_events=["MESSAGES_UPDATE"], webhook_receipts=["SERVER_ACK"], webhook_retry_base_ms=100)
        self.receiver.reset(plan=[500, 500])
        body = self.send_ok()
        self.wait_idle()
        got = self.receiver.requests()
        self.assertEqual(len(got), 3)
        self.assertEqual(len({g["raw"] for g in got}), 1)  # one body for all the attempts
        self.assertGreaterEqual(got[1]["at"] - got[0]["at"], 0.09)   # base
        self.assertGreaterEqual(got[2]["at"] - got[1]["at"], 0.19)   # base * 2
        self.assertEqual([(r["attempt"], r["http_status"], r["error"], r["key_id"]) for r in self.hooks()],
                         [(1, 500, None, body["key"]["id"]), (2, 500, None, body["key"]["id"]),
                          (3, 200, None, body["key"]["id"])])
        stats = self.stats()
        self.assertEqual((stats["webhooks_sent"], stats["webhooks_failed"], stats["webhooks_dropped"]), (1, 2, 0))
        # By hand, any other failure status is retried too.
        self.receiver.reset(plan=[503, 502, 429])
        self.assertEqual(self.manual(instance="inst1", key_id=body["key"]["id"], status="READ"),
                         (200, {"http_status": 200, "attempts": 4, "error": None}))

    def test_no_retry_on_non_retryable_statuses(self):
        self.configure(webhook_events=["MESSAGES_UPDATE"], webhook_receipts=["SERVER_ACK"])
        self.receiver.reset(plan=[401])
        self.send_ok()
        self.wait_idle()
        time.sleep(0.1)  # a retry would come after 20 ms
        self.assertEqual(len(self.receiver.requests()), 1)
        self.assertEqual([(r["attempt"], r["http_status"]) for r in self.hooks()], [(1, 401)])
        stats = self.stats()
        self.assertEqual((stats["webhooks_sent"], stats["webhooks_failed"], stats["webhooks_dropped"]), (0, 1, 1))
        for code in (400, 401, 403, 404, 422):
            self.receiver.reset(plan=[code])
            self.assertEqual(self.manual(instance="inst1", key_id="K", status="READ", number="5511999999999"),
                             (200, {"http_status": code, "attempts": 1, "error": None}))
        self.configure(webhook_retry_non_retryable=[])
        self.receiver.reset(plan=[401])
        self.assertEqual(self.manual(instance="inst1", key_id="K", status="READ", number="5511999999999")[1],
                         {"http_status": 200, "attempts": 2, "error": None})

    def test_connection_errors_until_attempts_run_out(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nobody listens there once closed
        self.configure(webhook_url=f"http://127.0.0.1:{port}/x", webhook_retry=3, webhook_retry_base_ms=10)
        status, answer = self.manual(instance="inst1", key_id="K", status="READ", number="5511999999999")
        self.assertEqual((status, answer["http_status"], answer["attempts"]), (200, None, 3))
        self.assertTrue(answer["error"].startswith("ConnectionRefusedError"), answer)
        records = self.hooks()
        self.assertEqual([(r["attempt"], r["http_status"]) for r in records], [(1, None), (2, None), (3, None)])
        self.assertTrue(all(r["error"] for r in records))
        self.assertEqual(self.stats()["webhooks_dropped"], 1)

    def test_timeout_is_retried(self):
        self.configure(webhook_timeout_ms=200)
        self.receiver.reset(plan=[(0.6, 200)])
        self.assertEqual(self.manual(instance="inst1", key_id="K", status="READ", number="5511999999999")[1],
                         {"http_status": 200, "attempts": 2, "error": None})
        self.assertEqual([(r["http_status"], r["error"]) for r in self.hooks()], [(None, "timeout"), (200, None)])

    def test_prisma_sends_receipts_with_an_unseen_id(self):
        self.configure(faults=[{"action": "prisma", "times": 1}])
        self.assertEqual(self.send({"number": "5531987654321", "text": "x"})[0], 400)
        self.wait_idle()
        got = [g["json"] for g in self.receiver.requests()]
        self.assertEqual([(g["event"], g["data"]["status"]) for g in got], [("messages.update", s) for s in RECEIPTS])
        key = got[0]["data"]["keyId"]
        self.assertRegex(key, KEY_ID_V2)
        self.assertEqual(got[0]["data"]["remoteJid"], "553187654321@s.whatsapp.net")
        self.assertIsNone(self.requests()[0]["key_id"])  # the client never saw it
        self.assertEqual({r["key_id"] for r in self.hooks()}, {key})
        self.assertEqual(self.manual(instance="inst1", key_id=key, status="READ")[0], 200)  # remembered

    def test_manual_webhook(self):
        status, answer = self.manual(instance="inst2", key_id="3EB0ABC", status="DELIVERY_ACK",
                                     number="+55 31 98765-4321")
        self.assertEqual((status, answer), (200, {"http_status": 200, "attempts": 1, "error": None}))
        env = self.receiver.requests()[0]["json"]
        self.assertEqual((env["event"], env["instance"]), ("messages.update", "inst2"))
        self.assertEqual(env["data"]["remoteJid"], "553187654321@s.whatsapp.net")
        self.assertEqual(env["data"]["status"], "DELIVERY_ACK")
        self.assertEqual(env["data"]["keyId"], "3EB0ABC")
        self.manual(instance="inst1", key_id="BAE5ABC", status="READ", number="5511999999999", v1=True)
        env = self.receiver.requests()[1]["json"]
        self.assertNotIn("apikey", env)
        self.assertEqual(set(env["data"]), {"remoteJid", "id", "fromMe", "status", "datetime", "owner"})
        for bad in ({"instance": "inst1", "key_id": "unknown", "status": "READ"},           # no number
                    {"instance": "inst1", "key_id": "K", "status": "DELIVERED", "number": "1"},
                    {"key_id": "K", "status": "READ", "number": "1"},
                    {"instance": "inst1", "key_id": "K", "status": "READ", "number": 1},
                    {"instance": "inst1", "key_id": "K", "status": "READ", "number": "1", "v1": "yes"},
                    {"instance": "inst1", "key_id": "K", "status": "READ", "number": "1", "headers": {"a b": "c"}},
                    {"instance": "inst1", "key_id": "K", "status": "READ", "number": "1", "event": "x"}):
            status, answer = self.manual(**bad)
            self.assertEqual(status, 400, bad)
            self.assertIn("error", answer)
        self.assertEqual(len(self.receiver.requests()), 2)

    def test_reset_forgets_and_abandons(self):
        self.configure(webhook_delay_ms=300, webhook_faults=[{"duplicate": True}])
        self.send_ok()
        self.receiver.wait(1)
        self.assertEqual(self.ctl("POST", "/_fake/reset")[0], 200)
        self.assertEqual(self.hooks(), [])
        self.assertEqual(self.ctl("GET", "/_fake/config")[1]["webhook_faults"], [])
        stats = self.stats()
        self.assertEqual([stats[k] for k in ("webhooks_sent", "webhooks_failed", "webhooks_dropped",
                                             "webhooks_pending")], [0, 0, 0, 0])
        time.sleep(0.5)
        self.assertEqual(len(self.receiver.requests()), 1)  # the receipts queued behind the delay are gone
        self.assertEqual(self.hooks(), [])
        self.assertEqual(self.ctl("GET", "/_fake/config")[1]["webhook_url"], self.receiver.url)  # config stays

    def test_config_validation(self):
        before = self.ctl("GET", "/_fake/config")[1]
        for bad in ({"webhook_url": "https://example.test/x"}, {"webhook_url": "ftp://x"}, {"webhook_url": "http://"},
                    {"webhook_url": 5}, {"webhook_url": "http://127.0.0.1:99999/"},
                    {"webhook_headers": {"a": 1}}, {"webhook_headers": {"bad name": "x"}},
                    {"webhook_headers": {"a": "x\r\ny: z"}}, {"webhook_headers": {"jwt_key": ""}},
                    {"webhook_headers": {"a": "€"}},
                    {"webhook_headers": []}, {"webhook_events": ["CONNECTION_UPDATE"]},
                    {"webhook_events": "SEND_MESSAGE"},
                    {"webhook_by_events": 1}, {"webhook_receipts": ["DELIVERED"]}, {"webhook_delay_ms": -1},
                    {"webhook_retry": 0}, {"webhook_retry": True}, {"webhook_retry": 2.5},
                    {"webhook_retry_base_ms": "1"},
                    {"webhook_retry_jitter": 2}, {"webhook_timeout_ms": 0},
                    {"webhook_retry_non_retryable": ["401"]}, {"webhook_faults": {}},
                    {"webhook_faults": [{"match": {"number": "1"}}]}, {"webhook_faults": [{"early": "yes"}]},
                    {"webhook_faults": [{"statuses": ["NOPE"]}]}, {"webhook_faults": [{"action": "reset"}]},
                    {"webhook_faults": [{"early": True, "match": {"phone": "1"}}]},
                    {"webhook_faults": [{"early": True, "times": -1}]},
                    {"webhook_url": None, "webhook_retry": 0}):  # all or nothing: the URL stays
            status, body = self.ctl("POST", "/_fake/config", bad)
            self.assertEqual(status, 400, bad)
            self.assertIn("error", body)
        self.assertEqual(self.ctl("GET", "/_fake/config")[1], before)


class WebhookV1Test(FakeTestCase):
    """v1 mode, with the webhook settings given on the command line."""

    @classmethod
    def setUpClass(cls):
        cls.receiver = Receiver()
        cls.args = ("--api-version", "v1", "--webhook-url", cls.receiver.url,
                    "--webhook-headers", json.dumps({"x-hook-secret": "v1-secret"}),
                    "--webhook-events", "MESSAGES_UPDATE,SEND_MESSAGE", "--webhook-receipts", "SERVER_ACK,READ",
                    "--webhook-delay-ms", "0", "--webhook-retry", "4", "--webhook-retry-base-ms", "20",
                    "--webhook-retry-max-ms", "100", "--webhook-retry-jitter", "0",
                    "--webhook-retry-non-retryable", "401,403", "--webhook-timeout-ms", "1500")
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.receiver.close()

    def setUp(self):
        super().setUp()
        self.receiver.reset()

    def tearDown(self):
        self.wait_idle(10)

    def test_command_line_config(self):
        cfg = self.ctl("GET", "/_fake/config")[1]
        self.assertEqual({k: v for k, v in cfg.items() if k.startswith("webhook")},
                         {"webhook_url": self.receiver.url, "webhook_headers": {"x-hook-secret": "v1-secret"},
                          "webhook_events": ["SEND_MESSAGE", "MESSAGES_UPDATE"], "webhook_by_events": False,
                          "webhook_receipts": ["SERVER_ACK", "READ"], "webhook_delay_ms": 0, "webhook_retry": 4,
                          "webhook_retry_base_ms": 20, "webhook_retry_max_ms": 100, "webhook_retry_jitter": 0,
                          "webhook_retry_non_retryable": [401, 403], "webhook_timeout_ms": 1500,
                          "webhook_faults": []})

    def test_v1_envelopes(self):
        status, body = self.send({"number": "5511999999999", "textMessage": {"text": "Olá!"}})
        self.assertEqual(status, 201)
        now_ms = time.time() * 1000
        self.wait_idle()
        got = self.receiver.requests()
        envs = [g["json"] for g in got]
        self.assertEqual([(e["event"], e["data"]["status"]) for e in envs],
                         [("send.message", "PENDING"), ("messages.update", "SERVER_ACK"), ("messages.update", "READ")])
        for g, env in zip(got, envs):
            self.assertEqual(set(env), {"event", "instance", "data", "destination", "date_time", "sender",
                                        "server_url"})
            self.assertEqual(g["headers"]["x-hook-secret"], "v1-secret")
        self.assertEqual(envs[0]["data"], body)
        for env in envs[1:]:
            d = env["data"]
            self.assertEqual(list(d), ["remoteJid", "id", "fromMe", "status", "datetime", "owner"])
            self.assertEqual((d["remoteJid"], d["id"], d["fromMe"], d["owner"]),
                             (body["key"]["remoteJid"], body["key"]["id"], True, "inst1"))
            self.assertIsInstance(d["datetime"], int)
            self.assertLess(abs(d["datetime"] - now_ms), 5000)
        # By hand: v1 data by default in v1 mode, v2 data on request.
        self.receiver.reset()
        self.manual(instance="inst1", key_id=body["key"]["id"], status="READ")
        self.manual(instance="inst1", key_id=body["key"]["id"], status="READ", v1=False)
        a, b = [g["json"] for g in self.receiver.requests()]
        self.assertEqual((set(a["data"]), "apikey" in a),
                         ({"remoteJid", "id", "fromMe", "status", "datetime", "owner"}, False))
        self.assertEqual((set(b["data"]), b["apikey"]),
                         ({"keyId", "remoteJid", "fromMe", "status", "instanceId", "messageId"}, None))

    def test_retry_settings_from_the_command_line(self):
        self.receiver.reset(plan=[500, 500, 500, 500, 500])
        t0 = time.monotonic()
        self.assertEqual(self.manual(instance="inst1", key_id="K", status="READ", number="5511999999999")[1],
                         {"http_status": 500, "attempts": 4, "error": None})  # --webhook-retry 4
        self.assertGreaterEqual(time.monotonic() - t0, 0.02 + 0.04 + 0.08)
        self.receiver.reset(plan=[404])
        self.assertEqual(self.manual(instance="inst1", key_id="K", status="READ", number="5511999999999")[1],
                         {"http_status": 200, "attempts": 2, "error": None})  # 404 is retryable here


def iso(seconds):
    """An ISO 8601 UTC time with milliseconds, as the consumer writes them."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


class FindMessagesTest(FakeTestCase):
    def find(self, body=None, instance="inst1", key=KEY):
        headers = {"apikey": key} if key is not None else {}
        return call(self.base, "POST", f"/chat/findMessages/{instance}", {} if body is None else body, headers)

    def found(self, body=None, instance="inst1"):
        status, answer = self.find(body, instance)
        self.assertEqual(status, 200, answer)
        self.assertEqual(set(answer), {"messages"})
        self.assertEqual(set(answer["messages"]), {"total", "pages", "currentPage", "records"})
        return answer["messages"]

    def send_ok(self, text, number="5511999999999", instance="inst1"):
        status, body = self.send({"number": number, "text": text}, instance=instance)
        self.assertEqual(status, 201, body)
        return body

    def test_guards_and_schema(self):
        self.assertEqual(self.find(instance="nope", key=None),
                         (404, {"status": 404, "error": "Not Found",
                                "response": {"message": ['The "nope" instance does not exist']}}))
        self.assertEqual(self.find(key="wrong"),
                         (401, {"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}}))
        self.assertEqual(call(self.base, "GET", "/chat/findMessages/inst1", headers={"apikey": KEY}),
                         (404, {"status": 404, "error": "Not Found",
                                "response": {"message": ["Cannot GET /chat/findMessages/inst1"]}}))

        def bad(body):
            status, answer = self.find(body)
            self.assertEqual((status, answer["error"]), (400, "Bad Request"), body)
            return answer["response"]["message"]
        self.assertEqual(bad({"where": "x"}), [["where is not of a type(s) object"]])
        self.assertEqual(bad({"where": {"key": []}}), [["where.key is not of a type(s) object"]])
        self.assertEqual(bad({"where": {"key": {"remoteJid": ""}}}), [["The property cannot be empty"]])
        self.assertEqual(bad({"where": {"key": {"id": 5}}}), [["The property cannot be empty"]])
        self.assertEqual(bad({"where": {"key": {"fromMe": "yes"}}}),
                         [["where.key.fromMe is not of a type(s) boolean",
                           "where.key.fromMe is not one of enum values: true,false"]])
        self.assertEqual(bad({"limit": "5"}), [["limit is not of a type(s) integer"]])
        status, answer = call(self.base, "POST", "/chat/findMessages/inst1", '{"where":',
                              {"apikey": KEY, "Content-Type": "application/json"})
        self.assertEqual((status, answer["error"]), (400, "Internal Server Error"))
        self.assertEqual(self.found()["total"], 0)  # no body: every message, none yet

    def test_record_shape_matches_the_send(self):
        body = self.send_ok("código 42")
        msgs = self.found({"where": {"key": {"id": body["key"]["id"]}}})
        self.assertEqual((msgs["total"], msgs["pages"], msgs["currentPage"]), (1, 1, 1))
        rec = msgs["records"][0]
        self.assertEqual(set(rec), {"id", "key", "pushName", "messageType", "message", "messageTimestamp",
                                    "instanceId", "source", "contextInfo", "MessageUpdate"})
        self.assertEqual(rec["key"], body["key"])
        self.assertEqual(rec["key"], {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": True,
                                      "id": body["key"]["id"]})
        self.assertEqual(rec["message"], {"conversation": "código 42"})
        self.assertIsInstance(rec["messageTimestamp"], int)
        self.assertEqual(rec["messageTimestamp"], body["messageTimestamp"])  # one clock read
        self.assertEqual((rec["instanceId"], rec["pushName"], rec["messageType"], rec["source"]),
                         (body["instanceId"], "Você", "conversation", "unknown"))
        self.assertRegex(rec["id"], r"^c[0-9a-z]{24}$")
        self.assertEqual((rec["contextInfo"], rec["MessageUpdate"]), (None, []))
        self.assertEqual(self.found({"where": {"key": {"id": "3EB0" + "0" * 36}}})["total"], 0)
        self.assertEqual(self.found({"where": {"id": rec["id"]}})["records"], [rec])  # the row id
        self.assertEqual(self.found({"where": {"messageType": "imageMessage"}})["total"], 0)
        self.assertEqual(self.ctl("GET", "/_fake/messages")[1], [rec])

    def test_filters_by_instance(self):
        a = self.send_ok("on inst1")
        b = self.send_ok("on inst2", instance="inst2")
        self.assertEqual([r["key"]["id"] for r in self.found(instance="inst2")["records"]], [b["key"]["id"]])
        self.assertEqual([r["key"]["id"] for r in self.found(instance="inst1")["records"]], [a["key"]["id"]])

    def test_remote_jid_is_compared_as_stored(self):
        body = self.send_ok("br", number="5531987654321")  # stored without the mobile 9 (createJid)
        self.send_ok("other", number="5511988887777")
        jid = "553187654321@s.whatsapp.net"
        self.assertEqual(body["key"]["remoteJid"], jid)
        hits = self.found({"where": {"key": {"remoteJid": jid, "fromMe": True}}})
        self.assertEqual([r["key"]["id"] for r in hits["records"]], [body["key"]["id"]])
        # Evolution compares the JSON value as it is: no normalization of the query.
        for other in ("5531987654321@s.whatsapp.net", "553187654321", "5531987654321"):
            self.assertEqual(self.found({"where": {"key": {"remoteJid": other}}})["total"], 0, other)

    def test_from_me_filter_applies_only_when_true(self):
        self.send_ok("one")
        self.send_ok("two")
        self.assertEqual(self.found({"where": {"key": {"fromMe": True}}})["total"], 2)
        # `keyFilters?.fromMe ? {...} : {}`: false filters nothing, so the sent ones still come.
        self.assertEqual(self.found({"where": {"key": {"fromMe": False}}})["total"], 2)

    def test_newest_first_and_pagination(self):
        early = self.send_ok("early")
        time.sleep(1.05)  # a later second
        ids = [self.send_ok(f"m{i}")["key"]["id"] for i in range(6)]
        everything = self.found()
        self.assertEqual((everything["total"], everything["pages"], everything["currentPage"]), (7, 1, 1))
        got = [r["key"]["id"] for r in everything["records"]]
        # messageTimestamp DESC; within one second the later insert first.
        self.assertEqual(got, ids[::-1] + [early["key"]["id"]])
        stamps = [r["messageTimestamp"] for r in everything["records"]]
        self.assertEqual(stamps, sorted(stamps, reverse=True))
        self.assertGreater(stamps[0], stamps[-1])
        pages = [self.found({"page": n, "offset": 3}) for n in (1, 2, 3, 4)]
        self.assertEqual([(p["total"], p["pages"], p["currentPage"], len(p["records"])) for p in pages],
                         [(7, 3, 1, 3), (7, 3, 2, 3), (7, 3, 3, 1), (7, 3, 4, 0)])
        self.assertEqual([r["key"]["id"] for p in pages for r in p["records"]], got)
        self.assertEqual(self.found({"offset": 0})["pages"], 1)  # 0 is falsy: the default 50
        self.assertEqual(self.found({"page": "2", "offset": 3})["currentPage"], "2")  # "2" - 1 in JS
        self.assertEqual([r["key"]["id"] for r in self.found({"page": "2", "offset": 3})["records"]], got[3:6])
        self.assertEqual(self.find({"offset": "3"})[0], 500)  # Prisma's take must be an Int

    def test_default_page_size_is_50(self):
        for i in range(52):
            self.send_ok(f"bulk {i}")
        first, second = self.found(), self.found({"page": 2})
        self.assertEqual((first["total"], first["pages"], len(first["records"])), (52, 2, 50))
        self.assertEqual((second["currentPage"], len(second["records"])), (2, 2))

    def test_time_range_needs_both_bounds(self):
        body = self.send_ok("timed")
        ts = body["messageTimestamp"]

        def total(**bounds):
            return self.found({"where": {"messageTimestamp": bounds}})["total"]
        future, past = iso(ts + 3600), iso(ts - 3600)
        self.assertEqual(total(gte=future), 1)  # one bound alone: no time filter at all
        self.assertEqual(total(lte=past), 1)
        self.assertEqual(total(gte=future, lte=iso(ts + 7200)), 0)
        self.assertEqual(total(gte=past, lte=past), 0)
        self.assertEqual(total(gte=past, lte=future), 1)
        self.assertEqual(total(gte=iso(ts + 0.999), lte=iso(ts + 0.999)), 1)  # floored to seconds, inclusive
        self.assertEqual(total(gte=iso(ts + 1), lte=future), 0)
        self.assertEqual(total(gte="2000-01-01", lte="2100-01-01"), 1)  # date-only ISO
        self.assertEqual(total(gte=(ts - 5) * 1000, lte=(ts + 5) * 1000), 1)  # numbers are milliseconds
        self.assertEqual(total(gte=ts - 5, lte=ts + 5), 0)  # seconds read as ms: 1970
        self.assertEqual(total(gte=0, lte=future), 1)  # 0 is falsy: no filter
        self.assertEqual(self.find({"where": {"messageTimestamp": {"gte": "nope", "lte": future}}})[0], 500)

    def test_save_messages_false_stores_nothing(self):
        self.configure(save_messages=False)
        self.assertEqual(self.ctl("GET", "/_fake/config")[1]["save_messages"], False)
        self.send_ok("not stored")
        self.assertEqual(self.found()["total"], 0)
        self.assertEqual((self.stats()["sent"], self.stats()["stored_messages"]), (1, 0))
        self.configure(save_messages=True)
        self.send_ok("stored")
        self.assertEqual([r["message"]["conversation"] for r in self.found()["records"]], ["stored"])
        self.assertEqual(self.ctl("POST", "/_fake/config", {"save_messages": "yes"})[0], 400)

    def test_failed_sends_are_not_stored(self):
        self.configure(not_on_whatsapp=["5511988887777"],
                       faults=[{"action": "prisma", "match": {"text_contains": "prisma"}, "times": 1},
                               {"action": "connection_closed_400", "match": {"text_contains": "closed"}},
                               {"action": "prisma", "stored": True, "match": {"text_contains": "prisma"}}])
        self.assertEqual(self.send({"number": "5511999999999", "text": "prisma"})[0], 400)
        self.assertEqual(self.send({"number": "5511999999999", "text": "closed"})[0], 400)
        self.assertEqual(self.send({"number": "5511988887777", "text": "missing"})[0], 400)
        self.assertEqual(self.found()["total"], 0)  # the prisma fault is the failed Message insert
        self.assertEqual(self.send({"number": "5511999999999", "text": "prisma, stored"})[0], 400)
        recs = self.found()["records"]
        self.assertEqual([r["message"]["conversation"] for r in recs], ["prisma, stored"])
        self.assertRegex(recs[0]["key"]["id"], KEY_ID_V2)
        self.assertEqual(self.stats()["sent"], 2)
        self.assertEqual(self.ctl("POST", "/_fake/config", {"faults": [{"action": "reset", "stored": True}]})[0], 400)

    def test_find_requests_are_recorded(self):
        self.send_ok("x")
        self.found({"where": {"key": {"fromMe": True}}, "offset": 1})
        self.find(key="bad")
        self.found(instance="inst2")
        reqs = self.ctl("GET", "/_fake/find_requests")[1]
        self.assertEqual([(r["index"], r["instance"], r["status"], r["total"], r["returned"]) for r in reqs],
                         [(0, "inst1", 200, 1, 1), (1, "inst1", 401, None, None), (2, "inst2", 200, 0, 0)])
        self.assertEqual(reqs[0]["json"], {"where": {"key": {"fromMe": True}}, "offset": 1})
        self.assertEqual((reqs[0]["path"], reqs[0]["headers"]["apikey"], reqs[0]["in_flight"], reqs[0]["fault"]),
                         ("/chat/findMessages/inst1", KEY, False, None))
        self.assertEqual([r["index"] for r in self.ctl("GET", "/_fake/find_requests?since=2")[1]], [2])
        self.assertEqual(self.stats()["find_requests"], 3)
        self.assertEqual(len(self.requests()), 1)  # lookups are not sendText records
        self.ctl("POST", "/_fake/reset")
        self.assertEqual((self.ctl("GET", "/_fake/find_requests")[1], self.found()["total"]), ([], 0))

    def test_route_specific_faults(self):
        self.send_ok("before")
        self.configure(faults=[{"route": "find_messages", "action": "status", "status": 500, "times": 1,
                                "body": {"status": 500, "error": "Internal Server Error",
                                         "response": {"message": "db down"}}},
                               {"action": "timed_out_500", "match": {"instance": "inst2"}}])
        self.send_ok("during")  # a findMessages rule leaves sendText alone
        self.assertEqual(self.find(), (500, {"status": 500, "error": "Internal Server Error",
                                             "response": {"message": "db down"}}))
        self.assertEqual(self.found()["total"], 2)  # times 1: used up
        self.assertEqual(self.found(instance="inst2")["total"], 0)  # a sendText rule leaves findMessages alone
        reqs = self.ctl("GET", "/_fake/find_requests")[1]
        self.assertEqual([(r["status"], r["fault"]) for r in reqs], [(500, "status"), (200, None), (200, None)])
        rules = self.ctl("GET", "/_fake/config")[1]["faults"]
        self.assertEqual([(r.get("route"), r["hits"]) for r in rules], [("find_messages", 1), (None, 0)])

        self.configure(faults=[{"route": "find_messages", "action": "textmessage_500", "match": {"instance": "inst2"}}])
        self.assertEqual(self.find(instance="inst2"),
                         (500, {"status": 500, "error": "Internal Server Error", "response": {
                             "message": "Cannot read properties of undefined (reading 'fetchMessages')"}}))
        self.assertEqual(self.find(instance="inst1")[0], 200)

        self.configure(faults=[{"route": "find_messages", "action": "reset"}])
        with self.assertRaises((ConnectionResetError, http.client.RemoteDisconnected, urllib.error.URLError)):
            self.find()
        self.configure(faults=[{"route": "find_messages", "action": "hang", "seconds": 5}])
        with self.assertRaises(TimeoutError):
            call(self.base, "POST", "/chat/findMessages/inst1", {}, {"apikey": KEY}, timeout=0.3)
        self.configure(faults=[{"route": "connection_state", "action": "status", "status": 503, "body": "down",
                                "content_type": "text/plain"}])
        self.assertEqual(call(self.base, "GET", "/instance/connectionState/inst1", headers={"apikey": KEY}),
                         (503, "down"))
        self.assertEqual(self.find()[0], 200)
        for bad in ({"route": "nope", "action": "reset"}, {"route": "find_messages", "action": "prisma"},
                    {"route": "connection_state", "action": "connection_closed_500"},
                    {"route": "find_messages", "action": "reset", "match": {"number": "1"}}):
            self.assertEqual(self.ctl("POST", "/_fake/config", {"faults": [bad]})[0], 400, bad)

    def test_per_instance_session_closed(self):
        def state(instance):
            return call(self.base, "GET", f"/instance/connectionState/{instance}",
                        headers={"apikey": KEY})[1]["instance"]["state"]
        self.configure(connection_states={"inst1": "close"})
        self.assertEqual((state("inst1"), state("inst2")), ("close", "open"))
        self.assertEqual(self.send({"number": "5511999999999", "text": "closed"}),
                         (400, {"status": 400, "error": "Bad Request",
                                "response": {"message": ["Error: Connection Closed"]}}))
        rec = self.requests()[-1]
        self.assertEqual((rec["status"], rec["fault"], rec["sent"], rec["key_id"]), (400, "session_closed", False, None))
        self.send_ok("other instance", instance="inst2")  # unaffected
        self.configure(session_closed_error="connection_closed_500")
        self.assertEqual(self.send({"number": "5511999999999", "text": "closed"}),
                         (500, {"status": 500, "error": "Internal Server Error",
                                "response": {"message": "Connection Closed"}}))
        # The global state applies to instances without their own.
        self.configure(connection_state="connecting", connection_states={"inst2": "open"})
        self.assertEqual((state("inst1"), state("inst2")), ("connecting", "open"))
        self.assertEqual(self.send({"number": "5511999999999", "text": "closed"})[0], 500)
        self.send_ok("still fine", instance="inst2")
        stats = self.stats()
        self.assertEqual((stats["sent"], stats["sent_by_text"]), (2, {"other instance": 1, "still fine": 1}))
        self.assertEqual(self.found(instance="inst1")["total"], 0)
        self.configure(connection_state="open", connection_states={})
        self.send_ok("reopened")
        for bad in ({"connection_states": {"inst1": "shut"}}, {"connection_states": ["inst1"]},
                    {"session_closed_error": "connection_closed_503"}):
            self.assertEqual(self.ctl("POST", "/_fake/config", bad)[0], 400, bad)

    def test_session_400_comes_after_the_number_check(self):
        self.configure(connection_states={"inst1": "close"}, not_on_whatsapp=["5511988887777"])
        self.assertEqual(self.send({"number": "5511988887777", "text": "x"})[1]["response"]["message"][0]["exists"],
                         False)
        self.configure(session_closed_error="connection_closed_500")
        self.assertEqual(self.send({"number": "5511988887777", "text": "x"})[0], 500)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StateFileTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="fake-state-")
        self.state = os.path.join(self.dir, "state.json")
        self.port = free_port()
        self.procs = []

    def tearDown(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()

    def launch(self):
        proc = subprocess.Popen([sys.executable, FAKE, "--host", "127.0.0.1", "--port", str(self.port),
                                 "--api-key", KEY, "--instances", "inst1,inst2", "--state-file", self.state],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        line = proc.stdout.readline()
        self.assertEqual(line.strip(), f"fake-evolution listening on 127.0.0.1:{self.port}", line + proc.stdout.read()
                         if proc.poll() is not None else line)
        return proc, f"http://127.0.0.1:{self.port}"

    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(5), 0)

    def test_records_survive_a_stop_and_start(self):
        proc, base = self.launch()
        send = lambda text, inst="inst1": call(base, "POST", f"/message/sendText/{inst}",
                                              {"number": "5511999999999", "text": text}, {"apikey": KEY})
        self.assertEqual(call(base, "POST", "/_fake/config", {
            "connection_states": {"inst2": "close"}, "latency_ms": 5,
            "faults": [{"action": "timed_out_500", "match": {"text_contains": "flaky"}, "times": 2}]})[0], 200)
        first = send("first")[1]
        self.assertEqual(send("flaky")[0], 500)
        self.assertEqual(send("to inst2", "inst2")[0], 400)
        find = lambda: call(base, "POST", "/chat/findMessages/inst1", {"where": {"key": {"fromMe": True}}},
                            {"apikey": KEY})
        self.assertEqual(find()[1]["messages"]["total"], 1)
        before = {p: call(base, "GET", p)[1] for p in ("/_fake/requests", "/_fake/find_requests", "/_fake/stats",
                                                       "/_fake/config", "/_fake/messages")}
        self.stop(proc)
        # Stopped: the port is closed.
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        with open(self.state) as f:
            saved = json.load(f)
        self.assertEqual(len(saved["records"]), 3)

        proc, base = self.launch()  # the same port, from the file
        self.assertEqual({p: call(base, "GET", p)[1] for p in before}, before)
        self.assertEqual(find()[1]["messages"]["records"][0]["key"]["id"], first["key"]["id"])
        self.assertEqual(send("to inst2", "inst2")[0], 400)  # connection_states kept
        self.assertEqual(send("flaky again")[0], 500)  # the rule's second time
        second = send("flaky at last")[1]
        self.assertEqual([r["index"] for r in call(base, "GET", "/_fake/requests?since=3")[1]], [3, 4, 5])
        self.assertEqual([r["index"] for r in call(base, "GET", "/_fake/find_requests")[1]], [0, 1])
        msgs = find()[1]["messages"]
        self.assertEqual([r["key"]["id"] for r in msgs["records"]], [second["key"]["id"], first["key"]["id"]])
        self.assertEqual(call(base, "GET", "/_fake/stats")[1]["sent"], 2)
        self.stop(proc)

    def test_a_send_cut_by_the_stop_is_not_sent(self):
        proc, base = self.launch()
        call(base, "POST", "/_fake/config", {"latency_ms": 10000})
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call, base, "POST", "/message/sendText/inst1",
                                  {"number": "5511999999999", "text": "slow"}, {"apikey": KEY}, 10)
            deadline = time.monotonic() + 5
            while not call(base, "GET", "/_fake/requests")[1] and time.monotonic() < deadline:
                time.sleep(0.02)
            t0 = time.monotonic()
            self.stop(proc)
            self.assertLess(time.monotonic() - t0, 3)
            with self.assertRaises((ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError)):
                pending.result()
        proc, base = self.launch()
        rec = call(base, "GET", "/_fake/requests")[1][0]
        self.assertEqual((rec["status"], rec["sent"], rec["fault"], rec["in_flight"]), (None, False, "stopped", False))
        self.assertEqual(call(base, "POST", "/chat/findMessages/inst1", {}, {"apikey": KEY})[1]["messages"]["total"], 0)
        self.stop(proc)

    def test_unreadable_state_file_is_refused(self):
        with open(self.state, "w") as f:
            f.write("{not json")
        r = subprocess.run([sys.executable, FAKE, "--port", "0", "--state-file", self.state],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("state-file", r.stderr)


class LifecycleTest(unittest.TestCase):
    def test_sigterm_exits_zero_even_with_a_hung_request(self):
        proc, base = start_fake()
        try:
            call(base, "POST", "/_fake/config", {"faults": [{"action": "hang", "seconds": 60}]})
            with self.assertRaises(TimeoutError):
                call(base, "POST", "/message/sendText/inst1", {"number": "1", "text": "x"}, {"apikey": KEY},
                     timeout=0.2)
            t0 = time.monotonic()
            self.assertEqual(stop_fake(proc), 0)
            self.assertLess(time.monotonic() - t0, 2)
        finally:
            if proc.poll() is None:
                proc.kill()

    def test_bad_webhook_option_is_refused_at_start(self):
        r = subprocess.run([sys.executable, FAKE, "--port", "0", "--webhook-url", "ftp://x"],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("webhook_url", r.stderr)

    def test_sigterm_with_webhooks_in_flight(self):
        receiver = Receiver()
        proc, base = start_fake("--webhook-url", receiver.url, "--webhook-delay-ms", "5000")
        try:
            receiver.reset(plan=[(3, 200)])
            self.assertEqual(call(base, "POST", "/message/sendText/inst1", {"number": "1234567890", "text": "x"},
                                  {"apikey": KEY})[0], 201)
            receiver.wait(1)
            t0 = time.monotonic()
            self.assertEqual(stop_fake(proc), 0)
            self.assertLess(time.monotonic() - t0, 2)
        finally:
            if proc.poll() is None:
                proc.kill()
            receiver.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
