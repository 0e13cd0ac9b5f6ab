"""Atomic writes: complete or absent, durable once renamed, with the modes the
umask asks for; a failed write names the file it was writing."""

import errno
import os
import stat

import pytest

from licbench.fileio import atomic_path, write_bytes_atomic


@pytest.fixture
def umask():
    """``umask(mask)`` for the rest of the test; the old one restored after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    with atomic_path(tmp_path / "sub" / "b.png") as tmp:
        tmp.write_bytes(b"y")
    reference = tmp_path / "open.bin"
    reference.write_bytes(b"z")  # what a plain open() creates under this umask
    for path in (tmp_path / "a.bin", tmp_path / "sub" / "b.png"):
        assert stat.S_IMODE(path.stat().st_mode) == mode == stat.S_IMODE(reference.stat().st_mode)


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_bytes_atomic(tmp_path / "out.json", b"{}")
    assert events == [("fsync", "file"), ("replace", "out.json"), ("fsync", "dir")]


def test_a_failed_write_leaves_nothing_and_names_the_destination(tmp_path):
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(OSError) as caught:
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
                # What a write on a full disk raises: no file name in it.
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(dest)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_failed_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    """Delayed allocation reports a full disk at fsync: nothing is renamed."""
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left") as caught:
        write_bytes_atomic(dest, b"new")
    assert caught.value.filename == str(dest)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
