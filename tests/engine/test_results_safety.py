"""Results that never escape their folder, never mix two runs and say when a run was cancelled
(issue 15: class names as paths, colliding slide names, cancelled runs over older results,
permissions, write failures)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ResultsError
from engine.events import Prediction
from engine.io import maps as maps_io
from engine.io.maps import MapLayer, read_maps, write_maps
from engine.io.paths import file_parts, safe_child, slide_folder_names

HOSTILE = ["../../../../escaped/x", "tumour/necrosis", "", "naïve ünïcode", "x" * 1000, "..", "a\\b", "CON"]


def _files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _tiffs(*labels):
    """The registered TIFFs of each plane label: its RGBA heatmap and its float values."""
    return [f"{label}.{kind}.tif" for label in labels for kind in ("heatmap", "values")]


def _layers(k=2, h=4, w=6, saliency=True):
    layers = {"prediction": MapLayer(np.full((k, h, w), 0.5, np.float32), (0, 0, 96, 64))}
    if saliency:
        layers["saliency"] = MapLayer(np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w), (0, 0, 96, 64))
    return layers


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", "/tmp/x", "a\\b", "x\x00y"])
def test_safe_child_refuses_names_that_are_paths(tmp_path, name):
    with pytest.raises(ResultsError, match="refused to write"):
        safe_child(tmp_path, name)
    assert safe_child(tmp_path, "maps.npz") == tmp_path / "maps.npz"


def test_file_parts_keep_plain_names_and_index_all_others():
    assert file_parts(["benign", "tumour_2", "grade-3"]) == ["benign", "tumour_2", "grade-3"]
    for name in HOSTILE:
        assert file_parts(["benign", name]) == ["00", "01"]
    assert file_parts(["benign", "Benign"]) == ["00", "01"]  # one file on a case-insensitive disk
    assert file_parts([f"c{i}" for i in range(120)])[:2] == ["c0", "c1"]
    assert file_parts(["a/b"] * 1 + [f"c{i}" for i in range(119)])[0] == "000"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_class_names_never_become_paths_and_are_kept_inside_the_files(tmp_path, hostile):
    out = tmp_path / "deep" / "er" / "out"
    classes = ("benign", hostile)
    written = write_maps(out, _layers(), slide_path="s.svs", classes=classes,
                         prediction=Prediction(classes, (0.25, 0.75)))
    assert _files_under(tmp_path) == sorted(f"deep/er/out/{n}" for n in (
        "maps.npz", "prediction.json", *_tiffs("prediction_00", "prediction_01", "saliency")))
    doc = json.loads((out / "prediction.json").read_text())
    assert doc["classes"] == list(classes) and doc["label"] == hostile
    for kind in ("heatmap", "values"):
        assert doc["files"][f"prediction_01.{kind}.tif"] == {"layer": "prediction", "class": hostile, "kind": kind}
    layers, meta = read_maps(out)
    assert meta["files"] == doc["files"] and meta["classes"] == list(classes)
    assert set(written) == {"maps_npz", "prediction_json", *(f"{label}_{kind}_tiff" for label in ("prediction_00", "prediction_01", "saliency")
                                                             for kind in ("heatmap", "values"))}


def test_a_layer_name_that_is_a_path_is_refused(tmp_path):
    with pytest.raises(ResultsError, match="layer names"):
        write_maps(tmp_path / "out", {"../x": _layers()["saliency"]}, slide_path="s", classes=(), prediction=None)
    assert not any(p.name.startswith("x.") for p in tmp_path.rglob("*"))


def test_a_result_replaces_an_earlier_one_whole_with_one_run_id(tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")  # the user's own file in the folder stays
    write_maps(out, _layers(k=3), slide_path="s", classes=("a", "b", "c"), prediction=Prediction(("a", "b", "c"), (0.2, 0.3, 0.5)),
               extra={"cancelled": False})
    write_maps(out, _layers(k=2, saliency=False), slide_path="s", classes=("x", "y"), prediction=None,
               extra={"cancelled": True})
    assert _files_under(out) == ["maps.npz", "notes.txt", "prediction.json", *_tiffs("prediction_x", "prediction_y")]
    doc = json.loads((out / "prediction.json").read_text())
    _, meta = read_maps(out)
    assert doc["cancelled"] is True and meta["cancelled"] is True
    assert doc["probabilities"] is None and doc["label"] is None  # not the earlier run's numbers
    assert doc["run_id"] == meta["run_id"] and len(doc["run_id"]) == 32


def test_the_files_of_an_older_format_result_are_removed_too(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    meta = {"slide": "s", "classes": ["benign", "tumour"], "layers": ["prediction", "saliency"]}  # no "files"
    np.savez(out / "maps.npz", meta_json=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    for name in ("prediction_benign.tif", "prediction_tumour.tif", "saliency.tif", "other.tif"):
        (out / name).write_bytes(b"old")
    write_maps(out, _layers(saliency=False), slide_path="s", classes=("n", "l"), prediction=None)
    assert _files_under(out) == ["maps.npz", "other.tif", "prediction.json", *_tiffs("prediction_l", "prediction_n")]


def test_a_record_naming_paths_outside_the_folder_removes_nothing_there(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.tif"
    victim.write_bytes(b"keep")
    (out / "prediction.json").write_text(json.dumps({"files": {"../victim.tif": {}, "/etc/x.tif": {}}}))
    write_maps(out, _layers(saliency=False), slide_path="s", classes=("n", "l"), prediction=None)
    assert victim.read_bytes() == b"keep"


def test_result_files_are_written_0644_under_the_default_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        written = write_maps(tmp_path / "out", _layers(), slide_path="s", classes=("a", "b"),
                             prediction=Prediction(("a", "b"), (0.5, 0.5)))
    finally:
        os.umask(previous)
    modes = {kind: stat.S_IMODE(os.stat(path).st_mode) for kind, path in written.items()}
    assert set(modes.values()) == {0o644}, modes


def test_a_failed_write_keeps_the_earlier_result_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_maps(out, _layers(), slide_path="s", classes=("a", "b"), prediction=Prediction(("a", "b"), (0.9, 0.1)))
    before = {p: (out / p).read_bytes() for p in _files_under(out)}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(ResultsError, match=r"maps\.npz: the disk is full"):
        write_maps(out, _layers(k=2, saliency=False), slide_path="s", classes=("x", "y"), prediction=None)
    assert {p: (out / p).read_bytes() for p in _files_under(out)} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporary files either


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs root); unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "tiny"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_result(tiny_disk):
    rng = np.random.default_rng(0)
    noisy = {"saliency": MapLayer(rng.random((256, 256), dtype=np.float32), (0, 0, 2048, 2048))}
    with pytest.raises(ResultsError, match="the disk is full"):
        write_maps(tiny_disk / "out", noisy, slide_path="s", classes=(), prediction=None)
    assert _files_under(tiny_disk) == []


def test_slide_folders_are_unique_even_when_slide_names_collide(tmp_path):
    for sub in ("s1", "s2", "s3"):
        (tmp_path / sub).mkdir()
    slides = [str(tmp_path / "s1" / "slide.svs"), str(tmp_path / "s2" / "slide.svs"), str(tmp_path / "s3" / "Slide.svs"),
              str(tmp_path / "other.svs"), str(tmp_path / "s1" / ".." / "s1" / "slide.svs"), str(tmp_path / "bad name!.svs")]
    names = slide_folder_names(slides)
    assert names[3] == "other"
    assert len({names[0], names[1], names[2]}) == 3 and all(n.lower().startswith("slide-") for n in names[:3])
    assert names[4] == names[0]  # the same file, listed twice, is one folder
    assert names[5].startswith("slide-") and len(names[5]) == len("slide-") + 8


def test_read_maps_still_reads_results_of_the_earlier_format(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    meta = {"slide": "s", "classes": ["a"], "layers": ["saliency"], "cancelled": False}
    np.savez(out / "maps.npz", saliency=np.zeros((2, 2), np.float32), saliency_l0_box=np.array([0, 0, 2, 2.0]),
             meta_json=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    layers, got = read_maps(out)
    assert got == meta and layers["saliency"].values.shape == (2, 2)
    assert maps_io.recorded_slide(out) is None


def test_hostile_class_names_from_a_model_card_stay_inside_out_through_the_cli(tmp_path):
    from model_fixtures import green_detector, save_green_detector, write_test_slide

    from engine import cli
    from engine.io.checkpoints import read_model_card, save_checkpoint

    save_green_detector(tmp_path / "plain")
    card = dataclasses.replace(read_model_card(tmp_path / "plain"), classes=("../../../../escaped/x", "tumour/necrosis"),
                               sha256="")
    save_checkpoint(tmp_path / "model", green_detector(), card)
    write_test_slide(tmp_path / "a.svs")
    out = tmp_path / "results"
    assert cli.main(["infer", str(tmp_path / "a.svs"), "--model", str(tmp_path / "model"), "--out", str(out),
                     "--device", "cpu"]) == cli.EXIT_OK
    assert not any(p.name == "escaped" for p in tmp_path.parent.rglob("escaped"))
    files = [f for f in _files_under(out) if not f.endswith("summary.json")]
    assert all(f.split("/")[-1] in ("maps.npz", "prediction.json", *_tiffs("prediction_00", "prediction_01"))
               for f in files), files
    doc = json.loads(next(out.rglob("prediction.json")).read_text())
    assert doc["label"] == "tumour/necrosis"


@pytest.fixture(scope="module")
def job_files(tmp_path_factory):
    from model_fixtures import save_green_detector, write_test_slide

    d = tmp_path_factory.mktemp("jobs")
    write_test_slide(d / "green.svs")
    save_green_detector(d / "model")
    return d


def _cancel_after_patches(n):
    from engine.events import CancelToken, MapPatch

    token, seen = CancelToken(), []

    def on_event(e):
        if isinstance(e, MapPatch):
            seen.append(e)
            if len(seen) == n:
                token.cancel()

    return token, on_event


def test_a_cancelled_job_over_an_earlier_result_is_marked_in_every_file(job_files, tmp_path):
    from engine.api import run_inference
    from engine.specs import InferenceSpec

    spec = InferenceSpec(slide_path=str(job_files / "green.svs"), model_path=str(job_files / "model"),
                         l0_region=(0, 0, 1024, 768), out_dir=str(tmp_path / "out"), device="cpu")
    full = run_inference(spec, lambda e: None)
    assert not full.cancelled and json.loads((tmp_path / "out" / "prediction.json").read_text())["label"] == "green"
    token, on_event = _cancel_after_patches(1)
    result = run_inference(spec, on_event, token)
    assert result.cancelled
    doc = json.loads(Path(result.outputs["prediction_json"]).read_text())
    layers, meta = read_maps(result.outputs["maps_npz"])
    assert doc["cancelled"] is True and meta["cancelled"] is True and doc["run_id"] == meta["run_id"]
    assert doc["probabilities"] is None and doc["label"] is None  # not the earlier run's prediction
    # saliency was never computed: NaN (transparent), not 0 ("no gradient")
    assert np.isnan(layers["saliency"].values).all()
    assert np.isnan(layers["prediction"].values).any() and np.isfinite(layers["prediction"].values).any()


def test_the_cli_reports_a_read_only_out_and_a_file_in_the_way_with_the_write_exit_code(job_files, tmp_path, capsys):
    from engine import cli

    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    ro = tmp_path / "ro"
    ro.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        argv = ["infer", str(job_files / "green.svs"), "--model", str(job_files / "model"), "--device", "cpu"]
        assert cli.main([*argv, "--out", str(ro)]) == cli.EXIT_WRITE
        err = capsys.readouterr().err
        assert "read-only; choose a writable folder" in err and "forward" not in err  # refused before any work
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    (tmp_path / "afile").write_text("x")
    assert cli.main([*argv, "--out", str(tmp_path / "afile")]) == cli.EXIT_WRITE
    err = capsys.readouterr().err
    assert "a file of that name is in the way" in err and "forward" not in err


def test_a_folder_holding_another_slides_results_is_never_reused(tmp_path):
    from engine.io.call_summary import SlideOutcome, output_folders, write_summary

    for sub in ("s1", "s2"):
        (tmp_path / sub).mkdir()
    first, second = str(tmp_path / "s1" / "slide.svs"), str(tmp_path / "s2" / "slide.svs")
    out = tmp_path / "out"
    [a] = output_folders(out, [first])
    assert a == out / "slide"
    write_maps(a, _layers(saliency=False), slide_path=first, classes=("n", "l"), prediction=None,
               extra={"slide_resolved": str(Path(first).resolve())})
    assert output_folders(out, [first]) == [a]  # the same slide again: its own folder
    [b] = output_folders(out, [second])  # a later call, another slide of the same name
    assert b != a and b.parent == out and b.name.startswith("slide-")
    summary = write_summary(out, "infer", "m", [SlideOutcome(first, a.name, "done", "l")])
    doc = json.loads(summary.read_text())
    assert doc["slides"][0]["folder"] == "slide" and doc["slides"][0]["status"] == "done" and not doc["cancelled"]


def test_two_slides_of_the_same_name_in_one_call_get_their_own_folders_and_a_summary(job_files, tmp_path, capsys):
    import shutil

    from engine import cli

    for sub in ("s1", "s2"):
        (tmp_path / sub).mkdir()
    shutil.copy(job_files / "green.svs", tmp_path / "s1" / "slide.svs")
    from model_fixtures import write_test_slide

    write_test_slide(tmp_path / "s2" / "slide.svs", boxes=())
    out = tmp_path / "out"
    code = cli.main(["infer", str(tmp_path / "s1" / "slide.svs"), str(tmp_path / "s2" / "slide.svs"),
                     "--model", str(job_files / "model"), "--out", str(out), "--device", "cpu"])
    assert code == cli.EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["slides"]
    assert [r["status"] for r in rows] == ["done", "done"] and [r["label"] for r in rows] == ["green", "other"]
    assert len({r["folder"] for r in rows}) == 2
    for row in rows:
        doc = json.loads((out / row["folder"] / "prediction.json").read_text())
        assert doc["slide"] == row["slide"] and doc["label"] == row["label"]  # neither replaced the other
    # A later call with the first slide reuses its folder; never the other slide's
    assert cli.main(["infer", str(tmp_path / "s2" / "slide.svs"), "--model", str(job_files / "model"),
                     "--out", str(out), "--device", "cpu"]) == cli.EXIT_OK
    again = json.loads((out / "summary.json").read_text())["slides"][0]
    assert again["folder"] == rows[1]["folder"]


def test_a_cancelled_cli_call_is_marked_in_its_summary(job_files, tmp_path, monkeypatch):
    from engine import cli
    from engine.events import MapPatch

    def cancel_at_first_patch(spec, bar, token):
        def on_event(e):
            bar(e)
            if isinstance(e, MapPatch):
                token.cancel()
        from engine.api import run_inference

        return run_inference(spec, on_event, token)

    monkeypatch.setattr(cli, "_run_one", cancel_at_first_patch)
    out = tmp_path / "out"
    assert cli.main(["saliency", str(job_files / "green.svs"), "--model", str(job_files / "model"), "--out", str(out),
                     "--device", "cpu"]) == cli.EXIT_CANCELLED
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cancelled"] is True and summary["slides"][0]["status"] == "cancelled"
    folder = out / summary["slides"][0]["folder"]
    assert json.loads((folder / "prediction.json").read_text())["cancelled"] is True
    assert read_maps(folder)[1]["cancelled"] is True


@pytest.mark.parametrize("what, rgb", [
    ("white", np.full((512, 512, 3), 255, np.uint8)),
    ("tiny", np.full((16, 16, 3), (150, 90, 170), np.uint8)),
])
def test_a_slide_without_tissue_or_too_small_gets_a_warning(job_files, tmp_path, capsys, what, rgb):
    from engine import cli
    from engine.api import run_inference
    from engine.io.svs import write_svs_array
    from engine.specs import InferenceSpec

    slide = write_svs_array(tmp_path / f"{what}.svs", rgb, mpp=0.5, tile=16 if what == "tiny" else 256, downsamples=(1,))
    done = run_inference(InferenceSpec(slide_path=str(slide), model_path=str(job_files / "model"), device="cpu",
                                       out_dir=str(tmp_path / "api")), lambda e: None)
    words = "no tissue found" if what == "white" else "smaller than the model's receptive field"
    assert any(words in w for w in done.warnings), done.warnings
    assert any(words in w for w in json.loads((tmp_path / "api" / "prediction.json").read_text())["warnings"])
    assert cli.main(["infer", str(slide), "--model", str(job_files / "model"), "--out", str(tmp_path / "cli"),
                     "--device", "cpu"]) == cli.EXIT_OK
    assert f"warning: {slide}: " in capsys.readouterr().err
    assert any(words in w for w in json.loads((tmp_path / "cli" / "summary.json").read_text())["slides"][0]["warnings"])


def test_a_slide_with_tissue_gets_no_warning(job_files):
    from engine.api import run_inference
    from engine.specs import InferenceSpec

    done = run_inference(InferenceSpec(slide_path=str(job_files / "green.svs"), model_path=str(job_files / "model"),
                                       device="cpu", saliency=False), lambda e: None)
    assert done.warnings == ()
