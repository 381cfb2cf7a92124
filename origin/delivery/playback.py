"""The playback API: ``GET /api/titles/T/play`` for a viewer's token with scope ``view``.

For a published title it answers::

    {"title": T, "dash": <signed URL>, "hls": <signed URL>,
     "poster": <signed URL>, "thumbnails": <signed URL: the WebVTT thumbnail track>,
     "licence": {"url": <licence server>, "token": <entitlement JWT>, "expires": <epoch>},
     "cdn": {"query": <signing parameters>, "cookies": {...}, "resource": <granted URLs>},
     "issued": <epoch: now>, "expires": <epoch: the URLs' policy ends>}

How the CDN authorises the player (CloudFront's format, checked by every POP): one **custom
policy whose Resource is the title's version prefix with a wildcard**,
``<cdn_base_url>/titles/T/vN/*``, signed once per request with the ``[[cdn.keys]]`` key
``signing_key_id``. The manifest URLs carry it as query parameters (a signed URL), so a player
that is handed just a URL can start; the poster (a JPEG) and the thumbnail track (WebVTT, whose
cues name sprite regions relative to it) are signed URLs under the same prefix. Segment URLs inside the manifests are relative and a player
resolves them without the manifest's query, so the same grant is also given as ``cdn.query``
(to append to every request: shaka's request filters, hls.js ``xhrSetup``) and as ``cdn.cookies``
(CloudFront's signed cookies, for a player on a site that sets cookies for the CDN's domain): the
same policy and signature, valid for every file of that version and nothing else — not another
title, not another version, not past ``expires``. A canned policy per file would need a signature
per segment; cookies alone would not work for a player handed only a URL.

The grant is short (``play_url_seconds``, 5 minutes by default) and a player keeps it valid by
asking /play again before ``expires`` (the web page's ``static/grant.js``: a minute early, timed
from ``issued`` so the viewer's clock does not matter). That, rather than one policy sized to the
title's duration, because a viewer may pause for longer than any margin, and a leaked URL or
cookie then opens the title for minutes, not for a film's length; each renewal is a fresh
entitlement check (a withdrawn title or a revoked viewer gets no new grant).

With no ``[[cdn.keys]]`` in cluster.toml at all, the URLs are unsigned (the edge has no key to
check them with either); with keys but none this origin can sign with, /play answers 503. The licence token is an entitlement token for ``titles=[str(T)]``, the
key id the transcoder made the title's content key under (:mod:`headwater.drm.client`).
"""

from __future__ import annotations

from typing import Any, Callable

from headwater.clock import SYSTEM_CLOCK, Clock

from ..errors import NotPublished, PlaybackUnavailable, Withdrawn
from .config import DeliveryConfig
from .published import Availability, PublishedVersions

__all__ = ["PlaybackService"]


class PlaybackService:
    """Answers ``/play`` (see the module docstring).

    ``grant(resource, expires)`` signs a CDN policy (:func:`headwater.edge.client.signed_grant`
    bound to a key) or is None for unsigned URLs; ``mint(user=, titles=, now=, lifetime_s=)``
    mints a licence token (:class:`headwater.drm.client.EntitlementMinter`), None when this
    origin cannot (answered 503)."""

    def __init__(self, *, versions: PublishedVersions, config: DeliveryConfig, cdn_base_url: str,
                 licence_url: str | None, grant: Callable[[str, int], Any] | None,
                 mint: Callable[..., tuple[str, int]] | None, signing_required: bool = False,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.versions = versions
        self.config = config
        self.cdn_base_url = cdn_base_url.rstrip("/")
        self.licence_url = licence_url
        self._grant = grant
        self._mint = mint
        self.signing_required = signing_required
        self.clock = clock
        self.counts = {"plays_granted": 0}

    async def play(self, title_id: int, user: str) -> dict[str, Any]:
        """The playback document for ``user`` (the token's ``sub``)."""
        pub = await self.versions.get(title_id)
        if pub.availability is Availability.WITHDRAWN:
            raise Withdrawn(f"title {title_id} was withdrawn")
        if pub.availability is not Availability.PUBLISHED or pub.dash is None or pub.hls is None:
            raise NotPublished(f"title {title_id} is not published")
        if self._mint is None or self.licence_url is None:
            raise PlaybackUnavailable("this origin cannot mint licence tokens: the cluster has no [licence] "
                                      "whose token key can sign on this host")
        if self._grant is None and self.signing_required:
            raise PlaybackUnavailable("the CDN checks signatures ([[cdn.keys]]) but no key can sign on this origin "
                                      "(private_key_file, [origin.delivery] signing_key_id)")
        now = self.clock.time()
        expires = int(now + self.config.play_url_s)
        resource = f"{self.cdn_base_url}/titles/{title_id}/v{pub.version}/*"
        query, cookies = "", {}
        if self._grant is not None:
            g = self._grant(resource, expires)
            query, cookies = g.query, g.cookies
        sep = "?" + query if query else ""
        token, token_exp = self._mint(user=user, titles=[str(title_id)], now=now,
                                      lifetime_s=self.config.licence_token_s)
        self.counts["plays_granted"] += 1
        return {"title": title_id,
                "dash": f"{self.cdn_base_url}/{pub.dash}{sep}",
                "hls": f"{self.cdn_base_url}/{pub.hls}{sep}",
                "poster": f"{self.cdn_base_url}/{pub.poster}{sep}",
                "thumbnails": f"{self.cdn_base_url}/{pub.thumbnails}{sep}",
                "licence": {"url": self.licence_url, "token": token, "expires": token_exp},
                "cdn": {"resource": resource, "query": query, "cookies": cookies, "signed": bool(query)},
                "issued": int(now), "expires": expires}
