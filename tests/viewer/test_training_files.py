"""Labels CSVs read for the training form (worker jobs): class labels, numeric targets, and a
broken file reported by the reading that names its row."""

from __future__ import annotations

import pytest

from engine.errors import LabelsError
from viewer.workers.training_files import read_labels_for_form


@pytest.fixture
def slides(tmp_path):
    for name in ("a.svs", "b.svs", "c.svs"):
        (tmp_path / name).write_bytes(b"")  # the reader checks that slides exist, not their pixels
    return tmp_path


def test_class_labels_give_rows_and_classes(slides):
    csv = slides / "labels.csv"
    csv.write_text("slide,label\na.svs,tumour\nb.svs,normal\nc.svs,tumour\n")
    _, rows, classes, columns, note = read_labels_for_form(str(csv))
    assert set(classes) == {"normal", "tumour"} and columns == ("label",) and note == ""
    assert sorted(rows.values()) == ["normal", "tumour", "tumour"]


def test_numeric_targets_are_a_labels_file_without_class_rows(slides):
    csv = slides / "labels.csv"
    csv.write_text("slide,density,grade\na.svs,1.5,2\nb.svs,0.25,1\nc.svs,3,3\n")
    _, rows, classes, columns, note = read_labels_for_form(str(csv))
    assert rows == {} and classes == () and columns == ("density", "grade")
    assert note == "3 slides · numeric targets density, grade"


def test_a_missing_slide_is_reported_as_such_not_as_a_failed_regression(slides):
    csv = slides / "labels.csv"
    csv.write_text("slide,label\na.svs,tumour\nmissing.svs,normal\n")
    with pytest.raises(LabelsError) as err:
        read_labels_for_form(str(csv))
    assert "labels.csv:3: slide 'missing.svs' not found" in str(err.value)


def test_a_class_csv_with_an_empty_label_is_reported_as_that_not_as_a_non_number(slides):
    csv = slides / "labels.csv"
    csv.write_text("slide,label\na.svs,tumour\nb.svs,\n")
    with pytest.raises(LabelsError) as err:
        read_labels_for_form(str(csv))
    assert "labels.csv:3: empty label" in str(err.value) and "not a number" not in str(err.value)
