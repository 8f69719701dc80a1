"""Checkpoints: round trip, verification, atomic writes (state dicts from elsewhere: test_state_dicts.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from engine.errors import CheckpointError
from engine.io.checkpoints import ModelCard, build_model, load_checkpoint, read_model_card, save_checkpoint
from engine.models import create_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def card() -> ModelCard:
    return ModelCard(architecture="smallnet", classes=("benign", "tumour"), split="stage3",
                     model_kwargs={"width": 4}, input_mpp=0.5, tile_size=512,
                     provenance={"trained_by": "test", "data": "synthetic"})


@pytest.fixture
def model(card):
    torch.manual_seed(0)
    m = build_model(card)
    with torch.no_grad():  # non-trivial BN statistics, so a lost buffer would change outputs
        for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture
def saved(tmp_path, model, card) -> Path:
    save_checkpoint(tmp_path / "ck", model, card)
    return tmp_path / "ck"


def _write_pair(directory: Path, state: dict, card: ModelCard) -> None:
    """Write a weights/card pair directly (bypassing save_checkpoint's checks), with a correct sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    data = safetensors.torch.save({k: v.contiguous() for k, v in state.items()})
    (directory / "model.safetensors").write_bytes(data)
    card = dataclasses.replace(card, sha256=hashlib.sha256(data).hexdigest())
    (directory / "model.json").write_text(json.dumps(card.to_json(), indent=2))


def _outputs(m, seed: int = 1) -> torch.Tensor:
    x = torch.rand(2, 3, 96, 80, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return m(x)


# --- round trip and the card ---------------------------------------------------------------

def test_round_trip_gives_identical_outputs_and_card(saved, model, card):
    weights = saved / "model.safetensors"
    for path in (saved, saved / "model.json", weights):
        loaded, got = load_checkpoint(path)
        assert not loaded.training
        assert torch.equal(_outputs(loaded), _outputs(model))
        assert got == dataclasses.replace(card, sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
        assert (loaded.split, loaded.pool) == (card.split, card.pool)
    assert sorted(p.name for p in saved.iterdir()) == ["model.json", "model.safetensors"]


def test_card_is_indented_human_readable_json(saved, card):
    text = (saved / "model.json").read_text(encoding="utf-8")
    assert '\n  "architecture": "smallnet",\n' in text and text.endswith("}\n")
    d = json.loads(text)
    assert d["classes"] == ["benign", "tumour"] and d["input_mpp"] == 0.5 and d["model_kwargs"] == {"width": 4}
    assert d["provenance"] == {"trained_by": "test", "data": "synthetic"} and len(d["sha256"]) == 64
    assert ModelCard.from_json(card.to_json()) == card
    assert read_model_card(saved).classes == ("benign", "tumour")


def test_read_model_card_does_not_import_torch(saved):
    code = ("import sys; from engine.io.checkpoints import read_model_card\n"
            f"c = read_model_card({str(saved)!r}); assert c.architecture == 'smallnet'\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("field_name,value", [
    ("classes", ()), ("classes", ("a", "a")), ("pool", "mean"), ("input_mpp", -1.0), ("input_level", -1),
    ("normalization_std", (0.5, 0.0, 0.5)), ("tile_size", 0), ("model_kwargs", {"split": "stage2"}),
    ("sha256", "abc"), ("provenance", {"when": float("nan")}),
])
def test_card_refuses_invalid_fields(card, field_name, value):
    with pytest.raises(CheckpointError, match=f"field '{field_name}'"):
        dataclasses.replace(card, **{field_name: value})


# --- verification on load --------------------------------------------------------------------

def test_modified_weights_fail_the_sha256_check(saved):
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 mismatch for .*model\.safetensors.*re-export"):
        load_checkpoint(saved)


def test_truncated_weights_are_refused_even_with_a_matching_sha256(saved, card):
    weights = saved / "model.safetensors"
    truncated = weights.read_bytes()[:-100]
    weights.write_bytes(truncated)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(saved)
    # A card rewritten to match the damaged file: the safetensors parser must still refuse it.
    d = json.loads((saved / "model.json").read_text())
    d["sha256"] = hashlib.sha256(truncated).hexdigest()
    (saved / "model.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        load_checkpoint(saved)


def test_card_without_sha256_is_refused(saved):
    d = json.loads((saved / "model.json").read_text())
    d["sha256"] = ""
    (saved / "model.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="has no sha256"):
        load_checkpoint(saved)


def test_wrong_architecture_is_refused_and_the_right_one_named(tmp_path):
    with torch.device("meta"):
        shapes = create_model("resnet34", num_classes=2).state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    _write_pair(tmp_path, state, ModelCard(architecture="resnet18", classes=("a", "b"), split="layer2"))
    with pytest.raises(CheckpointError, match=r"do not match architecture 'resnet18': unexpected \d+ key\(s\): "
                                              r"layer1\.2\..*look like 'resnet34'"):
        load_checkpoint(tmp_path)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path, model, card):
    state = model.state_dict()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "stage2.0.weight"}, card,
                    r"missing 1 key\(s\): stage2\.0\.weight"),
        "unexpected": ({**state, "extra.weight": torch.zeros(3)}, card, r"unexpected 1 key\(s\): extra\.weight"),
        "classes": (state, dataclasses.replace(card, classes=("a", "b", "c")),
                    r"shape mismatch in 2 key\(s\): fc\.bias, fc\.weight .*expected \(3,\), got \(2,\)"),
        "width": (state, dataclasses.replace(card, model_kwargs={"width": 8}), r"shape mismatch in \d+ key"),
    }
    for name, (weights, c, message) in cases.items():
        _write_pair(tmp_path / name, weights, c)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / name)


@pytest.mark.parametrize("content,message", [
    (b"not json at all", "is not valid JSON"),
    (b"\xff\xfe binary", "is not valid JSON"),
    (b'{"architecture": NaN}', "is not valid JSON"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (b"{}", "field 'format_version'"),
])
def test_garbage_json_is_refused_naming_the_file(saved, content, message):
    (saved / "model.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        read_model_card(saved)
    assert str(saved / "model.json") in str(err.value)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("classes"), r"missing field\(s\) classes"),
    (lambda d: d.update(colour="blue"), r"unknown field\(s\) colour"),
    (lambda d: d.update(classes="tumour"), "field 'classes'"),
    (lambda d: d.update(tile_size=True), "field 'tile_size'"),
    (lambda d: d.update(normalization_mean=[0.5, 0.5]), "field 'normalization_mean'"),
])
def test_invalid_card_fields_are_named_with_the_file(saved, edit, message):
    d = json.loads((saved / "model.json").read_text())
    edit(d)
    (saved / "model.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(saved)
    assert str(saved / "model.json") in str(err.value)


def test_missing_files_are_reported(tmp_path, saved):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model card not found"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="nothing exists at that path"):
        load_checkpoint(tmp_path / "nowhere")
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"weights file not found: .*model\.safetensors"):
        load_checkpoint(saved)


def test_unknown_architecture_or_split_in_the_card(tmp_path, model, card):
    for name, c, message in [("arch", dataclasses.replace(card, architecture="resnet99"), "cannot build 'resnet99'"),
                             ("split", dataclasses.replace(card, split="layer2"), "split 'layer2' is not a stage")]:
        _write_pair(tmp_path / name, model.state_dict(), c)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / name)


# --- saving ------------------------------------------------------------------------------------

def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path, model, card):
    with torch.no_grad():
        model.stage2[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite .*stage2\.0\.weight"):
        save_checkpoint(tmp_path / "ck", model, card)
    assert not (tmp_path / "ck").exists()


def test_save_refuses_a_card_that_does_not_describe_the_model(tmp_path, model, card):
    with pytest.raises(CheckpointError, match=r"the model being saved do not match .*shape mismatch in \d+ key"):
        save_checkpoint(tmp_path, model, dataclasses.replace(card, model_kwargs={"width": 8}))
    with pytest.raises(CheckpointError, match=r"shape mismatch in 2 key\(s\): fc\.bias, fc\.weight"):
        save_checkpoint(tmp_path, model, dataclasses.replace(card, classes=("a", "b", "c")))
    with pytest.raises(CheckpointError, match="card says split='stage2' but the model has 'stage3'"):
        save_checkpoint(tmp_path, model, dataclasses.replace(card, split="stage2"))
    assert list(tmp_path.iterdir()) == []


def _fail(*args, **kwargs):
    raise OSError("disk full (simulated)")


@pytest.mark.parametrize("where", ["serialise", "fsync", "first_replace"])
def test_failed_save_leaves_previous_checkpoint_intact_and_no_temp_files(saved, model, card, monkeypatch, where):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    newer = build_model(card).eval()  # different random weights
    if where == "serialise":
        monkeypatch.setattr(safetensors.torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", _fail)
    else:
        monkeypatch.setattr(os, "replace", _fail)
    with pytest.raises(CheckpointError, match="could not (serialise|write)"):
        save_checkpoint(saved, newer, card)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    loaded, _ = load_checkpoint(saved)
    assert torch.equal(_outputs(loaded), _outputs(model))


def test_save_interrupted_between_the_two_renames_is_refused_not_mixed(saved, card, monkeypatch):
    real_replace, calls = os.replace, []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_fail)
    with pytest.raises(CheckpointError, match="could not write"):
        save_checkpoint(saved, build_model(card), card)
    monkeypatch.undo()
    assert sorted(p.name for p in saved.iterdir()) == ["model.json", "model.safetensors"]
    with pytest.raises(CheckpointError, match="sha256 mismatch"):  # new weights, old card: loud, never mixed
        load_checkpoint(saved)


def test_resave_replaces_the_checkpoint(saved, card):
    newer = build_model(card).eval()
    save_checkpoint(saved, newer, card)
    loaded, _ = load_checkpoint(saved)
    assert torch.equal(_outputs(loaded), _outputs(newer))
    assert sorted(p.name for p in saved.iterdir()) == ["model.json", "model.safetensors"]
