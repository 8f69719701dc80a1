"""Slide-level labels: the ``slide,<targets>[,split][,patient][,annotations]`` CSV and the folder-per-class tree.

One module reads and writes the format (the training loop, evaluation, the CLI, the viewer's
labels table and the demo cohort all go through it). Torch-free. Slide paths in a CSV are
relative to the CSV's folder; every error is a :class:`~engine.errors.LabelsError` naming the
file and line and saying what to do.

Three tasks read the target columns differently: ``classification`` one column of class names
(compared after trimming and case-folding), ``multilabel`` several 0/1 columns, ``regression``
one or more numeric columns. An ``annotations`` column (optional, never a target) names each
slide's annotation file (GeoJSON or ASAP XML, relative to the CSV; empty: none), whose classes
define the area training pools over (:mod:`engine.train.masks`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from engine.errors import LabelsError
from engine.io import atomic

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                  ".dcm", ".png", ".jpg", ".jpeg")
TASKS = ("classification", "multilabel", "regression")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "": None}
_BINARY = {"0": 0.0, "1": 1.0, "false": 0.0, "true": 1.0, "no": 0.0, "yes": 1.0, "neg": 0.0, "pos": 1.0}
_RESERVED = ("slide", "split", "patient", "annotations")
#: Distinct numeric values above which a "class" column is taken for a regression target.
_MAX_NUMERIC_CLASSES = 10
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class SlideRecord:
    """One labelled slide. ``where`` names its origin (``labels.csv:7`` or a folder) for errors.

    ``label`` is the class index (classification; 0 for the other tasks); ``values`` holds one
    number per target (multilabel 0/1, regression in the targets' units; empty for classification).
    ``annotations``: the slide's annotation file (from the CSV's ``annotations`` column), or None.
    """

    path: Path
    label: int
    split: str | None
    where: str
    patient: str | None = None
    values: tuple[float, ...] = ()
    annotations: Path | None = None


@dataclass(frozen=True)
class LabelSet:
    """``classes``: the class names (classification) or the target names (the other tasks), in
    output order. ``warnings``: things the reader decided that the user should hear about."""

    classes: tuple[str, ...]
    records: tuple[SlideRecord, ...]
    task: str = "classification"
    targets: tuple[str, ...] = ("label",)
    warnings: tuple[str, ...] = ()

    def counts(self, records: Sequence[SlideRecord] | None = None) -> list[int]:
        """Slides per class (in ``classes`` order); for multilabel, positives per label."""
        records = self.records if records is None else records
        out = [0] * len(self.classes)
        for r in records:
            if self.task == "classification":
                out[r.label] += 1
            elif self.task == "multilabel":
                for i, v in enumerate(r.values):
                    out[i] += int(v > 0.5)
        return out

    @property
    def has_patients(self) -> bool:
        return any(r.patient is not None for r in self.records)


def read_labels(path: str | Path, classes: Sequence[str] | None = None, *, task: str = "classification",
                targets: Sequence[str] | None = None) -> LabelSet:
    """Labels from a CSV file or (classification only) a folder of class folders.

    ``classes`` fixes the class order (default: sorted label names, integers in numeric order);
    a label outside it is an error. ``targets`` names the target columns (default: every column
    that is not slide, split or patient; classification needs exactly one).
    """
    path = Path(path)
    if task not in TASKS:
        raise LabelsError(f"task '{task}' is not one of {', '.join(TASKS)}")
    if path.is_dir():
        if task != "classification":
            raise LabelsError(f"{path}: a folder per class holds classification labels only; for {task} "
                              "give a CSV with one column per target")
        return read_class_folders(path, classes)
    if not path.exists():
        raise LabelsError(f"labels not found: {path}; give a CSV (slide,label[,split][,patient]) "
                          "or a folder per class")
    return read_labels_csv(path, classes, task=task, targets=targets)


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LabelsError(f"could not read labels file {path}: {exc}") from exc
    try:
        return data.decode("utf-8-sig")  # -sig: spreadsheets often write a BOM
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise LabelsError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                          "save it as UTF-8 (in a spreadsheet: CSV UTF-8)") from None


def read_labels_csv(path: str | Path, classes: Sequence[str] | None = None, *, task: str = "classification",
                    targets: Sequence[str] | None = None) -> LabelSet:
    """Parse the CSV with a header row; slide paths are relative to the CSV's folder."""
    path = Path(path)
    rows = list(csv.reader(_decode(path).splitlines()))
    if not rows:
        raise LabelsError(f"{path} is empty; expected a header 'slide,label[,split][,patient]' and one row per slide")
    header = [h.strip().lower() for h in rows[0]]
    columns = {name: i for i, name in enumerate(header)}
    candidates = [h for h in header[1:] if h not in _RESERVED]
    if (header[0] != "slide" or not candidates or len(columns) != len(header) or not all(header)):
        raise LabelsError(f"{path}:1: header is {','.join(rows[0])!r}; expected 'slide' first, then the target "
                          "column(s) (e.g. 'label'), optionally 'split' and 'patient', each named once")
    target_names = _choose_targets(path, task, candidates, targets)
    target_cols = [columns[t.strip().lower()] for t in target_names]
    entries, seen, annotation_files = [], {}, {}
    for line_no, row in enumerate(rows[1:], start=2):
        where = f"{path}:{line_no}"
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise LabelsError(f"{where}: {len(row)} fields, the header has {len(header)}")
        slide = row[0].strip()
        if not slide:
            raise LabelsError(f"{where}: empty slide path")
        split_text = row[columns["split"]].strip().lower() if "split" in columns else ""
        if split_text not in _SPLIT_NAMES:
            raise LabelsError(f"{where}: split {row[columns['split']]!r} is not one of train, val, test (or empty)")
        patient = row[columns["patient"]].strip() or None if "patient" in columns else None
        slide_path = (path.parent / slide).resolve()
        if not slide_path.exists():
            raise LabelsError(f"{where}: slide {slide!r} not found (looked for {slide_path}); "
                              "paths are relative to the CSV's folder")
        values = tuple(row[c] for c in target_cols)  # untrimmed: a merge by trimming is reported
        if slide_path in seen:
            first_line, first_values = seen[slide_path]
            same = [_fold(v) for v in values] == [_fold(v) for v in first_values]
            raise LabelsError(f"{path}: slide {slide!r} is listed twice, on lines {first_line} and {line_no}"
                              + ("" if same else f" with different labels ({', '.join(first_values)} vs "
                                                 f"{', '.join(values)})")
                              + "; keep one row per slide")
        seen[slide_path] = (line_no, values)
        if "annotations" in columns and row[columns["annotations"]].strip():
            annotation_files[slide_path] = _annotation_file(path, row[columns["annotations"]].strip(), where)
        entries.append((slide_path, values, _SPLIT_NAMES[split_text], where, patient))
    if not entries:
        raise LabelsError(f"{path} lists no slides")
    if task == "classification":
        labels = _class_set([(p, v[0], s, w, pt) for p, v, s, w, pt in entries], classes, str(path), target_names)
    else:
        labels = _value_set(entries, task, target_names)
    if not annotation_files:
        return labels
    return dataclasses.replace(labels, records=tuple(dataclasses.replace(r, annotations=annotation_files.get(r.path))
                                                     for r in labels.records))


def _annotation_file(csv_path: Path, text: str, where: str) -> Path:
    """A row's annotation file, relative to the CSV's folder; it must exist."""
    file = (csv_path.parent / text).resolve()
    if not file.is_file():
        raise LabelsError(f"{where}: annotation file {text!r} not found (looked for {file}); paths are relative "
                          "to the CSV's folder; fix the path or leave the cell empty for no annotations")
    return file


def _choose_targets(path: Path, task: str, candidates: list[str], targets: Sequence[str] | None) -> tuple[str, ...]:
    if targets:
        for t in targets:
            if t.strip().lower() not in candidates:
                raise LabelsError(f"{path}:1: target column {t!r} does not exist; the target columns are "
                                  f"{', '.join(candidates)}")
        names = tuple(t.strip().lower() for t in targets)
    else:
        names = tuple(candidates)
    if len(set(names)) != len(names):
        raise LabelsError(f"{path}: a target column is named twice in {', '.join(names)}")
    if task == "classification" and len(names) != 1:
        raise LabelsError(f"{path}:1: classification reads one label column, the file has {', '.join(names)}; "
                          "choose one with --targets, or use --task multilabel or regression")
    return names


def _fold(label: str) -> str:
    return label.strip().casefold()


def _value_set(entries, task: str, targets: tuple[str, ...]) -> LabelSet:
    records = []
    for slide_path, texts, split, where, patient in entries:
        values = []
        for name, text in zip(targets, texts, strict=True):
            if task == "multilabel":
                if _fold(text) not in _BINARY:
                    raise LabelsError(f"{where}: {name} is {text!r}; a multilabel target is 0 or 1 (or yes/no, "
                                      "true/false); fix the row, or use --task regression for numbers")
                values.append(_BINARY[_fold(text)])
            else:
                number = _number(text)
                if number is None:
                    raise LabelsError(f"{where}: {name} is {text!r}, not a number; regression needs a finite "
                                      "number in every row: fill it in or drop the row")
                values.append(number)
        records.append(SlideRecord(slide_path, 0, split, where, patient, tuple(values)))
    return LabelSet(targets, tuple(records), task, targets)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_class_folders(root: str | Path, classes: Sequence[str] | None = None) -> LabelSet:
    """``root/<class>/<slide>``: every slide file in a class folder gets that class; no splits."""
    root = Path(root)
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in SLIDE_SUFFIXES and f.is_file():
                entries.append((f.resolve(), folder.name, None, str(folder), None))
    if not entries:
        raise LabelsError(f"{root}: no slides found; expected one folder per class holding slide files "
                          f"({', '.join(SLIDE_SUFFIXES[:4])}, ...)")
    return _class_set(entries, classes, str(root), ("label",))


def _class_set(entries, classes: Sequence[str] | None, source: str, targets: tuple[str, ...]) -> LabelSet:
    """Class names compared after trimming and case-folding; the first spelling names the class."""
    warnings, merged = [], set()
    spelling: dict[str, tuple[str, str]] = {}  # folded -> (first spelling, where)
    for _, label, _, where, _ in entries:
        if not label.strip():
            raise LabelsError(f"{where}: empty label; give every slide a class or drop the row")
        first = spelling.setdefault(_fold(label), (label, where))
        if first[0] != label and (first[0], label) not in merged:
            merged.add((first[0], label))
            warnings.append(f"labels {first[0]!r} ({first[1]}) and {label!r} ({where}) differ only in case or "
                            f"spaces; read as one class {first[0].strip()!r}")
    if classes:
        names = tuple(classes)
    else:
        _refuse_numeric_classes(entries)
        names = tuple(sorted((s.strip() for s, _ in spelling.values()), key=_class_order))
    index = {_fold(c): i for i, c in enumerate(names)}
    records = []
    for slide_path, label, split, where, patient in entries:
        if _fold(label) not in index:
            raise LabelsError(f"{where}: label {label!r} is not one of the classes {', '.join(names)}")
        records.append(SlideRecord(slide_path, index[_fold(label)], split, where, patient))
    if len(names) < 2:
        raise LabelsError(f"{source}: only one class ({names[0]!r}); training a classifier needs at least two")
    return LabelSet(names, tuple(records), "classification", targets, tuple(warnings))


def _refuse_numeric_classes(entries) -> None:
    """A column of many distinct numbers, or of fractions, is a regression target read as classes."""
    numbers = [(_number(label), where) for _, label, _, where, _ in entries]
    if any(n is None for n, _ in numbers):
        return
    fractional = [where for n, where in numbers if n != int(n)]
    distinct = {n for n, _ in numbers}
    if fractional or len(distinct) > _MAX_NUMERIC_CLASSES:
        where = fractional[0] if fractional else numbers[0][1]
        raise LabelsError(f"{where}: every label is a number ({len(distinct)} distinct values), which looks like "
                          "a regression target; use --task regression (or give the classes explicitly to "
                          "train them as classes)")


def _class_order(name: str) -> tuple:
    """Integer labels in numeric order ('0', '1', '2', '10'), before any other name (sorted as text)."""
    return (0, int(name), "") if _INTEGER.fullmatch(name.strip()) else (1, 0, name)


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
