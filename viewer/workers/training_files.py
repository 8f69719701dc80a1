"""Worker jobs of fine-tuning: labels CSVs out and in, and the engine's architectures.

The CSV written is the engine's format, ``slide,label`` with a header, slide paths relative to
the CSV's folder (so a folder of slides plus its labels file can be moved together). Reading a
CSV goes through the engine's parser, which checks every row and that every slide exists.
"""

from __future__ import annotations

from pathlib import Path

from engine.api import label_columns, list_models, plan_training, read_labels
from engine.api import write_labels_csv as write_labels_csv_file


def write_labels_csv(path: str | Path, rows: list[tuple[str, str]]) -> str:
    """Worker job: write ``slide,label`` rows (slide paths made relative to the CSV) atomically,
    in the engine's format (:func:`engine.api.write_labels_csv`)."""
    return str(write_labels_csv_file(path, rows))


def read_labels_rows(path: str) -> tuple[str, dict[str, str], tuple[str, ...]]:
    """Worker job: parse and check a labels CSV (or class folders) with the engine's reader.
    Returns (path, absolute slide path -> label, classes); a bad file raises ``LabelsError``."""
    labels = read_labels(path)
    return path, {str(r.path): labels.classes[r.label] for r in labels.records}, labels.classes


def read_labels_for_form(path: str) -> tuple[str, dict[str, str], tuple[str, ...], tuple[str, ...], str]:
    """Worker job: a CSV's target columns (the form's choice of targets) and, when it holds
    class labels, its rows as :func:`read_labels_rows` gives them. A CSV of numbers (regression,
    multi-label) has no class rows: ``rows`` is empty and ``note`` says what it holds. A header
    the engine refuses raises ``LabelsError``."""
    columns = label_columns(path) if not Path(path).is_dir() else ("label",)
    try:
        _, rows, classes = read_labels_rows(path)
        return path, rows, classes, columns, ""
    except ValueError as as_classes:
        # Numeric targets are refused as class labels but are still a labels file to train on.
        # Anything else (a missing slide, a bad row) fails both ways: report the first reading's
        # message, which names the row, not the retry's.
        try:
            labels = read_labels(path, task="regression", targets=columns)
        except ValueError:
            raise as_classes from None
        return path, {}, (), columns, f"{len(labels.records)} slides · numeric targets {', '.join(columns)}"


def list_model_names() -> list[str]:
    """The engine's registered architectures (imports torch, hence the worker)."""
    return list(list_models())


def plan_run(spec) -> dict:
    """The training plan of ``spec`` (tile, blocks, kept, estimated peak): imports torch, reads
    the slides' sizes unless the spec fixes the input size (worker thread)."""
    return plan_training(spec)
