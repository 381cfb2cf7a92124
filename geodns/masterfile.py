"""RFC 1035 master files and one-line record texts, read with dnslib's ZoneParser.

dnslib's parser leaves an SRV target as written (``sip`` instead of ``sip.<origin>``); the
subclass here makes relative SRV targets relative to the origin like every other name. Errors
become :class:`~.errors.ZoneError` naming the file. The zone's origin is the owner of its SOA
(or the ``origin`` a caller gives); :func:`read_master_file` returns the validated
:class:`~.zone.Zone`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

import dnslib

from .errors import ZoneError
from .zone import Zone, build_zone

__all__ = ["parse_records", "record_from_text", "read_master_file", "MAX_FILE_BYTES"]

# A zone file larger than this is refused rather than read into memory.
MAX_FILE_BYTES = 64 * 1024 * 1024


class _Parser(dnslib.ZoneParser):
    """ZoneParser with SRV targets resolved against the origin."""

    def parse_rr(self, rr: list[str]) -> dnslib.RR:  # noqa: D102 — dnslib's hook
        parsed = super().parse_rr(list(rr))
        if parsed.rtype == dnslib.QTYPE.SRV:
            target = rr[-1]
            if not target.endswith("."):
                full = self.origin if target == "@" else self.origin.add(target)
                parsed.rdata = dnslib.SRV(parsed.rdata.priority, parsed.rdata.weight,
                                          parsed.rdata.port, full)
        return parsed


def parse_records(text: str, *, origin: str = "", ttl: int = 3600, source: str = "") -> list[dnslib.RR]:
    """Every record of master-file ``text``; ZoneError (naming ``source``) on a bad line."""
    try:
        return list(_Parser(text, origin=origin, ttl=ttl))
    except Exception as e:  # noqa: BLE001 — dnslib raises many kinds on bad input
        raise ZoneError(f"{source or 'zone text'}: cannot parse: {type(e).__name__}: {e}") from None


def record_from_text(owner: str, rtype: str, value: str, *, origin: str, ttl: int,
                     source: str = "") -> dnslib.RR:
    """One record from its parts as cluster.toml gives them (``name``, ``type``, ``value``)."""
    owner = owner.strip() or "@"
    records = parse_records(f"{owner} {ttl} IN {rtype.upper()} {value}\n", origin=origin, ttl=ttl,
                            source=source)
    if len(records) != 1:
        raise ZoneError(f"{source}: {owner} {rtype} {value!r} is not one record")
    return records[0]


def _read_bounded(path: Path) -> str:
    """The text of the regular file at ``path``, at most MAX_FILE_BYTES of it, else ZoneError.

    The daemon reads zones in its event loop, so nothing here may block or grow without bound:
    the file is opened non-blocking (a FIFO put in a zone file's place would otherwise hang the
    worker in open() until a writer came), must be a regular file (not /dev/zero, whose size
    says 0 and whose read never ends), and is read up to one byte past the limit (a file that
    grows after its size was looked at is still refused, never read whole)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ZoneError(f"{path}: cannot read: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ZoneError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ZoneError(f"{path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ZoneError(f"{path}: more than the {MAX_FILE_BYTES} bytes a zone file may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ZoneError(f"{path}: not UTF-8 text: {e}") from None


def read_master_file(path: str | Path, *, origin: str | None = None, steered: Iterable[str] = ()) -> Zone:
    """Read and validate one master file; its origin is ``origin`` or its SOA's owner."""
    path = Path(path)
    text = _read_bounded(path)
    records = parse_records(text, origin=origin or "", source=str(path))
    if origin is None:
        soas = [rr for rr in records if rr.rtype == dnslib.QTYPE.SOA]
        if not soas:
            raise ZoneError(f"{path}: no SOA record (the zone's origin is its SOA's owner)")
        origin = str(soas[0].rname)
    return build_zone(origin, records, steered=steered, source=str(path))
