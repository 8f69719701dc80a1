"""bench/streaming.py --budgets: a budget whose step needs more than the machine has is not run
(the kernel would kill its worker minutes in) and is reported as not run, apart from the targets'
count; --steady times a second full-size step."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
MiB = 2**20


@pytest.fixture
def budgets(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import streaming_budgets

    yield streaming_budgets
    sys.modules.pop("streaming_budgets", None)


def fake_run(ran: list[dict]):
    """Rows as a worker returns them: conventional's tensor peak 1000 MiB; every budget row keeps nothing."""
    def run_config(cfg: dict) -> dict:
        ran.append(cfg)
        row = {"cpu_seconds": 10.0, "sys_seconds": 2.5, "seconds": 5.0, "peak_mib": 1000.0, "tensor_peak_mib": 1000.0,
               "map_mib": 1.0}
        if cfg["method"] == "stream-budget":
            row["plan"] = {"kept": 0, "blocks": 4, "whole_image": False, "tile": (64, 64),
                           "peak_bytes": 100 * MiB, "estimated_peak_bytes": 100 * MiB}
            row["tensor_peak_mib"] = 100.0
        return row
    return run_config


def args_for(levels, steady=False):
    return argparse.Namespace(table_from=None, models=["smallnet"], sizes=[256], tiles=[128], quick=False,
                              device="cpu", autocast=None, threads=1, no_conventional_above=4096, levels=levels,
                              json=None, png=None, steady=steady)


def test_a_step_that_needs_more_than_the_machine_has_is_named_not_run_and_never_started(budgets, monkeypatch, capsys):
    monkeypatch.setattr(budgets, "available_memory_bytes", lambda device: 1000 * MiB)
    # The step needs its budget and 300 MiB besides ("all kept": 2000 MiB).
    monkeypatch.setattr(budgets, "step_need", lambda model, size, tile, budget, device, amp:
                        (2000 * MiB if budget >= budgets.ALL else budget) + 300 * MiB)
    ran: list[dict] = []
    levels = ["tile only", "0.5 conv", "1.0 conv", "all kept"]
    assert budgets.main(args_for(levels), fake_run(ran)) == 0
    started = [c.get("level") for c in ran if c["method"] == "stream-budget"]
    assert started == ["tile only", "0.5 conv"]  # 800 MiB is within 85% of 1000; 1300 and 2300 are not
    out = capsys.readouterr().out
    why = "needs 1300 MiB, more than 85% of the 1000 MiB available"
    assert f"| stream-budget 1.0 conv | 1000 | | | | | | not run: {why} |" in out
    assert "| stream-budget all kept | ∞ | | | | | | not run: needs 2300 MiB" in out
    assert f"- smallnet 256² tile 128 1.0 conv: not run ({why})" in out
    assert "2 budget rows not run (more than the machine's memory)" in out.splitlines()[-1]
    assert "NOT MET (failed" not in out
    assert "| stream-budget tile only | 0 | 64×64 | 0/4 | 100 | 10.0 | 2.5 | 5.00 |" in out  # CPU s, of it sys s, wall s


def test_steady_reaches_every_worker(budgets, monkeypatch):
    monkeypatch.setattr(budgets, "available_memory_bytes", lambda device: 1 << 40)
    monkeypatch.setattr(budgets, "step_need", lambda *a: 0)
    ran: list[dict] = []
    budgets.main(args_for(["tile only"], steady=True), fake_run(ran))
    assert ran and all(c["steady"] for c in ran)


def test_available_memory_is_memavailable_from_meminfo(budgets, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:        1000 kB\nMemAvailable:   20000000 kB\n")
    assert budgets.available_memory_bytes("cpu", meminfo) == 20000000 * 1024
    assert budgets.available_memory_bytes("cpu", tmp_path / "missing") > 256 * MiB  # physical memory instead


def test_step_need_adds_the_input_and_its_gradient_to_the_plan(budgets):
    plan = budgets.whole_image_need("smallnet", 256, 128, "cpu", None)
    assert budgets.step_need("smallnet", 256, 128, budgets.ALL, "cpu", None) == plan + 2 * 3 * 256 * 256 * 4
    assert budgets.step_need("smallnet", 256, 128, 0, "cpu", None) < budgets.step_need("smallnet", 256, 128,
                                                                                        budgets.ALL, "cpu", None)


def _worker(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / "streaming.py"), "--worker", json.dumps(cfg)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_steady_row_times_a_second_step_whose_gradients_are_its_own(tmp_path):
    """--steady runs one full-size step first: the timed step's gradients must still be one
    step's (the first one's are cleared), equal to conventional's."""
    base = dict(mode="train", threads=1, ref_dir=str(tmp_path), device="cpu", autocast=None, tensor_peak=False,
                model="smallnet", size=256)
    _worker(dict(base, method="conventional", tile=None))  # writes the reference gradients
    row = _worker(dict(base, method="stream-budget", tile=128, budget=1 << 44, level="all kept", frac=None,
                       steady=True))
    assert row["grad_err"] < 1e-4
    assert row["first_step_cpu_seconds"] > 0 and "sys_seconds" in row
    plain = _worker(dict(base, method="stream-budget", tile=128, budget=0, level="tile only", frac=0.0))
    assert "first_step_cpu_seconds" not in plain
