"""Cohort evaluation throughput: slides per minute of ``engine.api.evaluate`` on the synthetic cohort.

The demo model (resources/demo_model: SmallNet at 2 µm/px) on the demo cohort's test split
(24 slides of 2 x 2 mm, read as 1024² input pixels), with the tissue mask off and on, measured
in one run; every slide's prediction is written (predictions.csv, metrics.json, plot.svg) as
the user gets them. The AUC is printed as a check that the cohort is read as it was trained.

    python bench/evaluate_throughput.py [--slides N] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=24, help="test slides evaluated (at most 24)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--masks", nargs="+", default=["none", "auto"], choices=("none", "auto"))
    args = ap.parse_args()

    from engine.api import demo_cache_dir, demo_model_dir, ensure_demo_slides, evaluate
    from engine.demo.data import demo_cohort
    from engine.io.labels import write_labels_csv
    from engine.specs import EvaluationSpec

    test = [s for s in demo_cohort() if s.split == "test"][:args.slides]
    root = Path(demo_cache_dir())
    ensure_demo_slides(root, test, labels=False)
    print(f"evaluate: demo model on {len(test)} demo test slides (4096² level 0, read at 2 µm/px = 1024² px), "
          f"device {args.device}")
    print(f"{'tissue mask':>12} {'wall s':>8} {'slides/min':>11} {'AUC':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "test.csv"
        write_labels_csv(labels, [(s.path(root).resolve(), s.label) for s in test])
        for mask in args.masks:
            spec = EvaluationSpec(model=str(demo_model_dir()), labels=str(labels), out_dir=str(Path(tmp) / f"eval-{mask}"),
                                  device=args.device, tissue_crop=False, bootstrap=0, tissue_mask=mask)
            t0 = time.perf_counter()
            result = evaluate(spec, lambda event: None)
            wall = time.perf_counter() - t0
            done = len(test) - len(result.failed)
            auc = result.metrics["slides"].get("auc", {}).get("value")
            print(f"{mask:>12} {wall:8.1f} {60 * done / wall:11.1f} {auc if auc is None else round(auc, 3):>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
