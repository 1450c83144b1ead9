"""Metrics against ground truth, on tiny hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from forensics.errors import InputError
from forensics.evaluate import (
    UndefinedMetricWarning,
    auroc,
    average_precision,
    elimination_and_sacrifice,
    evaluate_scores,
    precision_recall_at_budget,
    recall_at_k_times_poison,
)

POISON = np.array([True, True, False, False])


def test_auroc_perfect_reversed_and_ties():
    assert auroc([4.0, 3.0, 2.0, 1.0], POISON) == 1.0
    assert auroc([1.0, 2.0, 3.0, 4.0], POISON) == 0.0
    assert auroc([1.0, 1.0, 1.0, 1.0], POISON) == 0.5
    assert auroc([3.0, 1.0, 2.0, 0.0], POISON) == 0.75
    assert auroc([4, 3, 2, 1], [1, 1, 0, 0]) == 1.0


def test_nan_scores_are_least_suspicious():
    assert auroc([np.nan, 1.0, 0.0], [True, False, False]) == 0.0
    assert auroc([5.0, np.nan, np.nan], [True, False, False]) == 1.0
    assert auroc([np.nan, np.nan, np.nan], [True, False, False]) == 0.5
    assert precision_recall_at_budget([np.nan, 1.0, 0.0], [True, False, False], 2) == (0.0, 0.0)


def test_average_precision_hand_computed():
    # Ranked: poison, clean, poison -> precision 1/1 at the first, 2/3 at the second.
    assert average_precision([3.0, 2.0, 1.0], [True, False, True]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([4.0, 3.0, 2.0, 1.0], POISON) == 1.0


def test_precision_recall_at_budget_exact():
    scores = [5.0, 4.0, 3.0, 2.0, 1.0]
    poison = [True, False, True, False, False]
    assert precision_recall_at_budget(scores, poison, 1) == (1.0, 0.5)
    assert precision_recall_at_budget(scores, poison, 2) == (0.5, 0.5)
    p, r = precision_recall_at_budget(scores, poison, 3)
    assert (p, r) == (pytest.approx(2 / 3), 1.0)
    assert precision_recall_at_budget(scores, poison, 5) == (0.4, 1.0)


def test_ties_at_the_budget_count_their_expected_share():
    # Four equal scores, one poisoned: reviewing 2 finds half a poisoned sample on average, wherever it sits.
    for position in range(4):
        poison = np.zeros(4, dtype=bool)
        poison[position] = True
        assert precision_recall_at_budget(np.ones(4), poison, 2) == (0.25, 0.5)
    # One sample above the cut, three tied for the last slot, one of them poisoned: 1/3 of a hit.
    p, r = precision_recall_at_budget([3.0, 2.0, 2.0, 2.0, 1.0], [False, True, False, False, True], 2)
    assert p == pytest.approx(1 / 6) and r == pytest.approx(1 / 6)


def test_recall_at_k_times_poison():
    scores = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    poison = [False, True, False, False, False, True]
    assert recall_at_k_times_poison(scores, poison) == 0.5          # budget 4
    assert recall_at_k_times_poison(scores, poison, k=1) == 0.5     # budget 2
    assert recall_at_k_times_poison(scores, poison, k=3) == 1.0     # budget 6
    assert recall_at_k_times_poison(scores, poison, k=10) == 1.0    # capped at n
    with pytest.raises(InputError, match="no poisoned sample"):
        recall_at_k_times_poison(scores, [False] * 6)
    with pytest.raises(InputError, match="k must be a positive number"):
        recall_at_k_times_poison(scores, poison, k=0)


def test_elimination_and_sacrifice():
    flagged = np.array([True, True, False, False, True])
    poison = np.array([True, False, True, False, False])
    elimination, sacrifice = elimination_and_sacrifice(flagged, poison)
    assert elimination == 0.5 and sacrifice == pytest.approx(2 / 3)
    with pytest.warns(UndefinedMetricWarning, match="sacrifice needs at least one clean sample"):
        e, s = elimination_and_sacrifice(np.array([True, False]), np.array([True, True]))
    assert e == 0.5 and math.isnan(s)
    with pytest.raises(InputError, match="flagged must be a boolean mask"):
        elimination_and_sacrifice(np.array([1, 0]), poison[:2])


def test_undefined_metrics_are_nan_with_a_reason():
    with pytest.warns(UndefinedMetricWarning, match="no sample is poisoned"):
        assert math.isnan(auroc([1.0, 2.0], [False, False]))
    with pytest.warns(UndefinedMetricWarning, match="all samples are poisoned"):
        assert math.isnan(auroc([1.0, 2.0], [True, True]))
    with pytest.warns(UndefinedMetricWarning, match="average precision needs at least one poisoned sample"):
        assert math.isnan(average_precision([1.0, 2.0], [False, False]))
    with pytest.warns(UndefinedMetricWarning, match="recall needs at least one poisoned sample"):
        p, r = precision_recall_at_budget([1.0, 2.0], [False, False], 1)
    assert p == 0.0 and math.isnan(r)


def test_input_errors():
    with pytest.raises(InputError, match="is_poison has 3 entries but scores has 4"):
        auroc([1.0, 2.0, 3.0, 4.0], [True, False, False])
    with pytest.raises(InputError, match="scores is empty"):
        auroc([], [])
    with pytest.raises(InputError, match="scores has infinite values"):
        auroc([np.inf, 1.0], [True, False])
    with pytest.raises(InputError, match=r"is_poison must be boolean \(or 0/1\)"):
        auroc([1.0, 2.0], [0.5, 1.0])
    with pytest.raises(InputError, match=r"budget must be between 1 and the number of samples \(4\); got 5"):
        precision_recall_at_budget([4.0, 3.0, 2.0, 1.0], POISON, 5)
    with pytest.raises(InputError, match="budget must be an integer"):
        precision_recall_at_budget([4.0, 3.0, 2.0, 1.0], POISON, 2.0)


# ---------------------------------------------------------------------------------------------- evaluate_scores
@pytest.fixture
def planted():
    """Two patch samples, two flips, six clean; signal 'a' finds the patches and ranks the flips last."""
    truth = pd.DataFrame({
        "is_poison": [True, True, True, True] + [False] * 6,
        "poison_kind": ["patch", "patch", "flip", "flip"] + [None] * 6,
    }, index=[f"id{i}" for i in range(10)])
    a = np.array([10.0, 11.0, -1.0, -2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    return truth, a


def test_evaluate_scores_per_kind(planted):
    truth, a = planted
    table = evaluate_scores({"a": a, "flat": np.zeros(10)}, truth)
    assert list(table.columns) == ["signal", "poison_kind", "n_poison", "n_clean", "budget", "auroc",
                                   "average_precision", "precision_at_budget", "recall_at_budget",
                                   "recall_at_2x", "note"]
    assert table[["signal", "poison_kind"]].values.tolist() == [
        ["a", "all"], ["a", "flip"], ["a", "patch"], ["flat", "all"], ["flat", "flip"], ["flat", "patch"]]
    row = table.set_index(["signal", "poison_kind"])
    assert row.loc[("a", "all"), "auroc"] == 0.5
    assert row.loc[("a", "patch"), "auroc"] == 1.0
    assert row.loc[("a", "flip"), "auroc"] == 0.0
    assert (row.loc[("a", "all"), "n_poison"], row.loc[("a", "all"), "n_clean"]) == (4, 6)
    assert row.loc[("a", "patch"), "n_poison"] == 2 and row.loc[("a", "patch"), "n_clean"] == 6
    # Default budget = poison count of the row: top 4 of all = 11, 10, 5, 4 -> 2 hits.
    assert row.loc[("a", "all"), "budget"] == 4
    assert row.loc[("a", "all"), "precision_at_budget"] == 0.5
    assert row.loc[("a", "patch"), "precision_at_budget"] == 1.0
    assert row.loc[("a", "flip"), "recall_at_2x"] == 0.0
    assert row.loc[("a", "all"), "recall_at_2x"] == 0.5
    # A constant signal gets chance on every metric.
    assert row.loc[("flat", "all"), "auroc"] == 0.5
    assert row.loc[("flat", "all"), "precision_at_budget"] == pytest.approx(0.4)
    assert row.loc[("flat", "patch"), "average_precision"] == pytest.approx(0.25)
    assert (table["note"] == "").all()


def test_evaluate_scores_fixed_budget(planted):
    truth, a = planted
    row = evaluate_scores({"a": a}, truth, budget=3).set_index("poison_kind")
    assert row.loc["all", "budget"] == 3
    assert row.loc["all", "precision_at_budget"] == pytest.approx(2 / 3)
    assert row.loc["all", "recall_at_budget"] == 0.5
    assert row.loc["patch", "recall_at_budget"] == 1.0


def test_evaluate_scores_aligns_dataframes_on_sample_ids(planted):
    truth, a = planted
    frame = pd.DataFrame({"a": a}, index=truth.index).iloc[::-1]
    expected = evaluate_scores({"a": a}, truth)
    pd.testing.assert_frame_equal(evaluate_scores(frame, truth), expected)
    shuffled_truth = truth.iloc[[3, 1, 0, 2, 9, 8, 7, 6, 5, 4]]
    pd.testing.assert_frame_equal(evaluate_scores(frame, shuffled_truth), expected)
    with pytest.raises(InputError, match="1 id\\(s\\) of truth are missing from scores"):
        evaluate_scores(frame.iloc[1:], truth)


def test_evaluate_scores_without_clean_samples_reports_the_reason():
    truth = pd.DataFrame({"is_poison": [True, True, True]})
    table = evaluate_scores({"s": [3.0, 2.0, 1.0]}, truth)
    assert table["poison_kind"].tolist() == ["all"]
    assert math.isnan(table.loc[0, "auroc"]) and "all samples are poisoned" in table.loc[0, "note"]
    assert table.loc[0, "average_precision"] == 1.0


def test_evaluate_scores_unspecified_kind_and_nan_scores():
    truth = pd.DataFrame({"is_poison": [True, False, True, False], "poison_kind": ["x", None, "", None]})
    table = evaluate_scores({"s": [np.nan, 1.0, 2.0, 0.0]}, truth)
    assert table["poison_kind"].tolist() == ["all", "unspecified", "x"]
    row = table.set_index("poison_kind")
    assert row.loc["x", "auroc"] == 0.0           # NaN ranks below every clean score
    assert row.loc["unspecified", "auroc"] == 1.0


def test_evaluate_scores_errors(planted):
    truth, a = planted
    with pytest.raises(InputError, match="scores\\['a'\\] has 9 entries but truth has 10 rows"):
        evaluate_scores({"a": a[:9]}, truth)
    with pytest.raises(InputError, match="truth has no poisoned sample"):
        evaluate_scores({"a": a}, truth.assign(is_poison=False))
    with pytest.raises(InputError, match="truth has no is_poison column"):
        evaluate_scores({"a": a}, truth.drop(columns="is_poison"))
    with pytest.raises(InputError, match="scores holds no signal"):
        evaluate_scores({}, truth)
    with pytest.raises(InputError, match="scores must be a dict of name -> array or a DataFrame"):
        evaluate_scores(a, truth)
    with pytest.raises(InputError, match="budget must be between 1 and the number of samples"):
        evaluate_scores({"a": a}, truth, budget=0)
