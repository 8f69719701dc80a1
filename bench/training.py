"""Training cost: seconds per slide-step and peak memory against input size, streaming vs
conventional, and the 2-rank DDP scaling on CPU.

Each (size, method) runs in a fresh process, so its peak memory is its own; all run in one
invocation, so ratios compare like with like on a shared, noisy machine. A step is one whole
slide through ``engine.train.classifier.Classifier`` (trunk streamed or not, head, cross-entropy, backward,
SGD step), the same module ``run_training`` uses, on a random uint8 slide kept as uint8 and
normalised per tile. Conventional runs are skipped once their estimated activation memory
exceeds ``--budget-gib`` (it would swap or be killed), and reported as such.

    python bench/training.py --quick                 # 512-1024 px smallnet, about a minute on 2 cores
    python bench/training.py                         # resnet34 split at layer2, 2048-8192 px (long on CPU)
    python bench/training.py --scaling               # also 1 vs 2 ranks (gloo) over a small slide set
    python bench/training.py --model smallnet --sizes 4096 8192 --heads max attention gem
                                                     # the heads' cost: streamed step per head, x max

Columns: s/step median over ``--steps`` steps after one warm-up; x conv the ratio to
conventional at that size; peak MiB the process's peak RSS (CPU) or peak CUDA allocation (GPU);
est conv GiB the conventional trunk's activation estimate that decides the skip.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODELS = {"resnet34-layer2": ("resnet34", "layer2", {}), "smallnet": ("smallnet", "stage4", {"width": 16})}


def worker(cfg: dict) -> dict:
    import numpy as np
    import torch
    from torch.nn import functional as F

    from engine.models import create_model
    from engine.train.classifier import Classifier
    from engine.train.data import Augmentation, input_source

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    arch, split, kw = MODELS[cfg["model"]]
    if cfg.get("head"):
        kw = {**kw, "head": cfg["head"]}
    model = create_model(arch, num_classes=2, split=split, **kw).to(device)
    on_gpu = device.type == "cuda"
    clf = Classifier(model, streaming=cfg["method"] == "streaming", tile_size=cfg["tile"], channels_last=True).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    size = cfg["size"]
    rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    src = input_source(rgb, Augmentation(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    target = torch.tensor([1], device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else None
    times = []
    for _ in range(cfg["steps"] + 1):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x = src if cfg["method"] == "streaming" else src.read((0, size), (0, size)).to(device)
        if amp:
            with amp:
                logits = clf(x)
        else:
            logits = clf(x)
        F.cross_entropy(logits.float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if on_gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"s_step": statistics.median(times[1:]), "peak_mib": peak}


def conventional_gib(model: str, size: int) -> float:
    """Activation memory of one conventional training step of the trunk (the part that grows)."""
    from engine.models import create_model
    from engine.streaming import StreamingModule

    arch, split, kw = MODELS[model]
    trunk = create_model(arch, num_classes=2, split=split, **kw).trunk()
    return StreamingModule(trunk, 512, freeze_batchnorm=True).estimate_tile_bytes(size) / 2**30


def run_config(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode} ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'killed'})"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scaling(args) -> None:
    """Wall time of `python -m engine train` over the same slides with 1 process and with 2 ranks."""
    import numpy as np

    from engine.io.labels import write_labels_csv
    from engine.io.svs import write_svs_array

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        rows = []
        for i in range(args.scaling_slides):
            name = f"s{i}.svs"
            write_svs_array(folder / name, rng.integers(0, 256, (args.scaling_size,) * 2 + (3,), dtype=np.uint8),
                            mpp=0.5, app_mag=20, tile=256, downsamples=(1,))
            rows.append((name, "ab"[i % 2], "train"))
        write_labels_csv(folder / "labels.csv", rows)
        arch, split, kw = MODELS[args.model]
        common = ["-m", "engine", "train", "--labels", str(folder / "labels.csv"), "--model", arch, "--split", split,
                  "--tile", str(args.tile), "--epochs", "1", "--no-tissue-crop", "--device", args.device]
        common += [f"--model-arg={k}={v}" for k, v in kw.items()]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        print(f"\nDDP scaling: {args.scaling_slides} slides of {args.scaling_size}² px, {args.model}, one epoch "
              f"(wall time includes start-up)")
        print(f"{'ranks':>5} {'threads/rank':>12} {'wall s':>8} {'s/slide':>8} {'speed-up':>8}")
        base = None
        for ranks in (1, 2):
            threads = max(1, args.threads // ranks)
            launcher = ([sys.executable] if ranks == 1 else
                        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"])
            t0 = time.perf_counter()
            proc = subprocess.run(launcher + common + ["--out", str(folder / f"run{ranks}")], cwd=ROOT,
                                  env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"{ranks:>5} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            base = base or wall
            print(f"{ranks:>5} {threads:>12} {wall:8.1f} {wall / args.scaling_slides:8.2f} {base / wall:8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smallnet at 512 and 1024 px")
    ap.add_argument("--model", default="resnet34-layer2", choices=sorted(MODELS))
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--budget-gib", type=float, default=16.0, help="skip conventional runs estimated above this")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--scaling", action="store_true", help="also time 1 vs 2 ranks (gloo on CPU)")
    ap.add_argument("--scaling-slides", type=int, default=8)
    ap.add_argument("--scaling-size", type=int, default=1024)
    ap.add_argument("--heads", nargs="+", choices=("max", "avg", "gem", "attention"),
                    help="time the streamed step with each of these heads instead (x max: against max pooling)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.model, args.sizes, args.tile, args.scaling_size = "smallnet", [512, 1024], 256, 256
    if args.heads:
        if "max" in args.heads:  # first: the others are compared with it
            args.heads = ["max"] + [h for h in args.heads if h != "max"]
        heads(args)
        return
    print(f"training step: {args.model}, tile {args.tile}, device {args.device}, {args.threads} threads, "
          f"median of {args.steps} steps after one warm-up")
    print(f"{'size':>6} {'method':>12} {'s/step':>8} {'x conv':>7} {'peak MiB':>9} {'est conv GiB':>12}")
    for size in args.sizes:
        est = conventional_gib(args.model, size)
        results = {}
        for method in ("conventional", "streaming"):
            if method == "conventional" and est > args.budget_gib:
                print(f"{size:>6} {method:>12} {'skipped: needs about':>28} {est:.1f} GiB > {args.budget_gib:g} GiB budget")
                continue
            cfg = {"model": args.model, "size": size, "tile": args.tile, "method": method, "steps": args.steps,
                   "device": args.device, "threads": args.threads}
            r = results[method] = run_config(cfg)
            if "error" in r:
                print(f"{size:>6} {method:>12} {r['error']}")
                continue
            conv = results.get("conventional", {}).get("s_step")
            ratio = f"{r['s_step'] / conv:7.2f}" if conv else f"{'-':>7}"
            print(f"{size:>6} {method:>12} {r['s_step']:8.2f} {ratio} {r['peak_mib']:9.0f} {est:12.2f}")
    if args.scaling:
        scaling(args)


def heads(args) -> None:
    """The streamed training step with each head, beside max pooling in the same run: the max
    and avg heads pool block by block (the map is never held), GeM and attention need the
    stitched map and its gradient."""
    print(f"heads: {args.model}, tile {args.tile}, streamed, device {args.device}, {args.threads} threads, "
          f"median of {args.steps} steps after one warm-up")
    print(f"{'size':>6} {'head':>10} {'s/step':>8} {'x max':>7} {'peak MiB':>9}")
    for size in args.sizes:
        base = None
        for head in args.heads:
            cfg = {"model": args.model, "size": size, "tile": args.tile, "method": "streaming", "steps": args.steps,
                   "device": args.device, "threads": args.threads, "head": head}
            r = run_config(cfg)
            if "error" in r:
                print(f"{size:>6} {head:>10} {r['error']}")
                continue
            base = r["s_step"] if head == "max" else base
            ratio = f"{r['s_step'] / base:7.2f}" if base else f"{'-':>7}"
            print(f"{size:>6} {head:>10} {r['s_step']:8.2f} {ratio} {r['peak_mib']:9.0f}")


if __name__ == "__main__":
    main()
