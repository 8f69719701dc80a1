"""``python -m engine``: headless commands on the same API the viewer uses.

Exit codes: 0 done; 2 bad arguments; 3 at least one slide could not be read (the others were
done); 4 the model could not be loaded; 5 cancelled (Ctrl-C); 6 results could not be written.
Under ``torchrun --nproc_per_node=N`` the slides are sharded across ranks (rank r takes every
N-th slide from r), each rank on its own GPU when there are GPUs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from engine.errors import CheckpointError, SlideError, StreamSlideError
from engine.jobs import CancelToken, Finished, InferenceSpec, Progress
from engine.results import ResultsError

EXIT_OK, EXIT_USAGE, EXIT_SLIDE, EXIT_MODEL, EXIT_CANCELLED, EXIT_WRITE = 0, 2, 3, 4, 5, 6


class ProgressBar:
    """A one-line text progress bar on stderr: the CLI's adapter for Progress events."""

    def __init__(self, label: str, stream=sys.stderr):
        self.label, self.stream = label, stream

    def __call__(self, event) -> None:
        if isinstance(event, Progress):
            width = 30
            filled = int(width * event.done / max(event.total, 1))
            eta = f" eta {event.eta_s:5.0f}s" if event.eta_s is not None else ""
            self.stream.write(f"\r{self.label} {event.phase:>8} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{event.done}/{event.total}{eta}")
            self.stream.flush()
        elif isinstance(event, Finished):
            self.stream.write("\n")


def _shard(slides: list[str]) -> tuple[list[str], int]:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    return slides[rank::world], rank


def _device_for_rank(device: str) -> str:
    if device == "auto" and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def _run_slides(args, saliency: bool) -> int:
    slides, rank = _shard(args.slides)
    token = CancelToken()

    def on_sigint(signum, frame):
        if token.cancelled:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        token.cancel()
        sys.stderr.write("\ncancelling at the next tile (Ctrl-C again to abort)...\n")

    previous = signal.signal(signal.SIGINT, on_sigint)
    failed: list[str] = []
    try:
        for path in slides:
            out_dir = Path(args.out) / Path(path).stem
            spec = InferenceSpec(slide_path=path, model_path=args.model, level=args.level, mpp=args.mpp,
                                 tile_size=args.tile, device=_device_for_rank(args.device), saliency=saliency,
                                 saliency_class=args.saliency_class, saliency_cell=args.cell,
                                 out_dir=str(out_dir))
            try:
                result = _run_one(spec, ProgressBar(Path(path).name), token)
            except SlideError as exc:
                print(f"skipped {path}: {exc}", file=sys.stderr)
                failed.append(path)
                continue
            except CheckpointError as exc:
                print(f"cannot load model {args.model}: {exc}", file=sys.stderr)
                return EXIT_MODEL
            except ResultsError as exc:
                print(str(exc), file=sys.stderr)
                return EXIT_WRITE
            if result.prediction is not None:
                probs = ", ".join(f"{c}={p:.3f}" for c, p in zip(result.prediction.classes, result.prediction.probabilities))
                print(f"{path}: {result.prediction.label} ({probs}) -> {out_dir}")
            if result.cancelled:
                print(f"cancelled; finished maps of {path} were kept in {out_dir}", file=sys.stderr)
                return EXIT_CANCELLED
    finally:
        signal.signal(signal.SIGINT, previous)
    if failed:
        print(f"{len(failed)} of {len(slides)} slides failed" + (f" on rank {rank}" if rank else ""), file=sys.stderr)
        return EXIT_SLIDE
    return EXIT_OK


def _run_one(spec: InferenceSpec, bar: ProgressBar, token: CancelToken):
    from engine.api import run_inference  # torch loads here, not for --help

    return run_inference(spec, bar, token)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine", description="StreamSlide engine commands")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="stream a ResNet-18 trunk and check it equals conventional back-propagation")
    for name, what in (("infer", "prediction maps and slide-level prediction"),
                       ("saliency", "prediction and saliency maps (streamed input gradient)")):
        p = sub.add_parser(name, help=f"{what} for one or more slides")
        p.add_argument("slides", nargs="+", help="slide files (any format OpenSlide reads)")
        p.add_argument("--model", required=True, help="checkpoint folder or model.json")
        p.add_argument("--out", required=True, help="output folder (one subfolder per slide)")
        p.add_argument("--level", type=int, help="pyramid level to read (default: from the model's MPP)")
        p.add_argument("--mpp", type=float, help="read at the level nearest this µm/px")
        p.add_argument("--tile", type=int, help="tile size in input pixels (default: the model's)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--cell", type=int, default=8, help="saliency map cell, input pixels (default 8)")
        p.add_argument("--saliency-class", type=int, help="class index for saliency (default: predicted)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if args.command == "demo":
        from engine import demo_check
        return demo_check.main()
    try:
        return _run_slides(args, saliency=args.command == "saliency")
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return EXIT_CANCELLED
    except (StreamSlideError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
