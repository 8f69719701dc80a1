"""bench/streaming.py --budgets: a budget larger than the machine's memory is not run (the kernel
would kill its worker minutes in) and is reported as not run, apart from the targets' count."""

from __future__ import annotations

import argparse
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
        row = {"cpu_seconds": 10.0, "sys_seconds": 2.5, "seconds": 5.0, "peak_mib": 1000.0, "tensor_peak_mib": 1000.0, "map_mib": 1.0}
        if cfg["method"] == "stream-budget":
            row["plan"] = {"kept": 0, "blocks": 4, "whole_image": False, "tile": (64, 64),
                           "peak_bytes": 100 * MiB, "estimated_peak_bytes": 100 * MiB}
            row["tensor_peak_mib"] = 100.0
        return row
    return run_config


def test_a_budget_above_the_machines_memory_is_named_not_run_and_never_started(budgets, monkeypatch, capsys):
    monkeypatch.setattr(budgets, "machine_memory_bytes", lambda device: 600 * MiB)
    args = argparse.Namespace(table_from=None, models=["smallnet"], sizes=[256], tiles=[128], quick=False,
                              device="cpu", autocast=None, threads=1, no_conventional_above=4096,
                              levels=["tile only", "0.5 conv", "1.0 conv"], json=None, png=None, steady=False)
    ran: list[dict] = []
    assert budgets.main(args, fake_run(ran)) == 0
    started = [c.get("level") for c in ran if c["method"] == "stream-budget"]
    assert started == ["tile only", "0.5 conv"]  # 500 MiB fits in 600; 1000 MiB does not
    out = capsys.readouterr().out
    assert "| stream-budget 1.0 conv | 1000 | | | | | not run: the budget is more than this machine's 600 MiB |" in out
    assert "- smallnet 256² tile 128 1.0 conv: not run (the budget is more than this machine's 600 MiB)" in out
    assert "1 budget rows not run (more than the machine's memory)" in out.splitlines()[-1]
    assert "NOT MET (failed" not in out
    assert "| stream-budget tile only | 0 | 64×64 | 0/4 | 100 | 10.0 | 2.5 | 5.00 |" in out  # CPU s, of it sys s, wall s


def test_the_machines_memory_is_its_physical_memory_on_cpu(budgets):
    total = budgets.machine_memory_bytes("cpu")
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        assert total == pytest.approx(kib * 1024, rel=0.01)
    assert total > 256 * MiB


def _worker(cfg: dict) -> dict:
    import json
    import subprocess

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
    assert 0.0 <= row["sys_seconds"] <= row["cpu_seconds"]
