"""Blocks without tissue skipped: training-step and inference time with and without the tissue mask.

Synthetic inputs whose tissue fills a known fraction of the box (a band along the diagonal, whose
bounding box is the whole input, and one compact rectangle: worst and best cases for skipping
whole blocks), and the real slide in ``../shared/data``; for each,
the masked and the unmasked pass are timed side by side in the same process, alternating, and
the median of ``--repeats`` is kept. The synthetic inputs are written as SVS files first, so the
mask is what training and inference use: the slide's tissue detected on its thumbnail
(:class:`engine.train.masks.SlideMasks`, "auto") on the trunk's grid; a block none of whose cells
is tissue is neither read nor computed, forward or backward.

Training step: :class:`engine.train.classifier.Classifier` streamed, forward + backward of a
cross-entropy loss. Inference: the same network under ``torch.no_grad`` (the streamed trunk
with ``skip_block`` and the masked pool): the pass ``engine.api.run_inference`` makes, without
its slide reads and map events, which cost the same with and without the mask per computed block.

Target: at a tissue fraction of 30% of the box, masked <= 0.45x unmasked (training and inference).

    PYTHONPATH=$PWD .venv/bin/python bench/tissue_skipping.py            # the figures (run alone)
    PYTHONPATH=$PWD .venv/bin/python bench/tissue_skipping.py --quick    # a check in seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REAL_SLIDE = ROOT.parent / "shared" / "data" / "CMU-1-Small-Region.svs"
TARGET_FRACTION, TARGET_RATIO = 0.3, 0.45


def synthetic_rgb(size: int, fraction: float, shape: str, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: grey glass, and H&E-like tissue on ``fraction`` of the square.
    ``shape`` "band": the band |x - y| < w (1 - (1 - w)^2 = fraction), which spans the whole box and
    touches many blocks (a worst case for skipping); "rect": one compact piece, the top-left
    rectangle of that area (about as many blocks as tissue: a best case). Real tissue lies between."""
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), 235, np.uint8)
    y, x = np.mgrid[0:size, 0:size]
    if fraction >= 1:
        band = np.ones((size, size), bool)
    elif shape == "band":
        band = np.abs(x - y) < (1.0 - np.sqrt(1.0 - fraction)) * size
    else:
        band = (x < size * np.sqrt(fraction)) & (y < size * np.sqrt(fraction))
    tissue = np.clip(np.array([170, 110, 180]) + rng.integers(-25, 26, (size, size, 1)), 0, 255).astype(np.uint8)
    rgb[band] = tissue[band]
    return rgb


def synthetic_slide(folder: Path, size: int, fraction: float, shape: str) -> Path:
    from engine.io.svs import write_svs_array

    path = folder / f"synthetic-{size}-{shape}-{round(100 * fraction)}.svs"
    if not path.exists():
        write_svs_array(path, synthetic_rgb(size, fraction, shape), mpp=0.5, app_mag=20, tile=256)
    return path


def read_input(path: Path, size: int | None, tissue_crop: bool):
    """(the input's RGB at level 0, its placement on the slide)."""
    from engine.train.data import InputSpec, read_slide_placed

    return read_slide_placed(path, InputSpec(level=0, size=size, tissue_crop=tissue_crop))


def timed(fn, mask) -> float:
    t0 = time.perf_counter()
    fn(mask)
    return time.perf_counter() - t0


def measure(net, path: Path, rgb: np.ndarray, placement, masks, args) -> dict:
    from engine.io.labels import SlideRecord
    from engine.streaming.pooled import mask_skip
    from engine.train.data import Augmentation, input_source

    record = SlideRecord(path, 0, None, "bench")
    mask = masks(record, rgb, placement, Augmentation())
    src = input_source(rgb, Augmentation(), (0.5,) * 3, (0.25,) * 3, dtype=torch.float32)
    plan = net.runner.tile_plan(src.shape[2:])
    skip = mask_skip(mask) if mask is not None else (lambda r, c: False)
    computed = sum(not skip((rb.own_start, rb.end), (cb.own_start, cb.end)) for rb in plan.rows for cb in plan.cols)
    target = torch.tensor([1])

    def train(m):
        net.train()
        net.model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(src, m), target).backward()

    def infer(m):
        net.eval()
        with torch.no_grad():
            net(src, m)

    row = {"cells": float(mask.float().mean()) if mask is not None else 1.0,
           "blocks": f"{computed}/{plan.n_blocks}"}
    for name, fn in (("train", train), ("infer", infer)):
        fn(mask)  # warm-up
        masked, unmasked = [], []
        for _ in range(args.repeats):  # alternate, so drift in the machine hits both alike
            masked.append(timed(fn, mask))
            unmasked.append(timed(fn, None))
        row[name] = (statistics.median(masked), statistics.median(unmasked))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet34")
    p.add_argument("--split", default="layer2")
    p.add_argument("--head", default="max", help="max/avg pool block by block; gem/attention on the stitched map")
    p.add_argument("--size", type=int, default=4096, help="synthetic input edge (pixels)")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    p.add_argument("--shapes", nargs="+", default=["band", "rect"], choices=["band", "rect"])
    p.add_argument("--real-slide", type=Path, default=REAL_SLIDE)
    p.add_argument("--real-size", type=int, default=None, help="crop of the real slide's tissue box (None: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="smallnet, 512-px inputs, one repeat: a check, not figures")
    args = p.parse_args()
    if args.quick:
        args.model, args.split, args.size, args.tile, args.repeats = "smallnet", "stage4", 512, 256, 1
        args.real_size = args.real_size or 512
    if args.threads:
        torch.set_num_threads(args.threads)

    from engine.models import create_model
    from engine.train.classifier import Classifier
    from engine.train.masks import SlideMasks

    torch.manual_seed(0)
    kwargs = {"width": 8} if args.model == "smallnet" else {}
    model = create_model(args.model, split=args.split, head=args.head, **kwargs).to(args.device)
    net = Classifier(model, streaming=True, tile_size=args.tile)
    masks = SlideMasks("auto", {}, net.trunk_grid)
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="tissue-skipping-"))
    inputs = [(f"synthetic {args.size}² {shape} {f:.0%}",
               lambda f=f, shape=shape: (synthetic_slide(folder, args.size, f, shape), None, False))
              for shape in args.shapes for f in args.fractions if shape == args.shapes[0] or f < 1]
    if args.real_slide.exists():
        inputs.append((f"{args.real_slide.name}" + (f" {args.real_size}²" if args.real_size else ""),
                       lambda: (args.real_slide, args.real_size, True)))
    else:
        print(f"(real slide {args.real_slide} not found: skipped)")
    print(f"{args.model} to {args.split}, head {args.head}, tile {args.tile}, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    header = (f"{'input':<38} {'tissue':>6} {'blocks':>9} {'train masked':>12} {'unmasked':>9} {'ratio':>6} "
              f"{'infer masked':>12} {'unmasked':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    verdicts = []
    for name, make in inputs:
        path, size, crop = make()
        rgb, placement = read_input(path, size, crop)
        row = measure(net, path, rgb, placement, masks, args)
        (tm, tu), (im, iu) = row["train"], row["infer"]
        print(f"{name:<38} {row['cells']:>6.0%} {row['blocks']:>9} {tm:>11.3f}s {tu:>8.3f}s {tm / tu:>6.2f} "
              f"{im:>11.3f}s {iu:>8.3f}s {im / iu:>6.2f}")
        if name.startswith("synthetic") and abs(row["cells"] - TARGET_FRACTION) < 0.1:
            verdicts.append((name, tm / tu, im / iu))
    for name, train_ratio, infer_ratio in verdicts:
        ok = train_ratio <= TARGET_RATIO and infer_ratio <= TARGET_RATIO
        print(f"target at ~{TARGET_FRACTION:.0%} tissue ({name}): masked <= {TARGET_RATIO}x unmasked: "
              f"train {train_ratio:.2f}x, infer {infer_ratio:.2f}x -> {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
