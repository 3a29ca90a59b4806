#!/usr/bin/env node
// Drives msg-api's /dashboard in headless Chromium through puppeteer-core, as an operator would:
//
//   node tests/browser/dashboard.mjs SPEC.json
//
// SPEC: {base_url, api_key, success_id, success_phone, failure_id, failure_code, parked_id,
// scheduled_id, read_key (a key without the admin scope), out_dir}. The page must load with no console error and no page error and fetch nothing from
// another origin; then, with the key typed in, it must show the counts, the failed task with its
// reason among the recent failures, the sent task when looked up by its id and in a search by
// phone, the worker, the scheduled task, whose Cancel button must cancel it, and the parked job,
// whose Redrive button must move it. Then a reload must
// keep the key (sessionStorage), a key without the admin scope must be shown as a 403 in the
// panels that need it, and a wrong key as a 401. Screenshots go
// to out_dir. Prints one JSON line of findings; exit 0 when every check held, 1 on the first
// that did not (the message says which), 2 when puppeteer-core or Chromium is missing.
// puppeteer-core is looked up in $MSG_TOOLS/node_modules (default .tools/ of this checkout, where
// scripts/deps.sh installs it); Chromium at $CHROMIUM (default /usr/bin/chromium).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TOOLS = process.env.MSG_TOOLS || path.join(ROOT, ".tools");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const require = createRequire(path.join(TOOLS, "node_modules", "_resolve_from_here.js"));

let puppeteer;
try {
  puppeteer = require("puppeteer-core");
} catch (e) {
  console.error(`dashboard.mjs: puppeteer-core is not in ${TOOLS} (run scripts/deps.sh): ${e.message}`);
  process.exit(2);
}
if (!fs.existsSync(CHROMIUM)) {
  console.error(`dashboard.mjs: no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  process.exit(2);
}

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const WAIT = 20000;
const findings = { steps: [] };
const consoleErrors = [];   // console.error and failed loads reported by the browser
const pageErrors = [];      // uncaught exceptions in the page
const foreign = [];         // requests to anywhere but msg-api

class CheckFailed extends Error {}
function check(cond, what) {
  if (!cond) throw new CheckFailed(what);
  findings.steps.push(what);
}
// Waits for fn (run in the page with args) to return something truthy; the message says what
// was awaited and what the page showed instead.
async function waitIn(page, what, fn, ...args) {
  try {
    const handle = await page.waitForFunction(fn, { timeout: WAIT, polling: 100 }, ...args);
    const value = await handle.jsonValue();
    findings.steps.push(what);
    return value;
  } catch (e) {
    const shown = await page.evaluate(() => ({
      banner: document.getElementById("banner").textContent,
      status: document.getElementById("status-line").textContent,
      errors: Array.from(document.querySelectorAll(".err")).map(x => x.id + ": " + x.textContent).filter(x => !/: $/.test(x)),
    })).catch(() => ({}));
    throw new CheckFailed(`${what}: not seen within ${WAIT / 1000} s (${e.message.split("\n")[0]}); page shows ${JSON.stringify(shown)}`);
  }
}
async function type(page, selector, text) {
  await page.click(selector, { clickCount: 3 });
  await page.keyboard.press("Backspace");
  await page.type(selector, text);
}

const userDir = fs.mkdtempSync(path.join(spec.out_dir, "chromium-profile-"));
const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  headless: true,
  userDataDir: userDir,
  // As root, Chromium needs --no-sandbox; the rest keeps it from calling out to the network,
  // which this machine does not reach (each refused connection would be logged).
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions"],
});
let code = 0;
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const origin = new URL(spec.base_url).origin;
  page.on("console", m => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", e => pageErrors.push(String(e && e.message || e)));
  page.on("request", r => { const u = r.url(); if (!u.startsWith(origin + "/") && !u.startsWith("data:")) foreign.push(u); });

  // 1. The page loads on its own: no error, nothing fetched, waiting for a key.
  const resp = await page.goto(spec.base_url + "/dashboard", { waitUntil: "load", timeout: WAIT });
  check(resp && resp.status() === 200, `GET /dashboard answers 200 (got ${resp && resp.status()})`);
  check((resp.headers()["content-type"] || "").startsWith("text/html"), "served as text/html");
  await new Promise(r => setTimeout(r, 300));
  check(consoleErrors.length === 0 && pageErrors.length === 0,
        `no console error on load (console: ${JSON.stringify(consoleErrors)}, page: ${JSON.stringify(pageErrors)})`);
  check(/Not connected/.test(await page.$eval("#status-line", e => e.textContent)), "asks for the key before any call");

  // 2. The key typed in: counts, failures, the worker.
  await type(page, "#apikey", spec.api_key);
  await page.click("#connect");
  await waitIn(page, "the counts show a SUCCESS and a FAILURE",
    () => ["SUCCESS", "FAILURE"].every(s => {
      const b = document.querySelector(`#counts [data-status="${s}"] b`);
      return b && Number(b.textContent) >= 1;
    }));
  findings.failure_reason = await waitIn(page, "the failure is listed with its reason",
    (id, reason) => {
      const tr = document.querySelector(`#failures tr[data-task-id="${id}"]`);
      const code = tr && tr.querySelector("code.reason");
      return code && code.textContent === reason && tr.textContent;
    }, spec.failure_id, spec.failure_code);
  await waitIn(page, "the worker is listed", () => document.querySelectorAll("#workers tr[data-worker-id]").length >= 1);
  check(await page.$eval("#chart", e => e.querySelectorAll("circle").length === 3), "the rate chart has its three series");

  // 3. The sent task, looked up by its id and found by a search on its phone.
  await type(page, "#lookup-id", spec.success_id);
  await page.click("#lookup-go");
  await waitIn(page, "the lookup by id shows the sent task as SUCCESS",
    id => { const t = document.getElementById("lookup-task"); return t && t.dataset.taskId === id && t.dataset.status === "SUCCESS"; },
    spec.success_id);
  await type(page, "#q-phone", spec.success_phone);
  await page.select("#q-status", "SUCCESS");
  await page.click("#q-go");
  await waitIn(page, "the search by status and phone finds it",
    id => document.querySelector(`#results tr[data-task-id="${id}"]`) !== null, spec.success_id);

  // A scheduled task, cancelled from its lookup.
  await type(page, "#lookup-id", spec.scheduled_id);
  await page.click("#lookup-go");
  await waitIn(page, "the scheduled task has a Cancel button",
    id => { const t = document.getElementById("lookup-task");
            return t && t.dataset.taskId === id && t.dataset.status === "SCHEDULED" && t.querySelector('button[data-action="cancel"]'); },
    spec.scheduled_id);
  await page.click('#lookup-task button[data-action="cancel"]');
  await waitIn(page, "Cancel made it CANCELLED",
    id => { const t = document.getElementById("lookup-task");
            return t && t.dataset.taskId === id && t.dataset.status === "CANCELLED" && !t.querySelector("button"); },
    spec.scheduled_id);
  // Back to the sent task for the screenshot.
  await type(page, "#lookup-id", spec.success_id);
  await page.click("#lookup-go");
  await waitIn(page, "the sent task is shown again",
    id => { const t = document.getElementById("lookup-task"); return t && t.dataset.taskId === id; }, spec.success_id);

  // 4. The parked job: shown, then redriven from the page.
  await waitIn(page, "the parked job is in the dead letters",
    id => document.querySelector(`#dead tr[data-task-id="${id}"] button[data-action="redrive-task"]`) !== null, spec.parked_id);
  // A few more samples for the rate chart, so that the screenshot shows lines.
  for (let i = 0; i < 4; i++) {
    await new Promise(r => setTimeout(r, 600));
    await page.click("#refresh");
  }
  await waitIn(page, "the rate chart draws its lines", () => document.querySelectorAll("#chart polyline").length === 3);
  const shot = path.join(spec.out_dir, "dashboard.png");
  await page.screenshot({ path: shot, fullPage: true });
  findings.screenshot = shot;
  await page.click(`#dead tr[data-task-id="${spec.parked_id}"] button[data-action="redrive-task"]`);
  findings.redrive_note = await waitIn(page, "the page says the redrive moved it",
    id => { const n = document.getElementById("dead-note").textContent; return /moved 1 of/.test(n) && n.includes(id) && n; },
    spec.parked_id);
  await waitIn(page, "the job left the dead letters",
    id => document.querySelector(`#dead tr[data-task-id="${id}"]`) === null, spec.parked_id);
  await page.screenshot({ path: path.join(spec.out_dir, "dashboard-after-redrive.png"), fullPage: true });
  check(consoleErrors.length === 0 && pageErrors.length === 0,
        `no console error while used (console: ${JSON.stringify(consoleErrors)}, page: ${JSON.stringify(pageErrors)})`);

  // 5. The key stays for this tab: a reload connects by itself.
  await page.reload({ waitUntil: "load" });
  check(await page.$eval("#apikey", e => e.value) === spec.api_key, "the key is kept in sessionStorage across a reload");
  await waitIn(page, "the reloaded page connects by itself", () => /Updated/.test(document.getElementById("status-line").textContent));

  // 6. Refusals are shown in the page, not only in the console: the browser itself logs each
  // 401 or 403 load as a console error, so from here only those are allowed. A key without
  // the admin scope: the counts load, the dead letters and the workers say 403.
  const before = consoleErrors.length;
  await page.click("#forget");
  await type(page, "#apikey", spec.read_key);
  await page.click("#connect");
  findings.forbidden = await waitIn(page, "a key without the admin scope shows 403 in the workers and dead letters",
    () => {
      const w = document.getElementById("workers-error").textContent, d = document.getElementById("dead-error").textContent;
      return /403/.test(w) && /403/.test(d) && document.getElementById("stats-error").textContent === "" && w;
    });
  await page.click("#forget");
  await type(page, "#apikey", "not-the-key");
  await page.click("#connect");
  findings.unauthorized_banner = await waitIn(page, "a refused key shows a 401 banner",
    () => { const b = document.getElementById("banner").textContent; return /401/.test(b) && b; });
  const later = consoleErrors.slice(before).filter(t => !/status of 40[13]/.test(t));
  check(later.length === 0 && pageErrors.length === 0,
        `no error but the browser's own 401 and 403 notices (console: ${JSON.stringify(later)}, page: ${JSON.stringify(pageErrors)})`);
  await page.click("#forget");
  check(foreign.length === 0, `nothing fetched from another origin (${JSON.stringify(foreign)})`);
} catch (e) {
  code = 1;
  findings.failed = e instanceof CheckFailed ? e.message : String(e && e.stack || e);
} finally {
  await browser.close();
  fs.rmSync(userDir, { recursive: true, force: true });
}
console.log(JSON.stringify(findings));
if (code) console.error(`dashboard.mjs: FAILED: ${findings.failed}`);
process.exit(code);
