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

from .config import DeliveryConfig, read_delivery
from .invalidation import PURGE_JOB, PurgeWorker, needs_purge, request_cdn_purge
from .objectpath import ObjectPath, content_type, object_kind, parse_object_path
from .playback import PlaybackService
from .published import Availability, Publication, PublishedVersions, publication_of
from .serve import ObjectServer, surrogate_key

__all__ = ["DeliveryConfig", "read_delivery", "PURGE_JOB", "PurgeWorker", "needs_purge", "request_cdn_purge",
           "ObjectPath", "content_type", "object_kind", "parse_object_path", "PlaybackService", "Availability",
           "Publication", "PublishedVersions", "publication_of", "ObjectServer", "surrogate_key"]
