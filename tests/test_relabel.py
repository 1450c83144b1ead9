"""Targeted relabelling: pairs relabelled one way, and the posterior of each sample of such a pair."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from forensics import redteam, sample_data
from forensics.activations import extract_activations
from forensics.analysis import compute_signals
from forensics.errors import InputError
from forensics.signals import get_signal, label_quality
from forensics.signals.relabel import LABEL_COLUMNS, PAIR_COLUMNS, relabelled_pairs, targeted_flip_scores

N_PER_CLASS, N_CLASSES = 400, 4


def _probs(true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Out-of-sample probabilities of a decent classifier: mostly sure of the true class, and mutually unsure
    within the pairs (0, 2) and (1, 3): a fifth of each class looks partly or wholly like its pair's other."""
    p = np.full((len(true), N_CLASSES), 0.02)
    p[np.arange(len(true)), true] = 0.94
    for c, other in ((0, 2), (2, 0), (1, 3), (3, 1)):
        rows = np.flatnonzero(true == c)
        unsure = rng.choice(rows, len(rows) // 5, replace=False)
        share = rng.uniform(0.3, 1.0, len(unsure))
        p[unsure, c] -= share * 0.9
        p[unsure, other] += share * 0.9
    p += rng.uniform(0, 0.01, p.shape)
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def flipped() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A quarter of class 2 relabelled 0 (classes 0 and 2 are naturally confusable both ways)."""
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(N_CLASSES), N_PER_CLASS)
    probs = _probs(true, rng)
    labels = true.copy()
    flips = rng.choice(np.flatnonzero(true == 2), N_PER_CLASS // 4, replace=False)
    labels[flips] = 0
    # A classifier trained on these labels hedges: a quarter of what looks like class 2 carries label 0.
    hedge = 0.25 * probs[:, 2]
    probs[:, 2] -= hedge
    probs[:, 0] += hedge
    return labels, probs, np.sort(flips)


def test_a_one_way_relabelling_is_found_as_its_pair(flipped):
    labels, probs, flips = flipped
    pairs = relabelled_pairs(labels, probs)
    assert list(pairs.columns) == list(PAIR_COLUMNS + LABEL_COLUMNS)
    assert list(pairs["test"]) == ["pair"] and list(pairs["purity"]) == [1.0]
    assert [(r.label, r.looks_like) for r in pairs.itertuples()] == [(0, 2)]
    [row] = pairs.itertuples()
    # The mirror is class 2's natural confusion; the excess undercounts the flips (relabelled samples that look
    # partly like class 0 are not counted as class-2 lookalikes).
    assert row.mirror > 0 and row.count > 2 * row.mirror
    assert row.excess == row.count - row.mirror
    assert 0.5 * len(flips) <= row.excess <= len(flips)
    assert row.p_value == pytest.approx(stats.binom.sf(row.count - 1, row.count + row.mirror, 0.5))
    assert row.p_value < 1e-6


def test_scores_rank_the_relabelled_samples_first_and_leave_other_labels_at_zero(flipped):
    labels, probs, flips = flipped
    scores = targeted_flip_scores(labels, probs)
    assert scores.shape == labels.shape and np.all((scores >= 0) & (scores <= 1))
    assert np.all(scores[labels != 0] == 0)
    # Within label 0 the score follows how much a sample looks like class 2, up to certainty.
    zero = np.flatnonzero(labels == 0)
    below = zero[scores[zero] < 1]
    assert len(below) > 0.9 * len(zero)
    assert stats.spearmanr(scores[below], probs[below, 2]).statistic == pytest.approx(1.0)

    def recall(s):
        return np.isin(np.argsort(-s, kind="stable")[: len(flips)], flips).mean()

    # Label quality also ranks the naturally confused 1s and 3s high; this signal looks at label 0 alone.
    # What it misses are flipped samples that look like class 0 and 0s that look wholly like class 2.
    quality = label_quality.label_issue_scores(labels, pred_probs=probs)
    assert recall(scores) >= 0.75
    assert recall(scores) >= recall(quality) + 0.15


def test_probability_formula_for_one_pair(flipped):
    labels, probs, flips = flipped
    pairs = relabelled_pairs(labels, probs)
    [row] = pairs.itertuples()
    n2 = np.sum(labels == 2)
    rho = row.excess / (n2 + row.excess)  # the share of class 2 relabelled 0
    scores = targeted_flip_scores(labels, probs, pairs=pairs)
    zero = np.flatnonzero(labels == 0)
    assert scores[zero] == pytest.approx(np.minimum(1.0, probs[zero, 2] / (1 - rho)))
    # A model trained on the relabelled data gives a relabelled sample about 1 - rho of its own class, so the score
    # reads it as likely relabelled (median 0.89 here); the likelihood ratio read as odds gave 0.48.
    assert np.median(scores[flips]) > 0.7


def test_mutual_confusion_and_random_flips_leave_the_signal_silent():
    rng = np.random.default_rng(1)
    true = np.repeat(np.arange(N_CLASSES), N_PER_CLASS)
    probs = _probs(true, rng)
    assert relabelled_pairs(true, probs).empty
    assert np.all(targeted_flip_scores(true, probs) == 0)
    # Random flips go every way at once: no pair stands out (the loss and label-quality signals find them).
    labels = true.copy()
    flips = rng.choice(len(true), len(true) // 10, replace=False)
    labels[flips] = (true[flips] + rng.integers(1, N_CLASSES, len(flips))) % N_CLASSES
    assert relabelled_pairs(labels, probs).empty


def test_a_class_absent_from_the_labels_is_not_tested(flipped):
    labels, probs, _ = flipped
    # Class 3 is predicted but never given: its column stays, no pair names it.
    keep = labels != 3
    pairs = relabelled_pairs(labels[keep], probs[keep])
    assert [(r.label, r.looks_like) for r in pairs.itertuples()] == [(0, 2)]


def test_errors(flipped):
    labels, probs, _ = flipped
    with pytest.raises(InputError, match="labels has 1599 entries but pred_probs has 1600 rows"):
        relabelled_pairs(labels[:-1], probs)
    with pytest.raises(InputError, match="probabilities"):
        relabelled_pairs(labels, probs * 2)
    with pytest.raises(InputError, match="alpha"):
        relabelled_pairs(labels, probs, alpha=1.5)
    with pytest.raises(InputError, match="lacks the column"):
        targeted_flip_scores(labels, probs, pairs=pd.DataFrame({"label": [0]}))
    bad = pd.DataFrame([(0, 9, 1, 0, 1, 0.0)], columns=list(PAIR_COLUMNS))
    with pytest.raises(InputError, match="do not both hold"):
        targeted_flip_scores(labels, probs, pairs=bad)


def test_compute_signals_runs_it_on_the_out_of_fold_probabilities_computed_once(monkeypatch):
    """Features in which a quarter of class 2, relabelled 0, stays among class 2."""
    rng = np.random.default_rng(2)
    true = np.repeat(np.arange(N_CLASSES), N_PER_CLASS)
    features = (3.0 * np.eye(N_CLASSES, 8)[true] + rng.normal(size=(len(true), 8))).astype(np.float32)
    labels = true.copy()
    flips = np.flatnonzero(true == 2)[::4]
    labels[flips] = 0
    calls = []
    real = label_quality.out_of_fold_probs
    monkeypatch.setattr(label_quality, "out_of_fold_probs", lambda *a, **k: calls.append(1) or real(*a, **k))
    table, info = compute_signals(features, labels, signals=("label_quality", "targeted_flip"))
    assert len(calls) == 1
    assert [(r.label, r.looks_like) for r in info["relabelled_pairs"].itertuples()] == [(0, 2)]
    scores = table["targeted_flip_score"].to_numpy()
    assert np.all(scores[labels != 0] == 0)
    top = np.argsort(-scores, kind="stable")[: len(flips)]
    assert np.isin(top, flips).mean() >= 0.9
    assert "one-way relabelling" in get_signal("targeted_flip").reason


# ---------------------------------------------------------------- real data: the bundled images, the shipped model


@pytest.fixture(scope="module")
def bundled() -> tuple:
    data = sample_data.load("image_backdoor")
    model, _ = data.model()
    arrays = extract_activations(model, data.train, progress=False)
    return data.train, arrays.feature(), arrays.probs


def test_bundled_data_has_no_pair_even_with_a_class_cut_to_a_quarter(bundled):
    ds, features, own = bundled
    labels = ds.labels
    # The bot relabels at random, every way at once: no pair, and no label holds too many lookalikes, by the probe
    # or by the model's own probabilities.
    assert relabelled_pairs(labels, label_quality.out_of_fold_probs(features, labels)).empty
    assert relabelled_pairs(labels, label_quality.out_of_fold_probs(features, labels), model_probs=own).empty
    # Shirts cut to a quarter. The confusion counts stay even both ways (a classifier's boundary moves toward the
    # smaller class), while a null scaled by class size would call a pair at a level far below any correction.
    keep = (labels != 6) | (np.random.default_rng(0).random(len(labels)) < 0.25)
    y, x = labels[keep], features[keep]
    probs = label_quality.out_of_fold_probs(x, y)
    assert relabelled_pairs(y, probs).empty
    from cleanlab.count import compute_confident_joint

    joint, size = compute_confident_joint(y, probs), np.bincount(y)
    scaled = min(stats.binom.sf(joint[a, b] - 1, joint[a, b] + joint[b, a], size[a] / (size[a] + size[b]))
                 for a in range(10) for b in range(10) if a != b and joint[a, b] + joint[b, a] > 0)
    assert scaled < 1e-6


def test_bundled_shirts_relabelled_t_shirt_are_found(bundled):
    ds, features, own = bundled
    attacked = redteam.pair_flips(ds, from_class="Shirt", to_class="T-shirt/top", rate=0.2, random_state=0)
    labels = attacked.dataset.labels
    probs = label_quality.out_of_fold_probs(features, labels)
    pairs = relabelled_pairs(labels, probs)
    assert [(r.label, r.looks_like) for r in pairs.itertuples()] == [(0, 6)]
    flipped = attacked.truth.reindex(ds.ids)["poison_kind"].eq("pair_flip").to_numpy()
    assert pairs.loc[0, "excess"] >= 0.5 * flipped.sum()
    top = np.argsort(-targeted_flip_scores(labels, probs, pairs=pairs), kind="stable")[: 2 * flipped.sum()]
    assert flipped[top].sum() / flipped.sum() >= 0.85  # recall when reviewing twice as many as were relabelled


def test_a_label_holding_a_few_lookalikes_of_every_class_is_found_many_to_one(bundled):
    """A backdoor relabelled to its target that the model did not learn: 15 of every other class given label 3 (1.1%
    of the data). Pairs find only the class that Dress is never confused with (Sandal, 21 against 2); the label
    test finds the rest, against every class at once, and scales its lookalikes' probabilities by the share of them
    that the excess explains."""
    ds, features, own = bundled
    rng = np.random.default_rng(1)
    labels = ds.labels.copy()
    moved = np.concatenate([rng.choice(np.flatnonzero(labels == c), 15, replace=False) for c in range(10) if c != 3])
    labels[moved] = 3
    probs = label_quality.out_of_fold_probs(features, labels)
    pairs = relabelled_pairs(labels, probs)
    assert set(pairs["label"]) == {3}
    by_pair, by_label = pairs[pairs["test"] == "pair"], pairs[pairs["test"] == "label"]
    assert list(by_pair["looks_like"]) == [5] and (by_pair["purity"] == 1).all()
    assert len(by_label) >= 6 and 5 not in set(by_label["looks_like"])  # a found pair is left out of the label test
    assert (by_label["p_value"] < 0.01 / 90).all() and (by_label["excess"] > 0).all()
    purity = by_label["purity"].iloc[0]
    assert 0.3 < purity < 1 and (by_label["purity"] == purity).all()
    top = np.argsort(-targeted_flip_scores(labels, probs, pairs=pairs), kind="stable")[: 2 * len(moved)]
    pair_only = np.argsort(-targeted_flip_scores(labels, probs, pairs=by_pair), kind="stable")[: 2 * len(moved)]
    # Recall at twice the count: 0.99 here; the pair alone 0.40 (its sandals, and whatever else looks like one).
    assert np.isin(moved, top).mean() >= 0.9 > 0.5 >= np.isin(moved, pair_only).mean()
    # The model that never saw these labels (as one that did not learn a backdoor): its own probabilities find them.
    pairs = relabelled_pairs(labels, probs, model_probs=own)
    assert set(pairs.loc[pairs["test"] == "label", "label"]) == {3}
    top = np.argsort(-targeted_flip_scores(labels, probs, pairs=pairs, model_probs=own), kind="stable")
    assert np.isin(moved, top[: 2 * len(moved)]).mean() >= 0.9
    with pytest.raises(InputError, match="model_probs"):
        relabelled_pairs(labels, probs, model_probs=own[:, :4])
