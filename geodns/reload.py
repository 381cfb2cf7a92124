"""Hot reload: the zones and the ``[dns]`` table re-read, validated and swapped in whole.

:class:`ZoneSource` knows where the zones come from (cluster.toml's ``[dns]`` table and the
master files it names) and builds a fresh :class:`~.zone.ZoneSet` from them. Its
:meth:`~ZoneSource.reload` reads everything again; only when every zone validates does it
return the new set (with the next generation, which empties the answer caches), else it raises
and the caller keeps serving the old one. The reading (:meth:`~ZoneSource.read`) and the taking
in (:meth:`~ZoneSource.adopt`) are apart so that the daemon reads in a worker thread: parsing a
zone of 20 000 records takes over a second of CPU, during which the event loop would answer
nothing. :meth:`~ZoneSource.changed` compares the files'
modification stamps (the geo database's included: a fresh one is opened on reload), so a
poll costs a few ``stat`` calls.

What a reload cannot change while running (the addresses, the worker count) is logged as
needing a restart; everything the answerer uses changes at once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from headwater.config import ConfigError, ClusterConfig, load

from .config import DnsConfig, config_zone, zone_files
from .errors import ZoneError
from .zone import ZoneSet

__all__ = ["ZoneSource", "load_zones", "RESTART_KEYS"]

log = logging.getLogger("headwater.dns")

# [dns] keys a running daemon cannot take up: it listens where it started.
RESTART_KEYS = ("id", "host", "port", "admin_port", "workers", "tcp_max_connections")


def load_zones(cfg: DnsConfig, generation: int = 0) -> ZoneSet:
    """Every zone ``cfg`` names, validated (ZoneError names the file or record at fault)."""
    zones = [z for z in [config_zone(cfg)] if z is not None] + zone_files(cfg)
    return ZoneSet(zones, generation=generation)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class ZoneSource:
    """The current ``[dns]`` config and zones of one daemon, and how to read them again."""

    def __init__(self, cluster: ClusterConfig, cfg: DnsConfig) -> None:
        self.path = cluster.path
        self.cfg = cfg
        self.generation = 0
        self.zones = load_zones(cfg, self.generation)
        self._stamps = self._current_stamps()

    def _files(self) -> list[Path]:
        # The geo database too: an operator (or geoipupdate) replacing it is a reload.
        geo = [self.cfg.steering.geo.geoip_db] if self.cfg.steering is not None else []
        return ([self.path] if self.path is not None else []) + list(self.cfg.zone_files) + geo

    def geo_stamp(self) -> tuple[int, int] | None:
        """The geo database file's modification stamp (None without steering)."""
        return _stamp(self.cfg.steering.geo.geoip_db) if self.cfg.steering is not None else None

    def _current_stamps(self) -> dict[Path, tuple[int, int] | None]:
        return {p: _stamp(p) for p in self._files()}

    def changed(self) -> bool:
        """Whether cluster.toml or a zone file changed since the last (attempted) load."""
        return self._current_stamps() != self._stamps

    def read(self) -> tuple[DnsConfig, ZoneSet]:
        """Read the config and every zone again: the new config and zones (at the next
        generation), or ConfigError / ZoneError. Changes nothing the answering side reads, so it
        may run in a worker thread (a big zone takes seconds to parse); :meth:`adopt` takes the
        result in. Files that fail are not retried until they change again."""
        self._stamps = self._current_stamps()
        cfg = self.cfg
        if self.path is not None:
            cluster = load(self.path)
            fresh = cluster.dns
            if fresh is None:
                raise ConfigError("dns", f"{self.path} has no [dns] table any more")
            if fresh.id != cfg.id:
                raise ConfigError("dns.id", f"the id changed from {cfg.id!r} to {fresh.id!r}: restart to take it")
            stuck = [k for k in RESTART_KEYS if getattr(fresh, k) != getattr(cfg, k)]
            if stuck:
                log.warning("dns: %s changed in %s; the running daemon keeps the old value until restarted",
                            ", ".join(stuck), self.path,
                            extra={"event": "dns.reload_needs_restart", "keys": stuck})
                fresh = replace(fresh, **{k: getattr(cfg, k) for k in stuck})
            cfg = fresh
        return cfg, load_zones(cfg, self.generation + 1)

    def adopt(self, cfg: DnsConfig, zones: ZoneSet) -> None:
        """Take in what :meth:`read` returned."""
        self.cfg = cfg
        self.generation = zones.generation
        self.zones = zones
        self._stamps = self._current_stamps()
        log.info("dns: reloaded %d zone(s), generation %d", len(zones.zones), self.generation,
                 extra={"event": "dns.reloaded", "generation": self.generation,
                        "zones": [str(z.origin) for z in zones.zones]})

    def try_read(self) -> tuple[DnsConfig, ZoneSet] | None:
        """:meth:`read`, logging instead of raising (None: the current zones stay)."""
        try:
            return self.read()
        except (ConfigError, ZoneError) as e:
            log.error("dns: reload refused, still serving generation %d: %s", self.generation, e,
                      extra={"event": "dns.reload_failed", "error": str(e)})
            return None

    def reload(self) -> ZoneSet:
        """:meth:`read` and :meth:`adopt`: the new set, or ConfigError / ZoneError (the current
        one stays)."""
        cfg, zones = self.read()
        self.adopt(cfg, zones)
        return zones

    def try_reload(self) -> bool:
        """:meth:`reload`, logging instead of raising; True when the new zones are in."""
        read = self.try_read()
        if read is not None:
            self.adopt(*read)
        return read is not None
