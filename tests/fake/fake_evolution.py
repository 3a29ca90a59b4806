#!/usr/bin/env python3
"""A fake Evolution API (WhatsApp HTTP gateway) for tests: v2.3.x behaviour, or v1.8 bodies.

It reproduces what a sender can observe of `POST /message/sendText/{instance}`, as described in
shared/research/evolution-api.md §2–§4 and §8, including the order of the checks, and the status
webhooks that follow a send (§6; see "Webhooks" below):

  body-parser (malformed JSON) → route → instance exists → apikey → JSON schema → blank text
  → injected faults → number on WhatsApp (closed session: 500 here, or 400 after it)
  → latency (+ the request's own `delay`) → the Message row stored → 201

Other routes (same guards: route, instance exists → 404, apikey → 401):
  GET  /                                   version info (no apikey)
  GET  /instance/connectionState/{inst}    200 {"instance": {"instanceName", "state"}}: the
                                           instance's state (connection_states, else
                                           connection_state)
  POST /chat/findMessages/{inst}           the stored messages, below
Anything else gets Express's 404 `["Cannot <METHOD> <url>"]`.

Every sendText and findMessages request is recorded, and a control API under `/_fake/` (no
apikey) lets a test read the records and change behaviour at run time:

  GET  /_fake/requests[?since=N]  recorded sendText requests, oldest first, from index N
  GET  /_fake/find_requests[?since=N]  recorded findMessages requests, oldest first: {"index",
                                  "time", "method", "path", "instance", "headers", "body",
                                  "json", "status" (null: no answer), "fault", "total" and
                                  "returned" (rows matched / in the page; null unless 200),
                                  "in_flight"}
  GET  /_fake/messages            every stored Message row (all instances), in insertion order
  GET  /_fake/stats               {"total", "in_flight", "by_status", "sent", "sent_by_number",
                                   "sent_by_text", "stored_messages", "find_requests",
                                   "webhooks_sent", "webhooks_failed", "webhooks_dropped",
                                   "webhooks_pending"}
  GET  /_fake/config              the current run-time configuration (faults with their hits)
  POST /_fake/config              change any of: latency_ms, not_on_whatsapp, api_key, instances,
                                  connection_state, connection_states, session_closed_error,
                                  save_messages, api_version, faults (replaces the list),
                                  and the webhook_* keys below; all or nothing (400 if invalid)
  POST /_fake/reset               forget the records (sendText, findMessages, stored messages,
                                  webhooks) and the fault rules (the rest stays)
  GET  /_fake/webhooks, POST /_fake/webhook   see "Webhooks" below

Run-time keys besides the obvious ones:
  connection_state      "open" (default) | "connecting" | "close" | "refused": every instance's
  connection_states     {"inst-a": "close", ...}: per instance, over connection_state (a POST
                        replaces the whole object; {} clears it)
  session_closed_error  "connection_closed_400" (default) | "connection_closed_500": how the
                        sendText of an instance whose state is not "open" fails, below
  save_messages         true (default) | false: Evolution's DATABASE_SAVE_DATA_NEW_MESSAGE; when
                        false no sent message is stored (rows stored before stay), so
                        findMessages finds none

A fault rule:
  {"route": "send_text" | "find_messages" | "connection_state",   default send_text
   "match": {"number": "...", "text_contains": "...", "instance": "..."},   all optional
                          (rules of the other routes can match on instance only)
   "times": 2,            how many requests it applies to; null or absent = always
   "fail_ratio": 0.1,     optional: apply to this fraction of matching requests only...
   "seed": 42,            ...drawn from a generator seeded with this (optional)
   "action": "status" | "hang" | "reset" | "prisma" | "connection_closed_500"
             | "connection_closed_400" | "timed_out_500" | "textmessage_500" | "license_503",
   "status": 502, "body": {...}, "headers": {...}, "content_type": "text/html"   (action status)
   "seconds": 30,                                                              (action hang)
   "stored": true}        (action prisma) the row is stored all the same, see findMessages
The first rule of the request's route that matches and has times left applies, and its times
decrements. match.number equals the request's number as sent or its digits only. Faults apply
only to requests that passed the instance, apikey, schema (and for sendText blank-text) checks,
so a rule never hides a client bug that those checks would report. "reset" closes with a TCP
RST; "hang" (default 3600 s) closes with a FIN and no answer; "prisma" counts as sent.
latency_ms delays only the answers of a message that went out (201 and prisma); rejections
answer at once. find_messages rules take status, hang, reset, license_503 and textmessage_500
(500 "Cannot read properties of undefined (reading 'fetchMessages')": the instance is not in
memory); connection_state rules status, hang, reset and license_503.

Closed sessions. While an instance's state is not "open", its sendText requests that pass the
checks and the fault rules fail as a closed Baileys socket makes them fail (research §4.2):
"connection_closed_400" → 400 ["Error: Connection Closed"] from the send stage (after the
not-on-WhatsApp answer, which Evolution's number cache still gives); "connection_closed_500" →
500 "Connection Closed" from the number check (before it). Not sent, not stored, no webhooks;
the record has fault "session_closed". Other instances are unaffected.

findMessages (POST /chat/findMessages/{inst}; v2.3.6 channel.service.ts fetchMessages, the
same in 2.4.0-rc2; the v2 shape in v1 mode too). Every message that went out with a 201 is
stored, before the answer, as the Message row Evolution selects:
  {"id": "c" + 24 (the webhooks' messageId), "key": the 201 body's key {"remoteJid", "fromMe":
   true, "id"}, "pushName": "Você", "messageType": "conversation", "message": {"conversation":
   text}, "messageTimestamp": Unix seconds (int, the 201 body's), "instanceId", "source":
   "unknown", "contextInfo": null, "MessageUpdate": [] (the fake stores no status rows)}
The "prisma" fault is the failed insert of that row: the message went out but is not stored,
unless the rule says "stored": true (another insert failed). Body (messageValidateSchema:
where and where.key objects, key.remoteJid / key.id non-empty strings, key.fromMe a boolean,
else 400 with a nested array; an array body counts as {}):
  {"where": {"key": {"remoteJid"?, "fromMe"?, "id"?}, "id"?, "messageType"?, "source"?,
             "messageTimestamp"?: {"gte", "lte"}}, "page"?: 1, "offset"?: 50}
  - only the instance's rows; each key filter applies only when truthy (fromMe false filters
    nothing) and compares the stored JSON value exactly: remoteJid must be the JID createJid
    gave at send time ("553187654321@s.whatsapp.net"), not the number;
  - the time range applies only when gte and lte are both truthy; each is new Date(x) floored
    to seconds, inclusive: ISO strings (date only, date-time with optional seconds, fraction,
    Z or offset; no offset = UTC here), RFC 2822 strings, numbers as MILLISECONDS; an Invalid
    Date gives 500 (Prisma validation error, text inferred);
  - ORDER BY messageTimestamp DESC (ties: the later insert first); offset is the page size
    (falsy → 50; not a positive integer → 500, inferred), page 1-based (falsy → 1; a numeric
    string works as in JS and is echoed back); skip = offset * (page - 1);
  - 200 {"messages": {"total", "pages": ceil(total / offset), "currentPage": page, "records"}}.

Stopping. On SIGTERM/SIGINT the fake closes its port at once (connections are refused), wakes
the handlers that wait (latency, hang): a message still waiting to go out is NOT sent (its
connection closes with no answer; record fault "stopped"); with --state-file it then writes,
atomically, the sendText and findMessages records, the stored messages, the webhook records
and counters, the fault rules (times and hits left) and the whole configuration, and exits 0.
At start, if the --state-file exists, it loads it (the saved configuration wins over the
command line); indexes continue. Webhooks still due at the stop are not sent. A SIGKILL writes
nothing. A fixed --port N binds again at once (SO_REUSEADDR).

Message ids are "3EB0" + 36 hex digits in v2 mode and "BAE5" + 12 in v1 mode (research §3).

Webhooks (research §6). Off until `webhook_url` is set. After every send that went out (201, and
the "prisma" fault, which counts as sent) the fake POSTs, from a background thread that never
delays the HTTP answer (except with the "early" webhook fault below):
  1. `send.message`, whose `data` is exactly the 201 body (v2 §3.1 or v1 §3.3), if SEND_MESSAGE
     is subscribed. Not for "prisma": Evolution stores the message before it emits the event, so
     the failed insert throws first and there is no success body to send;
  2. one `messages.update` per status of `webhook_receipts` (default SERVER_ACK, DELIVERY_ACK,
     READ), in order, if MESSAGES_UPDATE is subscribed; `webhook_delay_ms` (default 50) before
     each event after the first. For "prisma" the receipts carry the id the message got on
     WhatsApp, which the client never saw (the request record's key_id stays null; the id is in
     /_fake/webhooks). Real 2.3.x skips those updates when the DB row is missing (§6.5).
One message's events go out one after the other from one thread, each with its retries, so a
retried event delays the ones after it (Evolution emits them concurrently: use "reverse" for
reordering). Each event is sent in the §6.3 envelope:
  {"event", "instance", "data", "destination": webhook_url, "date_time": ISO UTC with "Z",
   "sender": the instance's own JID (fixed per instance name), "server_url": this fake's URL,
   "apikey": null}                              (v1 mode: no "apikey" key at all)
`messages.update` data, v2: {"keyId", "remoteJid", "fromMe": true, "status", "instanceId",
"messageId"} where keyId is the message's key.id, instanceId the sendText body's, and messageId a
stable DB-row-like id ("c" + 24 characters, the same for every receipt of one message).
v1 mode: {"remoteJid", "id", "fromMe": true, "status", "datetime": <Unix ms>, "owner": <instance>}.
The mode is the fake's api_version when the message was sent.

Each POST is made like Evolution 2.3's axios: JSON body, `Content-Type: application/json`,
`Accept`, `User-Agent: axios/...`, plus `webhook_headers` (Evolution 2.2+ `webhook.headers`). If
those contain "jwt_key", that entry is not sent; `Authorization: Bearer <JWT>` is sent instead,
an HS256 JWT signed with the key's UTF-8 bytes, header {"alg":"HS256","typ":"JWT"}, payload
{"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook"} (Evolution 2.3.0+; one
token per event, reused by its retries). Answers 2xx are success; anything else (3xx included,
redirects are not followed), a refused or reset connection or a timeout is a failed attempt.
Retries follow Evolution 2.3's retryWebhookRequest, with test-sized defaults: at most
`webhook_retry` attempts; no retry after an HTTP status in `webhook_retry_non_retryable`; before
attempt n+1 wait min(base * 2^(n-1), max) plus a jitter of ±jitter * that, and at least base.

Webhook configuration (command line flag in brackets; all also in POST/GET /_fake/config):
  webhook_url                  [--webhook-url]  http://host:port/path, or null: no webhooks
  webhook_headers              [--webhook-headers JSON]  {name: value}; "jwt_key" as above
  webhook_events               [--webhook-events A,B]  SEND_MESSAGE and/or MESSAGES_UPDATE,
                               default both; [] means all, as in Evolution's /webhook/set
  webhook_by_events            [--webhook-by-events]  POST to <url>/send-message and
                               <url>/messages-update (Evolution's byEvents); default false
  webhook_receipts             [--webhook-receipts A,B]  statuses sent after a send; each one of
                               ERROR, PENDING, SERVER_ACK, DELIVERY_ACK, READ, PLAYED, DELETED
  webhook_delay_ms             [--webhook-delay-ms]  between one message's events, default 50
  webhook_retry                [--webhook-retry]  max attempts per event, default 10 (1: none)
  webhook_retry_base_ms        [--webhook-retry-base-ms]  first retry delay, default 200
  webhook_retry_max_ms         [--webhook-retry-max-ms]  delay cap before jitter, default 5000
  webhook_retry_jitter         [--webhook-retry-jitter]  0..1, default 0.2 (0: exact delays)
  webhook_retry_non_retryable  [--webhook-retry-non-retryable A,B]  default 400,401,403,404,422
  webhook_timeout_ms           [--webhook-timeout-ms]  per attempt, default 5000
  webhook_faults               rule list, below (POST /_fake/config only; reset clears it)

A webhook fault rule changes the webhooks of the messages it matches, chosen when the message is
sent, like the send fault rules (first matching rule with times left; match, times, fail_ratio
and seed as above), and needs at least one of:
  "duplicate": true     every receipt is sent twice, back to back
  "reverse": true       receipts in reverse order (READ before SERVER_ACK)
  "early": true         the message's webhooks are sent, answered (with retries) and recorded
                        BEFORE the sendText answer, which waits for them: a receipt that arrives
                        before the sender stored key.id
  "statuses": [...]     the receipt list for this message instead of webhook_receipts
                        (e.g. ["SERVER_ACK", "ERROR"]; [] sends none)

Webhook control routes:
  GET  /_fake/webhooks[?since=N]  every attempt, oldest first, from index N: {"index", "event",
                                  "instance", "status" (null for send.message), "key_id",
                                  "attempt" (1-based), "http_status" (null when no answer),
                                  "error" (null, "timeout" or the connection error), "at" (Unix
                                  time the attempt started), "url", "manual"}
  POST /_fake/webhook             send one messages.update now and answer when it is done:
                                  {"instance", "key_id", "status", "number"?, "v1"?, "headers"?}
                                  → {"http_status", "attempts", "error"} (200). "number" gives
                                  remoteJid; without it key_id must be a message the fake sent.
                                  "v1" picks the data shape (default: the fake's api_version).
                                  "headers" replaces webhook_headers for this event ({} sends
                                  none; "jwt_key" works as above): forged or duplicate receipts.
                                  409 when webhook_url is not set.
/_fake/stats also counts "webhooks_sent" (attempts answered 2xx), "webhooks_failed" (other
attempts), "webhooks_dropped" (events given up: non-retryable status or attempts exhausted) and
"webhooks_pending" (events of sent messages not finished yet: wait for 0). POST /_fake/reset also
forgets the webhook records and webhook_faults, and stops the webhooks still queued.
Everything stays where webhook_url points; the tests keep it on loopback.

Usage: fake_evolution.py --host 127.0.0.1 --port 0 --api-key KEY --instances a,b
                         [--latency-ms N] [--port-file PATH] [--api-version v2|v1] [--verbose]
                         [--state-file PATH]
                         [--webhook-url URL] [--webhook-headers JSON] [--webhook-... (above)]
Python 3.11 standard library only.
"""

import argparse
import base64
import copy
import datetime
import email.utils
import hashlib
import hmac
import http.client
import json
import math
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
# The routes a fault rule can take, and the actions each allows. The others have no socket to
# lose and no message to count: only raw answers, a hang, a reset, the licence gate, and for
# findMessages the instance-not-in-memory TypeError (waInstances[name].fetchMessages).
ROUTE_ACTIONS = {"send_text": ACTIONS,
                 "find_messages": {"status", "hang", "reset", "license_503", "textmessage_500"},
                 "connection_state": {"status", "hang", "reset", "license_503"}}
CONNECTION_STATES = {"open", "connecting", "close", "refused"}
# How a sendText fails on an instance whose session is not open (research §4.2): the send stage
# (400, the default) or the number check (500).
SESSION_CLOSED_ERRORS = ("connection_closed_400", "connection_closed_500")
FIND_DEFAULT_OFFSET = 50  # channel.service.ts fetchMessages: `if (!query?.offset) query.offset = 50`
STATE_FILE_VERSION = 1

# Webhooks (research §6). Subscription names → the envelope's `event`.
WEBHOOK_EVENTS = {"SEND_MESSAGE": "send.message", "MESSAGES_UPDATE": "messages.update"}
# renderStatus.ts values plus DELETED (wa.types.ts), research §6.5.
RECEIPT_STATUSES = ("ERROR", "PENDING", "SERVER_ACK", "DELIVERY_ACK", "READ", "PLAYED", "DELETED")
WEBHOOK_DEFAULTS = {
    "webhook_url": None,
    "webhook_headers": {},
    "webhook_events": ["SEND_MESSAGE", "MESSAGES_UPDATE"],
    "webhook_by_events": False,
    "webhook_receipts": ["SERVER_ACK", "DELIVERY_ACK", "READ"],
    "webhook_delay_ms": 50,
    "webhook_retry": 10,
    "webhook_retry_base_ms": 200,
    "webhook_retry_max_ms": 5000,
    "webhook_retry_jitter": 0.2,
    "webhook_retry_non_retryable": [400, 401, 403, 404, 422],
    "webhook_timeout_ms": 5000,
}
# What axios sends by itself (Evolution posts with an axios instance).
AXIOS_HEADERS = {"Accept": "application/json, text/plain, */*", "Content-Type": "application/json",
                 "User-Agent": "axios/1.7.9"}
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

SEND_TEXT_RE = re.compile(r"^/message/sendText/([^/]+)/?$", re.IGNORECASE)  # Express: case-insensitive,
CONNECTION_STATE_RE = re.compile(r"^/instance/connectionState/([^/]+)/?$", re.IGNORECASE)  # slash optional
FIND_MESSAGES_RE = re.compile(r"^/chat/findMessages/([^/]+)/?$", re.IGNORECASE)


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


def validate_find(body):
    """jsonschema errors of v2's messageValidateSchema (chat.schema.ts), the parts a client can
    trip: where and where.key must be objects; when every key property is one of fromMe,
    remoteJid and id (the schema's if/then), remoteJid and id must be non-empty strings (their
    description is the message) and fromMe a boolean; limit an integer."""
    errors = []
    where = body.get("where")
    if "where" in body:
        if not isinstance(where, dict):
            errors.append("where is not of a type(s) object")
        else:
            if "_id" in where and not isinstance(where["_id"], str):
                errors.append("where._id is not of a type(s) string")
            key = where.get("key")
            if "key" in where:
                if not isinstance(key, dict):
                    errors.append("where.key is not of a type(s) object")
                elif set(key) <= {"fromMe", "remoteJid", "id"}:
                    for name in ("remoteJid", "id"):
                        if name in key and not (isinstance(key[name], str) and key[name]):
                            errors.append("The property cannot be empty")
                    if "fromMe" in key and not isinstance(key["fromMe"], bool):
                        errors.append("where.key.fromMe is not of a type(s) boolean")
                        errors.append("where.key.fromMe is not one of enum values: true,false")
    if "limit" in body and not (isinstance(body["limit"], int) and not isinstance(body["limit"], bool)):
        errors.append("limit is not of a type(s) integer")
    return errors


MISSING = object()  # a key property a row does not have


def json_equal(a, b):
    """Equality of two JSON values as jsonb compares them (true is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a is not MISSING and a == b


def js_truthy(value):
    """JavaScript truthiness of a JSON value ([] and {} are truthy)."""
    return not (value is None or value is False or value == "" or
                (is_number(value) and (value == 0 or value != value)))


ISO_DATE_RE = re.compile(r"^([+-]\d{6}|\d{4})(?:-(\d{2})(?:-(\d{2}))?)?"
                         r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?\s*(Z|[+-]\d{2}:?\d{2})?$",
                         re.IGNORECASE)


def js_date_ms(value):
    """`new Date(value).getTime()` for a JSON value, or None for an Invalid Date (NaN).
    Numbers are milliseconds since the epoch; strings are the ISO forms (date only, or date and
    time with optional seconds, fraction and Z/offset; a time without an offset is local time,
    and the fake's local time is UTC), plus the RFC 2822 / Date.prototype.toString forms V8's
    fallback parser takes ("Wed, 02 Dec 2026 05:41:37 GMT"); booleans are 0 / 1 ms."""
    if isinstance(value, bool):
        return int(value)
    if is_number(value):
        return value if value == value and abs(value) <= 8.64e15 else None
    if not isinstance(value, str):
        return None  # objects and arrays: Invalid Date in practice
    text = value.strip()
    m = ISO_DATE_RE.match(text)
    if m:
        year, month, day, hh, mm, ss, frac, tz = m.groups()
        try:
            dt = datetime.datetime(int(year), int(month or 1), int(day or 1), int(hh or 0), int(mm or 0),
                                   int(ss or 0), int((frac or "0")[:3].ljust(3, "0")) * 1000,
                                   tzinfo=datetime.timezone.utc)
        except ValueError:
            return None
        if tz and tz.upper() != "Z":
            sign = 1 if tz[0] == "+" else -1
            digits = tz[1:].replace(":", "")
            dt -= sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        return int(dt.timestamp() * 1000)
    try:
        dt = email.utils.parsedate_to_datetime(re.sub(r"\s*\(.*\)$", "", text).replace("GMT+", "+").replace("GMT-", "-"))
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp() * 1000)


def prisma_validation_error(argument, got):
    """The bare-string 500 of a PrismaClientValidationError escaping to the error middleware
    (research §4.1: raw errors come out as 500 with err.message). The wording is modelled on
    Prisma 6, not captured (inferred)."""
    return envelope(500, f"\nInvalid `this.prismaRepository.message.count()` invocation in\n"
                         f"/evolution/dist/main.js:1:1\n\nArgument `{argument}`: Invalid value provided. "
                         f"Expected Int, provided {got}.")


def message_row(instance, key, text, timestamp):
    """The Message row fetchMessages selects for a sent text (prepareMessage in
    whatsapp.baileys.service.ts, then prisma message.create; the select of fetchMessages)."""
    return {"id": db_row_id(key["id"]), "key": dict(key), "pushName": "Você", "messageType": "conversation",
            "message": {"conversation": text}, "messageTimestamp": timestamp,
            "instanceId": instance_uuid(instance), "source": "unknown", "contextInfo": None,
            "MessageUpdate": []}


class ConfigError(ValueError):
    """A /_fake/config or fault rule that makes no sense; answered with 400."""


def instance_uuid(instance):
    """The instanceId of an instance's messages: a UUID fixed per instance name."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "evolution:" + instance))


def instance_jid(instance):
    """The instance's own WhatsApp JID (the webhook envelope's `sender`), fixed per name."""
    n = int.from_bytes(hashlib.sha256(instance.encode("utf-8")).digest()[:8], "big") % 10**9
    return f"5511{n:09d}@s.whatsapp.net"


def db_row_id(key_id):
    """A cuid-like Message row id ("c" + 24 base-36 characters), v2's `messageId`; derived from
    the key id so that every receipt of one message carries the same one."""
    n = int.from_bytes(hashlib.sha256(key_id.encode("utf-8")).digest(), "big")
    chars = []
    for _ in range(24):
        n, r = divmod(n, 36)
        chars.append("0123456789abcdefghijklmnopqrstuvwxyz"[r])
    return "c" + "".join(chars)


def iso_now():
    """`date_time` of the envelope: ISO 8601 with milliseconds and a Z (the fake runs in UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_hs256(key, now=None):
    """The token of Evolution 2.3's generateJwtToken: jsonwebtoken's sign(payload, key, HS256),
    i.e. compact JSON header and payload in this key order, unpadded base64url, HMAC-SHA256."""
    iat = int(time.time() if now is None else now)
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps({"iat": iat, "exp": iat + 600, "app": "evolution", "action": "webhook"},
                                separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = hmac.new(key.encode("utf-8"), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def outgoing_headers(custom):
    """The headers of one webhook POST: axios's own, then the instance's webhook.headers (names
    compared case-insensitively), with a "jwt_key" entry turned into a Bearer JWT (2.3.0+)."""
    custom = dict(custom)
    if "jwt_key" in custom:
        custom["Authorization"] = "Bearer " + jwt_hs256(custom.pop("jwt_key"))
    headers = {k.lower(): (k, v) for k, v in AXIOS_HEADERS.items()}
    headers.update({k.lower(): (k, v) for k, v in custom.items()})
    return dict(headers.values())


def check_headers(value, what):
    """A {name: value} header dict that http.client can send; raises ConfigError."""
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be an object of header names to string values")
    for name, v in value.items():
        ok = HEADER_NAME_RE.match(name) and isinstance(v, str) and "\r" not in v and "\n" not in v
        if ok and name != "jwt_key":  # the key is never sent, only the token
            try:
                v.encode("latin-1")  # what http.client can put in a header
            except UnicodeEncodeError:
                ok = False
        if not ok:
            raise ConfigError(f"{what}: bad header {name!r}: {v!r}")
    if value.get("jwt_key") == "":
        raise ConfigError(f"{what}: jwt_key must not be empty (Evolution's jwt.sign would throw)")
    return dict(value)


def check_statuses(value, what):
    if not (isinstance(value, list) and all(isinstance(x, str) and x in RECEIPT_STATUSES for x in value)):
        raise ConfigError(f"{what} must be a list of statuses among {list(RECEIPT_STATUSES)}")
    return list(value)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_webhook_config(cfg):
    """The webhook_* keys of a /_fake/config body, validated and normalized."""
    out = {}
    if "webhook_url" in cfg:
        url = cfg["webhook_url"]
        if url is not None:
            try:
                parts = urlsplit(url)
                parts.port  # raises ValueError on a bad port
                ok = parts.scheme == "http" and bool(parts.hostname)
            except (ValueError, TypeError, AttributeError):
                ok = False
            if not ok:
                raise ConfigError("webhook_url must be null or an http://host[:port][/path] URL")
        out["webhook_url"] = url
    if "webhook_headers" in cfg:
        out["webhook_headers"] = check_headers(cfg["webhook_headers"], "webhook_headers")
    if "webhook_events" in cfg:
        events = cfg["webhook_events"]
        if not (isinstance(events, list) and all(e in WEBHOOK_EVENTS for e in events)):
            raise ConfigError(f"webhook_events must be a list among {list(WEBHOOK_EVENTS)}")
        # Evolution's /webhook/set subscribes an enabled webhook with no events to all of them.
        out["webhook_events"] = [e for e in WEBHOOK_EVENTS if e in events] or list(WEBHOOK_EVENTS)
    if "webhook_by_events" in cfg:
        if not isinstance(cfg["webhook_by_events"], bool):
            raise ConfigError("webhook_by_events must be a boolean")
        out["webhook_by_events"] = cfg["webhook_by_events"]
    if "webhook_receipts" in cfg:
        out["webhook_receipts"] = check_statuses(cfg["webhook_receipts"], "webhook_receipts")
    for key in ("webhook_delay_ms", "webhook_retry_base_ms", "webhook_retry_max_ms"):
        if key in cfg:
            if not (is_number(cfg[key]) and cfg[key] >= 0):
                raise ConfigError(f"{key} must be a non-negative number")
            out[key] = cfg[key]
    if "webhook_timeout_ms" in cfg:
        if not (is_number(cfg["webhook_timeout_ms"]) and cfg["webhook_timeout_ms"] > 0):
            raise ConfigError("webhook_timeout_ms must be a positive number")
        out["webhook_timeout_ms"] = cfg["webhook_timeout_ms"]
    if "webhook_retry" in cfg:
        v = cfg["webhook_retry"]
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ConfigError("webhook_retry (max attempts per event) must be an integer >= 1")
        out["webhook_retry"] = v
    if "webhook_retry_jitter" in cfg:
        if not (is_number(cfg["webhook_retry_jitter"]) and 0 <= cfg["webhook_retry_jitter"] <= 1):
            raise ConfigError("webhook_retry_jitter must be between 0 and 1")
        out["webhook_retry_jitter"] = cfg["webhook_retry_jitter"]
    if "webhook_retry_non_retryable" in cfg:
        v = cfg["webhook_retry_non_retryable"]
        if not (isinstance(v, list) and all(isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599
                                            for c in v)):
            raise ConfigError("webhook_retry_non_retryable must be a list of HTTP status codes")
        out["webhook_retry_non_retryable"] = list(v)
    return out


def http_post(url, headers, body, timeout):
    """One webhook attempt: (HTTP status or None, error or None)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, None
    except TimeoutError:  # socket.timeout is TimeoutError since 3.10
        return None, "timeout"
    except (OSError, http.client.HTTPException) as e:
        return None, f"{type(e).__name__}: {e}".rstrip(": ")
    finally:
        conn.close()


class MatchRule:
    """What fault rules share: which requests they take (match, fail_ratio, seed) and how many
    (times: None means unlimited)."""

    NAME = "rule"
    KEYS = set()

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise ConfigError(f"a {self.NAME} must be an object")
        unknown = set(spec) - {"match", "times", "fail_ratio", "seed"} - self.KEYS
        if unknown:
            raise ConfigError(f"unknown {self.NAME} keys: {sorted(unknown)}")
        self.spec = spec
        self.match = spec.get("match") or {}
        if not isinstance(self.match, dict) or set(self.match) - {"number", "text_contains", "instance"}:
            raise ConfigError("match takes only number, text_contains and instance")

    def check_common(self):
        spec = self.spec
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


class FaultRule(MatchRule):
    """One injected sendText fault."""

    NAME = "fault rule"
    KEYS = {"action", "status", "body", "headers", "content_type", "seconds", "route", "stored"}

    def __init__(self, spec):
        super().__init__(spec)
        self.route = spec.get("route", "send_text")
        if self.route not in ROUTE_ACTIONS:
            raise ConfigError(f"route must be one of {sorted(ROUTE_ACTIONS)}, got {self.route!r}")
        allowed = ROUTE_ACTIONS[self.route]
        self.action = spec.get("action")
        if self.action not in allowed:
            raise ConfigError(f"action of a {self.route} rule must be one of {sorted(allowed)}, got {self.action!r}")
        if self.action == "status" and not isinstance(spec.get("status"), int):
            raise ConfigError('action "status" needs an integer "status"')
        if self.route != "send_text" and set(self.match) - {"instance"}:
            raise ConfigError(f"a {self.route} rule can match only on instance")
        if "stored" in spec and (self.action != "prisma" or not isinstance(spec["stored"], bool)):
            raise ConfigError('"stored" (a boolean) goes only with action "prisma"')
        self.check_common()


class WebhookFaultRule(MatchRule):
    """Misbehaviour of the webhooks of the messages it matches."""

    NAME = "webhook fault rule"
    KEYS = {"duplicate", "reverse", "early", "statuses"}

    def __init__(self, spec):
        super().__init__(spec)
        if not set(spec) & self.KEYS:
            raise ConfigError(f"a webhook fault rule needs one of {sorted(self.KEYS)}")
        for flag in ("duplicate", "reverse", "early"):
            if not isinstance(spec.get(flag, False), bool):
                raise ConfigError(f"{flag} must be a boolean")
        self.duplicate = spec.get("duplicate", False)
        self.reverse = spec.get("reverse", False)
        self.early = spec.get("early", False)
        self.statuses = None
        if "statuses" in spec:
            self.statuses = check_statuses(spec["statuses"], "statuses")
        self.check_common()


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
        self.connection_states = {}  # instance → state, over connection_state
        self.session_closed_error = "connection_closed_400"
        self.save_messages = True  # Evolution's DATABASE_SAVE_DATA_NEW_MESSAGE
        self.faults = []
        self.records = []
        self.messages = []  # the stored Message rows: {"seq", "row"}, in insertion order
        self.message_seq = 0
        self.find_records = []  # every findMessages request
        self.webhook = copy.deepcopy(WEBHOOK_DEFAULTS)
        self.webhook_faults = []
        self.webhook_records = []
        self.webhooks_pending = 0
        self.webhooks_dropped = 0
        self.generation = 0  # bumped by reset: webhooks still queued from before are abandoned
        self.sent_jids = {}  # key id → remoteJid of every message sent since the last reset
        self.server_url = "http://127.0.0.1"  # the envelope's server_url; set once bound
        self.jitter = random.Random()

    def config_view(self):
        with self.lock:
            return {"api_key": self.api_key, "instances": self.instances,
                    "latency_ms": self.latency_ms, "api_version": self.api_version,
                    "not_on_whatsapp": sorted(self.not_on_whatsapp),
                    "connection_state": self.connection_state,
                    "connection_states": dict(self.connection_states),
                    "session_closed_error": self.session_closed_error,
                    "save_messages": self.save_messages,
                    "faults": [r.describe() for r in self.faults],
                    **copy.deepcopy(self.webhook),
                    "webhook_faults": [r.describe() for r in self.webhook_faults]}

    def configure(self, cfg):
        """Applies a /_fake/config body all at once, or nothing when any part is invalid."""
        if not isinstance(cfg, dict):
            raise ConfigError("the config body must be a JSON object")
        unknown = set(cfg) - {"latency_ms", "not_on_whatsapp", "api_key", "instances", "faults",
                              "connection_state", "connection_states", "session_closed_error",
                              "save_messages", "api_version", "webhook_faults"} - set(WEBHOOK_DEFAULTS)
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
        if "connection_states" in cfg and not (isinstance(cfg["connection_states"], dict) and all(
                v in CONNECTION_STATES for v in cfg["connection_states"].values())):
            raise ConfigError(f"connection_states must be an object of instance names to one of "
                              f"{sorted(CONNECTION_STATES)}")
        if "session_closed_error" in cfg and cfg["session_closed_error"] not in SESSION_CLOSED_ERRORS:
            raise ConfigError(f"session_closed_error must be one of {list(SESSION_CLOSED_ERRORS)}")
        if "save_messages" in cfg and not isinstance(cfg["save_messages"], bool):
            raise ConfigError("save_messages must be a boolean")
        if "faults" in cfg and not isinstance(cfg["faults"], list):
            raise ConfigError("faults must be a list")
        faults = [FaultRule(spec) for spec in cfg.get("faults", [])]
        webhook = check_webhook_config(cfg)
        if "webhook_faults" in cfg and not isinstance(cfg["webhook_faults"], list):
            raise ConfigError("webhook_faults must be a list")
        webhook_faults = [WebhookFaultRule(spec) for spec in cfg.get("webhook_faults", [])]
        with self.lock:
            self.webhook.update(webhook)
            if "webhook_faults" in cfg:
                self.webhook_faults = webhook_faults
            for key in ("latency_ms", "api_key", "connection_state", "api_version", "session_closed_error",
                        "save_messages"):
                if key in cfg:
                    setattr(self, key, cfg[key])
            if "instances" in cfg:
                self.instances = list(cfg["instances"])
            if "connection_states" in cfg:
                self.connection_states = dict(cfg["connection_states"])
            if "not_on_whatsapp" in cfg:
                self.not_on_whatsapp = set(cfg["not_on_whatsapp"])
            if "faults" in cfg:
                self.faults = faults

    def reset(self):
        with self.lock:
            self.records.clear()
            self.messages.clear()
            self.find_records.clear()
            self.faults.clear()
            self.webhook_records.clear()
            self.webhook_faults.clear()
            self.webhooks_pending = self.webhooks_dropped = 0
            self.sent_jids.clear()
            self.generation += 1

    def add_record(self, record):
        with self.lock:
            record["index"] = len(self.records)
            self.records.append(record)

    def finish_record(self, record, status, key_id=None, sent=False, fault=None):
        with self.lock:
            record.update(status=status, key_id=key_id, sent=sent, fault=fault)

    def pick_fault(self, instance, number, digits, text, route="send_text"):
        with self.lock:
            for rule in self.faults:
                if rule.route == route and rule.applies(instance, number, digits, text):
                    return rule
        return None

    def instance_state(self, instance):
        """The instance's connection state: its own in connection_states, else the global one."""
        with self.lock:
            return self.connection_states.get(instance, self.connection_state)

    def store_message(self, row):
        """Inserts a Message row (when save_messages is on, as Evolution's message.create)."""
        with self.lock:
            if self.save_messages:
                self.message_seq += 1
                self.messages.append({"seq": self.message_seq, "row": copy.deepcopy(row)})

    def add_find_record(self, record):
        with self.lock:
            record["index"] = len(self.find_records)
            self.find_records.append(record)

    def find_records_since(self, since):
        with self.lock:
            return [dict(r) for r in self.find_records[since:]]

    def find_messages(self, instance, where, key, gte_s, lte_s):
        """The rows fetchMessages matches, newest first: (count, rows). `key` holds the key
        filters already reduced to the truthy ones; gte_s/lte_s are seconds or None."""
        uid = instance_uuid(instance)
        with self.lock:
            rows = [m for m in self.messages if m["row"]["instanceId"] == uid]
            rows = copy.deepcopy(rows)
        out = []
        for m in rows:
            row = m["row"]
            if any(name in where and where[name] is not None and row.get(name) != where[name]
                   for name in ("id", "source", "messageType")):
                continue
            if any(not json_equal(row["key"].get(name, MISSING), value) for name, value in key.items()):
                continue
            if gte_s is not None and not gte_s <= row["messageTimestamp"] <= lte_s:
                continue
            out.append(m)
        # ORDER BY "messageTimestamp" DESC; Postgres leaves ties unordered, the fake puts the
        # later insert first.
        out.sort(key=lambda m: (m["row"]["messageTimestamp"], m["seq"]), reverse=True)
        return [m["row"] for m in out]

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
            ok = sum(1 for w in self.webhook_records if 200 <= (w["http_status"] or 0) < 300)
            return {"total": len(self.records), "in_flight": in_flight, "by_status": by_status,
                    "sent": sent, "sent_by_number": by_number, "sent_by_text": by_text,
                    "stored_messages": len(self.messages), "find_requests": len(self.find_records),
                    "webhooks_sent": ok, "webhooks_failed": len(self.webhook_records) - ok,
                    "webhooks_dropped": self.webhooks_dropped, "webhooks_pending": self.webhooks_pending}

    # --- webhooks -------------------------------------------------------------------------------

    def plan_webhooks(self, instance, number, text, key_id, jid, v1, body):
        """What a message that just went out sends (a dict for run_message_webhooks), or None.
        Remembers its remoteJid for /_fake/webhook in any case."""
        digits = re.sub(r"\D", "", number)
        with self.lock:
            self.sent_jids[key_id] = jid
            if self.webhook["webhook_url"] is None:
                return None
            rule = next((r for r in self.webhook_faults if r.applies(instance, number, digits, text)), None)
            events = self.webhook["webhook_events"]
            statuses = list(self.webhook["webhook_receipts"] if rule is None or rule.statuses is None
                            else rule.statuses)
            if rule is not None and rule.reverse:
                statuses.reverse()
            copies = 2 if rule is not None and rule.duplicate else 1
            # (status, copy): copy 1 is the duplicate, sent right after its original.
            updates = [(s, c) for s in statuses for c in range(copies)] if "MESSAGES_UPDATE" in events else []
            send_message = body is not None and "SEND_MESSAGE" in events
            count = len(updates) + send_message
            if count == 0:
                return None
            self.webhooks_pending += count
            return {"generation": self.generation, "instance": instance, "key_id": key_id, "jid": jid,
                    "v1": v1, "body": body if send_message else None, "updates": updates,
                    "early": rule is not None and rule.early, "count": count}

    def webhook_events_done(self, generation, count):
        with self.lock:
            if generation == self.generation:
                self.webhooks_pending -= count

    def alive(self, generation):
        """Whether webhooks planned in that generation may still go out."""
        with self.lock:
            return generation == self.generation and not self.stopping.is_set()

    def add_webhook_record(self, generation, record):
        with self.lock:
            if generation == self.generation:
                record["index"] = len(self.webhook_records)
                self.webhook_records.append(record)

    def webhook_dropped(self, generation):
        with self.lock:
            if generation == self.generation:
                self.webhooks_dropped += 1

    def webhooks_since(self, since):
        with self.lock:
            return [dict(r) for r in self.webhook_records[since:]]

    # --- the state file -------------------------------------------------------------------------

    def in_flight(self):
        with self.lock:
            return sum(r["in_flight"] for r in self.records) + sum(r["in_flight"] for r in self.find_records)

    @staticmethod
    def dump_rule(rule):
        version, internal, gauss = rule.rng.getstate()
        return {"spec": rule.spec, "times": rule.times, "hits": rule.hits, "rng": [version, list(internal), gauss]}

    @staticmethod
    def load_rule(cls, data):
        rule = cls(data["spec"])
        rule.times, rule.hits = data["times"], data["hits"]
        version, internal, gauss = data["rng"]
        rule.rng.setstate((version, tuple(internal), gauss))
        return rule

    def dump(self):
        """Everything the fake recorded and its configuration, for --state-file."""
        with self.lock:
            records = copy.deepcopy(self.records)
            find_records = copy.deepcopy(self.find_records)
            for r in records + find_records:
                if r["in_flight"]:  # cut short by the stop
                    r["in_flight"] = False
                    r["fault"] = r["fault"] or "stopped"
            return {"version": STATE_FILE_VERSION, "saved_at": time.time(),
                    "config": {"api_key": self.api_key, "instances": self.instances,
                               "latency_ms": self.latency_ms, "api_version": self.api_version,
                               "not_on_whatsapp": sorted(self.not_on_whatsapp),
                               "connection_state": self.connection_state,
                               "connection_states": self.connection_states,
                               "session_closed_error": self.session_closed_error,
                               "save_messages": self.save_messages, **copy.deepcopy(self.webhook)},
                    "faults": [self.dump_rule(r) for r in self.faults],
                    "webhook_faults": [self.dump_rule(r) for r in self.webhook_faults],
                    "records": records, "messages": copy.deepcopy(self.messages),
                    "message_seq": self.message_seq, "find_records": find_records,
                    "webhook_records": copy.deepcopy(self.webhook_records),
                    "webhooks_dropped": self.webhooks_dropped, "sent_jids": dict(self.sent_jids)}

    def load(self, data):
        """Takes back what dump() wrote: the saved configuration wins over the command line.
        Webhooks that were still to go at the stop are not sent."""
        if not isinstance(data, dict) or data.get("version") != STATE_FILE_VERSION:
            raise ConfigError(f"not a state file of version {STATE_FILE_VERSION}")
        self.configure(data["config"])
        faults = [self.load_rule(FaultRule, r) for r in data["faults"]]
        webhook_faults = [self.load_rule(WebhookFaultRule, r) for r in data["webhook_faults"]]
        with self.lock:
            self.faults, self.webhook_faults = faults, webhook_faults
            self.records = data["records"]
            self.messages, self.message_seq = data["messages"], data["message_seq"]
            self.find_records = data["find_records"]
            self.webhook_records = data["webhook_records"]
            self.webhooks_dropped = data["webhooks_dropped"]
            self.sent_jids = data["sent_jids"]
            self.webhooks_pending = 0


def write_state_file(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, ensure_ascii=False)
    os.replace(tmp, path)  # a reader (or the next start) never sees half a file


def receipt_data(instance, key_id, jid, status, v1):
    """`data` of a messages.update (research §6.5)."""
    if v1:
        return {"remoteJid": jid, "id": key_id, "fromMe": True, "status": status,
                "datetime": int(time.time() * 1000), "owner": instance}
    return {"keyId": key_id, "remoteJid": jid, "fromMe": True, "status": status,
            "instanceId": instance_uuid(instance), "messageId": db_row_id(key_id)}


def deliver_webhook(st, generation, event, instance, data, v1, key_id, status, headers=None, manual=False):
    """Emits one event like Evolution 2.3's WebhookController.emit + retryWebhookRequest: one
    body and one header set (one JWT) for all attempts. Records every attempt. Returns
    (last HTTP status or None, attempts, last error or None)."""
    with st.lock:
        cfg = copy.deepcopy(st.webhook)
        server_url = st.server_url
    url = cfg["webhook_url"]
    if url is None:  # switched off since the message was sent
        return None, 0, "webhook_url is not set"
    envelope = {"event": event, "instance": instance, "data": data, "destination": url,
                "date_time": iso_now(), "sender": instance_jid(instance), "server_url": server_url}
    if not v1:
        envelope["apikey"] = None  # v2 sends null when the key is not exposed; v1 leaves it out
    body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    target = f"{url}/{event.replace('.', '-')}" if cfg["webhook_by_events"] else url
    sent_headers = outgoing_headers(cfg["webhook_headers"] if headers is None else headers)
    base, attempts = cfg["webhook_retry_base_ms"], 0
    while True:
        if not st.alive(generation):
            return None, attempts, "abandoned"
        attempts += 1
        at = time.time()
        code, error = http_post(target, sent_headers, body, cfg["webhook_timeout_ms"] / 1000)
        st.add_webhook_record(generation, {"event": event, "instance": instance, "status": status,
                                           "key_id": key_id, "attempt": attempts, "http_status": code,
                                           "error": error, "at": at, "url": target, "manual": manual})
        if code is not None and 200 <= code < 300:
            return code, attempts, None
        if code in cfg["webhook_retry_non_retryable"] or attempts >= cfg["webhook_retry"]:
            st.webhook_dropped(generation)
            return code, attempts, error
        delay = min(base * 2 ** (attempts - 1), cfg["webhook_retry_max_ms"])
        delay = max(base, delay + delay * cfg["webhook_retry_jitter"] * (st.jitter.random() * 2 - 1))
        st.stopping.wait(delay / 1000)


def run_message_webhooks(st, plan):
    """The webhooks of one sent message (a State.plan_webhooks dict), one after the other."""
    generation, left = plan["generation"], plan["count"]
    instance, key_id, jid, v1 = plan["instance"], plan["key_id"], plan["jid"], plan["v1"]
    try:
        first = True
        if plan["body"] is not None:
            deliver_webhook(st, generation, "send.message", instance, plan["body"], v1, key_id, None)
            st.webhook_events_done(generation, 1)
            left -= 1
            first = False
        for status, duplicate in plan["updates"]:
            if not first and not duplicate:
                with st.lock:
                    delay_ms = st.webhook["webhook_delay_ms"]
                st.stopping.wait(delay_ms / 1000)
            if not st.alive(generation):
                return
            deliver_webhook(st, generation, "messages.update", instance,
                            receipt_data(instance, key_id, jid, status, v1), v1, key_id, status)
            st.webhook_events_done(generation, 1)
            left -= 1
            first = False
    finally:
        if left:
            st.webhook_events_done(generation, left)


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
        m = FIND_MESSAGES_RE.match(path)
        if m and self.command == "POST":
            return self.find_messages(unquote(m.group(1)), raw, parsed, parse_error)
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
        st = self.server.state
        denied = self.guard(instance)
        if denied:
            return self.reply(*denied)
        rule = st.pick_fault(instance, None, None, None, route="connection_state")
        if rule:
            return self.fault(st, None, rule)
        self.reply(200, {"instance": {"instanceName": instance, "state": st.instance_state(instance)}})

    def find_messages(self, instance, raw, parsed, parse_error):
        st = self.server.state
        record = {"time": time.time(), "method": self.command, "path": self.path, "instance": instance,
                  "headers": {k.lower(): v for k, v in self.headers.items()},
                  "body": raw.decode("utf-8", errors="replace"), "json": parsed, "status": None,
                  "fault": None, "total": None, "returned": None, "in_flight": True}
        st.add_find_record(record)

        def answer(status, payload, **outcome):
            with st.lock:
                record.update(status=status, **outcome)
            self.reply(status, payload)
        try:
            if parse_error:
                return answer(*parse_error)
            denied = self.guard(instance)
            if denied:
                return answer(*denied)
            # dataValidate does Object.assign(new Query(), req.body): an array body leaves a
            # Query without where, i.e. every message.
            body = parsed if isinstance(parsed, dict) else {}
            errors = validate_find(body)
            if errors:
                return answer(400, envelope(400, [errors]))
            rule = st.pick_fault(instance, None, None, None, route="find_messages")
            if rule:
                def finish(status, fault=None):
                    with st.lock:
                        record.update(status=status, fault=fault)
                return self.fault(st, None, rule, finish=finish)
            status, payload = self.fetch_messages(st, instance, body)
            outcome = {}
            if status == 200:
                outcome = {"total": payload["messages"]["total"], "returned": len(payload["messages"]["records"])}
            return answer(status, payload, **outcome)
        finally:
            with st.lock:
                record["in_flight"] = False

    @staticmethod
    def fetch_messages(st, instance, query):
        """channel.service.ts fetchMessages (v2.3.6, unchanged in 2.4.0-rc2): (status, body)."""
        where = query.get("where") if isinstance(query.get("where"), dict) else {}
        key = where.get("key") if isinstance(where.get("key"), dict) else {}
        # Each key filter applies only when truthy: fromMe false filters nothing.
        key = {name: key[name] for name in ("id", "fromMe", "remoteJid", "participants")
               if name in key and js_truthy(key[name])}
        for name in ("id", "source", "messageType"):
            if name in where and where[name] is not None and not isinstance(where[name], str):
                return 500, prisma_validation_error(name, type(where[name]).__name__)
        gte_s = lte_s = None
        ts = where.get("messageTimestamp")
        if js_truthy(ts) and isinstance(ts, dict) and js_truthy(ts.get("gte")) and js_truthy(ts.get("lte")):
            # Math.floor(new Date(x).getTime() / 1000) for both, only when both are given.
            bounds = [js_date_ms(ts["gte"]), js_date_ms(ts["lte"])]
            if None in bounds:
                return 500, prisma_validation_error("gte" if bounds[0] is None else "lte", "NaN")
            gte_s, lte_s = (int(b // 1000) for b in bounds)
        offset = query.get("offset")
        if not js_truthy(offset):
            offset = FIND_DEFAULT_OFFSET
        page = query.get("page")
        if not js_truthy(page):
            page = 1
        if not (is_number(offset) and float(offset).is_integer() and offset > 0):
            return 500, prisma_validation_error("take", type(offset).__name__)
        offset = int(offset)
        # skip: query.offset * (query.page === 1 ? 0 : query.page - 1), with JS's coercion of
        # the page ("2" - 1 is 1); Prisma wants a non-negative integer.
        if page == 1 and is_number(page) and not isinstance(page, bool):
            skip = 0
        else:
            try:
                number_page = float(page) if isinstance(page, (str, bool, int, float)) else float("nan")
            except ValueError:
                number_page = float("nan")
            skip = offset * (number_page - 1)
            if not (skip == skip and skip >= 0 and float(skip).is_integer()):
                return 500, prisma_validation_error("skip", "Float")
            skip = int(skip)
        rows = st.find_messages(instance, where, key, gte_s, lte_s)
        return 200, {"messages": {"total": len(rows), "pages": math.ceil(len(rows) / offset),
                                  "currentPage": page, "records": rows[skip:skip + offset]}}

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
            latency_ms, closed_error = st.latency_ms, st.session_closed_error
        # A session that is not open: the number check fails (500) or, when it is answered from
        # the IsOnWhatsapp cache, the send itself does (400), after the exists:false answer.
        closed = st.instance_state(instance) != "open"
        closed_status, closed_message = CANNED_FAULTS[closed_error]
        if closed and closed_error == "connection_closed_500":
            return answer(closed_status, envelope(closed_status, closed_message), fault="session_closed")
        if missing and jid.endswith("@s.whatsapp.net"):
            return answer(400, envelope(400, [{"jid": jid, "exists": False, "number": number}]))
        if closed:
            return answer(closed_status, envelope(closed_status, closed_message), fault="session_closed")

        delay = (body.get("options") or {}).get("delay", 0) if v1 else body.get("delay", 0)
        self.sleep((latency_ms + (delay if isinstance(delay, int) else 0)) / 1000)
        if st.stopping.is_set():
            return self.abort_stopped(lambda status, **outcome: st.finish_record(record, status, **outcome))
        key_id, now = self.new_key_id(v1), int(time.time())
        if v1:
            payload = {"key": {"remoteJid": jid, "fromMe": True, "id": key_id},
                       "message": {"extendedTextMessage": {"text": text}},
                       "messageTimestamp": str(now), "status": "PENDING"}
        else:
            payload = {"key": {"remoteJid": jid, "fromMe": True, "id": key_id}, "pushName": "Você",
                       "status": "PENDING", "message": {"conversation": text},
                       "messageType": "conversation", "messageTimestamp": now,
                       "instanceId": instance_uuid(instance), "source": "unknown"}
        # The Message row is inserted before the answer (and the webhook), with the same
        # messageTimestamp as the answer.
        st.store_message(message_row(instance, payload["key"], text, now))
        # Evolution fires send.message (not awaited) and then answers (research §2.4).
        self.start_webhooks(st, instance, number, text, key_id, jid, v1, payload)
        answer(201, payload, key_id=key_id, sent=True)

    @staticmethod
    def start_webhooks(st, instance, number, text, key_id, jid, v1, body):
        """Sends the message's webhooks from a new thread, or right now with the "early" fault."""
        plan = st.plan_webhooks(instance, number, text, key_id, jid, v1, body)
        if plan is None:
            return
        if plan["early"]:
            run_message_webhooks(st, plan)
        else:
            threading.Thread(target=run_message_webhooks, args=(st, plan), daemon=True,
                             name=f"webhooks-{key_id}").start()

    @staticmethod
    def new_key_id(v1):
        # Baileys ids: v1-era "BAE5" + 12 hex, v2-era "3EB0" + 36 hex (research §3.1).
        return "BAE5" + secrets.token_hex(6).upper() if v1 else "3EB0" + secrets.token_hex(18).upper()

    def fault(self, st, record, rule, finish=None):
        """Applies a fault rule. `finish(status, **outcome)` records the outcome; by default on
        the sendText record `record` (None: nothing to record)."""
        if finish is None:
            def finish(status, **outcome):
                if record is not None:
                    st.finish_record(record, status, **outcome)
        action, spec = rule.action, rule.spec
        if action == "reset":
            # SO_LINGER 0 makes close() send a RST, so the client sees "connection reset" rather
            # than an orderly end of stream.
            finish(None, fault=action)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if action == "hang":
            finish(None, fault=action)
            self.sleep(float(spec.get("seconds", 3600)))
            self.close_connection = True
            return
        if action == "status":
            status, body = spec["status"], spec.get("body")
            finish(status, fault=action)
            return self.reply(status, body, content_type=spec.get("content_type", "application/json; charset=utf-8"),
                              headers=spec.get("headers"))
        if action == "license_503":
            finish(503, fault=action)
            return self.reply(503, {"error": "service not activated", "code": "LICENSE_REQUIRED",
                                    "register_url": "https://license.evolution-api.com/register",
                                    "instance_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "evolution-server")),
                                    "docs_url": "https://doc.evolution-api.com/license",
                                    "message": "This Evolution API instance is not activated."})
        status, message = CANNED_FAULTS[action]
        if action == "textmessage_500" and rule.route == "find_messages":
            message = "Cannot read properties of undefined (reading 'fetchMessages')"
        if action == "prisma":
            # The message went out before the database insert failed: it counts as sent.
            with st.lock:
                latency_ms, v1 = st.latency_ms, st.api_version == "v1"
            self.sleep(latency_ms / 1000)
            if st.stopping.is_set():
                return self.abort_stopped(finish)
            # Its receipts still come (research §6.5 says 2.3.x would drop them for want of the
            # DB row; the fake sends them), with an id the client never sees; no send.message,
            # which Evolution emits only after the failed insert.
            key_id, jid = self.new_key_id(v1), create_jid(record["number"])
            if spec.get("stored", False):  # the insert that failed was another one
                st.store_message(message_row(record["instance"], {"remoteJid": jid, "fromMe": True, "id": key_id},
                                             record["text"], int(time.time())))
            self.start_webhooks(st, record["instance"], record["number"], record["text"], key_id, jid, v1, None)
            finish(status, sent=True, fault=action)
        else:
            finish(status, fault=action)
        self.reply(status, envelope(status, message))

    def abort_stopped(self, finish):
        """The fake is stopping while this message waited to go out: it does not go out, and
        the connection closes without an answer (what a stopped server does)."""
        finish(None, fault="stopped")
        self.close_connection = True

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
        if route == ("GET", "/_fake/webhooks"):
            try:
                since = int(query.get("since", ["0"])[0])
            except ValueError:
                return self.reply(400, {"error": "since must be an integer"})
            return self.reply(200, st.webhooks_since(max(since, 0)))
        if route == ("GET", "/_fake/find_requests"):
            try:
                since = int(query.get("since", ["0"])[0])
            except ValueError:
                return self.reply(400, {"error": "since must be an integer"})
            return self.reply(200, st.find_records_since(max(since, 0)))
        if route == ("GET", "/_fake/messages"):
            with st.lock:
                return self.reply(200, [m["row"] for m in st.messages])
        if route == ("POST", "/_fake/webhook"):
            return self.manual_webhook(st, raw)
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

    def manual_webhook(self, st, raw):
        """POST /_fake/webhook: one messages.update now, with the configured retries."""
        try:
            spec = json.loads(raw or b"{}")
            if not isinstance(spec, dict):
                raise ConfigError("the body must be a JSON object")
            unknown = set(spec) - {"instance", "key_id", "status", "number", "v1", "headers"}
            if unknown:
                raise ConfigError(f"unknown keys: {sorted(unknown)}")
            for key in ("instance", "key_id"):
                if not (isinstance(spec.get(key), str) and spec[key]):
                    raise ConfigError(f"{key} must be a non-empty string")
            if spec.get("status") not in RECEIPT_STATUSES:
                raise ConfigError(f"status must be one of {list(RECEIPT_STATUSES)}")
            if "number" in spec and not isinstance(spec["number"], str):
                raise ConfigError("number must be a string")
            if "v1" in spec and not isinstance(spec["v1"], bool):
                raise ConfigError("v1 must be a boolean")
            headers = check_headers(spec["headers"], "headers") if "headers" in spec else None
        except ValueError as e:  # ConfigError and JSONDecodeError
            return self.reply(400, {"error": str(e)})
        instance, key_id = spec["instance"], spec["key_id"]
        with st.lock:
            url, generation = st.webhook["webhook_url"], st.generation
            v1 = spec.get("v1", st.api_version == "v1")
            jid = create_jid(spec["number"]) if "number" in spec else st.sent_jids.get(key_id)
        if url is None:
            return self.reply(409, {"error": "webhook_url is not set"})
        if jid is None:
            return self.reply(400, {"error": f"unknown key_id {key_id!r}: give a number"})
        code, attempts, error = deliver_webhook(st, generation, "messages.update", instance,
                                                receipt_data(instance, key_id, jid, spec["status"], v1),
                                                v1, key_id, spec["status"], headers=headers, manual=True)
        self.reply(200, {"http_status": code, "attempts": attempts, "error": error})


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True  # hung handlers must not keep the process alive at shutdown
    allow_reuse_address = True  # SO_REUSEADDR: a restart binds the same port despite TIME_WAIT
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


def comma_list(value):
    return [x.strip() for x in value.split(",") if x.strip()]


def number(value):
    v = float(value)
    return int(v) if v.is_integer() else v


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
    p.add_argument("--state-file", help="load the records from here at start (if it exists), write them "
                                        "here on SIGTERM/SIGINT")
    w = p.add_argument_group("webhooks", "initial values of the webhook_* settings (see the module doc)")
    w.add_argument("--webhook-url", help="http:// URL the webhooks are POSTed to (default: none)")
    w.add_argument("--webhook-headers", type=json.loads, metavar="JSON", help='e.g. {"jwt_key": "secret"}')
    w.add_argument("--webhook-events", type=comma_list, metavar="A,B", help="SEND_MESSAGE,MESSAGES_UPDATE")
    w.add_argument("--webhook-by-events", action="store_const", const=True)
    w.add_argument("--webhook-receipts", type=comma_list, metavar="A,B", help="SERVER_ACK,DELIVERY_ACK,READ")
    w.add_argument("--webhook-delay-ms", type=number)
    w.add_argument("--webhook-retry", type=int, metavar="MAX_ATTEMPTS")
    w.add_argument("--webhook-retry-base-ms", type=number)
    w.add_argument("--webhook-retry-max-ms", type=number)
    w.add_argument("--webhook-retry-jitter", type=number)
    w.add_argument("--webhook-retry-non-retryable", type=lambda v: [int(c) for c in comma_list(v)], metavar="A,B")
    w.add_argument("--webhook-timeout-ms", type=number)
    args = p.parse_args(argv)

    instances = [i for i in args.instances.split(",") if i]
    state = State(args.api_key, instances, args.latency_ms, args.api_version)
    try:
        state.configure({k: v for k, v in vars(args).items() if k.startswith("webhook_") and v is not None})
    except ConfigError as e:
        p.error(str(e))
    if args.state_file and os.path.exists(args.state_file):
        try:
            with open(args.state_file) as f:
                state.load(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"cannot load --state-file {args.state_file}: {e}")
    server = FakeServer((args.host, args.port), state, args.verbose)
    port = server.server_address[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    state.server_url = f"http://{host}:{port}"
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
        server.server_close()  # the port is closed: connections are refused from now on
        if args.state_file:
            # Handlers woken by `stopping` finish their records first (briefly).
            deadline = time.monotonic() + 2
            while state.in_flight() and time.monotonic() < deadline:
                time.sleep(0.01)
            write_state_file(args.state_file, state.dump())
    return 0


if __name__ == "__main__":
    sys.exit(main())
