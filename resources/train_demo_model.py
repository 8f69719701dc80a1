"""Rebuild the bundled demo model (resources/demo_model) with the project's own streaming training.

    python resources/train_demo_model.py                # generate the demo cohort, train, package
    python resources/train_demo_model.py --from-run R   # package the best checkpoint of a finished run

Training is ``engine.demo.data.demo_training_spec`` at a 1024² input (the whole 2 x 2 mm demo
slide at 2 µm/px, pyramid level 2): SmallNet, image-level labels only, the trunk streamed,
seed 0. It is the 1024² row of ``bench/resolution.py`` (which keeps its runs in
``bench/out/resolution/full/run-1024``, so ``--from-run`` can package that one): the resolution
that learnt the demo task in a few epochs from 32 slides (see the README's resolution table).
About 3 minutes on 2 CPU cores. The model is written atomically: a failure leaves the previous one in place.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INPUT_SIZE = 1024
EPOCHS = 6
LEVEL = 2  # 4096 / INPUT_SIZE = 4x downsampled: level 2 of the demo slides
MPP = 2.0  # the same in µm/px, which is what the card says (runs before this read by level)


def train(run_dir: Path, epochs: int, device: str) -> Path:
    from engine.api import run_training
    from engine.demo.data import demo_training_spec, ensure_demo_slides
    from engine.events import Metrics

    slides = ensure_demo_slides(progress=lambda i, n, name: print(f"generating {name} ({i + 1}/{n})", flush=True))

    def on_event(event) -> None:
        if isinstance(event, Metrics) and event.phase == "val":
            print(f"epoch {event.epoch}: " + ", ".join(f"val {k} {v:.3f}" for k, v in event.values.items()), flush=True)

    finished = run_training(demo_training_spec(slides / "labels.csv", run_dir, input_size=INPUT_SIZE, epochs=epochs,
                                               device=device), on_event)
    if finished.cancelled or "best" not in finished.outputs:
        raise SystemExit(f"training did not finish; nothing packaged (run folder: {run_dir})")
    return Path(finished.outputs["best"])


def package(best: Path, target: Path) -> None:
    """Copy ``model.safetensors`` + ``model.json`` of ``best`` into ``target``, checked, atomically."""
    from engine.io import atomic
    from engine.io.checkpoints import card_path, load_checkpoint, weights_path

    _, card = load_checkpoint(best)  # verifies the sha256 and the architecture before anything moves
    if card.input_mpp not in (None, MPP) or (card.input_mpp is None and card.input_level != LEVEL) \
            or tuple(card.classes) != ("normal", "lesion"):
        raise SystemExit(f"{best} is not a demo model (µm/px {card.input_mpp}, level {card.input_level}, classes {card.classes})")
    card_json = json.loads(card_path(best).read_text())
    # The run's labels path is this machine's cache; say what the data were instead.
    card_json["input_mpp"], card_json["input_level"] = MPP, None  # the same pixels, right on any pyramid
    card_json["provenance"] = {**card_json.get("provenance", {}), "made_by": "resources/train_demo_model.py (engine.train)",
                               "labels": "engine.demo.data cohort: 32 training + 8 validation slides, image-level labels"}

    def fill(staging: Path) -> None:
        atomic.write_bytes(weights_path(staging), weights_path(best).read_bytes())
        atomic.write_json(card_path(staging), card_json, indent=1)
        load_checkpoint(staging)  # the edited card still describes the weights

    atomic.replace_folder(target, fill)
    print(f"demo model: {target} ({weights_path(target).stat().st_size / 1024:.0f} KiB); "
          f"card: {json.dumps(json.loads(card_path(target).read_text()).get('provenance', {}))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-run", type=Path, help="a finished training run folder (its best/ is packaged)")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "bench" / "out" / "demo-model-run")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--target", type=Path, default=ROOT / "resources" / "demo_model")
    args = parser.parse_args(argv)
    best = args.from_run / "best" if args.from_run else train(args.run_dir, args.epochs, args.device)
    package(best, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
