"""DNSSEC: ECDSA P-256 keys kept sealed, online signing of answers, white-lie denial, the DS.

dns-core uses: :func:`read_dnssec` (``[dns.dnssec]``), :func:`load_or_create_zone_key` (the
zone's CSK, sealed with :mod:`headwater.sealed`), :class:`ZoneSigner` (RRSIGs, DNSKEY, NSEC) and
:func:`render_ds` (``headwater dns ds``).
"""

from .config import DnssecConfig, read_dnssec
from .ds import ds_rdata, render_ds
from .keys import ZoneKey, key_path, load_or_create_zone_key, load_zone_key
from .sign import ZoneSigner

__all__ = ["DnssecConfig", "ZoneKey", "ZoneSigner", "ds_rdata", "key_path", "load_or_create_zone_key",
           "load_zone_key", "read_dnssec", "render_ds"]
