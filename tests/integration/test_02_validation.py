#!/usr/bin/env python3
"""Integration: every error answer of the HTTP API (DESIGN §2) with its exact status, code and
field; nothing invalid reaches Evolution API; the api survives all of it."""

import http.client as httpclient
import json
import os
import socket
import sys
import time
import unittest
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (IntegrationTest, _mgmt, _vhost, get_task, http, post_message,  # noqa: E402
                     wait_task_status)

PHONE = "+5511987654321"
JSON = {"Content-Type": "application/json"}


class ValidationTest(IntegrationTest):

    def setUp(self):
        super().setUp()
        self.cfg, self.api, self.consumer = self.start_stack()
        self.url = self.api.base_url + "/messages"

    def post_raw(self, body, headers=JSON):
        return http("POST", self.url, body, headers)

    def assert_still_serving(self):
        """The api process is alive and still accepts and delivers a valid message; the fake
        saw that message and nothing else (so none of the refused requests went out)."""
        self.assertTrue(self.api.running(), self.api.log_tail())
        r = post_message(self.api, PHONE, "still alive")
        self.assertEqual(r.status, 202, r.body)
        wait_task_status(self.api, r.json["task_id"], "SUCCESS")
        time.sleep(0.3)
        reqs = self.fake.requests()
        self.assertEqual([q["json"] for q in reqs], [{"number": PHONE[1:], "text": "still alive"}])
        self.assertTrue(self.api.running(), self.api.log_tail())

    # --- 415, 400 ------------------------------------------------------------------------------

    def test_unsupported_media_type(self):
        body = '{"phone": "+5511987654321", "message": "hi"}'
        for headers in ({"Content-Type": "text/plain"}, {},
                        {"Content-Type": "application/x-www-form-urlencoded"},
                        {"Content-Type": "application/jsonp"}):
            with self.subTest(headers=headers):
                self.assertError(self.post_raw(body, headers), 415, "unsupported_media_type")
        # Parameters and case do not matter.
        for ctype in ("application/json; charset=utf-8", "Application/JSON"):
            with self.subTest(ctype=ctype):
                r = self.post_raw(body, {"Content-Type": ctype})
                self.assertEqual(r.status, 202, r.body)
                wait_task_status(self.api, r.json["task_id"], "SUCCESS")
        self.assertEqual(len(self.fake.requests()), 2)
        self.fake.reset()  # forget the two accepted ones
        self.assert_still_serving()

    def test_invalid_json(self):
        err = self.assertError(self.post_raw('{\n  "phone": "+5511987654321",\n  oops\n}'),
                               400, "invalid_json")
        self.assertRegex(err["message"], r"\bline 3\b.*\bcolumn \d+")
        err = self.assertError(self.post_raw('{"phone": "+5511987654321", "message": "hi"'),
                               400, "invalid_json")
        self.assertRegex(err["message"], r"\bline 1\b.*\bcolumn \d+")
        for body in ("", "   ", "nul", "{'phone': 1}", "{phone: 1}",
                     '{"phone": "+5511987654321", "message": "hi"} trailing',
                     # duplicate keys: which one would win is ambiguous, so refused
                     '{"phone": "+5511987654321", "phone": "+5511987654322", "message": "hi"}'):
            with self.subTest(body=body):
                self.assertError(self.post_raw(body), 400, "invalid_json")
        # Valid JSON that is not an object is a body of the wrong shape, not malformed.
        for body in ('"just a string"', "42", "null", "true", "[]"):
            with self.subTest(body=body):
                self.assertError(self.post_raw(body), 422, "invalid_body")
        # Nesting bombs are refused before parsing.
        self.assertError(self.post_raw("[" * 5000 + "]" * 5000), 400, "invalid_json")
        self.assert_still_serving()

    def test_invalid_utf8(self):
        for raw in (b'{"phone": "+5511987654321", "message": "\xff\xfe"}',
                    b'{"phone": "+5511987654321", "message": "caf\xc3"}',
                    b'{"phone": "+5511987654321", "message": "\xed\xa0\x80"}',  # a surrogate
                    b'{"phone": "+5511987654321", "message": "\xc0\xaf"}'):     # overlong '/'
            with self.subTest(raw=raw):
                self.assertError(self.post_raw(raw), 400, "invalid_json")
        # An escaped NUL is refused by the JSON parser (messages are C strings without NUL).
        self.assertError(self.post_raw(b'{"phone": "+5511987654321", "message": "a\\u0000b"}'),
                         400, "invalid_json")
        # A lone escaped surrogate is refused by the JSON parser.
        self.assertError(self.post_raw(b'{"phone": "+5511987654321", "message": "\\ud800"}'),
                         400, "invalid_json")
        self.assert_still_serving()

    # --- 422 -----------------------------------------------------------------------------------

    def test_fields(self):
        ok = {"phone": PHONE, "message": "hi"}
        cases = [
            ({"message": "hi"}, "missing_field", "phone"),
            ({"phone": None, "message": "hi"}, "missing_field", "phone"),
            ({"phone": PHONE}, "missing_field", "message"),
            ({"phone": PHONE, "message": None}, "missing_field", "message"),
            ({}, "missing_field", "phone"),
            ({"phone": 5511987654321, "message": "hi"}, "invalid_field", "phone"),
            ({"phone": ["+5511987654321"], "message": "hi"}, "invalid_field", "phone"),
            ({"phone": "abc", "message": "hi"}, "invalid_field", "phone"),
            ({"phone": "+55 11 9876-5432x", "message": "hi"}, "invalid_field", "phone"),
            ({"phone": "55+11987654321", "message": "hi"}, "invalid_field", "phone"),
            ({"phone": "++5511987654321", "message": "hi"}, "invalid_field", "phone"),
            ({"phone": "+1234567", "message": "hi"}, "invalid_field", "phone"),           # 7 digits
            ({"phone": "+1234567890123456", "message": "hi"}, "invalid_field", "phone"),  # 16 digits
            ({"phone": "05511987654321", "message": "hi"}, "invalid_field", "phone"),
            ({"phone": "", "message": "hi"}, "invalid_field", "phone"),
            ({"phone": "+", "message": "hi"}, "invalid_field", "phone"),
            ({"phone": PHONE, "message": ""}, "invalid_field", "message"),
            ({"phone": PHONE, "message": "   \t\n "}, "invalid_field", "message"),
            ({"phone": PHONE, "message": "\u00a0\u3000"}, "invalid_field", "message"),
            ({"phone": PHONE, "message": 42}, "invalid_field", "message"),
            ({"phone": PHONE, "message": {"text": "hi"}}, "invalid_field", "message"),
            ({"phone": PHONE, "message": "x" * 4097}, "invalid_field", "message"),
            ({"phone": PHONE, "message": "ñ" * 4097}, "invalid_field", "message"),
            ({"phone": PHONE, "message": "hi", "instance_name": 7}, "invalid_field", "instance_name"),
            ({"phone": PHONE, "message": "hi", "extra": 1}, "unknown_field", "extra"),
            ({"phone": PHONE, "message": "hi", "Phone": PHONE}, "unknown_field", "Phone"),
        ]
        for body, code, field in cases:
            with self.subTest(body=str(body)[:80]):
                self.assertError(http("POST", self.url, body), 422, code, field)
        for body in ([], [ok], ):
            with self.subTest(body=body):
                self.assertError(http("POST", self.url, body), 422, "invalid_body")
        self.assert_still_serving()

    def test_length_limits_are_inclusive(self):
        # 8 and 15 digits, 4096 characters (not bytes: "ñ" is two bytes) are all accepted.
        accepted = [("+12345678", "a"), ("+123456789012345", "b"), (PHONE, "x" * 4096),
                    (PHONE, "ñ" * 4096), (PHONE, "👋" * 4096)]
        ids = []
        for phone, text in accepted:
            r = post_message(self.api, phone, text)
            self.assertEqual(r.status, 202, (phone, len(text), r.body[:300]))
            ids.append(r.json["task_id"])
        for task_id in ids:
            wait_task_status(self.api, task_id, "SUCCESS")
        reqs = self.fake.requests()
        self.assertEqual(sorted((q["number"], q["text"]) for q in reqs),
                         sorted((p.lstrip("+"), t) for p, t in accepted))

    def test_instance_name_cannot_escape_the_url_path(self):
        for name in ("../admin", "a/b", "%2e%2e", "..", ".", "", "a b", "inst?x=1", "inst#x",
                     "a\\b", "ínstancia", "x" * 65, "test-inst/../other", "inst\n"):
            with self.subTest(name=name):
                self.assertError(post_message(self.api, PHONE, "hi", name), 422, "invalid_field",
                                 "instance_name")
        # 64 characters of the allowed set are fine (the fake does not know it: 404, FAILURE).
        r = post_message(self.api, PHONE, "long name", "A-z_0.9" * 9 + "x")
        self.assertEqual(r.status, 202, r.body)
        doc = wait_task_status(self.api, r.json["task_id"], "FAILURE")
        self.assertEqual(doc["error"]["code"], "evolution_not_found", doc)
        reqs = self.fake.requests()
        self.assertEqual([q["path"] for q in reqs], ["/message/sendText/" + "A-z_0.9" * 9 + "x"])
        self.fake.reset()
        self.assert_still_serving()

    def test_idempotency_key_header(self):
        for key in ("x" * 256, "caf\u00e9"):
            with self.subTest(key=key[:20]):
                r = http("POST", self.url, {"phone": PHONE, "message": "hi"},
                         {"Idempotency-Key": key.encode("utf-8").decode("latin-1")})
                self.assertError(r, 422, "invalid_header", "Idempotency-Key")
        self.assert_still_serving()

    # --- 413 -----------------------------------------------------------------------------------

    def test_payload_too_large(self):
        self.api.stop()
        cfg = self.config_like(self.cfg, {"api": {"max_body": "1KiB"}})
        api = self.start_api(cfg)
        url = api.base_url + "/messages"
        # 1024 bytes exactly is allowed, 1025 is not.
        fits = '{"phone": "+5511987654321", "message": "' + "x" * (1024 - 42) + '"}'
        self.assertEqual(len(fits), 1024)
        r = http("POST", url, fits, JSON)
        self.assertEqual(r.status, 202, r.body)
        err = self.assertError(http("POST", url, fits[:-2] + 'x"}', JSON), 413, "payload_too_large")
        self.assertIn("1024", err["message"])
        self.assertError(http("POST", url, {"phone": PHONE, "message": "x" * 5000}), 413,
                         "payload_too_large")
        # A chunked body (no Content-Length) is cut off at the limit too. The server answers
        # before reading the rest and closes, so the client may see the connection reset
        # instead of the answer; what it must never see is anything but 413.
        port = urllib.parse.urlsplit(url).port
        body = b'{"phone": "+5511987654321", "message": "' + b"x" * 3000 + b'"}'
        request = (b"POST /messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        answer = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(request)
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    answer += data
            except (BrokenPipeError, ConnectionResetError):
                pass
        if answer:
            self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:300])
            self.assertIn(b'"code":"payload_too_large"', answer)
        # A small chunked body is read whole.
        conn = httpclient.HTTPConnection("127.0.0.1", urllib.parse.urlsplit(url).port, timeout=10)
        try:
            chunks = (b'{"phone": "+5511987654321", ', b'"message": "chunked"}')
            conn.request("POST", "/messages", body=iter(chunks), headers=JSON, encode_chunked=True)
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        finally:
            conn.close()
        self.assertEqual(status, 202, raw)
        self.api = api
        wait_task_status(api, r.json["task_id"], "SUCCESS")
        wait_task_status(api, json.loads(raw)["task_id"], "SUCCESS")
        self.assertEqual(sorted(q["text"] for q in self.fake.requests()), ["chunked", "x" * (1024 - 42)])
        self.fake.reset()
        self.assert_still_serving()

    # --- routes: 404, 405 ----------------------------------------------------------------------

    def test_routes(self):
        base = self.api.base_url
        self.assertError(http("GET", base + "/nope"), 404, "not_found")
        self.assertError(http("POST", base + "/message", {"phone": PHONE, "message": "hi"}), 404,
                         "not_found")
        self.assertError(http("GET", base + "/tasks/"), 404, "not_found")
        self.assertError(http("GET", base + "/tasks/a/b"), 404, "not_found")
        self.assertError(http("GET", base + "/tasks/not-a-uuid"), 404, "task_not_found")
        self.assertError(http("GET", base + "/tasks/" + str(uuid.uuid4())), 404, "task_not_found")
        self.assertError(http("GET", base + "/tasks/" + str(uuid.uuid4()).upper()), 404,
                         "task_not_found")
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                self.assertError(http(method, base + "/messages"), 405, "method_not_allowed",
                                 headers={"allow": "POST"})
        for path in ("/", "/health", "/livez", "/readyz", "/metrics", "/openapi.json", "/docs"):
            for method in ("POST", "DELETE"):
                with self.subTest(path=path, method=method):
                    self.assertError(http(method, base + path, {"x": 1}), 405,
                                     "method_not_allowed", headers={"allow": "GET, HEAD"})
        # A task also takes DELETE (cancel).
        for method in ("POST", "PUT", "PATCH"):
            with self.subTest(path="/tasks/{id}", method=method):
                self.assertError(http(method, base + "/tasks/" + str(uuid.uuid4()), {"x": 1}), 405,
                                 "method_not_allowed", headers={"allow": "GET, HEAD, DELETE"})
        r = http("GET", base + "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["service"], "msg-api")
        self.assertEqual(r.json["status"], "ok")
        r = http("HEAD", base + "/")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assert_still_serving()

    # --- 503 -----------------------------------------------------------------------------------

    def test_broker_refuses_job(self):
        """No queue bound for the job: the broker returns it, the api answers 503 with
        Retry-After and no task id; once the binding is back, 202 again."""
        binding = (f"/api/bindings/{_vhost()}/e/{urllib.parse.quote(self.cfg.exchange, safe='')}"
                   f"/q/{urllib.parse.quote(self.cfg.queue, safe='')}")
        _mgmt("DELETE", binding + "/send")
        try:
            r = post_message(self.api, PHONE, "nowhere to go")
            err = self.assertError(r, 503, "broker_unavailable", headers={"retry-after": "1"})
            self.assertNotIn("task_id", r.json)
            self.assertTrue(err["message"])
        finally:
            _mgmt("POST", binding, {"routing_key": "send", "arguments": {}})
        time.sleep(0.5)
        self.assertEqual(self.fake.requests(), [])
        self.assert_still_serving()

    def test_retry_after_503_with_the_same_idempotency_key_is_sent(self):
        """A 503 means "not accepted": the client retries with the same Idempotency-Key, as
        Retry-After invites it to, and that retry must queue the message, not replay a task
        that was never queued."""
        binding = (f"/api/bindings/{_vhost()}/e/{urllib.parse.quote(self.cfg.exchange, safe='')}"
                   f"/q/{urllib.parse.quote(self.cfg.queue, safe='')}")
        headers = {"Idempotency-Key": "retry-after-503"}
        _mgmt("DELETE", binding + "/send")
        try:
            self.assertError(post_message(self.api, PHONE, "idempotent", headers=headers), 503,
                             "broker_unavailable", headers={"retry-after": "1"})
        finally:
            _mgmt("POST", binding, {"routing_key": "send", "arguments": {}})
        time.sleep(1)  # Retry-After
        r = post_message(self.api, PHONE, "idempotent", headers=headers)
        self.assertEqual(r.status, 202, r.body)
        doc = wait_task_status(self.api, r.json["task_id"], ("SUCCESS", "FAILURE"), timeout=10)
        self.assertEqual(doc["status"], "SUCCESS", doc)
        self.assertEqual([q["text"] for q in self.fake.requests()], ["idempotent"])


if __name__ == "__main__":
    unittest.main()
