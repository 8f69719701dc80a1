"""Slide properties: a summary (vendor, sizes, levels, MPP, objective) and every raw
property, filtered by a search box. Uses only metadata read at open: no file access."""

from __future__ import annotations

from PySide6.QtWidgets import QHeaderView, QLineEdit, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from engine.slides import SlideSource


def summary_rows(source: SlideSource) -> list[tuple[str, str]]:
    w, h = source.dimensions
    rows = [
        ("File", source.name),
        ("Vendor", source.vendor or "unknown"),
        ("Dimensions", f"{w} x {h} px"),
        ("Levels", str(source.level_count)),
    ]
    for level, ((lw, lh), ds) in enumerate(zip(source.level_dimensions, source.level_downsamples, strict=True)):
        rows.append((f"Level {level}", f"{lw} x {lh} px, downsample {ds:.3g}"))
    rows.append(("MPP (µm/px)", f"{source.mpp[0]:.4g} x {source.mpp[1]:.4g}" if source.mpp else "unknown"))
    if source.mpp:
        rows.append(("Physical size", f"{w * source.mpp[0] / 1000:.2f} x {h * source.mpp[1] / 1000:.2f} mm"))
    rows.append(("Objective power", f"{source.objective_power:g}x" if source.objective_power else "unknown"))
    rows.append(("Associated images", ", ".join(source.associated_image_names) or "none"))
    return rows


class PropertiesPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.search = QLineEdit(placeholderText="Search properties…", clearButtonEnabled=True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Property", "Value"])
        self.tree.setAlternatingRowColors(True)
        # Keys get a fixed share and values the rest, so values stay visible in a narrow dock.
        self.tree.header().setStretchLastSection(True)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.tree.setColumnWidth(0, 170)
        self.tree.setWordWrap(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.search)
        layout.addWidget(self.tree)
        self.search.textChanged.connect(self.apply_filter)

    def set_slide(self, source: SlideSource | None) -> None:
        self.tree.clear()
        if source is None:
            return
        summary = QTreeWidgetItem(self.tree, ["Summary"])
        for key, value in summary_rows(source):
            QTreeWidgetItem(summary, [key, value])
        raw = QTreeWidgetItem(self.tree, [f"All properties ({len(source.properties)})"])
        for key in sorted(source.properties):
            item = QTreeWidgetItem(raw, [key, source.properties[key]])
            item.setToolTip(1, source.properties[key])
        summary.setExpanded(True)
        raw.setExpanded(True)
        self.apply_filter(self.search.text())

    def apply_filter(self, text: str) -> None:
        needle = text.strip().lower()
        for g in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(g)
            for i in range(group.childCount()):
                item = group.child(i)
                hay = f"{item.text(0)} {item.text(1)}".lower()
                item.setHidden(bool(needle) and needle not in hay)

    def visible_keys(self) -> list[str]:
        out = []
        for g in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(g)
            out += [group.child(i).text(0) for i in range(group.childCount()) if not group.child(i).isHidden()]
        return out
