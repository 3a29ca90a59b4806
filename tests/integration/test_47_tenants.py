"""Tenants (api.keys): every endpoint x own or other tenant's task x the key's scopes; sends only
through the key's instances; Idempotency-Keys per tenant; the tenant travels on the status stream,
so another replica enforces the same bounds; counters per tenant; SIGHUP re-reads key files and
reopens the log file, and never stops the daemon."""
import os
import signal
import time
import unittest
import uuid

from harness import IntegrationTest, free_port, http, wait_for

ACME_INST, BETA_INST, OTHER_INST = "acme-inst", "beta-inst", "other-inst"
KEYS = {
    "acme-send": {"name": "acme", "key": "acme-send-key", "instances": [ACME_INST], "scopes": ["send"]},
    "acme-read": {"name": "acme", "key": "acme-read-key", "scopes": ["read"]},
    "acme-cancel": {"name": "acme", "key": "acme-cancel-key", "scopes": ["cancel", "read"]},
    "ops": {"name": "ops", "key": "ops-admin-key", "scopes": ["admin", "read", "cancel"]},
}
LEGACY = "legacy-all-scopes"
BETA_KEY = "beta-key-1"


def hdr(key):
    return {"X-API-Key": key}


def message(instance, text="hola"):
    return {"phone": "+52123456789", "message": text, "instance_name": instance}


class TenantTest(IntegrationTest):
    def setUp(self):
        super().setUp()
        self.beta_file = os.path.join(self.tmpdir, "beta.key")
        with open(self.beta_file, "w") as f:
            f.write(f"# beta's key\n{BETA_KEY}\n")
        self.log_file = os.path.join(self.tmpdir, "api-file.log")
        keys = list(KEYS.values()) + [{"name": "beta", "key_file": self.beta_file}]
        self.cfg, self.api, _ = self.start_stack(
            {"api": {"api_keys": [LEGACY], "keys": keys}, "log": {"file": self.log_file}},
            consumer=False)
        self.base = self.api.base_url

    def post(self, key, body, headers=None, path="/messages"):
        return http("POST", self.base + path, body, {**hdr(key), **(headers or {})})

    def new_task(self, key, instance):
        r = self.post(key, message(instance))
        self.assertEqual(r.status, 202, r.body)
        return r.json["task_id"]

    def test_matrix(self):
        acme_task = self.new_task("acme-send-key", ACME_INST)
        beta_task = self.new_task(BETA_KEY, BETA_INST)
        unknown = str(uuid.uuid4())

        # POST /messages and /messages/batch: the send scope, through the key's instances.
        self.assertError(self.post("acme-send-key", message(OTHER_INST)), 403,
                         "instance_not_allowed", field="instance_name")
        for key in ("acme-read-key", "acme-cancel-key", "ops-admin-key"):
            self.assertError(self.post(key, message(ACME_INST)), 403, "insufficient_scope")
        r = self.post("acme-send-key", {"messages": [message(ACME_INST), message(OTHER_INST)]},
                      path="/messages/batch")
        self.assertEqual(r.status, 200, r.body)
        self.assertIn("task_id", r.json["results"][0])
        self.assertEqual(r.json["results"][1]["error"]["code"], "instance_not_allowed")
        self.assertEqual(r.json["results"][1]["error"]["field"], "messages[1].instance_name")
        self.assertError(self.post("acme-read-key", {"messages": [message(ACME_INST)]},
                                   path="/messages/batch"), 403, "insufficient_scope")
        self.assertEqual(self.post(BETA_KEY, message(OTHER_INST)).status, 202)
        self.assertEqual(self.post(LEGACY, message(OTHER_INST)).status, 202)

        # GET /tasks/{id}: read scope, own tenant only; admin sees every tenant.
        def get(key, task):
            return http("GET", f"{self.base}/tasks/{task}", headers=hdr(key))
        self.assertEqual(get("acme-read-key", acme_task).status, 200)
        self.assertError(get("acme-read-key", beta_task), 404, "task_not_found")
        self.assertError(get("acme-read-key", unknown), 404, "task_not_found")
        self.assertError(get("acme-send-key", acme_task), 403, "insufficient_scope")
        self.assertEqual(get(BETA_KEY, beta_task).status, 200)
        self.assertError(get(BETA_KEY, acme_task), 404, "task_not_found")
        self.assertEqual(get("ops-admin-key", acme_task).status, 200)
        self.assertEqual(get("ops-admin-key", beta_task).status, 200)
        self.assertEqual(get(LEGACY, beta_task).status, 200)

        # DELETE /tasks/{id}: cancel scope, own tenant only.
        def cancel(key, task):
            return http("DELETE", f"{self.base}/tasks/{task}", headers=hdr(key))
        self.assertError(cancel("acme-read-key", acme_task), 403, "insufficient_scope")
        self.assertError(cancel("acme-cancel-key", beta_task), 404, "task_not_found")
        self.assertEqual(get(BETA_KEY, beta_task).json["status"], "PENDING")
        r = cancel("acme-cancel-key", acme_task)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json["status"], "CANCELLED")
        self.assertError(cancel(BETA_KEY, acme_task), 404, "task_not_found")
        self.assertEqual(cancel("ops-admin-key", beta_task).json["status"], "CANCELLED")

        # Dead letters, redrive and /metrics: admin only (legacy keys have every scope);
        # /health: any valid key.
        for key in ("acme-send-key", "acme-read-key", "acme-cancel-key", BETA_KEY):
            self.assertError(http("GET", self.base + "/dead-letters", headers=hdr(key)), 403,
                             "insufficient_scope")
            self.assertError(self.post(key, {}, path="/dead-letters/redrive"), 403,
                             "insufficient_scope")
            self.assertError(http("GET", self.base + "/metrics", headers=hdr(key)), 403,
                             "insufficient_scope")
            self.assertIn(http("GET", self.base + "/health", headers=hdr(key)).status, (200, 503))
        for key in ("ops-admin-key", LEGACY):
            self.assertEqual(http("GET", self.base + "/dead-letters", headers=hdr(key)).status, 200)
            self.assertEqual(self.post(key, {"max": 1}, path="/dead-letters/redrive").status, 200)
        metrics = http("GET", self.base + "/metrics", headers=hdr("ops-admin-key")).body.decode()
        self.assertIn('msg_api_tenant_messages_accepted_total{tenant="acme"} 2', metrics)
        self.assertIn('msg_api_tenant_messages_accepted_total{tenant="beta"} 2', metrics)
        self.assertRegex(metrics, r'msg_api_tenant_refused_total\{tenant="acme"\} [1-9]')
        self.assertNotIn("acme-send-key", self.api.log() + open(self.log_file).read())

        # Another replica learns every task's tenant from the status stream.
        cfg2 = self.config_like(self.cfg, {"api": {"listen": f"127.0.0.1:{free_port()}"},
                                           "log": {"file": ""}})
        api2 = self.start_api(cfg2)
        self.assertEqual(http("GET", f"{api2.base_url}/tasks/{beta_task}",
                              headers=hdr(BETA_KEY)).status, 200)
        self.assertEqual(http("GET", f"{api2.base_url}/tasks/{beta_task}",
                              headers=hdr("acme-read-key")).status, 404)

    def test_idempotency_keys_are_per_tenant(self):
        idem = {"Idempotency-Key": "order-42"}
        a = self.post("acme-send-key", message(ACME_INST), idem)
        b = self.post(BETA_KEY, message(ACME_INST), idem)
        self.assertEqual((a.status, b.status), (202, 202), (a.body, b.body))
        self.assertNotEqual(a.json["task_id"], b.json["task_id"])
        again = self.post("acme-send-key", message(ACME_INST), idem)
        self.assertEqual(again.status, 202)
        self.assertEqual(again.json["task_id"], a.json["task_id"])
        self.assertEqual(again.headers.get("idempotent-replayed"), "true")
        # The same key with another body, from beta: beta's own request, not acme's.
        other = self.post(BETA_KEY, message(ACME_INST, "other text"), idem)
        self.assertError(other, 422, "idempotency_key_reused", field="Idempotency-Key")

    def test_sighup_rereads_key_files_and_reopens_the_log(self):
        self.assertEqual(self.post(BETA_KEY, message(BETA_INST)).status, 202)
        with open(self.beta_file, "w") as f:
            f.write("beta-key-2\n")
        moved = self.log_file + ".1"
        os.rename(self.log_file, moved)
        os.kill(self.api.pid, signal.SIGHUP)
        wait_for(lambda: os.path.exists(self.log_file), 5, what="the log file opened again")
        time.sleep(0.2)
        self.assertTrue(self.api.running(), "SIGHUP must not stop msg-api")
        self.assertError(self.post(BETA_KEY, message(BETA_INST)), 401, "unauthorized")
        self.assertEqual(self.post("beta-key-2", message(BETA_INST)).status, 202)
        self.assertEqual(self.post("acme-send-key", message(ACME_INST)).status, 202)
        with open(self.log_file) as f:
            self.assertIn("API keys reloaded", f.read())
        # A file that no longer loads changes nothing.
        with open(self.beta_file, "w") as f:
            f.write("\n")
        os.kill(self.api.pid, signal.SIGHUP)
        wait_for(lambda: "configuration not reloaded" in open(self.log_file).read(), 5,
                 what="the refused reload logged")
        self.assertEqual(self.post("beta-key-2", message(BETA_INST)).status, 202)


if __name__ == "__main__":
    unittest.main(verbosity=2)
