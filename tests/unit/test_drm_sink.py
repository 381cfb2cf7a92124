"""The local-folder sink: nothing visible before commit, nothing left after abort."""

import pytest

from headwater.drm.package.sink import LocalFolderSink, check_name


def test_commit_publishes_and_abort_leaves_nothing(tmp_path):
    sink = LocalFolderSink(tmp_path / "title", fsync=True)
    sink.put("video-1/init.mp4", b"init")
    sink.put("video-1/seg-1.m4s", b"old")
    sink.put("video-1/seg-1.m4s", b"new")
    assert not (tmp_path / "title" / "video-1").exists()        # staged, not published
    sink.commit()
    assert (tmp_path / "title" / "video-1" / "seg-1.m4s").read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / "title").iterdir()) == ["video-1"]

    again = LocalFolderSink(tmp_path / "title", fsync=False)
    again.put("audio-2/init.mp4", b"x")
    again.abort()
    assert sorted(p.name for p in (tmp_path / "title").iterdir()) == ["video-1"]


def test_a_run_that_puts_nothing_creates_nothing(tmp_path):
    sink = LocalFolderSink(tmp_path / "title")
    sink.abort()
    sink.commit()
    assert not (tmp_path / "title").exists()


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b",
                                  "a\x00b"])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError):
        check_name(name)
    with pytest.raises(ValueError):
        LocalFolderSink(tmp_path).put(name, b"x")
    assert list(tmp_path.iterdir()) == []
