"""Error texts are valid UTF-8 however the request cut them: a field name or a JSON error
quoting bytes cut inside a character is answered 4xx with a readable message, never 500."""
import json
import unittest

from harness import IntegrationTest, http

WEBHOOK_SECRET = "hook-secret-42"
# After one ASCII byte, 2-byte characters: any even-byte cut of this name falls inside one.
LONG_KEY = "a" + "é" * 45


class Utf8ErrorTest(IntegrationTest):
    def test_error_texts_cut_inside_a_character(self):
        _, api, _ = self.start_stack({"webhooks": {"secret": WEBHOOK_SECRET}}, consumer=False)
        base = api.base_url
        json_type = {"Content-Type": "application/json"}

        body = {"phone": "+52123456789", "message": "hola", LONG_KEY: 1}
        r = http("POST", base + "/messages", json.dumps(body, ensure_ascii=False).encode(), json_type)
        self.assertEqual(r.status, 422, r.body[:300])
        err = self.assertError(r, 422, "unknown_field", field=r.json["error"]["field"])
        self.assertTrue(LONG_KEY.startswith(err["field"].rstrip("?")), err)

        r = http("POST", base + "/messages/batch",
                 json.dumps({"messages": [body]}, ensure_ascii=False).encode(), json_type)
        self.assertEqual(r.status, 200, r.body[:300])
        self.assertEqual(r.json["results"][0]["error"]["code"], "unknown_field")
        self.assertTrue(r.json["results"][0]["error"]["field"].startswith("messages[0].aé"))

        r = http("POST", base + "/dead-letters/redrive",
                 json.dumps({LONG_KEY: 1}, ensure_ascii=False).encode(), json_type)
        self.assertEqual(r.status, 422, r.body[:300])
        err = self.assertError(r, 422, "unknown_field", field=r.json["error"]["field"])
        self.assertTrue(LONG_KEY.startswith(err["field"].rstrip("?")), err)

        # Invalid JSON whose error quotes the bytes where it stopped: half a character.
        for path, headers in (("/messages", json_type),
                              ("/webhooks/evolution", {**json_type, "X-Webhook-Secret": WEBHOOK_SECRET})):
            r = http("POST", base + path, b'{"event": \xc3', headers)
            self.assertEqual(r.status, 400, f"{path}: {r.status} {r.body[:300]!r}")
            r.body.decode("utf-8")


if __name__ == "__main__":
    unittest.main(verbosity=2)
