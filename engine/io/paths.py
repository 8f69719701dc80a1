"""Output file names that never come from data unchecked, and paths that never leave their folder.

Class names come from model cards and labels files, slide names from the file system: either
may hold ``/``, ``..``, control characters or a thousand characters. A name that is not plainly
safe is replaced by an index (the real name is recorded inside the files), and every output
path is checked to lie inside its output folder before anything is written there.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from engine.errors import ResultsError

#: ASCII letters, digits, ``_ - .``, starting with a letter or digit: safe on every file system.
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME = 64
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def is_safe_name(name: str) -> bool:
    """Whether ``name`` can be a file-name part as it is (no separator, no ``..``, ASCII, short)."""
    return (isinstance(name, str) and len(name) <= MAX_NAME and _SAFE.fullmatch(name) is not None
            and ".." not in name and not name.endswith(".") and name.split(".")[0].lower() not in _WINDOWS_RESERVED)


def file_parts(names: list[str] | tuple[str, ...]) -> list[str]:
    """One file-name part per name: the name itself when every name is safe and no two differ
    only in case (case-insensitive file systems), else the zero-padded index for all of them."""
    names = list(names)
    folded = [n.lower() for n in names if isinstance(n, str)]
    if all(is_safe_name(n) for n in names) and len(set(folded)) == len(names):
        return names
    width = max(2, len(str(max(len(names) - 1, 0))))
    return [f"{i:0{width}d}" for i in range(len(names))]


def safe_child(folder: str | os.PathLike, name: str) -> Path:
    """``folder / name``, refused (:class:`~engine.errors.ResultsError`) unless it lies directly
    inside ``folder``: the last line of defence against a name that is a path."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ResultsError(f"refused to write {name!r} in {folder}: an output name must be a plain file name")
    child = folder / name
    if os.path.dirname(os.path.abspath(child)) != os.path.abspath(folder):
        raise ResultsError(f"refused to write {name!r}: it would land outside {folder}")
    return child


def short_hash(path: str | os.PathLike, n: int = 8) -> str:
    """``n`` hex digits naming the resolved ``path``: two slides of the same name in different folders differ."""
    return hashlib.sha256(str(Path(path).resolve()).encode("utf-8", "surrogatepass")).hexdigest()[:n]


def slide_folder_names(slides: list[str]) -> list[str]:
    """A unique output-folder name per slide: its file stem when safe and unique in the list
    (compared case-insensitively), else ``stem-HASH`` (or ``slide-HASH`` for an unsafe stem),
    HASH a short hash of the slide's resolved path. The same slide listed twice gets one name."""
    stems = [Path(s).stem for s in slides]
    resolved = [str(Path(s).resolve()) for s in slides]
    owners: dict[str, set[str]] = {}
    for stem, res in zip(stems, resolved, strict=True):
        owners.setdefault(stem.lower(), set()).add(res)
    names = []
    for slide, stem in zip(slides, stems, strict=True):
        if is_safe_name(stem) and len(owners[stem.lower()]) == 1:
            names.append(stem)
        else:
            base = stem if is_safe_name(stem) and len(stem) <= MAX_NAME - 9 else "slide"
            names.append(f"{base}-{short_hash(slide)}")
    return names
