"""The records the gateway keeps in the metadata ring: buckets, objects, multipart uploads, parts.

Each record is a frozen dataclass with ``to_value()`` / ``from_value()`` to the msgpack-able dict
the metadata ring stores. The ring does not interpret them; only this module knows their shape.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from .config import ErasureScheme

__all__ = [
    "BUCKETS_NS",
    "objects_ns",
    "uploads_ns",
    "parts_ns",
    "BUCKET_TAGS_NS",
    "upload_key",
    "part_key",
    "Layout",
    "BucketRecord",
    "ObjectRecord",
    "UploadRecord",
    "PartRecord",
    "PartInfo",
    "new_rev",
]

BUCKETS_NS = "buckets"


def objects_ns(bucket: str) -> str:
    return f"obj/{bucket}"


#: A bucket's tag set (PutBucketTagging), one record per bucket name: ``{"created": the bucket
#: record's ``created``, "tags": {...}}``. Kept apart from the bucket record, which DeleteBucket's
#: mark and the gateways' bucket caches compare-and-swap: a tagging write never races them. A
#: record whose ``created`` is not the bucket's is an earlier bucket's of that name, and is no tags.
BUCKET_TAGS_NS = "btags"


def uploads_ns(bucket: str) -> str:
    return f"mpu/{bucket}"


def parts_ns(bucket: str, upload_id: str) -> str:
    return f"part/{bucket}/{upload_id}"


def upload_key(key: str, upload_id: str) -> str:
    # "\0" sorts before every other character, so uploads list in key order, then upload id.
    return f"{key}\0{upload_id}"


def part_key(number: int) -> str:
    return f"{number:05d}"


def new_rev() -> str:
    """A fresh ``ObjectRecord.rev`` (or ``data_rev``): random, so no two writes share one."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """Where one erasure-coded run of bytes lives: fragment i of every stripe is on nodes[i].

    ``nodes[i]`` is None where the write of fragment i failed; reads then use the others.
    Fragment files are named ``f"{oid}.{i}"``.

    ``homes`` marks handoffs: where ``homes[i]`` is a node, fragment i was written to
    ``nodes[i]`` in its place (that node was down or failed mid-write) and the reconstructor
    moves it back there once it answers. Empty, or None at an index, means "at home".
    """

    oid: str
    size: int
    k: int
    m: int
    stripe_bytes: int
    nodes: tuple[str | None, ...]
    homes: tuple[str | None, ...] = ()

    @property
    def scheme(self) -> ErasureScheme:
        return ErasureScheme(k=self.k, m=self.m, stripe_bytes=self.stripe_bytes)

    def fid(self, index: int) -> str:
        return f"{self.oid}.{index}"

    @property
    def stripes(self) -> int:
        return -(-self.size // self.stripe_bytes)

    def home_of(self, index: int) -> str | None:
        """The node fragment ``index`` belongs on when it is away on a handoff node, else None."""
        return self.homes[index] if index < len(self.homes) else None

    @property
    def away(self) -> dict[int, str]:
        """Handed-off fragments: index -> the home node it is to move back to."""
        return {i: h for i, h in enumerate(self.homes) if h is not None and h != self.nodes[i]}

    def moved(self, moves: dict[int, str | None]) -> Layout:
        """This layout with fragment i now on ``moves[i]``; an index moved onto its home node is
        home (its mark is cleared), one moved elsewhere keeps the home it is to go back to."""
        nodes = list(self.nodes)
        homes = list(self.homes) or [None] * len(nodes)
        for i, node in moves.items():
            nodes[i] = node
            if homes[i] == node:
                homes[i] = None
        return replace(self, nodes=tuple(nodes),
                       homes=tuple(homes) if any(h is not None for h in homes) else ())

    def to_value(self) -> dict[str, Any]:
        v = {"oid": self.oid, "size": self.size, "k": self.k, "m": self.m,
             "stripe": self.stripe_bytes, "nodes": list(self.nodes)}
        if any(h is not None for h in self.homes):
            # Only written when something is away: records of objects at home keep their shape.
            v["homes"] = list(self.homes)
        return v

    @classmethod
    def from_value(cls, v: dict[str, Any]) -> Layout:
        return cls(oid=v["oid"], size=v["size"], k=v["k"], m=v["m"], stripe_bytes=v["stripe"],
                   nodes=tuple(v["nodes"]), homes=tuple(v.get("homes") or ()))


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketRecord:
    """A bucket and its owner (the user's name).

    ``deleting``: a DeleteBucket in progress marked it (a token of its own) and waits out the
    gateways' bucket caches before removing it (``gateway/bucketcache.py``); the bucket still
    exists meanwhile, and no gateway keeps a marked record."""

    name: str
    owner: str
    created: float
    region: str = "us-east-1"
    deleting: str | None = None

    def to_value(self) -> dict[str, Any]:
        v = {"name": self.name, "owner": self.owner, "created": self.created, "region": self.region}
        if self.deleting is not None:
            v["deleting"] = self.deleting
        return v

    @classmethod
    def from_value(cls, v: dict[str, Any]) -> BucketRecord:
        return cls(name=v["name"], owner=v["owner"], created=v["created"], region=v.get("region", "us-east-1"),
                   deleting=v.get("deleting"))


@dataclass(frozen=True, slots=True, kw_only=True)
class PartInfo:
    """What an object remembers of each multipart part (for partNumber reads and ETags)."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectRecord:
    """One object. Small objects carry their bytes in ``inline``; others list their layouts."""

    key: str
    size: int
    etag: str  # quoted, as on the wire
    last_modified: float
    owner: str
    content_type: str = "binary/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)  # standard headers stored with the object
    meta: dict[str, str] = field(default_factory=dict)  # x-amz-meta-* (names without the prefix)
    checksums: dict[str, str] = field(default_factory=dict)  # "crc32" -> base64, ...
    inline: bytes | None = None
    layouts: tuple[Layout, ...] = ()
    parts: tuple[PartInfo, ...] = ()  # non-empty for completed multipart uploads
    # S3 object tags (x-amz-tagging, PutObjectTagging), key -> value in the order given.
    tags: dict[str, str] = field(default_factory=dict)
    # Changed by every write of the record (a new version, a tagging change, a repair's layout
    # rewrite): the field a read-modify-write of the record compares-and-swaps on, so that it
    # lands only on the record exactly as read. "" in records written before it existed.
    rev: str = ""
    # Changed by every write of what the record says of the object's data (a new version, a
    # repair's layout rewrite) but kept by a tagging change: what a tagging change compares on,
    # so that two of them never fail each other (the last one wins, as on S3) while a new
    # version or a rewrite since the read still fails it. "" in records written before it.
    data_rev: str = ""

    def oids(self) -> list[str]:
        return [lay.oid for lay in self.layouts]

    def to_value(self) -> dict[str, Any]:
        return {
            "key": self.key, "size": self.size, "etag": self.etag, "mtime": self.last_modified,
            "owner": self.owner, "ctype": self.content_type, "headers": self.headers,
            "meta": self.meta, "sums": self.checksums, "inline": self.inline,
            "layouts": [lay.to_value() for lay in self.layouts],
            "parts": [[p.number, p.size, p.etag] for p in self.parts],
            **({"tags": self.tags} if self.tags else {}),  # untagged records keep their shape
            **({"rev": self.rev} if self.rev else {}),
            **({"drev": self.data_rev} if self.data_rev else {}),
        }

    @classmethod
    def from_value(cls, v: dict[str, Any]) -> ObjectRecord:
        return cls(
            key=v["key"], size=v["size"], etag=v["etag"], last_modified=v["mtime"], owner=v["owner"],
            content_type=v.get("ctype", "binary/octet-stream"), headers=dict(v.get("headers") or {}),
            meta=dict(v.get("meta") or {}), checksums=dict(v.get("sums") or {}), inline=v.get("inline"),
            layouts=tuple(Layout.from_value(x) for x in v.get("layouts") or ()),
            parts=tuple(PartInfo(number=a, size=b, etag=c) for a, b, c in v.get("parts") or ()),
            tags=dict(v.get("tags") or {}), rev=v.get("rev") or "",
            data_rev=v.get("drev") or "",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadRecord:
    """A multipart upload in progress: what CompleteMultipartUpload will give the object."""

    key: str
    upload_id: str
    initiated: float
    owner: str
    content_type: str = "binary/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    checksum_algorithm: str | None = None
    # "open" takes parts; "completing" while CompleteMultipartUpload builds the object, so that
    # a racing UploadPart never retires a layout the object is about to use.
    state: str = "open"
    # The x-amz-tagging of CreateMultipartUpload: the completed object's tags.
    tags: dict[str, str] = field(default_factory=dict)

    def to_value(self) -> dict[str, Any]:
        return {"key": self.key, "upload_id": self.upload_id, "initiated": self.initiated,
                "owner": self.owner, "ctype": self.content_type, "headers": self.headers,
                "meta": self.meta, "algo": self.checksum_algorithm, "state": self.state,
                **({"tags": self.tags} if self.tags else {})}

    @classmethod
    def from_value(cls, v: dict[str, Any]) -> UploadRecord:
        return cls(key=v["key"], upload_id=v["upload_id"], initiated=v["initiated"], owner=v["owner"],
                   content_type=v.get("ctype", "binary/octet-stream"), headers=dict(v.get("headers") or {}),
                   meta=dict(v.get("meta") or {}), checksum_algorithm=v.get("algo"),
                   state=v.get("state", "open"), tags=dict(v.get("tags") or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class PartRecord:
    """One uploaded part; parts are always erasure-coded, however small the last one is."""

    number: int
    size: int
    etag: str  # quoted
    md5: bytes  # raw digest, for the multipart ETag
    last_modified: float
    layout: Layout
    checksums: dict[str, str] = field(default_factory=dict)

    def to_value(self) -> dict[str, Any]:
        return {"n": self.number, "size": self.size, "etag": self.etag, "md5": self.md5,
                "mtime": self.last_modified, "sums": self.checksums, "layout": self.layout.to_value()}

    @classmethod
    def from_value(cls, v: dict[str, Any]) -> PartRecord:
        return cls(number=v["n"], size=v["size"], etag=v["etag"], md5=v["md5"], last_modified=v["mtime"],
                   checksums=dict(v.get("sums") or {}), layout=Layout.from_value(v["layout"]))
