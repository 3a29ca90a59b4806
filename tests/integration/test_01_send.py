#!/usr/bin/env python3
"""Integration: the happy path of DESIGN §2 and §4 — POST /messages, delivery through the
(fake) Evolution API, GET /tasks/{id} answering SUCCESS with the gateway's message id."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (EVOLUTION_INSTANCE, EVOLUTION_KEY, UUID_RE, IntegrationTest, get_task,  # noqa: E402
                     http, post_message, wait_for, wait_task_status)

TASK_KEYS = {"task_id", "status", "attempts", "created_at", "updated_at", "result", "error",
             "next_retry_at", "delivery", "request_id"}


class SendTest(IntegrationTest):

    def deliver(self, api, phone, message, instance=None):
        """POSTs, checks the 202, waits for SUCCESS; returns (task_id, task document)."""
        before = time.time()
        r = post_message(api, phone, message, instance)
        self.assertEqual(r.status, 202, r.body)
        self.assertEqual(r.headers.get("content-type"), "application/json; charset=utf-8")
        self.assertEqual(set(r.json), {"success", "message", "task_id", "status"}, r.json)
        self.assertIs(r.json["success"], True)
        self.assertEqual(r.json["status"], "PENDING")
        self.assertIsInstance(r.json["message"], str)
        self.assertTrue(r.json["message"].strip())
        task_id = r.json["task_id"]
        self.assertRegex(task_id, UUID_RE)
        doc = wait_task_status(api, task_id, ("SUCCESS", "FAILURE"))
        self.assertEqual(doc["status"], "SUCCESS", doc)
        self.assertEqual(set(doc), TASK_KEYS, doc)
        self.assertEqual(doc["task_id"], task_id)
        self.assertEqual(doc["attempts"], 1, doc)
        self.assertIsNone(doc["error"], doc)
        self.assertIsNone(doc["next_retry_at"], doc)
        created = self.assertTime(doc["created_at"], near=before)
        updated = self.assertTime(doc["updated_at"], near=before)
        self.assertLessEqual(created, updated, doc)
        return task_id, doc

    def only_request(self):
        """The single sendText request the fake saw (fails when there were more or fewer),
        after a moment in which a duplicate would have shown up."""
        time.sleep(0.5)
        reqs = self.fake.requests()
        self.assertEqual(len(reqs), 1, reqs)
        return reqs[0]

    def test_seed_example(self):
        cfg, api, _ = self.start_stack(instances=(EVOLUTION_INSTANCE, "mi_instancia"))
        task_id, doc = self.deliver(api, "+52123456789", "Hola Carlos", "mi_instancia")
        req = self.only_request()
        self.assertEqual(req["method"], "POST")
        self.assertEqual(req["path"], "/message/sendText/mi_instancia")
        self.assertEqual(req["headers"].get("apikey"), EVOLUTION_KEY)
        self.assertEqual(req["headers"].get("content-type"), "application/json")
        self.assertEqual(req["json"], {"number": "52123456789", "text": "Hola Carlos"})
        self.assertEqual(req["status"], 201)
        self.assertRegex(req["key_id"], r"^3EB0[0-9A-F]{36}$")
        self.assertEqual(doc["result"], {"success": True, "phone": "+52123456789",
                                         "evolution_key": req["key_id"]})
        # Asked again, the task is unchanged (status only moves forward, nothing is resent).
        again = get_task(api, task_id)
        self.assertEqual(again.status, 200)
        self.assertEqual(again.json, doc)
        self.assertEqual(len(self.fake.requests()), 1)

    def test_default_instance(self):
        cfg, api, _ = self.start_stack()
        _, doc = self.deliver(api, "+5511987654321", "sin instancia")
        req = self.only_request()
        self.assertEqual(req["path"], f"/message/sendText/{EVOLUTION_INSTANCE}")
        self.assertEqual(req["json"], {"number": "5511987654321", "text": "sin instancia"})
        self.assertEqual(doc["result"], {"success": True, "phone": "+5511987654321",
                                         "evolution_key": req["key_id"]})

    def test_explicit_null_instance_is_the_default(self):
        cfg, api, _ = self.start_stack()
        r = http("POST", api.base_url + "/messages",
                 {"phone": "+5511987654321", "message": "nulo", "instance_name": None})
        self.assertEqual(r.status, 202, r.body)
        wait_task_status(api, r.json["task_id"], "SUCCESS")
        self.assertEqual(self.only_request()["path"], f"/message/sendText/{EVOLUTION_INSTANCE}")

    def test_phone_is_normalised(self):
        cfg, api, _ = self.start_stack()
        _, doc = self.deliver(api, "+52 (123) 456-789", "normalizado")
        req = self.only_request()
        self.assertEqual(req["json"], {"number": "52123456789", "text": "normalizado"})
        self.assertEqual(doc["result"]["phone"], "+52123456789")
        self.assertEqual(doc["result"]["evolution_key"], req["key_id"])
        # Dots and no '+' at all: the same number.
        _, doc = self.deliver(api, "52.123.456.789", "otra vez")
        reqs = self.fake.requests()
        self.assertEqual(len(reqs), 2, reqs)
        self.assertEqual(reqs[1]["json"], {"number": "52123456789", "text": "otra vez"})
        self.assertEqual(doc["result"]["phone"], "+52123456789")

    def test_unicode_message_passes_unchanged(self):
        cfg, api, _ = self.start_stack()
        text = "Olá, 世界! 👋\nlinha 2\t\"aspas\" \\ fim"
        _, doc = self.deliver(api, "+5511987654321", text)
        req = self.only_request()
        self.assertEqual(req["json"], {"number": "5511987654321", "text": text})
        self.assertEqual(doc["result"]["evolution_key"], req["key_id"])

    def test_several_messages_each_get_their_own_key(self):
        cfg, api, _ = self.start_stack()
        ids = []
        for i in range(5):
            r = post_message(api, f"+5511900000{i:03d}", f"mensagem {i}")
            self.assertEqual(r.status, 202, r.body)
            ids.append(r.json["task_id"])
        self.assertEqual(len(set(ids)), 5)
        docs = [wait_task_status(api, t, "SUCCESS") for t in ids]
        wait_for(lambda: self.fake.stats()["sent"] == 5, 5, what="5 sends")
        time.sleep(0.3)
        reqs = self.fake.requests()
        self.assertEqual(len(reqs), 5, reqs)
        key_by_text = {r["text"]: r["key_id"] for r in reqs}
        for i, doc in enumerate(docs):
            self.assertEqual(doc["result"], {"success": True, "phone": f"+5511900000{i:03d}",
                                             "evolution_key": key_by_text[f"mensagem {i}"]})

    def test_health_endpoints(self):
        cfg, api, consumer = self.start_stack()
        r = http("GET", api.base_url + "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {"service": "msg-api", "version": r.json.get("version"), "status": "ok"})
        self.assertRegex(r.json["version"], r"^\d+\.\d+\.\d+")
        r = http("GET", api.base_url + "/livez")
        self.assertEqual((r.status, r.json), (200, {"status": "ok"}))
        r = http("GET", api.base_url + "/readyz")
        self.assertEqual((r.status, r.json), (200, {"status": "ready"}))
        r = http("GET", api.base_url + "/health")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["status"], "ok", r.json)
        self.assertEqual(r.json["service"], "msg-api", r.json)
        for path, body in (("/livez", {"status": "ok"}), ("/readyz", {"status": "ready"})):
            r = http("GET", consumer.base_url + path)
            self.assertEqual((r.status, r.json), (200, body), path)
        r = http("GET", consumer.base_url + "/health")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["status"], "ok", r.json)
        self.assertEqual(r.json["service"], "msg-consumer", r.json)


if __name__ == "__main__":
    unittest.main()
