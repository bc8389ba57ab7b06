// The GraphiQL playground in a real browser.
//
//   node tests/js/playground.mjs <page-url> <expected-substring> [token]
//
// Opens <page-url> in headless Chromium (a normal navigation, so `Accept: text/html`), with
// `#token=<token>` appended when a token is given, waits for GraphiQL to render, clicks the
// execute button and waits until the result pane contains <expected-substring>. Prints the
// result and exits 0; exits 1 with a message on a page error, a failed page load, or when 30 s
// pass first; 2 on bad usage. With a token, the GraphQL request must also have carried
// `Authorization: Bearer <token>`. Browser console errors go to stderr.
//
// Chromium: $CHROMIUM, else /usr/bin/chromium (Debian's `chromium` package).

import { chromium } from "playwright-core";

const OVERALL_TIMEOUT_MS = 30_000;
const started = Date.now();
const remaining = () => Math.max(1, OVERALL_TIMEOUT_MS - (Date.now() - started));

const [pageUrl, expected, token] = process.argv.slice(2);
if (!pageUrl || expected === undefined || process.argv.length > 5) {
  console.error("usage: node playground.mjs <page-url> <expected-substring> [token]");
  process.exit(2);
}

let browser;
let lastResult = "";
let step = "starting";
let finishing = false;

/** Reports, closes the browser and exits; only the first call counts (later ones never return). */
async function finish(code, message) {
  if (finishing) return new Promise(() => {});
  finishing = true;
  clearTimeout(deadline);
  if (message) (code === 0 ? console.log : console.error)(message);
  try {
    await browser?.close();
  } catch {
    // Exiting anyway.
  }
  process.exit(code);
}

const deadline = setTimeout(() => {
  const seen = lastResult ? `; the result pane showed:\n${lastResult}` : "; the result pane stayed empty";
  finish(1, `playground: timed out after ${OVERALL_TIMEOUT_MS / 1000} s while ${step}${seen}`);
}, OVERALL_TIMEOUT_MS);

/** The result pane's text: the CodeMirror document when there is one, else what is rendered. */
function readResult() {
  const pane = document.querySelector(".result-window");
  if (!pane) return "";
  const editor = pane.querySelector(".CodeMirror");
  if (editor && editor.CodeMirror) return editor.CodeMirror.getValue();
  return pane.textContent || "";
}

try {
  step = "launching Chromium";
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
    timeout: remaining(),
  });
  const page = await browser.newPage();

  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const where = msg.location()?.url;
    console.error(`browser console error: ${msg.text()}${where ? ` (${where})` : ""}`);
  });
  page.on("pageerror", (err) => {
    finish(1, `playground: page error while ${step}: ${err?.stack || err}`);
  });
  page.on("requestfailed", (request) => {
    console.error(`browser request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`);
  });
  // The GraphQL requests GraphiQL sends (POSTs), to check the token's header.
  const authorizations = [];
  page.on("request", (request) => {
    if (request.method() === "POST") authorizations.push(request.headers()["authorization"]);
  });

  step = `loading ${pageUrl}`;
  const url = token ? `${pageUrl.replace(/#.*$/, "")}#token=${encodeURIComponent(token)}` : pageUrl;
  const response = await page.goto(url, { waitUntil: "load", timeout: remaining() });
  const type = response?.headers()["content-type"] ?? "";
  if (!response || response.status() !== 200 || !type.startsWith("text/html")) {
    const body = response ? (await response.text()).slice(0, 500) : "";
    await finish(
      1,
      `playground: ${pageUrl} answered ${response?.status()} (${type || "no content type"}), not a 200 HTML page\n${body}`,
    );
  }

  step = "waiting for GraphiQL to render";
  await page.waitForSelector(".graphiql-query-editor .CodeMirror", { timeout: remaining() });
  const button = page.locator(".graphiql-execute-button");
  await button.waitFor({ state: "visible", timeout: remaining() });

  step = "running the query";
  await button.click({ timeout: remaining() });

  step = `waiting for ${JSON.stringify(expected)} in the result pane`;
  while (true) {
    lastResult = await page.evaluate(readResult);
    if (lastResult.includes(expected)) break;
    await page.waitForTimeout(Math.min(100, remaining()));
  }

  if (token) {
    const wanted = `Bearer ${token}`;
    if (!authorizations.includes(wanted)) {
      await finish(
        1,
        `playground: no GraphQL request carried "Authorization: ${wanted}" (saw: ${JSON.stringify(authorizations)})\n${lastResult}`,
      );
    }
  }
  await finish(0, lastResult);
} catch (err) {
  await finish(1, `playground: failed while ${step}: ${err?.message || err}`);
}
