"""The device and mixed-precision paths of streaming, training and inference, checked on one
device (bench/gpu_check.sh runs it on CUDA; ``--device cpu`` is its quick CPU version).

Each check prints one line "ok ..." or raises; the exit status says whether all passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def rel_err(a, b) -> float:
    scale = b.abs().max().item()
    return (a.float() - b.float()).abs().max().item() / (scale if scale > 0 else 1.0)


def check_streaming(device, amp, size: int) -> None:
    from engine.models import create_model
    from engine.streaming import StreamHooks, StreamingModule

    torch.manual_seed(0)
    trunk = create_model("smallnet", width=8).eval().trunk().to(device)
    x = torch.randn(1, 3, size, size, device=device)
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else torch.enable_grad
    with ctx():
        xr = x.clone().requires_grad_(True)
        y_ref = trunk(xr.contiguous(memory_format=torch.channels_last))
    y_ref.float().square().sum().backward()
    stream = StreamingModule(trunk, size // 2)
    eb = 2 if amp else 4
    p0 = stream.graph_plan((size, size), graph_budget=0, element_bytes=eb)
    some = p0.peak_bytes  # one block kept, on the same tiles as "none" (larger blocks would not fit)
    results = {}
    for name, budget in (("none", 0), ("some", some), ("all", 1 << 44)):
        trunk.zero_grad()
        xs = x.clone().requires_grad_(True)
        with ctx():
            y = stream(xs, hooks=StreamHooks(graph_budget=budget))
        y.float().square().sum().backward()
        tol = 5e-2 if amp else 1e-3
        assert rel_err(y, y_ref) < tol, (name, rel_err(y, y_ref))
        assert rel_err(xs.grad, xr.grad) < tol, (name, rel_err(xs.grad, xr.grad))
        results[name] = (xs.grad.clone(), trunk.stage1[0].weight.grad.clone())
        with torch.no_grad(), ctx():  # inference: no graph, nothing kept
            assert rel_err(stream(x), y_ref) < tol
    assert torch.equal(results["none"][0], results["some"][0]), "a kept graph must give the recomputation's bits"
    print(f"ok streaming {device} {amp or 'float32'} {size}²: budgets none/some/all match conventional", flush=True)


def check_training(device, amp_on: bool) -> None:
    from train_fixtures import write_training_set

    from engine.api import plan_training, run_training
    from engine.events import Metrics
    from engine.specs import TrainingSpec

    with tempfile.TemporaryDirectory() as tmp:
        labels = write_training_set(Path(tmp) / "slides", n_per_class=2, size=96, val_per_class=1)
        spec = TrainingSpec(labels=str(labels), out_dir=str(Path(tmp) / "run"), model="smallnet",
                            model_kwargs={"width": 4}, input_size=96, tile_size=64, epochs=1, device=str(device),
                            mixed_precision=amp_on, graph_budget="auto")
        plan = plan_training(spec)
        losses = {}
        for budget in ("auto", 0):
            events = []
            run_training(dataclasses.replace(spec, graph_budget=budget, out_dir=str(Path(tmp) / str(budget))),
                         events.append)
            losses[budget] = [e.values["loss"] for e in events if isinstance(e, Metrics) and e.phase == "train"]
        assert losses[0] and all(v == v for v in losses[0]), losses
        assert max(abs(a - b) for a, b in zip(losses["auto"], losses[0], strict=True)) < 5e-2, losses
    print(f"ok training {device} amp={amp_on}: plan {plan['kept']}/{plan['blocks']} kept, "
          f"budget auto = {plan['graph_budget'] / 2**30:.1f} GiB, losses {losses[0]}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="streaming checks only (gpu_check.sh --cpu-smoke)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    amps = [None, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    size = 512 if device.type == "cuda" else 160
    for amp in amps:
        check_streaming(device, amp, size)
    if not args.quick:
        check_training(device, amp_on=device.type == "cuda")
    print("all device paths passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
