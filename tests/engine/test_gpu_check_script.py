"""bench/gpu_check.sh: valid bash, and its CPU version (the same steps, tiny) runs and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_cpu_smoke_version_runs_every_step_and_writes_under_out(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable,
               PYTHONPATH=str(SCRIPT.parents[1]))
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (tmp_path / "gpu_check.log").read_text()
    assert "ok streaming cpu float32" in log and "ok streaming cpu torch.bfloat16" in log
    assert "all device paths passed" in log
    rows = json.loads((tmp_path / "budgets-cpu.json").read_text())
    methods = {r["method"] + " " + r.get("level", "") for r in rows}
    assert {"conventional ", "checkpoint ", "stream ", "stream-budget tile only", "stream-budget 0.5 conv"} <= methods
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    assert "| stream-budget tile only |" in log.replace("smallnet | 256² | 128 | ", "| ")
