"""A training process killed at random moments (SIGKILL: no handler runs) always leaves a complete,
loadable latest checkpoint, and the next run resumes from it; SIGTERM saves and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import write_training_set

from engine import cli
from engine.io.checkpoints import load_checkpoint
from engine.io.training_state import find_checkpoint, load_training_state
from engine.models import create_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("slides"), n_per_class=2, size=64)


def start(labels, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine", "train", "--labels", str(labels), "--model", "smallnet",
                             "--model-arg", "width=4", "--input-size", "64", "--tile", "64", "--epochs", "100000",
                             "--checkpoint-every", "1", "--device", "cpu", "--resume", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def assert_loadable(out: Path) -> int:
    found = find_checkpoint(out / "last")
    assert found is not None
    load_checkpoint(found)
    model = create_model("smallnet", width=4, num_classes=2)
    opt = torch.optim.AdamW(model.parameters())
    return load_training_state(found, model, optimizer=opt)["global_step"]


def test_kill_9_at_random_moments_always_leaves_a_loadable_checkpoint(labels, tmp_path):
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(10):
        proc = start(labels, tmp_path / "run")
        try:
            assert "saved last checkpoint" in proc.stdout.readline()
            try:  # let it run on for a random moment: mid-step, mid-save or between
                proc.wait(timeout=float(rng.uniform(0.0, 1.0)))
            except subprocess.TimeoutExpired:
                pass
            assert proc.poll() is None, "training ended by itself"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        steps.append(assert_loadable(tmp_path / "run"))
    assert steps == sorted(steps) and steps[-1] > steps[0]  # every run resumed where the last one stopped


def test_sigterm_saves_at_the_next_step_and_exits_as_cancelled(labels, tmp_path):
    proc = start(labels, tmp_path / "run")
    try:
        line = proc.stdout.readline()
        saved_step = int(line.split("(step ")[1].split(")")[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == cli.EXIT_CANCELLED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert assert_loadable(tmp_path / "run") >= saved_step  # saved again where it stopped
