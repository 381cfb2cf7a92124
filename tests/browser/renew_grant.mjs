// The web page's playback grant (origin/web/static/grant.js, loaded as the page loads it) under
// Node, against real daemons: what the page's shaka request filter does for a player that keeps
// fetching segments (and retries its manifest) for longer than the grant lasts.
//
//   node renew_grant.mjs GRANT_JS ORIGIN TITLE TOKEN SEGMENT_PATH SECONDS
//
// ORIGIN is the origin's https base URL (trusted with NODE_EXTRA_CA_CERTS), SEGMENT_PATH a
// segment's path on the CDN. Every 2 s for SECONDS: the segment and the manifest (its own signed
// URL from the first /play) through the filter, and the segment with the first grant's query
// frozen (what the page did before it renewed). One JSON line per round, then a summary line.
import fs from 'node:fs';
import vm from 'node:vm';

const [grantJs, origin, title, token, segmentPath, seconds] = process.argv.slice(2);
vm.runInThisContext(fs.readFileSync(grantJs, 'utf8'), {filename: grantJs});
const types = {MANIFEST: 0, SEGMENT: 1, LICENSE: 2};

async function play() {
  const r = await fetch(`${origin}/api/titles/${title}/play`, {headers: {authorization: `Bearer ${token}`}});
  if (!r.ok) throw new Error(`/play answered ${r.status}`);
  return r.json();
}

const first = await play();
const cdnBase = first.cdn.resource.replace(/\/titles\/.*$/, '');
const gaveUp = [];
const grant = new globalThis.HwPlaybackGrant(first, play, {onGiveUp: (why) => gaveUp.push(why)});
const start = Date.now() / 1000;
const rounds = [];
while (Date.now() / 1000 - start < Number(seconds)) {
  const seg = {uris: [`${cdnBase}${segmentPath}`], headers: {}};
  grant.request(types.SEGMENT, seg, types);
  const mpd = {uris: [first.dash], headers: {}};
  grant.request(types.MANIFEST, mpd, types);
  const lic = {uris: ['https://licence.test/licence'], headers: {}};
  grant.request(types.LICENSE, lic, types);
  const frozen = `${cdnBase}${segmentPath}?${first.cdn.query}`;
  const [s, m, f] = await Promise.all([seg.uris[0], mpd.uris[0], frozen].map(async (u) => (await fetch(u)).status));
  const round = {t: Math.round(Date.now() / 1000 - start), segment: s, manifest: m, frozen: f,
                 renewals: grant.renewals, licence_auth: lic.headers.Authorization === `Bearer ${grant.licenceToken}`,
                 signatures_in_manifest_url: mpd.uris[0].split('Signature=').length - 1};
  rounds.push(round);
  console.log(JSON.stringify(round));
  await new Promise((ok) => setTimeout(ok, 2000));
}
grant.stop();
console.log(JSON.stringify({summary: true, first_expires_in: first.expires - first.issued, seconds: Date.now() / 1000 - start,
                            renewals: grant.renewals, gave_up: gaveUp}));
