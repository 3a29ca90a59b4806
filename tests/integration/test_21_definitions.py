"""deploy/rabbitmq/definitions.json matches what the daemons declare: imported unchanged into a
fresh vhost of the broker (created for this test, deleted at its end), both daemons start on it
with the shipped topology names without a declaration conflict and deliver a message."""
import json
import os
import secrets
import unittest
import urllib.error
import urllib.parse

import harness
from harness import IntegrationTest, post_message, wait_task_status

DEFINITIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                           "rabbitmq", "definitions.json")


def shipped_topology(defs):
    """The topology section that names what the definitions declare."""
    exchange = defs["exchanges"][0]["name"]
    by_key = {b["routing_key"]: b["destination"] for b in defs["bindings"]
              if b["source"] == exchange}
    queues = {q["name"]: q for q in defs["queues"]}
    send = by_key["send"]
    dead = by_key[queues[send]["arguments"]["x-dead-letter-routing-key"]]
    stream = [n for n, q in queues.items() if q["arguments"].get("x-queue-type") == "stream"][0]
    retry = [n for n in queues if n not in (send, dead, stream)][0]
    return {"exchange": exchange, "queue": send, "dead_letter_queue": dead,
            "status_stream": stream, "retry_queue_prefix": retry.rsplit(".", 1)[0]}


class DefinitionsTest(IntegrationTest):
    def test_daemons_start_on_imported_definitions(self):
        with open(DEFINITIONS, encoding="utf-8") as f:
            defs = json.load(f)
        self.assertTrue(defs["queues"] and defs["exchanges"] and defs["bindings"])
        topology = shipped_topology(defs)

        # A vhost of this test's own: the shipped names cannot meet a developer's topology,
        # and deleting the vhost deletes everything in it.
        vhost = f"msg-defs-{secrets.token_hex(4)}"
        qvhost = urllib.parse.quote(vhost, safe="")
        amqp = urllib.parse.urlsplit(harness.AMQP_URL)
        user = urllib.parse.unquote(amqp.username or "guest")
        harness._mgmt("PUT", f"/api/vhosts/{qvhost}", {"description": "tests/integration/test_21"})
        self.addCleanup(self._delete_vhost, qvhost)
        harness._mgmt("PUT", f"/api/permissions/{qvhost}/{urllib.parse.quote(user, safe='')}",
                      {"configure": ".*", "write": ".*", "read": ".*"})
        self.assertEqual(harness._mgmt("GET", f"/api/queues/{qvhost}"), [], "a fresh vhost")
        harness._mgmt("POST", f"/api/definitions/{qvhost}",
                      {k: defs[k] for k in ("queues", "exchanges", "bindings")})
        imported = {q["name"] for q in harness._mgmt("GET", f"/api/queues/{qvhost}")}
        self.assertEqual(imported, {q["name"] for q in defs["queues"]})

        self.fake = self.start_fake()
        # The shipped retry delays, so that the shipped retry queue is the one declared. The
        # per-test config registers its own (unused) prefix for clean-up; the shipped names
        # only go into the copy, which registers nothing.
        base = self.config({"retry": {"delays": ["5s", "5s", "5s"]}})
        url = urllib.parse.urlunsplit((amqp.scheme, amqp.netloc, "/" + qvhost, amqp.query, ""))
        cfg = self.config_like(base, {"broker": {"url": url}, "topology": topology})

        self.api = self.start_api(cfg)
        self.consumer = self.start_consumer(cfg)
        r = post_message(self.api, "+52123456789", "hola")
        self.assertEqual(r.status, 202, r.body)
        doc = wait_task_status(self.api, r.json["task_id"], "SUCCESS")
        self.assertEqual(doc["result"]["phone"], "+52123456789")
        self.assertNotIn("inequivalent", self.api.log())
        self.assertNotIn("inequivalent", self.consumer.log())
        # Nothing declared beyond the definitions (but the snapshot writer's lock: an exclusive
        # queue that lives as long as its connection, api/snapshots.c).
        after = {q["name"] for q in harness._mgmt("GET", f"/api/queues/{qvhost}")
                 if not q.get("exclusive")}
        self.assertEqual(after, imported)
        for daemon in (self.api, self.consumer):
            daemon.begin_stop()
        self.assertEqual([self.api.stop(), self.consumer.stop()], [0, 0], "exit codes on SIGTERM")

    def _delete_vhost(self, qvhost):
        # The daemons first (a test that failed midway leaves them running): they must not
        # lose their vhost under them.
        for daemon in (getattr(self, "api", None), getattr(self, "consumer", None)):
            if daemon is not None:
                daemon.stop()
        try:
            harness._mgmt("DELETE", f"/api/vhosts/{qvhost}")
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise


if __name__ == "__main__":
    unittest.main(verbosity=2)
