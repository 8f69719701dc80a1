"""The one way the engine writes a file: complete under its final name, or not at all.

A file is written to a hidden temporary name in its own folder (the same file system, so the
final ``os.replace`` is atomic), flushed and fsynced, moved over the final name, and the folder
is fsynced so the rename itself survives a power cut. On any failure the temporary file is
removed and whatever was there before is untouched. An ``OSError`` becomes the caller's error
class (:class:`~engine.errors.ResultsError` unless it asks for another, e.g.
:class:`~engine.errors.CheckpointError`) naming the file and the cause in words.

Folders of several files (a training checkpoint) are staged whole under a hidden name and
swapped in by :func:`replace_folder`; :func:`recover_folder` finishes a swap a crash cut short.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Sequence, Union

from engine.errors import ResultsError, StreamSlideError

#: Writes a file's content into the open binary file it is given.
Fill = Callable[[IO[bytes]], None]
Content = Union[bytes, Fill]

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder of that name is in the way",
    errno.EEXIST: "a file of that name is in the way",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "its folder does not exist",
}
_ADVICE = {
    errno.ENOSPC: "free some disk space or choose another folder",
    errno.EDQUOT: "free some disk space or choose another folder",
    errno.EROFS: "choose a writable folder",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
}


#: How tifffile and numpy report a write the file system cut short (no errno): a full disk.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def describe(exc: OSError) -> str:
    """An OSError's cause in words, with what to do when that is clear."""
    code = errno.ENOSPC if exc.errno is None and _SHORT_WRITE.search(str(exc)) else exc.errno
    cause = _CAUSES.get(code) or exc.strerror or str(exc) or type(exc).__name__
    advice = _ADVICE.get(code)
    return f"{cause}; {advice}" if advice else cause


def write_error(path: str | os.PathLike, exc: OSError, error: type[Exception] = ResultsError) -> Exception:
    """The ``error`` to raise for a failed write of ``path``."""
    return error(f"could not write {path}: {describe(exc)}. Nothing half-written was left under that name.")


def _file_mode() -> int:
    """0o666 less the umask: the permissions ``open()`` would give (mkstemp gives 0600, but
    these are files users keep and share, not secrets)."""
    try:  # Linux states the umask; setting it to read it back would race with other threads
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make the renames inside ``folder`` durable."""
    if os.name != "posix":  # Windows cannot open a folder for fsync; NTFS journals renames itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some network file systems cannot sync a folder: nothing more to do
            raise
    finally:
        os.close(fd)


def _stage(path: Path, content: Content) -> Path:
    """Write ``content`` durably to a new temporary file beside ``path``; returns its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)  # reopened by name: writers such as tifffile want a file object with a real name
    try:
        os.chmod(tmp, _file_mode())
        with open(tmp, "wb") as f:
            if isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def replace_together(files: Sequence[tuple[str | os.PathLike, Content]], *,
                     error: type[Exception] = ResultsError,
                     before_replace: Callable[[], None] | None = None) -> list[Path]:
    """Write every file to a temporary name first, then move them into place in the given order.

    A failure while writing leaves every old file untouched; the order decides what a crash
    between two renames leaves (e.g. weights before the card that names their sha256).
    ``before_replace`` runs once everything is staged, just before the first rename (e.g. to
    remove the files of an earlier result that the new one does not replace).
    """
    paths = [Path(p) for p, _ in files]
    temps: list[Path] = []
    current = paths[0] if paths else Path()
    try:
        for path, (_, content) in zip(paths, files, strict=True):
            current = path
            temps.append(_stage(path, content))
        if before_replace is not None:
            before_replace()
        for path, tmp in zip(paths, list(temps), strict=True):
            current = path
            os.replace(tmp, path)
            temps.remove(tmp)
        for folder in dict.fromkeys(p.parent for p in paths):
            current = folder
            fsync_folder(folder)
    except StreamSlideError:  # already names its file (ResultsError is an OSError too)
        raise
    except OSError as exc:
        raise write_error(current, exc, error) from exc
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return paths


def write_with(path: str | os.PathLike, fill: Fill, *, error: type[Exception] = ResultsError) -> Path:
    """Write ``path`` by calling ``fill`` with the open (binary, seekable) temporary file."""
    return replace_together([(path, fill)], error=error)[0]


def write_bytes(path: str | os.PathLike, data: bytes, *, error: type[Exception] = ResultsError) -> Path:
    return replace_together([(path, data)], error=error)[0]


def write_text(path: str | os.PathLike, text: str, *, error: type[Exception] = ResultsError) -> Path:
    """Write ``text`` as UTF-8, line endings as given (no translation)."""
    return write_bytes(path, text.encode("utf-8"), error=error)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, error: type[Exception] = ResultsError,
               **dumps: Any) -> Path:
    """Write ``obj`` as JSON ending in a newline; ``dumps`` go to :func:`json.dumps`."""
    return write_text(path, json.dumps(obj, indent=indent, **dumps) + "\n", error=error)


def append_text(path: str | os.PathLike, text: str, *, error: type[Exception] = ResultsError) -> None:
    """Append ``text`` (UTF-8) to a log and fsync it. Appends cannot be atomic: readers of such
    a log skip a torn last line, and a log is rewritten whole (:func:`write_text`) when trimmed."""
    try:
        with open(path, "ab") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise write_error(path, exc, error) from exc


def make_folder(path: str | os.PathLike, *, error: type[Exception] = ResultsError) -> Path:
    """``mkdir -p``, its failure as ``error`` naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"could not create the folder {path}: {describe(exc)}.") from exc
    return path


def _side_names(folder: Path) -> tuple[Path, Path]:
    return folder.parent / f".{folder.name}.new", folder.parent / f".{folder.name}.old"


def recover_folder(folder: str | os.PathLike, is_complete: Callable[[Path], bool]) -> Path | None:
    """``folder`` when :func:`is_complete` says so, after putting back a complete copy that a
    crash between the two renames of :func:`replace_folder` left at ``.NAME.old``; else None."""
    folder = Path(folder)
    _, old = _side_names(folder)
    if not folder.exists() and is_complete(old):
        try:
            os.replace(old, folder)
        except FileNotFoundError:  # another process (a DDP rank) put it back first
            pass
    return folder if is_complete(folder) else None


def replace_folder(folder: str | os.PathLike, fill: Callable[[Path], None], *,
                   error: type[Exception] = ResultsError) -> Path:
    """Replace the folder ``folder`` as a whole by what ``fill`` writes into an empty staging folder.

    ``fill`` writes its files with this module's functions (so each is fsynced). The staging
    folder ``.NAME.new`` is then swapped in: the old folder is renamed to ``.NAME.old`` and
    removed only after the new one is in place, so at every instant one complete folder exists,
    at ``NAME`` or, after a crash between the renames, at ``.NAME.old`` (see :func:`recover_folder`).
    On failure the staging folder is removed and the old folder is left as it was.
    """
    folder = Path(folder)
    new, old = _side_names(folder)
    make_folder(folder.parent, error=error)
    shutil.rmtree(new, ignore_errors=True)  # left by a crash while staging
    try:
        try:
            new.mkdir()
            fill(new)
            fsync_folder(new)
            shutil.rmtree(old, ignore_errors=True)
            if folder.exists():
                os.replace(folder, old)
            os.replace(new, folder)
            fsync_folder(folder.parent)
        except StreamSlideError:
            raise
        except OSError as exc:
            raise write_error(folder, exc, error) from exc
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        if not folder.exists() and old.exists():  # failed between the renames: put the old one back
            try:
                os.replace(old, folder)
            except OSError:  # then recover_folder puts it back on the next read
                pass
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder
