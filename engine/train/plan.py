"""What a training run's streamed step will do before it starts: tile, blocks, blocks whose
forward graph is kept (the graph budget), estimated peak memory. Shown by the training panel
before Start (through :func:`engine.api.plan_training`)."""

from __future__ import annotations

from engine.devices import resolve_device
from engine.io.labels import read_labels
from engine.models import create_model
from engine.slides import open_slide
from engine.slides.region import choose_level, level_region
from engine.specs import GRAPH_BUDGET_AUTO_SHARE, TrainingSpec
from engine.streaming import StreamingModule
from engine.streaming.keep import resolve_graph_budget

MAX_SLIDES_READ = 64  # slides whose size is looked up for the largest input (header reads only)


def largest_input(spec: TrainingSpec) -> tuple[int, int]:
    """The largest input a step reads (level pixels): ``input_size`` square, else the largest
    slide at its chosen level (whole slide: an upper bound when the tissue box is cropped)."""
    if spec.input_size is not None:
        return int(spec.input_size), int(spec.input_size)
    best = (0, 0)
    for record in read_labels(spec.labels, spec.classes).records[:MAX_SLIDES_READ]:
        with open_slide(record.path) as slide:
            level = choose_level(slide, level=spec.level, mpp=spec.mpp, fallback_level=None)
            region = level_region(slide, level, (0, 0, *slide.dimensions))
            if region.lv_w * region.lv_h > best[0] * best[1]:
                best = (region.lv_h, region.lv_w)
    return best


def plan_training(spec: TrainingSpec, in_hw: tuple[int, int] | None = None) -> dict:
    """The streamed step's plan for ``spec`` on an input of ``in_hw`` level pixels (rows, cols;
    default :func:`largest_input`): ``streaming``, ``in_hw``, ``device``, ``graph_budget``
    (bytes, "auto" resolved now), and the plan's ``tile``, ``blocks``, ``kept``,
    ``recomputed``, ``kept_bytes``, ``estimated_peak_bytes`` (see GraphPlan.summary)."""
    import torch

    device = resolve_device(spec.device)
    hw = tuple(in_hw) if in_hw is not None else largest_input(spec)
    out = {"streaming": spec.streaming, "in_hw": hw, "device": str(device)}
    if not spec.streaming:
        return out
    budget = resolve_graph_budget(spec.graph_budget, device, GRAPH_BUDGET_AUTO_SHARE)
    kwargs = dict(spec.model_kwargs)
    if spec.split is not None:
        kwargs["split"] = spec.split
    dtype = getattr(torch, spec.dtype)
    model = create_model(spec.model, num_classes=2, pool=spec.pool, **kwargs).to(dtype).eval()
    # The estimate is per element: measured on the CPU whatever the run's device.
    stream = StreamingModule(model.trunk(), spec.tile_size, freeze_batchnorm=True)
    amp = device.type == "cuda" and spec.mixed_precision and dtype == torch.float32
    plan = stream.plan_summary(hw, element_bytes=2 if amp else dtype.itemsize, graph_budget=budget)
    return {**out, "graph_budget": budget, **{k: v for k, v in plan.items() if k != "budget"}}
