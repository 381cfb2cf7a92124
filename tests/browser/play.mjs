// Drives headless Chromium (Debian's /usr/bin/chromium) through player.html, all cases in one
// browser, and prints one JSON document: {"results": [...]} with, per case, what
// the page reported (window.__playback) plus the page's console, page errors and failed
// requests.
//
// Input (stdin, JSON lines): {"chromium": path?, "concurrency": int? (cases played at once, each
//                      in its own context; 1..8), "trustSpki": [base64 sha256 of a certificate's SPKI, ...]?,
//                      "hostMap": {host name: IPv4 address}?,
//                      "cases": [{"name": str, "url": str, "timeoutMs": int}]?}
// and, when that first line has no "cases", a second line {"cases": [...]}: Chromium is launched
// on the first line, so a caller can start it and prepare the cases meanwhile.
// trustSpki: certificates Chromium accepts although no trusted root signed them (a cluster's
// local CA's leaf), and only those: --ignore-certificate-errors-spki-list, which Chromium
// honours only with a user-data-dir (launch() always runs with its own temporary one).
// Exit status 0 whenever results were printed (a playback failure is a result, not a crash);
// 2 when the input is bad or Chromium cannot start.
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const T0 = Date.now();
// Where the time goes, on stderr (the caller shows it with a failure).
const mark = (what) => console.error(`play.mjs ${((Date.now() - T0) / 1000).toFixed(2)}s ${what}`);

const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];

const stdinLines = createInterface({ input: process.stdin, crlfDelay: Infinity })[Symbol.asyncIterator]();

async function readLine() {
  const { value, done } = await stdinLines.next();
  if (done) throw new Error('stdin ended before the cases');
  return JSON.parse(value);
}

function checkCases(doc) {
  if (!Array.isArray(doc.cases)) throw new Error('cases must be a list');
  return doc.cases;
}

async function runCase(browser, spec) {
  // A fresh context per case: no MediaKeys, cache or storage carried from one case to the next.
  const context = await browser.newContext();
  const page = await context.newPage();
  const consoleLog = [];
  const started = Date.now();
  const stamp = () => `${((Date.now() - started) / 1000).toFixed(2)}s`;
  page.on('console', (m) => consoleLog.push(`${stamp()} [${m.type()}] ${m.text()}`.slice(0, 2000)));
  page.on('pageerror', (e) => consoleLog.push(`${stamp()} [pageerror] ${e.message}`));
  page.on('requestfailed', (r) => consoleLog.push(`${stamp()} [requestfailed] ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) consoleLog.push(`${stamp()} [http ${r.status()}] ${r.request().method()} ${r.url()}`); });
  let result;
  try {
    await page.goto(spec.url, { timeout: spec.timeoutMs });
    // The page enforces its own timeout; this one (a little longer) catches a page that hangs.
    const handle = await page.waitForFunction(() => window.__playback, null, { timeout: spec.timeoutMs + 5000, polling: 100 });
    result = await handle.jsonValue();
  } catch (e) {
    result = { ok: false, reason: 'harness', errors: [`play.mjs: ${e.message.split('\n')[0]}`] };
  }
  await context.close();
  return { name: spec.name, wallMs: Date.now() - started, ...result, console: consoleLog };
}

async function main() {
  let input;
  try {
    input = await readLine();
    if (input.cases !== undefined) checkCases(input);
  } catch (e) {
    console.error(`play.mjs: bad input: ${e.message}`);
    process.exit(2);
  }
  const args = [...ARGS];
  const spki = Array.isArray(input.trustSpki) ? input.trustSpki : [];
  if (!spki.every((h) => typeof h === 'string' && /^[A-Za-z0-9+/]{43}=$/.test(h))) {
    console.error('play.mjs: bad input: trustSpki holds base64 SHA-256 digests');
    process.exit(2);
  }
  if (spki.length) args.push(`--ignore-certificate-errors-spki-list=${spki.join(',')}`);
  // hostMap: {name: address}: names Chromium resolves to a fixed address (a CDN's name to the
  // test's steered forwarder), --host-resolver-rules.
  const hostMap = input.hostMap && typeof input.hostMap === 'object' ? Object.entries(input.hostMap) : [];
  if (!hostMap.every(([h, a]) => /^[a-z0-9.-]+$/i.test(h) && /^[0-9.]+$/.test(a))) {
    console.error('play.mjs: bad input: hostMap maps host names to IPv4 addresses');
    process.exit(2);
  }
  if (hostMap.length) args.push(`--host-resolver-rules=${hostMap.map(([h, a]) => `MAP ${h} ${a}`).join(',')}`);
  let browser;
  try {
    // launch() gives every run a fresh temporary profile (its own user-data-dir), removed on
    // close; Playwright refuses --user-data-dir in args, so none is passed.
    browser = await chromium.launch({
      executablePath: input.chromium || '/usr/bin/chromium',
      headless: true,
      args,
      timeout: 30000,
    });
  } catch (e) {
    console.error(`play.mjs: Chromium did not start: ${e.message}`);
    process.exit(2);
  }
  mark('chromium up');
  let cases;
  try {
    cases = input.cases !== undefined ? input.cases : checkCases(await readLine());
  } catch (e) {
    console.error(`play.mjs: bad input: ${e.message}`);
    await browser.close();
    process.exit(2);
  }
  mark('cases read');
  // Cases run `concurrency` at a time (each in its own context), results kept in input order.
  const results = new Array(cases.length);
  const concurrency = Math.max(1, Math.min(Number(input.concurrency) || 1, 8));
  let next = 0;
  async function worker() {
    while (next < cases.length) {
      const index = next++;
      results[index] = await runCase(browser, cases[index]);
      mark(`${cases[index].name} done`);
    }
  }
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    await browser.close();
  }
  mark('chromium closed');
  process.stdout.write(JSON.stringify({ results }) + '\n');
}

main();
