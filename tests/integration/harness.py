"""Harness for the integration tests: real `msg-api` and `msg-consumer` daemons against the real
RabbitMQ, with the fake Evolution API (tests/fake/fake_evolution.py) in place of WhatsApp.

A test derives from IntegrationTest and reads like:

    class SendTest(IntegrationTest):
        def test_send(self):
            self.fake = self.start_fake()
            cfg = self.config()
            api, consumer = self.start_api(cfg), self.start_consumer(cfg)
            r = post_message(api, "+5511999999999", "hi")
            doc = wait_task_status(api, r.json["task_id"], "SUCCESS")

Every test run gets its own topology names (exchange `t-<name>-<random>`, queues under it) and
its own ports, so tests can run side by side on one broker; the names are deleted through the
management API when the test ends (and at interpreter exit as a fallback).

Environment:
  MSG_API_BIN        path of the msg-api executable      } each wins over MSG_BIN_DIR
  MSG_CONSUMER_BIN   path of the msg-consumer executable }
  MSG_BIN_DIR        directory holding the executables: either both directly in it, or in its
                     api/ and consumer/ subdirectories (a CMake build tree); default: the
                     build/ directory of this source tree
  AMQP_URL           broker for the daemons, default amqp://guest:guest@127.0.0.1:5672/%2f
  RABBITMQ_MGMT_URL  management API, default http://127.0.0.1:15672 (guest/guest unless the URL
                     carries user:password@)
  MSG_KEEP_TMP=1     keep every test's directory, not only those of failed tests
  RABBITMQ_NODE      node name for rabbitmqctl (-n) in the tests that stop and start the
                     broker's application (broker_outage); default: rabbitmqctl's own default

Every daemon log is scanned at clean-up for sanitizer reports (AddressSanitizer,
UndefinedBehaviorSanitizer "runtime error:", LeakSanitizer, ThreadSanitizer): one fails the
test, so an instrumented build (tests/sanitize.sh) turns any report into a test failure.

Standard library only (Python 3.11).
"""

import atexit
import base64
import collections
import datetime
import http.client as httpclient
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

FAKE_SCRIPT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "..", "fake", "fake_evolution.py"))
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
MGMT_URL = os.environ.get("RABBITMQ_MGMT_URL", "http://127.0.0.1:15672")
EVOLUTION_KEY = "test-evolution-key"
EVOLUTION_INSTANCE = "test-inst"

# The daemons let these variables override the file (DESIGN §5). They are removed from the
# daemons' environment so that the config file a test wrote is what actually runs; a test that
# wants an override passes it through env=.
OVERRIDE_VARS = ("AMQP_URL", "EVOLUTION_API_URL", "EVOLUTION_API_KEY", "EVOLUTION_INSTANCE_NAME",
                 "APP_HOST", "APP_PORT", "LOG_LEVEL", "MSG_CONFIG")

# Whatever is still running or still declared at interpreter exit (a test that crashed the
# harness, an interrupted run) is stopped / deleted by _cleanup_at_exit.
_live_services = set()
_pending_prefixes = set()

Response = collections.namedtuple("Response", "status headers body json")
Response.__doc__ = "An HTTP answer: status, headers (lower-case names), body bytes, parsed JSON or None."


# --- small utilities -----------------------------------------------------------------------------

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text):
    """Seconds since the epoch of an RFC 3339 time; raises ValueError if it is not one."""
    if not isinstance(text, str) or not RFC3339_RE.match(text):
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=10):
    """One request on a fresh connection; returns a Response and never raises on 4xx/5xx (only
    on connection problems: OSError). A dict or list body is sent as JSON (Content-Type set
    unless given); str is sent UTF-8 encoded, bytes as they are."""
    parts = urllib.parse.urlsplit(url)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = httpclient.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request(method, target, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    lowered = {}
    for name, value in resp.getheaders():
        name = name.lower()
        lowered[name] = f"{lowered[name]}, {value}" if name in lowered else value
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return Response(resp.status, lowered, raw, parsed)


def wait_for(predicate, timeout, interval=0.05, what="the condition"):
    """Calls predicate until it returns something truthy, and returns that; raises
    AssertionError (a test failure, not an error) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


SOURCE_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
_BIN_ENV = {"msg-api": ("MSG_API_BIN", "api"), "msg-consumer": ("MSG_CONSUMER_BIN", "consumer")}


def executable(name):
    """The path of `name` (msg-api or msg-consumer): $MSG_API_BIN / $MSG_CONSUMER_BIN, else
    $MSG_BIN_DIR/<name> or $MSG_BIN_DIR/<api|consumer>/<name>, else the same under
    <source>/build. Raises RuntimeError when none is an executable file."""
    var, subdir = _BIN_ENV[name]
    if os.environ.get(var):
        candidates = [os.environ[var]]
    else:
        base = os.environ.get("MSG_BIN_DIR") or os.path.join(SOURCE_ROOT, "build")
        candidates = [os.path.join(base, name), os.path.join(base, subdir, name)]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"{name} not found (tried {', '.join(candidates)}): set {var} or MSG_BIN_DIR")


def _connect_url(listen):
    """The http:// base URL to reach a daemon listening on `listen` (host:port); a wildcard
    host is reached through loopback."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    return f"http://{host}:{port}"


def _next_log_path(log_dir, stem):
    """log_dir/stem.log, or stem-2.log, stem-3.log... when a test restarts the same daemon."""
    path, n = os.path.join(log_dir, f"{stem}.log"), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(log_dir, f"{stem}-{n}.log")
    return path


# --- child processes -----------------------------------------------------------------------------

class Service:
    """A child process whose stdout and stderr go to a log file. Usable as a context manager;
    .stop() is idempotent."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.log_path = log_path
        self._log_file = open(log_path, "ab")
        try:
            # A session of its own: a Ctrl-C at the terminal reaches the test runner, which then
            # stops the children in order, instead of every process dying at once.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError:
            self._log_file.close()
            raise
        self.pid = self.proc.pid
        _live_services.add(self)

    def running(self):
        return self.proc.poll() is None

    def begin_stop(self, sig=signal.SIGTERM):
        """Sends `sig` without waiting (stop() then only waits): several services can be told
        to stop at once. A second begin_stop or stop does not signal again (a second SIGTERM
        means "exit at once" to the daemons)."""
        if self.proc.poll() is None and not getattr(self, "_signalled", False):
            self._signalled = True
            self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Sends `sig` (unless begin_stop already sent one), waits up to `timeout` seconds, then
        SIGKILLs. Returns the exit code (negative: killed by that signal, so -9 after a
        timeout means `sig` was ignored)."""
        if self.proc.poll() is None:
            if sig == signal.SIGTERM:
                self.begin_stop(sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        _live_services.discard(self)
        return self.proc.returncode

    def kill(self):
        """SIGKILL: the crash case. Returns the exit code (-9)."""
        return self.stop(signal.SIGKILL)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def log_tail(self, lines=40):
        return "\n".join(self.log().splitlines()[-lines:])

    def _fail_start(self, why):
        """Stops the half-started process and raises with the end of its log."""
        self.stop(timeout=2)
        raise RuntimeError(f"{self.name} (pid {self.pid}) {why}; log {self.log_path} ends with:\n{self.log_tail()}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class FakeEvolution(Service):
    """The fake Evolution API, with its control API wrapped (see fake_evolution.py). It keeps
    its records in a state file across stop() and start() (the same port)."""

    def __init__(self, log_dir, api_key, instances, latency_ms, api_version, verbose):
        self._port_file = os.path.join(log_dir, f"fake-{secrets.token_hex(4)}.port")
        self.state_file = os.path.join(log_dir, f"fake-{secrets.token_hex(4)}.state.json")
        self._argv = [sys.executable, FAKE_SCRIPT, "--host", "127.0.0.1", "--port", "0",
                      "--api-key", api_key, "--instances", ",".join(instances), "--latency-ms", str(latency_ms),
                      "--api-version", api_version, "--port-file", self._port_file,
                      "--state-file", self.state_file] + (["--verbose"] if verbose else [])
        super().__init__("fake-evolution", self._argv, _next_log_path(log_dir, "fake-evolution"))
        self.api_key, self.instances = api_key, list(instances)
        self.port = self._wait_port_file()
        # A restart binds this same port: the daemons' config keeps pointing at it.
        self._argv[self._argv.index("--port") + 1] = str(self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url

    def _wait_port_file(self, timeout=10):
        deadline = time.monotonic() + timeout
        while not os.path.exists(self._port_file):
            if not self.running():
                self._fail_start(f"exited with {self.proc.returncode} at start-up")
            if time.monotonic() > deadline:
                self._fail_start(f"wrote no port file within {timeout} s")
            time.sleep(0.02)
        with open(self._port_file) as f:
            port = int(f.read())
        os.unlink(self._port_file)
        return port

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Stops the fake (SIGTERM: it writes its records to the state file, then exits; the port
        is closed, so connections are refused) and waits for it. start() brings it back."""
        return super().stop(sig, timeout)

    def start(self, timeout=10):
        """Relaunches a stopped fake with the same arguments on the same port; it loads what it
        recorded before stop() (not after kill(): a SIGKILL writes nothing, and the records of
        the last clean stop come back). Returns once it listens."""
        if self.running():
            raise RuntimeError("fake-evolution is already running")
        self._log_file = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError:
            self._log_file.close()
            raise
        self.pid, self._signalled = self.proc.pid, False
        _live_services.add(self)
        port = self._wait_port_file(timeout)
        if port != self.port:
            self._fail_start(f"listens on {port}, not on {self.port}")

    def _control(self, method, path, body=None):
        if not self.running():
            raise RuntimeError(f"fake-evolution is stopped (exit code {self.proc.returncode}): "
                               f"call start() before {method} {path}")
        r = http(method, self.url + path, body)
        if r.status != 200:
            raise RuntimeError(f"fake-evolution {method} {path} answered {r.status}: {r.body.decode(errors='replace')}")
        return r.json

    def find_messages(self, instance=None, page=None, offset=None, gte=None, lte=None, **key):
        """POST /chat/findMessages/{instance} (default: the first instance) as a client would:
        `key` filters go in where.key (remoteJid="5511…@s.whatsapp.net", fromMe=True, id=…),
        gte/lte (ISO strings, or Unix seconds, converted) in where.messageTimestamp (Evolution
        applies them only when both are given). Returns the "messages" object {"total", "pages",
        "currentPage", "records"}; raises on another answer than 200. The lookup is recorded in
        find_requests() like any other."""
        where = {"key": key} if key else {}
        stamps = {name: (datetime.datetime.fromtimestamp(v, datetime.timezone.utc).isoformat(timespec="milliseconds")
                         .replace("+00:00", "Z") if isinstance(v, (int, float)) else v)
                  for name, v in (("gte", gte), ("lte", lte)) if v is not None}
        if stamps:
            where["messageTimestamp"] = stamps
        body = {"where": where}
        body.update({k: v for k, v in (("page", page), ("offset", offset)) if v is not None})
        instance = instance or self.instances[0]
        if not self.running():
            raise RuntimeError("fake-evolution is stopped: call start() before find_messages")
        r = http("POST", f"{self.url}/chat/findMessages/{urllib.parse.quote(instance, safe='')}", body,
                 {"apikey": self.api_key})
        if r.status != 200:
            raise RuntimeError(f"fake-evolution findMessages answered {r.status}: {r.body.decode(errors='replace')}")
        return r.json["messages"]

    def find_requests(self, since=0):
        """Recorded findMessages requests from index `since` (dicts: index, time, method, path,
        instance, headers, body, json, status, fault, total, returned, in_flight)."""
        return self._control("GET", f"/_fake/find_requests?since={since}")

    def requests(self, since=0):
        """Recorded sendText requests from index `since` (dicts: index, time, method, path,
        instance, headers, body, json, number, text, status, key_id, sent, fault, in_flight)."""
        return self._control("GET", f"/_fake/requests?since={since}")

    def stats(self):
        """{"total", "in_flight", "by_status": {"201": n, "none": n...}, "sent",
        "sent_by_number", "sent_by_text"}"""
        return self._control("GET", "/_fake/stats")

    def config(self, **cfg):
        """Changes the fake's behaviour (latency_ms, not_on_whatsapp, api_key, instances,
        connection_state, connection_states, session_closed_error, save_messages, api_version,
        faults); returns the whole current configuration."""
        return self._control("POST", "/_fake/config", cfg)

    def webhooks(self, since=0):
        """Every webhook attempt the fake made, from index `since` (dicts: event, instance,
        status, key_id, attempt, http_status, error, at, url, manual)."""
        return self._control("GET", f"/_fake/webhooks?since={since}")

    def send_webhook(self, **body):
        """Sends one messages.update now (instance, key_id, status, number?, v1?, headers?) and
        returns {"http_status", "attempts", "error"} once it is done."""
        return self._control("POST", "/_fake/webhook", body)

    def reset(self):
        """Forgets the recorded requests and the fault rules."""
        self._control("POST", "/_fake/reset")


class Daemon(Service):
    """msg-api or msg-consumer; base_url is where its HTTP endpoints answer."""

    def __init__(self, name, config_path, listen, ready_path, env, args, ready_timeout):
        child_env = {k: v for k, v in os.environ.items() if k not in OVERRIDE_VARS}
        for key, value in (env or {}).items():
            if value is None:
                child_env.pop(key, None)
            else:
                child_env[key] = value
        log_dir = os.path.dirname(os.path.abspath(config_path))
        super().__init__(name, [executable(name), "--config", str(config_path), *args],
                         _next_log_path(log_dir, name), child_env)
        self.config_path = config_path
        self.base_url = _connect_url(listen)
        self._wait_ready(self.base_url + ready_path, ready_timeout)

    def _wait_ready(self, url, timeout):
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if not self.running():
                self._fail_start(f"exited with {self.proc.returncode} before {url} answered 200")
            try:
                r = http("GET", url, timeout=1)
                if r.status == 200:
                    return
                last = f"{r.status} {r.body[:300].decode(errors='replace')}"
            except OSError as e:  # not listening yet
                last = repr(e)
            if time.monotonic() > deadline:
                self._fail_start(f"was not ready within {timeout}s ({url} last said: {last})")
            time.sleep(0.05)


def start_fake(log_dir=None, api_key=EVOLUTION_KEY, instances=(EVOLUTION_INSTANCE,), latency_ms=0,
               api_version="v2", verbose=False, **config):
    """Starts the fake Evolution API on a free loopback port. Extra keyword arguments are applied
    at once through .config() (e.g. not_on_whatsapp=[...], faults=[...])."""
    fake = FakeEvolution(log_dir or tempfile.mkdtemp(prefix="msg-fake-"), api_key, instances,
                         latency_ms, api_version, verbose)
    if config:
        try:
            fake.config(**config)
        except RuntimeError:
            fake.stop()
            raise
    return fake


def _listen_of(config_path, listen, section, key):
    if listen:
        return listen
    try:
        return config_path.data[section][key]
    except (AttributeError, KeyError):
        raise ValueError(f"{config_path} does not come from make_config(); pass listen='host:port'") from None


def start_api(config_path, listen=None, env=None, args=(), ready_timeout=20):
    """Starts `msg-api --config PATH` (log next to the config file) and waits until GET /readyz
    answers 200. `listen` defaults to api.listen of a make_config() file; `env` adds variables
    (None removes one); `args` are extra command-line arguments."""
    return Daemon("msg-api", config_path, _listen_of(config_path, listen, "api", "listen"),
                  "/readyz", env, args, ready_timeout)


def start_consumer(config_path, listen=None, env=None, args=(), ready_timeout=20):
    """Starts `msg-consumer --config PATH` and waits until GET /readyz on consumer.health_listen
    answers 200. Arguments as for start_api."""
    return Daemon("msg-consumer", config_path, _listen_of(config_path, listen, "consumer", "health_listen"),
                  "/readyz", env, args, ready_timeout)


# --- configuration -------------------------------------------------------------------------------

class ConfigPath(str):
    """The path of a config file written by make_config (usable anywhere a str path is), which
    also carries what was written: .data (the nested dict) and .exchange (the topology prefix)."""

    def __new__(cls, path, data):
        self = super().__new__(cls, path)
        self.data = data
        self.exchange = data["topology"]["exchange"]
        topo = data["topology"]
        self.queue = topo["queue"]
        self.dead_queue = topo["dead_letter_queue"]
        self.status_stream = topo["status_stream"]
        self.callback_queue = topo.get("callback_queue")
        self.retry_prefix = topo["retry_queue_prefix"]
        return self

    def retry_queue(self, delay):
        """The retry queue of a delay as written in retry.delays (e.g. "1s")."""
        return f"{self.retry_prefix}.{delay}"


def _yaml_quote(text):
    """A YAML double-quoted scalar; escapes what YAML would otherwise read differently."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif ch in "\u0085\u2028\u2029\ufeff":  # line breaks and BOM in YAML's eyes
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _yaml_flow(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value} to the config")
        return repr(value)
    if isinstance(value, str):
        return _yaml_quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml_key(k)}: {_yaml_flow(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to the config")


def _yaml_key(key):
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else _yaml_quote(key)


def to_yaml(data, indent=0):
    """Block mappings for nested dicts, flow style for lists and anything inside them."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines.append(f"{'  ' * indent}{_yaml_key(key)}:")
            lines.append(to_yaml(value, indent + 1))
        else:
            lines.append(f"{'  ' * indent}{_yaml_key(key)}: {_yaml_flow(value)}")
    return "\n".join(lines)


def _merge(base, overrides):
    """Nested dicts merge key by key; any other override value replaces what was there."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def make_config(tmpdir, name, fake_url, overrides=None):
    """Writes tmpdir/<name>.yaml for both daemons and returns its ConfigPath.

    Topology names are unique per call (exchange t-<name>-<random>, queues <exchange>.send,
    .retry.*, .dead, .status, .callbacks), ports are fresh, Evolution points at `fake_url` (a
    URL, an object with .url, or None for a closed port) with EVOLUTION_KEY and instance
    "test-inst", retries are [1s, 1s] and logs are debug JSON (every line checked at clean-up: json_log_problems). `overrides` is merged in, e.g.
    {"retry": {"delays": ["1s"]}}.
    The exchange prefix is also registered for deletion at interpreter exit."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "test"
    exchange = f"t-{safe}-{secrets.token_hex(4)}"
    url = getattr(fake_url, "url", fake_url) or "http://127.0.0.1:9"  # discard port: refused
    data = {
        "broker": {"url": AMQP_URL},
        "topology": {"exchange": exchange, "queue": f"{exchange}.send",
                     "retry_queue_prefix": f"{exchange}.retry", "dead_letter_queue": f"{exchange}.dead",
                     "status_stream": f"{exchange}.status",
                     "callback_queue": f"{exchange}.callbacks"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        # A short grace keeps stop()'s default 10 s timeout above the consumer's drain time.
        "consumer": {"health_listen": f"127.0.0.1:{free_port()}", "shutdown_grace": "5s"},
        # Short timeouts so that hang faults resolve within a test's patience.
        "evolution": {"url": url, "api_key": EVOLUTION_KEY, "instance": EVOLUTION_INSTANCE,
                      "timeout": "5s", "connect_timeout": "2s"},
        "retry": {"delays": ["1s", "1s"]},
        "log": {"level": "debug", "format": "json"},
    }
    _merge(data, overrides or {})
    path = os.path.join(tmpdir, f"{safe}.yaml")
    n = 1
    while os.path.exists(path):  # several configs in one test (e.g. two api replicas)
        n += 1
        path = os.path.join(tmpdir, f"{safe}-{n}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# written by tests/integration/harness.py for {name}\n{to_yaml(data)}\n")
    _pending_prefixes.add(data["topology"]["exchange"])
    return ConfigPath(path, data)


# --- the HTTP API ----------------------------------------------------------------------------------

def _base(api):
    return api if isinstance(api, str) else api.base_url


def post_message(api, phone, message, instance=None, headers=None):
    """POST /messages on `api` (a Daemon or a base URL); returns the Response."""
    body = {"phone": phone, "message": message}
    if instance is not None:
        body["instance_name"] = instance
    return http("POST", _base(api) + "/messages", body, headers)


class PostStream:
    """POSTs a steady stream of messages to an api from `threads` threads until stop(), each
    with a unique text (f"{tag}-{n}") and phone, on a fresh connection each, with at most
    `rate` requests per second in all (None: as fast as answers come). Every attempt is
    recorded in .results (dicts: n, text, phone, t0, t1 (time.monotonic()), status,
    retry_after, task_id, error), where error is None for an HTTP answer, "refused" when the
    connection could not be made, or the name of the exception after it was made (a reset,
    an answer cut short, a timeout)."""

    def __init__(self, api, tag, threads=2, rate=None, timeout=15, headers=None):
        import threading
        self.base = _base(api)
        self.tag, self.rate, self.timeout, self.headers = tag, rate, timeout, headers or {}
        self.results = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._n = 0
        self._started = time.monotonic()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _next(self):
        with self._lock:
            n = self._n
            self._n += 1
        if self.rate:
            due = self._started + n / self.rate
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return None
        return n

    def _run(self):
        while not self._stop.is_set():
            n = self._next()
            if n is None or self._stop.is_set():
                return
            rec = self.post_one(n)
            self.results.append(rec)
            # A 503 says when to come back, as a well-behaved client (or load balancer) does.
            if rec["status"] == 503 and rec["retry_after"]:
                try:
                    self._stop.wait(min(float(rec["retry_after"]), 5.0))
                except ValueError:
                    pass

    def post_one(self, n):
        text = f"{self.tag}-{n}"
        phone = f"+5511{9000000000 + n % 1000000000:010d}"
        rec = {"n": n, "text": text, "phone": phone, "t0": time.monotonic(), "t1": None,
               "status": None, "retry_after": None, "task_id": None, "code": None,
               "error": None}
        parts = urllib.parse.urlsplit(self.base)
        conn = httpclient.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        try:
            try:
                conn.connect()
            except OSError:
                rec["error"] = "refused"
                return rec
            try:
                body = json.dumps({"phone": phone, "message": text}).encode()
                conn.request("POST", "/messages", body=body,
                             headers=dict({"Content-Type": "application/json"}, **self.headers))
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, httpclient.HTTPException) as e:
                rec["error"] = type(e).__name__
                return rec
            rec["status"] = resp.status
            rec["retry_after"] = resp.getheader("Retry-After")
            if resp.status == 202:
                try:
                    rec["task_id"] = json.loads(raw)["task_id"]
                except (ValueError, KeyError, TypeError):
                    rec["error"] = "bad 202 body"
            elif resp.status == 504:
                # Outcome unknown: the task id to look up, and the error code that says so.
                try:
                    doc = json.loads(raw)
                    rec["task_id"], rec["code"] = doc["task_id"], doc["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    rec["error"] = "bad 504 body"
            return rec
        finally:
            rec["t1"] = time.monotonic()
            conn.close()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self.results

    def accepted(self):
        """{task_id: record} of every 202."""
        return {r["task_id"]: r for r in self.results if r["status"] == 202 and r["task_id"]}


class Poller:
    """Polls GET `url` every `interval` seconds in a thread until stop(); .samples holds
    (time.monotonic(), status or None when no answer, seconds taken)."""

    def __init__(self, url, interval=0.2, timeout=5):
        import threading
        self.url, self.interval, self.timeout = url, interval, timeout
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                status = http("GET", self.url, timeout=self.timeout).status
            except OSError:
                status = None
            self.samples.append((t0, status, time.monotonic() - t0))
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return self.samples

    def first(self, status, after=0.0):
        """Time of the first sample with this status taken at or after `after`, or None."""
        return next((t for t, s, _ in list(self.samples) if t >= after and s == status), None)


def get_task(api, task_id):
    """GET /tasks/{task_id}; returns the Response."""
    return http("GET", f"{_base(api)}/tasks/{urllib.parse.quote(task_id, safe='')}")


def wait_task_status(api, task_id, statuses, timeout=20):
    """Polls the task until its status is in `statuses` (a name or a collection of names) and
    returns the task document. A 404 while waiting is tolerated: the api learns of a task from
    the status stream, possibly a moment after the 202."""
    wanted = {statuses} if isinstance(statuses, str) else set(statuses)
    last = None

    def reached():
        nonlocal last
        last = get_task(api, task_id)
        return last.status == 200 and last.json and last.json.get("status") in wanted

    try:
        wait_for(reached, timeout, what=f"task {task_id} to reach {sorted(wanted)}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last answer: {last.status} {last.body.decode(errors='replace')}") from None
    return last.json


def watch_task(api, task_id, until, timeout=20, interval=0.02):
    """Polls the task until its status is in `until` (a name or a collection) and returns every
    distinct task document seen on the way, oldest first (the last one has a status in
    `until`). Fast polling, so that short-lived states such as RETRY are seen."""
    wanted = {until} if isinstance(until, str) else set(until)
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        r = get_task(api, task_id)
        if r.status == 200 and r.json and (not seen or seen[-1] != r.json):
            seen.append(r.json)
            if r.json.get("status") in wanted:
                return seen
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for task {task_id} to reach "
                                 f"{sorted(wanted)}; statuses seen: {[d.get('status') for d in seen]}; "
                                 f"last answer: {r.status} {r.body.decode(errors='replace')}")
        time.sleep(interval)


# --- the broker itself -------------------------------------------------------------------------

RABBITMQ_NODE = os.environ.get("RABBITMQ_NODE")


def rabbitmqctl(*args, timeout=120):
    """Runs rabbitmqctl (through sudo -n when not root) against RABBITMQ_NODE; returns the
    CompletedProcess, raises RuntimeError when it fails."""
    argv = ["rabbitmqctl"] + (["-n", RABBITMQ_NODE] if RABBITMQ_NODE else []) + list(args)
    if os.geteuid() != 0:
        argv = ["sudo", "-n"] + argv
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {r.returncode}: "
                           f"{(r.stdout + r.stderr).decode(errors='replace')[-1000:]}")
    return r


def broker_start_app(timeout=120):
    """start_app, then waits for the node (await_startup) and its management API. Safe to call
    when the application already runs."""
    rabbitmqctl("start_app", timeout=timeout)
    rabbitmqctl("await_startup", timeout=timeout)
    wait_for(lambda: _mgmt_ok(), 60, interval=0.2, what="the management API after start_app")


def _mgmt_ok():
    try:
        _mgmt("GET", "/api/overview")
        return True
    except (OSError, ValueError):
        return False


class broker_outage:
    """`with broker_outage() as out:` stops the RabbitMQ application (rabbitmqctl stop_app: the
    node process stays, every client connection is closed) and starts it again when the block
    ends, whatever happens inside, waiting for await_startup and the management API: the
    broker is never left stopped. Times (time.monotonic()) are recorded in out.stop_called,
    out.stopped (stop_app returned), out.start_called and out.started (ready again).
    A test using it must run alone (ctest RUN_SERIAL: file names containing "faults" or
    "chaos"), as every other client of the broker loses its connection too."""

    def __enter__(self):
        self.stop_called = time.monotonic()
        self.stop_called_wall = time.time()
        self.stopped = self.start_called = self.started = None
        try:
            rabbitmqctl("stop_app")
        except BaseException:
            broker_start_app()
            raise
        self.stopped = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.start_called = time.monotonic()
        broker_start_app()
        self.started = time.monotonic()
        return False


# --- RabbitMQ topology -----------------------------------------------------------------------------

def _mgmt(method, path, body=None, mgmt_url=None):
    """A management API call (body: sent as JSON) on `mgmt_url` (default MGMT_URL); returns
    parsed JSON (or None for an empty body)."""
    parts = urllib.parse.urlsplit(mgmt_url or MGMT_URL)
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    url = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}{path}"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {auth}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def _vhost():
    """The vhost of AMQP_URL, URL-quoted for the management API ("/" → "%2F")."""
    path = urllib.parse.urlsplit(AMQP_URL).path
    vhost = urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"
    return urllib.parse.quote(vhost, safe="")


def mgmt_publish(exchange, routing_key, payload, properties=None):
    """Publishes `payload` (str) to `exchange` through the management API; returns whether the
    broker routed it to at least one queue."""
    r = _mgmt("POST", f"/api/exchanges/{_vhost()}/{urllib.parse.quote(exchange, safe='')}/publish",
              {"properties": properties or {}, "routing_key": routing_key, "payload": payload,
               "payload_encoding": "string"})
    return bool(r and r.get("routed"))


def queue_get(queue, count=100, ackmode="ack_requeue_true"):
    """Reads up to `count` messages of `queue` through the management API (by default they go
    back to the queue). Each is a dict with payload, properties (headers inside) and more."""
    return _mgmt("POST", f"/api/queues/{_vhost()}/{urllib.parse.quote(queue, safe='')}/get",
                 {"count": count, "ackmode": ackmode, "encoding": "auto", "truncate": 100000})


def queue_info(queue):
    """The management API's view of `queue` (messages, messages_ready, consumers...)."""
    return _mgmt("GET", f"/api/queues/{_vhost()}/{urllib.parse.quote(queue, safe='')}")


def wait_queue_messages(queue, predicate, timeout, what=None):
    """Polls queue_get(queue) until predicate(messages) is truthy; returns the messages."""
    last = []

    def check():
        nonlocal last
        last = queue_get(queue)
        return predicate(last)

    try:
        wait_for(check, timeout, interval=0.25, what=what or f"messages in {queue}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last saw {len(last)} message(s): "
                             f"{[(m.get('properties', {}).get('headers'), m.get('payload')) for m in last]}") from None
    return last


def cleanup_topology(exchange_prefix, mgmt_url=None):
    """Deletes every queue, then every exchange, whose name starts with `exchange_prefix` (in any
    vhost) on the broker of `mgmt_url` (default MGMT_URL); returns the deleted names. Something
    already gone is not an error."""
    if not exchange_prefix or exchange_prefix.startswith("amq."):
        raise ValueError(f"refusing to delete topology with prefix {exchange_prefix!r}")
    deleted = []
    for kind in ("queues", "exchanges"):
        for obj in _mgmt("GET", f"/api/{kind}?columns=name,vhost", mgmt_url=mgmt_url):
            if not obj["name"].startswith(exchange_prefix):
                continue
            vhost, name = (urllib.parse.quote(obj[k], safe="") for k in ("vhost", "name"))
            # A stream whose replica is still starting (or stopping) answers 500 for a moment
            # (RabbitMQ 3.10); only a lasting failure is an error.
            for attempt in range(40):
                try:
                    _mgmt("DELETE", f"/api/{kind}/{vhost}/{name}", mgmt_url=mgmt_url)
                    deleted.append(obj["name"])
                    break
                except urllib.error.HTTPError as e:
                    if e.code == 404:
                        break
                    if e.code < 500 or attempt == 39:
                        raise
                    time.sleep(0.5)
    _pending_prefixes.discard(exchange_prefix)
    return deleted


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer",
                     "ThreadSanitizer", "ERROR: UndefinedBehaviorSanitizer")


# Log fields that carry numbers: in a JSON log they must be JSON numbers (issue 19).
NUMERIC_LOG_FIELDS = ("attempt", "latency_ms", "http_status", "seconds", "status", "duration_ms",
                      "bytes", "held")


def json_log_problems(service):
    """Every line a daemon logged in JSON (log.format json, the default) is one JSON object with
    ts, level and msg, and its numeric fields are numbers. Returns what is wrong (at most 5)."""
    data = getattr(service.config_path, "data", None)
    if data is None or data.get("log", {}).get("format", "json") != "json":
        return []
    try:
        with open(service.log_path, "rb") as f:
            raw = f.read()
    except OSError:
        return []
    problems = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line:
            continue
        try:
            o = json.loads(line.decode("utf-8"))
            assert isinstance(o, dict) and {"ts", "level", "msg"} <= set(o), "not a log object"
            for key in NUMERIC_LOG_FIELDS:
                if key in o and o[key] is not None:
                    assert isinstance(o[key], (int, float)) and not isinstance(o[key], bool), \
                        f"{key} is {o[key]!r}, not a number"
        except (ValueError, AssertionError, UnicodeDecodeError) as e:
            problems.append(f"{service.name} log line {n} of {service.log_path} is not typed JSON "
                            f"({e}): {line[:300]!r}")
            if len(problems) == 5:
                break
    return problems


def sanitizer_reports(text):
    """The lines of a daemon log that come from a sanitizer report (empty list: none)."""
    return [line for line in text.splitlines() if any(m in line for m in SANITIZER_MARKERS)]


def _cleanup_at_exit():
    # Daemons first: a live daemon would declare again what is being deleted.
    for service in list(_live_services):
        service.kill()
    for prefix in list(_pending_prefixes):
        try:
            cleanup_topology(prefix)
        except (OSError, ValueError) as e:
            print(f"harness: could not delete RabbitMQ objects {prefix}*: {e}", file=sys.stderr)


atexit.register(_cleanup_at_exit)


# --- the test base class ---------------------------------------------------------------------------

class IntegrationTest(unittest.TestCase):
    """Gives each test a directory (self.tmpdir, kept and printed with its log tails when the test
    fails) and stops what it started through self.start_* and deletes the topology of every
    self.config(), whatever the outcome. The clean-up is registered with addCleanup, so it runs
    even when a subclass's setUp fails after super().setUp() or its tearDown forgets super()."""

    # A daemon that does not exit 0 on the SIGTERM at clean-up fails the test (DESIGN §6).
    check_exit_codes = True

    def setUp(self):
        super().setUp()
        self.tmpdir = tempfile.mkdtemp(prefix=f"msgtest-{self._testMethodName[:40]}-")
        self.fake = None
        self._services = []
        self._prefixes = []
        self.addCleanup(self._clean_up)

    def start_fake(self, **opts):
        """harness.start_fake with logs in self.tmpdir; assign it to self.fake so that
        self.config() points Evolution at it."""
        return self._own(start_fake(self.tmpdir, **opts))

    def config(self, overrides=None, name=None, fake=None):
        """make_config in self.tmpdir, named after the test, pointing at `fake` or self.fake."""
        cfg = make_config(self.tmpdir, name or self._testMethodName, fake or self.fake, overrides)
        self._prefixes.append(cfg.exchange)
        return cfg

    def config_like(self, cfg, overrides):
        """Another config file with the same topology as `cfg` (a ConfigPath), `overrides`
        merged in: e.g. a second api replica on another port."""
        data = _merge(json.loads(json.dumps(cfg.data)), overrides)
        path = os.path.splitext(str(cfg))[0]
        n = 2
        while os.path.exists(f"{path}-{n}.yaml"):
            n += 1
        path = f"{path}-{n}.yaml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# written by tests/integration/harness.py, like {cfg}\n{to_yaml(data)}\n")
        return ConfigPath(path, data)

    def start_stack(self, overrides=None, consumer=True, **fake_opts):
        """The usual set-up: the fake (fake_opts go to start_fake), a config pointing at it,
        msg-api and (unless consumer=False) msg-consumer. Returns (cfg, api, consumer)."""
        self.fake = self.start_fake(**fake_opts)
        cfg = self.config(overrides)
        api = self.start_api(cfg)
        cons = self.start_consumer(cfg) if consumer else None
        return cfg, api, cons

    def assertError(self, resp, status, code, field=None, headers=None):
        """resp is the JSON error answer of DESIGN §2 with exactly this status, code and field
        (field None: no "field" member) and these headers (a dict of lower-case names)."""
        what = f"{resp.status} {resp.headers} {resp.body[:500]!r}"
        self.assertEqual(resp.status, status, what)
        self.assertEqual(resp.headers.get("content-type"), "application/json; charset=utf-8", what)
        self.assertIsInstance(resp.json, dict, what)
        self.assertEqual(set(resp.json), {"success", "error"}, what)
        self.assertIs(resp.json["success"], False, what)
        err = resp.json["error"]
        self.assertEqual(set(err), {"code", "message"} | ({"field"} if field is not None else set()), what)
        self.assertEqual(err["code"], code, what)
        self.assertIsInstance(err["message"], str, what)
        self.assertTrue(err["message"].strip(), what)
        if field is not None:
            self.assertEqual(err["field"], field, what)
        for name, value in (headers or {}).items():
            self.assertEqual(resp.headers.get(name), value, f"header {name}: {what}")
        return err

    def assertTime(self, text, near=None, slack=30):
        """text is an RFC 3339 time (and within `slack` seconds of `near`, epoch seconds)."""
        try:
            t = parse_rfc3339(text)
        except ValueError as e:
            self.fail(str(e))
        if near is not None:
            self.assertLess(abs(t - near), slack, f"{text} is not near {near}")
        return t

    def start_api(self, config_path, **kw):
        return self._own(start_api(config_path, **kw))

    def start_consumer(self, config_path, **kw):
        return self._own(start_consumer(config_path, **kw))

    def _own(self, service):
        self._services.append(service)
        return service

    def _clean_up(self):
        problems = []
        # Every daemon is told at once (each one's HTTP server takes a while to stop), then
        # waited for; the fakes only after the daemons that talk to them.
        daemons = [s for s in reversed(self._services) if isinstance(s, Daemon)]
        others = [s for s in reversed(self._services) if not isinstance(s, Daemon)]
        was_running = {id(s): s.running() for s in daemons}
        for service in daemons:
            service.begin_stop()
        for service in daemons + others:
            code = service.stop()
            was = was_running.get(id(service), False)
            if self.check_exit_codes and was and isinstance(service, Daemon) and code != 0:
                problems.append(f"{service.name} (pid {service.pid}) exited with {code} on SIGTERM; "
                                f"log {service.log_path} ends with:\n{service.log_tail()}")
            if isinstance(service, Daemon):
                try:
                    found = sanitizer_reports(service.log())
                except OSError:
                    found = []
                if found:
                    problems.append(f"{service.name} (pid {service.pid}) sanitizer report in "
                                    f"{service.log_path}:\n" + "\n".join(found[:20]))
                else:
                    problems += json_log_problems(service)
        for prefix in self._prefixes:
            try:
                cleanup_topology(prefix)
            except OSError as e:
                # The broker's own trouble deleting a stream (RabbitMQ 3.10 answers 500 for a
                # while under load) says nothing about the service; the prefix stays registered
                # for the clean-up at exit, and the leftover is reported, not failed.
                _pending_prefixes.add(prefix)
                print(f"harness: could not delete RabbitMQ objects {prefix}* yet: {e}",
                      file=sys.stderr)
        if problems:
            self.fail("\n".join(problems))

    def run(self, result=None):
        # Whether the test failed is only known to the result object, after the whole run
        # (clean-ups included); a runner whose result keeps no lists counts as failed, so that
        # logs are never lost.
        result = self.defaultTestResult() if result is None else result

        def bad_outcomes():
            if not hasattr(result, "failures"):
                return None
            return len(result.failures) + len(result.errors)

        before = bad_outcomes()
        outcome = super().run(result)
        tmpdir = getattr(self, "tmpdir", None)
        if tmpdir and os.path.isdir(tmpdir):
            after = bad_outcomes()
            if before is None or after != before:
                self._report_kept(tmpdir)
            elif os.environ.get("MSG_KEEP_TMP") != "1":
                shutil.rmtree(tmpdir, ignore_errors=True)
        return outcome

    def _report_kept(self, tmpdir):
        lines = [f"\n[harness] {self.id()}: kept {tmpdir}"]
        for entry in sorted(os.listdir(tmpdir)):
            if entry.endswith(".log"):
                with open(os.path.join(tmpdir, entry), "rb") as f:
                    tail = f.read().decode("utf-8", errors="replace").splitlines()[-30:]
                lines.append(f"--- {entry} (last {len(tail)} lines) ---")
                lines.extend(tail)
        print("\n".join(lines), file=sys.stderr, flush=True)
