"""HTTP framing over raw sockets: what CivetWeb would cut or read two ways is refused, and the
connection closed, so nothing hidden in a request ever runs as a second request."""
import json
import re
import socket
import time
import unittest
import urllib.parse

from harness import IntegrationTest, http

BODY = json.dumps({"phone": "+52123456789", "message": "hola"}).encode()
# A request hidden in the body: answered only if the body is read as a second request.
SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def exchange(base_url, raw, wait=1.5):
    """Sends raw bytes, reads until the server closes (or `wait` seconds of silence), returns
    (every status line answered, whether the server closed the connection)."""
    u = urllib.parse.urlsplit(base_url)
    s = socket.create_connection((u.hostname, u.port), timeout=wait)
    got, closed = b"", False
    try:
        s.sendall(raw)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
    finally:
        s.close()
    statuses = [m.decode() for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", got)]
    return statuses, closed, got


def post(headers, body=BODY, path="/messages"):
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return (head + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode() + body


class FramingTest(IntegrationTest):
    def setUp(self):
        super().setUp()
        _, self.api, _ = self.start_stack({"api": {"max_header_size": "4KiB"}}, consumer=False)

    def assertRefused(self, raw, status, what):
        statuses, closed, got = exchange(self.api.base_url, raw)
        self.assertEqual(statuses, [status], f"{what}: {got[:400]!r}")
        self.assertTrue(closed, f"{what}: the connection must be closed")
        self.assertIn(b"Connection: close", got, what)

    def test_too_many_headers_is_431_and_the_body_never_runs(self):
        # 70 header lines: CivetWeb keeps 64 and drops the rest, Content-Length among them.
        filler = [(f"X-Fill-{i}", "a") for i in range(68)]
        body = SMUGGLED
        raw = post(filler + [("Content-Length", str(len(body)))], body=body)
        self.assertRefused(raw, "431", "70 header lines")
        # 64 lines exactly may hide more: refused too; 63 are fine.
        raw = post([(f"X-Fill-{i}", "a") for i in range(61)] + [("Content-Length", str(len(BODY)))])
        self.assertRefused(raw, "431", "64 header lines")
        raw = post([(f"X-Fill-{i}", "a") for i in range(59)] + [("Content-Length", str(len(BODY))),
                                                                 ("Connection", "close")])
        statuses, _, got = exchange(self.api.base_url, raw)
        self.assertEqual(statuses, ["202"], got[:400])

    def test_headers_over_the_size_limit_are_431(self):
        raw = post([("X-Big", "b" * 5000), ("Content-Length", str(len(BODY)))])
        self.assertRefused(raw, "431", "5000-byte header over a 4KiB limit")
        statuses, closed, _ = exchange(self.api.base_url, post([("X-Big", "b" * 60000)]))
        self.assertNotIn("202", statuses)
        self.assertTrue(closed)

    def test_content_length_with_transfer_encoding_is_400_and_closed(self):
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
        raw = post([("Content-Length", str(len(chunked))), ("Transfer-Encoding", "chunked")],
                   body=chunked) + SMUGGLED
        self.assertRefused(raw, "400", "Content-Length with Transfer-Encoding")
        raw = post([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
                   body=chunked) + SMUGGLED
        self.assertRefused(raw, "400", "Transfer-Encoding twice")

    def test_differing_content_lengths_are_400_and_closed(self):
        raw = post([("Content-Length", str(len(BODY))), ("Content-Length", str(len(BODY) + 1))])
        self.assertRefused(raw, "400", "two different Content-Lengths")
        raw = post([("Content-Length", f"+{len(BODY)}")])
        self.assertRefused(raw, "400", "a signed Content-Length")
        # The same length twice is one length (RFC 9112 §6.3): accepted.
        raw = post([("Content-Length", str(len(BODY))), ("Content-Length", str(len(BODY))),
                    ("Connection", "close")])
        statuses, _, got = exchange(self.api.base_url, raw)
        self.assertEqual(statuses, ["202"], got[:400])

    def test_plain_keep_alive_still_works(self):
        one = post([("Content-Length", str(len(BODY)))])
        statuses, _, got = exchange(self.api.base_url, one + one, wait=1)
        self.assertEqual(statuses, ["202", "202"], got[:600])
        r = http("GET", self.api.base_url + "/livez")
        self.assertEqual(r.status, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
