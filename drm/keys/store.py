"""The content-key store: KID -> 16-byte key, per title, wrapped at rest, in LMDB.

One LMDB environment under the licence daemon's data directory (``<data_dir>/keys``), shared by
the daemon and the CLI (``headwater keys new``, ``rotate-kek``): LMDB serialises writers across
processes and every new read transaction sees the last commit, so the daemon serves a key made
by the CLI on its next request, with no restart and no reload signal.

Records (msgpack values)::

    b"k" + KID (16)                 -> {title, created, scheme, kek: KEK id, w: wrapped key}
    b"t" + title + b"\\0" + KID      -> b""            (the title's KIDs, for listing)
    b"m:keks"                        -> [path, ...]    (KEK files a rotation added, newest first)

Each key is wrapped with AES-256-GCM under a KEK (:mod:`.kek`) whose id the record carries; the
associated data binds KID and title, so a record copied under another KID or title fails.

KEK rotation without downtime (``headwater keys rotate-kek --new-kek-file F``): the new KEK's
file is first recorded in ``m:keks`` (new keys are wrapped under it from that commit on), then
every record is re-wrapped under it, a batch per transaction. A reader meeting a KEK id it does
not hold reloads its KEKs (the configured one plus the files ``m:keks`` names; at most once per
``reload_interval_s``), so the daemon reads old and new records alike throughout. Once the
rotation is done, point ``kek_file`` at the new file; the old one may then be removed.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import lmdb
import msgpack

from ..errors import KeyStoreError
from .kek import Kek, read_kek_file, unwrap_key, wrap_key

__all__ = ["ContentKey", "KeyInfo", "KeyStore", "SCHEMES"]

SCHEMES = ("cenc", "cbcs", "aes128", "")
_META_KEKS = b"m:keks"
_BATCH = 500
MAX_TITLE_CHARS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    """A stored key's public facts (no key material)."""

    kid: bytes
    title: str
    created: float
    scheme: str
    kek_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentKey:
    """An unwrapped content key."""

    kid: bytes
    key: bytes = field(repr=False)
    title: str


def _check_title(title: str) -> str:
    if not isinstance(title, str) or not title or len(title) > MAX_TITLE_CHARS or "\x00" in title:
        raise KeyStoreError(f"a title id is 1..{MAX_TITLE_CHARS} characters without NUL")
    return title


class KeyStore:
    """The store at ``folder``. ``base_kek()`` loads the configured KEK (file or environment);
    it is called at open and on each reload. ``clock`` gives record times (wall seconds)."""

    def __init__(self, folder: Path, base_kek: Callable[[], Kek], *, map_size: int = 256 * 1024 * 1024,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 reload_interval_s: float = 1.0, readonly: bool = False, env: lmdb.Environment | None = None,
                 sync: bool = True, unwrap_cache_entries: int = 0, unwrap_cache_s: float = 0.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # ``env``: an environment this process opened already (LMDB allows one per process and
        # path; tests stand in a second process's KEK state over it).
        self.env = env if env is not None else lmdb.open(
            str(self.folder), map_size=map_size, subdir=True, mode=0o600, max_readers=256, readonly=readonly,
            lock=True, sync=sync)
        self._owns_env = env is None
        self.base_kek = base_kek
        self.clock = clock
        self.monotonic = monotonic
        self.reload_interval_s = reload_interval_s
        self._keks: dict[bytes, Kek] = {}
        self._current: Kek | None = None
        self._last_reload = -1e18
        self.reloads = 0
        # Unwrapped keys of :meth:`get_many`, by KID + the stored record's bytes (off unless
        # both bounds are given). The record is still read from LMDB on every call, so a key
        # deleted, re-wrapped by a rotation or replaced is seen at once; what is saved is the
        # msgpack decode and the AES-GCM unwrap. The trade-off: up to ``unwrap_cache_entries``
        # content keys stay unwrapped in this process's memory for up to ``unwrap_cache_s``
        # after their last unwrap, where otherwise only the one being answered would be. The
        # KEK that unwraps every key is in the same memory all the time, so a reader of it
        # gains nothing it could not compute; a core dump or swapped page holds more keys.
        self.unwrap_cache_entries = unwrap_cache_entries
        self.unwrap_cache_s = unwrap_cache_s
        self._unwrapped: dict[bytes, tuple[float, ContentKey]] = {}
        self.reload_keks()

    def close(self) -> None:
        self.forget_unwrapped()
        if self._owns_env:
            self.env.close()

    # --- KEKs ----------------------------------------------------------------------------------

    def _kek_paths(self, txn: lmdb.Transaction) -> list[str]:
        raw = txn.get(_META_KEKS)
        return list(msgpack.unpackb(raw)) if raw else []

    def reload_keks(self) -> None:
        """Load the configured KEK and every KEK file a rotation recorded; the current KEK is
        the newest recorded one, else the configured one. A file that cannot be read is
        skipped (its records stay unreadable until it can)."""
        with self.env.begin() as txn:
            paths = self._kek_paths(txn)
        keks: dict[bytes, Kek] = {}
        current: Kek | None = None
        for p in paths:
            try:
                k = read_kek_file(Path(p))
            except (OSError, KeyStoreError):
                continue
            keks.setdefault(k.id, k)
            current = current or k
        try:
            base = self.base_kek()
        except FileNotFoundError as e:
            raise KeyStoreError(f"the KEK file {e.filename} does not exist") from None
        keks.setdefault(base.id, base)
        self._keks = keks
        self._current = current or base
        self._last_reload = self.monotonic()
        self.reloads += 1

    def kek_ids(self) -> list[bytes]:
        return list(self._keks)

    @property
    def current_kek(self) -> Kek:
        assert self._current is not None
        return self._current

    def _kek(self, kek_id: bytes) -> Kek:
        kek = self._keks.get(kek_id)
        if kek is None and self.monotonic() - self._last_reload >= self.reload_interval_s:
            self.reload_keks()
            kek = self._keks.get(kek_id)
        if kek is None:
            raise KeyStoreError(f"a record is wrapped under KEK {kek_id.hex()}, which is not available here")
        return kek

    # --- keys ----------------------------------------------------------------------------------

    def add(self, title: str, *, scheme: str = "", key: bytes | None = None, kid: bytes | None = None) -> ContentKey:
        """A new random KID and key (or the given ones) for ``title``, wrapped under the current
        KEK. KeyStoreError if the KID exists."""
        _check_title(title)
        if scheme not in SCHEMES:
            raise KeyStoreError(f"scheme {scheme!r} is not one of cenc, cbcs, aes128")
        kid = secrets.token_bytes(16) if kid is None else kid
        key = secrets.token_bytes(16) if key is None else key
        if len(kid) != 16 or len(key) != 16:
            raise KeyStoreError("a KID and a content key are 16 bytes each")
        with self.env.begin(write=True) as txn:
            # The current KEK as of this transaction: a rotation that committed its KEK first wins.
            paths = self._kek_paths(txn)
            if paths and (self._current is None or self._current.source != paths[0]):
                self.reload_keks()
            kek = self.current_kek
            record = {"title": title, "created": self.clock(), "scheme": scheme, "kek": kek.id,
                      "w": wrap_key(kek, kid, title, key)}
            if not txn.put(b"k" + kid, msgpack.packb(record), overwrite=False):
                raise KeyStoreError(f"KID {kid.hex()} exists already")
            txn.put(b"t" + title.encode() + b"\x00" + kid, b"")
        return ContentKey(kid=kid, key=key, title=title)

    def _unwrap(self, kid: bytes, raw: bytes) -> ContentKey:
        try:
            rec = msgpack.unpackb(raw)
            title, kek_id, wrapped = rec["title"], rec["kek"], rec["w"]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            raise KeyStoreError(f"the record of KID {kid.hex()} is damaged") from None
        return ContentKey(kid=kid, key=unwrap_key(self._kek(kek_id), kid, title, wrapped), title=title)

    def get(self, kid: bytes) -> ContentKey | None:
        """The key of ``kid``, unwrapped; None if there is none."""
        with self.env.begin(buffers=False) as txn:
            raw = txn.get(b"k" + kid)
        return None if raw is None else self._unwrap(kid, raw)

    def get_many(self, kids: tuple[bytes, ...] | list[bytes]) -> list[ContentKey | None]:
        """:meth:`get` for several KIDs in one read transaction."""
        with self.env.begin() as txn:
            raws = [txn.get(b"k" + kid) for kid in kids]
        if not (self.unwrap_cache_entries > 0 and self.unwrap_cache_s > 0):
            return [None if raw is None else self._unwrap(kid, raw) for kid, raw in zip(kids, raws)]
        return [None if raw is None else self._unwrap_cached(kid, raw) for kid, raw in zip(kids, raws)]

    def _unwrap_cached(self, kid: bytes, raw: bytes) -> ContentKey:
        now = self.monotonic()
        ident = kid + raw  # a KID is 16 bytes: no two (KID, record) pairs give the same bytes
        hit = self._unwrapped.get(ident)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = self._unwrap(kid, raw)
        if len(self._unwrapped) >= self.unwrap_cache_entries:
            # Expired entries first; if every entry is live, drop them all (a burst over the
            # bound costs unwraps, never memory).
            self._unwrapped = {i: e for i, e in self._unwrapped.items() if e[0] > now}
            if len(self._unwrapped) >= self.unwrap_cache_entries:
                self._unwrapped.clear()
        self._unwrapped[ident] = (now + self.unwrap_cache_s, key)
        return key

    def forget_unwrapped(self) -> None:
        """Drop every cached unwrapped key (at shutdown, and for tests)."""
        self._unwrapped.clear()

    def infos(self, title: str | None = None) -> Iterator[KeyInfo]:
        """Every record's facts (of one title if given), in KID order (title order for one)."""
        with self.env.begin() as txn:
            cur = txn.cursor()
            if title is None:
                pairs = []
                if cur.set_range(b"k"):
                    for k, v in cur.iternext():
                        if k[:1] != b"k":
                            break
                        pairs.append((k[1:], v))
            else:
                prefix = b"t" + _check_title(title).encode() + b"\x00"
                kids = []
                if cur.set_range(prefix):
                    for k in cur.iternext(values=False):
                        if not k.startswith(prefix):
                            break
                        kids.append(k[len(prefix):])
                pairs = [(kid, txn.get(b"k" + kid)) for kid in kids]
        for kid, raw in pairs:
            if raw is None:
                continue
            rec = msgpack.unpackb(raw)
            yield KeyInfo(kid=kid, title=rec["title"], created=rec["created"], scheme=rec["scheme"],
                          kek_id=rec["kek"])

    def count(self) -> int:
        with self.env.begin() as txn:
            cur = txn.cursor()
            n = 0
            if cur.set_range(b"k"):
                for k in cur.iternext(values=False):
                    if k[:1] != b"k":
                        break
                    n += 1
        return n

    # --- rotation ------------------------------------------------------------------------------

    def rotate(self, new_kek_path: Path, *, progress: Callable[[int], None] | None = None,
               batch_size: int = _BATCH) -> int:
        """Re-wrap every record under the KEK in ``new_kek_path``; returns how many changed.
        Interrupted, it is safe to run again: done records are skipped."""
        path = str(Path(new_kek_path).resolve())
        new = read_kek_file(Path(path))
        with self.env.begin(write=True) as txn:
            paths = [p for p in self._kek_paths(txn) if p != path]
            txn.put(_META_KEKS, msgpack.packb([path] + paths))
        self.reload_keks()
        if self.current_kek.id != new.id:
            raise KeyStoreError(f"{path} did not become the current KEK")
        changed = 0
        after = b"k"
        while True:
            with self.env.begin(write=True) as txn:
                cur = txn.cursor()
                batch = []
                if cur.set_range(after):
                    for k, v in cur.iternext():
                        if k[:1] != b"k":
                            break
                        if k == after:
                            continue
                        batch.append((k, v))
                        if len(batch) >= batch_size:
                            break
                if not batch:
                    break
                for k, v in batch:
                    rec = msgpack.unpackb(v)
                    if rec["kek"] == new.id:
                        continue
                    kid = k[1:]
                    key = unwrap_key(self._kek(rec["kek"]), kid, rec["title"], rec["w"])
                    rec["kek"], rec["w"] = new.id, wrap_key(new, kid, rec["title"], key)
                    txn.put(k, msgpack.packb(rec))
                    changed += 1
                after = batch[-1][0]
            if progress is not None:
                progress(changed)
        return changed
