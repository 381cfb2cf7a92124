"""Every layout the metadata ring names: the walk the reconstructor and the collector share.

A layout lives in an object record (``obj/<bucket>``, one per part of a multipart object) or in
the record of a part of a multipart upload still in progress (``part/<bucket>/<upload id>``).
:func:`walk_layouts` visits them all; :func:`layouts_in` and :func:`rewrite` are the pure halves:
where a record keeps its layouts, and the record with one layout replaced plus the condition
that makes that replacement a compare-and-swap (the layout field as it was read, or for an
object record that has one its ``rev``, which the rewrite changes).
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator

from .metadata.client import MetadataClient
from .records import BUCKETS_NS, Layout, new_rev, objects_ns, parts_ns, uploads_ns

__all__ = ["LayoutRef", "layouts_in", "rewrite", "walk_layouts", "oid_of"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutRef:
    """One layout as read from one record: enough to rewrite that record conditionally."""

    ns: str
    key: str
    slot: int | None  # index into an object record's ``layouts``; None for a part record
    layout: Layout
    value: dict[str, Any]  # the whole record as read

    @property
    def field(self) -> str:
        return "layout" if self.slot is None else "layouts"


def layouts_in(ns: str, key: str, value: dict[str, Any]) -> list[LayoutRef]:
    """The layouts of one record of namespace ``ns`` (none for buckets, uploads, inline objects)."""
    if ns.startswith("obj/"):
        return [LayoutRef(ns=ns, key=key, slot=i, layout=Layout.from_value(v), value=value)
                for i, v in enumerate(value.get("layouts") or ())]
    if ns.startswith("part/") and value.get("layout"):
        return [LayoutRef(ns=ns, key=key, slot=None, layout=Layout.from_value(value["layout"]), value=value)]
    return []


def rewrite(ref: LayoutRef, layout: Layout) -> tuple[dict[str, Any], tuple[str, Any]]:
    """The record of ``ref`` with its layout replaced by ``layout``, and the ``if_match``
    condition under which that write may land (the field unchanged since it was read).

    An object record gets a new ``rev``, and the condition is on the one read (on the layouts,
    for a record from before ``rev``): a tagging change made since the read (same layouts, new
    tags and rev; for a record from before rev, marked layouts) then fails the rewrite, which
    reads again, instead of being undone; and a tagging change read before the rewrite fails in
    turn instead of putting the old layout back (``gateway/tagging.py``)."""
    value = dict(ref.value)
    if ref.slot is None:
        value["layout"] = layout.to_value()
        return value, ("layout", ref.value["layout"])
    layouts = list(ref.value["layouts"])
    layouts[ref.slot] = layout.to_value()
    value["layouts"] = layouts
    # Always a fresh rev: every write of an object record changes it (a new version, a tagging
    # change, this rewrite), so "rev as read" fails exactly when anything was written since.
    value["rev"] = new_rev()
    # And a fresh data_rev: a tagging change read before this rewrite compares on it
    # (``ObjectRecord.data_rev``) and must read again, not put the old layout back.
    value["drev"] = new_rev()
    if ref.value.get("rev"):
        return value, ("rev", ref.value["rev"])
    # A record from before rev: its layouts, which every version has its own of and which a
    # tagging change of such a record marks (gateway/tagging.py ``retagged``). Not "still no
    # rev": a gateway from before rev, mid-upgrade, writes versions without one.
    return value, ("layouts", ref.value["layouts"])


def oid_of(fid: str) -> str:
    """The object id a fragment file belongs to (fids are ``f"{oid}.{index}"``)."""
    return fid.rsplit(".", 1)[0]


async def walk_layouts(meta: MetadataClient, *, page_size: int = 256) -> AsyncIterator[LayoutRef]:
    """Every layout of every object and of every multipart upload in progress, bucket by bucket.

    Metadata errors propagate: a caller that must see *everything* (the collector) treats an
    interrupted walk as no walk at all.
    """
    async with aclosing(meta.scan_iter(BUCKETS_NS, page_size=page_size)) as buckets:
        async for b in buckets:
            ns = objects_ns(b.key)
            async with aclosing(meta.scan_iter(ns, page_size=page_size)) as objs:
                async for e in objs:
                    for ref in layouts_in(ns, e.key, e.value):
                        yield ref
            async with aclosing(meta.scan_iter(uploads_ns(b.key), page_size=page_size)) as ups:
                async for u in ups:
                    pns = parts_ns(b.key, u.value["upload_id"])
                    async with aclosing(meta.scan_iter(pns, page_size=page_size)) as parts:
                        async for p in parts:
                            for ref in layouts_in(pns, p.key, p.value):
                                yield ref
