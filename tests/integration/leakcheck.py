#!/usr/bin/env python3
"""Leak check (issue 6 §6): runs msg-api and msg-consumer (meant for the ASan+LSan build, see
tests/leakcheck.sh), sends LEAK_MESSAGES (default 10000) messages through the fake Evolution API
with concurrent POSTs on keep-alive connections, waits until every one was delivered, stops
both daemons with SIGTERM and fails unless both exit 0 with no sanitizer report in their logs
(LeakSanitizer reports at exit; with ASAN_OPTIONS=abort_on_error=1 a report also makes the exit
status non-zero).

Not a ctest test (its name does not start with test_): tests/sanitize.sh runs it. Binaries as
for every integration test (MSG_API_BIN / MSG_CONSUMER_BIN / MSG_BIN_DIR), broker AMQP_URL."""

import http.client as httpclient
import json
import os
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (cleanup_topology, make_config, sanitizer_reports, start_api,  # noqa: E402
                     start_consumer, start_fake, wait_for)

MESSAGES = int(os.environ.get("LEAK_MESSAGES", "10000"))
CLIENTS = int(os.environ.get("LEAK_CLIENTS", "16"))


def post_all(base_url, count, clients):
    """POSTs `count` messages from `clients` threads, each on one keep-alive connection
    (reconnecting when the server closes it). Returns {status: n}."""
    parts = urllib.parse.urlsplit(base_url)
    lock = threading.Lock()
    statuses = {}
    next_n = [0]

    def worker():
        conn = None
        while True:
            with lock:
                n = next_n[0]
                if n >= count:
                    break
                next_n[0] += 1
            body = json.dumps({"phone": f"+55119{n:08d}", "message": f"leak-{n}"}).encode()
            for attempt in range(5):
                try:
                    if conn is None:
                        conn = httpclient.HTTPConnection(parts.hostname, parts.port, timeout=30)
                    conn.request("POST", "/messages", body=body,
                                 headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                    break
                except (OSError, httpclient.HTTPException):
                    if conn:
                        conn.close()
                    conn = None
                    status = "error"
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
        if conn:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def main():
    tmpdir = tempfile.mkdtemp(prefix="msg-leakcheck-")
    fake = start_fake(tmpdir)
    cfg = make_config(tmpdir, "leakcheck", fake, {"log": {"level": "warn", "format": "text"}})
    api = consumer = None
    ok = False
    try:
        api = start_api(cfg, ready_timeout=60)
        consumer = start_consumer(cfg, ready_timeout=60)
        t0 = time.monotonic()
        statuses = post_all(api.base_url, MESSAGES, CLIENTS)
        posted = time.monotonic() - t0
        print(f"leakcheck: {MESSAGES} POSTs in {posted:.1f}s: {statuses}", flush=True)
        accepted = statuses.get(202, 0)
        wait_for(lambda: fake.stats()["sent"] >= accepted, 300, interval=0.5,
                 what=f"{accepted} messages delivered")
        delivered = time.monotonic() - t0
        print(f"leakcheck: {fake.stats()['sent']} delivered after {delivered:.1f}s", flush=True)
        codes = {}
        for d in (api, consumer):
            d.begin_stop()
        for d in (api, consumer):
            codes[d.name] = d.stop(timeout=60)
        reports = {d.name: sanitizer_reports(d.log()) for d in (api, consumer)}
        print(f"leakcheck: exit codes {codes}", flush=True)
        problems = []
        if accepted != MESSAGES:
            problems.append(f"only {accepted} of {MESSAGES} POSTs answered 202: {statuses}")
        for d in (api, consumer):
            if codes[d.name] != 0:
                problems.append(f"{d.name} exited with {codes[d.name]}")
            if reports[d.name]:
                problems.append(f"{d.name}: sanitizer report in {d.log_path}")
        for p in problems:
            print(f"leakcheck: FAILED: {p}", flush=True)
        for d in (api, consumer):
            if codes[d.name] != 0 or reports[d.name]:
                print(f"--- {d.log_path} (last 60 lines) ---\n{d.log_tail(60)}", flush=True)
        ok = not problems
    finally:
        for d in (api, consumer, fake):
            if d is not None:
                d.stop(timeout=30)
        cleanup_topology(cfg.exchange)
    print("leakcheck: no leak, no sanitizer report" if ok else f"leakcheck: logs kept in {tmpdir}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
