// The GraphQL-over-HTTP conformance audit of graphql-http against a running endpoint.
//
//   node tests/js/audit.mjs http://127.0.0.1:8080/graphql
//
// Runs every audit of graphql-http's `serverAudits`, one at a time, and prints one line per audit
// (id, status, name; the reason and a glimpse of the response when it is not "ok") and a summary.
// Exit code 1 when an audit whose name starts with "MUST" failed (status "error", or the audit
// could not run at all), 2 on bad usage, else 0 ("SHOULD"/"MAY" failures are reported, not fatal).
//
// Every request carries `graphql-require-preflight: 1`: the gateway's CSRF protection rejects a
// GET without such a header (see docs-graphql-contract.md), and the audits are about the
// GraphQL-over-HTTP behaviour, not about CSRF.

import { serverAudits } from "graphql-http";

const PER_REQUEST_TIMEOUT_MS = 10_000;

const url = process.argv[2];
if (!url || process.argv.length > 3) {
  console.error("usage: node audit.mjs <graphql-endpoint-url>");
  process.exit(2);
}

/** Global fetch plus the CSRF preflight header and a per-request deadline. */
async function fetchFn(input, init = {}) {
  const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
  headers.set("graphql-require-preflight", "1");
  return fetch(input, {
    ...init,
    headers,
    signal: init.signal ?? AbortSignal.timeout(PER_REQUEST_TIMEOUT_MS),
  });
}

/** A short description of a failing audit's response: status, content type, start of the body. */
async function describe(response) {
  if (!response || typeof response.status !== "number") return "";
  let text = `HTTP ${response.status}`;
  const type = response.headers?.get("content-type");
  if (type) text += ` (${type})`;
  if (!response.bodyUsed) {
    try {
      const body = (await response.text()).replace(/\s+/g, " ").trim();
      if (body) text += `: ${body.length > 300 ? `${body.slice(0, 300)}…` : body}`;
    } catch {
      // The body cannot be read (any more); the status is enough.
    }
  }
  return text;
}

const results = [];
for (const { id, name, fn } of serverAudits({ url, fetchFn })) {
  let result;
  try {
    // A result has { id, name, status: "ok" } or { id, name, status: "notice" | "warn" |
    // "error", reason, response } (graphql-http/lib/audits/common.d.ts).
    result = await fn();
  } catch (err) {
    // graphql-http rethrows anything that is not an assertion failure (a refused connection, a
    // timeout, a reset): the audit could not be performed.
    result = { id, name, status: "fatal", reason: `the audit could not run: ${err?.cause ?? err}` };
  }
  results.push(result);
  let line = `${result.status.toUpperCase().padEnd(6)} ${result.id}  ${result.name}`;
  if (result.status !== "ok") {
    line += `\n         reason: ${result.reason}`;
    const response = await describe(result.response);
    if (response) line += `\n         response: ${response}`;
  }
  console.log(line);
}

const count = (status) => results.filter((r) => r.status === status).length;
const mustFailures = results.filter(
  (r) => r.name.startsWith("MUST") && (r.status === "error" || r.status === "fatal"),
);
console.log(
  `\n${results.length} audits: ${count("ok")} ok, ${count("warn")} warn, ${count("notice")} notice, ` +
    `${count("error")} error, ${count("fatal")} fatal`,
);
if (mustFailures.length > 0) {
  console.log(`${mustFailures.length} MUST audit(s) failed:`);
  for (const r of mustFailures) console.log(`  ${r.id}  ${r.name}: ${r.reason}`);
  process.exit(1);
}
console.log("every MUST audit passed");
process.exit(0);
