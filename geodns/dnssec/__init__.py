"""DNSSEC: ECDSA P-256 keys kept sealed, online signing of answers, white-lie denial, the DS.

dns-core uses: :func:`read_dnssec` (``[dns.dnssec]``), :func:`load_or_create_zone_key` (the
zone's CSK, sealed with :mod:`headwater.sealed`), :class:`ZoneSigner` (RRSIGs, DNSKEY, NSEC) and
:func:`render_ds` (``headwater dns ds``). The names are imported on first use
(``headwater.lazy``): reading ``[dns.dnssec]`` does not load the crypto libraries.
"""

from headwater.lazy import lazy_exports

_EXPORTS = {
    "DnssecConfig": ".config", "read_dnssec": ".config",
    "ds_rdata": ".ds", "render_ds": ".ds",
    "ZoneKey": ".keys", "key_path": ".keys", "load_or_create_zone_key": ".keys", "load_zone_key": ".keys",
    "ZoneSigner": ".sign",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
