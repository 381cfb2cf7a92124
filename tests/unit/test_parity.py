"""ISA-L parity is zfec's parity, byte for byte, so fragments written either way interchange."""

import os
import subprocess
import sys

import pytest
import zfec
from headwater.objstore import parity, stripe
from headwater.objstore.config import ErasureScheme
from hypothesis import given, settings
from hypothesis import strategies as st

needs_isal = pytest.mark.skipif(not parity.isal_available(),
                                reason="libisal.so.2 (Debian libisal2) is not installed")


@needs_isal
@settings(max_examples=300, deadline=None)
@given(k=st.integers(1, 16), m=st.integers(1, 8), size=st.integers(0, 3000), seed=st.binary(min_size=1, max_size=64))
def test_isal_parity_equals_zfec(k, m, size, seed):
    data = (seed * (size * k // len(seed) + 1))[:size * k]
    blocks = [memoryview(data)[i * size:(i + 1) * size] for i in range(k)]
    ours = parity.encoder(k, m).encode(blocks)
    theirs = zfec.Encoder(k, k + m).encode(blocks, tuple(range(k, k + m))) if size else [b""] * m
    assert [bytes(b) for b in ours] == [bytes(b) for b in theirs]


@needs_isal
def test_isal_parity_of_a_whole_stripe_decodes_with_zfec():
    scheme = ErasureScheme(k=4, m=2, stripe_bytes=1 << 20)
    data = os.urandom(scheme.stripe_bytes - 5)
    blocks = stripe.encode(scheme, data)
    assert isinstance(blocks[4], bytearray)  # computed by ISA-L, not zfec
    # Two data blocks lost: zfec rebuilds the stripe from ISA-L's parity.
    assert stripe.decode(scheme, {0: blocks[0], 3: blocks[3], 4: blocks[4], 5: blocks[5]}, len(data)) == data


@needs_isal
def test_isal_parity_refuses_uneven_blocks():
    with pytest.raises(ValueError):
        parity.encoder(2, 1).encode([b"abc", b"ab"])
    with pytest.raises(ValueError):
        parity.encoder(2, 1).encode([b"abc"])


def test_without_isal_zfec_encodes():
    code = ("import os, zfec; from headwater.objstore import parity, stripe;"
            "from headwater.objstore.config import ErasureScheme as S;"
            "assert not parity.isal_available() and parity.encoder(4, 2) is None;"
            "d = os.urandom(4096); b = stripe.encode(S(k=4, m=2, stripe_bytes=4096), d);"
            "assert all(isinstance(x, bytes) for x in b[4:]);"
            "assert stripe.decode(S(k=4, m=2, stripe_bytes=4096), {2: b[2], 3: b[3], 4: b[4], 5: b[5]}, 4096) == d")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HEADWATER_PARITY": "zfec"})
