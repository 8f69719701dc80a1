"""The demo task: a fixed cohort of synthetic slides where lesions are small and subtle.

Every slide is 4096 x 4096 level-0 pixels at 0.5 µm/px (2 x 2 mm), with levels at 1, 2, 4 and 8
times downsampled, each the box average of level 0 as a scanner at lower magnification would
see it. Positive slides hold 2–4 lesions of 300 µm across: clusters of large, paler nuclei whose
mean colour matches the surrounding tissue, so they are plain at 0.5–1 µm/px and fade at 4 µm/px
(measured: the 8x-averaged colour inside and outside lesions differs by about 1 of 255; only its
spread differs, 19 vs 15). That makes resolution matter, as small metastases do in the paper.
(A subtler version, nuclei at a third of the contrast and colour spread equal too, was not
learnt from 32 slides at any resolution in 6-8 epochs; this one is, at 2 µm/px, from the first
epoch.) Labels are image-level; the
lesion masks beside the slides are for evaluation only.

The resolution study (``bench/resolution.py``) uses its own cohort of the same shape,
:func:`resolution_cohort`: smaller slides (1 x 1 mm) whose lesions differ from the tissue only
inside the nuclei (vesicular nuclei: clear centre, darker rim, the same stain per nucleus), so
that at 2–4 µm/px nothing is left of them, not even a difference in colour spread. The demo's
lesions keep a spread difference at 4 µm/px, and there a low-resolution model won.

Slides are generated once into a cache folder (``STREAMSLIDE_CACHE`` or ``~/.cache/streamslide``)
and reused while their recipe is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine.demo.synthetic import SlideRecipe, write_synthetic_slide
from engine.io import atomic
from engine.io.labels import write_labels_csv

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
DEMO_MODEL_DIR = RESOURCES / "demo_model"  # model.safetensors + model.json (made by resources/train_demo_model.py)
CLASSES = ("normal", "lesion")
LEVEL_DOWNSAMPLES = (1, 2, 4, 8)
SPLITS = {"train": 32, "val": 8, "test": 24}  # slides per split, half of them positive
RESOLUTION_SLIDE_PX = 2048


def demo_recipe(seed: int, positive: bool) -> SlideRecipe:
    return SlideRecipe(seed=seed, size=(4096, 4096), mpp=0.5, positive=positive,
                       lesions=2 + seed % 3, lesion_radius_um=150.0,
                       lesion_cell_radius_px=(6.0, 8.0), lesion_cell_spacing_px=45.0, lesion_cell_strength=0.6)


@dataclass(frozen=True)
class DemoSlide:
    name: str
    split: str
    label: str
    recipe: SlideRecipe

    def path(self, root: Path) -> Path:
        return Path(root) / f"{self.name}.svs"

    def mask_path(self, root: Path) -> Path:
        return Path(root) / f"{self.name}.mask.npz"


def resolution_recipe(seed: int, positive: bool) -> SlideRecipe:
    """The resolution study's slides (``bench/resolution.py``): 2048² at 0.5 µm/px (1 x 1 mm),
    1–3 lesions of 150 µm across whose nuclei are vesicular (clear centre, darker rim, the same
    place, size and amount of stain as the normal nuclei they replace). Box-averaged to 2 or
    4 µm/px the lesions match the tissue around them in mean colour and in its spread (measured
    in ``tests/test_synthetic.py``); at 0.5–1 µm/px their rims are plain."""
    return SlideRecipe(seed=seed, size=(RESOLUTION_SLIDE_PX, RESOLUTION_SLIDE_PX), mpp=0.5, positive=positive,
                       lesions=1 + seed % 3, lesion_radius_um=75.0, nucleus_spacing_px=30.0,
                       nucleus_radius_px=(4.0, 5.0), lesion_texture="vesicular", vesicle_fraction=0.5)


def demo_cohort(splits: dict[str, int] | None = None, *, recipe: Callable[[int, bool], SlideRecipe] = demo_recipe,
                prefix: str = "demo") -> list[DemoSlide]:
    """The cohort, in a fixed order: per split, positives and negatives alternating."""
    slides = []
    for split_index, (split, count) in enumerate((splits or SPLITS).items()):
        for i in range(count):
            seed = 1000 * (split_index + 1) + i
            positive = i % 2 == 0
            slides.append(DemoSlide(f"{prefix}-{split}-{i:02d}-{CLASSES[positive]}", split, CLASSES[positive],
                                    recipe(seed, positive)))
    return slides


def resolution_cohort(splits: dict[str, int] | None = None) -> list[DemoSlide]:
    return demo_cohort(splits, recipe=resolution_recipe, prefix="res")


#: The regression cohort's target column: vesicular nuclei per mm² of tissue.
REGRESSION_TARGET = "density"
REGRESSION_MAX_FRACTION = 0.5


def regression_recipe(seed: int) -> SlideRecipe:
    """The regression study's slides (``bench/resolution.py --task regression``): the resolution
    study's slide (2048² at 0.5 µm/px, the same nuclei) without lesions, where a share of the
    nuclei drawn per slide in [0, 0.5] is vesicular, scattered over the tissue (the target, per mm² of tissue, follows that share, not the tissue's amount). A vesicular
    nucleus holds the same stain as a solid one, so at 2–4 µm/px the slides match in mean colour
    whatever the share; at 0.5–1 µm/px each vesicular rim is plain, and counting them gives the target."""
    share = float(np.random.default_rng([seed, 11]).uniform(0, REGRESSION_MAX_FRACTION))
    return SlideRecipe(seed=seed, size=(RESOLUTION_SLIDE_PX, RESOLUTION_SLIDE_PX), mpp=0.5, positive=False,
                       lesions=0, nucleus_spacing_px=30.0, nucleus_radius_px=(4.0, 5.0),
                       lesion_texture="vesicular", vesicle_fraction=0.5, scattered_vesicular_fraction=share)


def regression_cohort(splits: dict[str, int] | None = None) -> list[DemoSlide]:
    """The regression cohort, in a fixed order; each slide's ``label`` is its target, the number
    of vesicular nuclei per mm² of tissue, as text."""
    from engine.demo.synthetic import Scene

    slides = []
    for split_index, (split, count) in enumerate((splits or SPLITS).items()):
        for i in range(count):
            recipe = regression_recipe(1000 * (split_index + 1) + i)
            scene = Scene(recipe)
            # Per area of tissue, not of slide: how much tissue a slide holds must not predict it.
            per_mm2 = scene.vesicular_in_tissue() / max(scene.tissue_mm2(), 1e-6)
            slides.append(DemoSlide(f"reg-{split}-{i:02d}", split, f"{per_mm2:.1f}", recipe))
    return slides


def write_regression_labels(path: Path, slides: list[DemoSlide], slides_dir: Path | None = None) -> None:
    """``labels.csv`` of a regression cohort: ``slide,density,split`` (slides in ``slides_dir``,
    default beside the CSV)."""
    root = Path(slides_dir).resolve() if slides_dir is not None else None
    write_labels_csv(path, [(slide.path(root) if root else f"{slide.name}.svs", slide.label, slide.split)
                            for slide in slides], header=("slide", REGRESSION_TARGET, "split"))


def default_cache_dir(name: str = "demo-slides") -> Path:
    base = os.environ.get("STREAMSLIDE_CACHE") or Path.home() / ".cache" / "streamslide"
    return Path(base) / name


def _fingerprint(slide: DemoSlide) -> str:
    text = json.dumps([asdict(slide.recipe), LEVEL_DOWNSAMPLES], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_demo_slides(root: str | os.PathLike | None = None, slides: list[DemoSlide] | None = None,
                       progress: Callable[[int, int, str], None] | None = None, *, labels: bool = True) -> Path:
    """Generate the slides that are missing or stale under ``root`` (default: the cache folder)
    and, with ``labels``, write ``labels.csv`` (``slide,label,split``) listing them. Returns
    ``root``. About 3 s a slide. (The viewer demo makes one slide and leaves the labels of a
    cohort already there alone.)"""
    root = atomic.make_folder(root if root is not None else default_cache_dir())
    slides = demo_cohort() if slides is None else slides
    for i, slide in enumerate(slides):
        stamp = root / f"{slide.name}.recipe"
        if not (slide.path(root).exists() and stamp.exists() and stamp.read_text() == _fingerprint(slide)):
            if progress:
                progress(i, len(slides), slide.name)
            write_synthetic_slide(slide.path(root), slide.recipe, downsamples=LEVEL_DOWNSAMPLES)
            atomic.write_text(stamp, _fingerprint(slide))  # written last: a killed run regenerates the slide
    if labels:
        write_labels(root / "labels.csv", slides)
    return root


def write_labels(path: Path, slides: list[DemoSlide]) -> None:
    """``labels.csv`` of the cohort: ``slide,label,split``, slide files beside it."""
    write_labels_csv(path, [(f"{slide.name}.svs", slide.label, slide.split) for slide in slides])


def showcase_slide() -> DemoSlide:
    """The positive test slide the demo opens (not seen in training)."""
    return next(s for s in demo_cohort() if s.split == "test" and s.label == "lesion")


def demo_training_spec(labels: str | os.PathLike, out_dir: str | os.PathLike, *, input_size: int = 2048,
                       epochs: int = 6, seed: int = 0, device: str = "auto", streaming: bool = True,
                       slide_px: int = 4096):
    """How the demo model is trained (and each resolution of ``bench/resolution.py``): SmallNet
    (16 channels, total stride 16, max-pooled head, so one lesion anywhere can decide the
    slide) on whole ``slide_px``² slides read at the level that makes them ``input_size``² pixels,
    image-level labels, AdamW with a cosine schedule, flips/rotations and mild colour jitter."""
    from engine.specs import TrainingSpec

    # By µm/px, not level index, so the model's card is right on any slide's pyramid.
    mpp = 0.5 * LEVEL_DOWNSAMPLES[LEVEL_DOWNSAMPLES.index(slide_px // input_size)]
    return TrainingSpec(labels=str(labels), out_dir=str(out_dir), model="smallnet", pool="max",
                        model_kwargs={"width": 16}, classes=CLASSES, mpp=mpp, input_size=input_size,
                        tissue_crop=False, augment=True, colour_jitter=0.03, streaming=streaming,
                        tile_size=min(input_size, 1024), epochs=epochs, optimizer="adamw", lr=2e-3,
                        weight_decay=1e-4, schedule="cosine", warmup_steps=4, seed=seed, device=device,
                        monitor="auc")
