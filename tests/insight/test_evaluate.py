"""classification_report: hand-computed metrics on tiny cases, and the errors for bad inputs."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from cnncli.errors import CnnError, DataError
from cnncli.model.scores import classification_report, most_confused, top_k_accuracy

NAMES = ["cat", "dog", "bird"]
# 6 examples, 3 classes. Predictions (argmax): cat, dog | dog, dog | cat, bird.
Y = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([
    [0.7, 0.2, 0.1],  # cat  → cat
    [0.3, 0.6, 0.1],  # cat  → dog
    [0.1, 0.8, 0.1],  # dog  → dog
    [0.2, 0.5, 0.3],  # dog  → dog
    [0.5, 0.1, 0.4],  # bird → cat
    [0.1, 0.1, 0.8],  # bird → bird
])


@pytest.fixture(scope="module")
def report():
    return classification_report(Y, PROBS, NAMES)


def test_confusion_matrix_rows_are_true_columns_predicted(report):
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_accuracy_and_examples(report):
    assert report["examples"] == 6
    assert report["accuracy"] == pytest.approx(4 / 6)


def test_per_class_precision_recall_f1_by_hand(report):
    # precision = diagonal / column sum; recall = diagonal / row sum
    expected = [
        ("cat", 1 / 2, 1 / 2, 1 / 2, 2),
        ("dog", 2 / 3, 2 / 2, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2),  # f1 = 0.8
        ("bird", 1 / 1, 1 / 2, 2 * 1 * 0.5 / 1.5, 2),  # f1 = 2/3
    ]
    assert [row["class"] for row in report["per_class"]] == NAMES
    for row, (name, precision, recall, f1, support) in zip(report["per_class"], expected, strict=True):
        assert row == {"class": name, "precision": pytest.approx(precision),
                       "recall": pytest.approx(recall), "f1": pytest.approx(f1), "support": support}
    assert report["per_class"][1]["f1"] == pytest.approx(0.8)
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_loss_is_mean_negative_log_of_true_class_probability(report):
    p_true = [0.7, 0.3, 0.8, 0.5, 0.4, 0.8]
    assert report["loss"] == pytest.approx(-np.mean(np.log(p_true)), rel=1e-12)


def test_loss_clips_zero_probability_at_1e_7():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    r = classification_report(np.array([1, 1]), probs, ["a", "b"])
    # -log(1e-7) for the wrong one; -log(1 - 1e-7) ≈ 1e-7 for the right one, as Keras does
    assert r["loss"] == pytest.approx((-math.log(1e-7) - math.log(1 - 1e-7)) / 2)
    assert math.isfinite(r["loss"])


def test_most_confused_descending_with_ties_by_name(report):
    assert report["most_confused"] == [
        {"true": "bird", "predicted": "cat", "count": 1},
        {"true": "cat", "predicted": "dog", "count": 1},
    ]


def test_most_confused_keeps_top_five_and_skips_diagonal_and_zeros():
    cm = np.array([
        [9, 4, 1, 0],
        [4, 9, 2, 3],
        [0, 5, 9, 0],
        [1, 0, 2, 9],
    ])
    names = ["a", "b", "c", "d"]
    assert most_confused(cm, names) == [
        {"true": "c", "predicted": "b", "count": 5},
        {"true": "a", "predicted": "b", "count": 4},
        {"true": "b", "predicted": "a", "count": 4},
        {"true": "b", "predicted": "d", "count": 3},
        {"true": "b", "predicted": "c", "count": 2},  # ties with d → c, b sorts first
    ]


def test_top_k_omitted_for_few_classes_unless_asked(report):
    assert "top_k_accuracy" not in report
    r = classification_report(Y, PROBS, NAMES, top_k=2)
    # true-class rank: 1, 2, 1, 1, 2, 1 → all within the top 2
    assert r["top_k_accuracy"] == {"k": 2, "value": 1.0}


def test_top_5_by_default_above_five_classes():
    k = 7
    names = [f"c{i}" for i in range(k)]
    base = np.arange(1, k + 1, dtype=float)  # class 6 most probable, class 0 least
    probs = np.tile(base / base.sum(), (4, 1))
    y = np.array([6, 2, 1, 0])  # ranks 1, 5, 6, 7 → 2 of 4 in the top 5
    r = classification_report(y, probs, names)
    assert r["top_k_accuracy"] == {"k": 5, "value": 0.5}
    assert r["accuracy"] == 0.25


def test_top_k_counts_ties_at_the_boundary_as_hits():
    probs = np.array([[0.4, 0.3, 0.3], [0.4, 0.3, 0.3], [0.5, 0.3, 0.2]])
    y = np.array([2, 1, 2])
    # rows 0, 1: classes 1 and 2 tie for second place, both count (tf.math.in_top_k); row 2: third
    assert top_k_accuracy(y, probs, 2) == pytest.approx(2 / 3)


def test_top_k_larger_than_classes_is_clamped():
    r = classification_report(Y, PROBS, NAMES, top_k=10)
    assert r["top_k_accuracy"] == {"k": 3, "value": 1.0}


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_top_k_must_be_positive_integer(bad):
    with pytest.raises(DataError, match="top_k must be a positive integer"):
        classification_report(Y, PROBS, NAMES, top_k=bad)


def test_zero_support_and_never_predicted_classes_are_zero_not_nan():
    names = ["a", "b", "c", "d"]
    y = np.array([0, 0, 1])
    probs = np.array([[0.9, 0.0, 0.1, 0.0], [0.1, 0.0, 0.9, 0.0], [0.0, 0.9, 0.1, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 RuntimeWarning would fail here
        r = classification_report(y, probs, names)
    c, d = r["per_class"][2], r["per_class"][3]
    assert c == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}  # predicted, never true
    assert d == {"class": "d", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}  # neither
    a = r["per_class"][0]
    assert (a["precision"], a["recall"]) == (1.0, 0.5)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0 + 0) / 4)
    assert not any(math.isnan(v) for row in r["per_class"] for v in row.values() if isinstance(v, float))


def test_report_is_plain_json(report):
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert type(report["confusion_matrix"][0][0]) is int
    assert type(report["per_class"][0]["support"]) is int


def test_column_labels_as_in_cifar10_and_float_labels_are_accepted():
    r1 = classification_report(Y.reshape(-1, 1), PROBS, NAMES)
    r2 = classification_report(Y.astype(np.float32), PROBS, NAMES)
    assert r1["confusion_matrix"] == r2["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_label_out_of_range_names_largest_label_and_class_count():
    y = np.array([0, 12, 3, 7])
    probs = np.full((4, 10), 0.1)
    with pytest.raises(DataError) as info:
        classification_report(y, probs, [str(i) for i in range(10)])
    message = str(info.value)
    assert "label 12 (largest label) is out of range for 10 classes" in message
    assert "labels must be 0..9" in message
    assert isinstance(info.value, CnnError)


def test_negative_label_is_out_of_range():
    with pytest.raises(DataError, match=r"label -1 \(smallest label\) is out of range for 3 classes"):
        classification_report(np.array([0, -1, 2, 1, 0, 0]), PROBS, NAMES)


def test_length_mismatch():
    with pytest.raises(DataError, match="length mismatch: 5 labels but 6 rows of probabilities"):
        classification_report(Y[:5], PROBS, NAMES)


@pytest.mark.parametrize(("y", "probs", "names", "fragment"), [
    (Y, PROBS[0], NAMES, "probabilities must be a 2-D array (examples, classes), got shape (3,)"),
    (Y, PROBS, ["cat", "dog"], "probabilities have 3 classes but 2 class names were given"),
    (np.eye(3)[Y], PROBS, NAMES, "labels must be a 1-D array of class indices, got shape (6, 3)"),
    (Y + 0.5, PROBS, NAMES, "labels must be integer class indices, got dtype float64"),
    (Y[:0], PROBS[:0], NAMES, "no examples to evaluate"),
    (Y, np.where(PROBS == 0.7, np.nan, PROBS), NAMES, "probabilities contain NaN or infinity"),
])
def test_bad_inputs(y, probs, names, fragment):
    with pytest.raises(DataError) as info:
        classification_report(y, probs, names)
    assert fragment in str(info.value)


def test_a_folder_that_is_no_run_says_which_runs_it_leads_to(tmp_path):
    from typer.testing import CliRunner

    from cnncli.cli import app

    runner = CliRunner()
    for stamp in ("20260101-120000", "20260102-090000"):
        (tmp_path / "runs" / "tiny" / stamp).mkdir(parents=True)
        (tmp_path / "runs" / "tiny" / stamp / "config.yaml").write_text("name: tiny\n")
    (tmp_path / "sweep" / "trials" / "0003").mkdir(parents=True)
    (tmp_path / "sweep" / "trials" / "0003" / "config.yaml").write_text("name: tiny\n")
    (tmp_path / "sweep" / "trials.csv").write_text("number,state\n3,COMPLETE\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("")
    expected = {
        "runs/tiny": f"it holds 2 run(s); the latest is {tmp_path / 'runs/tiny/20260102-090000'}",
        "sweep": f"it is a sweep directory (cnn tune): give one of its trials, e.g. {tmp_path / 'sweep/trials/0003'} "
                 "(trials.csv has each one's metric)",
        "other": "is it a cnncli run directory?",
    }
    for folder, hint in expected.items():
        result = runner.invoke(app, ["evaluate", str(tmp_path / folder)])
        assert result.exit_code == 1
        assert result.stderr == f"Error: `{tmp_path / folder}` has no config.yaml; {hint}\n"
