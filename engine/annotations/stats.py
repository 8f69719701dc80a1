"""Counts and areas of an annotation set, per class, in level-0 px² and (with an MPP) µm²."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.annotations.model import AnnotationSet, mpp_xy

UNCLASSIFIED = "(unclassified)"


@dataclass(frozen=True)
class ClassStats:
    """One class: how many annotations, how many have an area, and their summed and mean area."""

    count: int
    area_count: int
    total_area_l0: float
    mean_area_l0: float | None
    total_area_um2: float | None = None
    mean_area_um2: float | None = None


@dataclass(frozen=True)
class AnnotationStats:
    """The whole set (``total``) and each class (``classes``, unclassified under ``None``), plus
    counts per kind. Areas sum each annotation's own area, so overlaps count twice."""

    total: ClassStats
    classes: dict[str | None, ClassStats]
    kinds: dict[str, int]
    mpp: tuple[float, float] | None

    @property
    def count(self) -> int:
        return self.total.count

    def as_dict(self) -> dict:
        return {"total": asdict(self.total), "kinds": dict(self.kinds), "mpp": self.mpp,
                "classes": {UNCLASSIFIED if k is None else k: asdict(v) for k, v in self.classes.items()}}

    def table(self) -> str:
        """A plain-text table, one row per class and a total row."""
        um = self.mpp is not None
        head = ["class", "count", "with area", "total px²", "mean px²"] + (["total µm²", "mean µm²"] if um else [])
        rows = [[UNCLASSIFIED if k is None else k, *_cells(v, um)] for k, v in self.classes.items()]
        rows.append(["total", *_cells(self.total, um)])
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                 for r in [head, *rows]]
        kinds = ", ".join(f"{n} {k}" for k, n in self.kinds.items())
        return "\n".join(lines + [f"kinds: {kinds or 'none'}"])


def _cells(s: ClassStats, um: bool) -> list[str]:
    def num(v):
        return "-" if v is None else f"{v:.6g}"
    out = [str(s.count), str(s.area_count), num(s.total_area_l0), num(s.mean_area_l0)]
    return out + ([num(s.total_area_um2), num(s.mean_area_um2)] if um else [])


def _summary(areas: list[float], count: int, mxy) -> ClassStats:
    total = float(sum(areas))
    mean = total / len(areas) if areas else None
    if mxy is None:
        return ClassStats(count, len(areas), total, mean)
    k = mxy[0] * mxy[1]
    return ClassStats(count, len(areas), total, mean, total * k, None if mean is None else mean * k)


def stats(annotations: AnnotationSet, mpp: float | tuple[float, float] | None = None) -> AnnotationStats:
    """Counts per class and kind, with total and mean areas (of the annotations that have one)."""
    mxy = mpp_xy(mpp)
    counts: dict[str | None, int] = {}
    areas: dict[str | None, list[float]] = {}
    kinds: dict[str, int] = {}
    for a in annotations:
        counts[a.class_name] = counts.get(a.class_name, 0) + 1
        areas.setdefault(a.class_name, [])
        if a.has_area:
            areas[a.class_name].append(a.area_l0)
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    every = [x for v in areas.values() for x in v]
    return AnnotationStats(_summary(every, len(annotations), mxy),
                           {k: _summary(areas[k], counts[k], mxy) for k in counts}, kinds, mxy)
