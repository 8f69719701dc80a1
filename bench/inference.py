"""Whole-slide streaming inference and saliency through engine.api: speed and memory by slide size.

Each (size, job) runs in a fresh process so its peak RSS is its own; all in one run of this
script. Slides are synthetic pyramidal SVS files written once into .cache/bench/ (tissue-like
texture), read lazily tile by tile as in real use. Prints one table.

    python bench/inference.py --quick      # 1024² and 2048²
    python bench/inference.py              # 2048², 4096², 8192²
    python bench/inference.py --equal-cones --low-memory   # is peak memory flat with the slide?

Columns: MP/s is slide megapixels (at the level read) per second of the whole job (reads,
trunk, head, maps); peak MiB is the process's peak RSS above its RSS before the job; patches is
how many map patches were emitted (live updates); first patch is seconds from start to the first
prediction patch.

At one tile size the blocks are evened out over the image, so a small slide gets smaller cones
(input windows) than a large one, and each block's activations grow with them. --equal-cones
picks, per slide, the largest tile (up to --tile) whose cones are no larger than the smallest
slide's, so the rows compare slides only. --low-memory runs the jobs with
InferenceSpec(low_memory=True): freed heap pages go back to the OS after every block.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "bench"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_slide(size: int) -> Path:
    """A size x size synthetic H&E-like slide (pink stroma, purple nuclei), cached."""
    import numpy as np

    from engine.io.svs import write_svs

    path = CACHE / f"inference-{size}.svs"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)

    def render(downsample, lv_box):
        x0, y0, x1, y1 = (int(v) for v in (lv_box.x0, lv_box.y0, lv_box.x1, lv_box.y1))
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) * downsample
        nuclei = (np.sin(xx * 0.11) * np.sin(yy * 0.13) > 0.93)
        rgb = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        rgb[:] = (232, 170, 200)
        rgb[nuclei] = (90, 50, 140)
        return rgb

    return write_svs(path, (size, size), render, mpp=0.5, app_mag=20, tile=512)


def make_model() -> Path:
    import torch

    from engine.io.checkpoints import ModelCard, save_checkpoint
    from engine.models import create_model

    path = CACHE / "inference-model"
    if (path / "model.json").exists():
        return path
    torch.manual_seed(0)
    model = create_model("smallnet", width=16, num_classes=2, split="stage4")
    card = ModelCard(architecture="smallnet", classes=("a", "b"), split="stage4", model_kwargs={"width": 16},
                     input_mpp=0.5, tile_size=1024, provenance={"made_by": "bench/inference.py (random weights)"})
    save_checkpoint(path, model, card)
    return path


def worker(cfg: dict) -> dict:
    import torch

    from engine.api import run_inference
    from engine.events import MapPatch
    from engine.specs import InferenceSpec

    torch.set_num_threads(cfg["threads"])
    size = cfg["size"]
    spec = InferenceSpec(slide_path=cfg["slide"], model_path=cfg["model"], l0_region=(0, 0, size, size),
                         saliency=cfg["job"] == "saliency", tile_size=cfg["tile"], saliency_cell=8,
                         low_memory=cfg.get("low_memory", False))
    events = []
    first = []
    t0 = time.perf_counter()

    def on_event(e):
        if isinstance(e, MapPatch):
            events.append(e.layer)
            if not first:
                first.append(time.perf_counter() - t0)

    # Warm up on a small region: one-time costs (imports, model load, kernel selection) are
    # not what a whole slide costs.
    run_inference(InferenceSpec(slide_path=cfg["slide"], model_path=cfg["model"], l0_region=(0, 0, 512, 512),
                                saliency=spec.saliency, tile_size=cfg["tile"]), lambda e: None)
    base = _rss_mib()
    first.clear()
    t0 = time.perf_counter()
    run_inference(spec, on_event)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    # The largest input window a block read: blocks are evened out over the image, so at the
    # same tile a small slide gets smaller cones (and smaller per-block memory) than a large one.
    from engine.io.checkpoints import load_checkpoint
    from engine.streaming import StreamingModule

    model, _ = load_checkpoint(cfg["model"])
    plan = StreamingModule(model.trunk(), cfg["tile"]).tile_plan((size, size))
    cone = max(rp.cone[1] - rp.cone[0] for rp in plan.row_plans)
    return {"seconds": seconds, "mp_s": size * size / 1e6 / seconds, "peak_mib": peak,
            "patches": len(events), "first_patch_s": first[0] if first else None, "cone": cone,
            "blocks": plan.n_blocks}


def _max_cone(trunk, tile: int, size: int) -> int:
    from engine.streaming import StreamingModule

    plan = StreamingModule(trunk, tile).tile_plan((size, size))
    return max(rp.cone[1] - rp.cone[0] for rp in plan.row_plans)


def _equal_cone_tiles(model_path: Path, sizes: list[int], tile: int) -> dict[int, int]:
    """Per size, the largest tile up to ``tile`` whose cones are no larger than the smallest size's."""
    from engine.io.checkpoints import load_checkpoint
    from engine.streaming import StreamingModule

    model, _ = load_checkpoint(model_path)
    trunk = model.trunk()
    smallest = min(sizes)
    want = _max_cone(trunk, tile, smallest)
    low = max(StreamingModule(trunk, tile).receptive_field)
    tiles = {}
    for size in sizes:
        t = tile
        while t - 8 >= low and _max_cone(trunk, t, size) > want:
            t -= 8
        tiles[size] = t
    return tiles


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", nargs="+", type=int)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--equal-cones", action="store_true", help="per slide, the tile whose cones match the smallest slide's")
    ap.add_argument("--low-memory", action="store_true", help="InferenceSpec(low_memory=True)")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    sizes = args.sizes or ([1024, 2048] if args.quick else [2048, 4096, 8192])
    model = make_model()
    rows = []
    print("| slide | job | tile (cone) | blocks | s | MP/s | peak MiB | patches | first patch s |\n|---|---|---|---|---|---|---|---|---|")
    tiles = _equal_cone_tiles(model, sizes, args.tile) if args.equal_cones else {size: args.tile for size in sizes}
    for size in sizes:
        slide = make_slide(size)
        for job in ("infer", "saliency"):
            cfg = {"size": size, "job": job, "slide": str(slide), "model": str(model), "tile": tiles[size],
                   "threads": args.threads, "low_memory": args.low_memory}
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True)
            label = job + (" (low memory)" if args.low_memory else "")
            if proc.returncode:
                print(f"| {size}² | {label} | {cfg['tile']} | failed: {proc.stderr.strip().splitlines()[-1][:80]} | | | | | |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({**cfg, **r})
            print(f"| {size}² | {label} | {cfg['tile']} ({r['cone']}) | {r['blocks']} | {r['seconds']:.1f} | {r['mp_s']:.2f} | {r['peak_mib']:.0f} | "
                  f"{r['patches']} | {r['first_patch_s']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
