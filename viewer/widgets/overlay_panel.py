"""The overlay panel: the slide's map layers (tick to show), and for the selected layer its
colormap, opacity, value range, threshold and interpolation, with a colorbar.

Edits go to the :class:`~viewer.model.overlays.OverlayStack` as style changes; the stack
decides whether colours must be re-mapped (on a worker) or only repainted. The panel follows the
stack: the list is rebuilt when layers come or go, and the ticks, the selection (the active
layer) and the style controls follow every style change, whoever made it.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from engine.colormaps import COLORMAPS, DIVERGING
from viewer.model.layers import LayerKey, LayerStyle
from viewer.model.overlays import OverlayStack
from viewer.widgets.colorbar import ColorbarWidget

INTERPOLATIONS = ("Nearest", "Smooth")


def _spin() -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setDecimals(3)
    spin.setRange(-1e6, 1e6)
    spin.setSingleStep(0.05)
    spin.setKeyboardTracking(False)  # one change per edit, not one per keystroke
    # Its size hint grows with the decimals (_fit_precision): the layout, not the hint, sets the
    # width, so showing a map of tiny values does not widen the dock and narrow the slide view.
    spin.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    spin.setMinimumWidth(72)
    return spin


def _fit_precision(spins, span: float) -> None:
    """Enough decimals, and a step, for values spanning ``span``: an attention map's weights are
    around 1e-4, which three decimals would show as 0.000 to 0.000."""
    digits = 3 if not math.isfinite(span) or span <= 0 else min(10, max(3, 2 - math.floor(math.log10(span))))
    for spin in spins:
        spin.setDecimals(digits)
        spin.setSingleStep(span / 20 if math.isfinite(span) and span > 0 else 0.05)


class OverlayPanel(QWidget):
    #: The user asked to turn the selected layer, at its threshold, into annotations.
    to_annotations_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stack: OverlayStack | None = None
        self._filling = False  # widgets are being set from a style: not a user edit
        self.layer_list = QListWidget()
        self.layer_list.setMaximumHeight(110)
        self.colormap = QComboBox()
        for name in COLORMAPS:
            self.colormap.addItem(f"{name} (diverging)" if name in DIVERGING else name, name)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.vmin, self.vmax, self.threshold = _spin(), _spin(), _spin()
        self.use_threshold = QCheckBox("Hide below")
        self.fit_button = QPushButton("Fit to data")
        self.interpolation = QComboBox()
        self.interpolation.addItems(INTERPOLATIONS)
        self.colorbar = ColorbarWidget()
        self.to_annotations_button = QPushButton("To annotations…")
        self.to_annotations_button.setToolTip("Cells at or above the threshold become annotations of a class")
        self.to_annotations_button.clicked.connect(self.to_annotations_requested)

        range_row = QHBoxLayout()
        range_row.addWidget(self.vmin)
        range_row.addWidget(self.vmax)
        range_row.addWidget(self.fit_button)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.use_threshold)
        threshold_row.addWidget(self.threshold, 1)
        form = QFormLayout()
        form.addRow("Colormap", self.colormap)
        form.addRow("Opacity", self.opacity)
        form.addRow("Range", range_row)
        form.addRow("Threshold", threshold_row)
        form.addRow("Pixels", self.interpolation)
        self.controls = QWidget()
        self.controls.setLayout(form)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.layer_list)
        layout.addWidget(self.controls)
        layout.addWidget(self.colorbar)
        layout.addWidget(self.to_annotations_button)
        layout.addStretch(1)

        self.layer_list.currentItemChanged.connect(self._on_current)
        self.layer_list.itemChanged.connect(self._on_item_changed)
        self.colormap.currentIndexChanged.connect(self._on_colormap)
        self.opacity.valueChanged.connect(self._on_opacity)
        self.vmin.valueChanged.connect(self._on_range)
        self.vmax.valueChanged.connect(self._on_range)
        self.use_threshold.toggled.connect(self._on_threshold)
        self.threshold.valueChanged.connect(self._on_threshold)
        self.fit_button.clicked.connect(self._on_fit)
        self.interpolation.currentIndexChanged.connect(self._on_interpolation)
        self.set_stack(None)

    # -- binding -------------------------------------------------------------------------------
    def set_stack(self, stack: OverlayStack | None) -> None:
        if self.stack is not None:
            self.stack.layers_changed.disconnect(self.refresh)
            self.stack.changed.disconnect(self._on_stack_changed)
        self.stack = stack
        if stack is not None:
            stack.layers_changed.connect(self.refresh)
            stack.changed.connect(self._on_stack_changed)
        self.refresh()

    @property
    def current_key(self) -> LayerKey | None:
        item = self.layer_list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def refresh(self) -> None:
        """Rebuild the layer list from the stack, selecting the active layer."""
        self._filling = True
        self.layer_list.clear()
        keys = list(self.stack.layers) if self.stack else []
        for key in keys:
            item = QListWidgetItem(str(key))
            item.setData(Qt.ItemDataRole.UserRole, key)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            # Set even when unticked: an item without a check state draws no box at all.
            item.setCheckState(Qt.CheckState.Checked if self.stack.style_for(key).visible else Qt.CheckState.Unchecked)
            self.layer_list.addItem(item)
        self._sync_list()
        self._filling = False
        self.controls.setEnabled(bool(keys))
        self._show_style()

    def _sync_list(self) -> None:
        """Ticks from the styles' visibility, the selection from the stack's active layer."""
        filling, self._filling = self._filling, True
        for row in range(self.layer_list.count()):
            item = self.layer_list.item(row)
            key = item.data(Qt.ItemDataRole.UserRole)
            check = Qt.CheckState.Checked if self.stack.style_for(key).visible else Qt.CheckState.Unchecked
            if item.checkState() != check:
                item.setCheckState(check)
            if key == self.stack.active and self.layer_list.currentItem() is not item:
                self.layer_list.setCurrentItem(item)
        self._filling = filling

    def _show_style(self) -> None:
        key = self.current_key
        style = self.stack.style_for(key) if self.stack and key else None
        self.colorbar.set_style(str(key) if key else "", style)
        if style is None:
            return
        # Restore, not reset: this also runs inside refresh(), whose own filling must go on
        # (else rebuilding the list reports its transient selections as the user's).
        filling, self._filling = self._filling, True
        self.colormap.setCurrentIndex(self.colormap.findData(style.colormap))
        self.opacity.setValue(round(style.opacity * 100))
        _fit_precision((self.vmin, self.vmax, self.threshold), abs(style.vmax - style.vmin) or abs(style.vmax))
        self.vmin.setValue(style.vmin)
        self.vmax.setValue(style.vmax)
        self.use_threshold.setChecked(style.threshold is not None)
        self.threshold.setEnabled(style.threshold is not None)
        if style.threshold is not None:
            self.threshold.setValue(style.threshold)
        self.interpolation.setCurrentIndex(1 if style.smooth else 0)
        self._filling = filling

    def _on_stack_changed(self, l0_box) -> None:
        if l0_box is None:  # a style or layer change (patch arrivals carry a box): show it
            self._sync_list()
            self._show_style()

    # -- edits ---------------------------------------------------------------------------------
    def _edit(self, **changes) -> LayerStyle | None:
        key = self.current_key
        if self._filling or self.stack is None or key is None:
            return None
        return self.stack.set_style(key, **changes)

    def _on_current(self, item: QListWidgetItem | None, _previous) -> None:
        if not self._filling and self.stack is not None:
            self.stack.set_active(item.data(Qt.ItemDataRole.UserRole) if item else None)
        self._show_style()

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if not self._filling and self.stack is not None:
            self.stack.set_style(item.data(Qt.ItemDataRole.UserRole), visible=item.checkState() == Qt.CheckState.Checked)

    def _on_colormap(self, index: int) -> None:
        self._edit(colormap=self.colormap.itemData(index))

    def _on_opacity(self, value: int) -> None:
        self._edit(opacity=value / 100)

    def _on_range(self) -> None:
        self._edit(vmin=self.vmin.value(), vmax=self.vmax.value(), auto_range=False)

    def _on_threshold(self) -> None:
        self.threshold.setEnabled(self.use_threshold.isChecked())
        self._edit(threshold=self.threshold.value() if self.use_threshold.isChecked() else None)

    def _on_fit(self) -> None:
        if self.stack is not None and self.current_key:
            self.stack.fit_range(self.current_key)

    def _on_interpolation(self, index: int) -> None:
        self._edit(smooth=index == 1)
