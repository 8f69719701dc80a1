"""The graph budget in training: the spec field, the CLI flag, "auto", the plan before a run, and
training that keeps graphs equal to training that recomputes them."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
from train_fixtures import write_training_set

from engine import cli
from engine.api import plan_training, run_training
from engine.errors import SpecError
from engine.events import Metrics
from engine.specs import GRAPH_BUDGET_AUTO_SHARE, TrainingSpec, parse_bytes
from engine.streaming.keep import free_device_bytes, resolve_graph_budget


@pytest.fixture(scope="module")
def labels_csv(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("slides"), n_per_class=2, size=96, val_per_class=1)


@pytest.fixture
def spec(labels_csv, tmp_path):
    return TrainingSpec(labels=str(labels_csv), out_dir=str(tmp_path / "run"), model="smallnet",
                        model_kwargs={"width": 4}, input_size=96, tile_size=64, epochs=1, lr=3e-3,
                        normalization_mean=(0.5, 0.5, 0.5), normalization_std=(0.25, 0.25, 0.25), device="cpu",
                        dtype="float64")


@pytest.mark.parametrize("text, want", [("1000", 1000), ("512M", 512 * 2**20), ("2G", 2 * 2**30),
                                        ("1.5g", int(1.5 * 2**30)), ("2GiB", 2 * 2**30), ("64k", 65536),
                                        ("auto", "auto"), (" AUTO ", "auto"), ("0", 0)])
def test_byte_counts_are_parsed_with_binary_suffixes(text, want):
    assert parse_bytes(text) == want


@pytest.mark.parametrize("text", ["", "lots", "-1G", "2X"])
def test_bad_byte_counts_are_spec_errors(text):
    with pytest.raises(SpecError):
        parse_bytes(text)


@pytest.mark.parametrize("value", [-1, 1.5, "big", True])
def test_spec_refuses_impossible_graph_budgets(value):
    with pytest.raises(SpecError, match="graph_budget"):
        TrainingSpec(labels="", out_dir="", graph_budget=value)


def test_spec_accepts_bytes_auto_and_none():
    for value in (None, 0, 2**30, "auto"):
        assert TrainingSpec(labels="", out_dir="", graph_budget=value).graph_budget == value
    assert TrainingSpec(labels="", out_dir="", graph_budget="auto").as_json()["graph_budget"] == "auto"


def _train_args(argv):
    ap = argparse.ArgumentParser()
    cli._add_train_parser(ap.add_subparsers(dest="command"))
    return ap.parse_args(["train", "--labels", "l.csv", "--out", "o", *argv])


def test_cli_graph_budget_flag():
    assert _train_args([]).graph_budget is None
    assert _train_args(["--graph-budget", "512M"]).graph_budget == 512 * 2**20
    assert _train_args(["--graph-budget", "auto"]).graph_budget == "auto"
    with pytest.raises(SystemExit):
        _train_args(["--graph-budget", "plenty"])


def test_auto_is_a_stated_share_of_free_memory():
    cpu = torch.device("cpu")
    free = free_device_bytes(cpu)
    assert free > 0
    got = resolve_graph_budget("auto", cpu, GRAPH_BUDGET_AUTO_SHARE)
    assert 0.8 * GRAPH_BUDGET_AUTO_SHARE * free <= got <= 1.2 * GRAPH_BUDGET_AUTO_SHARE * free
    assert resolve_graph_budget(None, cpu, 0.5) is None and resolve_graph_budget(123, cpu, 0.5) == 123


def test_plan_before_a_run(spec):
    none = plan_training(spec)
    assert none["in_hw"] == (96, 96) and none["blocks"] > 1 and none["kept"] == 0 and none["graph_budget"] is None
    every = plan_training(dataclasses.replace(spec, graph_budget=2**30))
    assert every["kept"] == every["blocks"] == 1 and every["whole_image"]  # the whole input as one block
    auto = plan_training(dataclasses.replace(spec, graph_budget="auto"))
    assert auto["graph_budget"] > 0 and auto["estimated_peak_bytes"] > 0
    assert plan_training(dataclasses.replace(spec, input_size=None))["in_hw"] == (96, 96)  # from the slides
    assert plan_training(dataclasses.replace(spec, streaming=False)) == {
        "streaming": False, "in_hw": (96, 96), "device": "cpu"}


def test_training_that_keeps_graphs_equals_training_that_recomputes(spec, tmp_path, monkeypatch):
    from engine.streaming.module import StreamingModule

    plans = []
    original = StreamingModule._plan_keep

    def spy(self, source, run, anchor, sink):
        original(self, source, run, anchor, sink)
        plans.append(len(run.keep))

    monkeypatch.setattr(StreamingModule, "_plan_keep", spy)
    losses = {}
    for budget in (None, 2**30):
        events = []
        run_training(dataclasses.replace(spec, graph_budget=budget, out_dir=str(tmp_path / str(budget))),
                     events.append)
        losses[budget] = [e.values["loss"] for e in events if isinstance(e, Metrics) and e.phase == "train"]
    assert len(losses[None]) > 0
    assert losses[2**30] == pytest.approx(losses[None], rel=1e-10, abs=1e-12)
    assert max(plans) == 1  # with the budget, the whole input's graph was kept
