"""A gate in front of the transcoder's ffmpeg, for tests that must see a title *while* it is
transcoding.

A 10-second test clip at 320x180 is encoded in well under a second, and the transcoder moves
the title ``uploaded -> transcoding -> published`` in ~1-1.5 s (measured here): a poller that
checks every half-second, or one whose request is slowed by a loaded machine, can see
``uploaded`` and then ``published``, although the catalogue said ``transcoding`` all along
(``test_web_page.py`` failed so, once in five CI runs). So the test holds the job in
``transcoding`` until the poller has seen it, rather than hoping it lasts long enough.

:class:`FfmpegHold` writes a small shell script the transcoder is configured to run as its
``ffmpeg`` (``[transcoder] ffmpeg``): while the hold file exists the script waits, then it
becomes the real ffmpeg with its arguments (``exec``: the same pid, so the worker's kill and
its ``-progress`` pipe are the real ffmpeg's). The worker reaches ffmpeg only after it has moved
the title to ``transcoding`` and reported the download (2 %), and it keeps heartbeating while
ffmpeg runs, so a held title is ``transcoding`` at 2 % until :meth:`release`. The script waits
at most ``max_wait_s`` (a test that forgets to release fails on its own deadline, the job
does not hang), and with no hold file ffmpeg runs at once (other tests of the module are not
held).

:meth:`failing` makes the same script stand in for an ffmpeg that fails: while the fail file
exists it writes an error to stderr and exits 1 at once, as ffmpeg does on a broken encoder, so
a test sees the transcoder's retry and failure path with the real daemons.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from headwater.origin.transcode.config import default_binary

__all__ = ["FfmpegHold"]

_SCRIPT = """#!/bin/sh
# tests/functional/ffmpeg_hold.py: fail while {fail} exists; wait while {hold} exists (at most
# {max_wait_s} s), then become the real ffmpeg.
if [ -e '{fail}' ]; then echo 'ffmpeg_hold: {failure}' >&2; exit 1; fi
i=0
while [ -e '{hold}' ] && [ "$i" -lt {polls} ]; do sleep 0.05; i=$((i + 1)); done
exec '{ffmpeg}' "$@"
"""


class FfmpegHold:
    """The gated ffmpeg in ``root``: :attr:`toml` goes into ``[transcoder]``, :meth:`held`
    holds every job's ffmpeg until it is released, :meth:`failing` makes every run fail."""

    #: What the failing ffmpeg writes to stderr (the title's error quotes it).
    FAILURE = "Error while opening encoder (a failure the test asked for)"

    def __init__(self, root: Path, *, ffmpeg: str | None = None, max_wait_s: int = 60) -> None:
        self.ffmpeg = ffmpeg or default_binary("ffmpeg")
        self.hold_file = root / "ffmpeg.hold"
        self.fail_file = root / "ffmpeg.fail"
        self.script = root / "ffmpeg-held"
        for p in (self.hold_file, self.fail_file, Path(self.ffmpeg)):
            # single-quoted in the script
            assert "'" not in str(p), p
        self.script.write_text(_SCRIPT.format(hold=self.hold_file, fail=self.fail_file, failure=self.FAILURE,
                                              ffmpeg=self.ffmpeg, max_wait_s=max_wait_s, polls=max_wait_s * 20))
        self.script.chmod(0o755)

    @property
    def toml(self) -> str:
        """The ``[transcoder]`` key that makes the transcoder run the gated ffmpeg."""
        return f"ffmpeg = {json.dumps(str(self.script))}\n"

    def hold(self) -> None:
        """From now on, ffmpeg waits before it runs."""
        self.hold_file.touch()

    def release(self) -> None:
        """A waiting ffmpeg runs (within 50 ms), and later ones at once."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.hold_file)

    @property
    def holding(self) -> bool:
        """Whether ffmpeg would wait now."""
        return self.hold_file.exists()

    @contextlib.contextmanager
    def held(self) -> Iterator[FfmpegHold]:
        """Held within the block; released on the way out however it ends."""
        self.hold()
        try:
            yield self
        finally:
            self.release()

    @contextlib.contextmanager
    def failing(self) -> Iterator[FfmpegHold]:
        """Every ffmpeg run within the block exits 1 with :attr:`FAILURE` on stderr; ffmpeg
        works again on the way out however it ends."""
        self.fail_file.touch()
        try:
            yield self
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.fail_file)
