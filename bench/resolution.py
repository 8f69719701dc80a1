"""The paper in miniature: does end-to-end training at higher resolution find what lower misses?

Trains the same network (engine.demo.data.demo_training_spec: SmallNet, max-pooled head) on the
same synthetic slides (engine.demo.data.resolution_cohort: lesions of vesicular nuclei, a texture
inside the nuclei), read at 0.5, 1, 2 and 4 µm/px so the whole 1 x 1 mm slide is 2048², 1024²,
512² or 256² input pixels, with streaming and image-level labels only, a fixed seed and
a held-out test split. Prints, per resolution:

* test ROC AUC of the slide-level prediction;
* saliency localisation on the positive test slides (the engine's saliency of the "lesion"
  score, the same maps the viewer shows, on a common 16-µm grid): the share of saliency mass
  inside the lesion masks (against the lesion share of the tissue, what an even map scores) and
  the AUC of saliency as a per-cell lesion detector;
* training time, and time and peak memory of one training step, streaming vs conventional.

Every measurement runs in a fresh process, so peak RSS is that configuration's own. Writes
``OUT/results.json``, ``OUT/table.md`` and a figure of saliency maps per resolution
(``OUT/saliency.png``; ``--figure docs/resolution-saliency.png`` to put it in the docs).

    python bench/resolution.py                 # default, about 15 minutes on 2 CPU cores
    python bench/resolution.py --quick         # 512² and 2048², a smaller cohort, minutes
    python bench/resolution.py --table-from bench/out/resolution/results.json

Part two, ``--task regression``: the same network and resolutions on a cohort whose target is
continuous (engine.demo.data.regression_cohort: the number of scattered vesicular nuclei per mm² of tissue,
which at 2–4 µm/px leave the mean colour unchanged), with a mean-pooled head over the tissue mask; the test split is
scored by ``engine.api.evaluate`` (Spearman with its 95% bootstrap interval, Pearson, MAE, R²).

    python bench/resolution.py --task regression [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

MAP_L0_CELL = 32  # level-0 pixels per saliency cell at every resolution (16 µm)
SLIDE_PX = 2048  # engine.demo.data.RESOLUTION_SLIDE_PX (not imported here: children import torch lazily)
QUICK_SPLITS = {"train": 12, "val": 4, "test": 8}
SLIDES_CACHE = "resolution-slides"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: list[str]) -> dict:
    """Run this script with ``args`` in a fresh process; its last stdout line is JSON (its
    stderr, the per-epoch progress, passes through)."""
    proc = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cohort(quick: bool, task: str = "classification"):
    from engine.demo.data import regression_cohort, resolution_cohort

    make = regression_cohort if task == "regression" else resolution_cohort
    return make(QUICK_SPLITS if quick else None)


# --- children -----------------------------------------------------------------------------

def regression_spec(spec):
    """The classification study's spec, as a regression of the cohort's density: a mean-pooled
    head (a count per area of tissue is a mean over the tissue's cells), Huber loss on the
    standardised target, monitored by Spearman correlation. A quarter of the classification
    study's learning rate, with a longer warm-up: at 2e-3 the first AdamW steps threw the
    unbounded output far off (a training loss of 15 at step 1) and the model settled on a
    constant (validation loss flat at the targets' variance at every resolution)."""
    import dataclasses

    from engine.demo.data import REGRESSION_TARGET

    return dataclasses.replace(spec, task="regression", targets=(REGRESSION_TARGET,), classes=None, pool="avg",
                               head=None, loss="huber", monitor="spearman", lr=spec.lr / 4, warmup_steps=16)


def run_name(size: int, head: str | None) -> str:
    return f"run-{size}" + (f"-{head}" if head else "")


def train_one(size: int, slides_dir: Path, out: Path, epochs: int, device: str, task: str = "classification",
              head: str | None = None) -> dict:
    from engine.api import run_training
    from engine.demo.data import demo_training_spec
    from engine.events import Metrics

    base = peak_rss_mib()
    val_auc: list[float] = []

    def on_event(event) -> None:
        if isinstance(event, Metrics) and event.phase == "val":
            val_auc.append(event.values.get(monitor, float("nan")))
            print(f"  {size}² epoch {event.epoch}: val {monitor} {val_auc[-1]:.3f} loss {event.values.get('loss', float('nan')):.3f}",
                  file=sys.stderr, flush=True)

    spec = demo_training_spec(slides_dir / "labels.csv", out / run_name(size, head), input_size=size, epochs=epochs,
                              device=device, slide_px=SLIDE_PX)
    if head:
        import dataclasses

        spec = dataclasses.replace(spec, head=head)
    if task == "regression":
        spec = regression_spec(spec)
    monitor = spec.monitor
    wall, cpu = time.perf_counter(), time.process_time()
    finished = run_training(spec, on_event)
    return {"size": size, "train_wall_s": time.perf_counter() - wall, "train_cpu_s": time.process_time() - cpu,
            "epochs": epochs, "val_auc": val_auc, "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base,
            "cancelled": finished.cancelled}


def evaluate_one(size: int, slides_dir: Path, out: Path, quick: bool, device: str, head: str | None = None) -> dict:
    from engine.api import run_inference
    from engine.demo.data import LEVEL_DOWNSAMPLES
    from engine.demo.synthetic import Scene
    from engine.events import MapPatch
    from engine.io import atomic
    from engine.metrics import roc_auc, saliency_localisation
    from engine.specs import InferenceSpec

    level = LEVEL_DOWNSAMPLES.index(SLIDE_PX // size)
    model = out / run_name(size, head) / "best"
    scores, labels, localisation, attention_localisation, maps = [], [], [], [], {}
    for slide in (s for s in cohort(quick) if s.split == "test"):
        sal = np.zeros((SLIDE_PX // MAP_L0_CELL, SLIDE_PX // MAP_L0_CELL), np.float32)
        attention: dict[str, np.ndarray] = {}

        def on_event(event, sal=sal, attention=attention) -> None:
            if isinstance(event, MapPatch) and event.layer == "saliency":
                r0, c0 = event.cell_offset
                sal[r0:r0 + event.values.shape[0], c0:c0 + event.values.shape[1]] = event.values
            elif isinstance(event, MapPatch) and event.layer == "attention":
                # The last attention patches are the normalised weights (the live ones are scores).
                grid = attention.setdefault("map", np.zeros(event.map_shape, np.float32))
                attention["cell"] = event.map_l0_box.width // event.map_shape[1]
                r0, c0 = event.cell_offset
                values = np.asarray(event.values).reshape(event.values.shape[-2:])
                grid[r0:r0 + values.shape[0], c0:c0 + values.shape[1]] = values

        positive = slide.label == "lesion"
        spec = InferenceSpec(slide_path=str(slide.path(slides_dir)), model_path=str(model), level=level,
                             l0_region=(0, 0, SLIDE_PX, SLIDE_PX), device=device, saliency=positive, saliency_class=1,
                             saliency_cell=MAP_L0_CELL // LEVEL_DOWNSAMPLES[level])
        finished = run_inference(spec, on_event)
        scores.append(finished.prediction.probabilities[1])
        labels.append(positive)
        if positive:
            scene = Scene(slide.recipe)
            lesion = scene.lesion_mask(MAP_L0_CELL)
            centres = (np.arange(sal.shape[0]) + 0.5) * MAP_L0_CELL
            tissue = scene._tissue_at(centres[:, None], centres[None, :])
            localisation.append(saliency_localisation(sal, lesion, tissue))
            maps[slide.name] = sal
            if "map" in attention:
                cell = int(attention["cell"])
                centres = (np.arange(attention["map"].shape[0]) + 0.5) * cell
                attention_localisation.append(saliency_localisation(
                    attention["map"], scene.lesion_mask(cell)[:attention["map"].shape[0], :attention["map"].shape[1]],
                    scene._tissue_at(centres[:, None], centres[None, :])))
    atomic.write_with(out / f"saliency-{run_name(size, head).removeprefix('run-')}.npz",
                      lambda f: np.savez_compressed(f, **maps))

    def mean(key, rows=localisation):
        return float(np.nanmean([m[key] for m in rows])) if rows else float("nan")

    return {"size": size, "head": head, "test_auc": roc_auc(np.array(scores), np.array(labels)), "test_scores": scores,
            "test_labels": labels, "mass_in_lesion": mean("mass_in_lesion"), "lesion_share": mean("lesion_share"),
            "pixel_auc": mean("pixel_auc"), "attention_mass_in_lesion": mean("mass_in_lesion", attention_localisation),
            "attention_lesion_share": mean("lesion_share", attention_localisation)}


def evaluate_regression(size: int, slides_dir: Path, out: Path, quick: bool, device: str) -> dict:
    """The test split scored by engine.api.evaluate, read as the model was trained (whole slide,
    ``size``² input pixels)."""
    from engine.api import evaluate
    from engine.demo.data import write_regression_labels
    from engine.specs import EvaluationSpec

    test_labels = out / "test-labels.csv"
    write_regression_labels(test_labels, [s for s in cohort(quick, "regression") if s.split == "test"], slides_dir)
    spec = EvaluationSpec(model=str(out / f"run-{size}" / "best"), labels=str(test_labels), out_dir=str(out / f"eval-{size}"),
                          device=device, tissue_crop=False, input_size=size, bootstrap=2000)
    result = evaluate(spec, lambda event: None)
    if result.failed:
        raise SystemExit(f"evaluation failed on {len(result.failed)} slides: {result.failed[0]}")
    (target,) = result.metrics["slides"]["targets"].values()
    return {"size": size, "spearman": target["spearman"]["value"], "spearman_ci95": target["spearman"].get("ci95"),
            "pearson": target["pearson"]["value"], "mae": target["mae"]["value"], "r2": target["r2"]["value"],
            "n_test": result.metrics["slides"]["n"]}


def step_one(size: int, streaming: bool) -> dict:
    """One training step (forward, loss, backward) on a random input: time and peak memory."""
    import torch

    from engine.models.registry import create_model
    from engine.train.classifier import Classifier

    torch.manual_seed(0)
    model = create_model("smallnet", num_classes=2, pool="max", width=16)
    net = Classifier(model, streaming=streaming, tile_size=min(size, 1024)).train()
    x = torch.randn(1, 3, size, size)
    base = peak_rss_mib()
    times = []
    for _ in range(2):  # the first step pays for planning and allocator warm-up
        wall = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([1]))
        loss.backward()
        times.append(time.perf_counter() - wall)
    return {"size": size, "streaming": streaming, "step_s": times[-1], "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base}


# --- the report ----------------------------------------------------------------------------

def auc_interval(scores: list[float], labels: list[bool], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the test ROC AUC (engine.metrics.auc_interval: positives and
    negatives resampled apart)."""
    from engine.metrics import auc_interval as interval

    return interval(scores, labels, n=n, seed=seed)


def table(results: list[dict]) -> str:
    results = sorted(results, key=lambda r: r["size"])
    lines = ["| input (whole slide) | µm/px | test AUC (95% CI) | saliency mass in lesions (even map) | saliency pixel AUC "
             "| training time | step streaming | step conventional | peak RSS streaming | peak RSS conventional |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, c = r["step_streaming"], r["step_conventional"]
        ci = "({:.2f}–{:.2f})".format(*auc_interval(r["test_scores"], r["test_labels"])) if "test_scores" in r else ""
        lines.append(
            f"| {r['size']}² | {0.5 * SLIDE_PX / r['size']:g} | {r['test_auc']:.3f} {ci} | {r['mass_in_lesion']:.3f} ({r['lesion_share']:.3f}) "
            f"| {r['pixel_auc']:.3f} | {r['train_wall_s'] / 60:.1f} min ({r['epochs']} epochs) | {s['step_s']:.2f} s "
            f"| {c['step_s']:.2f} s | {s['peak_rss_mib']:.0f} MiB | {c['peak_rss_mib']:.0f} MiB |")
    return "\n".join(lines)


def heads_table(results: list[dict]) -> str:
    lines = ["| head | test AUC (95% CI) | saliency mass in lesions (even map) | saliency pixel AUC "
             "| attention mass in lesions (even map) | training time |", "|---|---|---|---|---|---|"]
    for r in results:
        ci = "({:.2f}–{:.2f})".format(*auc_interval(r["test_scores"], r["test_labels"]))
        att = (f"{r['attention_mass_in_lesion']:.3f} ({r['attention_lesion_share']:.3f})"
               if r["attention_mass_in_lesion"] == r["attention_mass_in_lesion"] else "–")
        lines.append(f"| {r['head']} | {r['test_auc']:.3f} {ci} | {r['mass_in_lesion']:.3f} ({r['lesion_share']:.3f}) "
                     f"| {r['pixel_auc']:.3f} | {att} | {r['train_wall_s'] / 60:.1f} min ({r['epochs']} epochs) |")
    return "\n".join(lines)


def regression_table(results: list[dict]) -> str:
    lines = ["| input (whole slide) | µm/px | test Spearman (95% CI) | Pearson | MAE (nuclei/mm²) | R² | training time |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: r["size"]):
        ci = "({:.2f}–{:.2f})".format(*r["spearman_ci95"]) if r.get("spearman_ci95") else ""
        lines.append(f"| {r['size']}² | {0.5 * SLIDE_PX / r['size']:g} | {r['spearman']:.3f} {ci} | {r['pearson']:.3f} "
                     f"| {r['mae']:.0f} | {r['r2']:.3f} | {r['train_wall_s'] / 60:.1f} min ({r['epochs']} epochs) |")
    return "\n".join(lines)


def figure(results: list[dict], slides_dir: Path, out: Path, quick: bool, path: Path, rows: int = 3) -> None:
    """Rows: positive test slides; columns: the slide with its lesions outlined, then the saliency
    map of each resolution's model (each map scaled to its own 99th percentile)."""
    from PIL import Image, ImageDraw

    from engine.colormaps import colorize_rgb
    from engine.demo.synthetic import Scene
    from engine.io import atomic
    from engine.slides import open_slide, to_rgb

    results = sorted(results, key=lambda r: r["size"])
    names = [s for s in cohort(quick) if s.split == "test" and s.label == "lesion"][:rows]
    cell = 256
    head = 22
    canvas = Image.new("RGB", ((1 + len(results)) * (cell + 6), rows * (cell + 6) + head), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "slide, lesions outlined", fill="black")
    for j, r in enumerate(results):  # PIL's default font has no superscripts
        draw.text(((j + 1) * (cell + 6) + 4, 4), f"{r['size']} x {r['size']} input, test AUC {r['test_auc']:.2f}", fill="black")
    for i, slide in enumerate(names):
        y = head + i * (cell + 6)
        with open_slide(slide.path(slides_dir)) as s:
            level = s.level_count - 1
            w, h = s.level_dimensions[level]
            thumb = Image.fromarray(to_rgb(s.read_region(0, 0, level, w, h), s.background_rgb)).resize((cell, cell))
        d = ImageDraw.Draw(thumb)
        for les in Scene(slide.recipe).lesions:
            k = cell / SLIDE_PX
            d.ellipse([(les.l0_x - les.l0_radius) * k - 3, (les.l0_y - les.l0_radius) * k - 3,
                       (les.l0_x + les.l0_radius) * k + 3, (les.l0_y + les.l0_radius) * k + 3], outline=(0, 160, 0), width=2)
        canvas.paste(thumb, (0, y))
        for j, r in enumerate(results):
            sal = np.load(out / f"saliency-{r['size']}.npz")[slide.name]
            hi = float(np.percentile(sal, 99)) or float(sal.max()) or 1.0  # sparse maps: p99 can be 0
            rgb = colorize_rgb(np.clip(sal / hi, 0, 1), "viridis", 0.0, 1.0)
            canvas.paste(Image.fromarray(rgb).resize((cell, cell), Image.Resampling.NEAREST), ((j + 1) * (cell + 6), y))
    atomic.make_folder(path.parent)
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    atomic.write_with(path, lambda f: canvas.save(f, format=image_format))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512² and 2048², a 24-slide cohort, 3 epochs")
    parser.add_argument("--heads", nargs="+", choices=("max", "avg", "gem", "attention"),
                        help="compare these heads at the largest size instead (test AUC, saliency and attention in lesions)")
    parser.add_argument("--task", choices=("classification", "regression"), default="classification",
                        help="regression: the density cohort, scored by Spearman correlation")
    parser.add_argument("--sizes", type=int, nargs="+", help="input sizes (whole slide): 256 512 1024 2048")
    parser.add_argument("--epochs", type=int, help="epochs per resolution (default 6; quick 3)")
    parser.add_argument("--slides", type=Path, help="slide folder (default: resolution-slides in the cache)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "resolution")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--figure", type=Path, help="also write the saliency figure here")
    parser.add_argument("--table-from", type=Path, help="print the table of a results.json and stop")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        if saved.get("task") == "regression":
            print(regression_table(saved["results"]))
            return 0
        if saved.get("heads"):
            print(heads_table(saved["results"]))
            return 0
        print(table(saved["results"]))
        if args.figure:  # redraw from the saved maps beside results.json
            from engine.demo.data import default_cache_dir

            slides_dir = args.slides or default_cache_dir(SLIDES_CACHE)
            figure(saved["results"], slides_dir, args.table_from.parent, saved["quick"], args.figure)
        return 0
    from engine.demo.data import default_cache_dir, ensure_demo_slides, write_regression_labels
    from engine.io import atomic

    regression = args.task == "regression"
    cache = SLIDES_CACHE + ("-regression" if regression else "") + ("-quick" if args.quick else "")
    slides_dir = args.slides or default_cache_dir(cache)
    out = args.out / (("regression-" if regression else "") + ("quick" if args.quick else "full"))
    if args.child:
        kind, size = args.child[0], int(args.child[1])
        head = args.child[3] if kind == "train" and len(args.child) > 3 else (
            args.child[2] if kind == "evaluate" and len(args.child) > 2 else None)
        if kind == "train":
            result = train_one(size, slides_dir, out, int(args.child[2]), args.device, args.task, head)
        elif kind == "evaluate" and regression:
            result = evaluate_regression(size, slides_dir, out, args.quick, args.device)
        elif kind == "evaluate":
            result = evaluate_one(size, slides_dir, out, args.quick, args.device, head)
        else:
            result = step_one(size, streaming=kind == "step-streaming")
        print(json.dumps(result))
        return 0

    sizes = args.sizes or ([512, 2048] if args.quick else [256, 512, 1024, 2048])
    epochs = args.epochs or (3 if args.quick else 6)
    out.mkdir(parents=True, exist_ok=True)
    print(f"slides: {slides_dir}", flush=True)
    slides = cohort(args.quick, args.task)
    ensure_demo_slides(slides_dir, slides, labels=not regression,
                       progress=lambda i, n, name: print(f"  generating {name} ({i + 1}/{n})", flush=True))
    if regression:
        write_regression_labels(slides_dir / "labels.csv", slides)
    common = (["--out", str(args.out), "--slides", str(slides_dir), "--device", args.device, "--task", args.task]
              + (["--quick"] if args.quick else []))
    results = []
    for size in sizes if regression else ():
        print(f"{size}²: training {epochs} epochs...", flush=True)
        row = child(["--child", "train", str(size), str(epochs), *common])
        row.update(child(["--child", "evaluate", str(size), *common]))
        results.append(row)
        print(f"{size}²: test Spearman {row['spearman']:.3f} {row.get('spearman_ci95')}, R² {row['r2']:.3f}, "
              f"{row['train_wall_s'] / 60:.1f} min", flush=True)
        atomic.write_json(out / "results.json", {"results": results, "epochs": epochs, "quick": args.quick,
                                                 "task": "regression"}, indent=1)
    if args.heads:
        size = max(sizes)
        for head in args.heads:
            print(f"{size}², head {head}: training {epochs} epochs...", flush=True)
            row = child(["--child", "train", str(size), str(epochs), head, *common])
            row.update(child(["--child", "evaluate", str(size), head, *common]))
            results.append(row)
            print(f"{size}² {head}: test AUC {row['test_auc']:.3f}, saliency mass in lesions {row['mass_in_lesion']:.3f} "
                  f"(even {row['lesion_share']:.3f}), attention mass {row['attention_mass_in_lesion']:.3f}", flush=True)
            atomic.write_json(out / "heads.json", {"results": results, "epochs": epochs, "quick": args.quick,
                                                   "heads": args.heads}, indent=1)
        text = heads_table(results)
        atomic.write_text(out / "heads.md", text + "\n")
        print(text)
        print(f"results: {out / 'heads.json'}")
        return 0
    if regression:
        text = regression_table(results)
        atomic.write_text(out / "table.md", text + "\n")
        print(text)
        print(f"results: {out / 'results.json'}")
        return 0
    for size in sizes:
        print(f"{size}²: training {epochs} epochs...", flush=True)
        row = child(["--child", "train", str(size), str(epochs), *common])
        row.update(child(["--child", "evaluate", str(size), *common]))
        row["step_streaming"] = child(["--child", "step-streaming", str(size), *common])
        row["step_conventional"] = child(["--child", "step-conventional", str(size), *common])
        results.append(row)
        print(f"{size}²: test AUC {row['test_auc']:.3f}, saliency mass in lesions {row['mass_in_lesion']:.3f} "
              f"(even {row['lesion_share']:.3f}), pixel AUC {row['pixel_auc']:.3f}, "
              f"{row['train_wall_s'] / 60:.1f} min", flush=True)
        atomic.write_json(out / "results.json", {"results": results, "epochs": epochs, "quick": args.quick}, indent=1)
    text = table(results)
    atomic.write_text(out / "table.md", text + "\n")
    print(text)
    figure(results, slides_dir, out, args.quick, out / "saliency.png")
    if args.figure:
        figure(results, slides_dir, out, args.quick, args.figure)
    print(f"results: {out / 'results.json'}; figure: {out / 'saliency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
