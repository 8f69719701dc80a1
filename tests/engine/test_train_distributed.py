"""Two CPU ranks with gloo under torchrun train to the same weights as one process with the same
effective batch (two slides per optimiser step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_fixtures import write_training_set

from engine.api import run_training
from engine.io.checkpoints import load_checkpoint
from engine.specs import TrainingSpec

ROOT = Path(__file__).resolve().parents[2]


def test_two_gloo_ranks_equal_one_process_with_the_same_effective_batch(tmp_path):
    labels = write_training_set(tmp_path / "slides", n_per_class=3, size=96, val_per_class=1)
    common = ["--labels", str(labels), "--model", "smallnet", "--model-arg", "width=4", "--input-size", "96",
              "--tile", "64", "--epochs", "1", "--lr", "0.003", "--dtype", "float64", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "engine", "train", *common, "--out", str(tmp_path / "ddp")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    spec = TrainingSpec(labels=str(labels), out_dir=str(tmp_path / "single"), model="smallnet",
                        model_kwargs={"width": 4}, input_size=96, tile_size=64, epochs=1, lr=0.003,
                        dtype="float64", device="cpu", accumulate=2)
    run_training(spec, lambda e: None)
    load_checkpoint(tmp_path / "ddp" / "last")  # a complete, verified checkpoint
    # Compare the saved float64 tensors themselves (load_checkpoint builds a float32 model).
    a = load_file(tmp_path / "ddp" / "last" / "model.safetensors")
    b = load_file(tmp_path / "single" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and a["stage1.0.weight"].dtype == torch.float64
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-13, msg=k)
    rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3  # two steps of two slides, one validation: written once, by rank 0


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def test_a_rank_that_dies_fails_the_job_instead_of_hanging(tmp_path):
    if not Path("/proc/self/task").exists():
        import pytest

        pytest.skip("needs /proc to find the worker processes")
    labels = write_training_set(tmp_path / "slides", n_per_class=2, size=96)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "engine", "train", "--labels", str(labels), "--model", "smallnet",
                             "--model-arg", "width=4", "--input-size", "96", "--tile", "64", "--epochs", "1000",
                             "--checkpoint-every", "1", "--device", "cpu", "--out", str(tmp_path / "run")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "saved last checkpoint" in proc.stdout.readline()  # both ranks are in the training loop
        workers = {_rank_of(p): p for p in _children(proc.pid)}
        os.kill(workers[1], 9)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
