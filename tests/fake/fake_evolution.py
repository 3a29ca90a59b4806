#!/usr/bin/env python3
"""A fake Evolution API (WhatsApp HTTP gateway) for tests: v2.3.x behaviour, or v1.8 bodies.

It reproduces what a sender can observe of `POST /message/sendText/{instance}`, as described in
shared/research/evolution-api.md §2–§4 and §8, including the order of the checks:

  body-parser (malformed JSON) → route → instance exists → apikey → JSON schema → blank text
  → injected faults → number on WhatsApp → latency (+ the request's own `delay`) → 201

Other routes: `GET /` (version info) and `GET /instance/connectionState/{instance}`.
Anything else gets Express's 404 `["Cannot <METHOD> <url>"]`.

Every sendText request is recorded, and a control API under `/_fake/` (no apikey) lets a test
read the records and change behaviour at run time:

  GET  /_fake/requests[?since=N]  recorded sendText requests, oldest first, from index N
  GET  /_fake/stats               {"total", "in_flight", "by_status", "sent", "sent_by_number",
                                   "sent_by_text"}
  GET  /_fake/config              the current run-time configuration (faults with their hits)
  POST /_fake/config              change any of: latency_ms, not_on_whatsapp, api_key, instances,
                                  connection_state, api_version, faults (replaces the list)
  POST /_fake/reset               forget the records and the fault rules (the rest stays)

A fault rule:
  {"match": {"number": "...", "text_contains": "...", "instance": "..."},   all optional
   "times": 2,            how many requests it applies to; null or absent = always
   "fail_ratio": 0.1,     optional: apply to this fraction of matching requests only...
   "seed": 42,            ...drawn from a generator seeded with this (optional)
   "action": "status" | "hang" | "reset" | "prisma" | "connection_closed_500"
             | "connection_closed_400" | "timed_out_500" | "textmessage_500" | "license_503",
   "status": 502, "body": {...}, "headers": {...}, "content_type": "text/html"   (action status)
   "seconds": 30}                                                              (action hang)
The first rule that matches and has times left applies, and its times decrements. match.number
equals the request's number as sent or its digits only. Faults apply only to requests that
passed the instance, apikey, schema and blank-text checks, so a rule never hides a client bug
that those checks would report. "reset" closes with a TCP RST; "hang" (default 3600 s) closes
with a FIN and no answer; "prisma" counts as sent. latency_ms delays only the answers of a
message that went out (201 and prisma); rejections answer at once.

Message ids are "3EB0" + 36 hex digits in v2 mode and "BAE5" + 12 in v1 mode (research §3).

Usage: fake_evolution.py --host 127.0.0.1 --port 0 --api-key KEY --instances a,b
                         [--latency-ms N] [--port-file PATH] [--api-version v2|v1] [--verbose]
Python 3.11 standard library only.
"""

import argparse
import json
import os
import random
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

V2_VERSION = "2.3.6"
V1_VERSION = "1.8.2"

REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           500: "Internal Server Error"}

# Canned answers of the named fault actions (research §4.2). Each is (status, body); bodies
# shaped like the error envelope of §4.1 except the 2.4.0-rc licence gate, which has none.
PRISMA_MESSAGE = ("PrismaClientKnownRequestError: \nInvalid `this.prismaRepository.message.create()` "
                  "invocation in\n/evolution/dist/main.js:1:1\n\nThe column `Message.status` does not "
                  "exist in the current database.")
CANNED_FAULTS = {
    "prisma": (400, [PRISMA_MESSAGE]),
    "connection_closed_500": (500, "Connection Closed"),
    "connection_closed_400": (400, ["Error: Connection Closed"]),
    "timed_out_500": (500, "Timed Out"),
    "textmessage_500": (500, "Cannot read properties of undefined (reading 'textMessage')"),
}
ACTIONS = set(CANNED_FAULTS) | {"status", "hang", "reset", "license_503"}
CONNECTION_STATES = {"open", "connecting", "close", "refused"}

SEND_TEXT_RE = re.compile(r"^/message/sendText/([^/]+)/?$", re.IGNORECASE)  # Express: case-insensitive,
CONNECTION_STATE_RE = re.compile(r"^/instance/connectionState/([^/]+)/?$", re.IGNORECASE)  # slash optional


def envelope(status, message):
    """The error body of Evolution's Express error middleware (research §4.1)."""
    return {"status": status, "error": REASONS.get(status, "Error"), "response": {"message": message}}


def create_jid(number):
    """Normalizes a recipient like Evolution's createJid (research §2.3)."""
    number = re.sub(r":\d+", "", number, count=1)
    if any(s in number for s in ("@g.us", "@s.whatsapp.net", "@lid", "@broadcast")):
        return number
    number = re.sub(r"[\s+()]", "", number).split(":")[0].split("@")[0]
    if "-" in number and len(number) >= 24:
        return re.sub(r"[^\d-]", "", number) + "@g.us"
    number = re.sub(r"\D", "", number)
    if len(number) >= 18:
        return number + "@g.us"
    if number[:2] in ("52", "54") and len(number) == 13:  # Mexico/Argentina lose the 3rd digit
        number = number[:2] + number[3:]
    m = re.fullmatch(r"(\d{2})(\d{2})\d(\d{8})", number)
    if m and m.group(1) == "55" and int(m.group(3)[0]) >= 7 and int(m.group(2)) >= 31:
        number = m.group(1) + m.group(2) + m.group(3)  # Brazil drops the mobile 9th digit
    return number + "@s.whatsapp.net"


def validate_v2(body):
    """jsonschema errors of v2's textMessageSchema, in jsonschema's order: property types, then
    required properties. A property with a schema description reports the description."""
    errors = []
    if "number" in body and not isinstance(body["number"], str):
        errors.append("Invalid format")
    if "text" in body and not isinstance(body["text"], str):
        errors.append("text is not of a type(s) string")
    if "delay" in body and not (isinstance(body["delay"], int) and not isinstance(body["delay"], bool)):
        errors.append("Enter a value in milliseconds")
    if "linkPreview" in body and not isinstance(body["linkPreview"], bool):
        errors.append("linkPreview is not of a type(s) boolean")
    errors += [f'instance requires property "{k}"' for k in ("number", "text") if k not in body]
    return errors


def validate_v1(body):
    """jsonschema errors of v1.8's textMessageSchema (required: textMessage, then number)."""
    errors = []
    if "number" in body and not isinstance(body["number"], str):
        errors.append("Invalid format")
    tm = body.get("textMessage")
    if "textMessage" in body:
        if not isinstance(tm, dict):
            errors.append("textMessage is not of a type(s) object")
        elif "text" not in tm:
            errors.append('textMessage requires property "text"')
        elif not isinstance(tm["text"], str):
            errors.append("textMessage.text is not of a type(s) string")
        elif tm["text"] == "":
            errors.append('The "text" cannot be empty')
    errors += [f'instance requires property "{k}"' for k in ("textMessage", "number") if k not in body]
    return errors


class ConfigError(ValueError):
    """A /_fake/config or fault rule that makes no sense; answered with 400."""


class FaultRule:
    """One injected fault; `times` None means unlimited."""

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise ConfigError("a fault rule must be an object")
        unknown = set(spec) - {"match", "times", "fail_ratio", "seed", "action", "status", "body",
                               "headers", "content_type", "seconds"}
        if unknown:
            raise ConfigError(f"unknown fault rule keys: {sorted(unknown)}")
        self.spec = spec
        self.match = spec.get("match") or {}
        if not isinstance(self.match, dict) or set(self.match) - {"number", "text_contains", "instance"}:
            raise ConfigError("match takes only number, text_contains and instance")
        self.action = spec.get("action")
        if self.action not in ACTIONS:
            raise ConfigError(f"action must be one of {sorted(ACTIONS)}, got {self.action!r}")
        if self.action == "status" and not isinstance(spec.get("status"), int):
            raise ConfigError('action "status" needs an integer "status"')
        self.times = spec.get("times")
        if self.times is not None and (not isinstance(self.times, int) or self.times < 0):
            raise ConfigError("times must be a non-negative integer or null")
        self.fail_ratio = spec.get("fail_ratio")
        if self.fail_ratio is not None and not 0 <= self.fail_ratio <= 1:
            raise ConfigError("fail_ratio must be between 0 and 1")
        self.rng = random.Random(spec.get("seed"))
        self.hits = 0

    def applies(self, instance, number, digits, text):
        """Whether this rule takes the request; consumes one of its times if so."""
        if self.times == 0:
            return False
        m = self.match
        if "instance" in m and m["instance"] != instance:
            return False
        if "number" in m and m["number"] not in (number, digits):
            return False
        if "text_contains" in m and m["text_contains"] not in text:
            return False
        if self.fail_ratio is not None and self.rng.random() >= self.fail_ratio:
            return False
        if self.times is not None:
            self.times -= 1
        self.hits += 1
        return True

    def describe(self):
        return dict(self.spec, times=self.times, hits=self.hits)


class State:
    """Everything the handlers share; `lock` guards all of it."""

    def __init__(self, api_key, instances, latency_ms, api_version):
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # wakes sleeping handlers (latency, hang) at shutdown
        self.api_key = api_key
        self.instances = list(instances)
        self.latency_ms = latency_ms
        self.api_version = api_version
        self.not_on_whatsapp = set()
        self.connection_state = "open"
        self.faults = []
        self.records = []

    def config_view(self):
        with self.lock:
            return {"api_key": self.api_key, "instances": self.instances,
                    "latency_ms": self.latency_ms, "api_version": self.api_version,
                    "not_on_whatsapp": sorted(self.not_on_whatsapp),
                    "connection_state": self.connection_state,
                    "faults": [r.describe() for r in self.faults]}

    def configure(self, cfg):
        """Applies a /_fake/config body all at once, or nothing when any part is invalid."""
        if not isinstance(cfg, dict):
            raise ConfigError("the config body must be a JSON object")
        unknown = set(cfg) - {"latency_ms", "not_on_whatsapp", "api_key", "instances", "faults",
                              "connection_state", "api_version"}
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        if "latency_ms" in cfg and not (isinstance(cfg["latency_ms"], (int, float)) and cfg["latency_ms"] >= 0):
            raise ConfigError("latency_ms must be a non-negative number")
        for key in ("not_on_whatsapp", "instances"):
            if key in cfg and not (isinstance(cfg[key], list) and all(isinstance(x, str) for x in cfg[key])):
                raise ConfigError(f"{key} must be a list of strings")
        if "api_key" in cfg and not isinstance(cfg["api_key"], str):
            raise ConfigError("api_key must be a string")
        if "connection_state" in cfg and cfg["connection_state"] not in CONNECTION_STATES:
            raise ConfigError(f"connection_state must be one of {sorted(CONNECTION_STATES)}")
        if "api_version" in cfg and cfg["api_version"] not in ("v1", "v2"):
            raise ConfigError("api_version must be v1 or v2")
        if "faults" in cfg and not isinstance(cfg["faults"], list):
            raise ConfigError("faults must be a list")
        faults = [FaultRule(spec) for spec in cfg.get("faults", [])]
        with self.lock:
            for key in ("latency_ms", "api_key", "connection_state", "api_version"):
                if key in cfg:
                    setattr(self, key, cfg[key])
            if "instances" in cfg:
                self.instances = list(cfg["instances"])
            if "not_on_whatsapp" in cfg:
                self.not_on_whatsapp = set(cfg["not_on_whatsapp"])
            if "faults" in cfg:
                self.faults = faults

    def reset(self):
        with self.lock:
            self.records.clear()
            self.faults.clear()

    def add_record(self, record):
        with self.lock:
            record["index"] = len(self.records)
            self.records.append(record)

    def finish_record(self, record, status, key_id=None, sent=False, fault=None):
        with self.lock:
            record.update(status=status, key_id=key_id, sent=sent, fault=fault)

    def pick_fault(self, instance, number, digits, text):
        with self.lock:
            for rule in self.faults:
                if rule.applies(instance, number, digits, text):
                    return rule
        return None

    def requests_since(self, since):
        with self.lock:
            return [dict(r) for r in self.records[since:]]

    def stats(self):
        with self.lock:
            by_status, by_number, by_text = {}, {}, {}
            sent = in_flight = 0
            for r in self.records:
                key = "none" if r["status"] is None else str(r["status"])
                by_status[key] = by_status.get(key, 0) + 1
                in_flight += r["in_flight"]
                if r["sent"]:
                    sent += 1
                    by_number[r["number"]] = by_number.get(r["number"], 0) + 1
                    by_text[r["text"]] = by_text.get(r["text"], 0) + 1
            return {"total": len(self.records), "in_flight": in_flight, "by_status": by_status,
                    "sent": sent, "sent_by_number": by_number, "sent_by_text": by_text}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid 40 ms stalls
    timeout = 300  # an idle keep-alive connection frees its thread eventually

    # --- plumbing -----------------------------------------------------------------------------

    def version_string(self):
        return "fake-evolution"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    def reply(self, status, body, content_type="application/json; charset=utf-8", headers=None):
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str) and not content_type.startswith("application/json"):
            data = body.encode("utf-8")
        else:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        """The request body, de-chunked when the client used chunked transfer encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def sleep(self, seconds):
        """Waits, but returns at once when the server shuts down."""
        if seconds > 0:
            self.server.state.stopping.wait(seconds)

    def is_json(self):
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))

    def parse_body(self, raw):
        """Mimics Express's body-parser: (parsed, error_answer). Only JSON content types are
        parsed; any other body leaves req.body as {}. Malformed JSON is answered with 400 before
        routing, with the envelope the error middleware builds from the parser's error."""
        if not self.is_json() or not raw.strip():
            return {}, None
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            pos = getattr(e, "pos", getattr(e, "start", 0))
            return None, (400, {"status": 400, "error": "Internal Server Error",
                                "response": {"message": f"Unexpected token in JSON at position {pos}"}})
        if not isinstance(parsed, (dict, list)):  # body-parser's strict mode
            return None, (400, {"status": 400, "error": "Internal Server Error",
                                "response": {"message": "Unexpected token in JSON at position 0"}})
        return parsed, None

    def handle_any(self):
        raw = self.read_body()
        url = urlsplit(self.path)
        path = url.path
        if path.startswith("/_fake/"):
            return self.control(path, parse_qs(url.query), raw)
        parsed, parse_error = self.parse_body(raw)
        m = SEND_TEXT_RE.match(path)
        if m and self.command == "POST":
            return self.send_text(unquote(m.group(1)), raw, parsed, parse_error)
        if parse_error:
            return self.reply(*parse_error)
        if self.command == "GET" and path == "/":
            return self.reply(200, self.version_body())
        m = CONNECTION_STATE_RE.match(path)
        if m and self.command == "GET":
            return self.connection_state(unquote(m.group(1)))
        self.reply(404, envelope(404, [f"Cannot {self.command} {self.path}"]))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

    # --- Evolution routes -----------------------------------------------------------------------

    def version_body(self):
        st = self.server.state
        host = self.headers.get("Host", "localhost")
        if st.api_version == "v1":
            return {"status": 200, "message": "Welcome to the Evolution API, it is working!",
                    "version": V1_VERSION, "swagger": f"http://{host}/docs",
                    "manager": f"http://{host}/manager", "documentation": "https://doc.evolution-api.com"}
        return {"status": 200, "message": "Welcome to the Evolution API, it is working!",
                "version": V2_VERSION, "clientName": "evolution_exchange",
                "manager": f"http://{host}/manager", "documentation": "https://doc.evolution-api.com",
                "whatsappWebVersion": "2.3000.1023204200"}

    def guard(self, instance):
        """The instance-exists guard, then the apikey guard: their error answer, or None."""
        st = self.server.state
        with st.lock:
            known, key = instance in st.instances, st.api_key
        if not known:
            return 404, envelope(404, [f'The "{instance}" instance does not exist'])
        if self.headers.get("apikey") != key:  # header lookup is case-insensitive, like req.get()
            return 401, envelope(401, "Unauthorized")
        return None

    def connection_state(self, instance):
        denied = self.guard(instance)
        if denied:
            return self.reply(*denied)
        with self.server.state.lock:
            state = self.server.state.connection_state
        self.reply(200, {"instance": {"instanceName": instance, "state": state}})

    def send_text(self, instance, raw, parsed, parse_error):
        st = self.server.state
        record = {"time": time.time(), "method": self.command, "path": self.path, "instance": instance,
                  "headers": {k.lower(): v for k, v in self.headers.items()},
                  "body": raw.decode("utf-8", errors="replace"), "json": parsed,
                  "number": None, "text": None, "status": None, "key_id": None, "sent": False,
                  "fault": None, "in_flight": True}
        st.add_record(record)
        try:
            self.send_text_steps(st, record, instance, parsed, parse_error)
        finally:
            with st.lock:
                record["in_flight"] = False

    def send_text_steps(self, st, record, instance, body, parse_error):
        def answer(status, payload, **outcome):
            st.finish_record(record, status, **outcome)
            self.reply(status, payload)

        if parse_error:
            return answer(*parse_error)
        denied = self.guard(instance)
        if denied:
            return answer(*denied)
        with st.lock:
            v1 = st.api_version == "v1"
        if not isinstance(body, dict):
            return answer(400, envelope(400, [["instance is not of a type(s) object"]]))
        errors = validate_v1(body) if v1 else validate_v2(body)
        if errors:
            return answer(400, envelope(400, [errors]))
        number = body["number"]
        text = body["textMessage"]["text"] if v1 else body["text"]
        with st.lock:
            record.update(number=number, text=text)
        if not v1 and not text.strip():
            return answer(400, envelope(400, ["Text is required"]))

        jid = create_jid(number)
        digits = re.sub(r"\D", "", number)
        rule = st.pick_fault(instance, number, digits, text)
        if rule:
            return self.fault(st, record, rule)

        with st.lock:
            # Listed either as sent (digits only) or as normalized (e.g. without BR's 9th digit).
            missing = digits in st.not_on_whatsapp or jid.split("@")[0] in st.not_on_whatsapp
            latency_ms = st.latency_ms
        if missing and jid.endswith("@s.whatsapp.net"):
            return answer(400, envelope(400, [{"jid": jid, "exists": False, "number": number}]))

        delay = (body.get("options") or {}).get("delay", 0) if v1 else body.get("delay", 0)
        self.sleep((latency_ms + (delay if isinstance(delay, int) else 0)) / 1000)
        key_id, now = self.new_key_id(v1), int(time.time())
        if v1:
            payload = {"key": {"remoteJid": jid, "fromMe": True, "id": key_id},
                       "message": {"extendedTextMessage": {"text": text}},
                       "messageTimestamp": str(now), "status": "PENDING"}
        else:
            payload = {"key": {"remoteJid": jid, "fromMe": True, "id": key_id}, "pushName": "Você",
                       "status": "PENDING", "message": {"conversation": text},
                       "messageType": "conversation", "messageTimestamp": now,
                       "instanceId": str(uuid.uuid5(uuid.NAMESPACE_URL, "evolution:" + instance)),
                       "source": "unknown"}
        answer(201, payload, key_id=key_id, sent=True)

    @staticmethod
    def new_key_id(v1):
        # Baileys ids: v1-era "BAE5" + 12 hex, v2-era "3EB0" + 36 hex (research §3.1).
        return "BAE5" + secrets.token_hex(6).upper() if v1 else "3EB0" + secrets.token_hex(18).upper()

    def fault(self, st, record, rule):
        action, spec = rule.action, rule.spec
        if action == "reset":
            # SO_LINGER 0 makes close() send a RST, so the client sees "connection reset" rather
            # than an orderly end of stream.
            st.finish_record(record, None, fault=action)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if action == "hang":
            st.finish_record(record, None, fault=action)
            self.sleep(float(spec.get("seconds", 3600)))
            self.close_connection = True
            return
        if action == "status":
            status, body = spec["status"], spec.get("body")
            st.finish_record(record, status, fault=action)
            return self.reply(status, body, content_type=spec.get("content_type", "application/json; charset=utf-8"),
                              headers=spec.get("headers"))
        if action == "license_503":
            st.finish_record(record, 503, fault=action)
            return self.reply(503, {"error": "service not activated", "code": "LICENSE_REQUIRED",
                                    "register_url": "https://license.evolution-api.com/register",
                                    "instance_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "evolution-server")),
                                    "docs_url": "https://doc.evolution-api.com/license",
                                    "message": "This Evolution API instance is not activated."})
        status, message = CANNED_FAULTS[action]
        if action == "prisma":
            # The message went out before the database insert failed: it counts as sent.
            with st.lock:
                latency_ms = st.latency_ms
            self.sleep(latency_ms / 1000)
            st.finish_record(record, status, sent=True, fault=action)
        else:
            st.finish_record(record, status, fault=action)
        self.reply(status, envelope(status, message))

    # --- control API ----------------------------------------------------------------------------

    def control(self, path, query, raw):
        st = self.server.state
        route = (self.command, path.rstrip("/"))
        if route == ("GET", "/_fake/requests"):
            try:
                since = int(query.get("since", ["0"])[0])
            except ValueError:
                return self.reply(400, {"error": "since must be an integer"})
            return self.reply(200, st.requests_since(max(since, 0)))
        if route == ("GET", "/_fake/stats"):
            return self.reply(200, st.stats())
        if route == ("GET", "/_fake/config"):
            return self.reply(200, st.config_view())
        if route == ("POST", "/_fake/reset"):
            st.reset()
            return self.reply(200, {"ok": True})
        if route == ("POST", "/_fake/config"):
            try:
                st.configure(json.loads(raw or b"{}"))
            except (ValueError, TypeError) as e:  # ConfigError and JSONDecodeError are ValueErrors
                return self.reply(400, {"error": str(e)})
            return self.reply(200, st.config_view())
        self.reply(404, {"error": f"no control route {self.command} {path}"})


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True  # hung handlers must not keep the process alive at shutdown
    request_queue_size = 1024  # many clients connecting at once

    def __init__(self, address, state, verbose):
        self.state = state
        self.verbose = verbose
        super().__init__(address, Handler)

    def handle_error(self, request, client_address):
        # Clients that hang up mid-answer are routine in fault tests; only say so when asked.
        if self.verbose:
            super().handle_error(request, client_address)


def write_port_file(path, port):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)  # readers never see a half-written file


def main(argv=None):
    p = argparse.ArgumentParser(description="Fake Evolution API for tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--api-key", default="fake-api-key")
    p.add_argument("--instances", default="default", help="comma-separated instance names")
    p.add_argument("--latency-ms", type=float, default=0)
    p.add_argument("--port-file", help="write the bound port here (atomically)")
    p.add_argument("--api-version", choices=("v1", "v2"), default="v2")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)

    instances = [i for i in args.instances.split(",") if i]
    state = State(args.api_key, instances, args.latency_ms, args.api_version)
    server = FakeServer((args.host, args.port), state, args.verbose)
    port = server.server_address[1]
    if args.port_file:
        write_port_file(args.port_file, port)
    print(f"fake-evolution listening on {args.host}:{port}", flush=True)

    def on_signal(signum, frame):
        # shutdown() waits for serve_forever() to return, which runs on this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        state.stopping.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
