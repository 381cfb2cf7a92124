"""edge.entry: the metadata record beside each stored body, and its bounded decode memo."""

from __future__ import annotations

from headwater.edge import entry
from headwater.edge.cache.model import StoredResponse

STORED = StoredResponse(200, (("etag", '"x"'), ("cache-control", "max-age=60")), 10.0, 11.0, 5)


def test_round_trip_and_repeated_decodes_share_one_entry() -> None:
    meta = entry.encode_meta(STORED, b"dist\x00/a", 0)
    first = entry.decode_entry(meta)
    assert first == entry.Entry(STORED, b"dist\x00/a", 0)
    assert entry.decode_entry(bytes(meta)) is first  # an equal copy (a disk read) hits the memo
    assert entry.decode_entry(memoryview(meta)) == first  # unhashable: decoded, not memoised


def test_unreadable_metadata_is_a_miss_every_time() -> None:
    for junk in (b"", b"\x93\x01", entry.encode_meta(STORED, b"k")[:-3]):
        assert entry.decode_entry(junk) is None
        assert entry.decode_entry(junk) is None


def test_the_memo_stays_bounded() -> None:
    for i in range(entry._MEMO_MAX + 10):
        assert entry.decode_entry(entry.encode_meta(STORED, b"k%d" % i)).key == b"k%d" % i
    assert len(entry._decoded) <= entry._MEMO_MAX
