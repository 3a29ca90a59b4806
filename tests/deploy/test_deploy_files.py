"""Offline checks of the deployment files in deploy/ (no Docker, no cluster, stdlib only):

- deploy/rabbitmq/definitions.json declares exactly the topology config/service.yaml implies
  (names, queue types, dead-lettering, TTLs, bindings), and its copy for the RabbitMQ Cluster
  Operator is identical;
- the Kubernetes config names the same topology, and the manifests keep their invariants
  (probes on real endpoints, restricted security context, config as a directory, grace
  periods, the KEDA queue), and every file a kustomization names exists;
- the compose file (compose.yaml) and the Dockerfiles keep theirs (every image built here,
  exec form, non-root, read-only, mounted files exist, the fake Evolution API by itself, and
  Prometheus only in the "monitoring" profile, scraping what compose runs);
- msg-probe, the image's HEALTHCHECK, compiles warning-free and tells 2xx from the rest;
- with the tools scripts/deps.sh installs (issue 7, section 8): `kubectl kustomize` renders every
  kustomization, the rendered objects validate against their API schemas (tests/deploy/
  validate_k8s.mjs, npm kubernetes-models and @kubernetes-models/keda), `docker-compose config -q`
  accepts compose.yaml with and without EVOLUTION_API_URL, and two Dockerfile linters
  (npm dockerfile-utils and dockerfilelint) accept deploy/docker/Dockerfile.

A missing tool skips its check on a developer's machine, but fails it in CI (CI set).
"""
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import unittest

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
TOOLS = os.environ.get("MSG_TOOLS") or os.path.join(ROOT, ".tools")
IN_CI = bool(os.environ.get("CI"))
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod", "rabbitmq")


def need(test, found, what, how="scripts/deps.sh installs it"):
    """Returns `found` (a tool's path); when it is missing, skips the test, or fails it in CI,
    where scripts/deps.sh and .ci/run must have installed it."""
    if found:
        return found
    msg = f"{what} is not installed ({how})"
    if IN_CI:
        test.fail(f"{msg}; CI must run this check")
    test.skipTest(msg)


def npm_tool(name):
    path = os.path.join(TOOLS, "node_modules", ".bin", name)
    return path if os.access(path, os.X_OK) else None


def npm_package(name):
    return os.path.exists(os.path.join(TOOLS, "node_modules", name, "package.json"))


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def scalar(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def strip_comment(line):
    """Drops a '# comment' that is not inside quotes."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def mini_yaml(text):
    """The subset config files use: nested maps by indentation, scalars, flow lists (also over
    several lines)."""
    root = {}
    stack = [(-1, root)]
    pending = None  # a flow list still open at the end of its first line
    for raw in text.splitlines():
        line = strip_comment(raw).rstrip()
        if pending is not None:
            pending += " " + line.strip()
            if not line.endswith("]"):
                continue
            line, pending = pending, None
        elif re.match(r"^\s*[A-Za-z0-9_.-]+:\s+\[", line) and not line.endswith("]"):
            pending = line
            continue
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        m = re.match(r"^\s*([A-Za-z0-9_.-]+):(?:\s+(.*))?$", line)
        if not m:
            raise ValueError(f"unsupported line: {raw!r}")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        key, value = m.group(1), m.group(2)
        if value is None:
            parent[key] = {}
            stack.append((indent, parent[key]))
        elif value.startswith("[") and value.endswith("]"):
            inner = value[1:-1].strip()
            parent[key] = [scalar(v) for v in inner.split(",")] if inner else []
        elif value.startswith("{"):
            parent[key] = value  # not needed by these checks
        else:
            parent[key] = scalar(value)
    return root


def duration_ms(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}[m.group(2)]


def yaml_files():
    out = [os.path.join(ROOT, "compose.yaml")]
    for dirpath, _, names in os.walk(K8S):
        out += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith((".yaml", ".yml"))]
    return out


def documents(path):
    """Splits a manifest file into its YAML documents (text)."""
    with open(path, encoding="utf-8") as f:
        return [d for d in re.split(r"^---\s*$", f.read(), flags=re.M) if d.strip()]


def kind_docs(kind):
    found = []
    for path in yaml_files():
        for doc in documents(path):
            if re.search(rf"^kind:\s*{kind}\s*$", doc, re.M):
                found.append((path, doc))
    return found


def field(doc, name):
    m = re.search(rf"^\s*(?:- )?{name}:\s*(\S.*?)\s*$", doc, re.M)
    return scalar(strip_comment(m.group(1))) if m else None


CONFIG = mini_yaml(read("config", "service.yaml"))
K8S_CONFIG = mini_yaml(read("deploy", "k8s", "base", "config", "service.yaml"))


def _schedule_delays():
    """The delays of MQ_DELAYS_MS in common/mq.c, written as the daemons name their queues."""
    src = read("common", "mq.c")
    body = re.search(r"MQ_DELAYS_MS\[MQ_N_DELAYS\] = \{([^}]*)\}", src).group(1)
    out = []
    for ms in (int(x) for x in re.findall(r"\d+", body)):
        out.append(f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms")
    return out


SCHEDULE_DELAYS = _schedule_delays()


class Definitions(unittest.TestCase):
    def setUp(self):
        self.defs = json.loads(read("deploy", "rabbitmq", "definitions.json"))
        self.top = CONFIG["topology"]
        self.queues = {q["name"]: q for q in self.defs["queues"]}

    def test_copy_for_the_operator_is_identical(self):
        self.assertEqual(read("deploy", "k8s", "rabbitmq", "definitions.json"),
                         read("deploy", "rabbitmq", "definitions.json"),
                         "deploy/k8s/rabbitmq/definitions.json must be a copy of "
                         "deploy/rabbitmq/definitions.json")

    def test_names_match_the_config(self):
        t = self.top
        delays = sorted(set(CONFIG["retry"]["delays"]), key=duration_ms)
        expected = {t["queue"], t["dead_letter_queue"], t["status_stream"]}
        expected |= {f"{t['status_stream']}.snapshots", f"{t['status_stream']}.snapshots.index"}
        expected |= {f"{t['retry_queue_prefix']}.{d}" for d in delays}
        expected |= {f"{t['exchange']}.delay.{d}" for d in SCHEDULE_DELAYS}
        cq = t["callback_queue"]
        expected |= {cq, f"{cq}.dead"}
        expected |= {f"{cq}.retry.{d}" for d in CONFIG["callbacks"]["retry_delays"]}
        self.assertEqual(set(self.queues), expected)
        self.assertEqual([e["name"] for e in self.defs["exchanges"]], [t["exchange"]])
        self.assertEqual(self.defs["exchanges"][0]["type"], "direct")
        for q in self.defs["queues"]:
            self.assertTrue(q["durable"], q["name"])
            self.assertFalse(q["auto_delete"], q["name"])

    def test_queue_arguments(self):
        t = self.top
        qtype = t["queue_type"]
        send = self.queues[t["queue"]]["arguments"]
        self.assertEqual(send["x-queue-type"], qtype)
        self.assertEqual(send["x-dead-letter-exchange"], t["exchange"])
        self.assertEqual(self.queues[t["dead_letter_queue"]]["arguments"]["x-queue-type"], qtype)
        if qtype == "quorum":
            self.assertEqual(send["x-dead-letter-strategy"], "at-least-once")
            self.assertEqual(send["x-overflow"], "reject-publish")
            self.assertIn("x-delivery-limit", send)
        stream = self.queues[t["status_stream"]]["arguments"]
        self.assertEqual(stream["x-queue-type"], "stream")
        self.assertEqual(stream["x-max-age"], f"{duration_ms(t['status_retention']) // 1000}s")
        # The api's cache snapshots (common/mq.c): 20 minutes, in small segments.
        for name, segment in ((".snapshots", 64 << 20), (".snapshots.index", 1 << 20)):
            args = self.queues[t["status_stream"] + name]["arguments"]
            self.assertEqual(args, {"x-queue-type": "stream", "x-max-age": "1200s",
                                    "x-stream-max-segment-size-bytes": segment}, name)
        for d in set(CONFIG["retry"]["delays"]):
            args = self.queues[f"{t['retry_queue_prefix']}.{d}"]["arguments"]
            self.assertEqual(args["x-queue-type"], qtype)
            self.assertEqual(args["x-message-ttl"], duration_ms(d))
            self.assertEqual(args["x-dead-letter-exchange"], t["exchange"])
            self.assertEqual(args["x-dead-letter-routing-key"], "send")

    def test_replicated_on_every_node(self):
        """No queue pins fewer members than the cluster's 3 nodes: without the arguments, each
        quorum queue and the stream get a member on every node."""
        for q in self.defs["queues"]:
            for arg in ("x-quorum-initial-group-size", "x-initial-cluster-size"):
                if arg in q["arguments"]:
                    self.assertGreaterEqual(int(q["arguments"][arg]), 3, f"{q['name']}: {arg}")

    def test_schedule_delay_queues(self):
        """The delay queues of scheduled sends (common/mq.c MQ_DELAYS_MS): each with its TTL,
        dead-lettering back to the job queue, bound as delay.<d>."""
        t = self.top
        bound = {(b["source"], b["routing_key"]): b["destination"] for b in self.defs["bindings"]}
        for d in SCHEDULE_DELAYS:
            args = self.queues[f"{t['exchange']}.delay.{d}"]["arguments"]
            self.assertEqual(args["x-message-ttl"], duration_ms(d))
            self.assertEqual(args["x-dead-letter-exchange"], t["exchange"])
            self.assertEqual(args["x-dead-letter-routing-key"], "send")
            self.assertEqual(bound.get((t["exchange"], f"delay.{d}")), f"{t['exchange']}.delay.{d}")

    def test_callback_queues(self):
        """The status-callback queues (common/mq.c mq_declare_callback_topology): all through
        the default exchange, so unbound; the queue dead-letters to its dead queue, each retry
        queue back to the queue after its delay, at-least-once."""
        t = self.top
        qtype = t["queue_type"]
        cq = t["callback_queue"]
        main = self.queues[cq]["arguments"]
        self.assertEqual(main["x-queue-type"], qtype)
        self.assertEqual(main["x-dead-letter-exchange"], "")
        self.assertEqual(main["x-dead-letter-routing-key"], f"{cq}.dead")
        self.assertEqual(self.queues[f"{cq}.dead"]["arguments"], {"x-queue-type": qtype})
        for d in CONFIG["callbacks"]["retry_delays"]:
            args = self.queues[f"{cq}.retry.{d}"]["arguments"]
            self.assertEqual(args["x-queue-type"], qtype)
            self.assertEqual(args["x-message-ttl"], duration_ms(d))
            self.assertEqual(args["x-dead-letter-exchange"], "")
            self.assertEqual(args["x-dead-letter-routing-key"], cq)
        for args in [main] + [self.queues[f"{cq}.retry.{d}"]["arguments"]
                              for d in CONFIG["callbacks"]["retry_delays"]]:
            if qtype == "quorum":
                self.assertEqual(args["x-dead-letter-strategy"], "at-least-once")
                self.assertEqual(args["x-overflow"], "reject-publish")
        if qtype == "quorum":
            self.assertEqual(main["x-delivery-limit"],
                             self.queues[t["queue"]]["arguments"]["x-delivery-limit"])
        self.assertFalse([b for b in self.defs["bindings"] if b["destination"].startswith(cq)])

    def test_bindings(self):
        t = self.top
        send_args = self.queues[t["queue"]]["arguments"]
        bound = {(b["source"], b["routing_key"]): b["destination"] for b in self.defs["bindings"]}
        self.assertEqual(bound.get((t["exchange"], "send")), t["queue"])
        self.assertEqual(bound.get((t["exchange"], send_args["x-dead-letter-routing-key"])),
                         t["dead_letter_queue"])
        for d in set(CONFIG["retry"]["delays"]):
            self.assertEqual(bound.get((t["exchange"], f"retry.{d}")),
                             f"{t['retry_queue_prefix']}.{d}")


class KubernetesConfig(unittest.TestCase):
    def test_same_topology_and_retries_as_the_definitions(self):
        self.assertEqual(K8S_CONFIG["topology"], CONFIG["topology"])
        self.assertEqual(K8S_CONFIG["retry"]["delays"], CONFIG["retry"]["delays"])

    def test_secrets_come_from_the_environment(self):
        self.assertEqual(K8S_CONFIG["api"]["api_keys"], ["${MSG_API_KEY}"])
        self.assertIn("${EVOLUTION_API_KEY", K8S_CONFIG["evolution"]["api_key"])
        for url in K8S_CONFIG["broker"]["urls"]:
            self.assertIn(":${MSG_AMQP_PASSWORD}@", url)

    def test_broker_urls_name_every_node_of_the_cluster(self):
        """broker.urls lists each pod of the example RabbitmqCluster by its DNS name under the
        operator's headless Service (<name>-server-<i>.<name>-nodes.<namespace>.svc), and no
        single broker.url competes with it."""
        _, rc = kind_docs("RabbitmqCluster")[0]
        name = re.search(r"^metadata:\n  name: (\S+)$", rc, re.M).group(1)
        replicas = int(field(rc, "replicas"))
        self.assertGreaterEqual(replicas, 3)
        expected = [f"amqp://msg:${{MSG_AMQP_PASSWORD}}@{name}-server-{i}.{name}-nodes."
                    f"${{MSG_NAMESPACE}}.svc:5672/%2f" for i in range(replicas)]
        self.assertEqual(K8S_CONFIG["broker"]["urls"], expected)
        self.assertNotIn("url", K8S_CONFIG["broker"])


class Manifests(unittest.TestCase):
    def deployment(self, name):
        docs = [d for _, d in kind_docs("Deployment") if re.search(rf"^  name: {name}$", d, re.M)
                and "containers:" in d and "selector:" in d]
        self.assertEqual(len(docs), 1, f"one base Deployment {name}")
        return docs[0]

    def test_yaml_is_well_formed(self):
        for path in yaml_files():
            with open(path, encoding="utf-8") as f:
                text = f.read()
            self.assertNotIn("\t", text, f"{path}: tab character")
        try:
            import yaml
        except ImportError:
            yaml = None
        if yaml:
            for path in yaml_files():
                with open(path, encoding="utf-8") as f:
                    list(yaml.safe_load_all(f))
            return
        # No PyYAML: the npm package "yaml" (in .tools/) parses them instead.
        need(self, shutil.which("node") and npm_package("yaml") and "yes",
             "a YAML parser (PyYAML, or node with the npm package yaml)")
        r = subprocess.run(["node", VALIDATE, "--parse-only", *yaml_files()], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_probes_ports_and_grace(self):
        api_port = K8S_CONFIG["api"]["listen"].rsplit(":", 1)[1]
        health_port = K8S_CONFIG["consumer"]["health_listen"].rsplit(":", 1)[1]
        for name, port in (("msg-api", api_port), ("msg-consumer", health_port)):
            d = self.deployment(name)
            self.assertRegex(d, rf"containerPort: {port}\b", name)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                m = re.search(rf"{probe}:\n(?:\s+.*\n)*?\s+path: (\S+)", d)
                self.assertTrue(m, f"{name}: {probe}")
                self.assertIn(m.group(1), ("/livez", "/readyz"), f"{name}: {probe}")
            self.assertRegex(d, r"readinessProbe:\n(?:\s+.*\n)*?\s+path: /readyz")
            self.assertRegex(d, r"livenessProbe:\n(?:\s+.*\n)*?\s+path: /livez")
        grace = int(field(self.deployment("msg-consumer"), "terminationGracePeriodSeconds"))
        needed = (duration_ms(K8S_CONFIG["consumer"]["shutdown_grace"]) +
                  duration_ms(K8S_CONFIG["evolution"]["timeout"])) // 1000
        self.assertGreater(grace, needed)
        self.assertRegex(self.deployment("msg-api"), r"preStop:\n\s+sleep:\n\s+seconds: \d+")

    def test_restricted_security_context_and_volumes(self):
        for name in ("msg-api", "msg-consumer"):
            d = self.deployment(name)
            for needle in (r"runAsNonRoot: true", r"allowPrivilegeEscalation: false",
                           r"readOnlyRootFilesystem: true", r"drop: \[\"ALL\"\]",
                           r"seccompProfile:\n\s+type: RuntimeDefault",
                           r"mountPath: /tmp", r"emptyDir:", r"mountPath: /etc/msg\n",
                           r"configMap:\n\s+name: msg-config",
                           r"args: \[\"--config\", \"/etc/msg/service.yaml\"\]"):
                self.assertRegex(d, needle, f"{name}: {needle}")
            self.assertNotIn("subPath", d, f"{name}: the config is mounted as a directory")
            for key in ("amqp-password", "evolution-api-key", "api-key"):
                self.assertRegex(d, rf"name: msg-secrets\n\s+key: {key}\n", f"{name}: {key}")
            self.assertRegex(d, r"- name: MSG_NAMESPACE\n\s+valueFrom:\n\s+fieldRef:\n"
                                r"\s+fieldPath: metadata.namespace\n", name)
            # AMQP_URL would replace broker.urls, the list of every node.
            self.assertNotRegex(d, r"- name: AMQP_URL\n", name)
        self.assertNotRegex(self.deployment("msg-consumer"), r"(?m)^  replicas:", "KEDA owns it")

    def test_scaled_object(self):
        docs = kind_docs("ScaledObject")
        base = [d for p, d in docs if os.sep + "base" + os.sep in p]
        self.assertEqual(len(base), 1)
        so = base[0]
        self.assertEqual(field(so, "apiVersion"), "keda.sh/v1alpha1")
        self.assertRegex(so, r"triggers:\n\s+- type: rabbitmq\n")
        self.assertEqual(field(so, "protocol"), "http")
        self.assertEqual(field(so, "mode"), "QueueLength")
        self.assertTrue(re.fullmatch(field(so, "queueName"), CONFIG["topology"]["queue"]))
        self.assertRegex(so, r"scaleTargetRef:\n\s+name: msg-consumer\n")
        auth = re.search(r"authenticationRef:\n\s+name: (\S+)", so).group(1)
        tas = [d for _, d in kind_docs("TriggerAuthentication")]
        self.assertTrue(any(re.search(rf"^  name: {auth}$", d, re.M) and
                            re.search(r"parameter: host\n\s+name: msg-secrets\n\s+key: amqp-management-url", d)
                            for d in tas), "TriggerAuthentication with host from the Secret")
        for _, d in docs:
            lo, hi = field(d, "minReplicaCount"), field(d, "maxReplicaCount")
            if lo and hi:
                self.assertLessEqual(int(lo), int(hi))

    def test_rabbitmq_cluster_imports_the_definitions(self):
        docs = kind_docs("RabbitmqCluster")
        self.assertEqual(len(docs), 1)
        _, rc = docs[0]
        self.assertEqual(field(rc, "apiVersion"), "rabbitmq.com/v1beta1")
        m = re.search(r"load_definitions = (\S+)", rc)
        self.assertTrue(m)
        self.assertRegex(rc, rf"mountPath: {re.escape(m.group(1))}\n")
        self.assertRegex(rc, r"name: msg-rabbitmq-definitions\n\s+items:\n\s+- key: definitions.json")
        self.assertRegex(read("deploy", "k8s", "rabbitmq", "kustomization.yaml"),
                         r"name: msg-rabbitmq-definitions\n\s+files:\n\s+- definitions.json")
        users = json.loads(read("deploy", "k8s", "rabbitmq", "users.example.json"))
        self.assertTrue(users["users"] and users["permissions"])
        self.assertEqual(field(rc, "replicas"), "3")
        # A supported series: 3.13 or 4.x (3.10 is out of support).
        image = field(rc, "image")
        self.assertRegex(image, r"^rabbitmq:(3\.13|4\.\d+)(\.\d+)?-management$")

    def test_kustomizations_name_existing_files(self):
        dirs = [os.path.join(K8S, "base"), os.path.join(K8S, "rabbitmq"),
                os.path.join(K8S, "overlays", "dev"), os.path.join(K8S, "overlays", "prod")]
        for d in dirs:
            with open(os.path.join(d, "kustomization.yaml"), encoding="utf-8") as f:
                text = f.read()
            self.assertRegex(text, r"(?m)^kind: Kustomization$", d)
            refs = re.findall(r"^\s+- (?:path: )?([A-Za-z0-9_./-]+\.(?:yaml|json)|\.\./\S+)\s*$",
                              text, re.M)
            self.assertTrue(refs, d)
            for ref in refs:
                self.assertTrue(os.path.exists(os.path.join(d, ref)), f"{d}: {ref}")
            if os.path.basename(d) in ("dev", "prod"):
                self.assertRegex(text, r"(?m)^namespace: \S+$", d)
                self.assertRegex(text, r"newTag: \S+", d)
        self.assertNotRegex(read("deploy", "k8s", "base", "kustomization.yaml"), r"(?m)^namespace:")


VALIDATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "validate_k8s.mjs")


class Kustomize(unittest.TestCase):
    """Renders every kustomization with kubectl's built-in kustomize, then validates the rendered
    objects against their schemas (validate_k8s.mjs: the Deployments and the rest of the built-in
    kinds with kubernetes-models, the ScaledObject and TriggerAuthentication with
    @kubernetes-models/keda)."""

    @classmethod
    def setUpClass(cls):
        cls.kubectl = shutil.which("kubectl")
        cls.rendered = {}
        if not cls.kubectl:
            return
        for d in KUSTOMIZATIONS:
            cls.rendered[d] = subprocess.run([cls.kubectl, "kustomize", os.path.join(K8S, d)],
                                             capture_output=True, text=True, timeout=60)

    def render(self, d):
        need(self, self.kubectl, "kubectl (with its built-in kustomize)",
             "the machine image ships it; Debian bookworm packages no kustomize")
        r = self.rendered[d]
        self.assertEqual(r.returncode, 0, f"kubectl kustomize {d}: {r.stderr}")
        return r.stdout

    def test_render(self):
        for d, tag in (("base", "0.1.0"), ("overlays/dev", "dev"), ("overlays/prod", "0.1.0"),
                       ("rabbitmq", None)):
            out = self.render(d)
            if tag:
                self.assertEqual(set(re.findall(r"image: (\S+)", out)),
                                 {f"registry.example.com/msg:{tag}"}, d)
                self.assertRegex(out, r"name: msg-config-[a-z0-9]+\n", d)

    def validate(self, d):
        """validate_k8s.mjs's verdicts on the rendering of `d`: [{kind, name, status, errors}]."""
        text = self.render(d)
        need(self, shutil.which("node"), "node")
        for pkg in ("yaml", "kubernetes-models", "@kubernetes-models/keda"):
            need(self, npm_package(pkg) and pkg, f"the npm package {pkg} (in .tools/)")
        r = subprocess.run(["node", VALIDATE, "--json", "-"], input=text, capture_output=True,
                           text=True, timeout=120, env={**os.environ, "MSG_TOOLS": TOOLS})
        self.assertIn(r.returncode, (0, 1), r.stderr)
        results = json.loads(r.stdout)
        bad = [f"{x['kind']} {x['name']}: {'; '.join(x['errors'])}" for x in results
               if x["status"] == "invalid"]
        self.assertEqual(bad, [], f"{d}: objects that do not validate")
        self.assertEqual(r.returncode, 0, r.stderr)
        return results

    def test_rendered_objects_validate(self):
        for d in ("base", "overlays/dev", "overlays/prod"):
            results = self.validate(d)
            ok = [(x["kind"], x["name"]) for x in results if x["status"] == "ok"]
            self.assertEqual(sorted(n for k, n in ok if k == "Deployment"),
                             ["msg-api", "msg-consumer"], d)
            self.assertEqual([n for k, n in ok if k == "ScaledObject"], ["msg-consumer"], d)
            for kind, names in (("HorizontalPodAutoscaler", ["msg-api"]), ("Ingress", ["msg-api"]),
                                ("Service", ["msg-api", "msg-consumer"]),
                                ("NetworkPolicy", ["msg-api", "msg-consumer", "msg-egress"])):
                self.assertEqual(sorted(n for k, n in ok if k == kind), names, f"{d}: {kind}")
            monitors = [n for k, n in ok if k == "ServiceMonitor"]
            self.assertEqual(monitors, [] if d == "base" else ["msg"], d)
            unchecked = [f"{x['kind']} {x['name']}" for x in results if x["status"] != "ok"]
            self.assertEqual(unchecked, [], f"{d}: every kind has a model")

    def test_rabbitmq_objects_validate(self):
        results = self.validate("rabbitmq")
        # No npm model for the RabbitMQ Cluster Operator's CRD: Manifests checks its fields.
        self.assertEqual({(x["kind"], x["status"]) for x in results},
                         {("ConfigMap", "ok"), ("NetworkPolicy", "ok"),
                          ("RabbitmqCluster", "unchecked")})


class Rendered(unittest.TestCase):
    """What operators rely on, checked on the objects as kustomize renders them (parsed by
    validate_k8s.mjs --objects): labels, spreading, autoscaling, network policies, the Ingress,
    the ServiceMonitor, and that they all point at things that exist."""

    @classmethod
    def setUpClass(cls):
        cls.objects = {}
        kubectl = shutil.which("kubectl")
        if not (kubectl and shutil.which("node") and npm_package("yaml")):
            return
        for d in KUSTOMIZATIONS:
            r = subprocess.run([kubectl, "kustomize", os.path.join(K8S, d)],
                               capture_output=True, text=True, timeout=60)
            if r.returncode:
                continue
            p = subprocess.run(["node", VALIDATE, "--objects", "-"], input=r.stdout,
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, "MSG_TOOLS": TOOLS})
            if p.returncode == 0:
                cls.objects[d] = json.loads(p.stdout)

    def objs(self, d, kind=None):
        need(self, shutil.which("kubectl"), "kubectl (with its built-in kustomize)",
             "the machine image ships it; Debian bookworm packages no kustomize")
        need(self, shutil.which("node") and npm_package("yaml") and "yes",
             "node with the npm package yaml (in .tools/)")
        self.assertIn(d, self.objects, f"{d} renders and parses")
        return [o for o in self.objects[d] if kind is None or o["kind"] == kind]

    def one(self, d, kind, name):
        found = [o for o in self.objs(d, kind) if o["metadata"]["name"] == name]
        self.assertEqual(len(found), 1, f"{d}: one {kind} {name}")
        return found[0]

    OVERLAYS = {"base": ("msg", "0.1.0"), "overlays/dev": ("msg-dev", "dev"),
                "overlays/prod": ("msg", "0.1.0")}

    def test_recommended_labels(self):
        """app.kubernetes.io/part-of, instance and version on every object (the version is the
        image tag), name and component on each daemon's objects and pods; selectors keep only
        the name (they cannot change once applied)."""
        for d, (instance, version) in self.OVERLAYS.items():
            for o in self.objs(d):
                labels = o["metadata"].get("labels", {})
                what = f"{d}: {o['kind']} {o['metadata']['name']}"
                self.assertEqual(labels.get("app.kubernetes.io/part-of"), "msg", what)
                self.assertEqual(labels.get("app.kubernetes.io/instance"), instance, what)
                self.assertEqual(labels.get("app.kubernetes.io/version"), version, what)
            for name, component in (("msg-api", "api"), ("msg-consumer", "consumer")):
                dep = self.one(d, "Deployment", name)
                pod = dep["spec"]["template"]["metadata"]["labels"]
                for labels in (dep["metadata"]["labels"], pod):
                    self.assertEqual(labels["app.kubernetes.io/name"], name, d)
                    self.assertEqual(labels["app.kubernetes.io/component"], component, d)
                self.assertEqual(pod["app.kubernetes.io/instance"], instance, d)
                self.assertEqual(pod["app.kubernetes.io/version"], version, d)
                self.assertEqual(dep["spec"]["selector"]["matchLabels"],
                                 {"app.kubernetes.io/name": name}, d)
                image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
                self.assertTrue(image.endswith(":" + version), f"{d}: {image} vs version {version}")
                svc = self.one(d, "Service", name)
                self.assertEqual(svc["spec"]["selector"], {"app.kubernetes.io/name": name}, d)

    def test_spread_by_zone_and_host(self):
        for d in self.OVERLAYS:
            for name in ("msg-api", "msg-consumer"):
                spec = self.one(d, "Deployment", name)["spec"]["template"]["spec"]
                keys = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
                self.assertEqual(set(keys), {"topology.kubernetes.io/zone",
                                             "kubernetes.io/hostname"}, f"{d}: {name}")
                for c in keys.values():
                    self.assertEqual(c["labelSelector"]["matchLabels"],
                                     {"app.kubernetes.io/name": name})
                    self.assertEqual(c["whenUnsatisfiable"], "ScheduleAnyway")
        rc = self.one("rabbitmq", "RabbitmqCluster", "msg-rabbitmq")
        pod = rc["spec"]["override"]["statefulSet"]["spec"]["template"]["spec"]
        self.assertEqual({c["topologyKey"] for c in pod["topologySpreadConstraints"]},
                         {"topology.kubernetes.io/zone", "kubernetes.io/hostname"})

    def test_keda_counts_ready_and_unacked_of_the_job_queue_and_the_lanes(self):
        t = CONFIG["topology"]
        for d in self.OVERLAYS:
            so = self.one(d, "ScaledObject", "msg-consumer")
            spec = so["spec"]
            (trigger,) = spec["triggers"]
            m = trigger["metadata"]
            self.assertEqual(m["protocol"], "http", "ready + unacked needs the management API")
            self.assertEqual((m["mode"], m["useRegex"], m["operation"]), ("QueueLength", "true", "sum"))
            self.assertNotEqual(m.get("excludeUnacknowledged"), "true")
            rx = re.compile(m["queueName"])
            for q in (t["queue"], f"{t['queue']}.lane.mi_instancia", f"{t['queue']}.lane.a.b"):
                self.assertTrue(rx.fullmatch(q) and rx.search(q), f"{d}: counts {q}")
            defs = json.loads(read("deploy", "rabbitmq", "definitions.json"))
            for q in [x["name"] for x in defs["queues"]] + [f"{t['queue']}x", f"x{t['queue']}"]:
                if q != t["queue"]:
                    self.assertIsNone(rx.search(q), f"{d}: must not count {q}")
            # Scale-down through the HPA's behavior: cooldownPeriod only acts at zero.
            self.assertGreaterEqual(spec["minReplicaCount"], 1, d)
            self.assertNotIn("cooldownPeriod", spec, d)
            down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
            self.assertGreater(down["stabilizationWindowSeconds"], 0, d)
            self.assertTrue(down["policies"], d)
            ta = self.one(d, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            (ref,) = ta["spec"]["secretTargetRef"]
            self.assertEqual((ref["parameter"], ref["name"], ref["key"]),
                             ("host", "msg-secrets", "amqp-management-url"))
        dev_secret = self.one("overlays/dev", "Secret", "msg-secrets")
        import base64
        url = base64.b64decode(dev_secret["data"]["amqp-management-url"]).decode()
        self.assertRegex(url, r"^http://keda:[^@/]+@msg-rabbitmq:15672/%2f$")
        users = json.loads(read("deploy", "k8s", "rabbitmq", "users.example.json"))
        keda = [u for u in users["users"] if u["name"] == "keda"]
        self.assertEqual(keda and keda[0]["tags"], ["monitoring"], "KEDA's read-only user")

    def test_api_scales_on_cpu(self):
        for d in self.OVERLAYS:
            hpa = self.one(d, "HorizontalPodAutoscaler", "msg-api")["spec"]
            self.assertEqual(hpa["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment",
                                                     "name": "msg-api"})
            (metric,) = hpa["metrics"]
            self.assertEqual((metric["type"], metric["resource"]["name"]), ("Resource", "cpu"))
            self.assertEqual(metric["resource"]["target"]["type"], "Utilization")
            self.assertLessEqual(hpa["minReplicas"], hpa["maxReplicas"])
            self.assertIn("scaleDown", hpa["behavior"])
            dep = self.one(d, "Deployment", "msg-api")
            self.assertNotIn("replicas", dep["spec"], f"{d}: the HPA owns the count")
            self.assertIn("cpu", dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"])
        self.assertGreaterEqual(self.one("overlays/prod", "HorizontalPodAutoscaler",
                                         "msg-api")["spec"]["minReplicas"], 2)

    def ports_of(self, d, name):
        c = self.one(d, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        return {p["name"]: p["containerPort"] for p in c["ports"]}

    def test_network_policies(self):
        """clients -> api; both daemons -> broker and DNS; consumer -> Evolution API; the
        broker's policy lets the daemons in."""
        def selects(policy, name):
            sel = policy["spec"]["podSelector"]
            if "matchLabels" in sel:
                return sel["matchLabels"].get("app.kubernetes.io/name") == name
            return any(e["key"] == "app.kubernetes.io/name" and e["operator"] == "In" and
                       name in e["values"] for e in sel.get("matchExpressions", []))

        def egress_ports(policies, name, peer):
            out = set()
            for p in policies:
                if selects(p, name):
                    for rule in p["spec"].get("egress", []):
                        if any(peer(t) for t in rule.get("to", [])):
                            out |= {(x["port"], x.get("protocol", "TCP")) for x in rule["ports"]}
            return out

        broker = lambda t: t.get("podSelector", {}).get("matchLabels", {}).get(
            "app.kubernetes.io/name") == "msg-rabbitmq"
        dns = lambda t: t.get("podSelector", {}).get("matchLabels", {}).get("k8s-app") == "kube-dns"
        outside = lambda t: t.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
        for d in self.OVERLAYS:
            pols = self.objs(d, "NetworkPolicy")
            for name in ("msg-api", "msg-consumer"):
                self.assertIn((5672, "TCP"), egress_ports(pols, name, broker), f"{d}: {name}")
                self.assertTrue({(53, "UDP"), (53, "TCP")} <= egress_ports(pols, name, dns), name)
                types = set().union(*(p["spec"]["policyTypes"] for p in pols if selects(p, name)))
                self.assertEqual(types, {"Ingress", "Egress"}, f"{d}: {name} is locked both ways")
            self.assertTrue({(443, "TCP"), (8080, "TCP")} <=
                            egress_ports(pols, "msg-consumer", outside), "consumer -> Evolution API")
            self.assertEqual(egress_ports(pols, "msg-api", outside), set(), "the api calls out to no one")
            for name, port in (("msg-api", "http"), ("msg-consumer", "health")):
                ingress = [r for p in pols if selects(p, name) for r in p["spec"].get("ingress", [])]
                self.assertEqual([[x["port"] for x in r["ports"]] for r in ingress], [[port]], name)
                self.assertIn(port, self.ports_of(d, name))
        (rmq,) = self.objs("rabbitmq", "NetworkPolicy")
        daemons = [r for r in rmq["spec"]["ingress"]
                   if any("msg-api" in e["values"] and "msg-consumer" in e["values"]
                          for f in r.get("from", [])
                          for e in f.get("podSelector", {}).get("matchExpressions", []))]
        self.assertEqual(len(daemons), 1)
        self.assertIn(5672, [x["port"] for x in daemons[0]["ports"]])
        self.assertEqual(rmq["spec"]["podSelector"]["matchLabels"],
                         {"app.kubernetes.io/name": "msg-rabbitmq"})

    def test_ingress_buffers_and_terminates_tls(self):
        limit = {"k": 1024, "m": 1024 * 1024}
        for d in self.OVERLAYS:
            ing = self.one(d, "Ingress", "msg-api")
            a = ing["metadata"]["annotations"]
            n = "nginx.ingress.kubernetes.io/"
            self.assertEqual(a[n + "proxy-request-buffering"], "on")
            body = re.fullmatch(r"(\d+)([km])", a[n + "proxy-body-size"])
            self.assertTrue(body)
            max_body = re.fullmatch(r"(\d+)KiB", CONFIG["api"]["max_body"])
            self.assertGreater(int(body.group(1)) * limit[body.group(2)],
                               int(max_body.group(1)) * 1024,
                               "msg-api, not nginx, answers a body over api.max_body")
            for t in ("proxy-connect-timeout", "proxy-send-timeout", "proxy-read-timeout"):
                self.assertGreater(int(a[n + t]), 5 if t == "proxy-read-timeout" else 0, t)
            spec = ing["spec"]
            (rule,) = spec["rules"]
            (tls,) = spec["tls"]
            self.assertEqual(tls["hosts"], [rule["host"]], d)
            self.assertTrue(tls["secretName"])
            (path,) = rule["http"]["paths"]
            self.assertEqual(path["backend"]["service"], {"name": "msg-api", "port": {"name": "http"}})
            svc = self.one(d, "Service", "msg-api")
            self.assertIn("http", [p["name"] for p in svc["spec"]["ports"]])
        self.assertNotEqual(self.one("overlays/dev", "Ingress", "msg-api")["spec"]["rules"][0]["host"],
                            self.one("overlays/prod", "Ingress", "msg-api")["spec"]["rules"][0]["host"])

    def test_service_monitor_scrapes_both_daemons(self):
        for d in ("overlays/dev", "overlays/prod"):
            (sm,) = self.objs(d, "ServiceMonitor")
            (expr,) = sm["spec"]["selector"]["matchExpressions"]
            self.assertEqual((expr["key"], expr["operator"], sorted(expr["values"])),
                             ("app.kubernetes.io/name", "In", ["msg-api", "msg-consumer"]))
            ports = {e["port"]: e["path"] for e in sm["spec"]["endpoints"]}
            self.assertEqual(ports, {"http": "/metrics", "health": "/metrics"})
            for name, port in (("msg-api", "http"), ("msg-consumer", "health")):
                svc = self.one(d, "Service", name)
                self.assertIn(port, [p["name"] for p in svc["spec"]["ports"]], f"{d}: {name}")
                self.assertIn(port, self.ports_of(d, name))


class Compose(unittest.TestCase):
    def setUp(self):
        self.text = read("compose.yaml")

    def service(self, name):
        """The text of one service of compose.yaml, up to the next one."""
        m = re.search(rf"(?ms)^  {re.escape(name)}:\n(.*?)(?=^  [a-z-]+:\n|^\S|\Z)", self.text)
        self.assertTrue(m, name)
        body = m.group(1)
        if "    <<: *msg\n" in body:  # the daemons' shared settings, indented as the service's
            anchor = re.search(r"(?ms)^x-msg: &msg\n(.*?)(?=^\S)", self.text).group(1)
            body += "".join("  " + l for l in anchor.splitlines(True))
        return body

    def test_mounted_files_exist(self):
        for src in re.findall(r"^\s+- (\.{1,2}/[^:]+):", self.text, re.M):
            self.assertTrue(os.path.exists(os.path.join(ROOT, src)), src)
        self.assertFalse(os.path.exists(os.path.join(DEPLOY, "compose.yaml")),
                         "one compose file, at the top level")

    def test_services(self):
        t = self.text
        for svc in ("rabbitmq", "msg-api", "msg-consumer", "fake-evolution"):
            self.assertRegex(t, rf"(?m)^  {svc}:$", svc)
        self.assertEqual(len(re.findall(r"^    healthcheck:", t, re.M)), 4)
        self.assertIn("condition: service_healthy", t)
        for var in ("AMQP_URL", "EVOLUTION_API_URL", "EVOLUTION_API_KEY",
                    "EVOLUTION_INSTANCE_NAME", "APP_PORT", "LOG_LEVEL"):
            self.assertRegex(t, rf"{var}: \$\{{{var}:-", var)
        consumer = self.service("msg-consumer")
        self.assertNotIn("ports:", consumer, "--scale needs no published port")
        grace = re.search(r"stop_grace_period: (\S+)", consumer).group(1)
        needed = duration_ms(CONFIG["consumer"]["shutdown_grace"]) + \
            duration_ms(CONFIG["evolution"]["timeout"])
        self.assertGreater(duration_ms(grace), needed)
        conf = read("deploy", "compose", "rabbitmq.conf")
        self.assertRegex(conf, r"(?m)^load_definitions = /etc/rabbitmq/definitions.d$")
        users = json.loads(read("deploy", "compose", "users.json"))
        self.assertEqual(users["users"][0]["name"], "guest")

    def test_every_image_is_built_here(self):
        """No registry answers on the machines this runs on: every service builds its image from
        a Dockerfile of deploy/docker/ (whose only base is debian:<release>-slim, which
        deploy/docker/base-image.sh makes when it cannot be pulled)."""
        for svc in ("rabbitmq", "msg-api", "msg-consumer", "fake-evolution", "prometheus"):
            body = self.service(svc)
            image = re.search(r"(?m)^    image: (\S+)$", body).group(1)
            self.assertTrue(image.endswith(":local"), f"{svc}: {image} is built, not pulled")
            dockerfile = re.search(r"(?m)^      dockerfile: (\S+)$", body)
            self.assertTrue(dockerfile, f"{svc}: builds from a Dockerfile")
            self.assertTrue(os.path.exists(os.path.join(ROOT, dockerfile.group(1))), svc)
        self.assertNotRegex(self.text, r"image: rabbitmq:", "the broker is built from Debian's package")

    def test_locked_down(self):
        """Every container: a non-root user, a read-only root filesystem, no capabilities."""
        for svc in ("rabbitmq", "msg-api", "msg-consumer", "fake-evolution", "prometheus"):
            body = self.service(svc)
            for needle in (r"read_only: true", r"no-new-privileges:true", r"cap_drop:\n\s+- ALL",
                           r"tmpfs:\n\s+- /tmp\n"):
                self.assertRegex(body, needle, svc)
        for name in DOCKERFILES:
            user = re.findall(r"(?m)^USER (\S+)$", read("deploy", "docker", name))
            self.assertTrue(user and user[-1] not in ("root", "0", "0:0"), f"{name}: USER {user}")

    def test_fake_comes_up_by_itself(self):
        """The quick start runs without EVOLUTION_API_URL: the fake is no profile away, the
        consumers default to it, and it says which case it is in (and exits 0 when a real
        Evolution API is set, which restart: on-failure leaves alone)."""
        fake = self.service("fake-evolution")
        for svc in ("rabbitmq", "msg-api", "msg-consumer", "fake-evolution"):
            self.assertNotIn("profiles:", self.service(svc), svc)
        self.assertIn("EVOLUTION_API_URL: ${EVOLUTION_API_URL:-http://fake-evolution:8080}",
                      self.text)
        self.assertIn("EVOLUTION_API_URL: ${EVOLUTION_API_URL:-}", fake)
        self.assertIn("EVOLUTION_API_URL is not set", fake)
        self.assertIn("restart: on-failure", fake)
        self.assertIn('--api-key "${EVOLUTION_API_KEY:-local-dev-key}"', fake)
        self.assertIn("fake-evolution:\n        condition: service_started",
                      self.service("msg-consumer"))

    def test_monitoring_profile(self):
        """Prometheus runs only in the "monitoring" profile, and its scrape configuration
        (deploy/monitoring/prometheus.yml) names what compose runs: msg-api on the port its
        command writes in (APP_PORT), every msg-consumer on its health port, the broker's
        rabbitmq_prometheus plugin (enabled in its image) per object; the rules it loads are
        mounted where it reads them."""
        self.assertEqual(re.findall(r"(?m)^    profiles: (.*)$", self.text), ['["monitoring"]'])
        prom = self.service("prometheus")
        self.assertIn('profiles: ["monitoring"]', prom)
        conf = read("deploy", "monitoring", "prometheus.yml")
        self.assertIn('targets: ["msg-api:8001"]', conf)
        self.assertIn('sed "s/msg-api:8001/msg-api:$$APP_PORT/"', prom)
        self.assertIn("APP_PORT: ${APP_PORT:-8001}", prom)
        self.assertIn('names: ["msg-consumer"]', conf)
        self.assertRegex(conf, r"port: 8002\b")
        self.assertIn('- "8002"', self.service("msg-consumer"))
        self.assertIn("metrics_path: /metrics/per-object", conf)
        self.assertIn('targets: ["rabbitmq:15692"]', conf)
        self.assertIn("rabbitmq_prometheus", read("deploy", "docker", "rabbitmq.Dockerfile"))
        rules = re.search(r"(?m)^  - (/etc/prometheus/msg/\S+)$", conf).group(1)
        self.assertIn(f"./deploy/monitoring/{os.path.basename(rules)}:{rules}:ro", prom)
        self.assertIn("./deploy/monitoring/prometheus.yml:/etc/prometheus/msg/prometheus.yml:ro", prom)
        self.assertIn("docker-compose --profile monitoring up --build -d", self.text)

    def test_published_ports_are_local_and_movable(self):
        for port in re.findall(r'(?m)^      - "([^"]+)"$', self.text):
            if port.count(":") == 2:
                self.assertTrue(port.startswith("127.0.0.1:${"), f"{port}: loopback, variable")

    def test_docker_compose_accepts_it(self):
        """Debian's docker-compose (1.x) validates the file against the Compose schema, with
        and without a real Evolution API; no Docker engine is needed for `config`."""
        compose = need(self, shutil.which("docker-compose"), "docker-compose")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("COMPOSE_") and k != "EVOLUTION_API_URL"}
        for extra, profile in (({}, []), ({"EVOLUTION_API_URL": "https://evolution.example.com"}, []),
                               ({}, ["--profile", "monitoring"])):
            r = subprocess.run([compose, "-f", os.path.join(ROOT, "compose.yaml"), *profile,
                                "config", "-q"],
                               capture_output=True, text=True, timeout=60, env={**env, **extra},
                               cwd=ROOT)
            self.assertEqual(r.returncode, 0, f"docker-compose {' '.join(profile)} config -q {extra}: "
                                              f"{r.stdout}{r.stderr}")


DOCKERFILES = ("Dockerfile", "rabbitmq.Dockerfile", "fake-evolution.Dockerfile",
               "prometheus.Dockerfile")


class Dockerfile(unittest.TestCase):
    def setUp(self):
        self.text = read("deploy", "docker", "Dockerfile")
        self.lines = [l for l in self.text.replace("\\\n", " ").splitlines()
                      if l.strip() and not l.lstrip().startswith("#")]

    def test_shape(self):
        froms = [l for l in self.lines if l.startswith("FROM ")]
        self.assertGreaterEqual(len(froms), 2, "multi-stage")
        self.assertIn("-slim", froms[-1])
        user = [l for l in self.lines if l.startswith("USER ")]
        self.assertTrue(user and re.fullmatch(r"USER [1-9]\d*(:[1-9]\d*)?", user[-1].strip()),
                        "numeric non-root USER")
        for instr in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
            for l in self.lines:
                if l.startswith(instr + " "):
                    self.assertRegex(l, r'(CMD|ENTRYPOINT) \[".*"\]\s*$', f"exec form: {l}")
        self.assertTrue(any(l.startswith("HEALTHCHECK ") for l in self.lines))
        self.assertIn("MSG_CONFIG=/etc/msg/service.yaml", self.text)

    def test_copied_sources_exist_and_are_in_the_context(self):
        ignore = read(".dockerignore").split()
        included = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
        for name in DOCKERFILES:
            text = read("deploy", "docker", name).replace("\\\n", " ")
            for l in text.splitlines():
                if l.startswith("COPY ") and "--from=" not in l:
                    for src in l.split()[1:-1]:
                        self.assertTrue(os.path.exists(os.path.join(ROOT, src)), f"{name}: {src}")
                        norm = src.rstrip("/").lstrip("./")
                        self.assertTrue(any(norm == i or norm.startswith(i + "/") for i in included),
                                        f"{name}: .dockerignore excludes {src}")

    def test_only_base_images_that_base_image_sh_makes(self):
        """Every stage of every Dockerfile starts from debian:<release>-slim, and each such
        release is one deploy/docker/base-image.sh provides by default where no registry
        answers; no "# syntax=" line, which makes BuildKit fetch a frontend image."""
        script = read("deploy", "docker", "base-image.sh")
        made = re.search(r"(?m)^\[ \$# -gt 0 \] \|\| set -- (.*)$", script).group(1).split()
        releases = {}
        for name in DOCKERFILES:
            text = read("deploy", "docker", name)
            self.assertNotRegex(text, r"(?m)^# *syntax=", name)
            for base in re.findall(r"(?m)^FROM (\S+)", text):
                self.assertEqual(base, "debian:${DEBIAN_RELEASE}-slim", f"{name}: FROM {base}")
            releases[name] = re.search(r"(?m)^ARG DEBIAN_RELEASE=(\S+)$", text).group(1)
            self.assertIn(f"debian:{releases[name]}-slim", made, name)
        self.assertEqual(releases["rabbitmq.Dockerfile"], "trixie", "RabbitMQ 4.x, not 3.10")
        self.assertNotRegex(script, r"https?://[a-z]", "the mirror comes from the host's apt sources")

    def test_builder_stage_builds_from_what_it_copies(self):
        """The build stage's COPY lines bring everything the build reads: the same CMake
        build, run on a copy of only those paths, succeeds (warnings as errors, Release)."""
        first_stage = self.text.split("\nFROM ", 2)[1]
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        for l in first_stage.replace("\\\n", " ").splitlines():
            if l.startswith("COPY ") and "--from=" not in l:
                for src in l.split()[1:-1]:
                    dst = os.path.join(tmp, src)
                    if os.path.isdir(os.path.join(ROOT, src)):
                        shutil.copytree(os.path.join(ROOT, src), dst)
                    else:
                        os.makedirs(os.path.dirname(dst), exist_ok=True)
                        shutil.copy(os.path.join(ROOT, src), dst)
        build = os.path.join(tmp, "build")
        for cmd in (["cmake", "-S", tmp, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                     "-DBUILD_TESTING=OFF", "-DWERROR=ON"],
                    ["cmake", "--build", build, "-j2"]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            self.assertEqual(r.returncode, 0, f"{' '.join(cmd)}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")


class DockerfileLint(unittest.TestCase):
    """Two linters from npm (in .tools/) accept every Dockerfile of deploy/docker/."""
    PATHS = [os.path.join(DEPLOY, "docker", n) for n in DOCKERFILES]

    def test_dockerfile_utils(self):
        """dockerfile-utils (the VS Code Docker extension's linter): no error and no warning."""
        tool = need(self, npm_tool("dockerfile-utils"), "dockerfile-utils (npm)")
        for path in self.PATHS:
            r = subprocess.run([tool, "lint", path], capture_output=True, text=True, timeout=60)
            self.assertEqual((r.returncode, r.stdout.strip()), (0, ""), path + r.stdout + r.stderr)

    def test_dockerfilelint(self):
        """dockerfilelint: no issue but one false positive, which is checked here instead.
        dockerfilelint 1.8 reads HEALTHCHECK's options with the regex --\\w+, so it takes
        --start-period (valid since Docker 17.05) for an unknown "--start" and reports "Invalid
        Argument Format". Its only switch for that is the rule invalid_format, which would also
        silence its ENV and SHELL checks, so the test drops exactly that report (on the
        HEALTHCHECK line, when every option is one Docker knows and has a value)."""
        tool = need(self, npm_tool("dockerfilelint"), "dockerfilelint (npm)")
        for path in self.PATHS[1:]:  # no HEALTHCHECK there, so no false positive either
            r = subprocess.run([tool, "-o", "json", path], capture_output=True, text=True,
                               timeout=60)
            self.assertEqual(json.loads(r.stdout)["files"][0]["issues"], [], path)
        r = subprocess.run([tool, "-o", "json", self.PATHS[0]], capture_output=True, text=True,
                           timeout=60)
        self.assertIn(r.returncode, (0, 1), r.stderr)
        issues = json.loads(r.stdout)["files"][0]["issues"]
        text = read("deploy", "docker", "Dockerfile")
        healthcheck = re.search(r"^HEALTHCHECK (.*?)\bCMD ", text.replace("\\\n", " "), re.M | re.S)
        self.assertTrue(healthcheck)
        options = healthcheck.group(1).split()
        known = {"--interval", "--timeout", "--start-period", "--start-interval", "--retries"}
        self.assertTrue(all("=" in o and o.split("=")[0] in known and o.split("=")[1] for o in options),
                        f"HEALTHCHECK options: {options}")
        for issue in issues:
            false_positive = (issue["title"] == "Invalid Argument Format" and
                              issue["content"].startswith("HEALTHCHECK ") and
                              any(o.startswith("--start-") for o in options))
            self.assertTrue(false_positive, f"dockerfilelint: line {issue['line']}: "
                                            f"{issue['title']}: {issue['content']}")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response({"/ok": 200, "/down": 503}.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Probe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise unittest.SkipTest("no C compiler")
        cls.tmp = tempfile.mkdtemp()
        cls.probe = os.path.join(cls.tmp, "msg-probe")
        subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", cls.probe,
                        os.path.join(DEPLOY, "docker", "probe.c")], check=True)
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        cls.port = cls.server.server_address[1]
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_probe(self, *args, env=None):
        e = {k: v for k, v in os.environ.items() if not k.startswith("MSG_PROBE")}
        e.update(env or {})
        return subprocess.run([self.probe, *args], env=e, capture_output=True, timeout=10)

    def test_answers(self):
        base = f"http://127.0.0.1:{self.port}"
        self.assertEqual(self.run_probe(base + "/ok").returncode, 0)
        self.assertEqual(self.run_probe(base + "/down").returncode, 1)
        self.assertEqual(self.run_probe(base + "/missing").returncode, 1)
        self.assertEqual(self.run_probe(env={"MSG_PROBE_URL": base + "/ok"}).returncode, 0)
        for bad in ("https://127.0.0.1/", "http://127.0.0.1:x/", "nonsense"):
            r = self.run_probe(bad)
            self.assertEqual(r.returncode, 1, bad)
            self.assertIn(b"expected http://", r.stderr)

    def test_refused_and_timeout(self):
        s = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
        port = s.server_address[1]
        s.server_close()  # nothing listens there now
        self.assertEqual(self.run_probe(f"http://127.0.0.1:{port}/ok").returncode, 1)
        import socket
        with socket.socket() as silent:  # accepts (backlog) but never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)
            r = self.run_probe(f"http://127.0.0.1:{silent.getsockname()[1]}/ok",
                               env={"MSG_PROBE_TIMEOUT": "1"})
            self.assertEqual(r.returncode, 1)
            self.assertIn(b"timed out", r.stderr)


class Readme(unittest.TestCase):
    def test_quick_start_shows_compose_beside_run_local(self):
        """The quick start's compose commands are the ones that work on Debian (its
        docker-compose; no registry needed once base-image.sh ran), next to run-local.sh, and
        what they name exists."""
        text = read("README.md")
        quick = text.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
        blocks = re.findall(r"```sh\n(.*?)```", quick, re.S)
        self.assertIn("scripts/run-local.sh\n", blocks)
        self.assertIn("apt-get install docker.io docker-compose debootstrap\n"
                      "deploy/docker/base-image.sh\n"
                      "docker-compose up --build\n", blocks)
        for script in ("scripts/run-local.sh", "deploy/docker/base-image.sh",
                       "scripts/compose-test.sh"):
            self.assertTrue(os.access(os.path.join(ROOT, script), os.X_OK), script)
        self.assertIn("docker-compose up -d --scale msg-consumer=3", quick)
        self.assertTrue(os.path.exists(os.path.join(ROOT, "compose.yaml")),
                        "docker-compose finds compose.yaml in the directory it runs in")

    def test_monitoring_subsection(self):
        """Operations says how to run and wire the monitoring: the compose profile's command as
        compose.yaml and scripts/compose-test.sh run it, the dashboard, the rules, the
        ServiceMonitor; and what it names exists."""
        text = read("README.md")
        ops = text.split("\n## Operations", 1)[1].split("\n## ", 1)[0]
        self.assertIn("\n### Monitoring\n", ops)
        section = ops.split("\n### Monitoring\n", 1)[1].split("\n### ", 1)[0]
        self.assertIn("docker-compose --profile monitoring up --build -d\n", section)
        self.assertIn("dcm up -d", read("scripts", "compose-test.sh"))
        for path in ("deploy/monitoring/dashboard.json", "deploy/monitoring/alerts.yaml",
                     "deploy/monitoring/prometheus.yml", "deploy/k8s/components/monitoring",
                     "tests/monitoring/run.sh", "tests/monitoring/alerts.test.yaml"):
            self.assertIn(path, section)
            self.assertTrue(os.path.exists(os.path.join(ROOT, path)), path)
        self.assertIn("DS_PROMETHEUS", section)

    def test_operator_guide(self):
        text = read("README.md")
        self.assertTrue("\n## Deploying" in text, "README.md has no '## Deploying' section")
        section = text.split("\n## Deploying", 1)[1]
        for needle in ("compose.yaml", "--scale msg-consumer", "overlays/prod",
                       "ScaledObject", "msg-secrets", "15672"):
            self.assertTrue(needle in section, f"the Deploying section does not mention {needle}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
