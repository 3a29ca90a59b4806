"""deploy/rabbitmq/definitions.json matches what the daemons declare: imported into the broker
(with this test's own names), both daemons start on it without a declaration conflict and
deliver a message."""
import json
import os
import unittest

import harness
from harness import IntegrationTest, post_message, wait_task_status

DEFINITIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                           "rabbitmq", "definitions.json")


class DefinitionsTest(IntegrationTest):
    def test_daemons_start_on_imported_definitions(self):
        self.fake = self.start_fake()
        # The shipped retry delays, so that the shipped retry queue is the one declared.
        cfg = self.config({"retry": {"delays": ["5s", "5s", "5s"]}})
        prefix = cfg.data["topology"]["exchange"]
        with open(DEFINITIONS, encoding="utf-8") as f:
            text = f.read()
        # Every object name (and the dead-letter exchange arguments) starts with "messages";
        # renaming keeps the test off the default topology a developer may be running.
        defs = json.loads(text.replace('"messages', f'"{prefix}'))
        self.assertTrue(defs["queues"] and defs["exchanges"] and defs["bindings"])
        harness._mgmt("POST", f"/api/definitions/{harness._vhost()}",
                      {k: defs[k] for k in ("queues", "exchanges", "bindings")})
        declared = {q["name"] for q in defs["queues"]}
        self.assertEqual(declared, {f"{prefix}.send", f"{prefix}.dead", f"{prefix}.retry.5s",
                                    f"{prefix}.status"})

        api = self.start_api(cfg)
        self.start_consumer(cfg)
        r = post_message(api, "+52123456789", "hola")
        self.assertEqual(r.status, 202, r.body)
        doc = wait_task_status(api, r.json["task_id"], "SUCCESS")
        self.assertEqual(doc["result"]["phone"], "+52123456789")
        self.assertNotIn("inequivalent", api.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
