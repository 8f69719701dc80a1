"""Labels for each task, and the labels a careful reader refuses (issues 12 and 15)."""

from __future__ import annotations

import pytest
from train_fixtures import write_training_set

from engine.errors import LabelsError
from engine.io.labels import read_labels


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("slides"), n_per_class=2, size=96).parent


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_regression_reads_numbers_and_the_patient_column(slides):
    labels = read_labels(write(slides / "r.csv", "slide,ki67,split,patient\nbenign_0.svs,0.37,train,p1\n"
                               "benign_1.svs,1.8,,p1\ntumour_0.svs,-2e-1,val,\n"), task="regression")
    assert labels.task == "regression" and labels.classes == ("ki67",) == labels.targets
    assert [r.values for r in labels.records] == [(0.37,), (1.8,), (-0.2,)]
    assert [r.patient for r in labels.records] == ["p1", "p1", None] and labels.has_patients
    assert [r.split for r in labels.records] == ["train", None, "val"]


def test_targets_choose_columns_and_a_missing_one_is_refused(slides):
    text = "slide,a,b,c\nbenign_0.svs,1,0,5\nbenign_1.svs,0,1,6\n"
    labels = read_labels(write(slides / "m.csv", text), task="multilabel", targets=["b", "a"])
    assert labels.classes == ("b", "a") and [r.values for r in labels.records] == [(0.0, 1.0), (1.0, 0.0)]
    assert read_labels(slides / "m.csv", task="regression").classes == ("a", "b", "c")
    with pytest.raises(LabelsError, match=r"m.csv:1: target column 'grade' does not exist; the target columns are a, b, c"):
        read_labels(slides / "m.csv", task="regression", targets=["grade"])
    with pytest.raises(LabelsError, match="classification reads one label column.*--targets"):
        read_labels(slides / "m.csv")
    assert read_labels(slides / "m.csv", targets=["c"]).classes == ("5", "6")


@pytest.mark.parametrize("text, task, message", [
    ("slide,y\nbenign_0.svs,0.37\nbenign_1.svs,1.8\n", "classification",
     r"r.csv:2: every label is a number .*looks like a regression target; use --task regression"),
    ("slide,y\nbenign_0.svs,0.5\nbenign_1.svs,\n", "regression",
     r"r.csv:3: y is '', not a number; regression needs a finite number in every row"),
    ("slide,y\nbenign_0.svs,0.5\nbenign_1.svs,high\n", "regression", r"r.csv:3: y is 'high', not a number"),
    ("slide,y\nbenign_0.svs,nan\n", "regression", r"r.csv:2: y is 'nan'"),
    ("slide,a,b\nbenign_0.svs,1,2\n", "multilabel", r"r.csv:2: b is '2'; a multilabel target is 0 or 1"),
    ("slide,y\nbenign_0.svs,a\nbenign_1.svs,b\nbenign_0.svs,a\n", "classification",
     r"slide 'benign_0.svs' is listed twice, on lines 2 and 4; keep one row per slide"),
    ("slide,y\nbenign_0.svs,a\nbenign_1.svs,b\n./benign_0.svs,b\n", "classification",
     r"listed twice, on lines 2 and 4 with different labels \(a vs b\)"),
])
def test_refusals_name_the_row_and_what_to_do(slides, text, task, message):
    with pytest.raises(LabelsError, match=message):
        read_labels(write(slides / "r.csv", text), task=task)


def test_many_distinct_integers_look_like_regression(tmp_path):
    folder = write_training_set(tmp_path, n_per_class=6, size=64).parent
    names = [f"{c}_{i}.svs" for c in ("benign", "tumour") for i in range(6)]
    text = "slide,count\n" + "".join(f"{n},{k}\n" for k, n in enumerate(names))
    with pytest.raises(LabelsError, match=r"12 distinct values\), which looks like a regression target"):
        read_labels(write(folder / "c.csv", text))
    # Giving the classes says they are classes.
    assert len(read_labels(folder / "c.csv", classes=[str(k) for k in range(12)]).classes) == 12


def test_labels_differing_in_case_or_spaces_merge_with_a_warning(slides):
    labels = read_labels(write(slides / "c.csv", "slide,label\nbenign_0.svs,benign\nbenign_1.svs,Benign \n"
                               "tumour_0.svs,tumour\ntumour_1.svs, benign\n"))
    assert labels.classes == ("benign", "tumour") and [r.label for r in labels.records] == [0, 0, 1, 0]
    assert len(labels.warnings) == 2
    assert "'benign'" in labels.warnings[0] and "'Benign '" in labels.warnings[0] and "c.csv:3" in labels.warnings[0]
    assert "' benign' (" in labels.warnings[1] and "c.csv:5" in labels.warnings[1]
    assert all("read as one class 'benign'" in w for w in labels.warnings)
    # Given classes match the same way.
    assert read_labels(slides / "c.csv", classes=("TUMOUR", "benign")).counts() == [1, 3]


def test_integer_labels_sort_as_numbers(slides):
    rows = [("benign_0.svs", "10"), ("benign_1.svs", "2"), ("tumour_0.svs", "0"), ("tumour_1.svs", "1")]
    labels = read_labels(write(slides / "n.csv", "slide,label\n" + "".join(f"{s},{v}\n" for s, v in rows)))
    assert labels.classes == ("0", "1", "2", "10")
    assert [labels.classes[r.label] for r in labels.records] == ["10", "2", "0", "1"]


def test_a_non_utf8_file_names_the_line_and_says_save_as_utf8(slides):
    path = write(slides / "latin.csv", "slide,label\nbenign_0.svs,benign\nbenign_1.svs,tumeur maligne é\n", "latin-1")
    with pytest.raises(LabelsError, match=r"latin.csv:3: not UTF-8 text \(byte 0xe9\); save it as UTF-8"):
        read_labels(path)


def test_a_utf8_bom_is_read(slides):
    labels = read_labels(write(slides / "bom.csv", "\ufeffslide,label\nbenign_0.svs,a\nbenign_1.svs,b\n"))
    assert labels.classes == ("a", "b")


def test_folders_per_class_still_work_and_refuse_other_tasks(tmp_path):
    import shutil

    slides = write_training_set(tmp_path / "src", n_per_class=1, size=64).parent
    for c in ("benign", "tumour"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        shutil.copy(slides / f"{c}_0.svs", tmp_path / "tree" / c / "s.svs")
    labels = read_labels(tmp_path / "tree")
    assert labels.classes == ("benign", "tumour") and labels.counts() == [1, 1] and labels.task == "classification"
    with pytest.raises(LabelsError, match="folder per class holds classification labels only"):
        read_labels(tmp_path / "tree", task="regression")
