#!/usr/bin/env python3
"""The Prometheus round trip: msg-api and msg-consumer (real daemons, the real RabbitMQ, the fake
Evolution API, started by tests/integration/harness.py) scraped by a real Prometheus server
(Debian's prometheus package) every second; what Prometheus stored must be what /metrics
exposed, series for series.

Prometheus keeps one sample per series and timestamp: two exposed samples with the same name
and labels are one series to it, and within one scrape it keeps the first and drops the second
without counting it anywhere (Prometheus 2.42, Debian 12). So besides "every exposed series is
stored", every exposed name+labels must be unique, Prometheus must have refused no sample (its
duplicate-timestamp, out-of-order and out-of-bounds counters) and dropped none: the samples
scraped plus its own per-scrape series must be the samples appended to its head.

The traffic: a message sent at once (SUCCESS), one answered 429 once (RETRY, then SUCCESS), one
to a number not on WhatsApp (FAILURE, parked), GET and DELETE /tasks/{id} on known and unknown
ids. Then Prometheus starts on a free loopback port with its own storage in a temporary
directory, scrapes for a few seconds, and the test compares.

The names that deploy/monitoring/dashboard.json and alerts.yaml query must be among the
exposed ones (or rabbitmq_prometheus's, listed below), so that the dashboard and the rules
cannot drift away from the daemons.

Run by tests/monitoring/run.sh (ctest monitoring.rules_and_roundtrip), or alone:
  MSG_BIN_DIR=build python3 tests/monitoring/test_prometheus_roundtrip.py
PROMETHEUS (default: prometheus on PATH) names the server; MSG_KEEP_TMP=1 keeps its directory.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from harness import (cleanup_topology, free_port, http, make_config, post_message,  # noqa: E402
                     start_api, start_consumer, start_fake, wait_for, wait_task_status)

SCRAPES_BEFORE = 3       # scrapes of each target before the test reads /metrics itself
SCRAPES_AFTER = 3        # and after, before it reads what Prometheus stored
# The names of rabbitmq_prometheus (/metrics/per-object) that the dashboard and rules use; its
# documentation lists them: https://www.rabbitmq.com/docs/prometheus
RABBITMQ_NAMES = {"rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
                  "rabbitmq_queue_consumers"}
TASK_ROUTE = "/tasks/{task_id}"    # GET and DELETE: one series each, told apart by "method"
# Series that Prometheus adds to every target itself.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added"}

PHONE_OK, PHONE_RETRY, PHONE_PARK = "+5511999990001", "+5511999990003", "+5511999990002"
UNKNOWN_TASK = "00000000-0000-4000-8000-000000000000"

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def parse_exposition(text):
    """[(name, {label: value}, value)] of every sample line, in order, duplicates kept."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ValueError(f"not a sample line: {line!r}")
        labels, rest = {}, m.group(2) or ""
        pos = 0
        while pos < len(rest):
            lm = LABEL.match(rest, pos)
            if not lm:
                raise ValueError(f"bad labels in {line!r}")
            labels[lm.group(1)] = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1),
                                          lm.group(2))
            pos = lm.end()
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def key(name, labels):
    return (name, tuple(sorted(labels.items())))


def as_stored(name, labels):
    """The key under which Prometheus stores an exposed sample (honor_labels false): empty
    labels do not exist, and the exposed job and instance become exported_job and
    exported_instance, as the target's own job and instance take their place."""
    out = {}
    for k, v in labels.items():
        if v == "":
            continue
        out[{"job": "exported_job", "instance": "exported_instance"}.get(k, k)] = v
    return key(name, out)


def duplicates(samples):
    """{key: [values]} of every name+labels exposed more than once."""
    seen = {}
    for name, labels, value in samples:
        seen.setdefault(key(name, labels), []).append(value)
    return {k: v for k, v in seen.items() if len(v) > 1}


def describe(k):
    name, labels = k
    return name + "{" + ",".join(f'{a}="{b}"' for a, b in labels) + "}"


def queried_names(text):
    """Metric names a PromQL text (or a file of them) refers to: msg_*, process_* and
    rabbitmq_* words, with a histogram's _bucket/_sum/_count kept as written."""
    return set(re.findall(r"\b((?:msg|process|rabbitmq)_[a-z0-9_]+)\b", text))


class Prometheus:
    """A Prometheus server on a free loopback port with its own config and storage."""

    def __init__(self, tmpdir, targets, interval="1s"):
        binary = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
        if not binary:
            raise unittest.SkipTest("no prometheus server: apt-get install prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = os.path.join(tmpdir, "prometheus.yml")
        jobs = "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: [\"{t}\"]\n"
                       for job, t in targets.items())
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n"
                    f"  evaluation_interval: {interval}\nscrape_configs:\n{jobs}")
        self.log_path = os.path.join(tmpdir, "prometheus.log")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmpdir}/tsdb",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                return http("GET", self.url + "/-/ready", timeout=2).status == 200
            except OSError:
                return False
        wait_for(ready, 30, interval=0.2, what="prometheus to be ready")

    def log_tail(self, lines=30):
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])

    def api(self, path, **params):
        query = urllib.parse.urlencode(params, doseq=True)
        r = http("GET", f"{self.url}/api/v1/{path}?{query}", timeout=10)
        if r.status != 200 or not r.json or r.json.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {r.status} {r.body[:500]!r}")
        return r.json["data"]

    def query(self, expr):
        """{frozen labels: value} of an instant query."""
        return {tuple(sorted(s["metric"].items())): float(s["value"][1])
                for s in self.api("query", query=expr)["result"]}

    def own_counter(self, name):
        """The sum of one of Prometheus's own counters, read from its /metrics."""
        text = http("GET", self.url + "/metrics").body.decode()
        return sum(v for n, _, v in parse_exposition(text) if n == name)

    def scrapes(self, job):
        """How many times the target of `job` was scraped (its up samples so far)."""
        got = self.query(f'count_over_time(up{{job="{job}"}}[1h])')
        return int(sum(got.values()))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class ComparisonSelfTest(unittest.TestCase):
    """The comparison itself, on made-up expositions: it must see a duplicate and a series that
    was not stored (no daemon, no server needed)."""

    def test_finds_a_duplicate(self):
        text = ('# TYPE a_total counter\na_total{route="/x",status="200"} 1\n'
                'a_total{route="/y",status="200"} 2\na_total{status="200",route="/x"} 3\n')
        dups = duplicates(parse_exposition(text))
        self.assertEqual(list(dups.values()), [[1.0, 3.0]])
        self.assertEqual(describe(next(iter(dups))), 'a_total{route="/x",status="200"}')

    def test_stored_keys(self):
        samples = parse_exposition('held{target="server",instance=""} 0\n'
                                   'held{target="instance",instance="inst-a"} 1\n'
                                   'esc{path="a\\"b"} 1\n')
        self.assertEqual([as_stored(n, l) for n, l, _ in samples],
                         [("held", (("target", "server"),)),
                          ("held", (("exported_instance", "inst-a"), ("target", "instance"))),
                          ("esc", (("path", 'a"b'),))])


def dashboard():
    with open(os.path.join(ROOT, "deploy", "monitoring", "dashboard.json"), encoding="utf-8") as f:
        return json.load(f)


def dashboard_queries(variables):
    """(panel title, PromQL) of every dashboard target, Grafana's variables replaced."""
    out = []
    for p in dashboard()["panels"]:
        for target in p.get("targets", []):
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace("$" + name, value)
            out.append((p["title"], expr))
    return out


class DashboardFile(unittest.TestCase):
    """deploy/monitoring/dashboard.json is what Grafana's import takes: the datasource an input
    (${DS_PROMETHEUS}), unique panel ids, every variable it uses defined."""

    def test_shape(self):
        d = dashboard()
        self.assertEqual([i["name"] for i in d["__inputs"]], ["DS_PROMETHEUS"])
        self.assertEqual(d["__inputs"][0]["pluginId"], "prometheus")
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)), ids)
        defined = {v["name"] for v in d["templating"]["list"]} | {"__rate_interval"}
        for p in d["panels"]:
            if p["type"] == "row":
                continue
            self.assertEqual(p["datasource"], {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"])
            self.assertTrue(p["targets"], p["title"])
            self.assertEqual(len({t["refId"] for t in p["targets"]}), len(p["targets"]), p["title"])
            for target in p["targets"]:
                self.assertEqual(target["datasource"]["uid"], "${DS_PROMETHEUS}", p["title"])
                used = set(re.findall(r"\$([a-zA-Z_]+)", target["expr"]))
                self.assertLessEqual(used, defined, p["title"])


class PrometheusRoundTrip(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmpdir = tempfile.mkdtemp(prefix="msgtest-prometheus-")
        cls.services, cls.prefixes, cls.prom = [], [], None
        try:
            cls._run()
        except BaseException:
            cls._stop_all(keep=True)
            raise

    @classmethod
    def _run(cls):
        rate_limited = {"action": "status", "status": 429, "times": 1,
                        "match": {"number": PHONE_RETRY.lstrip("+")},
                        "body": {"status": 429, "error": "Too Many Requests",
                                 "response": {"message": ["rate-overlimit"]}}}
        fake = start_fake(cls.tmpdir, faults=[rate_limited],
                          not_on_whatsapp=[PHONE_PARK.lstrip("+")])
        cls.services.append(fake)
        cfg = make_config(cls.tmpdir, "prometheus-roundtrip", fake)
        cls.prefixes.append(cfg.data["topology"]["exchange"])
        api = start_api(cfg)
        cls.services.append(api)
        consumer = start_consumer(cfg)
        cls.services.append(consumer)
        cls.api, cls.consumer = api, consumer

        tasks = {}
        for phone, want in ((PHONE_OK, "SUCCESS"), (PHONE_RETRY, "SUCCESS"), (PHONE_PARK, "FAILURE")):
            r = post_message(api, phone, f"prometheus round trip {phone}")
            assert r.status == 202, r.body
            tasks[phone] = r.json["task_id"]
            wait_task_status(api, tasks[phone], want, timeout=30)
        # GET and DELETE on the same route, both answering 404 (an unknown id) and otherwise
        # (200 for GET, 409 for DELETE of a finished task): the same route, two methods.
        for task_id in tasks.values():
            assert http("GET", f"{api.base_url}/tasks/{task_id}").status == 200
        assert http("GET", f"{api.base_url}/tasks/{UNKNOWN_TASK}").status == 404
        assert http("DELETE", f"{api.base_url}/tasks/{UNKNOWN_TASK}").status == 404
        assert http("DELETE", f"{api.base_url}/tasks/{tasks[PHONE_OK]}").status == 409

        def delivered():
            samples = parse_exposition(http("GET", consumer.base_url + "/metrics").body.decode())
            got = {l.get("outcome"): v for n, l, v in samples if n == "msg_consumer_deliveries_total"}
            return got if (got.get("success"), got.get("parked")) == (2, 1) else None
        wait_for(delivered, 15, interval=0.1, what="the consumer's counters to settle")

        cls.targets = {"msg-api": urllib.parse.urlsplit(api.base_url).netloc,
                       "msg-consumer": urllib.parse.urlsplit(consumer.base_url).netloc}
        cls.prom = prom = Prometheus(cls.tmpdir, cls.targets)
        cls.started = time.time()
        for job in cls.targets:
            wait_for(lambda: prom.scrapes(job) >= SCRAPES_BEFORE, 30, interval=0.25,
                     what=f"{SCRAPES_BEFORE} scrapes of {job}")
        urls = {"msg-api": api.base_url, "msg-consumer": consumer.base_url}
        cls.exposed = {job: parse_exposition(http("GET", urls[job] + "/metrics").body.decode())
                       for job in urls}
        seen = {job: prom.scrapes(job) for job in cls.targets}
        for job in cls.targets:
            wait_for(lambda: prom.scrapes(job) >= seen[job] + SCRAPES_AFTER, 30, interval=0.25,
                     what=f"{SCRAPES_AFTER} more scrapes of {job}")
        cls.exposed_after = {job: parse_exposition(http("GET", urls[job] + "/metrics").body.decode())
                             for job in urls}

        cls.stored = {}
        for job in cls.targets:
            series = prom.api("series", **{"match[]": f'{{job="{job}"}}',
                                           "start": f"{cls.started - 60:.3f}",
                                           "end": f"{time.time() + 1:.3f}"})
            cls.stored[job] = {key(s["__name__"], {k: v for k, v in s.items()
                                                   if k not in ("__name__", "job", "instance")})
                               for s in series if s["__name__"] not in SYNTHETIC}
        # Prometheus's own counters, the number of scrapes and the samples they brought, read
        # together: a scrape between two readings would make them disagree, so read again until
        # two rounds agree.
        def reading():
            return ({n: prom.own_counter(n) for n in cls.INGEST_COUNTERS},
                    {job: prom.scrapes(job) for job in cls.targets},
                    {job: sum(prom.query(f'sum_over_time(scrape_samples_scraped{{job="{job}"}}[1h])').values())
                     for job in cls.targets})
        last = reading()
        for _ in range(20):
            now = reading()
            if now == last:
                break
            last = now
        cls.ingest, cls.scrape_count, cls.scraped_total = now
        # Every sample a scrape brings is appended to the head, with the SYNTHETIC ones,
        # unless Prometheus drops it: the difference is what it dropped. A second sample of the
        # same series in one scrape is dropped without any counter of its own (Prometheus
        # 2.42), so this difference is the only trace it leaves.
        cls.dropped = (sum(cls.scraped_total.values())
                       + len(SYNTHETIC) * sum(cls.scrape_count.values())
                       - cls.ingest["prometheus_tsdb_head_samples_appended_total"])
        cls.samples_scraped = {job: prom.query(f'scrape_samples_scraped{{job="{job}"}}')
                               for job in cls.targets}
        cls.deliveries = prom.query("msg_consumer_deliveries_total")
        cls.report()

    # Prometheus's own counters of samples it refused, which must stay 0, and of the samples
    # it stored.
    REFUSED = ("prometheus_target_scrapes_sample_duplicate_timestamp_total",
               "prometheus_target_scrapes_sample_out_of_order_total",
               "prometheus_target_scrapes_sample_out_of_bounds_total")
    INGEST_COUNTERS = REFUSED + ("prometheus_tsdb_head_samples_appended_total",)

    @classmethod
    def report(cls):
        for job in cls.targets:
            samples = cls.exposed[job]
            print(f"prometheus round trip: {job}: {len(samples)} samples exposed, "
                  f"{len({key(n, l) for n, l, _ in samples})} distinct name+labels, "
                  f"{len(cls.stored[job])} series stored, {cls.scrape_count[job]} scrapes",
                  file=sys.stderr)
        print(f"prometheus round trip: samples scraped {cls.scraped_total}, Prometheus's counters "
              f"{cls.ingest}, samples dropped silently: {cls.dropped:g}", file=sys.stderr)

    @classmethod
    def _stop_all(cls, keep=False):
        if cls.prom:
            cls.prom.stop()
        for service in reversed(cls.services):
            service.stop()
        for prefix in cls.prefixes:
            try:
                cleanup_topology(prefix)
            except OSError as e:
                print(f"could not delete RabbitMQ objects {prefix}*: {e}", file=sys.stderr)
        if keep or os.environ.get("MSG_KEEP_TMP") == "1":
            print(f"kept {cls.tmpdir}", file=sys.stderr)
        else:
            shutil.rmtree(cls.tmpdir, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls._stop_all()

    def exposed_keys(self, job):
        return {as_stored(n, l) for n, l, _ in self.exposed[job]}

    def test_scenario_happened(self):
        """The traffic did what it should: 2 successes (one after a 429 retry) and 1 parked,
        as Prometheus stored them; both targets were up at every scrape."""
        got = {dict(k)["outcome"]: v for k, v in self.deliveries.items()}
        self.assertEqual((got["success"], got["retry"], got["parked"]), (2, 1, 1), got)
        for job in self.targets:
            self.assertEqual(set(self.prom.query(f'min_over_time(up{{job="{job}"}}[1h])').values()),
                             {1.0}, job)

    def test_exposition_was_stable(self):
        """No traffic while Prometheus scrapes: the same series before and after (else the
        comparison below would compare two different things)."""
        for job in self.targets:
            self.assertEqual({key(n, l) for n, l, _ in self.exposed[job]},
                             {key(n, l) for n, l, _ in self.exposed_after[job]}, job)

    def test_every_exposed_series_is_stored(self):
        for job in self.targets:
            missing = self.exposed_keys(job) - self.stored[job]
            self.assertFalse(missing, f"{job}: exposed, not stored: "
                                      + ", ".join(describe(k) for k in sorted(missing)))

    def test_nothing_stored_that_was_not_exposed(self):
        for job in self.targets:
            extra = self.stored[job] - self.exposed_keys(job)
            self.assertFalse(extra, f"{job}: stored, not exposed: "
                                    + ", ".join(describe(k) for k in sorted(extra)))

    def test_series_are_unique(self):
        """No name+labels exposed twice, so each scrape's samples are each a series of their
        own: as many samples scraped as series stored."""
        for job in self.targets:
            dups = duplicates(self.exposed[job])
            self.assertFalse(dups, f"{job} exposes more than once: "
                                   + ", ".join(describe(k) for k in sorted(dups)))
            scraped = set(self.samples_scraped[job].values())
            self.assertEqual(scraped, {float(len(self.exposed[job]))}, job)
            self.assertEqual(len(self.stored[job]), len(self.exposed[job]), job)

    def test_prometheus_refused_nothing(self):
        """Prometheus counted no sample refused: no duplicate timestamp with another value
        across scrapes, none out of order or out of bounds."""
        for name in self.REFUSED:
            self.assertEqual(self.ingest[name], 0, name)

    def test_prometheus_dropped_nothing(self):
        """Every sample scraped was appended: none dropped silently (a second sample of a
        series within one scrape is, without any counter of its own)."""
        self.assertEqual(self.dropped, 0, f"{self.dropped:g} samples dropped silently over "
                                          f"{self.scrape_count} scrapes")

    def test_tasks_get_and_delete_are_distinct_series(self):
        """GET and DELETE on /tasks/{task_id} are two series (label method), stored both; they
        were one, and Prometheus kept only the first."""
        for name in ("msg_api_http_request_duration_seconds_count", "msg_api_http_requests_total"):
            methods = {dict(k[1]).get("method") for k in self.stored["msg-api"]
                       if k[0] == name and dict(k[1]).get("route") == TASK_ROUTE}
            self.assertEqual(methods, {"GET", "DELETE"}, name)
        both_404 = [k for k in self.stored["msg-api"] if k[0] == "msg_api_http_requests_total"
                    and dict(k[1]).get("route") == TASK_ROUTE and dict(k[1]).get("status") == "404"]
        self.assertEqual(len(both_404), 2, both_404)

    def test_dashboard_and_rules_query_exposed_names(self):
        names = set()
        for samples in self.exposed.values():
            names |= {n for n, _, _ in samples}
        for path in ("dashboard.json", "alerts.yaml"):
            with open(os.path.join(ROOT, "deploy", "monitoring", path), encoding="utf-8") as f:
                text = f.read()
            exprs = ([t["expr"] for p in json.loads(text)["panels"] for t in p.get("targets", [])]
                     if path.endswith(".json") else
                     re.findall(r"(?ms)^\s+expr: (\|\n.*?(?=^\s+for:|^\s+labels:)|.*?$)", text))
            self.assertTrue(exprs, path)
            used = set().union(*(queried_names(e) for e in exprs))
            unknown = used - names - RABBITMQ_NAMES
            self.assertFalse(unknown, f"{path} queries names no daemon exposes: {sorted(unknown)}")

    def test_dashboard_queries_answer(self):
        """Every dashboard query, run by the real Prometheus on what it scraped, is valid PromQL
        and, except those of the broker (not scraped here) and of 5xx answers (none here),
        returns data."""
        variables = {"api_job": "msg-api", "consumer_job": "msg-consumer", "queues": "messages.*",
                     "__rate_interval": "5s"}
        empty = []
        for title, expr in dashboard_queries(variables):
            got = self.prom.api("query", query=expr)["result"]
            if not got and "rabbitmq_" not in expr and 'status=~"5.."' not in expr:
                empty.append(f"{title}: {expr}")
        self.assertFalse(empty, "dashboard queries without data:\n" + "\n".join(empty))


if __name__ == "__main__":
    unittest.main(verbosity=2)
