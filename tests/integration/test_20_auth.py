"""API keys: when api.api_keys is set, every endpoint but /, /livez, /readyz and the documents
needs one, /metrics too unless api.metrics_public."""
import unittest

from harness import IntegrationTest, http, post_message


KEY = "s3cret-key-1"


class AuthTest(IntegrationTest):
    def test_keys_required_except_probes(self):
        cfg, api, _ = self.start_stack({"api": {"api_keys": [KEY, "other-key"]}}, consumer=False)
        base = api.base_url

        r = post_message(api, "+52123456789", "hola")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json["error"]["code"], "unauthorized")
        self.assertIn("Bearer", r.headers.get("www-authenticate", ""))

        for path in ("/health", "/tasks/00000000-0000-4000-8000-000000000000", "/metrics"):
            self.assertEqual(http("GET", base + path).status, 401, path)
        self.assertEqual(http("GET", base + "/metrics", headers={"X-API-Key": KEY}).status, 200)
        for path in ("/", "/livez", "/readyz", "/openapi.json", "/docs"):
            self.assertEqual(http("GET", base + path).status, 200, path)

        wrong = post_message(api, "+52123456789", "hola", headers={"Authorization": "Bearer nope"})
        self.assertEqual(wrong.status, 401)
        prefix = post_message(api, "+52123456789", "hola", headers={"X-API-Key": KEY[:-1]})
        self.assertEqual(prefix.status, 401)

        bearer = post_message(api, "+52123456789", "hola", headers={"Authorization": f"Bearer {KEY}"})
        self.assertEqual(bearer.status, 202, bearer.body)
        header = post_message(api, "+52123456789", "hola", headers={"X-API-Key": "other-key"})
        self.assertEqual(header.status, 202, header.body)
        got = http("GET", f"{base}/tasks/{bearer.json['task_id']}", headers={"X-API-Key": KEY})
        self.assertEqual(got.status, 200)
        self.assertNotIn(KEY, api.log(), "API keys must never be logged")

    def test_metrics_public_when_configured(self):
        cfg, api, _ = self.start_stack({"api": {"api_keys": [KEY], "metrics_public": True}},
                                       consumer=False)
        r = http("GET", api.base_url + "/metrics")
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertIn(b"msg_api_ready", r.body)
        self.assertEqual(http("GET", api.base_url + "/health").status, 401)

    def test_no_keys_means_open(self):
        cfg, api, _ = self.start_stack(consumer=False)
        self.assertEqual(post_message(api, "+52123456789", "hola").status, 202)


if __name__ == "__main__":
    unittest.main(verbosity=2)
