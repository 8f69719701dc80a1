"""`bench/streaming.py --budgets`: training time and peak memory against the graph budget.

For each model, size and tile, in one run (fresh process per row, as bench/streaming.py does):
``--quick`` is a smoke check (SmallNet, 1024², tile 512, a minute or two on 2 cores).
conventional back-propagation, ``torch.utils.checkpoint`` (4 segments), streaming as it is
without a budget ("stream"), and streaming at graph budgets from "tile only" (0: every block
recomputed) through fractions of conventional's measured peak to "all kept". Prints one table
with the targets checked per row and optionally draws the curves as a PNG (PIL).

Where conventional does not run (``--no-conventional-above``, e.g. ResNet at 8192² on a 23 GiB
machine), the fractions are of the plan's whole-image estimate ("0.5 est.") and "all kept" is
left out (it needs what conventional needs). A budget whose step the plan says needs more than
85% of the memory available (the machine's on CPU, the GPU's free memory on CUDA) is not run and
is reported as such, outside the targets' count.

Targets (ratios to conventional in the same run): a budget at least conventional's peak ->
at most 1.05x its time; half its peak -> at most 1.15x; "tile only" -> no slower than "stream"
(today's schedule; 5% allowed for noise); every budget row: peak at most 1.1 x (the budget the
plan needs + what every method holds: the stitched map, its gradient, the input's gradient).

Memory is counted two ways. *tensor peak*: the most bytes of live tensors during the step, the
measure the budgets and the memory target use (on CUDA, ``max_memory_allocated``; on CPU the
profiler's allocation events in a second, untimed step: ``streaming.TensorPeak``). *RSS peak*:
the process's resident memory above the step's start, which also counts the freed heap glibc
keeps resident (as CUDA's caching allocator keeps its reserve); it is printed beside, not held to
the target.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
from pathlib import Path

MiB = 2**20
#: (label, fraction of conventional's peak); None: a fixed budget (0 or everything).
LEVELS = (("tile only", 0.0), ("0.25 conv", 0.25), ("0.5 conv", 0.5), ("1.0 conv", 1.0), ("all kept", None))
ALL = 1 << 44
#: A row runs only if the step's estimated need is at most this share of the memory available: the
#: interpreter, the libraries and the allocator's slack need the rest.
MEMORY_SHARE = 0.85


def plan_rows(models, sizes, tiles) -> list[tuple[str, int, int]]:
    return [(m, s, t) for m in models for s in sizes for t in tiles if t <= s]


def main(args, run_config) -> int:
    if args.table_from:  # earlier runs (e.g. one per size and tile): one table, one curve
        rows = [r for f in args.table_from for r in json.loads(f.read_text())]
        print_table(rows)
        if args.png:
            draw_curves(rows, args.png)
        return 0
    models = args.models or (["smallnet"] if args.quick else ["smallnet", "resnet34-layer2"])
    sizes = args.sizes or ([1024] if args.quick else [2048, 4096, 8192])
    tiles = args.tiles or ([512] if args.quick else [1024, 2048])
    rows: list[dict] = []
    device, amp = args.device, args.autocast
    with tempfile.TemporaryDirectory() as ref_dir:
        base = dict(mode="train", threads=args.threads, ref_dir=ref_dir, device=device, autocast=amp,
                    tensor_peak=True, steady=args.steady)
        for model in models:
            for size in sizes:
                for method in ("conventional", "checkpoint"):
                    if size > args.no_conventional_above:
                        rows.append(dict(base, model=model, size=size, method=method, tile=None,
                                         error=f"not run above {args.no_conventional_above}² (--no-conventional-above)"))
                    else:
                        res = run_config(dict(base, model=model, size=size, method=method, tile=None))
                        rows.append(dict(base, model=model, size=size, method=method, tile=None, **res))
                    _print_row(rows[-1], rows)
                conv = rows[-2]
                for tile in [t for t in tiles if t <= size]:
                    today = run_config(dict(base, model=model, size=size, method="stream", tile=tile))
                    rows.append(dict(base, model=model, size=size, method="stream", tile=tile, **today))
                    _print_row(rows[-1], rows)
                    for label, frac in [lv for lv in LEVELS if not args.levels or lv[0] in args.levels]:
                        if frac is None and "peak_mib" not in conv:
                            continue  # the whole image as one block needs what conventional needs
                        if frac is None:
                            budget = ALL
                        elif frac == 0.0:
                            budget = 0
                        elif "peak_mib" in conv:
                            budget = int(frac * tensor_peak_mib(conv) * MiB)
                        else:
                            # Conventional did not run (too large): a fraction of the plan's
                            # estimate for the whole image instead, named so.
                            budget = int(frac * whole_image_need(model, size, tile, args.device, amp))
                            label = label.replace("conv", "est.")
                        cfg = dict(base, model=model, size=size, method="stream-budget", tile=tile, budget=budget,
                                   level=label, frac=frac)
                        need, memory = step_need(model, size, tile, budget, device, amp), available_memory_bytes(device)
                        if need > MEMORY_SHARE * memory:
                            # The kernel would kill the worker part-way (minutes in): say why instead.
                            rows.append(dict(cfg, skipped=f"needs {need / MiB:.0f} MiB, more than "
                                                          f"{MEMORY_SHARE:.0%} of the {memory / MiB:.0f} MiB available"))
                        else:
                            rows.append({**cfg, **run_config(cfg)})
                        _print_row(rows[-1], rows)
    if args.json:
        from engine.io.atomic import write_text

        write_text(args.json, json.dumps(rows, indent=1))
    print()
    print_table(rows)
    if args.png:
        draw_curves(rows, args.png)
        print(f"\ncurve: {args.png}")
    return 0


def available_memory_bytes(device: str, meminfo: Path = Path("/proc/meminfo")) -> int:
    """What a row on ``device`` can use: the GPU's free memory, or the machine's available memory
    (MemAvailable: free plus what the kernel can reclaim; physical memory where it is unknown)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def step_need(model: str, size: int, tile: int, budget: int, device: str, amp: str | None) -> int:
    """What a training step at ``budget`` needs in all: the plan's estimate (kept graphs, backward
    work, the stitched map and its gradient) plus the float32 input image and its gradient."""
    return _plan_peak(model, size, tile, budget, amp) + 2 * 3 * size * size * 4


def whole_image_need(model: str, size: int, tile: int, device: str, amp: str | None) -> int:
    """The plan's bytes for keeping everything (what "all kept" would need)."""
    return _plan_peak(model, size, tile, ALL, amp)


def _plan_peak(model: str, size: int, tile: int, budget: int, amp: str | None) -> int:
    plan = _stream(model, tile).graph_plan((size, size), graph_budget=budget, element_bytes=2 if amp else 4)
    return plan.peak_bytes


@functools.lru_cache(maxsize=None)
def _stream(model: str, tile: int):
    """One streaming trunk per model and tile for the run's plans: its byte profile is measured
    once, not again for every budget row that asks what its step needs."""
    from streaming import MODELS  # bench/streaming.py, which imports this module

    from engine.models import create_model
    from engine.streaming import StreamingModule

    arch, split, kw = MODELS[model]
    return StreamingModule(create_model(arch, split=split, num_classes=2, **kw).eval().trunk(), tile)


def _time_key(r: dict) -> str:
    return "seconds" if r.get("device") == "cuda" else "cpu_seconds"


def _conventional(rows, r) -> dict | None:
    for c in rows:
        if c["model"] == r["model"] and c["size"] == r["size"] and c["method"] == "conventional" and "peak_mib" in c:
            return c
    return None


def _today(rows, r) -> dict | None:
    for c in rows:
        if (c["model"], c["size"], c["tile"], c["method"]) == (r["model"], r["size"], r["tile"], "stream") \
                and "peak_mib" in c:
            return c
    return None


def tensor_peak_mib(r: dict) -> float:
    """The row's peak of live tensor bytes (rows from before it was measured: their RSS peak)."""
    return r.get("tensor_peak_mib", r["peak_mib"])


def held_mib(r: dict) -> float:
    """What every method holds besides its graphs: the stitched map, its gradient, the input's gradient."""
    return r["map_mib"] * 2 + r["size"] ** 2 * 3 * 4 / MiB


def budget_used_mib(r: dict) -> float:
    """The budget a row is held to: the one given; where the plan keeps nothing (a budget of 0,
    "tile only", or one below what a tile needs) what the plan says one tile needs, the least any
    schedule can use; for "all kept" (no limit) what the plan says it needs (the whole image as
    one block, or every tile's graph kept: their cones overlap, so more than conventional's)."""
    plan_need = r["plan"]["peak_bytes"] / MiB
    if r["budget"] >= ALL:
        return plan_need
    if r["plan"]["kept"] == 0:
        return max(r["budget"] / MiB, plan_need)
    return r["budget"] / MiB


def peak_ratio(r: dict, rss: bool = False) -> float:
    """Tensor peak (or RSS peak) over (the budget + the map, its gradient and the input's gradient)."""
    return (r["peak_mib"] if rss else tensor_peak_mib(r)) / (budget_used_mib(r) + held_mib(r))


def targets(rows, r) -> list[str]:
    """The targets this row is held to, each "ok ..." or "NOT MET ..."."""
    if r.get("method") != "stream-budget" or "peak_mib" not in r:
        return []
    out = []
    conv, today = _conventional(rows, r), _today(rows, r)
    key = _time_key(r)
    if conv is not None:
        ratio = r[key] / conv[key]
        if r["budget"] / MiB >= tensor_peak_mib(conv):
            out.append(("ok" if ratio <= 1.05 else "NOT MET") + f" time {ratio:.2f}x conv <= 1.05 (budget >= conv peak)")
        elif r.get("frac") == 0.5:
            out.append(("ok" if ratio <= 1.15 else "NOT MET") + f" time {ratio:.2f}x conv <= 1.15 (half conv peak)")
    if r.get("frac") == 0.0 and today is not None:
        ratio = r[key] / today[key]
        out.append(("ok" if ratio <= 1.05 else "NOT MET") + f" time {ratio:.2f}x stream <= 1.05 (tile only)")
    q = peak_ratio(r)
    out.append(("ok" if q <= 1.1 else "NOT MET") + f" tensor peak {q:.2f}x (budget + map) <= 1.10"
               f" (RSS {peak_ratio(r, rss=True):.2f}x)")
    return out


HEADER = ("| model | size | tile | method | budget MiB | plan tile | kept/blocks | est. peak MiB | CPU s | of it sys s "
          "| wall s | x conv | tensor peak MiB | tensors/(budget+map) | RSS peak MiB | RSS/(budget+map) | grad err |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def fmt(r: dict, rows) -> str:
    name = r["method"] + (f" {r['level']}" if "level" in r else "")
    head = f"| {r['model']} | {r['size']}² | {r['tile'] or ''} | {name} |"
    if "error" in r:
        return head + f" | | | | | | failed: {r['error']} | | | | | | |"
    if "skipped" in r:
        budget = "∞" if r["budget"] >= ALL else f"{r['budget'] / MiB:.0f}"
        return head + f" {budget} | | | | | | not run: {r['skipped']} | | | | | | |"
    conv = _conventional(rows, r)
    key = _time_key(r)
    ratio = f"{r[key] / conv[key]:.2f}" if conv else "–"
    plan = r.get("plan")
    budget = ("" if "budget" not in r else "∞" if r["budget"] >= ALL else f"{r['budget'] / MiB:.0f}")
    kept = f"{plan['kept']}/{plan['blocks']}" if plan else ""
    ptile = ("whole" if plan["whole_image"] else "×".join(str(t) for t in plan["tile"])) if plan else ""
    est = f"{plan['estimated_peak_bytes'] / MiB:.0f}" if plan else ""
    q = f"{peak_ratio(r):.2f}" if plan else ""
    q_rss = f"{peak_ratio(r, rss=True):.2f}" if plan else ""
    tensors = f"{tensor_peak_mib(r):.0f}" if "tensor_peak_mib" in r else ""
    err = f"{r['grad_err']:.1e}" if "grad_err" in r else ""
    sys_s = f"{r['sys_seconds']:.1f}" if "sys_seconds" in r else ""  # rows from before it was measured
    return (f"{head} {budget} | {ptile} | {kept} | {est} | {r['cpu_seconds']:.1f} | {sys_s} | {r['seconds']:.2f} | "
            f"{ratio} | "
            f"{tensors} | {q} | {r['peak_mib']:.0f} | {q_rss} | {err} |")


def _print_row(r, rows) -> None:
    print(fmt(r, rows), flush=True)


def print_table(rows) -> None:
    print(HEADER)
    for r in rows:
        print(fmt(r, rows))
    print_targets(rows)


def print_targets(rows) -> None:
    """Every budget row's targets, met or NOT met, and a count."""
    print("\ntargets:")
    met = missed = not_run = 0
    for r in rows:
        if r.get("method") != "stream-budget":
            continue
        where = f"{r['model']} {r['size']}² tile {r['tile']} {r['level']}"
        if "skipped" in r:
            print(f"- {where}: not run ({r['skipped']})")
            not_run += 1
            continue
        if "error" in r:
            print(f"- {where}: NOT MET (failed: {r['error']})")
            missed += 1
            continue
        checks = targets(rows, r)
        met += sum(c.startswith("ok") for c in checks)
        missed += sum(c.startswith("NOT MET") for c in checks)
        print(f"- {where}: " + "; ".join(checks))
    print(f"{met} met, {missed} NOT met" + (f", {not_run} budget rows not run (more than the machine's memory)"
                                            if not_run else ""))


def draw_curves(rows, path) -> None:
    """One panel per (model, size): x tensor peak MiB, y CPU time over conventional's (over
    "stream" at the first tile where conventional did not run); a line per tile through the
    budget rows, hollow squares for "stream" in the tile's colour, a black square for
    conventional and a black diamond for checkpoint. A legend, not labels at the points: those
    overlap where the points crowd."""
    from PIL import Image, ImageDraw

    panels = sorted({(r["model"], r["size"]) for r in rows})
    pw, ph, margin = 460, 320, 52
    img = Image.new("RGB", (pw * min(2, len(panels)), ph * ((len(panels) + 1) // 2)), "white")
    d = ImageDraw.Draw(img)
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    for k, (model, size) in enumerate(panels):
        ox, oy = (k % 2) * pw, (k // 2) * ph
        mine = [r for r in rows if (r["model"], r["size"]) == (model, size) and "peak_mib" in r]
        ref = next((r for r in mine if r["method"] == "conventional"), None)
        ref_name = "conventional"
        if ref is None:
            ref = next((r for r in mine if r["method"] == "stream"), None)
            ref_name = f"stream {ref['tile']}" if ref else ""
        if ref is None:
            continue
        key = _time_key(ref)
        xmax = max(tensor_peak_mib(r) for r in mine) * 1.08
        ymax = max(1.6, max(r[key] / ref[key] for r in mine) * 1.05)

        def at(mib, ratio, ox=ox, oy=oy, xmax=xmax, ymax=ymax):
            return (ox + margin + (pw - margin - 12) * mib / xmax, oy + ph - margin - (ph - margin - 24) * ratio / ymax)

        x0, y0 = at(0, 0)
        x1, y1 = at(xmax, ymax)
        d.rectangle([x0, y1, x1, y0], outline=(0, 0, 0))
        for t in (0.5, 1.0, 1.15):
            _, yt = at(0, t)
            d.line([x0, yt, x1, yt], fill=(200, 200, 200))
            d.text((ox + 4, yt - 6), f"{t:.2f}x", fill=(90, 90, 90))
        # PIL's default font has no "²": plain ASCII labels.
        d.text((ox + margin, oy + 6), f"{model} {size}x{size}: CPU time / {ref_name}", fill=(0, 0, 0))
        d.text((ox + 4, y1), f"{ymax:.2f}x", fill=(90, 90, 90))
        d.text((x0, y0 + 6), "0", fill=(90, 90, 90))
        d.text((x1 - 150, y0 + 6), f"tensor peak, MiB (max {xmax:.0f})", fill=(90, 90, 90))
        tiles = sorted({r["tile"] for r in mine if r["tile"]})
        legend = [(f"budgets, tile {t} (stream: square)", colours[n % len(colours)]) for n, t in enumerate(tiles)]
        for c, tile in zip(colours, tiles, strict=False):  # more tiles than colours: the first four
            pts = sorted((tensor_peak_mib(r), r[key] / ref[key]) for r in mine
                         if r["method"] == "stream-budget" and r["tile"] == tile)
            xy = [at(*pt) for pt in pts]
            if len(xy) > 1:
                d.line(xy, fill=c, width=2)
            for px, py in xy:
                d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=c)
            for r in mine:
                if r["method"] == "stream" and r["tile"] == tile:
                    px, py = at(tensor_peak_mib(r), r[key] / ref[key])
                    d.rectangle([px - 5, py - 5, px + 5, py + 5], outline=c, width=2)
        for r in mine:
            px, py = at(tensor_peak_mib(r), r[key] / ref[key])
            if r["method"] == "conventional":
                d.rectangle([px - 4, py - 4, px + 4, py + 4], fill=(0, 0, 0))
            elif r["method"] == "checkpoint":
                d.polygon([(px, py - 5), (px + 5, py), (px, py + 5), (px - 5, py)], fill=(0, 0, 0))
        if any(r["method"] == "conventional" for r in mine):
            legend.append(("conventional: square, checkpoint: diamond", (0, 0, 0)))
        for n, (text, c) in enumerate(legend):
            d.text((x0 + 8, y1 + 6 + 12 * n), text, fill=c)
    from engine.io.atomic import write_bytes  # every file through the one atomic writer

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
