"""``python -m engine evaluate --model M --labels test.csv --out DIR``.

``add_parser(subparsers)`` adds the command; ``main(args)`` runs it and prints the metrics
table. Exit codes follow the engine CLI's: 0 done (slides that failed are listed, and counted in
``metrics.json``); 2 bad labels or options; 3 every slide failed; 4 the model could not be
loaded; 5 cancelled (what was done is written); 6 the results could not be written.
"""

from __future__ import annotations

import argparse
import signal
import sys

from engine.errors import CheckpointError, LabelsError, ResultsError, SpecError
from engine.events import CancelToken, JobWarning, Progress
from engine.exits import EXIT_CANCELLED, EXIT_MODEL, EXIT_OK, EXIT_SLIDE, EXIT_USAGE, EXIT_WRITE
from engine.specs import EvaluationSpec


def add_parser(subparsers) -> argparse.ArgumentParser:
    d = EvaluationSpec(model="", labels="", out_dir="")  # the defaults live in the spec
    p = subparsers.add_parser("evaluate", help="evaluate a model on a labelled cohort: predictions, metrics "
                                               "with 95%% intervals, a plot")
    p.add_argument("--model", required=True, help="checkpoint folder or model.json")
    p.add_argument("--labels", required=True, help="CSV slide,<targets>[,split][,patient] (paths relative to it)")
    p.add_argument("--out", required=True, help="folder for predictions.csv, metrics.json and plot.svg")
    p.add_argument("--targets", help="the CSV's target column(s), comma-separated (default: the model's)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--level", type=int, help="pyramid level to read (default: from the model's MPP)")
    p.add_argument("--mpp", type=float, help="read at the level nearest this µm/px")
    p.add_argument("--input-size", type=int, help="pad or crop every slide to this square size "
                                                  "(default: the size the model was trained at)")
    p.add_argument("--no-tissue-crop", action="store_true", help="use the whole slide, not its tissue box")
    p.add_argument("--tile", type=int, help="tile size in input pixels (default: the model's)")
    p.add_argument("--threshold", type=float, help="binary: class-1 probability counted positive (default: arg-max)")
    p.add_argument("--patient-aggregate", default=d.patient_aggregate, choices=EvaluationSpec.PATIENT_AGGREGATES,
                   help=f"how a patient's slides combine (default {d.patient_aggregate})")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap, help=f"resamples for the 95%% intervals "
                                                                      f"(default {d.bootstrap}; 0: none)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--tissue-mask", choices=("auto", "none"),
                   help="pool only each slide's detected tissue (default: as the model card says)")
    p.set_defaults(evaluate_main=main)
    return p


def spec_from_args(args: argparse.Namespace) -> EvaluationSpec:
    return EvaluationSpec(model=args.model, labels=args.labels, out_dir=args.out, device=args.device,
                          targets=args.targets, level=args.level, mpp=args.mpp, input_size=args.input_size,
                          tissue_crop=not args.no_tissue_crop, tile_size=args.tile, threshold=args.threshold,
                          patient_aggregate=args.patient_aggregate, bootstrap=args.bootstrap, seed=args.seed,
                          tissue_mask=args.tissue_mask)


class _Report:
    def __init__(self, err):
        self.err = err

    def __call__(self, event) -> None:
        if isinstance(event, JobWarning):
            self.err.write(f"\nwarning: {event.message}\n")
        elif isinstance(event, Progress):
            eta = "" if event.eta_s is None else f", ETA {event.eta_s:.0f} s"
            self.err.write(f"\revaluate {event.done}/{event.total} slides{eta} ")
            self.err.flush()


def main(args: argparse.Namespace, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    token = CancelToken()
    try:
        spec = spec_from_args(args)
    except SpecError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE

    def on_signal(signum, frame):
        token.cancel()

    previous = signal.signal(signal.SIGINT, on_signal)
    try:
        from engine.evaluate.run import evaluate  # torch loads here, not for --help

        result = evaluate(spec, _Report(err), token)
    except (LabelsError, SpecError) as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    except CheckpointError as exc:
        err.write(f"model problem: {exc}\n")
        return EXIT_MODEL
    except ResultsError as exc:
        err.write(f"cannot write the results: {exc}\n")
        return EXIT_WRITE
    finally:
        signal.signal(signal.SIGINT, previous)
    err.write("\n")
    if not result.outputs:  # a rank other than 0 under torchrun: rank 0 reports
        return EXIT_OK
    out.write(result.table + "\n")
    for f in result.failed:
        err.write(f"failed: {f['slide']}: {f['error']}\n")
    out.write("wrote " + ", ".join(result.outputs.values()) + "\n")
    if result.cancelled:
        return EXIT_CANCELLED
    if result.failed and not result.metrics.get("evaluated"):
        return EXIT_SLIDE
    return EXIT_OK
