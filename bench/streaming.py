"""Streaming vs conventional vs torch.utils.checkpoint: time, memory and gradient error.

Each configuration runs in a fresh process (so peak RSS is its own), all in one run of this
script (so ratios compare like with like on a shared, noisy machine). Prints one table.

    python bench/streaming.py --quick          # 1024-2048 px, a few minutes on 2 cores
    python bench/streaming.py                  # up to 4096 px
    python bench/streaming.py --sizes 2048 8192 --models resnet34-layer2 --tiles 2048
    python bench/streaming.py --budgets        # graph budgets: the time-memory curve (streaming_budgets.py)

It imports the installed ``engine`` package (``make install``); a ``--peer-python`` needs it too
(installed there, or ``PYTHONPATH`` naming this checkout, which the workers inherit).

Columns: s/step is one training step (trunk forward, head, loss, backward); s/infer one
inference pass under no_grad; x conv is the ratio to conventional at the same size; floor is
the recompute floor of streaming (one extra forward plus the overlap area) for that tile;
peak MiB is the process's peak RSS above its RSS before the step (the input tensor and model
are already allocated then); work MiB is that peak less what every method must hold (the
stitched map, its gradient and the input's gradient; stream-pooled holds none of them: its
global max pool is reduced block by block); grad err is the max relative error of every parameter gradient and
the input gradient against conventional back-propagation in the same precision.

Layouts: the streaming rows use NHWC (channels-last) tiles, the engine's default. "conventional"
and "lightstream" run NCHW, as PyTorch and the peer's documentation do; "conventional-nhwc" and
"lightstream-nhwc" give them NHWC input too; "stream-nchw" streams NCHW tiles. x conv is the ratio to the fastest conventional row
of that size and mode. (conventional-nhwc training runs up to 2048² only: at 4096² oneDNN falls
back to its reference weight-gradient kernel, and one step had not finished after 9 minutes.)
Inference rows fold BatchNorm into the convolutions for every method, as engine.api does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    # name: (registry name, split, kwargs)
    "resnet34-layer2": ("resnet34", "layer2", {}),
    "smallnet": ("smallnet", "stage4", {"width": 16}),
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: on a shared machine it tracks the work done far
    better than wall time, which other processes inflate."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sys_seconds() -> float:
    """The kernel's share of :func:`_cpu_seconds`: mostly first touches of fresh memory (page
    faults and zeroing), which grow with the bytes a step keeps, not with its arithmetic."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TensorPeak:
    """Peak bytes of live CPU tensors inside a ``with`` block, above those alive at its start: the
    CPU analogue of CUDA's ``max_memory_allocated``. Read from the profiler's memory events (each
    allocation and free of the CPU allocator, in order); unlike RSS it does not count the freed
    heap that glibc keeps resident, nor the profiler's own records."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        from torch._C._autograd import DeviceType

        self._prof.__exit__(*exc)
        # At one instant, allocations before frees: the peak is not understated.
        events = sorted((e.start_ns(), -e.nbytes()) for e in self._prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
        live = peak = 0
        for _, minus_bytes in events:
            live -= minus_bytes
            peak = max(peak, live)
        self.peak_bytes = peak
        self._prof = None
        return False


def worker(cfg: dict) -> dict:
    import torch
    from torch import nn

    from engine.models import create_model
    from engine.models.fold import fold_batchnorm
    from engine.streaming import CallableSource, StreamHooks, StreamingModule
    from engine.streaming.pooled import GlobalPoolReducer

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    arch, split, kw = MODELS[cfg["model"]]
    model = create_model(arch, split=split, num_classes=2, **kw).eval()
    for m in model.modules():  # checkpoint_sequential cannot recompute through in-place ReLUs
        if hasattr(m, "inplace"):
            m.inplace = False
    trunk = model.trunk()
    size, method, mode = cfg["size"], cfg["method"], cfg["mode"]
    if mode == "infer":
        # Every method infers with the same network: BatchNorm folded into the convolutions, as
        # engine.api does when nothing is trained.
        trunk = fold_batchnorm(trunk)
    # NHWC (channels-last) input for every method but the peer as its documentation runs it:
    # oneDNN convolutions are faster so on CPU, and StreamingModule makes its tiles NHWC.
    nhwc = method not in ("lightstream", "conventional", "checkpoint", "stream-nchw")
    layout = torch.channels_last if nhwc else torch.contiguous_format
    # The head is global max pool + linear on the trunk's map, so the figures are the trunk's
    # (a head with more stages costs the same with and without streaming, and hides the ratio).
    channels = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    fc = nn.Linear(channels, 2)
    # adaptive_max_pool2d back-propagates by index (no map-sized masks as amax would make).
    head = lambda fmap: fc(nn.functional.adaptive_max_pool2d(fmap, 1).flatten(1))  # noqa: E731
    # stream-pooled: lazy input, and the global max pool reduced block by block
    # (engine.streaming.pooled), so the trunk's map is never held, nor its gradient.
    # stream-pooled-trim: the same, giving freed heap pages back after every block
    # (StreamHooks(release_every=1)).
    pooled = method.startswith("stream-pooled")
    lazy = method in ("stream-lazy", "stream-pooled", "stream-pooled-trim")

    def make_tile(rows, cols):
        # A deterministic synthetic image computed per tile: nothing of full size exists.
        r = torch.arange(rows[0], rows[1], dtype=torch.float32)[:, None]
        c = torch.arange(cols[0], cols[1], dtype=torch.float32)[None, :]
        ch = torch.arange(3, dtype=torch.float32)[:, None, None]
        return torch.sin(r * 0.013 + ch) * torch.cos(c * 0.007 - ch)[None].expand(1, 3, -1, -1)

    # --budgets --device cuda (bench/gpu_check.sh): the same step on the GPU, maybe under autocast.
    device = torch.device(cfg.get("device", "cpu"))
    model.to(device)
    fc.to(device)
    x = None if lazy else make_tile((0, size), (0, size)).to(device).contiguous(memory_format=layout)
    if x is not None and mode == "train":
        x.requires_grad_(True)
    target = torch.tensor([1], device=device)
    out: dict = {}

    if method.startswith("stream"):
        stream = StreamingModule(trunk, cfg["tile"], channels_last=method != "stream-nchw")
        hooks = StreamHooks(release_every=1 if method == "stream-pooled-trim" else 0)
        if method == "stream-budget":  # graph budget: see streaming_budgets.py
            hooks = StreamHooks(graph_budget=cfg["budget"], release_every=cfg.get("release_every", 0))
            out["plan"] = stream.plan_summary((size, size), graph_budget=cfg["budget"])
        run_trunk = lambda t: stream(t, hooks=hooks)  # noqa: E731
        inp = CallableSource((1, 3, size, size), make_tile) if lazy else x
        out["floor"] = _floor(stream, size)
    elif method.startswith("lightstream"):
        run_trunk, inp = _lightstream_runner(trunk, cfg["tile"], mode, x, out), x
    elif method == "checkpoint":
        from torch.utils.checkpoint import checkpoint_sequential
        children = list(trunk.children())
        run_trunk = lambda t: checkpoint_sequential(nn.Sequential(*children), 4, t, use_reentrant=False)  # noqa: E731
        inp = x
    else:
        run_trunk, inp = trunk, x

    def pooled_step(inp):
        reducer = GlobalPoolReducer("max")
        stream.forward_blocks(inp, hooks=dataclasses.replace(hooks, on_block=reducer.add))
        vec = reducer.pooled().requires_grad_(mode == "train")
        if mode == "train":
            nn.functional.cross_entropy(fc(vec), target).backward()  # fc's gradients, and the pooled vector's
            grads = stream.backward_from(inp, reducer.grad_for_block(vec.grad), params=True, hooks=hooks)
            for p, g in zip(trunk.parameters(), grads, strict=True):
                p.grad = g
        else:
            with torch.no_grad():
                fc(vec)
        return None

    def step(inp):
        amp = cfg.get("autocast")
        if amp:
            with torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16):
                return plain_step(inp)
        return plain_step(inp)

    def plain_step(inp):
        if pooled:
            return pooled_step(inp)
        if mode == "train":
            fmap = run_trunk(inp)
            nn.functional.cross_entropy(head(fmap), target).backward()
        else:
            with torch.no_grad():
                fmap = run_trunk(inp)
                head(fmap)
        return fmap

    # Warm up on a small input: one-time costs (library init, tracing, kernel selection) are not
    # what a whole-slide step costs.
    w = min(512, size)  # (a smoke run's image may be smaller than 512²)
    warm = make_tile((0, w), (0, w)).to(device).contiguous(memory_format=layout).requires_grad_(mode == "train")
    step(CallableSource(warm.shape, make_tile) if lazy else warm)
    model.zero_grad(set_to_none=True)
    fc.zero_grad(set_to_none=True)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        # The warm-up's freed heap pages back to the OS first: left resident, the step would
        # reuse them unseen and its peak above the base would understate what it needs.
        from engine.streaming.heap import release_free_heap

        release_free_heap()
    base = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mib()
    if cfg.get("steady"):
        # --steady: a training run's later steps, not its first. The first full-size step also
        # pays for the first touch of every byte it keeps (kernel time, several seconds a GiB on
        # a VM); later steps reuse what the first one faulted in. The peak still counts both.
        first = _cpu_seconds()
        step(inp)
        out["first_step_cpu_seconds"] = _cpu_seconds() - first  # in the JSON: what the first step cost
        model.zero_grad(set_to_none=True)
        fc.zero_grad(set_to_none=True)
        if x is not None:
            x.grad = None
        if cuda:
            torch.cuda.synchronize()
    cpu0, sys0 = _cpu_seconds(), _sys_seconds()
    t0 = time.perf_counter()
    fmap = step(inp)
    if cuda:
        torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = _cpu_seconds() - cpu0
    out["sys_seconds"] = _sys_seconds() - sys0
    out["peak_mib"] = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_mib()) - base
    out_hw = stream.output_size((size, size)) if pooled else None
    out["map_mib"] = channels * out_hw[0] * out_hw[1] * 4 / 2**20 if pooled else fmap.numel() * fmap.element_size() / 2**20
    # What streaming itself holds beyond what any method must hold: the stitched map (and its
    # gradient) and, when the input is a tensor that wants a gradient, that gradient.
    must_hold = 0.0 if pooled else out["map_mib"] * (2 if mode == "train" else 1)
    if mode == "train" and x is not None:
        must_hold += x.numel() * x.element_size() / 2**20
    out["work_mib"] = out["peak_mib"] - must_hold
    out["total_peak_mib"] = _peak_mib()
    if cuda:
        out["tensor_peak_mib"] = out["peak_mib"]  # allocated bytes already, not the allocator's reserve

    if mode == "train":
        grads = {n: p.grad for n, p in trunk.named_parameters()}
        grads["fc.weight"] = fc.weight.grad
        if x is not None:
            grads["input"] = x.grad
        ref = Path(cfg["ref_dir"]) / f"{cfg['model']}-{size}.pt"
        if method == "conventional":
            torch.save(grads, ref)
        elif ref.exists():  # a lazy input has no input tensor: its parameter gradients are compared
            want = torch.load(ref, weights_only=True)
            err = 0.0
            for n, g in grads.items():
                if g is None:
                    continue
                w = want[n]
                err = max(err, ((g - w).abs().max() / w.abs().max().clamp_min(1e-30)).item())
            out["grad_err"] = err
    if cfg.get("tensor_peak") and not cuda:
        # --budgets on CPU: the live tensor bytes of the same step, the measure its memory target
        # is held to (as CUDA's allocated bytes are on a GPU). A second step, because the
        # profiler that counts them slows the step it watches by 10-40%.
        fmap = grads = None  # not alive at the start of the counted step
        for p in list(trunk.parameters()) + list(fc.parameters()) + ([x] if x is not None else []):
            p.grad = None
        with TensorPeak() as peak:
            step(inp)
        out["tensor_peak_mib"] = peak.peak_bytes / 2**20
    return out


def _lightstream_runner(trunk, tile: int, mode: str, x, out: dict):
    """The published peer (lightstream 1.0.7), driven as its documentation says, on CPU.

    It calls ``.cuda()`` unconditionally, so that is made a no-op while it is built; its
    statistics pass (seconds per tile size) is set-up, reported apart and not timed in the step.
    """
    import torch
    from lightstream.core.constructor import StreamingConstructor
    from torch import nn

    real_cuda = nn.Module.cuda
    nn.Module.cuda = lambda self, *a, **k: self
    try:
        t0 = time.perf_counter()
        peer = StreamingConstructor(trunk, tile, verbose=False, saliency=mode == "train", copy_to_gpu=False,
                                    statistics_on_cpu=True, normalize_on_gpu=False).prepare_streaming_model()
        out["setup_seconds"] = time.perf_counter() - t0
    finally:
        nn.Module.cuda = real_cuda
    peer.device = torch.device("cpu")

    class Run(torch.autograd.Function):
        # The peer's own protocol (forward without a graph, then backward(image, map gradient)),
        # wrapped so the step below reads the same for every method.
        @staticmethod
        def forward(ctx, image, *params):
            ctx.image = image
            return peer.forward(image.detach())

        @staticmethod
        def backward(ctx, grad):
            with torch.enable_grad():  # autograd runs backward without a graph; the peer recomputes tiles
                peer.backward(ctx.image.detach(), grad)
            if ctx.image.requires_grad:
                ctx.image.grad = peer.saliency_map.to(ctx.image.dtype)
            return (None,) + (None,) * len(list(trunk.parameters()))

    params = [p for p in trunk.parameters()]
    return lambda image: Run.apply(image, *params)


def _floor(stream, size: int) -> dict:
    """Recomputed area over image area, from the tile plan (the overlap cost of streaming)."""
    plan = stream.tile_plan((size, size))
    area = sum((rp.cone[1] - rp.cone[0]) * (cp.cone[1] - cp.cone[0]) for rp in plan.row_plans for cp in plan.col_plans)
    cone = max(rp.cone[1] - rp.cone[0] for rp in plan.row_plans)
    return {"overlap": area / size ** 2, "blocks": plan.n_blocks, "cone": cone}


def run_config(cfg: dict, python: str = sys.executable) -> dict:
    proc = subprocess.run([python, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0][:80] + (" (killed: out of memory?)" if proc.returncode < 0 else "")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="sizes 1024 and 2048, tile 1024 (with --budgets: a smoke check, "
                    "smallnet 1024², tile 512)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="default: all (with --budgets --quick: smallnet)")
    ap.add_argument("--sizes", nargs="+", type=int)
    ap.add_argument("--tiles", nargs="+", type=int)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    ap.add_argument("--methods", nargs="+", help="only these methods (conventional, conventional-nhwc, checkpoint, stream, stream-nchw, "
                    "stream-lazy, stream-pooled, stream-pooled-trim, lightstream, lightstream-nhwc); conventional runs first for the error column")
    ap.add_argument("--no-conventional-above", type=int, default=4096,
                    help="skip conventional/checkpoint rows above this size (they need tens of GB)")
    ap.add_argument("--json", type=Path, help="also write all rows as JSON here")
    ap.add_argument("--table-from", type=Path, nargs="+", help="print the table of earlier runs' JSON and exit")
    ap.add_argument("--peer-max-size", type=int, default=4096, help="largest size to run the peer at")
    ap.add_argument("--peer-python", default=None,
                    help="a Python with lightstream installed (default: this one, if it has lightstream)")
    ap.add_argument("--budgets", action="store_true",
                    help="training at graph budgets from 'tile only' to 'all kept' beside conventional and checkpoint")
    ap.add_argument("--png", type=Path, help="with --budgets: draw the time-memory curve here")
    ap.add_argument("--device", default="cpu", help="with --budgets: cpu or cuda")
    ap.add_argument("--autocast", choices=["bf16", "fp16"], help="with --budgets on cuda: mixed precision")
    ap.add_argument("--levels", nargs="+", help="with --budgets: only these budget levels (streaming_budgets.LEVELS)")
    ap.add_argument("--steady", action="store_true",
                    help="with --budgets: time a second full-size step (steady state), not the first")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.budgets:
        import streaming_budgets
        return streaming_budgets.main(args, run_config)
    if args.table_from and not args.budgets:
        _print_table([r for f in args.table_from for r in json.loads(f.read_text())])
        return 0

    peer = args.peer_python
    if peer is None:
        has = subprocess.run([sys.executable, "-c", "import lightstream"], capture_output=True).returncode == 0
        peer = sys.executable if has else None
    sizes = args.sizes or ([1024, 2048] if args.quick else [1024, 2048, 4096])
    tiles = args.tiles or ([1024] if args.quick else [1024, 2048])
    rows = []
    with tempfile.TemporaryDirectory() as ref_dir:
        for model in args.models or list(MODELS):
            for size in sizes:
                methods = []
                if size <= args.no_conventional_above:
                    methods += [("conventional", None), ("conventional-nhwc", None), ("checkpoint", None)]
                # The lazy rows use the smallest tile, so their cones are equal across sizes
                # (compare their memory: it should not grow with the image).
                smallest = min(t for t in tiles if t <= size)
                methods += [(m, t) for m in ("stream", "stream-nchw") for t in tiles if t <= size]
                methods += [(m, smallest) for m in ("stream-lazy", "stream-pooled", "stream-pooled-trim")]
                if peer and size <= args.peer_max_size:
                    methods += [(m, t) for m in ("lightstream", "lightstream-nhwc") for t in tiles if t <= size]
                if args.methods:
                    methods = [(m, t) for m, t in methods if m in args.methods]
                for mode in args.modes:
                    for method, tile in methods:
                        if mode == "infer" and method == "checkpoint":
                            continue  # checkpointing changes nothing without autograd
                        if mode == "train" and method == "conventional-nhwc" and size > 2048:
                            continue  # oneDNN's reference kernel there: see the docstring
                        cfg = dict(model=model, size=size, method=method, tile=tile, mode=mode,
                                   threads=args.threads, ref_dir=ref_dir)
                        res = run_config(cfg, peer if method.startswith("lightstream") else sys.executable)
                        rows.append({**cfg, **res})
                        _print_row(rows, rows[-1])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print()
    _print_table(rows)
    return 0


HEADER = ("| model | size | mode | method | tile (cone) | wall s | CPU s | x conv (CPU) | floor | peak MiB | work MiB "
          "| map MiB | grad err |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _fmt(rows, r) -> str:
    if "error" in r:
        return (f"| {r['model']} | {r['size']}² | {r['mode']} | {r['method']} | {r['tile'] or ''} | failed: "
                f"{r['error']} | | | | | | | |")
    convs = [c for c in rows if c["model"] == r["model"] and c["size"] == r["size"] and c["mode"] == r["mode"]
             and c["method"].startswith("conventional") and "seconds" in c]
    key = "cpu_seconds" if "cpu_seconds" in r and convs and all("cpu_seconds" in c for c in convs) else "seconds"
    conv = min(convs, key=lambda c: c[key]) if convs else None
    ratio = f"{r[key] / conv[key]:.2f}" if conv else "–"
    cpu = f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else ""
    floor = ""
    if "floor" in r:
        ov = r["floor"]["overlap"]
        # train: conventional = 1 forward + 2 backward; streaming = 1 forward + (1 + 2) x overlap
        floor = f"{(1 * ov + 3 * ov) / 3:.2f}" if r["mode"] == "train" else f"{ov:.2f}"
    err = f"{r['grad_err']:.1e}" if "grad_err" in r else ""
    tile = str(r["tile"] or "") + (f" ({r['floor']['cone']})" if "cone" in r.get("floor", {}) else "")
    return (f"| {r['model']} | {r['size']}² | {r['mode']} | {r['method']} | {tile} | {r['seconds']:.2f} | {cpu} | "
            f"{ratio} | {floor} | {r['peak_mib']:.0f} | {r['work_mib']:.0f} | {r['map_mib']:.0f} | {err} |")


def _print_row(rows, r) -> None:
    print(_fmt(rows, r), flush=True)


def _print_table(rows) -> None:
    print(HEADER)
    for r in rows:
        print(_fmt(rows, r))


if __name__ == "__main__":
    raise SystemExit(main())
