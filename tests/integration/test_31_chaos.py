#!/usr/bin/env python3
"""Integration: the chaos test of issue 6 §5. A steady stream of POSTs for CHAOS_SECONDS
(default 45) while, in turn, the consumer is SIGKILLed (and restarted), the broker is restarted
(rabbitmqctl stop_app / start_app), and the consumer is SIGKILLed again; all along the fake
Evolution API answers ~10 % of requests with 429 (retried) and stalls ~3 % past
evolution.timeout (held off, then looked up in findMessages: in doubt).

At the end:
- every 202 task is SUCCESS, or FAILURE with a reason and its job parked in the dead queue;
- the fake accepted (sent) each SUCCESS task's message exactly once, except tasks whose send
  raced a SIGKILL (the send was in flight when the consumer died): those are counted and
  reported, and there are at most as many per kill as deliveries were in flight (≤ prefetch);
- no process crashed (the killed consumers died of SIGKILL, everything else exits 0 on SIGTERM);
- the api answered every request, in bounded time, and 503 only while the broker was away.

A summary line ("[chaos] accepted=... delivered_once=...") goes to stderr. It restarts the
broker, so ctest runs it alone (RUN_SERIAL). A longer run by hand:
    CHAOS_SECONDS=600 MSG_BIN_DIR=build python3 tests/integration/test_31_chaos.py
"""

import os
import re
import secrets
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (IntegrationTest, Poller, PostStream, broker_outage, get_task, http,  # noqa: E402
                     queue_get, queue_info, wait_for)

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "45"))
PREFETCH = 16
EVOLUTION_TIMEOUT_S = 3
FAKE_LATENCY_MS = 50
RATE = float(os.environ.get("CHAOS_RATE", "15"))  # POSTs per second
FINAL = ("SUCCESS", "FAILURE")
# Known daemon bug (reported; test_30_faults.BrokerRestartTest is its expectedFailure): a
# broker connection drop makes msg-consumer send again the jobs whose sends were in flight.
# While this is True, such resends are counted and reported (delivered_twice_broker) and only
# bounded by the prefetch; set it to False once the consumer is fixed, so that they fail.
KNOWN_BROKER_DROP_RESEND = False


def gauge(base_url, name):
    """The value of an unlabelled metric on a daemon's /metrics, or None."""
    try:
        text = http("GET", base_url + "/metrics", timeout=2).body.decode()
    except OSError:
        return None
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class ChaosTest(IntegrationTest):

    def kill_consumer(self, cons, cfg, kills):
        """SIGKILLs `cons` (noting what was in flight) and starts a new consumer."""
        in_flight = gauge(cons.base_url, "msg_consumer_in_flight")
        fake_in_flight = self.fake.stats()["in_flight"]
        wall = time.time()
        code = cons.kill()
        self.assertEqual(code, -9)
        t = time.monotonic()
        new = self.start_consumer(cfg, ready_timeout=30)
        kills.append({"wall": wall, "in_flight": in_flight, "fake_in_flight": fake_in_flight,
                      "restart_s": time.monotonic() - t})
        return new

    def test_chaos(self):
        cfg, api, cons = self.start_stack(
            {"consumer": {"prefetch": PREFETCH},
             "evolution": {"timeout": f"{EVOLUTION_TIMEOUT_S}s"},
             "retry": {"delays": ["1s", "1s", "1s"]}},
            latency_ms=FAKE_LATENCY_MS,
            faults=[{"action": "hang", "seconds": EVOLUTION_TIMEOUT_S + 2, "fail_ratio": 0.03, "seed": 3},
                    {"action": "status", "status": 429, "fail_ratio": 0.10, "seed": 5}])
        consumers = [cons]
        kills = []
        api_ready = Poller(api.base_url + "/readyz", interval=0.2)
        stream = PostStream(api, f"chaos-{secrets.token_hex(3)}", threads=3, rate=RATE)
        t_start = time.monotonic()

        def at(fraction):
            delay = t_start + fraction * CHAOS_SECONDS - time.monotonic()
            if delay > 0:
                time.sleep(delay)

        out = None
        cons_ready = None
        try:
            at(0.2)
            consumers.append(self.kill_consumer(consumers[-1], cfg, kills))
            at(0.45)
            cons_ready = Poller(consumers[-1].base_url + "/readyz", interval=0.2)
            with broker_outage() as out:
                time.sleep(2)
            api_back = wait_for(lambda: api_ready.first(200, out.start_called), 30,
                                what="msg-api ready after the broker restart")
            cons_back = wait_for(lambda: cons_ready.first(200, out.start_called), 30,
                                 what="msg-consumer ready after the broker restart")
            at(0.7)
            consumers.append(self.kill_consumer(consumers[-1], cfg, kills))
            at(1.0)
        finally:
            results = stream.stop()
            api_ready.stop()
            if cons_ready:
                cons_ready.stop()
        posting_ended = time.monotonic()

        # --- the api answered throughout ---------------------------------------------------
        self.assertEqual([r for r in results if r["error"]], [], "POSTs without an answer")
        self.assertEqual([r for r in results if r["t1"] - r["t0"] >= 6], [], "POSTs that took 6 s or more")
        # 503: not queued; 504 outcome_unknown: the broker went before the job's confirm came
        # (README "Unknown outcome"). Both only around the broker restart; a 504 names its task.
        self.assertEqual({r["status"] for r in results} - {202, 503, 504}, set())
        outage_503 = [r for r in results if r["status"] == 503]
        stray = [r for r in results if r["status"] in (503, 504)
                 and not (out.stop_called - 0.5 <= r["t1"] and r["t0"] <= api_back + 1)]
        self.assertEqual(stray, [], "503s or 504s while the broker was up")
        self.assertTrue(all(r["task_id"] and r["code"] == "outcome_unknown"
                            for r in results if r["status"] == 504))
        self.assertTrue(all(r["retry_after"] for r in outage_503))
        self.assertEqual([s for s in api_ready.samples if s[1] is None], [], "/readyz without an answer")

        # --- no process crashed -------------------------------------------------------------
        self.assertTrue(api.running(), "msg-api died: " + api.log_tail())
        self.assertTrue(consumers[-1].running(), "the last consumer died: " + consumers[-1].log_tail())
        self.assertEqual([c.proc.returncode for c in consumers[:-1]], [-9] * (len(consumers) - 1))

        # --- every 202 task reaches an end -------------------------------------------------
        accepted = stream.accepted()
        docs, pending = {}, set(accepted)
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            for task_id in list(pending):
                r = get_task(api, task_id)
                if r.status == 200 and r.json["status"] in FINAL:
                    docs[task_id] = r.json
                    pending.discard(task_id)
            if pending:
                time.sleep(0.5)
        drain_s = time.monotonic() - posting_ended
        stuck = {t: (get_task(api, t).json or {}).get("status") for t in list(pending)[:20]}
        self.assertEqual(stuck, {}, f"{len(pending)} task(s) never finished")
        time.sleep(EVOLUTION_TIMEOUT_S + 2.5)  # stalled requests end at the fake

        # --- each message sent once, or twice only when its send raced a SIGKILL ------------
        records = self.fake.requests()
        sends = {}
        for q in records:
            if q["sent"]:
                sends.setdefault(q["text"], []).append(q["time"])
        received = {}
        for q in records:
            received[q["text"]] = received.get(q["text"], 0) + 1
        # Tasks with an attempt that ended in evolution_timeout, from the consumers' logs: when
        # the fake did send (its answer reached a starved consumer after the timeout, as on a
        # loaded machine), the retry sends again. That is the documented ambiguity of a timeout
        # (retried as transient), not a lost ack: counted and reported apart.
        timed_out = set()
        for c in consumers:
            timed_out.update(re.findall(r"task_id=(\S+) attempt=\d+ error=evolution_timeout", c.log()))
        late, twice_broker = [], []
        once, twice_kill, twice_other, never = [], {}, [], []
        parked = {t: d for t, d in docs.items() if d["status"] == "FAILURE"}
        for task_id, doc in docs.items():
            text = accepted[task_id]["text"]
            times = sorted(sends.get(text, []))
            if doc["status"] == "FAILURE":
                if times:
                    twice_other.append((text, "parked but sent", times))
                continue
            if len(times) == 1:
                once.append(text)
            elif not times:
                never.append(text)
            else:
                # The first send was in flight when a consumer was killed: up to
                # evolution.timeout before the kill until just after it.
                k = next((i for i, kill in enumerate(kills)
                          if kill["wall"] - EVOLUTION_TIMEOUT_S - 0.5 <= times[0] <= kill["wall"] + 0.5), None)
                if len(times) == 2 and k is not None:
                    twice_kill.setdefault(k, []).append(text)
                elif len(times) == 2 and task_id in timed_out:
                    late.append(text)
                else:
                    where = ("during the broker restart" if out.stop_called_wall - 0.5 <= times[0]
                             <= out.stop_called_wall + (out.started - out.stop_called) + 1 else "unexplained")
                    if where == "during the broker restart" and len(times) == 2 and KNOWN_BROKER_DROP_RESEND:
                        twice_broker.append(text)
                    else:
                        twice_other.append((text, task_id, where,
                                            [round(t - out.stop_called_wall, 3) for t in times]))

        # Parked tasks: a reason on the task and in the dead queue.
        dead = queue_get(cfg.dead_queue, count=max(len(parked) + 10, 10)) if parked else []
        dead_reason = {m["properties"].get("message_id"): (m["properties"].get("headers") or {}).get("x-failure-reason")
                       for m in dead}
        retry_counts = {}
        for d in docs.values():
            retry_counts[d["attempts"]] = retry_counts.get(d["attempts"], 0) + 1

        kills_text = "; ".join(f"in_flight={k['in_flight']} fake_in_flight={k['fake_in_flight']} "
                               f"restart={k['restart_s']:.1f}s" for k in kills)
        summary = (
            f"[chaos] seconds={CHAOS_SECONDS:g} posts={len(results)} accepted={len(accepted)} "
            f"delivered_once={len(once)} "
            f"delivered_twice_sigkill={sum(len(v) for v in twice_kill.values())} "
            f"({', '.join(f'kill{k + 1}:{len(v)}' for k, v in sorted(twice_kill.items())) or 'none'}) "
            f"delivered_twice_late_answer={len(late)} delivered_twice_broker_drop={len(twice_broker)} "
            f"delivered_twice_other={len(twice_other)} never_sent={len(never)} parked={len(parked)} "
            f"({sorted({(d['error'] or {}).get('code') for d in parked.values()})}) "
            f"503_during_outage={len(outage_503)} "
            f"broker_stop_app={out.stopped - out.stop_called:.1f}s "
            f"broker_down_total={out.started - out.stop_called:.1f}s "
            f"api_reconnect={api_back - out.started:+.1f}s consumer_reconnect={cons_back - out.started:+.1f}s "
            f"(after start_app+await_startup) "
            f"kills=[{kills_text}] "
            f"attempts={dict(sorted(retry_counts.items()))} fake_requests={len(records)} "
            f"fake_by_status={self.fake.stats()['by_status']} drain={drain_s:.1f}s")
        print("\n" + summary, file=sys.stderr, flush=True)

        self.assertEqual(never, [], "SUCCESS tasks the fake never accepted")
        self.assertEqual(twice_other, [], "messages sent twice for another reason than a SIGKILL race")
        self.assertLessEqual(len(twice_broker), PREFETCH, twice_broker)
        for k, texts in twice_kill.items():
            bound = kills[k]["in_flight"] if kills[k]["in_flight"] is not None else PREFETCH
            self.assertLessEqual(len(texts), max(bound, kills[k]["fake_in_flight"]), f"kill {k + 1}: {texts}")
            self.assertLessEqual(len(texts), PREFETCH)
        for task_id, d in parked.items():
            self.assertTrue(d["error"] and d["error"].get("code"), d)
            self.assertIn(dead_reason.get(task_id), ("retries_exhausted", "permanent"),
                          f"{task_id} not parked with a reason: {dead_reason.get(task_id)}")
        # Nothing left behind (the management statistics lag by some seconds).
        wait_for(lambda: queue_info(cfg.queue).get("messages", 1) == 0, 20, interval=1,
                 what="the job queue to be empty")


if __name__ == "__main__":
    unittest.main(verbosity=2)
