"""Labels: the CSV and class-folder readers name the file and line of every problem; the writer
writes what the reader reads."""

from __future__ import annotations

import pytest
from train_fixtures import write_training_set

from engine.errors import LabelsError
from engine.io.labels import read_labels, write_labels_csv


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("slides"), n_per_class=2, size=96).parent


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("file,label\n", "bad.csv:1: header"),
    ("slide,label\nbenign_0.svs,a\nnowhere.svs,b\n", "bad.csv:3: slide 'nowhere.svs' not found"),
    ("slide,label,split\nbenign_0.svs,a,holdout\n", "bad.csv:2: split 'holdout'"),
    ("slide,label\nbenign_0.svs,a,extra\n", "bad.csv:2: 3 fields"),
    ("slide,label\nbenign_0.svs,a\nbenign_1.svs,a\n", "only one class"),
])
def test_bad_labels_name_the_file_and_line(slides, text, message):
    with pytest.raises(LabelsError, match=message):
        read_labels(write(slides / "bad.csv", text))


def test_csv_paths_are_relative_to_the_csv_and_splits_are_kept(slides):
    labels = read_labels(slides / "labels.csv")
    assert labels.classes == ("benign", "tumour") and labels.counts() == [2, 2]
    assert all(r.path.parent == slides.resolve() for r in labels.records)


def test_written_labels_read_back_with_paths_relative_to_the_csv(slides, tmp_path):
    rows = [(slides / "benign_0.svs", "benign"), (str(slides / "tumour_1.svs"), "tumour")]
    csv_path = write_labels_csv(tmp_path / "sub" / "labels.csv", rows)
    text = csv_path.read_text()
    assert text.splitlines()[0] == "slide,label" and str(slides) not in text  # relative, so the set can move
    labels = read_labels(csv_path)
    assert [(r.path, labels.classes[r.label], r.split) for r in labels.records] == [
        ((slides / "benign_0.svs").resolve(), "benign", None), ((slides / "tumour_1.svs").resolve(), "tumour", None)]


def test_a_split_column_is_written_when_any_row_has_one(slides):
    csv_path = write_labels_csv(slides / "split.csv", [("benign_0.svs", "benign", "val"),
                                                       ("tumour_0.svs", "tumour", None)])
    assert csv_path.read_text().splitlines() == ["slide,label,split", "benign_0.svs,benign,val", "tumour_0.svs,tumour,"]
    assert [r.split for r in read_labels(csv_path).records] == ["val", None]
