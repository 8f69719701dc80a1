"""Run folders that are never clobbered (issue 15): another run's folder is refused unless
resume or overwrite; a resume changes only what may change, saying so; write failures of the
run's files are clear errors; a slide deleted mid-run says how to continue."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from train_fixtures import write_training_set

from engine import cli
from engine.api import run_training
from engine.errors import ResultsError, SlideError, SpecError, TrainingError
from engine.events import Metrics
from engine.io.runs import RunFolder
from engine.specs import TrainingSpec


@pytest.fixture(scope="module")
def labels_csv(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("slides"), n_per_class=2, size=96, val_per_class=1)


@pytest.fixture
def spec(labels_csv, tmp_path):
    return TrainingSpec(labels=str(labels_csv), out_dir=str(tmp_path / "run"), model="smallnet",
                        model_kwargs={"width": 4}, input_size=96, tile_size=64, epochs=1, lr=3e-3,
                        schedule="constant", normalization_mean=(0.5, 0.5, 0.5),
                        normalization_std=(0.25, 0.25, 0.25), device="cpu", calibrate_norms=0)


def _rows(out):
    return [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]


def _snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}


def test_training_into_another_runs_folder_is_refused_and_changes_nothing(spec):
    run_training(spec, lambda e: None)
    before = _snapshot(spec.out_dir)
    with pytest.raises(TrainingError, match=r"holds another training run \(spec\.json, metrics\.jsonl, last/.*--resume.*--overwrite"):
        run_training(dataclasses.replace(spec, lr=1e-3), lambda e: None)
    assert _snapshot(spec.out_dir) == before


def _argv(spec, *extra):
    """``spec`` as ``python -m engine train`` arguments, then ``extra``."""
    return ["train", "--labels", spec.labels, "--out", spec.out_dir, "--model", "smallnet", "--model-arg", "width=4",
            "--input-size", "96", "--tile", "64", "--epochs", "1", "--device", "cpu", "--schedule", "constant",
            "--lr", "0.003", *extra]


def test_the_cli_refuses_it_too_naming_both_options(spec, capsys):
    assert cli.main(_argv(spec)) == cli.EXIT_OK
    before = _snapshot(spec.out_dir)
    code = cli.main(_argv(spec))
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "holds another training run" in err and "--overwrite" in err
    assert _snapshot(spec.out_dir) == before


def test_the_cli_overwrite_says_so_and_replaces_the_run(spec, capsys):
    assert cli.main(_argv(spec)) == cli.EXIT_OK
    rows = len(_rows(spec.out_dir))
    capsys.readouterr()
    assert cli.main(_argv(spec, "--overwrite")) == cli.EXIT_OK
    assert "replacing the run in" in capsys.readouterr().err and len(_rows(spec.out_dir)) == rows


def test_the_cli_resume_refuses_another_optimizer_listing_it(spec, capsys):
    assert cli.main(_argv(spec)) == cli.EXIT_OK
    code = cli.main(_argv(spec, "--resume", "--optimizer", "sgd", "--epochs", "2"))
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "optimizer 'adamw' -> 'sgd'" in err and "Traceback" not in err
    assert cli.main(_argv(spec, "--resume", "--epochs", "2", "--lr", "0.001")) == cli.EXIT_OK
    assert "lr 0.003 -> 0.001" in RunFolder(spec.out_dir).read_notes()[0]


def test_overwrite_replaces_the_run_and_keeps_the_users_other_files(spec):
    run_training(spec, lambda e: None)
    (Path(spec.out_dir) / "labels.csv").write_text("mine\n")
    first_rows = _rows(spec.out_dir)
    run_training(dataclasses.replace(spec, overwrite=True, lr=1e-3), lambda e: None)
    rows = _rows(spec.out_dir)
    assert len(rows) == len(first_rows)  # one run's rows, not two runs appended
    assert {r["lr"] for r in rows if r["phase"] == "train"} == {1e-3}
    assert (Path(spec.out_dir) / "labels.csv").read_text() == "mine\n"
    assert json.loads((Path(spec.out_dir) / "spec.json").read_text())["lr"] == 1e-3


def test_resume_and_overwrite_together_are_a_spec_error(spec):
    with pytest.raises(SpecError, match="resume and overwrite"):
        dataclasses.replace(spec, resume=True, overwrite=True)


def test_a_resume_applies_new_epochs_and_learning_rate_and_notes_them(spec):
    run_training(spec, lambda e: None)
    steps = len([r for r in _rows(spec.out_dir) if r["phase"] == "train"])
    run_training(dataclasses.replace(spec, resume=True, epochs=2, lr=1e-3), lambda e: None)
    rows = _rows(spec.out_dir)
    train = [r for r in rows if r["phase"] == "train"]
    assert [r["lr"] for r in train] == [3e-3] * steps + [1e-3] * steps  # the new rate is used, not the saved one
    notes = RunFolder(spec.out_dir).read_notes()
    assert len(notes) == 1 and "lr 0.003 -> 0.001" in notes[0] and "epochs 1 -> 2" in notes[0]
    summary = RunFolder(spec.out_dir).summary()  # a note is not a curve point
    assert summary.steps == 2 * steps and summary.epochs_done == 2


@pytest.mark.parametrize("change, named", [
    ({"optimizer": "sgd"}, "optimizer 'adamw' -> 'sgd'"),
    ({"model_kwargs": {"width": 8}}, "model_kwargs {'width': 4} -> {'width': 8}"),
    ({"seed": 3, "pool": "avg"}, "pool 'max' -> 'avg', seed 0 -> 3"),
])
def test_a_resume_that_would_change_the_run_is_refused_listing_what_differs(spec, change, named):
    run_training(spec, lambda e: None)
    before = _snapshot(spec.out_dir)
    with pytest.raises(TrainingError, match="--resume cannot change") as err:
        run_training(dataclasses.replace(spec, resume=True, epochs=2, **change), lambda e: None)
    assert named in str(err.value)
    assert _snapshot(spec.out_dir) == before


@pytest.mark.parametrize("change, words", [
    ({"model_kwargs": {"width": 8}}, "it holds another model (model_kwargs"),
    ({"optimizer": "sgd"}, "its optimiser state does not fit this run"),
])
def test_without_its_spec_a_mismatched_checkpoint_is_a_training_error_not_a_traceback(spec, change, words):
    run_training(spec, lambda e: None)
    (Path(spec.out_dir) / "spec.json").unlink()
    with pytest.raises(TrainingError, match=re.escape(words)):
        run_training(dataclasses.replace(spec, resume=True, epochs=2, **change), lambda e: None)


def test_a_slide_deleted_mid_run_says_that_resume_continues_it(spec, tmp_path):
    labels = write_training_set(tmp_path / "own", n_per_class=3, size=96, val_per_class=1)
    slides = sorted((tmp_path / "own").glob("*.svs"))

    def delete_all_after_first_step(event):
        if isinstance(event, Metrics) and event.phase == "train" and event.step == 0:
            for s in slides:
                s.unlink(missing_ok=True)

    s = dataclasses.replace(spec, labels=str(labels), checkpoint_every=1, prefetch=1)
    with pytest.raises(SlideError, match=r"last checkpoint is kept in .*run again with --resume"):
        run_training(s, delete_all_after_first_step)


@pytest.fixture
def small_disk(tmp_path):
    """A factory of small tmpfs mounts (needs root), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = []

    def mount(name: str, options: str = "size=64k") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def _fill(folder: Path) -> None:
    """Fill a tmpfs to the last byte."""
    try:
        with open(folder / f"filler{len(list(folder.iterdir()))}", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:  # full (perhaps already before the file could be created)
        pass


def test_a_full_disk_while_writing_spec_json_is_a_clear_error_leaving_nothing(spec, small_disk):
    disk = small_disk("disk")
    (disk / "run").mkdir()
    _fill(disk)
    with pytest.raises(ResultsError, match=r"could not write .*spec\.json: the disk is full"):
        run_training(dataclasses.replace(spec, out_dir=str(disk / "run")), lambda e: None)
    assert sorted(p.name for p in (disk / "run").iterdir()) == []  # no 0-byte spec.json, no temporary file


def test_a_full_disk_while_logging_metrics_is_a_clear_error(spec, small_disk):
    disk = small_disk("disk")

    def fill_at_first_step(event):
        if isinstance(event, Metrics) and event.step == 0:
            _fill(disk)

    with pytest.raises(ResultsError, match=r"could not write .*metrics\.jsonl: the disk is full"):
        run_training(dataclasses.replace(spec, out_dir=str(disk / "run")), fill_at_first_step)


def test_a_read_only_out_is_a_clear_error(spec, small_disk, capsys):
    disk = small_disk("ro", "ro,size=64k")
    with pytest.raises(ResultsError, match="read-only; choose a writable folder"):
        run_training(dataclasses.replace(spec, out_dir=str(disk / "run")), lambda e: None)
    assert cli.main(_argv(dataclasses.replace(spec, out_dir=str(disk / "run")))) == cli.EXIT_WRITE
    assert "read-only" in capsys.readouterr().err


def test_a_file_where_the_run_folder_should_be_is_a_clear_error(spec, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ResultsError, match="could not create the folder .*afile.*a file of that name is in the way"):
        run_training(dataclasses.replace(spec, out_dir=str(tmp_path / "afile")), lambda e: None)
    with pytest.raises(ResultsError, match="a part of the path is a file, not a folder"):
        run_training(dataclasses.replace(spec, out_dir=str(tmp_path / "afile" / "run")), lambda e: None)
