// Headwater: a viewer's playback grant, kept valid for as long as the player plays.
//
// /api/titles/ID/play answers a CDN grant (one signed policy for the title's version, valid
// play_url_seconds: "issued" to "expires") and a licence token. The page's player adds the grant
// to every manifest and segment request (request()), so once it expires the POP answers 403 and
// playback stops mid-title. So the grant is renewed: /play is asked again a minute before it
// expires (a third of its life before, for a short one), and the next request carries the new
// one. The timer counts from when the answer arrived, using the server's own issued/expires, so
// the viewer's clock does not matter. A failed renewal is retried every few seconds until the
// old grant runs out. A renewal for another version of the title (republished meanwhile) is not
// taken: its policy would not cover the files this player is playing; the viewer presses Play.
//
// No DOM here: app.js gives it the fetch of /play; tests/functional/test_play_renewal.py runs
// this same file under Node against real daemons.

(function (root) {
  'use strict';

  const LEAD_SECONDS = 60;
  const RETRY_SECONDS = 5;

  const SIGNING_PARAMS = ['Policy', 'Expires', 'Signature', 'Key-Pair-Id', 'Hash-Algorithm'];

  // `uri` with `query` (a grant's signing parameters) in place of any it carried.
  function withGrant(uri, query) {
    let base = uri;
    if (SIGNING_PARAMS.some((k) => uri.includes(`${k}=`))) {
      const url = new URL(uri);
      for (const k of SIGNING_PARAMS) url.searchParams.delete(k);
      base = url.href;
      if (base.endsWith('?')) base = base.slice(0, -1);
    }
    return `${base}${base.includes('?') ? '&' : '?'}${query}`;
  }

  class PlaybackGrant {
    // play: the /play document; fetchPlay: () => Promise of a fresh one; options.onRenew(play)
    // and options.onGiveUp(reason) for the page's status line; options.timers for tests.
    constructor(play, fetchPlay, options = {}) {
      this.play = play;
      this.fetchPlay = fetchPlay;
      this.onRenew = options.onRenew || (() => {});
      this.onGiveUp = options.onGiveUp || (() => {});
      this.timers = options.timers || {setTimeout: (f, ms) => setTimeout(f, ms), clearTimeout: (t) => clearTimeout(t)};
      this.now = options.now || (() => Date.now() / 1000);
      this.renewals = 0;
      this.timer = null;
      this.stopped = false;
      this.schedule(play, this.now());
    }

    // The query to add to CDN requests ('' when the cluster does not sign).
    get query() { return (this.play.cdn && this.play.cdn.query) || ''; }

    // The licence server's bearer token.
    get licenceToken() { return this.play.licence.token; }

    // Seconds after receiving `play` to ask for the next one.
    static renewDelay(play) {
      const life = Math.max(0, (play.expires || 0) - (play.issued || 0));
      return Math.max(1, life - Math.min(LEAD_SECONDS, life / 3));
    }

    schedule(play, received) {
      if (this.stopped || !play.cdn || !play.cdn.signed) return;
      this.deadline = received + Math.max(0, play.expires - play.issued);
      this.arm(PlaybackGrant.renewDelay(play));
    }

    arm(seconds) {
      if (this.timer !== null) this.timers.clearTimeout(this.timer);
      this.timer = this.timers.setTimeout(() => { this.timer = null; this.renew(); }, seconds * 1000);
    }

    async renew() {
      if (this.stopped) return;
      let fresh;
      try {
        fresh = await this.fetchPlay();
      } catch (e) {
        if (this.stopped) return;
        const left = this.deadline - this.now();
        if (left > RETRY_SECONDS) {
          this.arm(RETRY_SECONDS);
        } else {
          this.onGiveUp(`the playback grant could not be renewed (${e && e.message ? e.message : e})`);
        }
        return;
      }
      if (this.stopped) return;
      if (!fresh.cdn || fresh.cdn.resource !== this.play.cdn.resource) {
        this.onGiveUp('the title was republished: press Play for the new version');
        return;
      }
      this.play = fresh;
      this.renewals += 1;
      this.onRenew(fresh);
      this.schedule(fresh, this.now());
    }

    // shaka's request filter: the licence token on licence requests, the current grant on
    // manifest and segment requests (segment URLs in the manifest are relative and unsigned; the
    // manifest's own URL came with the first grant, which a retry must not send once renewed).
    request(type, request, types) {
      if (type === types.LICENSE) {
        request.headers.Authorization = `Bearer ${this.licenceToken}`;
      } else if (this.query && (type === types.SEGMENT || type === types.MANIFEST)) {
        request.uris = request.uris.map((u) => withGrant(u, this.query));
      }
    }

    stop() {
      this.stopped = true;
      if (this.timer !== null) this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
  }

  root.HwPlaybackGrant = PlaybackGrant;
})(typeof window !== 'undefined' ? window : globalThis);
