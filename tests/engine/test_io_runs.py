"""The run folder's one description: what the trainer writes is what the viewer's readers see."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from engine.io.runs import RunFolder, list_runs

ROOT = Path(__file__).resolve().parents[2]


def _run(folder: Path, *, model="smallnet", epochs=3, val_epochs=2, checkpoints=("last",)) -> RunFolder:
    run = RunFolder(folder)
    run.create()
    run.write_spec({"model": model, "epochs": epochs, "normalization_mean": [0.5, 0.5, 0.5]})
    for step in range(4):
        run.append_metrics("train", step // 2, step, {"loss": 1.0 / (step + 1), "lr": 1e-3})
    for epoch in range(val_epochs):
        run.append_metrics("val", epoch, 2 * (epoch + 1), {"loss": 0.5, "accuracy": 0.75, "auc": math.nan})
    for kind in checkpoints:
        run.checkpoint(kind).mkdir()
        (run.checkpoint(kind) / "model.json").write_text("{}")
    return run


def test_the_layout_names_every_file_of_a_run(tmp_path):
    run = RunFolder(tmp_path / "r")
    assert (run.last, run.best) == (tmp_path / "r" / "last", tmp_path / "r" / "best")
    assert (run.metrics_log.name, run.spec_json.name) == ("metrics.jsonl", "spec.json")


def test_metrics_are_read_back_as_curves_with_non_finite_values_as_nan(tmp_path):
    run = _run(tmp_path / "r")
    assert '"auc": null' in run.metrics_log.read_text()  # JSON has no NaN
    curves = run.read_metrics()
    assert [p["step"] for p in curves.train] == [0, 1, 2, 3] and curves.train[1]["loss"] == 0.5
    assert [p["epoch"] for p in curves.val] == [0, 1] and math.isnan(curves.val[0]["auc"])
    with open(run.metrics_log, "a") as f:
        f.write('{"phase": "train", "ep')  # a run still writing, read mid-line
    assert len(run.read_metrics().train) == 4
    assert RunFolder(tmp_path / "empty").read_metrics().train == []


def test_rows_after_a_checkpoint_are_dropped_on_resume(tmp_path):
    run = _run(tmp_path / "r")
    with open(run.metrics_log, "a") as f:
        f.write('{"phase": "train", "ep')
    run.drop_metrics_after(epoch=1, global_step=2)
    curves = run.read_metrics()
    assert [p["step"] for p in curves.train] == [0, 1] and [p["epoch"] for p in curves.val] == [0]
    assert run.metrics_log.read_text().endswith("}\n")  # the torn line went too


def test_a_summary_says_what_the_run_did_and_which_checkpoint_to_open(tmp_path):
    run = _run(tmp_path / "r", checkpoints=("last", "best"))
    s = run.summary()
    assert (s.name, s.model, s.epochs, s.epochs_done, s.steps, s.last_loss) == ("r", "smallnet", 3, 2, 4, 0.25)
    assert s.val["accuracy"] == 0.75 and "epoch" not in s.val
    assert (s.has_best, s.has_last, s.checkpoint) == (True, True, str(tmp_path / "r" / "best"))
    only_last = _run(tmp_path / "q", checkpoints=("last",)).summary()
    assert only_last.checkpoint == str(tmp_path / "q" / "last")
    assert _run(tmp_path / "n", checkpoints=()).summary().checkpoint is None


def test_runs_are_listed_newest_first_and_other_folders_ignored(tmp_path):
    for i, name in enumerate(("old", "new")):
        _run(tmp_path / name)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "spec.json").write_text("{not json")
    assert [s.name for s in list_runs(tmp_path)] == ["new", "old"]
    assert list_runs(tmp_path / "missing") == []


def test_the_formats_the_viewer_reads_need_no_torch():
    code = ("import sys\nimport engine.io.runs, engine.io.labels, engine.io.atomic, engine.io.checkpoints\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
