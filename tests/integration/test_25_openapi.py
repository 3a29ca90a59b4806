"""The running msg-api serves its OpenAPI document and docs page, and answers every documented
operation (no 404 "not_found" or 405 for any of them). The reverse direction, every route
documented, is the unit test unit.routes."""
import re
import unittest
import uuid

from harness import IntegrationTest, http


class OpenApiTest(IntegrationTest):
    def test_documented_operations_answer(self):
        # With a webhook secret, so POST /webhooks/evolution answers (401 without it) instead
        # of 404 "webhooks_disabled".
        cfg, api, _ = self.start_stack({"webhooks": {"secret": "s"}}, consumer=False)
        r = http("GET", api.base_url + "/openapi.json")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("application/json"))
        doc = r.json
        self.assertEqual(doc["openapi"][:2], "3.")
        operations = 0
        for path, item in doc["paths"].items():
            for method, op in item.items():
                url = api.base_url + re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
                body = None
                if "requestBody" in op:
                    body = op["requestBody"]["content"]["application/json"]["example"]
                resp = http(method.upper(), url, body)
                documented = set(op["responses"])
                self.assertIn(str(resp.status), documented, f"{method} {path}: {resp.status} {resp.body[:200]}")
                self.assertNotEqual(resp.status, 405, f"{method} {path}")
                if resp.status == 404:
                    self.assertEqual(resp.json["error"]["code"], "task_not_found", path)
                operations += 1
        self.assertGreaterEqual(operations, 8)

        page = http("GET", api.base_url + "/docs")
        self.assertEqual(page.status, 200)
        self.assertTrue(page.headers["content-type"].startswith("text/html"))
        html = page.body.decode()
        self.assertIn("openapi.json", html)
        # Served with no external assets: nothing is fetched from another host.
        self.assertIsNone(re.search(r'(src|href)="(https?:)?//', html), "external asset in /docs")


if __name__ == "__main__":
    unittest.main(verbosity=2)
