"""The CLI through main(argv): outputs, one failing slide skipped, exit codes."""

from __future__ import annotations

import pytest
from model_fixtures import save_green_detector, write_test_slide

from engine import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write_test_slide(d / "a.svs")
    write_test_slide(d / "b.svs", boxes=())
    (d / "broken.svs").write_bytes(b"\x00" * 4096)
    save_green_detector(d / "model")
    return d


def test_saliency_command_writes_maps_per_slide(files, tmp_path, capsys):
    code = cli.main(["saliency", str(files / "a.svs"), str(files / "b.svs"), "--model", str(files / "model"),
                     "--out", str(tmp_path), "--cell", "16"])
    assert code == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "a.svs: green" in out and "b.svs: other" in out
    for stem in ("a", "b"):
        assert (tmp_path / stem / "maps.npz").exists() and (tmp_path / stem / "prediction.json").exists()
    assert (tmp_path / "a" / "saliency.heatmap.tif").exists() and (tmp_path / "a" / "saliency.values.tif").exists()


def test_a_bad_slide_is_skipped_and_reported(files, tmp_path, capsys):
    code = cli.main(["infer", str(files / "broken.svs"), str(files / "b.svs"), "--model", str(files / "model"),
                     "--out", str(tmp_path)])
    assert code == cli.EXIT_SLIDE
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.svs" in err
    assert (tmp_path / "b" / "maps.npz").exists()


def test_a_bad_model_has_its_own_exit_code(files, tmp_path):
    assert cli.main(["infer", str(files / "a.svs"), "--model", str(tmp_path / "nowhere"),
                     "--out", str(tmp_path)]) == cli.EXIT_MODEL


def test_usage_errors_exit_2(capsys):
    assert cli.main(["infer"]) == cli.EXIT_USAGE


def test_torchrun_environment_shards_slides(files, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code = cli.main(["infer", str(files / "a.svs"), str(files / "b.svs"), "--model", str(files / "model"),
                     "--out", str(tmp_path)])
    assert code == cli.EXIT_OK
    assert not (tmp_path / "a").exists() and (tmp_path / "b" / "maps.npz").exists()


def test_an_unknown_device_is_a_usage_error_naming_the_choices(files, tmp_path, capsys):
    code = cli.main(["infer", str(files / "a.svs"), "--model", str(files / "model"), "--out", str(tmp_path),
                     "--device", "tpu"])
    assert code == cli.EXIT_USAGE
    assert "unknown device 'tpu'; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
