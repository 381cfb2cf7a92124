"""Range answers from a stored response (200 / 206 / multipart / 416, If-Range) and slice maths."""

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.edge.cache.ranges import MAX_PARTS, plan_range
from headwater.edge.cache.slices import (
    MIN_SLICE,
    SliceError,
    check_slice_size,
    parse_content_range,
    pieces,
    read_slice_response,
    same_representation,
    slice_bounds,
    slice_count,
    slice_key,
    slice_request_headers,
    slices_touched,
    whole_headers,
)
from headwater.edge.cache.model import StoredResponse
from headwater.http.types import Headers

T = 1_800_000_000.0
BODY = bytes(range(256)) * 4          # 1024 bytes
STORED = StoredResponse(200, (("content-type", "video/mp4"), ("etag", '"v1"'),
                              ("last-modified", formatdate(T - 100, usegmt=True)),
                              ("date", formatdate(T, usegmt=True))), T, T, len(BODY))


def body_of(plan, body=BODY):
    """The bytes a daemon would send for ``plan``."""
    out = b""
    for p in plan.parts:
        out += p if isinstance(p, bytes) else body[p[0]:p[0] + p[1]]
    assert len(out) == plan.length
    return out


def plan(headers, method="GET", stored=STORED):
    return plan_range(method, Headers(headers), stored, boundary="B0undary")


def test_no_range_is_the_whole_body():
    p = plan([])
    assert p.status == 200 and body_of(p) == BODY and ("content-length", "1024") in p.headers


def test_a_single_range():
    p = plan([("Range", "bytes=10-19")])
    assert p.status == 206 and body_of(p) == BODY[10:20]
    assert dict(p.headers) == {"content-range": "bytes 10-19/1024", "content-length": "10"}
    assert body_of(plan([("Range", "bytes=-4")])) == BODY[-4:]
    assert body_of(plan([("Range", "bytes=1000-5000")])) == BODY[1000:]


def test_unsatisfiable_is_416_with_the_size():
    p = plan([("Range", "bytes=1024-")])
    assert p.status == 416 and ("content-range", "bytes */1024") in p.headers and p.length == 0


@pytest.mark.parametrize("value", ["bytes=5-2", "items=0-1", "bytes=x", "bytes=" + ",".join(["0-0"] * 101)])
def test_invalid_range_headers_are_ignored(value):
    assert plan([("Range", value)]).status == 200


def test_range_only_for_get_of_a_stored_200():
    assert plan([("Range", "bytes=0-1")], method="HEAD").status == 200
    s404 = StoredResponse(404, (), T, T, 10)
    whole = plan([("Range", "bytes=0-1")], stored=s404)  # Range ignored: the 404 as it was stored
    assert whole.status == 404 and whole.parts == ((0, 10),)


def test_overlapping_ranges_coalesce_into_one_206():
    p = plan([("Range", "bytes=0-9, 5-19, 20-29")])
    assert p.status == 206 and body_of(p) == BODY[0:30]


def test_multiple_ranges_are_multipart_byteranges():
    p = plan([("Range", "bytes=0-9, 500-509")])
    assert p.status == 206
    ctype = dict(p.headers)["content-type"]
    assert ctype == "multipart/byteranges; boundary=B0undary"
    raw = body_of(p)
    assert int(dict(p.headers)["content-length"]) == len(raw)
    # parse it back as a client would
    parts = raw.split(b"--B0undary")
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    got = []
    for part in parts[1:-1]:
        head, _, data = part.partition(b"\r\n\r\n")
        assert b"content-type: video/mp4" in head
        got.append((head.split(b"content-range: ")[1].decode(), data.removesuffix(b"\r\n")))
    assert got == [("bytes 0-9/1024", BODY[0:10]), ("bytes 500-509/1024", BODY[500:510])]


def test_too_many_ranges_get_the_whole_body():
    big = StoredResponse(200, (), T, T, 100_000)
    many = ",".join(f"{i * 100}-{i * 100}" for i in range(MAX_PARTS + 1))
    assert plan([("Range", "bytes=" + many)], stored=big).status == 200
    few = ",".join(f"{i * 100}-{i * 100}" for i in range(MAX_PARTS))
    p = plan([("Range", "bytes=" + few)], stored=big)
    assert p.status == 206 and len([x for x in p.parts if isinstance(x, tuple)]) == MAX_PARTS


def test_if_range_with_a_strong_etag_or_a_strong_date():
    lm = formatdate(T - 100, usegmt=True)
    assert plan([("Range", "bytes=0-1"), ("If-Range", '"v1"')]).status == 206
    assert plan([("Range", "bytes=0-1"), ("If-Range", '"v2"')]).status == 200
    assert plan([("Range", "bytes=0-1"), ("If-Range", 'W/"v1"')]).status == 200
    assert plan([("Range", "bytes=0-1"), ("If-Range", lm)]).status == 206
    assert plan([("Range", "bytes=0-1"), ("If-Range", formatdate(T - 99, usegmt=True))]).status == 200
    weak_lm = StoredResponse(200, (("last-modified", lm), ("date", lm)), T, T, 10)   # Date == LM: weak
    assert plan([("Range", "bytes=0-1"), ("If-Range", lm)], stored=weak_lm).status == 200
    weak_etag = StoredResponse(200, (("etag", 'W/"v1"'),), T, T, 10)
    assert plan([("Range", "bytes=0-1"), ("If-Range", 'W/"v1"')], stored=weak_etag).status == 200


def test_boundary_is_checked():
    with pytest.raises(ValueError):
        plan_range("GET", Headers([]), STORED, boundary="bad\r\nboundary")


@given(st.lists(st.tuples(st.integers(0, 1100), st.integers(0, 1100)), min_size=1, max_size=5))
def test_every_plan_sends_exactly_the_requested_bytes(pairs):
    pairs = [(min(a, b), max(a, b)) for a, b in pairs]
    p = plan([("Range", "bytes=" + ",".join(f"{a}-{b}" for a, b in pairs))])
    raw = body_of(p)
    wanted = sorted({x for a, b in pairs for x in range(a, min(b, 1023) + 1)})
    if not wanted:
        assert p.status == 416
    elif p.status == 206 and not dict(p.headers).get("content-type", "").startswith("multipart/"):
        assert raw == bytes(BODY[x] for x in range(wanted[0], wanted[-1] + 1))
        assert set(wanted) <= set(range(wanted[0], wanted[-1] + 1))
    else:
        assert p.status == 206
        assert raw.count(b"content-range: bytes ") >= 2


# --- slices ---------------------------------------------------------------------------------------

S = 1 << 20


def test_slice_sizes():
    assert check_slice_size(S) == S
    for bad in (MIN_SLICE - 1, 3 * S, 0, 1 << 30):
        with pytest.raises(ValueError):
            check_slice_size(bad)


def test_slice_geometry():
    total = 4 * S + 10
    assert slice_count(total, S) == 5 and slice_count(0, S) == 0 and slice_count(S, S) == 1
    assert list(slices_touched(S - 1, S, S)) == [0, 1]
    assert list(slices_touched(3 * S, 3 * S, S)) == [3]
    assert slice_bounds(4, S) == (4 * S, 5 * S - 1)
    assert slice_bounds(4, S, total) == (4 * S, 4 * S + 9)
    with pytest.raises(ValueError):
        slice_bounds(5, S, total)
    assert slice_request_headers(2, S) == (("range", f"bytes={2 * S}-{3 * S - 1}"),)
    assert slice_request_headers(0, S, validator='"e"')[1] == ("if-range", '"e"')
    assert len(slice_request_headers(0, S, validator='W/"e"')) == 1
    assert slice_key(b"k", 3) != slice_key(b"k", 30) and slice_key(b"k", 3).startswith(b"k")


def test_a_seek_into_a_4_gib_file_touches_only_its_slices():
    total = 4 << 30
    ps = pieces(3 << 30, (3 << 30) + 3 * S // 2, S)
    assert [p.index for p in ps] == [3072, 3073]
    assert sum(p.length for p in ps) == 3 * S // 2 + 1
    assert slice_count(total, S) == 4096


@given(start=st.integers(0, 10**9), length=st.integers(1, 10**8),
       slice_size=st.sampled_from([MIN_SLICE, S, 8 * S]))
def test_pieces_tile_the_range_exactly(start, length, slice_size):
    end = start + length - 1
    ps = pieces(start, end, slice_size)
    assert [p.index for p in ps] == list(slices_touched(start, end, slice_size))
    pos = start
    for p in ps:
        assert p.index * slice_size + p.offset == pos           # contiguous, in order
        assert 0 <= p.offset < slice_size and 0 < p.length <= slice_size - p.offset
        pos += p.length
    assert pos == end + 1


@given(total=st.integers(1, 10**10), slice_size=st.sampled_from([MIN_SLICE, S, 8 * S]))
def test_slices_partition_the_object(total, slice_size):
    n = slice_count(total, slice_size)
    first = slice_bounds(0, slice_size, total)
    last = slice_bounds(n - 1, slice_size, total)
    assert first[0] == 0 and last[1] == total - 1
    assert (n - 1) * slice_size + (last[1] - last[0] + 1) == total
    with pytest.raises(ValueError):
        slice_bounds(n, slice_size, total)


@pytest.mark.parametrize("value,parsed", [
    ("bytes 0-9/100", (0, 9, 100)), ("bytes */100", (None, None, 100)), ("bytes 0-9/*", (0, 9, None)),
    ("bytes 9-0/100", None), ("bytes 0-100/100", None), ("bytes */*", None), ("items 0-1/2", None),
    (None, None),
])
def test_parse_content_range(value, parsed):
    assert parse_content_range(value) == parsed


def test_reading_slice_responses():
    total = 2 * S + 5
    r = read_slice_response(206, [("Content-Range", f"bytes {S}-{2 * S - 1}/{total}"),
                                  ("Content-Length", str(S))], 1, S)
    assert (r.total, r.first, r.last, r.whole, r.length) == (total, S, 2 * S - 1, False, S)
    r = read_slice_response(206, [("Content-Range", f"bytes {2 * S}-{2 * S + 4}/{total}")], 2, S)
    assert r.length == 5
    # an origin that ignores Range: the whole object
    r = read_slice_response(200, [("Content-Length", str(total))], 1, S)
    assert r.whole and r.total == total and r.first == 0
    bad = [
        (206, [("Content-Range", f"bytes 0-{S - 1}/{total}")], 1),           # another slice
        (206, [("Content-Range", f"bytes {S}-{2 * S - 1}/*")], 1),           # no total
        (206, [], 1), (200, [], 0), (416, [("Content-Range", f"bytes */{total}")], 5),
        (206, [("Content-Range", f"bytes {S}-{2 * S - 1}/{total}"), ("Content-Length", "5")], 1),
        (500, [], 0),
    ]
    for status, headers, index in bad:
        with pytest.raises(SliceError):
            read_slice_response(status, headers, index, S)


def test_slices_combine_only_within_one_representation():
    assert same_representation([("ETag", '"a"')], [("etag", '"a"')])
    assert not same_representation([("ETag", '"a"')], [("ETag", '"b"')])
    assert not same_representation([("ETag", 'W/"a"')], [("ETag", 'W/"a"')])
    assert not same_representation([("ETag", '"a"')], [])
    lm = [("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")]
    assert same_representation(lm, lm) and not same_representation([], [])


def test_whole_headers_describe_the_full_representation():
    hs = [("Content-Range", "bytes 0-99/5000"), ("Content-Length", "100"), ("ETag", '"e"')]
    assert whole_headers(hs, 5000) == (("etag", '"e"'), ("content-length", "5000"))
