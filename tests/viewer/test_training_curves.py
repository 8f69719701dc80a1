"""The live curves and status stay cheap to paint during a run: nothing is replotted or
relaid out that did not change (both were measured stalls of the training UI)."""

from __future__ import annotations

from viewer.widgets.training_curves import TrainingCurves
from viewer.widgets.training_status import TrainingStatus


def _count_set_data(item, calls: list) -> None:
    original = item.setData

    def counting(*args, **kwargs):
        calls.append(item)
        return original(*args, **kwargs)

    item.setData = counting


def test_a_training_step_redraws_the_loss_plot_only(qtbot):
    curves = TrainingCurves()
    qtbot.addWidget(curves)
    curves.add_val(0, 4, {"loss": 0.6, "accuracy": 0.5, "auc": 0.7})
    curves.redraw()
    calls: list = []
    for item in (curves.train_item, curves.accuracy_item, curves.monitor_item, curves.val_loss_item):
        _count_set_data(item, calls)
    curves.add_train(5, 0.4)
    curves.redraw()
    assert calls == [curves.train_item]
    x, y = curves.train_item.getData()
    assert list(x) == [5] and list(y) == [0.4]

    calls.clear()
    curves.add_val(1, 8, {"loss": 0.5, "accuracy": 0.75, "auc": 0.9})
    curves.redraw()
    assert {id(c) for c in calls} == {id(curves.train_item), id(curves.accuracy_item), id(curves.monitor_item),
                                     id(curves.val_loss_item)}
    assert list(curves.monitor_item.getData()[1]) == [0.7, 0.9]


def test_status_values_do_not_change_the_panel_width(qtbot):
    status = TrainingStatus()
    qtbot.addWidget(status)
    status.show()
    qtbot.waitExposed(status)
    width = status.sizeHint().width()
    status.fields["Throughput"].setText("123.45 slides/s · 678.9 MP/s (validation, a very long note)")
    status.fields["ETA"].setText("1 h 23 min left (epoch 12 of 40, validation)")
    status.layout().activate()
    assert status.sizeHint().width() == width


def test_the_step_axis_grows_in_jumps(qtbot):
    """A new step must not change the loss plot's x range every time (each change repaints the
    whole plot); the range still always holds every step."""
    curves = TrainingCurves()
    qtbot.addWidget(curves)
    ranges = []
    for step in range(1, 301):
        curves.add_train(step, 1.0 / step)
        curves.redraw()
        lo, hi = curves.loss_plot.getViewBox().viewRange()[0]
        assert lo <= 0 and hi >= step
        ranges.append((lo, hi))
    assert len(set(ranges)) <= 6
    curves.clear()  # a new run starts with a small axis again
    curves.add_train(1, 0.5)
    curves.redraw()
    assert curves.loss_plot.getViewBox().viewRange()[0][1] < 20


def test_a_run_with_validation_points_only_shows_them(qtbot):
    curves = TrainingCurves()
    qtbot.addWidget(curves)
    curves.set_curves([], [{"epoch": 0, "step": 40, "loss": 0.5, "accuracy": 0.5, "auc": 0.6}])
    assert curves.loss_plot.getViewBox().viewRange()[0][1] >= 40


def test_the_loss_axis_changes_in_jumps_and_holds_every_loss(qtbot):
    curves = TrainingCurves()
    qtbot.addWidget(curves)
    ranges = set()
    for step, loss in enumerate([2.5, 1.9, 1.2, 0.9, 0.7, 0.69, 0.6, 0.5, 0.45, 0.4] * 3, start=1):
        curves.add_train(step, loss)
        curves.redraw()
        lo, hi = curves.loss_plot.getViewBox().viewRange()[1]
        assert lo <= 0 and hi >= 2.5
        ranges.add((lo, hi))
    assert len(ranges) == 1
