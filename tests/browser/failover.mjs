// A viewer plays a title on the origin's web page while the POP it uses is killed
// (tests/functional/test_cdn_failover.py), and the same page's startup time (bench playback).
//
// Chromium maps the CDN's name to a test-side forwarder on 127.0.0.1 (same port) that asks our
// GeoDNS where to go for each new connection (headwater.bench.steered_forwarder): the name the
// play API returns really goes through our DNS.
//
// Input (stdin, one JSON line): {chromium, base, trustSpki: [...], cdnHost, viewer: {user, password},
//   titleIds: [id, ...] (played one after another, each in a fresh browser context),
//   kill?: {pid, atTime, ahead} (SIGKILL the process group pid once the first title's currentTime >= atTime
//     with `ahead` seconds buffered),
//   playUntil: seconds of media past the buffered end at the kill (or, without kill, currentTime),
//   rate: playbackRate, shots?: folder, timeoutMs,
//   licenceToken?: the /play answer's licence token replaced with this one (a viewer holding an
//     entitlement for another title, or an expired one): the page must then show that no key came,
//     and the result has refused: the status text, once it names the refusal}
// Output (stdout, one JSON line): {ok, error?, plays: [{titleId, startMs, firstFrameMs, frames,
//   currentTime, waiting, status, error, cdn: [{t, path, status, xcache}], kill?: {...}}], console}
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const T0 = Date.now();
const log = (what) => console.error(`failover.mjs ${((Date.now() - T0) / 1000).toFixed(2)}s ${what}`);

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

// Runs in the page before its own scripts: media events (which do not bubble, so captured at
// the document) with their times, for startup and rebuffer counts.
function instrument() {
  window.__hw = { events: [], loadAt: null };
  // app.js exposes its player as window.hwPlayer before it calls load(): the moment load() is
  // called starts the startup clock.
  let player = null;
  Object.defineProperty(window, 'hwPlayer', {
    configurable: true,
    get: () => player,
    set: (p) => {
      player = p;
      const load = p.load.bind(p);
      p.load = (...a) => { window.__hw.loadAt = Date.now(); return load(...a); };
    },
  });
  for (const name of ['playing', 'waiting', 'stalled', 'error', 'loadeddata']) {
    document.addEventListener(name, (e) => {
      if (e.target && e.target.tagName === 'VIDEO') window.__hw.events.push({ name, t: Date.now(), at: e.target.currentTime });
    }, true);
  }
}

const videoState = () => {
  const v = document.getElementById('video');
  const b = v.buffered;
  return { frames: v.webkitDecodedFrameCount, currentTime: v.currentTime, readyState: v.readyState,
    bufferedEnd: b.length ? b.end(b.length - 1) : 0, error: v.error ? v.error.message : null,
    status: document.getElementById('play-status').textContent, events: window.__hw.events,
    stats: window.hwPlayer ? (({ stallsDetected, bufferingTime, playTime }) => ({ stallsDetected, bufferingTime, playTime }))(window.hwPlayer.getStats()) : null };
};

async function play(browser, spec, titleId, first, consoleLog) {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  await page.addInitScript(instrument);
  const out = { titleId, cdn: [], failed: [] };
  const cdnPrefix = `http://${spec.cdnHost}:`;
  page.on('console', (m) => consoleLog.push(`[${m.type()}] ${m.text()}`.slice(0, 600)));
  page.on('pageerror', (e) => consoleLog.push(`[pageerror] ${e.message}`));
  page.on('requestfailed', (r) => {
    if (r.url().startsWith(cdnPrefix)) out.failed.push({ t: Date.now(), path: new URL(r.url()).pathname, why: r.failure()?.errorText });
  });
  page.on('response', (r) => {
    if (!r.url().startsWith(cdnPrefix)) return;
    // sent: when the request started (a response to a request sent before the kill may still
    // arrive from the killed POP's last moments).
    const sent = Math.round(r.request().timing().startTime);
    out.cdn.push({ t: Date.now(), sent, path: new URL(r.url()).pathname, status: r.status(), xcache: r.headers()['x-cache'] || '', via: r.headers().via || '' });
  });
  if (spec.licenceToken) {
    await page.route(/\/api\/titles\/\d+\/play$/, async (route) => {
      const response = await route.fetch();
      const doc = await response.json();
      doc.licence.token = spec.licenceToken;
      await route.fulfill({ response, json: doc });
    });
    page.on('response', (r) => { if (r.url().includes('/licence')) out.licence = { status: r.status() }; });
  }
  // Signed in before the clock starts: the sign-in is not the player's startup.
  await page.goto(`${spec.base}/title/${titleId}`);
  await page.waitForSelector('#play:not([hidden])');
  await page.click('#play');
  await page.waitForURL(/\/oauth\/authorize\?/);
  await page.fill('input[name=username]', spec.viewer.user);
  await page.fill('input[name=password]', spec.viewer.password);
  await page.click('button[type=submit]');
  await page.waitForURL(`${spec.base}/title/${titleId}`);
  await page.waitForSelector('#play:not([hidden])');
  const started = Date.now();
  await page.click('#play');
  if (spec.licenceToken) {
    out.refused = await page.waitForFunction(() => {
      const t = document.getElementById('play-status').textContent;
      return /no key/i.test(t) ? t : null;
    }, null, { timeout: spec.timeoutMs, polling: 50 }).then((h) => h.jsonValue(), () => null);
    Object.assign(out, await page.evaluate(videoState));
    out.playEnabled = await page.evaluate(() => !document.getElementById('play').disabled);
    if (spec.shots) await page.screenshot({ path: `${spec.shots}/title-${titleId}-no-entitlement.png`, fullPage: true });
    await context.close();
    return out;
  }
  // The first decoded frame: requestVideoFrameCallback fires when a frame is presented; the
  // decoded count is polled as well in case the compositor is idle in headless mode.
  const firstFrame = await page.waitForFunction(() => {
    const v = document.getElementById('video');
    return v.webkitDecodedFrameCount > 0 ? Date.now() : null;
  }, null, { timeout: spec.timeoutMs, polling: 10 }).then((h) => h.jsonValue(), () => null);
  const loadAt = await page.evaluate(() => window.__hw.loadAt);
  out.firstFrameAt = firstFrame;
  out.clickToFrameMs = firstFrame ? firstFrame - started : null;
  out.startMs = firstFrame && loadAt ? firstFrame - loadAt : null;  // player.load() -> first frame
  if (spec.rate && spec.rate !== 1) await page.evaluate((r) => { document.getElementById('video').playbackRate = r; }, spec.rate);
  const deadline = started + spec.timeoutMs;
  let until = spec.playUntil;
  if (first && spec.kill) {
    // Killed once playing, with kill.ahead seconds buffered (a viewer a few seconds in).
    await page.waitForFunction(({ atTime, ahead }) => {
      const v = document.getElementById('video');
      const b = v.buffered;
      return v.currentTime >= atTime && b.length && b.end(b.length - 1) - v.currentTime >= (ahead || 0);
    }, spec.kill, { timeout: Math.max(1000, deadline - Date.now()), polling: 20 });
    const before = await page.evaluate(videoState);
    process.kill(-spec.kill.pid, 'SIGKILL');
    const killedAt = Date.now();
    log(`killed ${spec.kill.pid} at currentTime ${before.currentTime.toFixed(2)}, buffered to ${before.bufferedEnd.toFixed(2)}`);
    out.kill = { at: killedAt, currentTime: before.currentTime, bufferedEnd: before.bufferedEnd, frames: before.frames };
    until = before.bufferedEnd + spec.playUntil;
  }
  const reached = await page.waitForFunction((u) => {
    const v = document.getElementById('video');
    return v.currentTime >= u || v.ended || v.error ? true : null;
  }, until, { timeout: Math.max(1000, deadline - Date.now()), polling: 50 }).then(() => true, () => false);
  Object.assign(out, await page.evaluate(videoState), { reached, until });
  if (spec.shots) await page.screenshot({ path: `${spec.shots}/title-${titleId}${first && spec.kill ? '-after-failover' : ''}.png`, fullPage: true });
  await context.close();
  return out;
}

async function main() {
  const spec = await readSpec();
  const args = [...ARGS, `--host-resolver-rules=MAP ${spec.cdnHost} 127.0.0.1`];
  if (spec.trustSpki && spec.trustSpki.length) args.push(`--ignore-certificate-errors-spki-list=${spec.trustSpki.join(',')}`);
  const browser = await chromium.launch({ executablePath: spec.chromium || '/usr/bin/chromium', headless: true, args, timeout: 30000 });
  log('chromium up');
  const consoleLog = [];
  const out = { ok: false, plays: [], console: consoleLog };
  try {
    for (const [i, id] of spec.titleIds.entries()) {
      out.plays.push(await play(browser, spec, id, i === 0, consoleLog));
      log(`title ${id} played`);
    }
    out.ok = true;
  } catch (e) {
    out.error = e.message.split('\n').slice(0, 3).join(' ');
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => { console.error(`failover.mjs: ${e.stack}`); process.exit(2); });
