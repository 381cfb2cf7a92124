"""Range header parsing as S3 applies it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.objstore.s3.errors import InvalidRange
from headwater.objstore.s3.ranges import content_range, parse_range


@pytest.mark.parametrize("value,size,expected", [
    ("bytes=0-9", 100, (0, 9)), ("bytes=10-", 100, (10, 99)), ("bytes=-10", 100, (90, 99)),
    ("bytes=-1000", 100, (0, 99)), ("bytes=90-1000", 100, (90, 99)), ("bytes=0-0", 1, (0, 0)),
    ("BYTES = 5 - 6", 100, (5, 6)),
    (None, 100, None), ("bytes=0-1,3-4", 100, None), ("items=0-1", 100, None), ("bytes=5-2", 100, None),
    ("bytes=-", 100, None), ("bytes=abc", 100, None), ("bytes=1-2-3", 100, None), ("", 100, None),
])
def test_parse_range(value, size, expected):
    assert parse_range(value, size) == expected


@pytest.mark.parametrize("value,size", [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100),
                                        ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable(value, size):
    with pytest.raises(InvalidRange) as ei:
        parse_range(value, size)
    assert ei.value.extra["ActualObjectSize"] == size
    assert ("content-range", f"bytes */{size}") in ei.value.headers


@given(size=st.integers(1, 10**12), a=st.integers(0, 10**12), b=st.integers(0, 10**12))
def test_range_properties(size, a, b):
    try:
        r = parse_range(f"bytes={a}-{b}", size)
    except InvalidRange:
        assert a >= size and a <= b
        return
    if b < a:
        assert r is None
    else:
        assert r == (a, min(b, size - 1))
        assert content_range(*r, size) == f"bytes {a}-{min(b, size - 1)}/{size}"


@given(size=st.integers(1, 10**9), n=st.integers(1, 10**10))
def test_suffix(size, n):
    start, end = parse_range(f"bytes=-{n}", size)
    assert end == size - 1 and end - start + 1 == min(n, size)


@given(st.text(max_size=30))
def test_never_crashes(value):
    try:
        r = parse_range(value, 1000)
    except InvalidRange:
        return
    assert r is None or 0 <= r[0] <= r[1] < 1000
