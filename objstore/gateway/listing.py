"""S3 listing with delimiters over a sorted key stream: contents, common prefixes, where to resume.

The metadata ring returns names in order, a batch at a time. :func:`list_page` folds that stream
into one S3 listing page (:class:`ListPage`): keys under a delimiter roll up into a common prefix,
which counts once toward max-keys, and the next scan starts after the whole rolled-up prefix
rather than walking its keys.

The stream may be keys, or names the metadata nodes already rolled up (``MetadataClient.list``:
each common prefix once, as its own name); the fold is the same for both, and a common prefix
followed by more names in the same batch goes on with that batch, so a page of rolled-up names
is one scan however many prefixes it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

__all__ = ["ListPage", "list_page", "after_prefix"]

# Larger than any code point: a key that starts with P sorts before P + MAX_CHAR.
MAX_CHAR = "\U0010ffff"


def after_prefix(prefix: str) -> str:
    """A start-after marker that skips every key beginning with ``prefix``."""
    return prefix + MAX_CHAR


@dataclass(slots=True)
class ListPage:
    """One page of a listing: entries (key, value) and common prefixes, in key order."""

    contents: list[tuple[str, Any]] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    last: str = ""  # the last key or common prefix returned: the next page starts after it

    @property
    def count(self) -> int:
        return len(self.contents) + len(self.prefixes)


Scan = Callable[[str, str, int], Awaitable[Sequence[tuple[str, Any]]]]


async def list_page(scan: Scan, *, prefix: str, delimiter: str, start_after: str, max_keys: int,
                    page_size: int = 1000) -> ListPage:
    """Build one listing page. ``scan(prefix, start_after, limit)`` returns sorted (name, value)s,
    fewer than ``limit`` only at the end; a name under a common prefix already listed is skipped."""
    page = ListPage()
    if max_keys <= 0:
        return page
    cursor = start_after
    # A start-after marker inside a rolled-up prefix must not reopen that prefix.
    if delimiter and cursor.startswith(prefix):
        cut = cursor.find(delimiter, len(prefix))
        if cut >= 0:
            cursor = max(cursor, after_prefix(cursor[: cut + len(delimiter)]))
    while True:
        batch = await scan(prefix, cursor, page_size)
        if not batch:
            return page
        for key, value in batch:
            if key <= cursor:
                continue
            if page.count >= max_keys:
                page.truncated = True
                return page
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    page.prefixes.append(common)
                    page.last = common
                    cursor = after_prefix(common)  # the batch's other keys under it are <= cursor
                    continue
            page.contents.append((key, value))
            page.last = key
            cursor = key
        if len(batch) < page_size:
            return page
