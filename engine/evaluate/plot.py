"""The evaluation's plot as a hand-written SVG (opens in any browser, no plotting library):
ROC curves for classification (one per class; binary: the positive class) and multilabel (one
per label), predicted against true for regression (one panel per target)."""

from __future__ import annotations

from html import escape

import numpy as np

from engine.evaluate.report import Predictions
from engine.metrics import roc_auc, roc_curve

PANEL = 320  # px, the square plotting area of one panel
MARGIN = 48
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _panel(x0: float, title: str, xlabel: str, ylabel: str, lo: float, hi: float) -> list[str]:
    """Axes, ticks and labels of one panel whose data range is [lo, hi] on both axes."""
    out = [f'<rect x="{x0 + MARGIN}" y="{MARGIN}" width="{PANEL}" height="{PANEL}" fill="none" stroke="#444"/>',
           f'<text x="{x0 + MARGIN + PANEL / 2}" y="{MARGIN - 12}" text-anchor="middle" font-size="14">{escape(title)}</text>',
           f'<text x="{x0 + MARGIN + PANEL / 2}" y="{MARGIN + PANEL + 36}" text-anchor="middle" font-size="12">'
           f'{escape(xlabel)}</text>',
           f'<text transform="translate({x0 + 14},{MARGIN + PANEL / 2}) rotate(-90)" text-anchor="middle" '
           f'font-size="12">{escape(ylabel)}</text>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        px = x0 + MARGIN + PANEL * k / 4
        py = MARGIN + PANEL - PANEL * k / 4
        out.append(f'<text x="{px:.1f}" y="{MARGIN + PANEL + 16}" text-anchor="middle" font-size="10">{v:.3g}</text>')
        out.append(f'<text x="{x0 + MARGIN - 4}" y="{py + 3:.1f}" text-anchor="end" font-size="10">{v:.3g}</text>')
    return out


def _to_px(x0: float, v: np.ndarray, lo: float, hi: float, vertical: bool) -> np.ndarray:
    t = (np.asarray(v, np.float64) - lo) / ((hi - lo) or 1.0)
    return MARGIN + PANEL * (1 - t) if vertical else x0 + MARGIN + PANEL * t


def plot_svg(pred: Predictions) -> str:
    parts: list[str] = []
    if pred.task == "regression":
        for j, name in enumerate(pred.names):
            x0 = j * (PANEL + 2 * MARGIN)
            t, p = np.asarray(pred.truths)[:, j], np.asarray(pred.outputs)[:, j]
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            pad = (hi - lo) * 0.05 or 1.0
            lo, hi = lo - pad, hi + pad
            parts += _panel(x0, f"{name}: predicted against true", f"true {name}", f"predicted {name}", lo, hi)
            a, b = _to_px(x0, [lo, hi], lo, hi, False), _to_px(x0, [lo, hi], lo, hi, True)
            parts.append(f'<line x1="{a[0]:.1f}" y1="{b[0]:.1f}" x2="{a[1]:.1f}" y2="{b[1]:.1f}" stroke="#aaa" '
                         'stroke-dasharray="4 3"/>')
            for xp, yp, slide in zip(_to_px(x0, t, lo, hi, False), _to_px(x0, p, lo, hi, True), pred.slides, strict=True):
                parts.append(f'<circle cx="{xp:.1f}" cy="{yp:.1f}" r="3" fill="{COLOURS[0]}" fill-opacity="0.7">'
                             f'<title>{escape(slide)}</title></circle>')
        panels = len(pred.names)
    else:
        truths = np.asarray(pred.truths)
        if pred.task == "classification":
            curves = [(name, pred.outputs[:, c], truths == c) for c, name in enumerate(pred.names)]
            if len(pred.names) == 2:
                curves = curves[1:]
        else:
            curves = [(name, pred.outputs[:, i], truths[:, i] > 0.5) for i, name in enumerate(pred.names)]
        parts += _panel(0, "ROC", "false positive rate", "true positive rate", 0.0, 1.0)
        parts.append(f'<line x1="{MARGIN}" y1="{MARGIN + PANEL}" x2="{MARGIN + PANEL}" y2="{MARGIN}" stroke="#aaa" '
                     'stroke-dasharray="4 3"/>')
        for k, (name, scores, positive) in enumerate(curves):
            fpr, tpr = roc_curve(scores, positive)
            xs, ys = _to_px(0, fpr, 0, 1, False), _to_px(0, tpr, 0, 1, True)
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
            colour = COLOURS[k % len(COLOURS)]
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
            auc = roc_auc(scores, positive)
            label = f"{name} (AUC {auc:.3f})" if np.isfinite(auc) else f"{name} (one class only)"
            parts.append(f'<text x="{MARGIN + PANEL - 6}" y="{MARGIN + PANEL - 10 - 16 * k}" text-anchor="end" '
                         f'font-size="11" fill="{colour}">{escape(label)}</text>')
        panels = 1
    width, height = panels * (PANEL + 2 * MARGIN), PANEL + 2 * MARGIN
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">\n'
            f'<rect width="{width}" height="{height}" fill="white"/>\n' + "\n".join(parts) + "\n</svg>\n")
