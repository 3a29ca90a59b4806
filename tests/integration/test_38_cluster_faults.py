#!/usr/bin/env python3
"""Integration: a RabbitMQ node dies under load. Both daemons get the three addresses of a
local 3-node cluster (scripts/rabbitmq-cluster.sh: msg1..msg3@localhost, AMQP 5681-5683,
management 15681-15683) in broker.urls, and a steady stream of POSTs (60/s, each with its own
phone and text) runs from start to end:

1. The node msg-api's publisher is connected to is SIGKILLed (the management API's
   /api/connections names each connection's node; the names start with the test's own
   broker.connection_name). For ~20 s: non-202 answers stop within 10 s of the kill (every
   POST sent 10 s or more after it is a 202), and every connection of both daemons is back,
   on the surviving nodes. The node is then revived.
2. When msg-consumer was on another node, the same for the consumer's node (only one node is
   ever down: with two down, the quorum queues would have no majority).
3. A node neither the publisher nor the consumer is connected to is SIGKILLed: no error answer
   at all for ~10 s. It is revived, the stream stops.
Then every 202's task reaches SUCCESS and the fake Evolution API got each accepted text exactly
once, and no phone twice. A summary line ("[cluster-faults] ...") goes to stderr.

The test starts the cluster itself (scripts/rabbitmq-cluster.sh start; a cluster left running
by an earlier run is reused) and stops it at the end (stop --clean), unless MSG_KEEP_CLUSTER=1.
It is skipped when rabbitmq-server is not installed. The machine's default node is not touched
(the cluster has its own Erlang cookie and ports). ctest runs it alone (RUN_SERIAL: the name
contains "faults"). By hand:
    MSG_BIN_DIR=build python3 tests/integration/test_38_cluster_faults.py -v
"""

import os
import secrets
import shutil
import subprocess
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (SOURCE_ROOT, IntegrationTest, PostStream, _mgmt,  # noqa: E402
                     cleanup_topology, get_task, to_yaml, wait_for)

CLUSTER_SCRIPT = os.path.join(SOURCE_ROOT, "scripts", "rabbitmq-cluster.sh")
NODES = (1, 2, 3)
MGMT_BASE = int(os.environ.get("CLUSTER_MGMT_BASE_PORT", "15680"))
RATE = 60                # POSTs per second, offered all along
FAILOVER_WINDOW = 20     # seconds of load after killing a node a daemon is on
RECOVERY_LIMIT = 10      # every POST sent this long after such a kill must be a 202
QUIET_WINDOW = 10        # seconds of load after killing a node no daemon is on


def node_name(n):
    return f"msg{n}@localhost"


def node_number(name):
    """1 for "msg1@localhost"; None for anything else."""
    for n in NODES:
        if name == node_name(n):
            return n
    return None


def mgmt_url(n):
    return f"http://127.0.0.1:{MGMT_BASE + n}"


def cluster(*args, timeout=240):
    """Runs scripts/rabbitmq-cluster.sh with `args`; returns its stdout. Raises RuntimeError
    with its output when it fails."""
    r = subprocess.run([CLUSTER_SCRIPT, *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"rabbitmq-cluster.sh {' '.join(args)} exited with {r.returncode}:\n"
                           f"{r.stdout}{r.stderr}")
    return r.stdout


def rabbitmq_installed():
    return bool(shutil.which("rabbitmq-server") or os.path.exists("/usr/sbin/rabbitmq-server")
                or os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"))


class ClusterNodeLossTest(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not rabbitmq_installed():
            raise unittest.SkipTest("rabbitmq-server is not installed (the test runs a local "
                                    "3-node cluster with scripts/rabbitmq-cluster.sh)")
        cls.down = set()  # nodes this test has killed and not yet revived
        t0 = time.monotonic()
        try:
            out = cluster("start")
            cls.urls = out.strip().splitlines()[-1].split(",")
            if len(cls.urls) != 3 or not all(u.startswith("amqp://") for u in cls.urls):
                raise RuntimeError(f"rabbitmq-cluster.sh start printed {out!r}, not 3 AMQP URLs")
        except BaseException:
            cls.tearDownClass()  # unittest does not call it when setUpClass fails
            raise
        cls.cluster_start_s = time.monotonic() - t0

    @classmethod
    def tearDownClass(cls):
        try:
            if os.environ.get("MSG_KEEP_CLUSTER") == "1":
                for n in sorted(cls.down):
                    cluster("revive", str(n))
            else:
                cluster("stop", "--clean")
        finally:
            super().tearDownClass()

    def setUp(self):
        # Registered before the harness's own clean-up, so it runs after it: the daemons are
        # stopped (and would otherwise declare again) before the topology goes.
        self.addCleanup(self.delete_cluster_topology)
        super().setUp()

    # --- the cluster, through its management API ---------------------------------------------

    def alive(self):
        return [n for n in NODES if n not in self.down]

    def mgmt(self, path):
        """GET `path` on the management API of the first live node that answers."""
        last = None
        for n in self.alive():
            try:
                return _mgmt("GET", path, mgmt_url=mgmt_url(n))
            except (OSError, ValueError) as e:
                last = e
        raise AssertionError(f"no management API of nodes {self.alive()} answered {path}: {last}")

    def connections(self, tolerant=False):
        """{role: node number} of this test's connections ("api", "api-status", "consumer",
        "callbacks"): named "<prefix>-<role>@<host>". tolerant: None when no management API
        answered (just after a kill)."""
        found = {}
        try:
            conns = self.mgmt("/api/connections")
        except AssertionError:
            if tolerant:
                return None
            raise
        for c in conns:
            name = (c.get("client_properties") or {}).get("connection_name") or ""
            if name.startswith(self.prefix + "-"):
                role = name[len(self.prefix) + 1:].rsplit("@", 1)[0]
                found[role] = node_number(c.get("node"))
        return found

    def wait_members_online(self, timeout=60):
        """Waits until the job queue and the status stream have a running member on every node
        (after a revive: so that killing another node leaves them a majority)."""
        vhost = urllib.parse.quote("/", safe="")

        def online():
            for q in (self.cfg.queue, self.cfg.status_stream):
                info = self.mgmt(f"/api/queues/{vhost}/{urllib.parse.quote(q, safe='')}")
                if len(info.get("online") or []) < 3:
                    return False
            return True

        wait_for(online, timeout, interval=0.5,
                 what="the job queue and the status stream to have 3 members online")

    def kill(self, n):
        t = time.monotonic()
        cluster("kill", str(n))
        self.down.add(n)
        return t

    def revive(self, n):
        t0 = time.monotonic()
        cluster("revive", str(n))
        self.down.discard(n)
        self.wait_members_online()
        return time.monotonic() - t0

    def delete_cluster_topology(self):
        for prefix in getattr(self, "_prefixes", ()):
            for n in self.alive():
                try:
                    cleanup_topology(prefix, mgmt_url=mgmt_url(n))
                    break
                except (OSError, ValueError) as e:
                    print(f"[cluster-faults] could not delete {prefix}* through node {n}: {e}",
                          file=sys.stderr)

    # --- the scenario -------------------------------------------------------------------------

    def failover(self, stream, victim, roles_before):
        """Kills node `victim` under load, watches for FAILOVER_WINDOW seconds, revives it.
        Returns the figures of the phase."""
        t_kill = self.kill(victim)
        back_at, where = None, {}
        while time.monotonic() < t_kill + FAILOVER_WINDOW:
            where = self.connections(tolerant=True) or where
            if back_at is None and set(where) >= set(roles_before) and \
                    all(node in self.alive() for node in where.values()):
                back_at = time.monotonic()
            time.sleep(0.5)
        results = list(stream.results)
        bad = [r for r in results if r["t0"] >= t_kill - 0.5 and r["status"] != 202]
        last_bad_sent = max((r["t0"] - t_kill for r in bad), default=None)
        last_bad_answer = max(((r["t1"] or r["t0"]) - t_kill for r in bad), default=None)
        late = [r for r in bad if r["t0"] >= t_kill + RECOVERY_LIMIT]
        after = [r for r in results
                 if t_kill + RECOVERY_LIMIT <= r["t0"] < t_kill + FAILOVER_WINDOW]
        figures = {
            "node": victim, "t_kill": t_kill, "before": dict(roles_before), "after": dict(where),
            "errors": len(bad), "statuses": sorted({str(r["status"] or r["error"]) for r in bad}),
            "last_error_sent_s": last_bad_sent, "errors_for_s": last_bad_answer,
            "reconnected_s": None if back_at is None else back_at - t_kill,
        }
        errors = "no error" if not bad else (
            f"{len(bad)} non-202 ({', '.join(figures['statuses'])}) for {last_bad_answer:.1f}s, "
            f"the last one sent at +{last_bad_sent:.1f}s")
        back = "not reconnected" if back_at is None else \
            f"reconnected after {figures['reconnected_s']:.1f}s"
        print(f"\n[cluster-faults] killed msg{victim}: {errors}; {back}; connections "
              f"{roles_before} -> {where}", file=sys.stderr)
        examples = [(round(r["t0"] - t_kill, 1), r["status"] or r["error"]) for r in late[:5]]
        self.assertFalse(late, f"{len(late)} non-202 answer(s) to POSTs sent {RECOVERY_LIMIT}s "
                               f"or more after msg{victim} was killed, e.g. (+s, status) "
                               f"{examples}")
        self.assertGreater(len(after), RATE * (FAILOVER_WINDOW - RECOVERY_LIMIT) / 2,
                           "too little traffic after the failover")
        self.assertIsNotNone(back_at, f"the daemons' connections {sorted(roles_before)} were not "
                                      f"all back on surviving nodes within {FAILOVER_WINDOW}s "
                                      f"of killing msg{victim}; last seen: {where}")
        self.assertTrue(all(node in self.alive() for node in where.values()), where)
        figures["revive_s"] = self.revive(victim)
        return figures

    def test_node_loss_under_load(self):
        urls = self.urls
        # A fresh connection-name prefix tells this run's connections from anything else on
        # the cluster (an earlier run's daemons, a person's experiments).
        self.prefix = f"cf{secrets.token_hex(4)}"
        self.fake = self.start_fake()
        cfg = self.config({"broker": {"urls": urls, "connection_name": self.prefix}})
        # broker.urls alone: the harness writes broker.url (the default node) into every config.
        del cfg.data["broker"]["url"]
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(f"# written by {os.path.basename(__file__)}\n{to_yaml(cfg.data)}\n")
        self.cfg = cfg
        api = self.start_api(cfg, ready_timeout=30)
        self.start_consumer(cfg, ready_timeout=30)

        stream = PostStream(api, f"cf-{secrets.token_hex(3)}", threads=16, rate=RATE)
        phases, quiet = [], None
        t_start = time.monotonic()
        try:
            roles = wait_for(lambda: (lambda c: c if {"api", "consumer"} <= set(c) else None)(
                self.connections()), 20, interval=0.5,
                what="msg-api's and msg-consumer's connections in /api/connections")
            time.sleep(5)  # steady load before the first kill
            roles = self.connections()
            warmup_bad = [r for r in stream.results if r["status"] != 202]
            self.assertEqual(warmup_bad[:5], [], "errors before any node was killed")

            api_node, consumer_node = roles["api"], roles["consumer"]
            phases.append(self.failover(stream, api_node, roles))
            if consumer_node != api_node:
                roles = self.connections()
                phases.append(self.failover(stream, roles["consumer"], roles))

            roles = self.connections()
            busy = {roles.get("api"), roles.get("consumer")}
            free = [n for n in NODES if n not in busy]
            # Best: a node with none of this test's connections at all.
            free.sort(key=lambda n: n in roles.values())
            victim = free[0]
            t_kill = self.kill(victim)
            time.sleep(QUIET_WINDOW)
            where = self.connections()
            results = list(stream.results)
            bad = [r for r in results if r["t1"] and r["t1"] >= t_kill and r["status"] != 202]
            quiet = {"node": victim, "t_kill": t_kill, "before": roles, "after": where,
                     "errors": len(bad)}
            print(f"\n[cluster-faults] killed msg{victim} (no publisher or consumer on it; "
                  f"connections {roles} -> {where}): {len(bad)} non-202 in {QUIET_WINDOW}s",
                  file=sys.stderr)
            self.assertEqual(bad[:5], [], f"error answers after killing msg{victim}, which "
                                          f"neither msg-api's publisher nor msg-consumer used")
            quiet["revive_s"] = self.revive(victim)
            time.sleep(2)
        finally:
            results = stream.stop()
        duration = time.monotonic() - t_start

        # Every 202 is delivered exactly once; no phone gets two messages.
        accepted = stream.accepted()
        texts = {r["text"] for r in accepted.values()}
        wait_for(lambda: texts <= set(self.fake.stats()["sent_by_text"]), 120, interval=1,
                 what=f"the fake to have sent all {len(texts)} accepted messages")
        pending, deadline = set(accepted), time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for task_id in list(pending):
                r = get_task(api, task_id)
                if r.status == 200 and r.json and r.json.get("status") == "SUCCESS":
                    pending.discard(task_id)
            if pending:
                time.sleep(0.5)
        time.sleep(0.5)
        stats = self.fake.stats()
        sent_text, sent_number = stats["sent_by_text"], stats["sent_by_number"]
        twice_text = {t: c for t, c in sent_text.items() if c > 1}
        twice_number = {p: c for p, c in sent_number.items() if c > 1}
        # A 503 says "not queued": such a job must never be delivered. A 504 (outcome unknown)
        # may or may not be: either is honest.
        refused_sent = [r for r in results if r["status"] == 503 and r["text"] in sent_text]
        unknown = [r for r in results if r["status"] == 504]
        unknown_sent = sum(1 for r in unknown if r["text"] in sent_text)
        rate = len(results) / duration
        # Errors outside the windows checked above (e.g. while a node rejoined): reported only.
        windows = [(p["t_kill"] - 0.5, p["t_kill"] + FAILOVER_WINDOW) for p in phases]
        if quiet:
            windows.append((quiet["t_kill"] - 0.5, quiet["t_kill"] + QUIET_WINDOW))
        elsewhere = [r for r in results if r["status"] != 202
                     and not any(a <= r["t0"] < b for a, b in windows)]

        def fig(v):
            return "-" if v is None else f"{v:.1f}"

        print("\n[cluster-faults] cluster start {:.1f}s; {} POSTs at {:.0f}/s: {} x 202, {} other; "
              "{}; quiet kill msg{}: {} errors; delivered {} of {} accepted, {} text(s) and {} "
              "phone(s) twice, {} 503 delivered anyway, {} of {} 504 delivered, {} error(s) outside the "
              "kill windows".format(
                  self.cluster_start_s, len(results), rate, len(accepted),
                  len(results) - len(accepted),
                  "; ".join(f"kill msg{p['node']}: errors for {fig(p['errors_for_s'])}s "
                            f"({p['errors']}), reconnected in {fig(p['reconnected_s'])}s, "
                            f"api msg{p['before'].get('api')}->msg{p['after'].get('api')}, "
                            f"consumer msg{p['before'].get('consumer')}->"
                            f"msg{p['after'].get('consumer')}, "
                            f"revived in {p['revive_s']:.1f}s" for p in phases),
                  quiet and quiet["node"], quiet and quiet["errors"],
                  len(texts & set(sent_text)), len(texts), len(twice_text), len(twice_number),
                  len(refused_sent), unknown_sent, len(unknown), len(elsewhere)),
              file=sys.stderr)

        self.assertGreaterEqual(rate, 50, "the load fell short of 50 POSTs/s")
        self.assertEqual(sorted(pending)[:10], [], f"{len(pending)} accepted task(s) not SUCCESS")
        self.assertEqual(twice_text, {}, "messages sent twice")
        self.assertEqual(twice_number, {}, "phones that got two messages")
        self.assertEqual(sorted(t for t in texts if sent_text.get(t) != 1)[:10], [])
        self.assertEqual(refused_sent, [], "jobs answered 503 (not queued) delivered anyway")
        self.assertEqual({r["code"] for r in unknown} - {"outcome_unknown"}, set())


if __name__ == "__main__":
    unittest.main(verbosity=2)
