"""POST /messages/batch: up to 1,000 messages in one request, per-item results in order, the
valid ones published with one round of confirms and delivered."""
import unittest

from harness import IntegrationTest, http, wait_for, wait_task_status


class BatchTest(IntegrationTest):
    def test_1000_with_10_invalid(self):
        cfg, api, _ = self.start_stack()
        bad = set(range(5, 1000, 100))  # 10 items
        messages = []
        for i in range(1000):
            if i in bad:
                messages.append({"phone": "12", "message": f"bad {i}"})
            else:
                messages.append({"phone": "+52123456789", "message": f"batch {i}"})
        r = http("POST", f"{api.base_url}/messages/batch", {"messages": messages}, timeout=30)
        self.assertEqual(r.status, 200, r.body[:500])
        self.assertEqual(r.json["accepted"], 990)
        self.assertEqual(r.json["rejected"], 10)
        self.assertFalse(r.json["success"])
        results = r.json["results"]
        self.assertEqual([x["index"] for x in results], list(range(1000)))
        ids = []
        for i, x in enumerate(results):
            if i in bad:
                self.assertEqual(x["error"]["code"], "invalid_field", x)
                self.assertEqual(x["error"]["field"], f"messages[{i}].phone")
                self.assertNotIn("task_id", x)
            else:
                self.assertEqual(x["status"], "PENDING")
                ids.append(x["task_id"])
        self.assertEqual(len(set(ids)), 990)
        wait_for(lambda: self.fake.stats()["sent"] == 990, 60, what="990 sends")
        for task_id in ids[:20] + ids[-20:]:
            wait_task_status(api, task_id, "SUCCESS")
        texts = self.fake.stats()["sent_by_text"]
        self.assertEqual(sorted(texts), sorted(f"batch {i}" for i in range(1000) if i not in bad))
        self.assertEqual(set(texts.values()), {1})

    def test_body_errors(self):
        cfg, api, _ = self.start_stack(consumer=False)
        url = f"{api.base_url}/messages/batch"
        for body, code, field in (({"messages": []}, "invalid_field", "messages"),
                                  ({"messages": [{}] * 1001}, "invalid_field", "messages"),
                                  ({}, "missing_field", "messages"),
                                  ({"messages": {}}, "invalid_field", "messages"),
                                  ({"messages": [], "x": 1}, "unknown_field", "x")):
            r = http("POST", url, body)
            self.assertEqual(r.status, 422, (body if len(str(body)) < 100 else code, r.body))
            self.assertEqual(r.json["error"]["code"], code)
            self.assertEqual(r.json["error"]["field"], field)
        ok = http("POST", url, {"messages": [{"phone": "+52123456789", "message": "one"}]})
        self.assertEqual(ok.status, 200, ok.body)
        self.assertTrue(ok.json["success"])
        self.assertEqual(http("GET", url).status, 405)


if __name__ == "__main__":
    unittest.main(verbosity=2)
