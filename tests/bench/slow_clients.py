"""Legit latency under slow clients, direct and through a buffering nginx: starts msg-api (and the
fake Evolution API) against the local RabbitMQ, opens SLOW connections that send their headers at
one byte per second, and meanwhile times N ordinary POST /messages. Prints p50/p99/max and the
failures, straight to msg-api with 64 workers and with more workers than slow connections
(api.threads), and through nginx (Debian's package, on loopback), whose
settings are printed too. Figures only, no assertions (tests/bench).

    MSG_BIN_DIR=build python3 tests/bench/slow_clients.py   # SLOW=200 N=200 TIMEOUT=3 by default
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import harness  # noqa: E402

SLOW = int(os.environ.get("SLOW", "200"))
N = int(os.environ.get("N", "200"))
TIMEOUT = float(os.environ.get("TIMEOUT", "3"))  # a legit client gives up after this
THREADS = 4

# What the proxy must do for msg-api: take whole requests before it opens an upstream
# connection (request buffering), cut slow senders itself, keep a small pool of upstream
# connections, and never pass on what CivetWeb would misread.
NGINX_SETTINGS = """
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 10s;
    keepalive_timeout 30s;
    client_max_body_size 4m;
    client_body_buffer_size 64k;
    large_client_header_buffers 4 8k;
    proxy_request_buffering on;
    proxy_buffering on;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_connect_timeout 2s;
    proxy_read_timeout 10s;
    proxy_send_timeout 10s;
"""


def start_nginx(tmp, upstream_port, listen_port):
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream msg_api {{ server 127.0.0.1:{upstream_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{listen_port};
{NGINX_SETTINGS}
        location / {{ proxy_pass http://msg_api; }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stderr=subprocess.DEVNULL)
    harness.wait_for(lambda: _port_open(listen_port), 10, what="nginx listening")
    return proc


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def slow_clients(base_url, n, stop):
    u = urllib.parse.urlsplit(base_url)
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection((u.hostname, u.port), timeout=5)
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        except OSError:
            pass
    while not stop.is_set():
        for s in list(socks):
            try:
                s.sendall(b"a")
            except OSError:
                socks.remove(s)
                try:  # reconnect: the attacker keeps SLOW connections open
                    s = socket.create_connection((u.hostname, u.port), timeout=5)
                    s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    socks.append(s)
                except OSError:
                    pass
        stop.wait(1.0)
    for s in socks:
        s.close()


def legit(base_url, n):
    times, failures = [], [0]
    lock = threading.Lock()

    def worker(k):
        for i in range(k, n, THREADS):
            t0 = time.monotonic()
            try:
                r = harness.http("POST", base_url + "/messages",
                                 {"phone": "+52123456789", "message": f"legit {i}"},
                                 timeout=TIMEOUT)
                ok = r.status == 202
            except (OSError, ValueError):
                ok = False
            with lock:
                if ok:
                    times.append(time.monotonic() - t0)
                else:
                    failures[0] += 1
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sorted(times), failures[0]


def measure(label, base_url):
    stop = threading.Event()
    th = threading.Thread(target=slow_clients, args=(base_url, SLOW, stop), daemon=True)
    th.start()
    time.sleep(3)  # let the slow connections settle in
    times, failed = legit(base_url, N)
    stop.set()
    th.join(5)
    if times:
        p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000  # noqa: E731
        print(f"{label:22s} {len(times)} ok, {failed} failed; p50 {p(0.5):.1f} ms, "
              f"p99 {p(0.99):.1f} ms, max {times[-1] * 1000:.1f} ms", flush=True)
    else:
        print(f"{label:22s} 0 ok, {failed} failed", flush=True)


def main():
    tmp = tempfile.mkdtemp(prefix="msg-bench-slow-")
    fake = harness.start_fake(tmp)
    cfgs, apis = [], []
    for threads in (64, SLOW + 56):
        cfgs.append(harness.make_config(tmp, f"bench-slow-{threads}", fake,
                                        {"api": {"threads": threads}}))
        apis.append(harness.start_api(cfgs[-1]))
    proxy_port = harness.free_port()
    nginx = start_nginx(tmp, urllib.parse.urlsplit(apis[0].base_url).port, proxy_port)
    try:
        print(f"{SLOW} slow connections (headers at 1 byte/s, reconnecting when cut), {N} POST "
              f"/messages from {THREADS} clients giving up after {TIMEOUT:g} s; "
              f"api.header_timeout 5s", flush=True)
        measure("direct, 64 workers", apis[0].base_url)
        measure(f"direct, {SLOW + 56} workers", apis[1].base_url)
        measure("nginx -> 64 workers", f"http://127.0.0.1:{proxy_port}")
        print("nginx settings:" + NGINX_SETTINGS)
    finally:
        nginx.terminate()
        nginx.wait(10)
        for api in apis:
            api.stop()
        fake.stop()
        for cfg in cfgs:
            harness.cleanup_topology(cfg.exchange)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
