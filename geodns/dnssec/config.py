"""``[dns.dnssec]``: whether the GeoDNS signs its zones, with which algorithm, where the key lives.

Read through the kernel's :class:`~headwater.config.Reader` (errors name the key and its line);
``geodns/config.py`` calls :func:`read_dnssec` with the table and the DNS daemon's data
directory. Every DNSSEC default lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headwater.config import Reader

__all__ = ["ALGORITHM_ECDSAP256SHA256", "SUPPORTED_ALGORITHMS", "DnssecConfig", "read_dnssec"]

#: ECDSA P-256 with SHA-256 (RFC 6605): small keys and signatures, fast to sign online.
ALGORITHM_ECDSAP256SHA256 = 13
SUPPORTED_ALGORITHMS = {ALGORITHM_ECDSAP256SHA256: "ECDSAP256SHA256"}


@dataclass(frozen=True, slots=True, kw_only=True)
class DnssecConfig:
    """How the GeoDNS signs. ``key_dir`` holds one sealed key per zone."""

    enabled: bool = False
    algorithm: int = ALGORITHM_ECDSAP256SHA256
    key_dir: Path = Path("var/dns/keys")
    # A signature is valid this long from its window's start. Long enough for validators to
    # cache answers through an outage of the signer; every answer is signed afresh each hour
    # anyway (online signing), so a long validity costs nothing in freshness.
    signature_validity_s: int = 7 * 86400
    # Inception is set this far before the signing time, so validators whose clocks run behind
    # ours still accept fresh signatures (RFC 6781 §4.4.2.2 recommends allowing for skew).
    inception_offset_s: int = 3600
    # Signatures kept per worker, keyed by RRset content and validity window (steered answers
    # repeat, so nearly every positive answer is a cache hit).
    signature_cache_entries: int = 10_000


def read_dnssec(r: Reader, raw: Any, prefix: str = "dns.dnssec", *, node_data_dir: Path) -> DnssecConfig:
    """``[dns.dnssec]``; ``node_data_dir`` is the DNS daemon's data directory (``key_dir``
    defaults to ``<node_data_dir>/keys``; a relative ``key_dir`` is relative to cluster.toml)."""
    if not isinstance(raw, dict):
        raise r.error(prefix, "expected a table")
    r.check_keys(raw, prefix, {"enabled", "algorithm", "key_dir", "signature_validity_days",
                               "inception_offset_seconds", "signature_cache_entries"})
    d = DnssecConfig()
    algorithm = r.get(raw, "algorithm", prefix, int, d.algorithm)
    if algorithm not in SUPPORTED_ALGORITHMS:
        known = ", ".join(f"{n} ({name})" for n, name in SUPPORTED_ALGORITHMS.items())
        raise r.error(f"{prefix}.algorithm", f"algorithm {algorithm} is not supported; the GeoDNS signs "
                      f"with {known} only (RFC 6605: ECDSA P-256 with SHA-256)")
    raw_dir = r.get(raw, "key_dir", prefix, str, "")
    if raw_dir:
        key_dir = Path(raw_dir).expanduser()
        key_dir = key_dir if key_dir.is_absolute() else r.root / key_dir
    else:
        key_dir = node_data_dir / "keys"
    validity_days = r.get(raw, "signature_validity_days", prefix, (int, float), d.signature_validity_s / 86400)
    if not 1 <= validity_days <= 90:
        raise r.error(f"{prefix}.signature_validity_days", f"{validity_days} must be between 1 and 90 days")
    offset = r.get(raw, "inception_offset_seconds", prefix, int, d.inception_offset_s)
    if not 0 <= offset <= 86400:
        raise r.error(f"{prefix}.inception_offset_seconds", f"{offset} must be between 0 and 86400 (one day)")
    entries = r.get(raw, "signature_cache_entries", prefix, int, d.signature_cache_entries)
    if not 0 <= entries <= 10_000_000:
        raise r.error(f"{prefix}.signature_cache_entries", f"{entries} must be between 0 and 10000000")
    return DnssecConfig(
        enabled=r.get(raw, "enabled", prefix, bool, d.enabled),
        algorithm=algorithm,
        key_dir=key_dir,
        signature_validity_s=int(validity_days * 86400),
        inception_offset_s=offset,
        signature_cache_entries=entries,
    )
