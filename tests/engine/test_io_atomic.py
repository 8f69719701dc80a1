"""The one atomic writer: complete files or none, durable, ordinary permissions, failures in words."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from engine.errors import CheckpointError, ResultsError
from engine.io import atomic


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_to(mask: int) -> None:
        os.umask(mask)

    yield set_to
    os.umask(previous)


def test_writes_replace_the_file_whole_and_leave_nothing_beside_it(tmp_path):
    path = tmp_path / "a.json"
    atomic.write_json(path, {"x": 1})
    atomic.write_text(path, "second\n")
    assert path.read_text() == "second\n" and _names(tmp_path) == ["a.json"]
    atomic.write_with(path, lambda f: f.write(b"third"))
    assert path.read_bytes() == b"third"


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_permissions_open_would_give(tmp_path, umask, mask, mode):
    umask(mask)
    path = atomic.write_bytes(tmp_path / "m.bin", b"x")
    assert stat.S_IMODE(path.stat().st_mode) == mode  # mkstemp alone would give 0600


def test_file_and_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", None))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic.write_bytes(tmp_path / "d.bin", b"data")
    assert calls == [("fsync", False), ("replace", None), ("fsync", True)]


def test_a_failing_writer_keeps_the_old_file_and_its_own_error(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def fill(f):
        f.write(b"half")
        raise ValueError("renderer broke")

    with pytest.raises(ValueError, match="renderer broke"):
        atomic.write_with(path, fill)
    assert path.read_text() == "old" and _names(tmp_path) == ["keep.txt"]


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "the disk is full; free some disk space"),
    (errno.EROFS, "the file system is read-only; choose a writable folder"),
    (errno.EACCES, "permission denied"),
])
def test_os_errors_become_results_errors_naming_the_file_and_the_cause(tmp_path, code, words):
    path = tmp_path / "r.npz"
    path.write_bytes(b"old")

    def fill(f):
        raise OSError(code, os.strerror(code))

    with pytest.raises(ResultsError, match=words) as err:
        atomic.write_with(path, fill)
    assert str(path) in str(err.value) and "Nothing half-written was left" in str(err.value)
    assert isinstance(err.value, OSError)  # callers that caught the bare OSError still catch it
    assert path.read_bytes() == b"old" and _names(tmp_path) == ["r.npz"]


def test_a_file_where_a_folder_should_be_is_named_as_such(tmp_path):
    (tmp_path / "plain").write_text("")
    with pytest.raises(ResultsError, match="a part of the path is a file, not a folder"):
        atomic.write_text(tmp_path / "plain" / "x.txt", "x")
    with pytest.raises(CheckpointError, match="could not create the folder"):
        atomic.make_folder(tmp_path / "plain" / "sub", error=CheckpointError)


def test_files_written_together_are_staged_first_and_replaced_in_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    b.write_text("old b")

    def second_fails(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match=f"could not write {b}"):
        atomic.replace_together([(a, b"new a"), (b, second_fails)], error=CheckpointError)
    assert (a.read_text(), b.read_text()) == ("old a", "old b") and _names(tmp_path) == ["a", "b"]

    order = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (order.append(os.path.basename(dst)), real_replace(src, dst)))
    atomic.replace_together([(b, b"new b"), (a, b"new a")])
    assert order == ["b", "a"] and (a.read_text(), b.read_text()) == ("new a", "new b")


def test_appends_add_to_a_log(tmp_path):
    log = tmp_path / "m.jsonl"
    atomic.append_text(log, "1\n")
    atomic.append_text(log, "2\n")
    assert log.read_text() == "1\n2\n"
    with pytest.raises(ResultsError, match="its folder does not exist"):
        atomic.append_text(tmp_path / "gone" / "m.jsonl", "x")


def _complete(folder):
    return (folder / "done").exists()


def _fill(text):
    def fill(folder):
        atomic.write_text(folder / "data", text)
        atomic.write_text(folder / "done", "")
    return fill


def test_a_folder_is_replaced_whole_or_left_as_it_was(tmp_path):
    target = tmp_path / "last"
    atomic.replace_folder(target, _fill("one"))
    atomic.replace_folder(target, _fill("two"))
    assert (target / "data").read_text() == "two" and _names(tmp_path) == ["last"]

    def broken(folder):
        atomic.write_text(folder / "data", "three")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ResultsError, match="the disk is full"):
        atomic.replace_folder(target, broken)
    assert (target / "data").read_text() == "two" and _names(tmp_path) == ["last"]


def test_a_swap_cut_short_between_the_renames_is_put_back(tmp_path, monkeypatch):
    target = tmp_path / "last"
    atomic.replace_folder(target, _fill("one"))
    real_replace, failed = os.replace, []

    def second_rename_fails(src, dst):  # the new folder's move into place, once
        if str(dst) == str(target) and str(src).endswith(".last.new") and not failed:
            failed.append(dst)
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(ResultsError, match=f"could not write {target}"):
        atomic.replace_folder(target, _fill("two"))
    monkeypatch.undo()
    assert failed and (target / "data").read_text() == "one" and _names(tmp_path) == ["last"]

    os.replace(target, tmp_path / ".last.old")  # as if the process died between the renames
    assert atomic.recover_folder(target, _complete) == target
    assert (target / "data").read_text() == "one"
    assert atomic.recover_folder(tmp_path / "never", _complete) is None
