"""Plain state dicts from elsewhere: every format read, bad and malicious files refused, and
pretrained backbones loaded by name."""

from __future__ import annotations

import ast
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

import engine.io.state_dicts as state_dicts
from engine.errors import CheckpointError
from engine.io.checkpoints import ModelCard, build_model
from engine.io.state_dicts import import_state_dict, load_pretrained_backbone
from engine.models import create_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model():
    torch.manual_seed(0)
    card = ModelCard(architecture="smallnet", classes=("benign", "tumour"), split="stage3", model_kwargs={"width": 4})
    return build_model(card).eval()


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
    monkeypatch.setattr(state_dicts, "_refuse_unsafe_pickle", lambda data, path: None)
    for path in files.values():
        with pytest.raises(CheckpointError, match="refused to load"):
            import_state_dict(path)
    assert not marker.exists()


def test_malicious_pickle_never_runs_with_torch_force_no_weights_only_load(malicious):
    # torch reads the variable inside torch.load, so it must be set in the process that loads.
    files, marker = malicious
    code = ("import sys\nfrom engine.io.state_dicts import import_state_dict\nfrom engine.errors import CheckpointError\n"
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


def test_a_checkpoint_with_another_head_loads_its_trunk_and_starts_the_head_afresh(tmp_path):
    """Fine-tuning a StreamSlide attention model as a GeM one (or with another hidden width):
    the trunk's weights load, the head's own parameters keep their initial values."""
    import torch
    from safetensors.torch import save_file

    from engine.io.state_dicts import load_pretrained_backbone
    from engine.models import create_model

    torch.manual_seed(0)
    source = create_model("smallnet", num_classes=2, width=4, head="attention", head_kwargs={"hidden": 16})
    path = tmp_path / "attention.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    for head, kwargs in (("gem", {}), ("attention", {"hidden": 8}), ("max", {})):
        target = create_model("smallnet", num_classes=2, width=4, head=head, head_kwargs=kwargs)
        left = load_pretrained_backbone(target, path)
        trunk_keys = [k for k in target.state_dict() if not k.startswith(("fc.", "pooling."))]
        assert all(torch.equal(target.state_dict()[k], source.state_dict()[k]) for k in trunk_keys)
        assert all(k.startswith(("fc.", "pooling.")) for k in left)
