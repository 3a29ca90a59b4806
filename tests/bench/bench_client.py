#!/usr/bin/env python3
"""Client side of the benchmark (tests/bench/run.sh): the end-to-end run, wrk output parsing,
small broker and process helpers. Python 3.11 standard library only.

Subcommands (each prints one JSON object on stdout, human notes on stderr):

  e2e      --api URL --fake URL --count N --conns C --latency-ms MS --tag TEXT --instance NAME
           [--timeout S]
           resets the fake and sets its latency, posts N messages with unique texts over C
           keep-alive connections, times until the fake has sent all accepted ones, then checks
           that every accepted task reached SUCCESS (GET /tasks/{id} for each) and that the fake
           sent each text exactly once. With --cpu NAME=PID (repeatable) it also reports the
           CPU seconds each of those processes and this client spent from the first post until
           the fake had sent everything (the read-back is not counted).
  wrk      FILE          parses a `wrk --latency` report: rps, p50/p90/p99 in ms, non-2xx, errors
  rss      PID           VmRSS and VmHWM of a process, in KiB
  listener-pid PORT      the process listening on a local TCP port (from /proc), as {"pid": N}
  cpu      NAME=PID ...  CPU seconds (user + system, every thread) each process has used so far
  run-cpu  OUT -- CMD... runs CMD; writes {"seconds": its user + system CPU} to OUT; CMD's exit
                         code is this one's
  first-send --fake URL [--timeout S]
           polls the fake until it has sent one message; reports the seconds it took
  health   --api URL --wait-tasks N [--timeout S]
           polls msg-api's GET /health until cache.tasks >= N; reports the time it took
  purge    --queue NAME  empties a queue through the management API
  cleanup  --prefix P    deletes every queue, then exchange, whose name starts with P
  free-port              a free TCP port on 127.0.0.1

Environment: AMQP_URL (for the vhost), RABBITMQ_MGMT_URL (default http://127.0.0.1:15672,
guest/guest unless the URL carries user:password@).
"""

import argparse
import asyncio
import base64
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
MGMT_URL = os.environ.get("RABBITMQ_MGMT_URL", "http://127.0.0.1:15672")


def note(text):
    print(text, file=sys.stderr, flush=True)


# --- a minimal keep-alive HTTP/1.1 client (http.client is several times slower) --------------------

class Conn:
    """One keep-alive connection; reconnects when the server closes it."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, method, path, body=b"", headers=None):
        """Returns (status, body bytes). Retries once on a connection that the server had
        closed while idle; raises OSError otherwise."""
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                    f"Content-Length: {len(body)}"]
            for k, v in (headers or {}).items():
                head.append(f"{k}: {v}")
            try:
                self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                status_line = await self.reader.readuntil(b"\r\n")
                raw_headers = await self.reader.readuntil(b"\r\n\r\n")
            except (OSError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
                continue
            status = int(status_line.split(b" ", 2)[1])
            length, close = 0, False
            for line in raw_headers.split(b"\r\n"):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            data = await self.reader.readexactly(length) if length else b""
            if close or status_line.startswith(b"HTTP/1.0"):
                self.close()
            return status, data
        raise OSError("unreachable")

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def split_url(url):
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port or 80


async def run_pool(url, conns, jobs, worker):
    """Runs worker(conn, job) for every job over `conns` connections; returns the results in
    job order."""
    host, port = split_url(url)
    results = [None] * len(jobs)
    next_index = 0

    async def loop():
        nonlocal next_index
        conn = Conn(host, port)
        try:
            while next_index < len(jobs):
                i = next_index
                next_index += 1
                results[i] = await worker(conn, jobs[i])
        finally:
            conn.close()

    await asyncio.gather(*(loop() for _ in range(min(conns, len(jobs)) or 1)))
    return results


def http_json(method, url, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


# --- end to end ------------------------------------------------------------------------------------

async def e2e(args):
    fake = args.fake.rstrip("/")
    http_json("POST", fake + "/_fake/reset")
    http_json("POST", fake + "/_fake/config", {"latency_ms": args.latency_ms})
    texts = [f"{args.tag} {i:07d}" for i in range(args.count)]
    headers = {"Content-Type": "application/json"}

    async def post(conn, text):
        body = json.dumps({"phone": "+52123456789", "message": text,
                           "instance_name": args.instance}).encode()
        try:
            status, data = await conn.request("POST", "/messages", body, headers)
        except OSError as e:
            return ("error", repr(e))
        if status != 202:
            return (status, data[:200].decode(errors="replace"))
        return (202, json.loads(data)["task_id"])

    stats = {}
    done_posting = asyncio.Event()

    async def watch_fake():
        """Polls the fake until it has sent as many messages as were accepted (known only once
        posting is over) or the timeout passes; returns the time of the last check."""
        deadline = time.monotonic() + args.timeout
        while True:
            await asyncio.sleep(0.1 if args.count <= 5000 else 0.25)
            s = await asyncio.to_thread(http_json, "GET", fake + "/_fake/stats")
            stats.update(s)
            if done_posting.is_set() and s["sent"] >= stats["accepted"]:
                return time.monotonic()
            if time.monotonic() > deadline:
                return None

    pids = dict(spec.split("=", 1) for spec in args.cpu)
    cpu_start = cpu_of(pids)
    t0, cpu0 = time.monotonic(), time.process_time()
    watcher = asyncio.create_task(watch_fake())
    results = await run_pool(args.api, args.conns, texts, post)
    t_posted, poster_cpu = time.monotonic(), time.process_time() - cpu0
    accepted = {texts[i]: r[1] for i, r in enumerate(results) if r[0] == 202}
    refused = [r for r in results if r[0] != 202]
    stats["accepted"] = len(accepted)
    done_posting.set()
    t_done = await watcher
    cpu_end = cpu_of(pids)
    load_cpu = time.process_time() - cpu0
    complete = t_done is not None
    elapsed = (t_done if complete else time.monotonic()) - t0
    if refused:
        note(f"e2e: {len(refused)} posts not accepted, e.g. {refused[:3]}")

    # Every accepted task must reach SUCCESS. Status events may trail the fake's answer by a
    # moment, so unfinished tasks are asked again for a few seconds.
    ids = list(accepted.values())
    pending, deadline, last_status = ids, time.monotonic() + 30, {}

    async def get(conn, task_id):
        try:
            status, data = await conn.request("GET", f"/tasks/{task_id}")
        except OSError as e:
            return task_id, repr(e)
        return task_id, json.loads(data).get("status") if status == 200 else f"http {status}"

    t_check = time.monotonic()
    while pending:
        answers = await run_pool(args.api, min(args.conns, 32), pending, get)
        last_status.update(answers)
        pending = [tid for tid, st in answers if st != "SUCCESS"]
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    check_seconds = time.monotonic() - t_check

    # The per-text counts are asked for once, at the end: the C fake leaves them out of its
    # stats unless texts=1 (and keeps only those starting with prefix); the Python fake always
    # sends them all and ignores the query.
    query = urllib.parse.urlencode({"texts": 1, "prefix": args.tag + " "})
    final = await asyncio.to_thread(http_json, "GET", fake + "/_fake/stats?" + query)
    by_text = {t: n for t, n in final["sent_by_text"].items() if t.startswith(args.tag + " ")}
    lost = [t for t in accepted if by_text.get(t, 0) == 0]
    duplicated = {t: n for t, n in by_text.items() if n > 1}
    unexpected = [t for t in by_text if t not in accepted]
    not_success = {tid: st for tid, st in last_status.items() if st != "SUCCESS"}
    ok = complete and not lost and not duplicated and not unexpected and not not_success
    out = {
        "count": args.count, "accepted": len(accepted), "refused": len(refused),
        "latency_ms": args.latency_ms, "complete": complete, "seconds": round(elapsed, 3),
        "post_seconds": round(t_posted - t0, 3),
        "msgs_per_s": round(len(by_text) / elapsed, 1) if elapsed > 0 else 0,
        "post_rps": round(args.count / (t_posted - t0), 1),
        # CPU this client used while posting: near post_seconds means the poster, not the
        # service, set the pace.
        "poster_cpu_seconds": round(poster_cpu, 3),
        # From the first post to the last send: each process's CPU seconds, and this client's
        # (the load generator: posting and polling the fake).
        "cpu_seconds": dict({n: round(cpu_end[n] - cpu_start[n], 3)
                             if cpu_end[n] is not None and cpu_start[n] is not None else None
                             for n in pids}, load=round(load_cpu, 3)),
        "fake_sent": len(by_text), "lost": len(lost), "duplicated": len(duplicated),
        "unexpected": len(unexpected), "tasks_checked": len(last_status),
        "tasks_not_success": len(not_success), "check_seconds": round(check_seconds, 3), "ok": ok,
    }
    if not_success:
        sample = list(not_success.items())[:5]
        note(f"e2e: {len(not_success)} tasks not SUCCESS, e.g. {sample}")
    if lost or duplicated or unexpected:
        note(f"e2e: lost {lost[:5]}, duplicated {list(duplicated.items())[:5]}, unexpected {unexpected[:5]}")
    print(json.dumps(out))


# --- wrk, /proc, health ----------------------------------------------------------------------------

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return round(float(m.group(1)) * UNITS[m.group(2)], 3) if m else None


def parse_wrk(path):
    with open(path) as f:
        text = f.read()
    out = {"rps": None, "p50_ms": None, "p90_ms": None, "p99_ms": None, "non2xx": 0,
           "socket_errors": 0, "requests": None}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = round(float(m.group(1)), 1)
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    for pct, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", text, re.M)
        if m:
            out[key] = to_ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(x) for x in m.groups())
    return out


def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return {"rss_kib": out.get("VmRSS"), "hwm_kib": out.get("VmHWM")}


def proc_cpu(pid):
    """User + system CPU seconds of every thread of a process so far, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command's closing parenthesis: field 3 is index 0, so utime (14) is index 11.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener_pid(port):
    """The pid of the process with a socket listening on TCP `port` (IPv4 or IPv6), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    # local address "ADDR:PORT" in hex, state 0A = LISTEN, inode in field 9
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
            except OSError:
                continue
    return None


def cpu_of(pids):
    return {name: proc_cpu(int(pid)) for name, pid in pids.items()}


def run_cpu(out_path, cmd):
    """Runs cmd and records its CPU time (children's rusage, so only what cmd itself used)."""
    import resource
    import subprocess
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rc = subprocess.call(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    secs = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(out_path, "w") as f:
        json.dump({"seconds": round(secs, 3)}, f)
    return rc


def first_send(fake, timeout):
    """Seconds until the fake has sent one message (polled every 10 ms)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if http_json("GET", fake.rstrip("/") + "/_fake/stats", timeout=2)["sent"] >= 1:
                return {"seconds": round(time.monotonic() - t0, 3), "ok": True}
        except OSError:
            pass
        time.sleep(0.01)
    return {"seconds": round(time.monotonic() - t0, 3), "ok": False}


def get_health(api):
    try:
        with urllib.request.urlopen(api.rstrip("/") + "/health", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503 while not ready still carries the document
        return json.loads(e.read() or b"null")
    except OSError:
        return None


def wait_snapshot(api, timeout):
    """Waits until the replica at `api` read the whole stream (no event for 2 s) and wrote the
    snapshots its rule asks for: the last one leaves less than a quarter of its cache's size in
    events after it (api/snapshots.c). Returns that snapshot's figures and what it leaves."""
    t0 = time.monotonic()
    h = None
    while time.monotonic() - t0 < timeout:
        h = get_health(api) or {}
        stream, snap = h.get("status_stream") or {}, (h.get("snapshots") or {}).get("last_written")
        tasks = (h.get("cache") or {}).get("tasks", 0)
        if (stream.get("caught_up") and (stream.get("last_event_age_seconds") or 0) > 2 and snap
                and snap["tasks"] and stream["offset"] - snap["status_offset"] < max(tasks // 4, 1)):
            return {"ok": True, "waited_s": round(time.monotonic() - t0, 3), "offset": stream["offset"],
                    "after": stream["offset"] - snap["status_offset"],
                    "written": h["snapshots"]["written"], **snap}
        time.sleep(0.5)
    return {"ok": False, "waited_s": round(time.monotonic() - t0, 3), "health": h}


def wait_tasks(api, n, timeout):
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        last = get_health(api)
        tasks = ((last or {}).get("cache") or {}).get("tasks", 0)
        if tasks >= n:
            return {"tasks": tasks, "seconds": round(time.monotonic() - t0, 3), "ok": True}
        time.sleep(0.2)
    tasks = ((last or {}).get("cache") or {}).get("tasks", 0)
    return {"tasks": tasks, "seconds": round(time.monotonic() - t0, 3), "ok": False}


# --- management API --------------------------------------------------------------------------------

def mgmt(method, path):
    parts = urllib.parse.urlsplit(MGMT_URL)
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}{path}",
                                 method=method, headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def vhost():
    path = urllib.parse.urlsplit(AMQP_URL).path
    return urllib.parse.quote(urllib.parse.unquote(path[1:]) if len(path) > 1 else "/", safe="")


def purge(queue):
    mgmt("DELETE", f"/api/queues/{vhost()}/{urllib.parse.quote(queue, safe='')}/contents")
    return {"purged": queue}


def cleanup(prefix):
    if not prefix.startswith("bench-"):
        raise SystemExit(f"refusing to delete RabbitMQ objects with prefix {prefix!r}")
    deleted = []
    for kind in ("queues", "exchanges"):
        for obj in mgmt("GET", f"/api/{kind}?columns=name,vhost"):
            if obj["name"].startswith(prefix):
                try:
                    mgmt("DELETE", f"/api/{kind}/{urllib.parse.quote(obj['vhost'], safe='')}/"
                                   f"{urllib.parse.quote(obj['name'], safe='')}")
                    deleted.append(obj["name"])
                except urllib.error.HTTPError as e:
                    if e.code != 404:
                        raise
    return {"deleted": deleted}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("e2e")
    e.add_argument("--api", required=True)
    e.add_argument("--fake", required=True)
    e.add_argument("--count", type=int, required=True)
    e.add_argument("--conns", type=int, default=64)
    e.add_argument("--latency-ms", type=float, default=0)
    e.add_argument("--tag", required=True)
    e.add_argument("--instance", default="bench")
    e.add_argument("--timeout", type=float, default=300)
    e.add_argument("--cpu", action="append", default=[], metavar="NAME=PID")
    sub.add_parser("cpu").add_argument("pids", nargs="+", metavar="NAME=PID")
    sub.add_parser("listener-pid").add_argument("port", type=int)
    rc = sub.add_parser("run-cpu")
    rc.add_argument("out")
    rc.add_argument("command", nargs=argparse.REMAINDER)
    fs = sub.add_parser("first-send")
    fs.add_argument("--fake", required=True)
    fs.add_argument("--timeout", type=float, default=120)
    sub.add_parser("wrk").add_argument("file")
    sub.add_parser("rss").add_argument("pid", type=int)
    h = sub.add_parser("health")
    h.add_argument("--api", required=True)
    h.add_argument("--wait-tasks", type=int, required=True)
    h.add_argument("--timeout", type=float, default=600)
    ws = sub.add_parser("wait-snapshot")
    ws.add_argument("--api", required=True)
    ws.add_argument("--timeout", type=float, default=900)
    sub.add_parser("health-doc").add_argument("--api", required=True)
    sub.add_parser("purge").add_argument("--queue", required=True)
    sub.add_parser("cleanup").add_argument("--prefix", required=True)
    sub.add_parser("free-port")
    args = p.parse_args()

    if args.cmd == "e2e":
        asyncio.run(e2e(args))
        return
    if args.cmd == "run-cpu":
        cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
        sys.exit(run_cpu(args.out, cmd))
    if args.cmd == "free-port":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            print(s.getsockname()[1])
        return
    out = {"wrk": lambda: parse_wrk(args.file), "rss": lambda: rss(args.pid),
           "cpu": lambda: cpu_of(dict(spec.split("=", 1) for spec in args.pids)),
           "first-send": lambda: first_send(args.fake, args.timeout),
           "listener-pid": lambda: {"pid": listener_pid(args.port)},
           "health": lambda: wait_tasks(args.api, args.wait_tasks, args.timeout),
           "wait-snapshot": lambda: wait_snapshot(args.api, args.timeout),
           "health-doc": lambda: get_health(args.api),
           "purge": lambda: purge(args.queue), "cleanup": lambda: cleanup(args.prefix)}[args.cmd]()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
