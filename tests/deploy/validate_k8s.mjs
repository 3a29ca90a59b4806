#!/usr/bin/env node
// Validates Kubernetes objects against their API schemas with the model classes of the npm
// packages kubernetes-models (built-in kinds), @kubernetes-models/keda (ScaledObject,
// TriggerAuthentication) and @kubernetes-models/prometheus-operator (ServiceMonitor), each
// object through `new Kind(object).validate()`.
//
//   node tests/deploy/validate_k8s.mjs [--json | --objects] [--parse-only] FILE... ("-" reads standard input)
//
// FILE is multi-document YAML, e.g. the output of `kubectl kustomize deploy/k8s/overlays/prod`.
// Prints one line per object: "ok KIND NAME", "invalid KIND NAME: why" or "unchecked KIND NAME
// (no model for APIVERSION)"; with --json one JSON array of {file, apiVersion, kind, name,
// status, errors} instead; --objects prints the parsed objects themselves as one JSON array (for
// tests that check their fields), without validating. --parse-only only parses the files. Exit status: 0 when
// every file parses and no object is invalid (unchecked ones are the caller's to judge), 1
// otherwise, 2 when the packages are missing. The packages are looked up in $MSG_TOOLS/node_modules
// (default: .tools/ of this checkout, where scripts/deps.sh installs them).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TOOLS = process.env.MSG_TOOLS || path.join(ROOT, ".tools");
const require = createRequire(path.join(TOOLS, "node_modules", "_resolve_from_here.js"));

let YAML;
try {
  YAML = require("yaml");
} catch (e) {
  console.error(`validate_k8s: the npm package "yaml" is not in ${TOOLS} (run scripts/deps.sh): ${e.message}`);
  process.exit(2);
}

// apiVersion group -> the package with its models; the core group ("v1") and the other
// built-in groups are in kubernetes-models under their apiVersion.
const CRD_PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

function modelModule(apiVersion) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  const pkg = CRD_PACKAGES[group] || "kubernetes-models";
  try {
    return require(`${pkg}/${apiVersion}`);
  } catch (e) {
    if (e.code === "MODULE_NOT_FOUND" || e.code === "ERR_PACKAGE_PATH_NOT_EXPORTED") {
      // A missing package is a set-up error, a missing group/version only "no model".
      try {
        require.resolve(`${pkg}/package.json`);
      } catch {
        console.error(`validate_k8s: the npm package "${pkg}" is not in ${TOOLS} (run scripts/deps.sh)`);
        process.exit(2);
      }
      return null;
    }
    throw e;
  }
}

function validateObject(obj) {
  const { apiVersion, kind } = obj;
  if (typeof apiVersion !== "string" || typeof kind !== "string") {
    return { status: "invalid", errors: ["apiVersion and kind must be strings"] };
  }
  const mod = modelModule(apiVersion);
  const Model = mod && mod[kind];
  if (typeof Model !== "function") {
    return { status: "unchecked", errors: [`no model for ${apiVersion} ${kind}`] };
  }
  try {
    new Model(obj).validate();
    return { status: "ok", errors: [] };
  } catch (e) {
    const details = Array.isArray(e.errors)
      ? e.errors.map((x) => `${x.instancePath || "/"} ${x.message}${x.params ? " " + JSON.stringify(x.params) : ""}`)
      : [String(e.message || e)];
    return { status: "invalid", errors: details };
  }
}

const args = process.argv.slice(2);
const asJson = args.includes("--json");
const asObjects = args.includes("--objects");
const parseOnly = args.includes("--parse-only");
const files = args.filter((a) => a === "-" || !a.startsWith("--"));
if (files.length === 0) {
  console.error("usage: validate_k8s.mjs [--json] [--parse-only] FILE... (- for standard input)");
  process.exit(2);
}

const results = [];
const objects = [];
let failed = false;
for (const file of files) {
  const text = fs.readFileSync(file === "-" ? 0 : file, "utf8");
  const docs = YAML.parseAllDocuments(text);
  for (const doc of docs) {
    if (doc.errors.length) {
      failed = true;
      results.push({ file, status: "invalid", kind: "(yaml)", name: "", errors: doc.errors.map(String) });
      continue;
    }
    const obj = doc.toJS();
    if (parseOnly || obj === null || obj === undefined) continue;
    if (asObjects) {
      objects.push(obj);
      continue;
    }
    if (typeof obj !== "object" || Array.isArray(obj)) {
      failed = true;
      results.push({ file, status: "invalid", kind: "(not an object)", name: "", errors: ["a document is not a mapping"] });
      continue;
    }
    const r = validateObject(obj);
    if (r.status === "invalid") failed = true;
    results.push({ file, apiVersion: obj.apiVersion, kind: obj.kind, name: obj.metadata?.name ?? "", ...r });
  }
}

if (asObjects && !failed) {
  console.log(JSON.stringify(objects));
} else if (asJson) {
  console.log(JSON.stringify(results, null, 1));
} else {
  for (const r of results) {
    const what = `${r.kind} ${r.name}`.trim();
    if (r.status === "ok") console.log(`ok ${what}`);
    else if (r.status === "unchecked") console.log(`unchecked ${what} (${r.errors[0]})`);
    else console.log(`invalid ${what} (${r.file}): ${r.errors.join("; ")}`);
  }
}
process.exit(failed ? 1 : 0);
