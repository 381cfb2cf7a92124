"""The CDN origin's and the playback API's part of cluster.toml: ``[origin.delivery]``, read
once into a frozen dataclass; every default here. Keys::

    manifest_cache_control   ("public, max-age=60, s-maxage=86400": .mpd and .m3u8)
    segment_cache_control    ("public, max-age=31536000, immutable": everything else under titles/T/vN/)
    error_cache_control      ("public, max-age=5": 404/410 of /titles/..., so a storm on an
                              unpublished title is absorbed by the CDN; "no-store" turns it off)
    publish_cache_seconds    (1: how long the title -> published version lookup is reused; a
                              withdrawal takes effect at the origin within this)
    publish_cache_entries    (10000: titles remembered at once)
    publish_stale_max_seconds (3600: while the catalogue's database cannot be reached, a title the
                              catalogue said was published within this long plays on, even
                              after a restart (lastknown.py); 0: never)
    store_timeout_seconds    (10: each wait on the object store: connect, head, every body read)
    max_path_chars           (1024: a longer /titles/ path is refused)
    cdn_base_url             ("": the first [[edge]] POP of this cluster.toml, https on its tls_port
                              when it has one; with no POP, the origin itself)
    distribution             ("": the first [[distributions]] entry; the one purged by tag)
    signing_key_id           ("": the first [[cdn.keys]] entry with a private_key_file; with no
                              [[cdn.keys]] at all the playback URLs are unsigned)
    play_url_seconds         (300: lifetime of a signed playback URL's policy)
    licence_url              ("": this cluster's [licence] daemon, <its URL>/licence)
    licence_key_id           ("": the first [[licence.tokens.keys]] entry that can sign here)
    licence_token_seconds    (300: lifetime of the entitlement token /play mints)
    purge_timeout_seconds    (10: a purge request to the edge)

Why two Cache-Control values, and these defaults (the seed's TTL trade-off): every URL is under
a version prefix, so no object ever changes in place — a segment can be cached for a year, and
``immutable`` stops browsers revalidating it. A manifest is the door to a version: what must stay
short is how long a *withdrawn* or replaced title remains playable. The CDN is purged by surrogate
key when that happens (``s-maxage`` long: the edge keeps the manifest until told), but a purge does
not reach players' and browsers' own caches, so ``max-age`` (what they obey) stays at a minute.
A live or frequently replaced catalogue wants both shorter; a catalogue whose titles are never
withdrawn can make manifests immutable too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from headwater.config import Reader

__all__ = ["DeliveryConfig", "read_delivery"]

_KEYS = {"manifest_cache_control", "segment_cache_control", "error_cache_control", "publish_cache_seconds",
         "publish_cache_entries", "publish_stale_max_seconds",
         "store_timeout_seconds", "max_path_chars", "cdn_base_url", "distribution",
         "signing_key_id", "play_url_seconds", "licence_url", "licence_key_id", "licence_token_seconds",
         "purge_timeout_seconds"}


MANIFEST_CACHE_CONTROL = "public, max-age=60, s-maxage=86400"
SEGMENT_CACHE_CONTROL = "public, max-age=31536000, immutable"
ERROR_CACHE_CONTROL = "public, max-age=5"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """``[origin.delivery]`` (see the module docstring). Empty strings are resolved against the
    rest of cluster.toml when the daemon starts (:mod:`.playback`)."""

    manifest_cache_control: str = MANIFEST_CACHE_CONTROL
    segment_cache_control: str = SEGMENT_CACHE_CONTROL
    error_cache_control: str = ERROR_CACHE_CONTROL
    publish_cache_s: float = 1.0
    publish_cache_entries: int = 10_000
    publish_stale_max_s: float = 3600.0
    store_timeout_s: float = 10.0
    max_path_chars: int = 1024
    cdn_base_url: str = ""
    distribution: str = ""
    signing_key_id: str = ""
    play_url_s: float = 300.0
    licence_url: str = ""
    licence_key_id: str = ""
    licence_token_s: float = 300.0
    purge_timeout_s: float = 10.0


def _cache_control(r: Reader, item: Mapping[str, Any], key: str, p: str, default: str) -> str:
    value = r.get(item, key, p, str, default).strip()
    if not value or len(value) > 256 or not all(32 <= ord(c) < 127 for c in value):
        raise r.error(f"{p}.{key}", "a Cache-Control value: 1..256 printable ASCII characters")
    return value


def _url(r: Reader, item: Mapping[str, Any], key: str, p: str) -> str:
    value = r.get(item, key, p, str, "")
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise r.error(f"{p}.{key}", f"{value!r} is not an http(s) URL without query")
    return value.rstrip("/")


def _stale_max(r: Reader, item: Mapping[str, Any], p: str) -> float:
    value = r.non_negative(item, "publish_stale_max_seconds", p, 3600.0)
    if value > 30 * 86400:
        raise r.error(f"{p}.publish_stale_max_seconds", "at most 30 days (2592000)")
    return value


def read_delivery(r: Reader, item: Mapping[str, Any], p: str) -> DeliveryConfig:
    """The ``[origin.delivery]`` table (``p`` is its dotted name)."""
    r.check_keys(item, p, _KEYS)
    entries = r.get(item, "publish_cache_entries", p, int, 10_000)
    if not 1 <= entries <= 10_000_000:
        raise r.error(f"{p}.publish_cache_entries", "must be within 1..10000000")
    max_path = r.get(item, "max_path_chars", p, int, 1024)
    if not 64 <= max_path <= 8192:
        raise r.error(f"{p}.max_path_chars", "must be within 64..8192")
    cache_s = r.non_negative(item, "publish_cache_seconds", p, 1.0)
    if cache_s > 3600:
        raise r.error(f"{p}.publish_cache_seconds", "at most 3600: a withdrawal takes this long to apply")
    return DeliveryConfig(
        manifest_cache_control=_cache_control(r, item, "manifest_cache_control", p, MANIFEST_CACHE_CONTROL),
        segment_cache_control=_cache_control(r, item, "segment_cache_control", p, SEGMENT_CACHE_CONTROL),
        error_cache_control=_cache_control(r, item, "error_cache_control", p, ERROR_CACHE_CONTROL),
        publish_cache_s=cache_s, publish_cache_entries=entries,
        publish_stale_max_s=_stale_max(r, item, p),
        store_timeout_s=r.positive(item, "store_timeout_seconds", p, 10.0), max_path_chars=max_path,
        cdn_base_url=_url(r, item, "cdn_base_url", p),
        distribution=r.get(item, "distribution", p, str, ""),
        signing_key_id=r.get(item, "signing_key_id", p, str, ""),
        play_url_s=r.positive(item, "play_url_seconds", p, 300.0),
        licence_url=_url(r, item, "licence_url", p),
        licence_key_id=r.get(item, "licence_key_id", p, str, ""),
        licence_token_s=r.positive(item, "licence_token_seconds", p, 300.0),
        purge_timeout_s=r.positive(item, "purge_timeout_seconds", p, 10.0))
