"""headwater.malloc: freed bulk buffers are reused, not faulted in afresh (glibc only)."""

import os
import subprocess
import sys

import pytest

# Holds 8 MiB of 1 MiB buffers, frees them, 50 times over; prints the minor page faults taken.
CYCLES = """
import resource, sys
if sys.argv[1] == "keep":
    from headwater import malloc
    assert malloc.keep_freed_memory()
def cycle():
    blocks = [bytes(bytearray(1 << 20)) for _ in range(8)]
    del blocks
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], check=True, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))})
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="mallopt is glibc's")
def test_freed_buffers_are_reused_without_page_faults():
    # 50 x 8 MiB is 102,400 pages: glibc's defaults give the heap's top back and fault each in again.
    assert faults("plain") > 50_000
    assert faults("keep") < 2_000
