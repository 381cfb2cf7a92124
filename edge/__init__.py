"""The edge: HTTP/1.1 and HTTP/2 cache POPs, regional caches and an origin shield (a CDN).

Imported as ``headwater.edge``. The caching rules (``cache/``) and the stores and their eviction
policies (``store/``) are sans-IO and driven by tests without sockets; ``daemon.py`` is the thin
socket shell around them. The simulator imports the same eviction policies and cache keys.
"""
