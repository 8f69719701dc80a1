"""Slide-level labels: the ``slide,label[,split]`` CSV and the folder-per-class tree.

One module reads and writes the format (the training loop, the CLI, the viewer's labels table
and the demo cohort all go through it). Torch-free. Slide paths in a CSV are relative to the
CSV's folder; every error is a :class:`~engine.errors.LabelsError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from engine.errors import LabelsError
from engine.io import atomic

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                  ".dcm", ".png", ".jpg", ".jpeg")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "": None}


@dataclass(frozen=True)
class SlideRecord:
    """One labelled slide. ``where`` names its origin (``labels.csv:7`` or a folder) for errors."""

    path: Path
    label: int
    split: str | None
    where: str


@dataclass(frozen=True)
class LabelSet:
    classes: tuple[str, ...]
    records: tuple[SlideRecord, ...]

    def counts(self, records: Sequence[SlideRecord] | None = None) -> list[int]:
        """Slides per class (in ``classes`` order)."""
        out = [0] * len(self.classes)
        for r in self.records if records is None else records:
            out[r.label] += 1
        return out


def read_labels(path: str | Path, classes: Sequence[str] | None = None) -> LabelSet:
    """Labels from a CSV file or a folder of class folders. ``classes`` fixes the class order
    (default: sorted label names); a label outside it is an error."""
    path = Path(path)
    if path.is_dir():
        return read_class_folders(path, classes)
    if not path.exists():
        raise LabelsError(f"labels not found: {path}; give a CSV (slide,label[,split]) or a folder per class")
    return read_labels_csv(path, classes)


def read_labels_csv(path: str | Path, classes: Sequence[str] | None = None) -> LabelSet:
    """Parse ``slide,label[,split]`` with a header row; slide paths are relative to the CSV's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"could not read labels file {path}: {exc}") from exc
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise LabelsError(f"{path} is empty; expected a header 'slide,label[,split]' and one row per slide")
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] != ["slide", "label"] or len(header) > 3 or (len(header) == 3 and header[2] != "split"):
        raise LabelsError(f"{path}:1: header is {','.join(rows[0])!r}; expected 'slide,label' or 'slide,label,split'")
    entries = []
    for line_no, row in enumerate(rows[1:], start=2):
        where = f"{path}:{line_no}"
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise LabelsError(f"{where}: {len(row)} fields, the header has {len(header)}")
        slide, label = row[0].strip(), row[1].strip()
        if not slide or not label:
            raise LabelsError(f"{where}: empty slide path or label")
        split_text = row[2].strip().lower() if len(row) == 3 else ""
        if split_text not in _SPLIT_NAMES:
            raise LabelsError(f"{where}: split {row[2]!r} is not one of train, val, test (or empty)")
        slide_path = (path.parent / slide).resolve()
        if not slide_path.exists():
            raise LabelsError(f"{where}: slide {slide!r} not found (looked for {slide_path}); "
                              "paths are relative to the CSV's folder")
        entries.append((slide_path, label, _SPLIT_NAMES[split_text], where))
    if not entries:
        raise LabelsError(f"{path} lists no slides")
    return _label_set(entries, classes, str(path))


def read_class_folders(root: str | Path, classes: Sequence[str] | None = None) -> LabelSet:
    """``root/<class>/<slide>``: every slide file in a class folder gets that class; no splits."""
    root = Path(root)
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in SLIDE_SUFFIXES and f.is_file():
                entries.append((f.resolve(), folder.name, None, str(folder)))
    if not entries:
        raise LabelsError(f"{root}: no slides found; expected one folder per class holding slide files "
                          f"({', '.join(SLIDE_SUFFIXES[:4])}, ...)")
    return _label_set(entries, classes, str(root))


def _label_set(entries, classes: Sequence[str] | None, source: str) -> LabelSet:
    names = tuple(classes) if classes else tuple(sorted({label for _, label, _, _ in entries}))
    index = {c: i for i, c in enumerate(names)}
    records = []
    for slide_path, label, split, where in entries:
        if label not in index:
            raise LabelsError(f"{where}: label {label!r} is not one of the classes {', '.join(names)}")
        records.append(SlideRecord(slide_path, index[label], split, where))
    if len(names) < 2:
        raise LabelsError(f"{source}: only one class ({names[0]!r}); training a classifier needs at least two")
    return LabelSet(names, tuple(records))



def write_labels_csv(path: str | os.PathLike, rows: Iterable[Sequence[str | os.PathLike | None]]) -> Path:
    """Write ``(slide, label)`` or ``(slide, label, split)`` rows atomically, with the header
    ``slide,label`` (``slide,label,split`` when any row has a split column). Absolute slide
    paths are written relative to the CSV's folder, as :func:`read_labels` reads them."""
    path = Path(path)
    rows = [tuple(row) for row in rows]
    with_split = any(len(row) == 3 for row in rows)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(("slide", "label", "split") if with_split else ("slide", "label"))
    for slide, label, *split in rows:
        slide = os.fspath(slide)
        if os.path.isabs(slide):
            slide = os.path.relpath(slide, path.parent)
        writer.writerow((slide, label, (split[0] if split else None) or "") if with_split else (slide, label))
    atomic.make_folder(path.parent)
    atomic.write_text(path, text.getvalue())
    return path
