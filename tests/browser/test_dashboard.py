"""/dashboard in a real browser: the stack (msg-api with an API key, msg-consumer, the fake
Evolution API) gets a message that is sent and one to a number not on WhatsApp (FAILURE, and the
job parked); then dashboard.mjs drives headless Chromium through puppeteer-core against the page
(no console error, the key typed in, the failure with its reason, the sent task found by its id,
a scheduled task cancelled and the parked job redriven from the page, screenshots), and this
driver checks through the API that the task was cancelled and the job left the dead letters and
was delivered.

  MSG_BIN_DIR=build python3 tests/browser/test_dashboard.py

Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM) and puppeteer-core in .tools/
(scripts/deps.sh). Without them it says what is missing and exits 77, which ctest reports as
skipped; with CI set that is a failure. MSG_DASHBOARD_PNG=path also copies the screenshot there
(the README's docs/dashboard.png is made that way).
"""
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from harness import IntegrationTest, http, wait_for  # noqa: E402

SCRIPT = os.path.join(HERE, "dashboard.mjs")
TOOLS = os.environ.get("MSG_TOOLS") or os.path.join(ROOT, ".tools")
CHROMIUM = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
KEY = "dashboard-test-key"
READ_KEY = "dashboard-read-key"  # read scope only: no dead letters, no workers
SENT_PHONE, LOST_PHONE = "+5511987650001", "+5511987650002"


def missing_tools():
    """What the browser test lacks, as sentences (empty: nothing)."""
    missing = []
    if not shutil.which("node"):
        missing.append("node is not installed (scripts/deps.sh installs nodejs)")
    if not os.path.isfile(os.path.join(TOOLS, "node_modules", "puppeteer-core", "package.json")):
        missing.append(f"puppeteer-core is not in {TOOLS}/node_modules (run scripts/deps.sh)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return missing


class DashboardTest(IntegrationTest):
    def test_dashboard_in_chromium(self):
        auth = {"X-API-Key": KEY}
        keys = {"api_keys": [KEY], "keys": [{"name": "viewer", "key": READ_KEY, "scopes": ["read"]}]}
        cfg, api, _ = self.start_stack({"api": keys, "retry": {"delays": []}},
                                       not_on_whatsapp=[LOST_PHONE.lstrip("+")])
        base = api.base_url

        def task(task_id):
            return http("GET", f"{base}/tasks/{task_id}", headers=auth)

        def send(phone, text):
            r = http("POST", f"{base}/messages", {"phone": phone, "message": text}, headers=auth)
            self.assertEqual(r.status, 202, r.body)
            return r.json["task_id"]

        sent = [send(SENT_PHONE, f"dashboard ok {i}") for i in range(3)]
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        r = http("POST", f"{base}/messages", {"phone": SENT_PHONE, "message": "dashboard later",
                                              "send_at": later.strftime("%Y-%m-%dT%H:%M:%SZ")},
                 headers=auth)
        self.assertEqual(r.status, 202, r.body)
        scheduled = r.json["task_id"]
        lost = send(LOST_PHONE, "dashboard lost")
        for task_id in sent:
            wait_for(lambda: (task(task_id).json or {}).get("status") == "SUCCESS", 20,
                     what=f"task {task_id} SUCCESS")
        wait_for(lambda: (task(lost).json or {}).get("status") == "FAILURE", 20, what="the FAILURE")
        wait_for(lambda: (task(scheduled).json or {}).get("status") == "SCHEDULED", 20,
                 what="the scheduled task")
        self.assertEqual(task(lost).json["error"]["code"], "number_not_on_whatsapp")
        wait_for(lambda: lost in [m.get("task_id") for m in
                                  http("GET", f"{base}/dead-letters", headers=auth).json["messages"]],
                 15, what="the failed job parked")
        # The number is on WhatsApp now: the redrive from the page delivers it.
        self.fake.config(not_on_whatsapp=[])

        spec = {"base_url": base, "api_key": KEY, "success_id": sent[0], "success_phone": SENT_PHONE,
                "failure_id": lost, "failure_code": "number_not_on_whatsapp", "parked_id": lost,
                "scheduled_id": scheduled, "read_key": READ_KEY,
                "out_dir": self.tmpdir}
        spec_path = os.path.join(self.tmpdir, "dashboard-spec.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        t0 = time.monotonic()
        run = subprocess.run(["node", SCRIPT, spec_path], capture_output=True, text=True, timeout=150,
                             env=dict(os.environ, MSG_TOOLS=TOOLS, CHROMIUM=CHROMIUM))
        took = time.monotonic() - t0
        print(f"dashboard.mjs took {took:.1f} s; screenshots in {self.tmpdir}", file=sys.stderr)
        self.assertEqual(run.returncode, 0,
                         f"dashboard.mjs exited {run.returncode}:\n{run.stderr[-3000:]}\n{run.stdout[-3000:]}")
        findings = json.loads(run.stdout.strip().splitlines()[-1])
        self.assertIn("number_not_on_whatsapp", findings["failure_reason"])
        self.assertIn("401", findings["unauthorized_banner"])
        self.assertIn("403", findings["forbidden"])

        # What the page did, seen from the API: the task was cancelled, the job left the dead
        # letters and was delivered.
        self.assertEqual(task(scheduled).json["status"], "CANCELLED")
        listed = http("GET", f"{base}/dead-letters", headers=auth)
        self.assertEqual(listed.status, 200, listed.body)
        self.assertNotIn(lost, [m.get("task_id") for m in listed.json["messages"]], listed.body)
        self.assertEqual(listed.json["count"], 0, listed.body)
        wait_for(lambda: (task(lost).json or {}).get("status") == "SUCCESS", 20,
                 what="the redriven task SUCCESS")
        self.assertIn("dashboard lost", self.fake.stats()["sent_by_text"])

        shot = findings["screenshot"]
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", shot)
        if os.environ.get("MSG_DASHBOARD_PNG"):
            shutil.copyfile(shot, os.environ["MSG_DASHBOARD_PNG"])


if __name__ == "__main__":
    lacking = missing_tools()
    if lacking:
        print("browser test not run: " + "; ".join(lacking), file=sys.stderr)
        if os.environ.get("CI"):
            print("CI must run it: install them (.ci/run, scripts/deps.sh)", file=sys.stderr)
            sys.exit(1)
        sys.exit(77)
    unittest.main(verbosity=2)
