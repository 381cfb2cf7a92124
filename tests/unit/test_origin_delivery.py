"""The CDN origin's pure parts: which paths name an object (and which never reach the store),
the published version of a title, its cache on a fake clock, when a change needs a purge, and
the signed grant the playback API hands out, checked by the edge's own verifier."""

from __future__ import annotations

import anyio
import pytest
from Crypto.PublicKey import RSA

from headwater.clock import FakeClock
from headwater.edge.client import SigningKey, signed_grant
from headwater.edge.signedurl import Verifier
from headwater.origin.catalogue import Rendition, Title, TitleNotFound, TitleState
from headwater.origin.delivery import (Availability, PublishedVersions, content_type, needs_purge, object_kind,
                                       parse_object_path, publication_of)
from headwater.origin.errors import BadRequest, NotFound


def test_object_paths():
    p = parse_object_path("/titles/7/v12/video-1/p2/init.mp4")
    assert (p.title_id, p.version, p.key) == (7, "12", "titles/7/v12/video-1/p2/init.mp4")
    assert parse_object_path("/titles/7/v12/manifest.mpd").key == "titles/7/v12/manifest.mpd"
    # the transcoder's folders: job 12, attempt 2
    p = parse_object_path("/titles/7/v12-2/video-1/seg-3.m4s")
    assert (p.version, p.key) == ("12-2", "titles/7/v12-2/video-1/seg-3.m4s")
    for bad in ["/titles/7/v12/../../../uploads/x", "/titles/7/v12/%2e%2e/x", "/titles/7/v12/a%2Fb",
                "/titles/7/v12/a%00b", "/titles/7/v12/a\x00b", "/titles/7/v12//x", "/titles/7/v12/./x",
                "/titles/7/v12/a\\b", "/titles/7/v12/" + "a/" * 600 + "x", "/titles/7/v12/x/"]:
        with pytest.raises(BadRequest):
            parse_object_path(bad)
    for missing in ["/titles/7/v12", "/titles/7/12/x", "/titles/07/v12/x", "/titles/7/v0/x", "/titles/x/v1/a",
                    "/titles/7/v12/.hidden", "/titles/7/v12/a/b/c/d/e/f", "/titles/7/v12/a b", "/titles/-1/v1/a",
                    "/titles/7/v12-/x", "/titles/7/v12-0/x", "/titles/7/v12-2-3/x", "/titles/7/v-2/x"]:
        with pytest.raises(NotFound):
            parse_object_path(missing)


def test_kinds_and_types():
    assert object_kind("manifest.mpd") == object_kind("video-1.m3u8") == "manifest"
    assert object_kind("video-1/seg-3.m4s") == object_kind("poster.jpg") == "immutable"
    assert content_type("a.mpd") == "application/dash+xml"
    assert content_type("a.m3u8") == "application/vnd.apple.mpegurl"
    assert content_type("v/seg-1.m4s") == "video/iso.segment" and content_type("v/init.mp4") == "video/mp4"
    assert content_type("poster.jpg") == "image/jpeg" and content_type("thumbs/t.vtt").startswith("text/vtt")
    assert content_type("x.bin") == "application/octet-stream"
    # WebM and MP4 hold either kind of track: an audio rendition's files say audio.
    assert content_type("video-1/init.webm") == "video/webm" and content_type("audio-2/seg-3.webm") == "audio/webm"
    assert content_type("audio-2/p1/init.mp4") == "audio/mp4" and content_type("video-1/p1/init.mp4") == "video/mp4"
    assert content_type("audio-2.webm") == "video/webm"  # only a folder names the kind


def _title(state: TitleState, dash: str | None = "titles/3/v9/manifest.mpd",
           hls: str | None = "titles/3/v9/master.m3u8") -> Title:
    rs = [Rendition(name="720p", codec="avc1", path="titles/3/v9/video-1.m3u8")]
    rs += [Rendition(name="dash", codec="manifest", path=dash)] if dash else []
    rs += [Rendition(name="hls", codec="manifest", path=hls)] if hls else []
    return Title(id=3, title="t", description="", category=None, year=None, language=None, duration_s=None,
                 people=(), state=state, progress=1.0, created=0.0, updated=0.0, renditions=tuple(rs))


def test_publication_of_a_title():
    pub = publication_of(_title(TitleState.PUBLISHED))
    assert (pub.availability, pub.version, pub.dash) == (Availability.PUBLISHED, "9", "titles/3/v9/manifest.mpd")
    assert (pub.poster, pub.thumbnails) == ("titles/3/v9/poster.jpg", "titles/3/v9/thumbs/thumbs.vtt")
    assert publication_of(_title(TitleState.WITHDRAWN)).poster is None
    assert publication_of(_title(TitleState.WITHDRAWN)).availability is Availability.WITHDRAWN
    assert publication_of(_title(TitleState.PACKAGED)).availability is Availability.UNAVAILABLE
    # Manifests that disagree, or name another title's keys, or none: not served.
    assert publication_of(_title(TitleState.PUBLISHED, hls="titles/3/v8/master.m3u8")).version is None
    assert publication_of(_title(TitleState.PUBLISHED, dash="titles/4/v9/manifest.mpd")).version is None
    assert publication_of(_title(TitleState.PUBLISHED, dash=None, hls=None)).version is None


def test_published_versions_cache_on_a_fake_clock():
    clock = FakeClock()
    titles = {3: _title(TitleState.PUBLISHED)}
    reads: list[int] = []

    async def lookup(title_id: int) -> Title:
        reads.append(title_id)
        await anyio.sleep(0.01)  # concurrent misses wait here together
        if title_id not in titles:
            raise TitleNotFound(str(title_id))
        return titles[title_id]

    versions = PublishedVersions(lookup, ttl_s=1.0, max_entries=2, clock=clock)

    async def main() -> None:
        got = []
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                async def one() -> None:
                    got.append((await versions.get(3)).version)
                tg.start_soon(one)
        assert [g for g in got if g == "9"] == ["9"] * 50 and reads == [3]  # 50 requests, one read
        titles[3] = _title(TitleState.WITHDRAWN)
        clock.advance(0.5)
        assert (await versions.get(3)).version == "9"  # still within the TTL
        clock.advance(0.6)
        assert (await versions.get(3)).availability is Availability.WITHDRAWN and reads == [3, 3]
        assert (await versions.get(99)).availability is Availability.UNAVAILABLE
        await versions.get(98)
        assert len(versions) == 2  # bounded: the oldest (3) went
        versions.forget(98)
        assert len(versions) == 1

    anyio.run(main)


def test_needs_purge():
    S = TitleState
    assert needs_purge(S.PACKAGED, S.PUBLISHED) and needs_purge(S.PUBLISHED, S.WITHDRAWN)
    assert needs_purge(S.PUBLISHED, S.TRANSCODING) and needs_purge(S.WITHDRAWN, S.PUBLISHED)
    assert not needs_purge(S.UPLOADED, S.TRANSCODING) and not needs_purge(S.TRANSCODING, S.PACKAGED)


def test_signed_grant_covers_the_version_and_nothing_else():
    rsa = RSA.generate(1024)  # small: key generation is the slow part of this test
    key = SigningKey(id="KTEST", public_key_pem=rsa.publickey().export_key(), private_key_pem=rsa.export_key())
    now = 1_700_000_000
    grant = signed_grant("https://cdn.test/titles/7/v12/*", key, expires=now + 300)
    assert set(grant.cookies) == {"CloudFront-Policy", "CloudFront-Signature", "CloudFront-Key-Pair-Id"}
    v = Verifier({"KTEST": key.public_key_pem})

    def check(target: str, at: float = now, **kw: str) -> bool:
        return v.verify(scheme="https", host="cdn.test", target=target, client_ip="10.0.0.1", now=at, **kw).allowed

    assert check(f"/titles/7/v12/manifest.mpd?{grant.query}")
    assert check(f"/titles/7/v12/video-1/seg-3.m4s?{grant.query}")
    assert not check(f"/titles/7/v11/manifest.mpd?{grant.query}")
    assert not check(f"/titles/8/v12/manifest.mpd?{grant.query}")
    assert not check(f"/titles/7/v12/manifest.mpd?{grant.query}", at=now + 301)
    cookie = "; ".join(f"{k}={val}" for k, val in grant.cookies.items())
    assert check("/titles/7/v12/video-1/seg-3.m4s", cookie_header=cookie)
    with pytest.raises(ValueError):
        signed_grant("https://cdn.test/*", SigningKey(id="K", public_key_pem=key.public_key_pem), expires=now)


def test_published_versions_play_on_from_the_last_known_while_the_catalogue_is_away(tmp_path):
    """origindb: with the catalogue unreachable, a title's published verdict the catalogue last
    gave answers (kept in a file across a restart), within publish_stale_max_seconds of its
    confirmation; a title never confirmed, or withdrawn since, still raises (503)."""
    from headwater.origin.catalogue import BackendUnavailable
    from headwater.origin.delivery.lastknown import LastKnownPublications

    clock = FakeClock()
    titles = {3: _title(TitleState.PUBLISHED)}
    down = [False]

    async def lookup(title_id: int) -> Title:
        if down[0]:
            raise BackendUnavailable("the catalogue database has not answered since this host started")
        if title_id not in titles:
            raise TitleNotFound(str(title_id))
        return titles[title_id]

    path = tmp_path / "published-versions.json"

    def host() -> tuple[PublishedVersions, LastKnownPublications]:
        kept = LastKnownPublications(path, stale_max_s=100.0, clock=clock)
        kept.load()
        return PublishedVersions(lookup, ttl_s=1.0, clock=clock, last_known=kept), kept

    async def main() -> None:
        versions, kept = host()
        assert (await versions.get(3)).version == "9"
        assert (await versions.get(4)).availability is Availability.UNAVAILABLE
        kept.write(kept.snapshot())
        assert kept.snapshot() is None  # nothing changed since
        # A restart while the database is away: title 3 plays on from the file, marked stale.
        down[0] = True
        clock.advance(50)
        versions, kept = host()
        pub = await versions.get(3)
        assert (pub.version, pub.dash) == ("9", "titles/3/v9/manifest.mpd")
        assert versions.counts["publish_stale_answers"] == 1
        with pytest.raises(BackendUnavailable):
            await versions.get(4)  # never published: only the catalogue can say
        clock.advance(51)  # past publish_stale_max_seconds since the catalogue confirmed it
        with pytest.raises(BackendUnavailable):
            await versions.get(3)
        # The database back: a withdrawal drops the kept verdict (and the file, once written).
        down[0] = False
        titles[3] = _title(TitleState.WITHDRAWN)
        assert (await versions.get(3)).availability is Availability.WITHDRAWN
        assert len(kept) == 0
        kept.write(kept.snapshot())
        down[0] = True
        clock.advance(2)
        versions, kept = host()
        with pytest.raises(BackendUnavailable):
            await versions.get(3)

    anyio.run(main)
    path.write_bytes(b"{not json")
    kept = LastKnownPublications(path, stale_max_s=100.0, clock=clock)
    kept.load()  # unreadable: starts empty (logged), never fails the start
    assert len(kept) == 0


def test_published_versions_skip_the_catalogue_while_its_breaker_is_open(tmp_path):
    """updegraded: once the catalogue's database breaker has seen the database fail, a publish
    lookup does not ask it (no wait for the pool) until the breaker's interval has passed: the
    kept verdict answers at once, a title with none gets its 503 at once; one lookup per interval
    probes, and the first that succeeds closes the breaker."""
    from headwater.origin.catalogue import BackendUnavailable
    from headwater.origin.catalogue.breaker import Breaker, BreakerState
    from headwater.origin.delivery.lastknown import LastKnownPublications

    clock = FakeClock()
    titles = {3: _title(TitleState.PUBLISHED)}
    down = [False]
    reads: list[int] = []

    async def lookup(title_id: int) -> Title:
        reads.append(title_id)  # each read is a wait for the pool, while the database is down
        if down[0]:
            raise BackendUnavailable("catalogue database: couldn't get a connection after 5.00 sec")
        if title_id not in titles:
            raise TitleNotFound(str(title_id))
        return titles[title_id]

    breaker = Breaker(5.0, clock=clock)
    kept = LastKnownPublications(tmp_path / "published.json", stale_max_s=3600.0, clock=clock)
    versions = PublishedVersions(lookup, ttl_s=1.0, clock=clock, last_known=kept, breaker=breaker)

    async def main() -> None:
        assert (await versions.get(3)).version == "9" and reads == [3]
        down[0] = True
        clock.advance(1.5)
        assert (await versions.get(3)).version == "9"  # this one waited, failed: the breaker opens
        assert reads == [3, 3] and breaker.state is BreakerState.OPEN
        for _ in range(3):  # past the publish cache's TTL each time, within the breaker's interval
            clock.advance(1.1)
            assert (await versions.get(3)).version == "9"
            with pytest.raises(BackendUnavailable):
                await versions.get(4)  # never confirmed: 503, at once too
        assert reads == [3, 3]  # not asked: no request waited for the pool
        assert versions.counts["publish_lookups_skipped"] == 6
        assert versions.counts["publish_stale_answers"] == 4
        clock.advance(2.0)  # the interval passed: one lookup probes (and waits), the others do not
        assert (await versions.get(3)).version == "9"
        with pytest.raises(BackendUnavailable):
            await versions.get(4)
        assert reads == [3, 3, 3] and breaker.state is BreakerState.OPEN
        down[0] = False
        clock.advance(5.1)
        titles[3] = _title(TitleState.WITHDRAWN)
        assert (await versions.get(3)).availability is Availability.WITHDRAWN  # the probe succeeded
        assert breaker.state is BreakerState.CLOSED
        assert (await versions.get(4)).availability is Availability.UNAVAILABLE
        assert reads == [3, 3, 3, 3, 4]

    anyio.run(main)
