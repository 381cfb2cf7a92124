"""The GeoDNS: an authoritative DNS server that steers each viewer to the nearest healthy POP.

Imported as ``headwater.dns``. Sans-IO parts (zones, the answerer, steering, health, DNSSEC, rate
limiting) are driven by tests without sockets; ``daemon.py`` is the thin socket shell around them.
"""
