#!/usr/bin/env python3
"""Integration: a status-stream reader is ready only once it has really caught up.

Readiness is proved by a marker: right after subscribing, the reader publishes a marker of its
own to the status stream and is caught up when it reads that marker back (every reader skips
markers). No clock or idle timer decides it. So:

- msg-api's /readyz stays 503 until its status cache has replayed the whole stream: the very
  first 200 after a restart already knows the oldest and the newest of 200,000 tasks;
- msg-consumer's /readyz stays 503, and it takes no job, until it has replayed the stream: a
  job whose task was cancelled at the very end of the stream is recognised, never sent.

The stream starts with a status event stamped a year ahead (a replica with a wrong clock, for
a made-up task): the old rule "an event stamped after my subscription proves I am caught up"
took it for readiness at once. Then come 50,000 one-event stream messages (what light traffic
writes: one POST /messages, one outcome per consumer loop turn), published straight to the
stream over AMQP: the broker hands such messages out more slowly than a reader decodes them,
so the replay has gaps, where the old consumer, "caught up" since the future-stamped event,
started taking jobs (and where an idle timer could fire). Then 200,000 PENDING events, many per
stream message, through POST /messages/batch.
"""

import collections
import datetime
import http.client as httpclient
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import unittest
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (AMQP_URL, Daemon, IntegrationTest, _mgmt, _vhost, get_task, http,  # noqa: E402
                     mgmt_publish, post_message, queue_get, wait_for)

TASKS = 200_000          # tasks accepted through POST /messages/batch before the restart
BATCH = 1_000            # messages per POST /messages/batch (the endpoint's maximum)
FILL_THREADS = 4
SINGLES = 50_000         # one-event stream messages after the future-stamped one
POLL_S = 0.01            # /readyz polling interval
READY_TIMEOUT = 90       # seconds a restarted daemon may take to replay the stream
FRESH, CANCELLED = 6, 2  # fresh jobs for the consumer; the first CANCELLED of them are cancelled
CANCELLED_METRIC = 'msg_consumer_deliveries_total{outcome="cancelled"}'


class NoWaitDaemon(Daemon):
    """A Daemon whose start does not wait for /readyz: the test polls it itself."""

    def _wait_ready(self, url, timeout):
        self.started_at = time.monotonic()


class AmqpPublisher:
    """Just enough AMQP 0-9-1 (standard library only) to publish many messages to the default
    exchange with publisher confirms: the management API publishes about 400 a second."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port or 5672), timeout=10)
        self.buf, self.tag = b"", 0
        user = urllib.parse.unquote(u.username or "guest")
        password = urllib.parse.unquote(u.password or "guest")
        vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._expect(10, 10)  # connection.start
        self._method(0, 10, 11, struct.pack("!I", 0) + self._short("PLAIN")
                     + struct.pack("!I", len(user) + len(password) + 2)
                     + f"\0{user}\0{password}".encode() + self._short("en_US"))
        channel_max, frame_max, _ = struct.unpack("!HIH", self._expect(10, 30)[:8])  # tune
        self._method(0, 10, 31, struct.pack("!HIH", channel_max, frame_max, 0))
        self._method(0, 10, 40, self._short(vhost) + self._short("") + b"\x00")
        self._expect(10, 41)
        self._method(1, 20, 10, self._short(""))
        self._expect(20, 11)
        self._method(1, 85, 10, b"\x00")  # confirm.select
        self._expect(85, 11)

    @staticmethod
    def _short(text):
        data = text.encode()
        return struct.pack("!B", len(data)) + data

    @staticmethod
    def _frame(kind, channel, payload):
        return struct.pack("!BHI", kind, channel, len(payload)) + payload + b"\xce"

    def _method(self, channel, class_id, method_id, args):
        self.sock.sendall(self._frame(1, channel, struct.pack("!HH", class_id, method_id) + args))

    def _next_method(self):
        while True:
            if len(self.buf) >= 7:
                kind, _, size = struct.unpack("!BHI", self.buf[:7])
                if len(self.buf) >= size + 8:
                    payload, self.buf = self.buf[7:7 + size], self.buf[size + 8:]
                    if kind != 1:
                        continue
                    ids = struct.unpack("!HH", payload[:4])
                    if ids in ((10, 50), (20, 40)):  # connection.close, channel.close
                        raise ConnectionError(f"the broker closed: {payload[7:7 + payload[6]]!r}")
                    return ids, payload[4:]
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.buf += data

    def _expect(self, class_id, method_id):
        while True:
            ids, args = self._next_method()
            if ids == (class_id, method_id):
                return args

    def publish_all(self, routing_key, bodies):
        """Publishes every body (bytes, persistent) and returns once all are confirmed."""
        out = []
        for body in bodies:
            out.append(self._frame(1, 1, struct.pack("!HH", 60, 40) + struct.pack("!H", 0)
                                   + self._short("") + self._short(routing_key) + b"\x00"))
            out.append(self._frame(2, 1, struct.pack("!HHQH", 60, 0, len(body), 0x1000) + b"\x02"))
            out.append(self._frame(3, 1, body))
            self.tag += 1
        self.sock.sendall(b"".join(out))
        acked = 0
        while acked < self.tag:
            ids, args = self._next_method()
            if ids == (60, 120):
                raise AssertionError("the broker nacked a publish to the status stream")
            if ids == (60, 80):  # basic.ack (multiple or not: the broker confirms in order)
                acked = max(acked, struct.unpack("!Q", args[:8])[0])

    def close(self):
        try:
            self._method(0, 10, 50, struct.pack("!H", 200) + self._short("")
                         + struct.pack("!HH", 0, 0))
            self._expect(10, 51)
        except OSError:
            pass
        self.sock.close()


def rfc3339(epoch_s):
    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def pending_event(task_id, at):
    return json.dumps({"v": 1, "task_id": task_id, "status": "PENDING", "attempt": 0,
                       "at": at, "created_at": at, "phone": "+5511900000000",
                       "instance": "test-inst"})


def metric(listen, name):
    r = http("GET", f"http://{listen}/metrics")
    m = re.search(rf"^{re.escape(name)} (\S+)$", r.body.decode(), re.MULTILINE)
    return float(m.group(1)) if m else None


def purge_queue(name):
    _mgmt("DELETE", f"/api/queues/{_vhost()}/{urllib.parse.quote(name, safe='')}/contents")


def api_health(api):
    return http("GET", api.base_url + "/health").json or {}


class CatchUpTest(IntegrationTest):

    def start_no_wait(self, name, cfg, listen):
        return self._own(NoWaitDaemon(name, cfg, listen, "/readyz", None, (), 0))

    def poll_ready(self, daemon, url, while_not_ready=None):
        """Polls `url` every POLL_S until it answers 200; returns (seconds from start to that
        answer, Counter of the answers before it, snapshots). `while_not_ready()` is called
        before each poll; what it returns is kept only for the polls that then said "not
        ready", so each snapshot describes a moment when the daemon was not ready yet."""
        seen = collections.Counter()
        snapshots = []
        deadline = daemon.started_at + READY_TIMEOUT
        while True:
            if not daemon.running():
                self.fail(f"{daemon.name} exited with {daemon.proc.returncode} before it was "
                          f"ready; log:\n{daemon.log_tail()}")
            snap = while_not_ready() if while_not_ready else None
            try:
                status = http("GET", url, timeout=2).status
            except OSError:
                status = "no answer"
            if status == 200:
                return time.monotonic() - daemon.started_at, seen, snapshots
            seen[status] += 1
            if snap is not None:
                snapshots.append(snap)
            if time.monotonic() > deadline:
                self.fail(f"{daemon.name} not ready within {READY_TIMEOUT}s ({dict(seen)}); "
                          f"log:\n{daemon.log_tail()}")
            time.sleep(POLL_S)

    def publish_singles(self, stream, n):
        """n one-event stream messages: PENDING of made-up tasks, stamped a second ago."""
        publisher = AmqpPublisher(AMQP_URL)
        try:
            stamp = rfc3339(time.time() - 1)
            publisher.publish_all(stream, [pending_event(str(uuid.uuid4()), stamp).encode()
                                           for _ in range(n)])
        finally:
            publisher.close()

    def fill(self, api):
        """POSTs batches until TASKS tasks are accepted; returns (oldest, newest, count). The
        first and the last batch go alone, so the oldest and newest ids are those of the
        stream's order, not of whichever thread got its answer first."""
        port = int(api.base_url.rsplit(":", 1)[1])
        body = json.dumps({"messages": [{"phone": "+52123456789", "message": f"fill {i}"}
                                        for i in range(BATCH)]}).encode()
        lock = threading.Lock()
        reserved = [0]
        errors = []

        def one_batch(conn):
            for _ in range(20):
                try:
                    conn.request("POST", "/messages/batch", body=body,
                                 headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    raw = r.read()
                except (BrokenPipeError, ConnectionResetError, httpclient.RemoteDisconnected):
                    conn.close()  # the server closed a kept-alive connection: a new one
                    continue
                if r.status == 200:
                    doc = json.loads(raw)
                    ids = [x["task_id"] for x in doc["results"] if "task_id" in x]
                    if len(ids) != BATCH:
                        raise AssertionError(f"batch accepted {len(ids)} of {BATCH}: {raw[:300]!r}")
                    return ids
                if r.status != 503:
                    raise AssertionError(f"POST /messages/batch answered {r.status}: {raw[:300]!r}")
                time.sleep(0.2)
            raise AssertionError("POST /messages/batch kept failing")

        def worker():
            conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                while True:
                    with lock:
                        if reserved[0] + BATCH > TASKS - BATCH or errors:
                            return
                        reserved[0] += BATCH
                    one_batch(conn)
            except BaseException as e:  # re-raised by the main thread
                errors.append(e)
            finally:
                conn.close()

        conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            oldest = one_batch(conn)[0]
            reserved[0] = BATCH
            threads = [threading.Thread(target=worker, daemon=True) for _ in range(FILL_THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            conn.close()  # idle during the threads' work: the server may have closed it
            newest = one_batch(conn)[-1]
        finally:
            conn.close()
        return oldest, newest, reserved[0] + BATCH

    def test_readiness_waits_for_the_replay(self):
        self.fake = self.start_fake()
        cfg = self.config({"consumer": {"prefetch": 4}, "log": {"level": "info"}})
        api_listen = cfg.data["api"]["listen"]
        health_listen = cfg.data["consumer"]["health_listen"]
        api = self.start_api(cfg)  # declares the topology, the stream included

        # 1. The stream: an event stamped a year ahead, SINGLES one-event messages, then the
        # fill of TASKS PENDING events, many per message.
        t0 = time.monotonic()
        future_id = str(uuid.uuid4())
        self.assertTrue(mgmt_publish("", cfg.status_stream,
                                     pending_event(future_id, rfc3339(time.time() + 365 * 86400))),
                        "the future-stamped event was not routed to the status stream")
        self.publish_singles(cfg.status_stream, SINGLES)
        singles_s = time.monotonic() - t0
        t0 = time.monotonic()
        oldest, newest, accepted = self.fill(api)
        fill_s = time.monotonic() - t0
        self.assertGreaterEqual(accepted, TASKS)
        expected_tasks = 1 + SINGLES + accepted
        wait_for(lambda: api_health(api).get("status_stream", {}).get("events_applied", 0)
                 >= expected_tasks, 30, what="msg-api to read its own events back")
        stream_messages = api_health(api)["status_stream"]["offset"] + 1
        print(f"\n[catch-up] stream: 1 future-stamped + {SINGLES} one-event messages in "
              f"{singles_s:.1f}s, then {accepted} tasks by batch in {fill_s:.1f}s "
              f"({accepted / fill_s:.0f}/s); {stream_messages} stream messages",
              file=sys.stderr, flush=True)
        for task_id in (oldest, newest):
            r = get_task(api, task_id)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.json["status"], "PENDING")

        # 2. Restart msg-api and poll its /readyz; the first 200 must know every task.
        self.assertEqual(api.stop(), 0, api.log_tail())
        api2 = self.start_no_wait("msg-api", cfg, api_listen)
        api_ready_s, api_seen, _ = self.poll_ready(api2, api2.base_url + "/readyz")
        first_old, first_new = get_task(api2, oldest), get_task(api2, newest)
        health = api_health(api2)
        at_ready = health.get("status_stream", {})
        print(f"[catch-up] msg-api ready {api_ready_s:.2f}s after start, answers before: "
              f"{dict(api_seen)}; at ready: oldest {first_old.status}, newest {first_new.status}, "
              f"{at_ready.get('events_applied')} events applied, "
              f"{health.get('cache', {}).get('tasks')} tasks cached, stream offset "
              f"{at_ready.get('offset')}", file=sys.stderr, flush=True)
        context = f"answers before ready: {dict(api_seen)}; /health at ready: {health}"
        with self.subTest("msg-api: the first ready answer knows the whole stream"):
            self.assertEqual(first_old.status, 200, f"oldest task {oldest} unknown at ready: "
                             f"{first_old.body!r}; {context}")
            self.assertEqual(first_new.status, 200, f"newest task {newest} unknown at ready: "
                             f"{first_new.body!r}; {context}")
            self.assertEqual(first_old.json["status"], "PENDING")
            self.assertEqual(first_new.json["status"], "PENDING")
            # Every task of the stream, the future-stamped one too; a marker is not a task.
            self.assertEqual(health["cache"]["tasks"], expected_tasks, health)
            r = get_task(api2, future_id)
            self.assertEqual(r.status, 200, r.body)
        with self.subTest("msg-api: /readyz said 503 while replaying"):
            self.assertGreaterEqual(api_seen[503], 1, f"answers before ready: {dict(api_seen)}")

        # Whatever the outcome above, the consumer part needs an api that has replayed it all.
        wait_for(lambda: api_health(api2).get("cache", {}).get("tasks", 0) >= expected_tasks,
                 READY_TIMEOUT, what="msg-api to hold every task")

        # 3. msg-consumer. The fill's jobs are purged; fresh jobs are queued and the first ones
        # cancelled: their CANCELLED events are the last of the stream, so a consumer that
        # takes jobs before its replay is over sends them.
        t0 = time.monotonic()
        purge_queue(cfg.queue)
        wait_for(lambda: queue_get(cfg.queue, 1) == [], 10, what="an empty job queue")
        fresh = []
        for i in range(FRESH):
            r = post_message(api2, "+5511987650000", f"fresh {i}")
            self.assertEqual(r.status, 202, r.body)
            fresh.append(r.json["task_id"])
        cancelled, delivered = fresh[:CANCELLED], fresh[CANCELLED:]
        for task_id in cancelled:
            r = http("DELETE", f"{api2.base_url}/tasks/{task_id}")
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.json["status"], "CANCELLED")
        prep_s = time.monotonic() - t0

        def snapshot():
            statuses = {}
            for task_id in fresh:
                r = get_task(api2, task_id)
                statuses[task_id] = r.json.get("status") if r.status == 200 and r.json else r.status
            return self.fake.stats()["total"], statuses

        consumer = self.start_no_wait("msg-consumer", cfg, health_listen)
        cons_ready_s, cons_seen, before = self.poll_ready(
            consumer, f"http://{health_listen}/readyz", snapshot)
        wait_for(lambda: all((get_task(api2, t).json or {}).get("status") == "SUCCESS"
                             for t in delivered), 30, what="the fresh jobs to reach SUCCESS")
        jobs_s = time.monotonic() - consumer.started_at - cons_ready_s
        # The cancelled jobs were queued first, so they are settled by now; this only waits
        # for the metric (or for their sends, when the consumer started too early).
        wait_for(lambda: metric(health_listen, CANCELLED_METRIC) == CANCELLED
                 or len(self.fake.stats()["sent_by_text"]) > len(delivered), 15,
                 what="the cancelled jobs to be taken")
        sent = sorted(self.fake.stats()["sent_by_text"])
        skipped = metric(health_listen, CANCELLED_METRIC)
        print(f"[catch-up] msg-consumer ready {cons_ready_s:.2f}s after start, answers before: "
              f"{dict(cons_seen)}; {len(delivered)} fresh jobs SUCCESS {jobs_s:.2f}s later; "
              f"Evolution got {sent}; cancelled jobs skipped: {skipped}",
              file=sys.stderr, flush=True)
        with self.subTest("msg-consumer: no job taken before ready"):
            for total, statuses in before:
                self.assertEqual(total, 0, "Evolution got a send while /readyz said not ready: "
                                 f"{statuses}")
                for task_id, status in statuses.items():
                    self.assertIn(status, ("PENDING", "CANCELLED"),
                                  f"task {task_id} moved while the consumer was not ready")
        with self.subTest("msg-consumer: ready only after the replay"):
            self.assertEqual(sent, sorted(f"fresh {i}" for i in range(CANCELLED, FRESH)),
                             "a job cancelled at the end of the stream was sent: the consumer "
                             f"took jobs before it had read the whole stream ({dict(cons_seen)} "
                             f"before ready, ready after {cons_ready_s:.2f}s)")
            for task_id in cancelled:
                self.assertEqual(get_task(api2, task_id).json["status"], "CANCELLED")
            self.assertEqual(skipped, CANCELLED)
        with self.subTest("msg-consumer: /readyz said 503 while replaying"):
            self.assertGreaterEqual(cons_seen[503], 1, f"answers before ready: {dict(cons_seen)}")
        # The consumer's marker went past msg-api's live reader too: still no extra task.
        tasks = api_health(api2).get("cache", {}).get("tasks")
        self.assertEqual(tasks, expected_tasks + FRESH, "a marker was taken for a task")

        print(f"\n[catch-up] {stream_messages} stream messages, {expected_tasks} tasks "
              f"(fill {fill_s:.1f}s); msg-api ready {api_ready_s:.2f}s after restart "
              f"({api_seen[503]} x 503, {at_ready.get('events_applied')} events at ready); "
              f"purge + {FRESH} jobs {prep_s:.1f}s; msg-consumer ready {cons_ready_s:.2f}s after "
              f"start ({cons_seen[503]} x 503); {len(sent)} sent, {skipped:.0f} cancelled skipped",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
