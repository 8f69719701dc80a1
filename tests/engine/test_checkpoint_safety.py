"""Model files that cannot mislead or exhaust the loader (issue 15): non-finite weights, cards
asking for huge models or tiles, the demo model's card."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from model_fixtures import save_green_detector, write_test_slide

from engine import cli
from engine.api import check_model, demo_model_dir, read_model_card
from engine.errors import CheckpointError
from engine.io import checkpoints
from engine.io.checkpoints import ModelCard, build_model, load_checkpoint, save_checkpoint
from engine.io.model_card import MAX_MODEL_KWARG, MAX_TILE_SIZE


@pytest.fixture
def card() -> ModelCard:
    return ModelCard(architecture="smallnet", classes=("benign", "tumour"), split="stage4",
                     model_kwargs={"width": 4}, input_mpp=0.5, tile_size=256)


def _write_pair(directory: Path, state: dict, card_json: dict) -> Path:
    """A weights/card pair with a correct sha256, bypassing save_checkpoint's checks (as a
    hand-made or tampered file would)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = safetensors.torch.save({k: v.contiguous() for k, v in state.items()})
    (directory / "model.safetensors").write_bytes(data)
    (directory / "model.json").write_text(json.dumps({**card_json, "sha256": hashlib.sha256(data).hexdigest()}))
    return directory


def test_non_finite_weights_with_a_matching_sha256_are_refused(tmp_path, card):
    state = build_model(card).state_dict()
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    _write_pair(tmp_path / "nan", state, card.to_json())
    with pytest.raises(CheckpointError, match=r"model\.safetensors has non-finite values .* fc\.weight"):
        load_checkpoint(tmp_path / "nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        check_model(str(tmp_path / "nan"))  # what the GUI's model panel and Run use


def test_the_cli_refuses_a_nan_model_with_the_model_exit_code(tmp_path, card, capsys):
    state = build_model(card).state_dict()
    state["stage1.0.weight"][0, 0, 0, 0] = float("inf")
    _write_pair(tmp_path / "inf", state, card.to_json())
    write_test_slide(tmp_path / "a.svs")
    code = cli.main(["infer", str(tmp_path / "a.svs"), "--model", str(tmp_path / "inf"), "--out", str(tmp_path / "o"),
                     "--device", "cpu"])
    assert code == cli.EXIT_MODEL and "non-finite" in capsys.readouterr().err


def test_a_card_asking_for_a_huge_model_is_refused_naming_the_file_and_field(tmp_path, card):
    state = build_model(card).state_dict()
    _write_pair(tmp_path / "huge", state, {**card.to_json(), "model_kwargs": {"width": 100000}})
    with pytest.raises(CheckpointError, match=r"model\.json: field 'model_kwargs' 'width' = 100000 is out of range"):
        load_checkpoint(tmp_path / "huge")
    with pytest.raises(CheckpointError, match="model_kwargs"):
        read_model_card(str(tmp_path / "huge"))  # the panel's card read refuses it too


def test_the_card_is_compared_with_the_weights_before_a_real_model_is_built(tmp_path, card, monkeypatch):
    state = build_model(card).state_dict()
    _write_pair(tmp_path / "wide", state, {**card.to_json(), "model_kwargs": {"width": MAX_MODEL_KWARG}})
    devices = []
    real_build = checkpoints.build_model

    def spy(c, *args):
        devices.append(torch.empty(0).device.type)
        return real_build(c, *args)

    monkeypatch.setattr(checkpoints, "build_model", spy)
    with pytest.raises(CheckpointError, match=r"shape mismatch .*check the card's architecture, classes and model_kwargs"):
        load_checkpoint(tmp_path / "wide")
    assert devices == ["meta"]  # shapes only: a 4096-wide SmallNet was never allocated


def test_model_kwargs_of_a_kind_no_builder_takes_are_refused_in_the_card(tmp_path, card):
    state = build_model(card).state_dict()
    _write_pair(tmp_path / "list", state, {**card.to_json(), "model_kwargs": {"width": [4] * 10}})
    with pytest.raises(CheckpointError, match="'width' must be a number"):
        load_checkpoint(tmp_path / "list")


@pytest.mark.parametrize("tile", [10**9, MAX_TILE_SIZE + 1, 0, -8])
def test_an_absurd_card_tile_is_refused_naming_the_field(tmp_path, card, tile):
    state = build_model(card).state_dict()
    _write_pair(tmp_path / "t", state, {**card.to_json(), "tile_size": tile})
    with pytest.raises(CheckpointError, match=rf"field 'tile_size' must be a positive integer of at most {MAX_TILE_SIZE}"):
        read_model_card(str(tmp_path / "t"))


def test_the_cli_reports_an_absurd_card_tile_as_a_model_problem(tmp_path, card, capsys):
    state = build_model(card).state_dict()
    _write_pair(tmp_path / "t", state, {**card.to_json(), "tile_size": 10**9})
    write_test_slide(tmp_path / "a.svs")
    code = cli.main(["infer", str(tmp_path / "a.svs"), "--model", str(tmp_path / "t"), "--out", str(tmp_path / "o")])
    assert code == cli.EXIT_MODEL and "tile_size" in capsys.readouterr().err


def test_a_truncated_model_is_refused_by_check_model(tmp_path):
    save_green_detector(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        check_model(str(tmp_path / "m"))


def test_the_demo_model_says_it_knows_only_the_synthetic_demo_slides():
    card = read_model_card(demo_model_dir())
    text = json.dumps(card.provenance).lower()
    assert "synthetic" in card.provenance["intended_use"].lower()
    assert "not" in card.provenance["intended_use"].lower() and "real" in text
    model, loaded = load_checkpoint(demo_model_dir())  # its weights and sha256 are untouched
    assert loaded.provenance == card.provenance


def test_saving_keeps_refusing_what_loading_refuses(tmp_path, card):
    model = build_model(card)
    with pytest.raises(CheckpointError, match="model_kwargs"):
        save_checkpoint(tmp_path, model, dataclasses.replace(card, model_kwargs={"width": 10**6}))


def test_a_card_tile_below_the_receptive_field_is_a_model_error_naming_the_minimum(tmp_path, capsys):
    from engine.api import run_inference
    from engine.specs import InferenceSpec

    save_green_detector(tmp_path / "m", tile_size=8)
    write_test_slide(tmp_path / "a.svs")
    with pytest.raises(CheckpointError, match=r"model\.json: field 'tile_size' \(8\) .*at least 45 px"):
        run_inference(InferenceSpec(slide_path=str(tmp_path / "a.svs"), model_path=str(tmp_path / "m"), device="cpu"),
                      lambda e: None)
    code = cli.main(["infer", str(tmp_path / "a.svs"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
                     "--device", "cpu"])
    assert code == cli.EXIT_MODEL and "at least 45 px" in capsys.readouterr().err
    # A --tile of the user's that is too small stays a usage error
    code = cli.main(["infer", str(tmp_path / "a.svs"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
                     "--device", "cpu", "--tile", "16"])
    assert code == cli.EXIT_USAGE


def test_builders_state_their_arguments_and_the_registry_checks_them_before_building():
    import time

    from engine.models import create_model

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"'smallnet' argument width=100000 must be an integer from 1 to 4096"):
        create_model("smallnet", width=100000)
    assert time.perf_counter() - t0 < 1.0  # refused, not allocated
    with pytest.raises(ValueError, match=r"'resnet18' takes no argument width; it takes num_classes, split, pool, in_channels"):
        create_model("resnet18", width=8)
    with pytest.raises(ValueError, match="must be an integer"):
        create_model("smallnet", width="16")


def test_a_card_with_an_argument_its_builder_does_not_take_names_it(tmp_path, card):
    state = build_model(card).state_dict()
    _write_pair(tmp_path / "odd", state, {**card.to_json(), "model_kwargs": {"width": 4, "depth": 3}})
    with pytest.raises(CheckpointError, match=r"odd/model\.json: cannot build 'smallnet' from fields 'architecture' "
                                              r"and 'model_kwargs': 'smallnet' takes no argument depth; it takes num_classes"):
        load_checkpoint(tmp_path / "odd")


def test_training_with_an_absurd_model_argument_is_a_usage_error(tmp_path, capsys):
    from train_fixtures import write_training_set

    labels = write_training_set(tmp_path / "slides", n_per_class=2, size=64)
    code = cli.main(["train", "--labels", str(labels), "--out", str(tmp_path / "run"), "--model", "smallnet",
                     "--model-arg", "width=100000", "--device", "cpu"])
    assert code == cli.EXIT_USAGE and "width=100000 must be an integer from 1 to 4096" in capsys.readouterr().err
