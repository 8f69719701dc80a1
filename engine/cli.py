"""``python -m engine``: headless commands on the same API the viewer uses.

Exit codes: 0 done; 2 bad arguments (also: a training folder holding another run, or a resume
that would change it); 3 at least one slide could not be read (the others were
done); 4 the model could not be loaded; 5 cancelled (Ctrl-C, or SIGTERM for ``train``); 6 results
could not be written; 7 training stopped on repeated non-finite losses or gradients.
``evaluate`` (a model on a labelled cohort) is :mod:`engine.evaluate.cli`.
Under ``torchrun --nproc_per_node=N`` the slides are sharded across ranks (rank r takes every
N-th slide from r), each rank on its own GPU when there are GPUs (:func:`engine.devices.resolve_device`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from engine.annotations import cli as annotations_cli
from engine.devices import DEVICE_HELP
from engine.errors import (
    CheckpointError,
    ResultsError,
    RunFolderError,
    SlideError,
    SpecError,
    StreamSlideError,
    TrainingError,
)
from engine.evaluate import cli as evaluate_cli
from engine.events import (
    CancelToken,
    CheckpointSaved,
    Finished,
    JobWarning,
    Metrics,
    Progress,
    StepSkipped,
)
from engine.exits import EXIT_CANCELLED, EXIT_DIVERGED, EXIT_MODEL, EXIT_OK, EXIT_SLIDE, EXIT_USAGE, EXIT_WRITE
from engine.io import heatmap_cli
from engine.specs import HEADS, POOLS, TISSUE_MASKS, InferenceSpec, TrainingSpec, parse_bytes
from engine.train.cli import add_task_arguments, task_fields

LOW_MEMORY_HELP = ("give freed memory back to the OS after every tile (CPU): peak memory stays flat with "
                   "the slide's size, at about 20%% more time")


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


def _run_slides(args, saliency: bool) -> int:
    from engine.io.call_summary import SlideOutcome, output_folders, write_summary

    world_slides = list(args.slides)
    # Folder names are chosen over every slide of the call (not just this rank's), so two slides
    # of the same name get distinct folders whichever ranks they land on.
    folders = dict(zip(world_slides, output_folders(args.out, world_slides), strict=True))
    slides, rank = _shard(world_slides)
    outcomes = [SlideOutcome(path, folders[path].name) for path in slides]
    command = "saliency" if saliency else "infer"
    try:
        write_summary(args.out, command, args.model, outcomes, rank=rank)  # a read-only --out fails now, not after the work
    except ResultsError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_WRITE
    token = CancelToken()

    def on_sigint(signum, frame):
        if token.cancelled:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        token.cancel()
        sys.stderr.write("\ncancelling at the next tile (Ctrl-C again to abort)...\n")

    previous = signal.signal(signal.SIGINT, on_sigint)
    failed: list[str] = []
    try:
        for path, outcome in zip(slides, outcomes, strict=True):
            out_dir = folders[path]
            spec = InferenceSpec(slide_path=path, model_path=args.model, level=args.level, mpp=args.mpp,
                                 tile_size=args.tile, device=args.device, saliency=saliency,
                                 saliency_class=args.saliency_class, saliency_cell=args.cell,
                                 out_dir=str(out_dir), low_memory=args.low_memory, regions=args.regions,
                                 include_classes=args.include, exclude_classes=args.exclude,
                                 tissue_mask=args.tissue_mask)
            try:
                result = _run_one(spec, ProgressBar(Path(path).name), token)
            except SlideError as exc:
                print(f"skipped {path}: {exc}", file=sys.stderr)
                outcome.status, outcome.error = "failed", str(exc)
                failed.append(path)
                continue
            except CheckpointError as exc:
                outcome.status, outcome.error = "failed", str(exc)
                print(f"cannot load model {args.model}: {exc}", file=sys.stderr)
                return EXIT_MODEL
            except ResultsError as exc:
                outcome.status, outcome.error = "failed", str(exc)
                print(str(exc), file=sys.stderr)
                return EXIT_WRITE
            outcome.status = "cancelled" if result.cancelled else "done"
            outcome.warnings = list(result.warnings)
            for warning in result.warnings:
                print(f"warning: {path}: {warning}", file=sys.stderr)
            if result.prediction is not None:
                outcome.label = result.prediction.label
                probs = ", ".join(f"{c}={p:.3f}" for c, p in zip(result.prediction.classes, result.prediction.probabilities, strict=True))
                print(f"{path}: {result.prediction.label} ({probs}) -> {out_dir}")
            if result.cancelled:
                print(f"cancelled; finished maps of {path} were kept in {out_dir} (marked cancelled)", file=sys.stderr)
                return EXIT_CANCELLED
    finally:
        signal.signal(signal.SIGINT, previous)
        try:
            write_summary(args.out, command, args.model, outcomes, rank=rank)
        except ResultsError as exc:
            print(str(exc), file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(slides)} slides failed" + (f" on rank {rank}" if rank else ""), file=sys.stderr)
        return EXIT_SLIDE
    return EXIT_OK


def _run_one(spec: InferenceSpec, bar: ProgressBar, token: CancelToken):
    from engine.api import run_inference  # torch loads here, not for --help

    return run_inference(spec, bar, token)


class TrainingReport:
    """The CLI's adapter for training events: a progress bar on stderr, one line per validation,
    checkpoint and skipped step on stdout (the metrics log file holds every step)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.bar = ProgressBar("train")
        self._epoch = 0

    def __call__(self, event) -> None:
        if isinstance(event, Progress):
            self.bar.label = f"epoch {self._epoch + 1}"
            self.bar(event)
        elif isinstance(event, Metrics):
            self._epoch = event.epoch
            if event.phase == "val":
                values = " ".join(f"{k}={v:.4f}" for k, v in event.values.items())
                self._line(f"epoch {event.epoch + 1} validation: {values}")
        elif isinstance(event, CheckpointSaved):
            self._line(f"saved {event.kind} checkpoint (step {event.step}) -> {event.path}")
        elif isinstance(event, StepSkipped):
            self._line(f"skipped step {event.step}: {event.reason}")
        elif isinstance(event, JobWarning):
            self._line(f"warning: {event.message}")

    def _line(self, text: str) -> None:
        sys.stderr.write("\n")
        self.stream.write(text + "\n")
        self.stream.flush()


def _model_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, value


def _class_list(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _class_weights(text: str):
    if text == "balanced":
        return text
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'balanced' or comma-separated numbers, got '{text}'") from None


def _add_train_parser(sub) -> None:
    d = TrainingSpec(labels="", out_dir="")  # the defaults live in the spec, shown here
    p = sub.add_parser("train", help="fine-tune a classifier on slide-level labels (trunk streamed)")
    p.add_argument("--labels", required=True, help="CSV slide,<targets>[,split][,patient] (paths relative to it) "
                                                    "or a folder per class")
    p.add_argument("--out", required=True, help="run folder: last/, best/, metrics.jsonl, spec.json")
    p.add_argument("--model", default=d.model, help=f"architecture (default {d.model})")
    p.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="extra builder argument, e.g. width=8 for smallnet (repeatable)")
    p.add_argument("--split", help="last streamed stage (default: the architecture's)")
    p.add_argument("--pool", default=d.pool, choices=POOLS)
    p.add_argument("--head", choices=HEADS, help="head on the streamed map: max, avg, gem (learnable exponent) "
                   "or attention (gated attention MIL; default: --pool)")
    p.add_argument("--head-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="head argument, e.g. hidden=256 (attention) or p=4 (gem) (repeatable)")
    p.add_argument("--tissue-mask", default=d.tissue_mask, choices=TISSUE_MASKS,
                   help="pool only each slide's detected tissue and skip blocks without it (default auto)")
    p.add_argument("--tissue-param", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="tissue detector setting, e.g. method=saturation or saturation=25 (repeatable)")
    p.add_argument("--include", type=_class_list, default=(), metavar="CLASS[,..]",
                   help="with an annotations column: the mask is the area of these classes (default: all)")
    p.add_argument("--exclude", type=_class_list, default=(), metavar="CLASS[,..]",
                   help="with an annotations column: leave out the areas of these classes (e.g. pen marks)")
    p.add_argument("--freeze-trunk-epochs", type=int, default=d.freeze_trunk_epochs, metavar="K",
                   help="train only the head on the frozen trunk for the first K epochs (maps cached)")
    p.add_argument("--finetune-lr", type=float, help="learning rate once the trunk is unfrozen (default --lr)")
    p.add_argument("--finetune-tile", type=int, help="tile once the trunk is unfrozen (default --tile)")
    p.add_argument("--pretrained", help="state dict (torchvision/timm names) to start from")
    p.add_argument("--level", type=int, help="pyramid level to read")
    p.add_argument("--mpp", type=float, help="read the level nearest this µm/px")
    p.add_argument("--input-size", type=int, help="pad or crop every slide to this square size (level px)")
    p.add_argument("--no-tissue-crop", action="store_true", help="use the whole slide, not its tissue box")
    p.add_argument("--tile", type=int, default=d.tile_size, help=f"streaming tile, input px (default {d.tile_size})")
    p.add_argument("--no-streaming", action="store_true", help="run the trunk conventionally (for comparison)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--optimizer", default=d.optimizer, choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--schedule", default=d.schedule, choices=("cosine", "constant"))
    p.add_argument("--warmup", type=int, default=d.warmup_steps, help="linear warm-up steps")
    p.add_argument("--accumulate", type=int, default=d.accumulate, help="slides per optimiser step (per rank)")
    p.add_argument("--class-weights", type=_class_weights, help="'balanced' or one weight per class, comma-separated")
    p.add_argument("--no-augment", action="store_true", help="no flips, rotations or colour jitter")
    p.add_argument("--colour-jitter", type=float, default=d.colour_jitter)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="for slides without a split")
    p.add_argument("--device", default=d.device, help=DEVICE_HELP)
    p.add_argument("--dtype", default=d.dtype, choices=("float32", "float64"))
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue the run in OUT (from OUT/last when it exists); "
                   "it may change only the epochs, the learning rate and how the run is run")
    p.add_argument("--overwrite", action="store_true", help="replace the run that OUT holds (its files are removed first)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="also save last every N steps")
    add_task_arguments(p)  # --task, --targets, --loss, --folds, --monitor
    p.add_argument("--max-nonfinite", type=int, default=d.max_nonfinite)
    p.add_argument("--low-memory", action="store_true", help=LOW_MEMORY_HELP)
    p.add_argument("--graph-budget", type=_graph_budget, metavar="BYTES|auto",
                   help="bytes of forward graphs a step keeps so backward recomputes only the rest "
                        "(e.g. 2G, 512M; auto: half the free memory; default: recompute every tile)")


def _graph_budget(text: str):
    try:
        return parse_bytes(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _train(args) -> int:
    spec = TrainingSpec(
        labels=args.labels, out_dir=args.out, model=args.model, split=args.split, pool=args.pool,
        model_kwargs=dict(args.model_arg), pretrained=args.pretrained, level=args.level, mpp=args.mpp,
        input_size=args.input_size, tissue_crop=not args.no_tissue_crop, augment=not args.no_augment,
        colour_jitter=args.colour_jitter, val_fraction=args.val_fraction, streaming=not args.no_streaming,
        tile_size=args.tile, epochs=args.epochs, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, momentum=args.momentum, schedule=args.schedule,
        warmup_steps=args.warmup, accumulate=args.accumulate, class_weights=args.class_weights,
        device=args.device, dtype=args.dtype, mixed_precision=not args.no_amp,
        seed=args.seed, resume=args.resume, overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
        max_nonfinite=args.max_nonfinite, low_memory=args.low_memory, graph_budget=args.graph_budget,
        head=args.head, head_kwargs=dict(args.head_arg), tissue_mask=args.tissue_mask, tissue_params=dict(args.tissue_param),
        include_classes=args.include, exclude_classes=args.exclude, freeze_trunk_epochs=args.freeze_trunk_epochs,
        finetune_lr=args.finetune_lr, finetune_tile=args.finetune_tile,
        **task_fields(args))
    token = CancelToken()

    def on_signal(signum, frame):
        if signum == signal.SIGINT and token.cancelled:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        token.cancel()
        sys.stderr.write("\nsaving a checkpoint at the next step, then stopping...\n")

    if spec.overwrite:
        from engine.io.runs import RunFolder

        if found := RunFolder(spec.out_dir).run_files():
            print(f"replacing the run in {spec.out_dir} (--overwrite): removing {', '.join(found)}", file=sys.stderr)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from engine.api import run_training  # torch loads here, not for --help

        result = run_training(spec, TrainingReport(), token)
    except RunFolderError as exc:
        print(f"cannot train into {spec.out_dir}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ResultsError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_WRITE
    except TrainingError as exc:
        print(f"training stopped: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except SlideError as exc:
        print(f"cannot read a slide: {exc}", file=sys.stderr)
        return EXIT_SLIDE
    except CheckpointError as exc:
        print(f"checkpoint problem: {exc}", file=sys.stderr)
        return EXIT_MODEL
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if result.cancelled:
        print(f"cancelled; resume with --resume (checkpoint in {result.outputs.get('last')})", file=sys.stderr)
        return EXIT_CANCELLED
    print("done: " + ", ".join(f"{k} {v}" for k, v in result.outputs.items()))
    return EXIT_OK


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
        p.add_argument("--device", default=InferenceSpec.device, help=DEVICE_HELP)
        p.add_argument("--cell", type=int, default=InferenceSpec.saliency_cell,
                       help=f"saliency map cell, input pixels (default {InferenceSpec.saliency_cell})")
        p.add_argument("--saliency-class", type=int, help="class index for saliency (default: predicted)")
        p.add_argument("--low-memory", action="store_true", help=LOW_MEMORY_HELP)
        p.add_argument("--regions", help="annotation file (GeoJSON / ASAP XML): compute only inside its areas")
        p.add_argument("--include", type=_class_list, default=(), metavar="CLASS[,..]",
                       help="only these classes of --regions (default: every area)")
        p.add_argument("--exclude", type=_class_list, default=(), metavar="CLASS[,..]",
                       help="leave out the areas of these classes of --regions")
        p.add_argument("--tissue-mask", choices=TISSUE_MASKS,
                       help="pool only the detected tissue, skipping blocks without it (default: as the model card says)")
    _add_train_parser(sub)
    evaluate_cli.add_parser(sub)
    annotations_cli.add_parser(sub)
    annotations_cli.add_score_parser(sub)
    heatmap_cli.add_parser(sub)
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if args.command == "demo":
        from engine.demo import check as demo_check
        return demo_check.main()
    if hasattr(args, "annotations_main"):  # annotations, score-maps: torch-free
        return args.annotations_main(args)
    if hasattr(args, "export_main"):
        return args.export_main(args)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return evaluate_cli.main(args)
        return _run_slides(args, saliency=args.command == "saliency")
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return EXIT_CANCELLED
    except (StreamSlideError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
