"""The origin (``headwater.origin``): authenticated resumable uploads into the object store
(tus 1.0 over OAuth2 bearer tokens), the catalogue and search with its job queue (SQLite or
PostgreSQL), and next the transcode pipeline and the CDN's origin.
See docs/architecture.md, "The origin"."""
