"""Cohort evaluation end to end: a known model over labelled slides, one broken slide skipped,
the files written, the CLI, and regression outputs in the targets' units."""

from __future__ import annotations

import argparse
import csv
import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from model_fixtures import save_green_detector, write_test_slide

from engine.evaluate import cli
from engine.evaluate.run import evaluate
from engine.events import Finished, JobWarning, Progress
from engine.specs import EvaluationSpec


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    model = save_green_detector(root / "model", tile_size=128).parent
    rows = ["slide,label,patient"]
    for i, boxes in enumerate([((16, 16, 64, 64),), (), ((100, 40, 140, 80),), ()]):
        write_test_slide(root / f"s{i}.svs", boxes=boxes, size=(192, 160))
        rows.append(f"s{i}.svs,{'green' if boxes else 'other'},p{i // 2 if i < 2 else i}")
    (root / "broken.svs").write_bytes(b"not a slide at all")
    rows.append("broken.svs,other,p9")
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    return root, model


def test_evaluate_writes_predictions_metrics_and_plot_and_skips_a_broken_slide(cohort, tmp_path):
    root, model = cohort
    events = []
    result = evaluate(EvaluationSpec(model=str(model), labels=str(root / "test.csv"), out_dir=str(tmp_path / "ev"),
                                     device="cpu", bootstrap=200), events.append)
    assert not result.cancelled and [f["slide"] for f in result.failed] == [str((root / "broken.svs").resolve())]
    warnings = [e for e in events if isinstance(e, JobWarning)]
    assert len(warnings) == 1 and "broken.svs failed and was skipped" in warnings[0].message
    assert [e.done for e in events if isinstance(e, Progress)] == [1, 2, 3, 4, 5]
    assert isinstance(events[-1], Finished) and set(events[-1].outputs) == {"predictions", "metrics", "plot"}

    with open(tmp_path / "ev" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["slide", "patient", "label", "pred_label", "prob_other", "prob_green"]
    assert [r["label"] for r in rows] == ["green", "other", "green", "other"] == [r["pred_label"] for r in rows]
    # The hand-set detector: logits (1, -1) without green -> p(green) = 1 / (1 + e^2).
    assert float(rows[1]["prob_green"]) == pytest.approx(1 / (1 + np.e ** 2))
    assert float(rows[0]["prob_green"]) > 0.99

    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["slides"]["auc"]["value"] == 1.0 and saved["slides"]["accuracy"] == 1.0
    assert saved["slides"]["confusion_matrix"]["counts"] == [[2, 0], [0, 2]]
    assert saved["failed"][0]["where"].endswith("test.csv:6") and saved["evaluated"] == 4
    assert saved["patients"]["n"] == 2 and saved["patients"]["mixed_patients"] == ["p0"]  # s0 green, s1 other
    assert saved == json.loads(json.dumps(result.metrics))
    svg = ET.parse(tmp_path / "ev" / "plot.svg").getroot()
    assert svg.tag.endswith("svg") and any(el.tag.endswith("polyline") for el in svg.iter())
    assert "AUC green" in result.table and "balanced accuracy 1.000" in result.table


def test_the_cli_prints_the_table_and_exits_0(cohort, tmp_path):
    root, model = cohort
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--model", str(model), "--labels", str(root / "test.csv"),
                              "--out", str(tmp_path / "ev"), "--device", "cpu", "--bootstrap", "50",
                              "--threshold", "0.5", "--patient-aggregate", "max"])
    out, err = io.StringIO(), io.StringIO()
    assert args.evaluate_main(args, out, err) == cli.EXIT_OK
    assert "macro AUC" in out.getvalue() and "probability >= 0.5" in out.getvalue()
    assert "max over each patient's slides" in out.getvalue()
    assert "warning: broken.svs failed" in err.getvalue() and "failed: " in err.getvalue()
    bad = parser.parse_args(["evaluate", "--model", str(model), "--labels", str(root / "test.csv"),
                             "--out", str(tmp_path / "x"), "--targets", "grade"])
    assert bad.evaluate_main(bad, out, err) == cli.EXIT_USAGE and "target column 'grade' does not exist" in err.getvalue()


def test_regression_outputs_are_reported_in_the_targets_units(tmp_path):
    from engine.io.checkpoints import ModelCard, save_checkpoint
    from engine.models import create_model
    from engine.train.classifier import Classifier
    from engine.train.data import Augmentation, InputSpec, input_source, read_slide_input

    torch.manual_seed(3)
    net = create_model("smallnet", width=4, num_classes=1, split="stage4", pool="avg").eval()
    card = ModelCard(architecture="smallnet", classes=("ki67",), split="stage4", pool="avg",
                     model_kwargs={"width": 4}, tile_size=128, task="regression", targets=("ki67",),
                     target_mean=(10.0,), target_std=(2.0,), normalization_mean=(0.5,) * 3)
    model = save_checkpoint(tmp_path / "m", net, card).parent
    for i in range(3):
        write_test_slide(tmp_path / f"r{i}.svs", boxes=((8, 8, 8 + 30 * i, 40),) if i else (), size=(128, 128))
    (tmp_path / "r.csv").write_text("slide,ki67\nr0.svs,9\nr1.svs,10.5\nr2.svs,12\n")
    result = evaluate(EvaluationSpec(model=str(model), labels=str(tmp_path / "r.csv"), out_dir=str(tmp_path / "ev"),
                                     device="cpu", bootstrap=0), lambda e: None)
    with open(tmp_path / "ev" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["slide", "ki67", "pred_ki67"] and [float(r["ki67"]) for r in rows] == [9, 10.5, 12]
    runner = Classifier(net, streaming=True, tile_size=128).eval()
    with torch.no_grad():
        for r in rows:
            rgb = read_slide_input(r["slide"], InputSpec())
            raw = float(runner(input_source(rgb, Augmentation(), card.normalization_mean, card.normalization_std)))
            assert float(r["pred_ki67"]) == pytest.approx(10.0 + 2.0 * raw)
    assert set(result.metrics["slides"]["targets"]["ki67"]) == {"spearman", "pearson", "mae", "r2"}
    svg = ET.parse(tmp_path / "ev" / "plot.svg").getroot()
    assert sum(el.tag.endswith("circle") for el in svg.iter()) == 3


def test_a_cancelled_evaluation_writes_what_it_has_marked_cancelled(cohort, tmp_path):
    from engine.events import CancelToken

    root, model = cohort
    token = CancelToken()

    def on_event(e):
        if isinstance(e, Progress) and e.done == 2:
            token.cancel()

    result = evaluate(EvaluationSpec(model=str(model), labels=str(root / "test.csv"), out_dir=str(tmp_path / "ev"),
                                     device="cpu", bootstrap=0), on_event, token)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert result.cancelled and saved["cancelled"] is True and saved["evaluated"] == 2
    assert result.table.startswith("CANCELLED")


def test_two_gloo_ranks_share_the_slides_and_rank_0_writes_the_same_results(cohort, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, model = cohort
    repo = Path(__file__).resolve().parents[2]
    script = tmp_path / "run_eval.py"
    script.write_text(
        "import sys\n"
        "from engine.evaluate.run import evaluate\n"
        "from engine.specs import EvaluationSpec\n"
        f"evaluate(EvaluationSpec(model={str(model)!r}, labels={str(root / 'test.csv')!r}, out_dir=sys.argv[1],"
        " device='cpu', bootstrap=50), lambda e: None)\n")
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "ddp")], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = evaluate(EvaluationSpec(model=str(model), labels=str(root / "test.csv"), out_dir=str(tmp_path / "one"),
                                     device="cpu", bootstrap=50), lambda e: None)
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["slides"] == single.metrics["slides"] and ddp["failed"] == single.metrics["failed"]
    assert (tmp_path / "ddp" / "predictions.csv").read_text() == (tmp_path / "one" / "predictions.csv").read_text()


@pytest.mark.parametrize("kw, message", [
    (dict(patient_aggregate="median"), "patient_aggregate 'median' is not one of max, mean"),
    (dict(threshold=1.5), "threshold must be between 0 and 1"),
    (dict(bootstrap=-1), "bootstrap must be 0"),
    (dict(dtype="float16"), "dtype 'float16'"),
    (dict(tile_size=0), "tile_size must be at least 1"),
])
def test_evaluation_spec_refuses_impossible_values(kw, message):
    from engine.errors import SpecError

    with pytest.raises(SpecError, match=message):
        EvaluationSpec(model="m", labels="l.csv", out_dir="o", **kw)
    assert EvaluationSpec(model="m", labels="l", out_dir="o", targets="a, b").targets == ("a", "b")


def test_labels_of_other_classes_than_the_models_are_refused(cohort, tmp_path):
    from engine.errors import LabelsError

    root, model = cohort
    (root / "other.csv").write_text("slide,label\ns0.svs,green\ns1.svs,tumour\n")
    with pytest.raises(LabelsError, match=r"other.csv:3: label 'tumour' is not one of the classes other, green"):
        evaluate(EvaluationSpec(model=str(model), labels=str(root / "other.csv"), out_dir=str(tmp_path), device="cpu"),
                 lambda e: None)


def test_the_engine_cli_runs_evaluate_and_inference_refuses_a_regression_model(cohort, tmp_path, capsys):
    from engine.api import run_inference
    from engine.cli import main
    from engine.errors import SpecError
    from engine.io.checkpoints import ModelCard, save_checkpoint
    from engine.models import create_model
    from engine.specs import InferenceSpec

    root, model = cohort
    rc = main(["evaluate", "--model", str(model), "--labels", str(root / "test.csv"), "--out", str(tmp_path / "ev"),
               "--device", "cpu", "--bootstrap", "20"])
    assert rc == 0 and "macro AUC" in capsys.readouterr().out and (tmp_path / "ev" / "metrics.json").exists()

    net = create_model("smallnet", width=4, num_classes=1, split="stage4", pool="avg")
    card = ModelCard(architecture="smallnet", classes=("ki67",), split="stage4", pool="avg", model_kwargs={"width": 4},
                     tile_size=128, task="regression", targets=("ki67",), target_mean=(0.0,), target_std=(1.0,))
    reg = save_checkpoint(tmp_path / "reg", net, card).parent
    with pytest.raises(SpecError, match="is a regression model .*python -m engine evaluate"):
        run_inference(InferenceSpec(slide_path=str(root / "s0.svs"), model_path=str(reg), device="cpu"), lambda e: None)
