"""The CDN's origin and the playback API.

- :mod:`.objectpath`: which request paths name a published object's key (sans-IO);
- :mod:`.published`: the title → published version lookup, cached briefly;
- :mod:`.serve`: ``GET``/``HEAD /titles/T/vN/<file>`` streamed from the videos bucket with the
  headers a CDN needs;
- :mod:`.playback`: ``GET /api/titles/T/play`` (signed CDN URLs and a licence token);
- :mod:`.invalidation`: purging the CDN by surrogate key when a title's publication changes;
- :mod:`.config`: ``[origin.delivery]``.
"""

from __future__ import annotations

from headwater.lazy import lazy_exports

# Names are imported on first use (headwater.lazy): reading this package's config
# does not load its servers.
_EXPORTS = {
    "DeliveryConfig": ".config",
    "read_delivery": ".config",
    "PURGE_JOB": ".invalidation",
    "PurgeWorker": ".invalidation",
    "needs_purge": ".invalidation",
    "request_cdn_purge": ".invalidation",
    "ObjectPath": ".objectpath",
    "content_type": ".objectpath",
    "object_kind": ".objectpath",
    "parse_object_path": ".objectpath",
    "PlaybackService": ".playback",
    "Availability": ".published",
    "Publication": ".published",
    "PublishedVersions": ".published",
    "publication_of": ".published",
    "ObjectServer": ".serve",
    "surrogate_key": ".serve",
}

__all__ = ["DeliveryConfig", "read_delivery", "PURGE_JOB", "PurgeWorker", "needs_purge", "request_cdn_purge",
           "ObjectPath", "content_type", "object_kind", "parse_object_path", "PlaybackService", "Availability",
           "Publication", "PublishedVersions", "publication_of", "ObjectServer", "surrogate_key"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
