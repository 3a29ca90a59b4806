#!/usr/bin/env python3
"""Self-test of fake_evolution.py: starts it as a subprocess on a free port and checks every
behaviour the integration tests rely on (exact statuses and bodies, the order of the checks,
fresh message ids, fault rules, the control API, v1 mode, clean exit on SIGTERM).

Run directly (ctest does): exit code 0 when every check passes. Standard library only.
"""

import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_evolution.py")
KEY = "selftest-key"
KEY_ID_V2 = re.compile(r"^3EB0[0-9A-F]{36}$")
KEY_ID_V1 = re.compile(r"^BAE5[0-9A-F]{12}$")


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
                       connection_state="open")

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
                          "sent_by_number": {"5511999999999": 2}, "sent_by_text": {"first": 1, "second": 1}})

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


if __name__ == "__main__":
    unittest.main(verbosity=2)
