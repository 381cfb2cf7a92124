// Headwater's page for people (served by the origin; see origin/web/site.py).
//
// One page, four views chosen by the path:
//   /            search as you type (GET /api/search), results link to /title/ID
//   /title/ID    the title (GET /api/titles/ID); Play asks /api/titles/ID/play for the signed
//                manifest URL and the licence token, and shaka-player plays it with ClearKey
//                keys from the licence server (the token in the licence request's Authorization)
//   /upload      a creator's upload: tus (tus-js-client) with a progress bar, POST /api/titles,
//                then GET /api/titles/ID polled: uploaded -> transcoding % -> published
//   /signed-in   where the sign-in comes back: the code is exchanged for a token (PKCE)
// Sign-in is OAuth2's authorization-code grant with PKCE (RFC 7636) against the origin's own
// issuer: this page holds no secret, only a short-lived access token in sessionStorage (gone
// when the tab closes).
'use strict';

(function () {
  const CLIENT_ID = 'headwater-web';
  const $ = (id) => document.getElementById(id);
  const STORE = window.sessionStorage;

  // --- session ------------------------------------------------------------------------------

  function b64url(bytes) {
    let s = '';
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function readJson(key) {
    try { return JSON.parse(STORE.getItem(key) || 'null'); } catch (e) { return null; }
  }

  function session() {
    const s = readJson('hw.session');
    return s && s.expires > Date.now() / 1000 + 10 ? s : null;
  }

  function can(scope) {
    const s = session();
    return !!s && s.scopes.includes(scope);
  }

  function authHeaders() {
    const s = session();
    return s ? {Authorization: `Bearer ${s.token}`} : {};
  }

  async function signIn(returnTo) {
    const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
    const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
    STORE.setItem('hw.pkce', JSON.stringify({verifier, state, returnTo}));
    const q = new URLSearchParams({
      response_type: 'code', client_id: CLIENT_ID, redirect_uri: `${location.origin}/signed-in`,
      code_challenge: b64url(new Uint8Array(digest)), code_challenge_method: 'S256', state,
    });
    location.assign(`/oauth/authorize?${q}`);
  }

  async function finishSignIn() {
    const params = new URLSearchParams(location.search);
    const pending = readJson('hw.pkce');
    STORE.removeItem('hw.pkce');
    history.replaceState(null, '', '/signed-in');  // the code leaves the address bar
    if (!pending || params.get('state') !== pending.state || !params.get('code')) {
      notice('The sign-in did not come from this tab: please sign in again.');
      return;
    }
    const r = await fetch('/oauth/token', {
      method: 'POST',
      headers: {'Content-Type': 'application/x-www-form-urlencoded'},
      body: new URLSearchParams({
        grant_type: 'authorization_code', code: params.get('code'), client_id: CLIENT_ID,
        redirect_uri: `${location.origin}/signed-in`, code_verifier: pending.verifier,
      }),
    });
    const doc = await r.json().catch(() => ({}));
    if (!r.ok) {
      notice(`Sign-in failed: ${doc.error_description || doc.error || r.status}`);
      return;
    }
    const claims = JSON.parse(atob(doc.access_token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    STORE.setItem('hw.session', JSON.stringify({
      token: doc.access_token, scopes: (doc.scope || '').split(' '), user: claims.sub,
      expires: Date.now() / 1000 + doc.expires_in,
    }));
    location.replace(pending.returnTo && pending.returnTo.startsWith('/') ? pending.returnTo : '/');
  }

  function showSession() {
    const s = session();
    $('who').textContent = s ? s.user : '';
    $('signin').hidden = !!s;
    $('signout').hidden = !s;
    $('nav-upload').hidden = !!s && !s.scopes.includes('upload');
  }

  // --- helpers --------------------------------------------------------------------------------

  function notice(text) {
    $('notice').textContent = text;
    $('notice').hidden = !text;
  }

  async function api(path, options = {}) {
    const r = await fetch(path, {...options, headers: {...authHeaders(), ...(options.headers || {})}});
    const doc = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = new Error(doc.message || doc.error || `HTTP ${r.status}`);
      e.status = r.status;
      throw e;
    }
    return doc;
  }

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    for (const c of children) e.append(c);
    return e;
  }

  function describe(t) {
    return [t.category, t.year, t.language, t.duration_s ? `${Math.round(t.duration_s)} s` : null]
      .filter((x) => x !== null && x !== undefined && x !== '').join(' · ');
  }

  // --- viewers: search ------------------------------------------------------------------------

  let searchTimer = null;
  let searchAbort = null;

  async function search() {
    const q = $('q').value.trim();
    if (searchAbort) searchAbort.abort();
    searchAbort = new AbortController();
    const signal = searchAbort.signal;
    try {
      const doc = await api(`/api/search?${new URLSearchParams({q, per_page: '20'})}`, {signal});
      const list = $('hits');
      list.replaceChildren(...doc.hits.map((h) => el('li', {},
        el('a', {href: `/title/${h.id}`}, h.title), el('span', {class: 'muted'}, describe(h)))));
      const fixed = Object.entries(doc.corrections || {}).map(([a, b]) => `${a} → ${b}`).join(', ');
      $('search-status').textContent = (doc.total === 0 ? 'Nothing found.' : `${doc.total} title${doc.total === 1 ? '' : 's'}`)
        + (fixed ? ` (searched for ${fixed})` : '')
        // The catalogue's database is away: the answer came from this host's copy alone.
        + (doc.stale_seconds != null ? ` (as of ${doc.stale_seconds} s ago: newer changes may be missing)` : '');
    } catch (e) {
      if (e.name !== 'AbortError') $('search-status').textContent = `Search failed: ${e.message}`;
    }
  }

  function showSearch() {
    $('view-search').hidden = false;
    const q = new URLSearchParams(location.search).get('q') || '';
    $('q').value = q;
    $('q').addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        history.replaceState(null, '', $('q').value ? `/?${new URLSearchParams({q: $('q').value})}` : '/');
        search();
      }, 150);
    });
    $('search-form').addEventListener('submit', (e) => { e.preventDefault(); search(); });
    search();
  }

  // --- viewers: a title and its playback ------------------------------------------------------

  let player = null;
  let playback = null;  // the HwPlaybackGrant of what the player plays

  async function showTitle(id) {
    $('view-title').hidden = false;
    let t;
    try {
      t = await api(`/api/titles/${id}`);
    } catch (e) {
      $('title-name').textContent = e.status === 404 ? 'No such title' : 'Could not load the title';
      $('play').hidden = true;
      return;
    }
    document.title = `${t.title} · Headwater`;
    $('title-name').textContent = t.title;
    $('title-meta').textContent = describe(t) + (t.state === 'published' ? '' : ` · ${t.state} ${t.progress} %`);
    $('title-description').textContent = t.description || '';
    $('play').hidden = t.state !== 'published';
    $('play').addEventListener('click', () => play(id));
  }

  async function play(id) {
    const status = $('play-status');
    if (!session()) {
      status.textContent = 'Sign in to watch.';
      signIn(location.pathname);
      return;
    }
    if (!can('view')) {
      status.textContent = 'Your account may not watch titles.';
      return;
    }
    if (typeof shaka === 'undefined') {
      status.textContent = 'The player is not installed on this server (make setup).';
      return;
    }
    $('play').disabled = true;
    status.textContent = 'Starting…';
    let grant;
    try {
      grant = await api(`/api/titles/${id}/play`);
    } catch (e) {
      $('play').disabled = false;
      if (e.status === 401) { signIn(location.pathname); return; }
      status.textContent = e.status === 403 ? 'You are not entitled to watch this title.' : `Playback refused: ${e.message}`;
      return;
    }
    shaka.polyfill.installAll();
    if (!shaka.Player.isBrowserSupported()) {
      status.textContent = 'This browser cannot play encrypted video (no Media Source or EME).';
      return;
    }
    const video = $('video');
    if (player) await player.destroy();
    player = new shaka.Player();
    window.hwPlayer = player;  // for the browser test and the curious
    await player.attach(video);
    player.configure({drm: {servers: {'org.w3.clearkey': grant.licence.url}}});
    const types = shaka.net.NetworkingEngine.RequestType;
    // The CDN's grant (one policy for the title's version) goes on every manifest and segment
    // request, and is renewed before it expires (grant.js): a title outlasts play_url_seconds.
    if (playback) playback.stop();
    playback = new HwPlaybackGrant(grant, () => api(`/api/titles/${id}/play`), {
      onGiveUp: (why) => { status.textContent = `Playback may stop soon: ${why}.`; },
    });
    window.hwPlayback = playback;  // for the browser test and the curious
    player.getNetworkingEngine().registerRequestFilter((type, request) => playback.request(type, request, types));
    player.addEventListener('error', (ev) => {
      const d = ev.detail || {};
      status.textContent = d.code === 6007 || d.code === 6008
        ? 'No key for this title: the licence server refused (not entitled, or the grant expired).'
        : `Playback error ${d.code || ''}`;
      // A refused licence may come while load() is still waiting for keys: Play works again
      // (a fresh /play brings a fresh grant) rather than staying greyed out.
      $('play').disabled = false;
    });
    video.addEventListener('playing', () => { status.textContent = ''; }, {once: true});
    try {
      await player.load(grant.dash);
      await video.play().catch(() => { status.textContent = 'Press play on the video.'; });
    } catch (e) {
      status.textContent = e && e.code === 6007 || e && e.code === 6008
        ? 'No key for this title: the licence server refused.'
        : `Could not load the video (${e && e.code ? `shaka error ${e.code}` : e})`;
    } finally {
      $('play').disabled = false;
    }
  }

  // --- creators: upload and follow ------------------------------------------------------------

  async function showUpload() {
    $('view-upload').hidden = false;
    if (!can('upload')) {
      $('upload-signin').hidden = false;
      $('upload-signin').textContent = session() ? 'Your account may not upload.' : 'Sign in as a creator to upload.';
      return;
    }
    $('upload-form').hidden = false;
    api('/api/categories').then((doc) => {
      $('up-category').append(...doc.categories.map((c) => el('option', {value: c.slug}, c.name)));
    }).catch(() => {});
    $('file').addEventListener('change', () => {
      const f = $('file').files[0];
      if (f && !$('up-title').value) $('up-title').value = f.name.replace(/\.[^.]+$/, '').replace(/[_-]+/g, ' ');
    });
    $('upload-form').addEventListener('submit', (e) => { e.preventDefault(); startUpload(); });
    listMine();
  }

  async function listMine() {
    if (!can('titles:read') && !can('titles:write')) return;
    try {
      const doc = await api('/api/titles?mine=1&limit=20');
      $('mine').replaceChildren(...doc.titles.map((t) => el('li', {},
        el('a', {href: `/title/${t.id}`}, t.title),
        el('span', {class: `state state-${t.state}`}, t.state === 'transcoding' ? `transcoding ${t.progress} %` : t.state))));
    } catch (e) { /* the list is a convenience */ }
  }

  function setProgress(label, pct) {
    $('upload-label').textContent = label;
    $('upload-pct').textContent = `${pct} %`;
    $('upload-bar').value = pct;
  }

  function startUpload() {
    const file = $('file').files[0];
    if (!file) return;
    notice('');
    $('upload-start').disabled = true;
    $('upload-progress').hidden = false;
    setProgress('Uploading', 0);
    const upload = new tus.Upload(file, {
      endpoint: '/uploads',
      headers: authHeaders(),
      chunkSize: 8 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000, 10000],
      removeFingerprintOnSuccess: true,
      metadata: {filename: file.name, filetype: file.type || 'application/octet-stream'},
      onProgress: (sent, total) => setProgress('Uploading', Math.floor((sent / total) * 100)),
      onError: (e) => {
        $('upload-start').disabled = false;
        notice(`Upload failed: ${e.message.split('\n')[0]}`);
      },
      onSuccess: () => createTitle(upload.url.split('/').pop()),
    });
    // A file this browser began uploading before (a dropped connection, a closed tab) resumes.
    upload.findPreviousUploads().then((previous) => {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  }

  async function createTitle(uploadId) {
    setProgress('Uploaded', 100);
    const body = {title: $('up-title').value.trim(), upload: uploadId};
    if ($('up-category').value) body.category = $('up-category').value;
    if ($('up-year').value) body.year = Number($('up-year').value);
    if ($('up-description').value.trim()) body.description = $('up-description').value.trim();
    let t;
    try {
      t = await api('/api/titles', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
    } catch (e) {
      notice(`The title was not created: ${e.message}`);
      $('upload-start').disabled = false;
      return;
    }
    follow(t.id);
  }

  const seenStates = [];

  async function follow(id) {
    let t;
    try {
      // Bounded: a request that never answers would otherwise stop the following for good.
      t = await api(`/api/titles/${id}`, {signal: AbortSignal.timeout(10000)});
    } catch (e) {
      $('upload-state').textContent = `Could not read the title's state: ${e.message}`;
      setTimeout(() => follow(id), 3000);
      return;
    }
    // The states seen so far, as a trail: uploaded → transcoding → published.
    if (seenStates[seenStates.length - 1] !== t.state) seenStates.push(t.state);
    $('upload-state').textContent = seenStates.join(' → ');
    $('upload-state').dataset.state = t.state;
    if (t.state === 'transcoding') setProgress('Transcoding', t.progress);
    if (t.state === 'published') {
      setProgress('Published', 100);
      $('upload-link').href = `/title/${id}`;
      $('upload-done').hidden = false;
      $('upload-start').disabled = false;
      listMine();
      return;
    }
    if (t.state === 'failed' || t.state === 'withdrawn') {
      notice(`Transcoding failed: ${t.error || t.state}`);
      $('upload-start').disabled = false;
      return;
    }
    setTimeout(() => follow(id), 500);
  }

  // --- routing ----------------------------------------------------------------------------------

  function main() {
    $('signin').addEventListener('click', () => signIn(location.pathname + location.search));
    $('signout').addEventListener('click', () => { STORE.removeItem('hw.session'); location.assign('/'); });
    showSession();
    const path = location.pathname;
    const title = /^\/title\/([1-9][0-9]{0,17})$/.exec(path);
    if (path === '/signed-in') {
      $('view-signed-in').hidden = false;
      finishSignIn();
    } else if (title) {
      showTitle(title[1]);
    } else if (path === '/upload') {
      showUpload();
    } else {
      showSearch();
    }
  }

  main();
}());
