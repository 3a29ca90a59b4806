"""Slow clients over raw sockets: connections trickling their headers or body are closed at
api.header_timeout / api.body_timeout (a body gets 408), and meanwhile normal requests and the
consumer's probes are answered at once (enough workers, short deadlines)."""
import socket
import threading
import time
import unittest
import urllib.parse

from harness import IntegrationTest, http

SLOW = 10


def open_slow(base_url, first=b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: "):
    u = urllib.parse.urlsplit(base_url)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    s.sendall(first)
    return s


def trickle(socks, stop, interval=0.25):
    """One byte on each socket every `interval` until `stop` is set; a closed one is dropped."""
    while not stop.is_set():
        for s in list(socks):
            try:
                s.sendall(b"a")
            except OSError:
                socks.remove(s)
        time.sleep(interval)


def closed_by_server(s, within):
    s.settimeout(within)
    try:
        data = s.recv(4096)
        while data and b"HTTP/1.1 408" not in data:
            data = s.recv(4096)
        return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True


class SlowClientsTest(IntegrationTest):
    def probe_all(self, url, n, timeout):
        """n GETs one after another, each with `timeout`: the statuses (0 for a time-out)."""
        got = []
        for _ in range(n):
            try:
                got.append(http("GET", url, timeout=timeout).status)
            except OSError:
                got.append(0)
        return got

    def test_slow_headers_and_bodies(self):
        _, api, cons = self.start_stack({
            "api": {"threads": 16, "header_timeout": "1s", "body_timeout": "1s"},
            "consumer": {"health_threads": 8, "health_timeout": "1s"}})
        stop = threading.Event()
        self.addCleanup(stop.set)
        socks = [open_slow(api.base_url) for _ in range(SLOW)]
        probes = [open_slow(cons.base_url) for _ in range(6)]
        all_socks = socks + probes
        threading.Thread(target=trickle, args=(list(all_socks), stop), daemon=True).start()

        t0 = time.monotonic()
        self.assertEqual(self.probe_all(api.base_url + "/livez", 10, 1), [200] * 10)
        # The manifest's probe: 3 s timeout. 6 slow connections must not starve it.
        self.assertEqual(self.probe_all(cons.base_url + "/livez", 7, 3), [200] * 7)
        # Every slow connection is closed by the server soon after its deadline.
        for s in all_socks:
            self.assertTrue(closed_by_server(s, max(0.1, t0 + 4 - time.monotonic())),
                            "a slow connection outlived its deadline")
        stop.set()

        # A body trickled past api.body_timeout: 408 and closed.
        s = open_slow(api.base_url, b"POST /messages HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{")
        t1 = time.monotonic()
        got = b""
        s.settimeout(0.3)
        while time.monotonic() - t1 < 5:
            try:
                s.sendall(b" ")
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
        self.assertIn(b"HTTP/1.1 408", got)
        self.assertIn(b"request_timeout", got)
        self.assertLess(time.monotonic() - t1, 3.5)
        for s in all_socks:
            s.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
