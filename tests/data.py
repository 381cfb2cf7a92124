"""Test data: deterministic pseudo-random bytes."""

from __future__ import annotations

import random


def data(n: int, seed: int | str = 0) -> bytes:
    """``n`` pseudo-random bytes, the same for the same ``seed``: incompressible, with no
    repeating stripes (a fragment of one object never equals another's by accident)."""
    return random.Random(f"{seed}").randbytes(n)
