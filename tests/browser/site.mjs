// Drives the origin's web page in headless Chromium as people use it (tests/functional/test_web_page.py):
// a creator signs in, uploads a clip with the progress bar and waits for "published"; a viewer
// searches as they type, opens the title, is sent to sign in by Play, and plays it. Screenshots
// of the search page, the title page (playing) and the upload page land in spec.shots.
//
// Input (stdin, one JSON line): {chromium, base, trustSpki: [...], clip, title, query,
//   creator: {user, password}, viewer: {user, password}, shots, timeoutMs, viewport: {width, height},
//   hold?}: hold is a file the test made to keep the transcoder's ffmpeg waiting
//   (tests/functional/ffmpeg_hold.py); it is deleted once the creator's page has shown the
//   title transcoding, so that state is seen however fast the encode and however slow the polls.
// Output (stdout, one JSON line): {ok, steps: [...], upload: {progress: [...], states: [...]},
//   play: {frames, currentTime, status, grant: {signed, renewals, playerError}}, titleId, error?, console: [...]}
// Exit status 0 whenever a result was printed.
import { rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const T0 = Date.now();
const log = (what) => console.error(`site.mjs ${((Date.now() - T0) / 1000).toFixed(2)}s ${what}`);

const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];

async function readSpec() {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })[Symbol.asyncIterator]();
  const { value } = await lines.next();
  return JSON.parse(value);
}

function watch(page, consoleLog, who) {
  page.on('console', (m) => consoleLog.push(`${who} [${m.type()}] ${m.text()}`.slice(0, 1000)));
  page.on('pageerror', (e) => consoleLog.push(`${who} [pageerror] ${e.message}`));
  page.on('requestfailed', (r) => consoleLog.push(`${who} [requestfailed] ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) consoleLog.push(`${who} [http ${r.status()}] ${r.request().method()} ${r.url()}`); });
}

async function signIn(page, who) {
  // Either the header's button (a page) or Play sent us: the issuer's form is on screen now.
  await page.waitForURL(/\/oauth\/authorize\?/);
  await page.fill('input[name=username]', who.user);
  await page.fill('input[name=password]', who.password);
  await page.click('button[type=submit]');
}

async function creator(browser, spec, out, consoleLog) {
  const context = await browser.newContext({ viewport: spec.viewport });
  const page = await context.newPage();
  watch(page, consoleLog, 'creator');
  await page.goto(`${spec.base}/upload`);
  await page.waitForSelector('#upload-signin:not([hidden])');
  out.steps.push('upload page asks to sign in');
  // A wrong password first: the form says so and stays.
  await page.click('#signin');
  await signIn(page, { user: spec.creator.user, password: 'not the password' });
  await page.waitForSelector('.error');
  out.wrongPassword = await page.textContent('.error');
  await page.screenshot({ path: `${spec.shots}/signin-refused.png`, fullPage: true });
  await page.fill('input[name=password]', spec.creator.password);
  await page.click('button[type=submit]');
  await page.waitForURL(`${spec.base}/upload`);
  await page.waitForSelector('#upload-form:not([hidden])');
  out.steps.push('creator signed in');
  out.creatorWho = await page.textContent('#who');
  await page.setInputFiles('#file', spec.clip);
  await page.fill('#up-title', spec.title);
  await page.click('#upload-start');
  // The bar and the state, sampled as the creator would see them, until published.
  const deadline = Date.now() + spec.timeoutMs;
  let shot = false;
  for (;;) {
    const s = await page.evaluate(() => ({
      label: document.getElementById('upload-label').textContent,
      value: Number(document.getElementById('upload-bar').value),
      state: document.getElementById('upload-state').dataset.state || '',
      done: !document.getElementById('upload-done').hidden,
      notice: document.getElementById('notice').hidden ? '' : document.getElementById('notice').textContent,
    }));
    const last = out.upload.samples[out.upload.samples.length - 1];
    if (!last || last.label !== s.label || last.value !== s.value || last.state !== s.state) out.upload.samples.push(s);
    if (!shot && s.state === 'transcoding') {
      await page.screenshot({ path: `${spec.shots}/upload-transcoding.png`, fullPage: true });
      shot = true;
      if (spec.hold) {
        rmSync(spec.hold, { force: true });
        log('transcoding seen: ffmpeg released');
      }
    }
    if (s.done || s.notice) break;
    if (Date.now() > deadline) throw new Error(`not published in time: ${JSON.stringify(s)}`);
    await page.waitForTimeout(100);
  }
  await page.screenshot({ path: `${spec.shots}/upload-published.png`, fullPage: true });
  out.titleId = Number((await page.getAttribute('#upload-link', 'href')).split('/').pop());
  out.steps.push('published');
  await context.close();
}

async function viewer(browser, spec, out, consoleLog) {
  const context = await browser.newContext({ viewport: spec.viewport });
  const page = await context.newPage();
  watch(page, consoleLog, 'viewer');
  // What the player fetched from the CDN (successful answers only).
  page.on('response', (r) => { if (spec.cdn && r.url().startsWith(spec.cdn) && r.ok()) out.cdn.push(new URL(r.url()).pathname); });
  await page.goto(`${spec.base}/`);
  // Search as you type: one key at a time, no Enter.
  await page.type('#q', spec.query, { delay: 40 });
  const link = page.locator(`#hits a[href="/title/${out.titleId}"]`);
  await link.waitFor({ timeout: 10000 });
  out.searchStatus = await page.textContent('#search-status');
  await page.screenshot({ path: `${spec.shots}/viewer-search.png`, fullPage: true });
  out.steps.push('found by search');
  await link.click();
  await page.waitForURL(`${spec.base}/title/${out.titleId}`);
  await page.waitForSelector('#play:not([hidden])');
  out.titleText = await page.textContent('#title-name');
  // Not signed in: Play sends the viewer to sign in, and back here.
  await page.click('#play');
  await signIn(page, spec.viewer);
  await page.waitForURL(`${spec.base}/title/${out.titleId}`);
  await page.waitForSelector('#play:not([hidden])');
  out.steps.push('viewer signed in');
  const started = Date.now();
  await page.click('#play');
  const played = await page.waitForFunction(() => {
    const v = document.getElementById('video');
    return v.currentTime > 1.0 && v.webkitDecodedFrameCount > 25 ? true : null;
  }, null, { timeout: 20000, polling: 100 }).then(() => true, () => false);
  out.play = await page.evaluate(() => {
    const v = document.getElementById('video');
    return { frames: v.webkitDecodedFrameCount, currentTime: v.currentTime, status: document.getElementById('play-status').textContent,
      readyState: v.readyState, error: v.error ? v.error.message : null };
  });
  out.play.startMs = Date.now() - started;
  out.play.ok = played;
  // The page's CDN grant (grant.js): renewed before it expires while the player plays.
  if (played) {
    await page.waitForFunction(() => window.hwPlayback && window.hwPlayback.renewals >= 1 ? true : null,
      null, { timeout: 20000, polling: 200 }).catch(() => null);
  }
  out.play.grant = await page.evaluate(() => ({
    signed: !!(window.hwPlayback && window.hwPlayback.query.includes('Signature=')),
    renewals: window.hwPlayback ? window.hwPlayback.renewals : null,
    playerError: /error|refused|stop/i.test(document.getElementById('play-status').textContent),
  }));
  await page.screenshot({ path: `${spec.shots}/viewer-title-playing.png`, fullPage: true });
  if (played) out.steps.push('played');
  await context.close();
}

async function main() {
  const spec = await readSpec();
  const args = [...ARGS];
  if (spec.trustSpki && spec.trustSpki.length) args.push(`--ignore-certificate-errors-spki-list=${spec.trustSpki.join(',')}`);
  const browser = await chromium.launch({ executablePath: spec.chromium || '/usr/bin/chromium', headless: true, args, timeout: 30000 });
  log('chromium up');
  const consoleLog = [];
  const out = { ok: false, steps: [], upload: { samples: [] }, play: null, cdn: [], console: consoleLog };
  out.cdnPrefix = spec.cdn || null;
  try {
    await creator(browser, spec, out, consoleLog);
    log('creator done');
    await viewer(browser, spec, out, consoleLog);
    log('viewer done');
    out.ok = true;
  } catch (e) {
    out.error = e.message.split('\n').slice(0, 3).join(' ');
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => { console.error(`site.mjs: ${e.stack}`); process.exit(2); });
