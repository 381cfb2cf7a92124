"""WebM (Matroska) for the packager: a bounded EBML reader and writer (:mod:`.ebml`), the
elements a DASH WebM rendition is made of (:mod:`.segment`: the init segment's EBML header,
Segment, Info and Tracks; a media segment's Cluster of SimpleBlocks) and the WebM Encryption
of its frames (:mod:`.encrypt`). Sans-IO: bytes in, bytes out."""
