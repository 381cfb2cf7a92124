// Plays one manifest with one player and a ClearKey licence server, then reports.
//
// Query string: player=shaka|dashjs|hlsjs, manifest=URL, licence=URL (empty: DASH players take it
// from the MPD's dashif:Laurl), auth=Authorization value (optional), cdnquery=a signed CDN's
// query string, appended to every manifest and segment request (optional), frames=N (decoded frames that count as "played"), timeout=ms.
// The result lands in window.__playback as
//   {player, ok, frames, totalVideoFrames, decodedFrames, currentTime, errors, events, elapsedMs}
// ok is true once currentTime has advanced past 0.5 s and more than N frames were decoded; a
// fatal player error or a media element error ends the run at once with ok false; so does
// the timeout.
'use strict';

(function () {
  const params = new URLSearchParams(location.search);
  const player = params.get('player');
  const manifest = params.get('manifest');
  const licence = params.get('licence');
  const auth = params.get('auth');
  const cdnQuery = params.get('cdnquery');
  // A signed CDN's grant on every request that is not the licence server's (segment URLs in a
  // manifest are relative and carry no signature).
  const licenceOrigin = licence ? new URL(licence).origin : null;
  const signed = (url) => {
    if (!cdnQuery || url.includes('Signature=') || new URL(url, location.href).origin === licenceOrigin) return url;
    return `${url}${url.includes('?') ? '&' : '?'}${cdnQuery}`;
  };
  const wantFrames = Number(params.get('frames') || '25');
  const timeoutMs = Number(params.get('timeout') || '15000');
  const video = document.getElementById('video');
  const started = performance.now();
  const errors = [];
  const events = [];
  let finished = false;

  const LIBS = {
    shaka: 'lib/shaka-player.compiled.js',
    dashjs: 'lib/dash.all.min.js',
    hlsjs: 'lib/hls.min.js',
  };

  function describe(value) {
    if (value === undefined || value === null) return String(value);
    if (typeof value === 'string') return value;
    if (value instanceof Error) return `${value.name}: ${value.message}`;
    try {
      return JSON.stringify(value, (k, v) => {
        if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return `<${v.byteLength} bytes>`;
        if (v instanceof Error) return `${v.name}: ${v.message}`;
        return v;
      }).slice(0, 2000);
    } catch (e) {
      return String(value);
    }
  }

  function frameCounts() {
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    const total = q ? q.totalVideoFrames : 0;
    // Chromium's webkitDecodedFrameCount counts frames out of the decoder; prefer it, as
    // totalVideoFrames also counts frames dropped before display.
    const decoded = typeof video.webkitDecodedFrameCount === 'number' ? video.webkitDecodedFrameCount : total;
    return {total, decoded};
  }

  function finish(ok, why) {
    if (finished) return;
    finished = true;
    const counts = frameCounts();
    events.push(`finish: ${why}`);
    window.__playback = {
      player, ok, reason: why,
      frames: counts.decoded, decodedFrames: counts.decoded, totalVideoFrames: counts.total,
      currentTime: video.currentTime, readyState: video.readyState,
      errors, events, elapsedMs: Math.round(performance.now() - started),
    };
  }

  function fail(what) {
    errors.push(describe(what));
    finish(false, 'error');
  }

  for (const name of ['loadedmetadata', 'canplay', 'playing', 'waiting', 'encrypted', 'waitingforkey', 'ended']) {
    video.addEventListener(name, () => events.push(`${name} @${video.currentTime.toFixed(2)}`));
  }
  video.addEventListener('error', () => {
    const e = video.error;
    fail({mediaError: e ? e.code : null, message: e ? e.message : ''});
  });

  function poll() {
    if (finished) return;
    const counts = frameCounts();
    if (video.currentTime > 0.5 && counts.decoded > wantFrames) {
      finish(true, 'played');
      return;
    }
    if (performance.now() - started > timeoutMs) {
      errors.push(`timeout after ${timeoutMs} ms: currentTime ${video.currentTime}, decoded ${counts.decoded}, readyState ${video.readyState}`);
      finish(false, 'timeout');
      return;
    }
    setTimeout(poll, 100);
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.appendChild(s);
    });
  }

  function play() {
    const p = video.play();
    if (p && p.catch) p.catch((e) => events.push(`play() rejected: ${e.name}: ${e.message}`));
  }

  async function startShaka() {
    shaka.polyfill.installAll();
    const p = new shaka.Player();
    await p.attach(video);
    // Without a licence URL here, the manifest's dashif:Laurl names the server.
    if (licence) p.configure({drm: {servers: {'org.w3.clearkey': licence}}});
    const types = shaka.net.NetworkingEngine.RequestType;
    p.getNetworkingEngine().registerRequestFilter((type, request) => {
      if (type === types.LICENSE) {
        if (auth) request.headers['Authorization'] = auth;
      } else {
        request.uris = request.uris.map(signed);
      }
    });
    p.addEventListener('error', (e) => fail({shaka: e.detail && e.detail.code, detail: e.detail}));
    await p.load(manifest);
    play();
  }

  function startDashjs() {
    const p = dashjs.MediaPlayer().create();
    p.updateSettings({debug: {logLevel: dashjs.Debug.LOG_LEVEL_WARNING}});
    p.on(dashjs.MediaPlayer.events.ERROR, (e) => fail({dashjs: e.error || e}));
    const protectionEvents = dashjs.Protection && dashjs.Protection.events;
    if (protectionEvents) {
      p.on(protectionEvents.KEY_SESSION_CREATED, () => events.push('dashjs key session created'));
      p.on(protectionEvents.LICENSE_REQUEST_COMPLETE, (e) => { if (e.error) events.push(`dashjs licence error: ${describe(e.error)}`); });
    }
    const clearkey = {};
    if (licence) clearkey.serverURL = licence;  // else the manifest's dashif:Laurl
    if (auth) clearkey.httpRequestHeaders = {Authorization: auth};
    if (cdnQuery) p.addRequestInterceptor((request) => { request.url = signed(request.url); return Promise.resolve(request); });
    p.initialize(video, null, true);
    p.setProtectionData({'org.w3.clearkey': clearkey});
    p.attachSource(manifest);
  }

  function startHlsjs() {
    const config = {
      emeEnabled: true,
      drmSystems: {'org.w3.clearkey': {licenseUrl: licence}},
    };
    if (auth) {
      config.licenseXhrSetup = (xhr, url) => {
        xhr.open('POST', url, true);
        xhr.setRequestHeader('Authorization', auth);
      };
    }
    if ((auth && licence) || cdnQuery) {
      // Classic AES-128 playlists name the key at the licence server (GET /keys/<KID>): the
      // key request carries the token too, and no other request of the page does.
      config.xhrSetup = (xhr, url) => {
        if (new URL(url, location.href).origin !== licenceOrigin) {
          if (cdnQuery) xhr.open('GET', signed(url), true);
          return;
        }
        xhr.open('GET', url, true);
        if (auth) xhr.setRequestHeader('Authorization', auth);
      };
    }
    const hls = new Hls(config);
    hls.on(Hls.Events.ERROR, (event, data) => {
      const what = {hlsjs: data.details, fatal: data.fatal, reason: data.reason || (data.error && String(data.error))};
      if (data.fatal) fail(what); else events.push(`hls.js non-fatal: ${describe(what)}`);
    });
    hls.on(Hls.Events.MANIFEST_PARSED, () => play());
    hls.attachMedia(video);
    hls.loadSource(manifest);
  }

  async function main() {
    if (!LIBS[player]) throw new Error(`unknown player ${player}`);
    await loadScript(LIBS[player]);
    setTimeout(poll, 100);
    if (player === 'shaka') await startShaka();
    else if (player === 'dashjs') startDashjs();
    else startHlsjs();
  }

  main().catch(fail);
})();
