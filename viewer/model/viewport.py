"""Which part of a slide is on screen: viewport maths, magnification presets, and the status
bar's readouts of position and zoom.

Planes: ``l0_`` is level-0 pixels, ``screen_`` is widget pixels; ``scale`` is screen pixels per
l0 pixel. The screen plane belongs to the view, so its conversions live here, not in
``engine.geometry``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.geometry import Box

#: Magnifications offered on keys 1..6 and the toolbar, where the slide supports them.
MAGNIFICATION_PRESETS = (1.25, 2.5, 5.0, 10.0, 20.0, 40.0)
#: A slide with MPP but no objective power: 10 µm/px-per-x is the usual microscope rule
#: (0.25 µm/px ~ 40x, 0.5 µm/px ~ 20x).
MPP_TIMES_MAG = 10.0
#: Zoom limits relative to "fit" (out) and to level-0 pixels (in).
MIN_SCALE_OF_FIT = 0.5
MAX_SCALE = 8.0


def native_magnification(objective_power: float | None, mpp: tuple[float, float] | None) -> float | None:
    """The slide's scan magnification: its objective power, else derived from MPP."""
    if objective_power:
        return float(objective_power)
    if mpp:
        return MPP_TIMES_MAG / mpp[0]
    return None


def available_presets(native_mag: float | None) -> list[float]:
    """Presets at or below the scan magnification (nothing above it exists in the pixels)."""
    if not native_mag:
        return []
    return [m for m in MAGNIFICATION_PRESETS if m <= native_mag * 1.0001]


@dataclass(frozen=True)
class ViewTransform:
    """A snapshot of level-0 -> screen mapping: ``screen = (l0 - l0_origin) * scale``."""

    l0_x0: float
    l0_y0: float
    scale: float

    def to_screen(self, l0_x: float, l0_y: float) -> tuple[float, float]:
        return ((l0_x - self.l0_x0) * self.scale, (l0_y - self.l0_y0) * self.scale)

    def to_l0(self, screen_x: float, screen_y: float) -> tuple[float, float]:
        return (self.l0_x0 + screen_x / self.scale, self.l0_y0 + screen_y / self.scale)

    def box_to_screen(self, l0_box: Box) -> Box:
        return Box(*self.to_screen(l0_box.x0, l0_box.y0), *self.to_screen(l0_box.x1, l0_box.y1))


class Viewport:
    """Which part of a slide is on screen: a level-0 centre, a scale and the widget size."""

    def __init__(self, l0_width: int, l0_height: int, screen_w: int = 800, screen_h: int = 600) -> None:
        self.l0_width, self.l0_height = l0_width, l0_height
        self.screen_w, self.screen_h = max(1, screen_w), max(1, screen_h)
        self.l0_cx, self.l0_cy = l0_width / 2, l0_height / 2
        self.scale = self.fit_scale()

    # -- derived ---------------------------------------------------------------------
    def fit_scale(self) -> float:
        return min(self.screen_w / self.l0_width, self.screen_h / self.l0_height)

    @property
    def min_scale(self) -> float:
        return min(self.fit_scale() * MIN_SCALE_OF_FIT, MAX_SCALE)

    @property
    def downsample(self) -> float:
        """Level-0 pixels per screen pixel: what picks the pyramid level."""
        return 1.0 / self.scale

    def transform(self) -> ViewTransform:
        return ViewTransform(self.l0_cx - self.screen_w / 2 / self.scale, self.l0_cy - self.screen_h / 2 / self.scale, self.scale)

    def l0_visible_box(self) -> Box:
        """The level-0 area under the widget (may extend past the slide's edges)."""
        t = self.transform()
        return Box(t.l0_x0, t.l0_y0, t.l0_x0 + self.screen_w / self.scale, t.l0_y0 + self.screen_h / self.scale)

    def magnification(self, native_mag: float | None) -> float | None:
        return native_mag * self.scale if native_mag else None

    # -- changes ---------------------------------------------------------------------
    def resize(self, screen_w: int, screen_h: int) -> None:
        self.screen_w, self.screen_h = max(1, screen_w), max(1, screen_h)
        self._clamp()

    def fit(self) -> None:
        self.scale = self.fit_scale()
        self.l0_cx, self.l0_cy = self.l0_width / 2, self.l0_height / 2

    def set_scale(self, scale: float) -> None:
        self.scale = min(max(scale, self.min_scale), MAX_SCALE)
        self._clamp()

    def zoom_about(self, screen_x: float, screen_y: float, factor: float) -> None:
        """Zoom by ``factor``, keeping the level-0 point under ``(screen_x, screen_y)`` fixed."""
        l0_x, l0_y = self.transform().to_l0(screen_x, screen_y)
        self.scale = min(max(self.scale * factor, self.min_scale), MAX_SCALE)
        self.l0_cx = l0_x - (screen_x - self.screen_w / 2) / self.scale
        self.l0_cy = l0_y - (screen_y - self.screen_h / 2) / self.scale
        self._clamp()

    def pan_screen(self, screen_dx: float, screen_dy: float) -> None:
        """Move the content by a screen distance (drag right -> content moves right)."""
        self.l0_cx -= screen_dx / self.scale
        self.l0_cy -= screen_dy / self.scale
        self._clamp()

    def center_on(self, l0_x: float, l0_y: float) -> None:
        self.l0_cx, self.l0_cy = l0_x, l0_y
        self._clamp()

    def _clamp(self) -> None:
        # The centre stays on the slide, so the slide can never be panned out of sight.
        self.l0_cx = min(max(self.l0_cx, 0.0), float(self.l0_width))
        self.l0_cy = min(max(self.l0_cy, 0.0), float(self.l0_height))


def format_length_um(um: float) -> str:
    """A length for people: µm below a millimetre, mm above."""
    if um >= 1000:
        return f"{um / 1000:g} mm"
    return f"{um:g} µm"


def nice_scale_bar_um(um_per_screen_px: float, max_screen_px: float) -> float:
    """The longest 1-2-5 x 10^k length in µm that fits in ``max_screen_px`` pixels."""
    limit_um = um_per_screen_px * max_screen_px
    best = 0.0
    exponent = -3
    while 10**exponent <= limit_um:
        for mantissa in (1, 2, 5):
            length = round(mantissa * 10.0**exponent, 9)
            if length <= limit_um:
                best = length
        exponent += 1
    return best


def describe_position(l0_x: float, l0_y: float, mpp: tuple[float, float] | None) -> str:
    """The status bar's cursor readout: level-0 pixels, and micrometres when the slide has an MPP."""
    text = f"x {int(l0_x)}  y {int(l0_y)} px"
    if mpp:
        text += f"  ·  {format_length_um(round(l0_x * mpp[0], 1))}, {format_length_um(round(l0_y * mpp[1], 1))}"
    return text


def describe_zoom(magnification: float | None, level: int, downsample: float, is_virtual: bool, scale: float) -> str:
    """The status bar's zoom readout: the magnification (when known), the display level painted
    from and the zoom in percent of level-0 pixels."""
    kind = ", virtual" if is_virtual else ""
    text = f"level {level} ({downsample:.3g}×↓{kind})  zoom {scale * 100:.3g}%"
    return f"{magnification:.3g}×  ·  {text}" if magnification else text
