"""What the next model run asks for: the Model panel's options (:class:`InferenceSettings`), the
model chosen (:class:`ModelChoice`), and the :class:`~engine.specs.InferenceSpec` they make
for a run on the whole slide, the view on screen or a drawn rectangle (:func:`inference_spec`),
and the selected annotations, with the classes marked exclude taken out (:func:`scoped_spec`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.annotations import Annotation, AnnotationSet
from engine.geometry import Box
from engine.specs import InferenceSpec
from viewer.model.notify import Fields, Notifier
from viewer.model.viewport import Viewport
from viewer.model.workspace import RecentFiles

#: Run scopes: the whole slide (its tissue box), the view on screen, or a drawn rectangle.
SCOPES = ("slide", "view", "region")


class InferenceSettings(Fields):
    """The options of the next run. ``region_mode``: the next left-drag on the view draws the
    rectangle to run on (instead of panning). ``tissue_mask``: compute and pool the slide's
    tissue only (a loaded model's card sets it to the model's own setting, see
    :func:`card_masks_tissue`)."""

    FIELDS = ("device", "saliency", "low_memory", "region_mode", "tissue_mask")

    def __init__(self, device: str = "auto", saliency: bool = True, low_memory: bool = False,
                 tissue_mask: bool = False) -> None:
        super().__init__()
        self.device, self.saliency, self.low_memory = device, saliency, low_memory
        self.region_mode = False
        self.tissue_mask = tissue_mask


def card_masks_tissue(card) -> bool:
    """Whether a model was made to run on the tissue only (its card's ``tissue_mask`` "auto";
    cards from before the tissue mask have none, and run on every cell)."""
    return getattr(card, "tissue_mask", None) == "auto"


class ModelChoice:
    """The model runs use: the path and card of the last one read, the message of a failed read
    (the previous model stays chosen), the recent models, and whether a slide is shown to run
    it on. Notifies ``changed()``."""

    def __init__(self, recent: RecentFiles) -> None:
        self.recent = recent
        self.path: str | None = None
        self.card = None
        self.error: str | None = None
        self.has_slide = False
        self.changed = Notifier()

    @property
    def runnable(self) -> bool:
        return self.has_slide and self.path is not None

    def loaded(self, path: str, card) -> None:
        self.path, self.card, self.error = path, card, None
        self.recent.add(path)
        self.changed.emit()

    def failed(self, message: str) -> None:
        self.error = message
        self.changed.emit()

    def set_has_slide(self, has_slide: bool) -> None:
        if has_slide != self.has_slide:
            self.has_slide = has_slide
            self.changed.emit()


def inference_spec(scope: str, slide_path: str, model_path: str, settings: InferenceSettings, viewport: Viewport,
                   l0_region: Box | None = None) -> InferenceSpec:
    """The spec of a run on ``scope``: "slide" (the engine takes the tissue box, and the map
    starts where the user is looking, exact in any block order), "view" (the visible part of the
    slide) or "region" (``l0_region``, a drawn rectangle)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown run scope {scope!r}; use one of {', '.join(SCOPES)}")
    if scope == "region" and l0_region is None:
        raise ValueError("a run on a region needs the drawn rectangle")
    l0_visible = viewport.l0_visible_box()
    if scope == "view":
        l0_region = l0_visible.intersect(Box(0, 0, viewport.l0_width, viewport.l0_height)).outer_int()
    region = None if l0_region is None else tuple(int(v) for v in l0_region.as_tuple())
    priority = l0_visible.as_tuple() if scope == "slide" else None
    return InferenceSpec(slide_path=slide_path, model_path=model_path, l0_region=region, device=settings.device,
                         saliency=settings.saliency, priority_l0_box=priority, low_memory=settings.low_memory,
                         tissue_mask="auto" if settings.tissue_mask else "none")


# -- runs on annotations: the *Selection* scope, and classes marked exclude ------------------------

#: The scope that runs inside the selected annotations (beside :data:`SCOPES`).
SELECTION = "selection"
RUN_SCOPES = (*SCOPES, SELECTION)
#: The class the area a run covers is given inside the spec's regions when classes are excluded:
#: the selected annotations (or the scope's rectangle) become this class, so ``include_classes``
#: names exactly them and not their classes' other annotations.
RUN_AREA_CLASS = "StreamSlide run area"


@dataclass(frozen=True)
class AnnotationScope:
    """What a run takes from the shown slide's annotations: ``selected``, the selected ones
    with an area (the *Selection* scope's regions), and ``excluded``, every annotation of the
    ``exclude_classes`` (the classes marked exclude in the class list), taken out of every run."""

    selected: tuple[Annotation, ...] = ()
    excluded: tuple[Annotation, ...] = ()
    exclude_classes: tuple[str, ...] = ()

    @classmethod
    def of(cls, annotations, selection, exclude_classes) -> "AnnotationScope":
        """From a document's annotations, its selected indices and the classes marked exclude."""
        exclude = tuple(c for c in dict.fromkeys(exclude_classes))
        items = tuple(annotations)
        selected = tuple(items[i] for i in selection if 0 <= i < len(items) and items[i].has_area)
        excluded = tuple(a for a in items if a.has_area and a.class_name in exclude)
        return cls(selected, excluded, exclude if excluded else ())


def scoped_spec(scope: str, slide_path: str, model_path: str, settings: InferenceSettings, viewport: Viewport,
                l0_region: Box | None = None, annotations: AnnotationScope | None = None) -> InferenceSpec:
    """:func:`inference_spec` for every run scope, the annotations taken in.

    ``"selection"``: the run covers the union of the selected annotations (the engine's
    ``regions``; the map starts where the user is looking). Any other scope: as
    :func:`inference_spec`. Either way, when classes are marked exclude, their annotations are
    taken out (``exclude_classes``): on the selection, the selected annotations become the one
    included class; on any other scope the regions hold only the exclusions, and the engine
    covers the scope's usual region less them.
    """
    if scope not in RUN_SCOPES:
        raise ValueError(f"unknown run scope {scope!r}; use one of {', '.join(RUN_SCOPES)}")
    annotations = annotations or AnnotationScope()
    if scope == SELECTION and not annotations.selected:
        raise ValueError("a run on the selection needs selected annotations with an area (polygons, rectangles, ellipses)")
    spec = inference_spec("slide" if scope == SELECTION else scope, slide_path, model_path, settings, viewport, l0_region)
    if scope == SELECTION and not annotations.excluded:
        return dataclasses.replace(spec, regions=AnnotationSet(annotations.selected))
    if not annotations.excluded:
        return spec
    if scope != SELECTION:
        # Only exclusions: the engine covers the scope's usual region (the view, the drawn box, or
        # the tissue box of the whole slide) less the excluded areas.
        return dataclasses.replace(spec, regions=AnnotationSet(annotations.excluded),
                                   exclude_classes=annotations.exclude_classes)
    include = [a.replace(class_name=RUN_AREA_CLASS) for a in annotations.selected]
    return dataclasses.replace(spec, regions=AnnotationSet([*include, *annotations.excluded]),
                               include_classes=(RUN_AREA_CLASS,), exclude_classes=annotations.exclude_classes)
