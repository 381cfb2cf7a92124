"""Stripe maths: any k of k+m blocks give the stripe back, byte for byte."""

import itertools
import os

import pytest
from headwater.objstore import stripe
from headwater.objstore.config import ErasureScheme
from headwater.objstore.stripe import NotEnoughBlocks, StripeError
from hypothesis import assume, given, settings
from hypothesis import strategies as st


@st.composite
def scheme_and_data(draw, max_stripe=4096):
    k = draw(st.integers(1, 12))
    m = draw(st.integers(0, 6))
    stripe_bytes = draw(st.integers(k, max_stripe))
    data = draw(st.binary(max_size=stripe_bytes))
    return ErasureScheme(k=k, m=m, stripe_bytes=stripe_bytes), data


@settings(max_examples=300, deadline=None)
@given(sd=scheme_and_data(), rnd=st.randoms(use_true_random=False))
def test_any_k_blocks_decode_exactly(sd, rnd):
    scheme, data = sd
    blocks = stripe.encode(scheme, data)
    assert len(blocks) == scheme.k + scheme.m
    assert {len(b) for b in blocks} == {-(-len(data) // scheme.k)}
    keep = rnd.sample(range(scheme.width), scheme.k)
    got = stripe.decode(scheme, {i: blocks[i] for i in keep}, len(data))
    assert got == data and isinstance(got, bytes)


@settings(max_examples=200, deadline=None)
@given(sd=scheme_and_data(), rnd=st.randoms(use_true_random=False))
def test_rebuild_regenerates_lost_blocks(sd, rnd):
    scheme, data = sd
    blocks = [bytes(b) for b in stripe.encode(scheme, data)]
    keep = rnd.sample(range(scheme.width), scheme.k)
    lost = [i for i in range(scheme.width) if i not in keep]
    rebuilt = stripe.rebuild(scheme, {i: blocks[i] for i in keep}, lost)
    assert rebuilt == {i: blocks[i] for i in lost}


def test_every_combination_small_scheme():
    scheme = ErasureScheme(k=4, m=2, stripe_bytes=1000)
    data = os.urandom(997)
    blocks = stripe.encode(scheme, data)
    for keep in itertools.combinations(range(6), 4):
        assert stripe.decode(scheme, {i: blocks[i] for i in keep}, len(data)) == data
    # More than k blocks is fine too.
    assert stripe.decode(scheme, dict(enumerate(blocks)), len(data)) == data


def test_data_blocks_are_the_data_itself():
    scheme = ErasureScheme(k=4, m=2, stripe_bytes=1 << 20)
    data = os.urandom(1 << 20)
    blocks = stripe.encode(scheme, data)
    assert b"".join(blocks[:4]) == data
    assert isinstance(blocks[0], memoryview) and blocks[0].obj is data  # zero copy
    # A mutable input is copied, so later writes to it cannot change the blocks.
    buf = bytearray(data)
    blocks2 = stripe.encode(scheme, buf)
    buf[0] ^= 0xFF
    assert bytes(blocks2[0][:1]) == data[:1]


def test_short_stripe_padding():
    scheme = ErasureScheme(k=4, m=2, stripe_bytes=64)
    blocks = stripe.encode(scheme, b"abcde")  # 5 bytes: blocks of 2, padded with 3 zeros
    assert [bytes(b) for b in blocks[:4]] == [b"ab", b"cd", b"e\0", b"\0\0"]
    assert stripe.decode(scheme, {i: blocks[i] for i in (2, 3, 4, 5)}, 5) == b"abcde"


def test_empty_stripe():
    scheme = ErasureScheme(k=3, m=2, stripe_bytes=64)
    blocks = stripe.encode(scheme, b"")
    assert [bytes(b) for b in blocks] == [b""] * 5
    assert stripe.decode(scheme, {0: b"", 3: b"", 4: b""}, 0) == b""


def test_errors():
    scheme = ErasureScheme(k=4, m=2, stripe_bytes=64)
    blocks = stripe.encode(scheme, bytes(range(64)))
    with pytest.raises(NotEnoughBlocks, match="need 4 blocks"):
        stripe.decode(scheme, {0: blocks[0], 1: blocks[1], 5: blocks[5]}, 64)
    with pytest.raises(StripeError):
        stripe.decode(scheme, {0: blocks[0], 1: blocks[1], 2: blocks[2], 3: blocks[3][:-1]}, 64)
    with pytest.raises(StripeError):
        stripe.decode(scheme, {0: blocks[0], 1: blocks[1], 2: blocks[2], 9: blocks[3]}, 64)
    with pytest.raises(StripeError):
        stripe.encode(scheme, bytes(65))
    with pytest.raises(StripeError):
        stripe.decode(scheme, dict(enumerate(blocks)), 65)
    with pytest.raises(NotEnoughBlocks):
        stripe.rebuild(scheme, {0: blocks[0]}, [1])
    with pytest.raises(StripeError):
        stripe.rebuild(scheme, dict(enumerate(blocks)), [6])


@given(k=st.integers(1, 16), stripe_bytes=st.integers(1, 10_000), size=st.integers(0, 200_000))
def test_layout_helpers(k, stripe_bytes, size):
    assume(stripe_bytes >= k)
    scheme = ErasureScheme(k=k, m=1, stripe_bytes=stripe_bytes)
    n = stripe.stripe_count(scheme, size)
    lengths = [stripe.stripe_length(scheme, size, i) for i in range(n)]
    assert sum(lengths) == size
    assert all(0 < x <= stripe_bytes for x in lengths)
    if n:
        assert lengths[-1] == stripe.last_stripe_bytes(scheme, size)
        assert stripe.stripe_offset(scheme, n - 1) + lengths[-1] == size
    else:
        assert stripe.last_stripe_bytes(scheme, size) == 0


@given(stripe_bytes=st.integers(1, 5000), start=st.integers(0, 100_000), length=st.integers(1, 100_000))
def test_stripe_span(stripe_bytes, start, length):
    scheme = ErasureScheme(k=1, m=0, stripe_bytes=stripe_bytes)
    first, last = stripe.stripe_span(scheme, start, start + length)
    touched = {b // stripe_bytes for b in (start, start + length - 1)}
    assert first == min(touched) and last == max(touched)
    assert stripe.stripe_offset(scheme, first) <= start
    assert stripe.stripe_offset(scheme, last + 1) >= start + length
    with pytest.raises(StripeError):
        stripe.stripe_span(scheme, start, start)


def test_default_scheme_round_trip_1mib():
    scheme = ErasureScheme()
    data = os.urandom(scheme.stripe_bytes)
    blocks = stripe.encode(scheme, data)
    assert len(blocks[0]) == scheme.fragment_bytes
    assert stripe.decode(scheme, {i: blocks[i] for i in (1, 2, 4, 5)}, len(data)) == data
