"""HTTP caching by RFC 9111 for a shared cache: Cache-Control, freshness, validation, cache keys, behaviours, ranges and slices."""
