"""Checkpoints: round trip, verification, atomic writes, and safe import of pickled state dicts."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

import engine.io.checkpoints as ckpt
from engine.io.checkpoints import (ModelCard, build_model, import_state_dict, load_checkpoint,
                                load_pretrained_backbone, read_model_card, save_checkpoint)
from engine.errors import CheckpointError
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


# --- importing plain state dicts ---------------------------------------------------------------

def test_import_state_dict_reads_every_format_and_unwraps(tmp_path, model):
    state = model.state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pt")
    torch.save({"model": state}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    for name in ("w.safetensors", "plain.pth", "wrapped.pt", "legacy.bin"):
        got = import_state_dict(tmp_path / name)
        assert got.keys() == state.keys(), name
        assert all(torch.equal(got[k], state[k]) for k in state), name


def test_import_state_dict_refuses_bad_files(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:500])
    safetensors.torch.save_file({"w": torch.zeros(100)}, tmp_path / "cut.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "cut.safetensors").read_bytes()[:-8])
    torch.save({"w": torch.zeros(1), "note": "text"}, tmp_path / "mixed.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    (tmp_path / "w.onnx").write_bytes(b"onnx")
    for name, message in [("cut.pt", "refused to load"), ("cut.safetensors", "not a readable safetensors"),
                          ("mixed.pt", "entry 'note' is a str, not a tensor"), ("list.pt", "holds a list"),
                          ("w.onnx", "unsupported weights file type '.onnx'"), ("absent.pt", "not found")]:
        with pytest.raises(CheckpointError, match=message) as err:
            import_state_dict(tmp_path / name)
        assert name in str(err.value)


# --- malicious pickles ----------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs code: it creates the marker file. Only ever unpickled unsafely on purpose."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def malicious(tmp_path) -> tuple[dict[str, Path], Path]:
    """Malicious files in each pickle layout torch.load accepts, and the marker their payload would create."""
    marker = tmp_path / "PAYLOAD_RAN"
    obj = {"conv.weight": torch.zeros(2), "x": _Payload(marker)}
    files = {"zip": tmp_path / "zip.pth", "zip_protocol4": tmp_path / "zip4.pth",
             "legacy": tmp_path / "legacy.pt", "raw_protocol2": tmp_path / "raw2.bin",
             "raw_protocol5": tmp_path / "raw5.bin"}
    torch.save(obj, files["zip"])
    torch.save(obj, files["zip_protocol4"], pickle_protocol=4)
    torch.save(obj, files["legacy"], _use_new_zipfile_serialization=False)
    files["raw_protocol2"].write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    files["raw_protocol5"].write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=5))
    return files, marker


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_malicious_files_really_run_their_payload_when_unpickled_unsafely(malicious):
    # Positive control, so the refusal tests below cannot pass on harmless files.
    files, marker = malicious
    pickle.loads(files["raw_protocol5"].read_bytes())
    assert marker.exists()
    marker.unlink()
    with zipfile.ZipFile(files["zip"]) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    unpickler = pickle.Unpickler(io.BytesIO(data))
    # Uninitialised storages of the recorded dtype and size: the bytes are irrelevant to the payload.
    unpickler.persistent_load = lambda pid: torch.storage.TypedStorage(pid[4], dtype=pid[1].dtype)
    unpickler.load()
    assert marker.exists()


def test_malicious_pickle_is_refused_naming_the_global_and_never_runs(malicious):
    files, marker = malicious
    for name, path in files.items():
        with pytest.raises(CheckpointError, match=r"refused to load .*exec") as err:
            import_state_dict(path)
        assert str(path) in str(err.value), name
        assert not marker.exists(), f"payload ran for {name}"


def test_malicious_pickle_is_refused_before_torch_load_is_called(malicious, monkeypatch):
    files, marker = malicious

    def must_not_run(*args, **kwargs):
        raise AssertionError("torch's loader reached for a file the scan should have refused")

    monkeypatch.setattr(torch, "load", must_not_run)
    for path in files.values():
        with pytest.raises(CheckpointError, match="which a plain state dict never needs"):
            import_state_dict(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_only_load_alone_still_refuses_when_the_scan_is_bypassed(malicious, monkeypatch):
    # Defence in depth: with the static scan disabled, torch's weights-only unpickler must refuse.
    files, marker = malicious
    monkeypatch.setattr(ckpt, "_refuse_unsafe_pickle", lambda data, path: None)
    for path in files.values():
        with pytest.raises(CheckpointError, match="refused to load"):
            import_state_dict(path)
    assert not marker.exists()


def test_malicious_pickle_never_runs_with_torch_force_no_weights_only_load(malicious):
    # torch reads the variable inside torch.load, so it must be set in the process that loads.
    files, marker = malicious
    code = ("import sys\nfrom engine.io.checkpoints import import_state_dict\nfrom engine.errors import CheckpointError\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n        import_state_dict(p)\n        print('LOADED', p)\n"
            "    except CheckpointError as e:\n        print('REFUSED', p)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    out = subprocess.run([sys.executable, "-c", code, *map(str, files.values())], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.count("REFUSED") == len(files) and "LOADED" not in out, out
    assert not marker.exists()


def test_engine_never_unpickles_outside_weights_only_torch_load():
    # The CI grep, as a test: every torch.load passes weights_only=True literally; no pickle module.
    for path in sorted((ROOT / "engine").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & {n.split(".")[0] for n in names}, path
                assert not (getattr(node, "module", None) == "torch" and "load" in names), path  # keep calls greppable
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == "load" and ast.unparse(func.value) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path}:{node.lineno} calls a pickle loader without weights_only=True"


# --- pretrained backbones -------------------------------------------------------------------------

def test_load_pretrained_backbone_from_imagenet_style_file(tmp_path):
    torch.manual_seed(0)
    imagenet = create_model("resnet18", num_classes=1000)
    # As old torchvision files: no num_batches_tracked; as a DataParallel training script: wrapped, prefixed.
    state = {f"module.{k}": v for k, v in imagenet.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "epoch": 90}, tmp_path / "resnet18.pth")
    ours = create_model("resnet18", num_classes=2, split="layer2")
    fc_before = ours.fc.weight.clone()
    assert load_pretrained_backbone(ours, tmp_path / "resnet18.pth") == ["fc.bias", "fc.weight"]
    assert torch.equal(ours.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight)
    assert torch.equal(ours.bn1.running_var, imagenet.bn1.running_var)
    assert torch.equal(ours.fc.weight, fc_before)
    with pytest.raises(CheckpointError, match=r"fc\.weight has shape \(1000, 512\), model has \(2, 512\)"):
        load_pretrained_backbone(ours, tmp_path / "resnet18.pth", skip_classifier=False)


def test_load_pretrained_backbone_refuses_missing_or_foreign_keys(tmp_path, model):
    state = model.state_dict()
    torch.save({k: v for k, v in state.items() if k != "stage1.0.weight"}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing stage1\.0\.weight"):
        load_pretrained_backbone(model, tmp_path / "missing.pt")
    torch.save(create_model("smallnet", width=8).state_dict(), tmp_path / "wider.pt")
    with pytest.raises(CheckpointError, match=r"stage1\.0\.weight has shape \(8, 3, 3, 3\)"):
        load_pretrained_backbone(model, tmp_path / "wider.pt")
    torch.save({**state, "head.extra": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): head\.extra"):
        load_pretrained_backbone(model, tmp_path / "extra.pt")
