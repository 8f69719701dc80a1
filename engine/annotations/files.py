"""Load and save annotation files: QuPath GeoJSON (``.geojson``, ``.json``, gzipped ``.gz``) and
ASAP XML (``.xml``), with a size cap, and writes that never leave half a file under its name.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from engine.annotations.asap import asap_xml_bytes, read_asap_xml
from engine.annotations.errors import AnnotationError
from engine.annotations.geojson import geojson_bytes, read_geojson
from engine.annotations.model import AnnotationSet
from engine.io.atomic import write_bytes

GEOJSON, ASAP = "geojson", "asap"
FORMATS = (GEOJSON, ASAP)
# A whole-slide annotation file is a few MB (CAMELYON's largest are ~10 MB); this is a typo'd
# path to a slide or a dump of millions of detections, which would take minutes and gigabytes.
MAX_FILE_BYTES = 256 * 2**20
_SUFFIXES = {".geojson": GEOJSON, ".json": GEOJSON, ".xml": ASAP}


@dataclass(frozen=True)
class LoadResult:
    """What a file held, and every repair or reinterpretation made while reading it."""

    annotations: AnnotationSet
    warnings: tuple[str, ...]
    path: Path
    format: str


def format_of(path: str | os.PathLike, head: bytes = b"") -> str:
    """The format a path's extension names (``.gz`` looked through), else what ``head`` starts with."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes and suffixes[-1] in _SUFFIXES:
        return _SUFFIXES[suffixes[-1]]
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if start in (b"{", b"["):
        return GEOJSON
    if start == b"<":
        return ASAP
    raise AnnotationError(f"{p}: unknown annotation format (use .geojson, .json or .xml, or name the format)")


def load_annotations(path: str | os.PathLike, *, format: str | None = None,
                     max_bytes: int = MAX_FILE_BYTES) -> LoadResult:
    """Read an annotation file. Raises :class:`AnnotationError` naming the file and element."""
    p = Path(path)
    data = _read_capped(p, max_bytes)
    fmt = format or format_of(p, data[:64])
    if fmt not in FORMATS:
        raise AnnotationError(f"{p}: unknown annotation format {fmt!r} (one of {', '.join(FORMATS)})")
    annotations, warnings = (read_geojson if fmt == GEOJSON else read_asap_xml)(data, str(p))
    return LoadResult(annotations, tuple(warnings), p, fmt)


def save_annotations(annotations: AnnotationSet, path: str | os.PathLike, *, format: str | None = None,
                     allow_loss: bool = False) -> tuple[str, ...]:
    """Write ``annotations``; returns what the format could not hold (see ``asap_xml_bytes``).

    Raises :class:`AnnotationError` when the format cannot hold a shape (and not ``allow_loss``),
    :class:`engine.errors.ResultsError` when the file cannot be written.

    ``.gz`` paths are gzipped. The file goes through :mod:`engine.io.atomic` (whole under a
    temporary name, fsynced, moved into place), so an error or a crash leaves any earlier file untouched.
    """
    p = Path(path)
    fmt = format or format_of(p)
    if fmt == GEOJSON:
        data, warnings = geojson_bytes(annotations), []
    elif fmt == ASAP:
        data, warnings = asap_xml_bytes(annotations, allow_loss=allow_loss)
    else:
        raise AnnotationError(f"{p}: unknown annotation format {fmt!r} (one of {', '.join(FORMATS)})")
    if p.suffix.lower() == ".gz":
        data = gzip.compress(data, mtime=0)
    write_bytes(p, data)
    return tuple(warnings)


def _read_capped(p: Path, max_bytes: int) -> bytes:
    limit = f"the {max_bytes / 2**20:.0f} MB limit for annotation files"
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise AnnotationError(f"{p}: {size / 2**20:.1f} MB is over {limit}; is it an annotation file?")
        if p.suffix.lower() != ".gz":
            return p.read_bytes()
        with gzip.open(p, "rb") as f:
            data = f.read(max_bytes + 1)  # the cap holds for what it unpacks to, too
    except OSError as exc:
        if isinstance(exc, gzip.BadGzipFile):
            raise AnnotationError(f"{p}: not a gzip file ({exc})") from None
        raise AnnotationError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except (EOFError, zlib.error) as exc:
        raise AnnotationError(f"{p}: truncated or corrupt gzip data ({exc})") from None
    if len(data) > max_bytes:
        raise AnnotationError(f"{p}: unpacks to over {limit}")
    return data

