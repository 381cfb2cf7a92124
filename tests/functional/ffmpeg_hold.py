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
# tests/functional/ffmpeg_hold.py: wait while {hold} exists (at most {max_wait_s} s), then
# become the real ffmpeg.
i=0
while [ -e '{hold}' ] && [ "$i" -lt {polls} ]; do sleep 0.05; i=$((i + 1)); done
exec '{ffmpeg}' "$@"
"""


class FfmpegHold:
    """The gated ffmpeg in ``root``: :attr:`toml` goes into ``[transcoder]``, :meth:`held`
    holds every job's ffmpeg until it is released."""

    def __init__(self, root: Path, *, ffmpeg: str | None = None, max_wait_s: int = 60) -> None:
        self.ffmpeg = ffmpeg or default_binary("ffmpeg")
        self.hold_file = root / "ffmpeg.hold"
        self.script = root / "ffmpeg-held"
        for p in (self.hold_file, Path(self.ffmpeg)):
            # single-quoted in the script
            assert "'" not in str(p), p
        self.script.write_text(_SCRIPT.format(hold=self.hold_file, ffmpeg=self.ffmpeg, max_wait_s=max_wait_s,
                                              polls=max_wait_s * 20))
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
