"""Core signals on planted fixtures: loss, label quality, activation clustering, spectral, neighbours."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from forensics.errors import InputError
from forensics.signals.clustering import activation_clustering, cluster_classes, cluster_evidence, split_p_values
from forensics.signals.label_quality import estimated_label_issues, label_issue_scores, out_of_fold_probs
from forensics.signals.loss import high_loss, low_loss_within_class, robust_z_within_class
from forensics.signals.neighbors import knn_distance_outlier, knn_label_disagreement
from forensics.signals.spectral import robust_spectral, spectral_signature

N_PER_CLASS, N_CLASSES, DIM, N_PLANTED = 200, 3, 16, 10


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated isotropic Gaussian classes (unit spread, centres 12 apart)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(N_CLASSES), N_PER_CLASS)
    centres = 12.0 * np.eye(N_CLASSES, DIM)
    features = centres[labels] + rng.normal(size=(len(labels), DIM))
    return features.astype(np.float32), labels


@pytest.fixture(scope="module")
def clean() -> tuple[np.ndarray, np.ndarray]:
    return _blobs()


@pytest.fixture(scope="module")
def backdoor() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class 0 holds a tight sub-cluster of 5% of its samples, 6 units away from the class centre (a backdoor)."""
    features, labels = _blobs()
    rng = np.random.default_rng(1)
    planted = rng.choice(np.flatnonzero(labels == 0), N_PLANTED, replace=False)
    direction = np.zeros(DIM)
    direction[5] = 1.0
    features[planted] = 6.0 * direction + 0.1 * rng.normal(size=(N_PLANTED, DIM))
    return features, labels, np.sort(planted)


@pytest.fixture(scope="module")
def flipped() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five samples of class 1 relabelled to class 2; their features stay in class 1."""
    features, labels = _blobs()
    flips = np.flatnonzero(labels == 1)[[3, 40, 77, 120, 199]]
    noisy = labels.copy()
    noisy[flips] = 2
    return features, noisy, flips


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argsort(-scores, kind="stable")[:k])


# ---------------------------------------------------------------- loss


def test_high_loss_is_cross_entropy_of_the_given_label():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]])
    got = high_loss(probs, np.array([0, 1, 1]))
    np.testing.assert_allclose(got, [np.log(2), -np.log(0.1), -np.log(1e-12)])
    assert got.dtype == np.float64


def test_a_saturated_label_s_loss_is_read_from_the_other_classes_so_confident_samples_do_not_tie():
    # float32 softmax outputs: the label's probability rounds to 1, the other classes' keep their size.
    probs = np.array([[1.0, 1e-9, 1e-10], [1.0, 1e-11, 0.0], [0.999, 0.001, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    got = high_loss(probs, np.array([0, 0, 0, 0]))
    np.testing.assert_allclose(got[:3], [1.1e-9, 1e-11, -np.log(0.999)], rtol=1e-6)
    assert got[3] == pytest.approx(-np.log(1e-12))  # an impossible label still floors
    assert len(np.unique(low_loss_within_class(got, np.zeros(4, dtype=int)))) == 4


def test_high_loss_passes_a_loss_through_and_ranks_flips_first(flipped):
    features, labels, flips = flipped
    # A model's probabilities: softmax of minus the squared distance to the true class centres.
    centres = np.stack([features[(labels == c) & ~np.isin(np.arange(len(labels)), flips)].mean(0) for c in range(3)])
    logits = -0.1 * ((features[:, None, :] - centres[None]) ** 2).sum(-1)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    loss = high_loss(probs, labels)
    np.testing.assert_array_equal(_top(loss, 5), flips)
    np.testing.assert_array_equal(high_loss(loss.astype(np.float32), labels), loss.astype(np.float32))


def test_low_loss_within_class_finds_the_unusually_confident_samples_of_a_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    # Class 1 is an easy class: all its losses are tiny, but none stands out within the class.
    loss = np.where(labels == 0, rng.lognormal(np.log(0.3), 0.5, 200), rng.lognormal(np.log(1e-4), 0.5, 200))
    planted = np.array([5, 17, 60])
    loss[planted] = 1e-9
    scores = low_loss_within_class(loss, labels)
    np.testing.assert_array_equal(_top(scores, 3), planted)
    # The bulk of each class is standardized: medians 0, robust spreads 1.
    for c in (0, 1):
        s = scores[(labels == c) & ~np.isin(np.arange(200), planted)]
        assert abs(np.median(s)) < 0.1


def test_robust_z_within_class_rules_for_ties_and_singletons():
    labels = np.array([0, 0, 0, 0, 0, 1, 2, 2])
    values = np.array([1.0, 1.0, 1.0, 1.0, 5.0, 7.0, 3.0, 3.0])
    z = robust_z_within_class(values, labels)
    # Class 0: MAD is 0, so the mean absolute deviation (0.8) times 1.2533 sets the scale.
    np.testing.assert_allclose(z[:5], [0, 0, 0, 0, 4.0 / (1.2533 * 0.8)])
    np.testing.assert_array_equal(z[5:], [0.0, 0.0, 0.0])


# ---------------------------------------------------------------- label quality


def test_label_issue_scores_from_features_rank_flips_first(flipped):
    features, labels, flips = flipped
    scores = label_issue_scores(labels, features=features)
    np.testing.assert_array_equal(_top(scores, 5), flips)
    assert np.all((scores >= 0) & (scores <= 1))


def test_the_count_of_wrong_labels_is_zero_on_clean_classes_and_near_the_planted_flips(clean):
    features, labels = clean
    assert estimated_label_issues(labels, out_of_fold_probs(features, labels)) == 0
    rng = np.random.default_rng(3)
    flips = rng.choice(len(labels), 90, replace=False)
    noisy = labels.copy()
    noisy[flips] = (labels[flips] + rng.integers(1, N_CLASSES, len(flips))) % N_CLASSES
    # cleanlab's confident-joint count (measured 81 of the 90): a size to report, not a list.
    assert 80 <= estimated_label_issues(noisy, out_of_fold_probs(features, noisy)) <= 90
    with pytest.raises(InputError, match="pred_probs"):
        estimated_label_issues(labels, np.full((5, 3), 1 / 3))


def test_label_issue_scores_from_pred_probs_is_one_minus_self_confidence():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    np.testing.assert_allclose(label_issue_scores(np.array([0, 0, 1]), pred_probs=probs), [0.2, 0.7, 0.6])


def test_out_of_fold_probs_single_member_class_gets_zero_for_its_label(clean, caplog):
    features, labels = clean
    labels = labels.copy()
    labels[7] = 3  # a class of one
    with caplog.at_level(logging.WARNING, logger="forensics.signals.label_quality"):
        probs = out_of_fold_probs(features, labels, cv_folds=5, random_state=0)
        scores = label_issue_scores(labels, features=features)
    assert "[3] have fewer than 5 members" in caplog.text
    assert probs.shape == (600, 4) and probs[7, 3] == 0.0
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert scores[7] == 1.0


def test_out_of_fold_probs_subsamples_large_training_folds(flipped):
    features, labels, flips = flipped
    scores = label_issue_scores(labels, features=features, max_train=100)
    np.testing.assert_array_equal(_top(scores, 5), flips)


# ---------------------------------------------------------------- activation clustering


def test_activation_clustering_flags_exactly_the_planted_cluster(backdoor):
    features, labels, planted = backdoor
    result = cluster_classes(features, labels)
    np.testing.assert_array_equal(np.flatnonzero(result.scores > 0), planted)
    table = result.table.set_index("label")
    assert table["flagged"].tolist() == [True, False, False]
    assert table.loc[0, "small_cluster_size"] == N_PLANTED
    assert table.loc[0, "separation"] > 5
    np.testing.assert_array_equal(activation_clustering(features, labels), result.scores)


def test_split_p_values_judge_a_class_against_the_others():
    clean = np.array([3.0, 3.3, 3.1, 3.6, 2.9, 3.4, 3.2])
    p = split_p_values(np.append(clean, [10.0, np.nan]))
    assert p[-1] == 1.0  # a class that was not split
    assert p[-2] < 1e-12  # far beyond the others' spread
    assert (p[:-2] > 0.05).all()
    # The spread has a floor, so classes that agree closely do not make a mild split look impossible.
    same = split_p_values(np.array([3.3] * 8 + [4.4]))
    assert same[-1] > 0.01
    # With fewer classes than it takes to measure their spread, the reference null is used.
    few = split_p_values(np.array([3.3, 3.3, 10.0]))
    np.testing.assert_allclose(few[-1], stats.norm.sf(np.log(10 / 3.3) / 0.2))


def test_cluster_evidence_gives_every_member_its_split_p_value(backdoor):
    features, labels, planted = backdoor
    result = cluster_classes(features, labels)
    evidence = cluster_evidence(result, labels)
    np.testing.assert_array_equal(np.flatnonzero(evidence > 0), planted)
    p0 = float(result.table.set_index("label").loc[0, "p_value"])
    np.testing.assert_allclose(evidence[planted], -np.log10(p0), atol=0.02)  # the tie-break moves no digit
    assert np.argmax(evidence) == planted[np.argmax(result.scores[planted])]


def test_activation_clustering_flags_nothing_on_clean_classes(clean):
    result = cluster_classes(*clean)
    assert not result.table["flagged"].any()
    assert np.all(result.scores == 0)
    # The gate, not luck: k-means did split every class, and each reason says which test failed.
    assert result.table["reason"].str.contains("separation|of the class").all()


def test_activation_clustering_small_class_scores_zero_with_a_reason(backdoor, caplog):
    features, labels, planted = backdoor
    features = np.vstack([features, features[:1] + 50])
    labels = np.append(labels, 7)
    with caplog.at_level(logging.WARNING, logger="forensics.signals.clustering"):
        result = cluster_classes(features, labels)
    assert "class 7 not split: 1 samples, fewer than 10" in caplog.text
    assert result.table.set_index("label").loc[7, "reason"].startswith("not split")
    assert result.scores[-1] == 0
    np.testing.assert_array_equal(np.flatnonzero(result.scores > 0), planted)


def test_activation_clustering_size_gate(backdoor):
    features, labels, _ = backdoor
    result = cluster_classes(features, labels, max_relative_size=0.04)
    assert not result.table["flagged"].any()
    assert "more than 4.0%" in result.table.loc[0, "reason"]


# ---------------------------------------------------------------- spectral


def test_spectral_signature_matches_the_formula_on_centered_rows():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(9, 4)).astype(np.float32) + np.array([10, -3, 0, 5], dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    got = spectral_signature(features, labels)
    for c in (0, 1):
        x = features[labels == c].astype(np.float64)
        centered = x - x.mean(0)
        v = np.linalg.svd(centered, full_matrices=False)[2][0]
        q = centered @ v
        spread = 1.4826 * np.median(np.abs(q - np.median(q)))
        np.testing.assert_allclose(got[labels == c], q**2 / spread**2, rtol=1e-5)
    # Centered: moving a class does not change its scores (uncentered projections would).
    np.testing.assert_allclose(spectral_signature(features + 100, labels), got, rtol=1e-4)


@pytest.mark.parametrize("signal", [spectral_signature, robust_spectral])
def test_spectral_scores_put_the_planted_cluster_on_top(signal, backdoor):
    features, labels, planted = backdoor
    np.testing.assert_array_equal(_top(signal(features, labels), N_PLANTED), planted)


def test_robust_spectral_finds_a_planted_cluster_that_spectral_signature_misses():
    # 1% of a class, along a direction that is not the class's largest: the plain top direction is the
    # class's natural elongation, the robust whitening removes it.
    rng = np.random.default_rng(0)
    n, d = 1000, 12
    features = rng.normal(size=(n, d)) * np.r_[4.0, np.ones(d - 1)]
    labels = np.zeros(n, dtype=int)
    planted = np.arange(10)
    features[planted] = rng.normal(size=(10, d)) * 0.1
    features[planted, 3] = 7.0
    assert len(np.intersect1d(_top(spectral_signature(features, labels), 10), planted)) < 5
    np.testing.assert_array_equal(_top(robust_spectral(features, labels), 10), planted)


def test_spectral_single_member_class_scores_zero(backdoor, caplog):
    features, labels, planted = backdoor
    features = np.vstack([features, features[:1]])
    labels = np.append(labels, 9)
    with caplog.at_level(logging.WARNING, logger="forensics.signals.spectral"):
        for signal in (spectral_signature, robust_spectral):
            scores = signal(features, labels)
            assert scores[-1] == 0
            np.testing.assert_array_equal(_top(scores, N_PLANTED), planted)
    assert "class 9 has one sample" in caplog.text


# ---------------------------------------------------------------- neighbours


def test_knn_label_disagreement_finds_flips_and_a_clean_label_poison(flipped):
    features, labels, flips = flipped
    features = features.copy()
    # A clean-label poison: labelled 0 (its true class), with features that sit inside class 2.
    poison = 11
    features[poison] = features[labels == 2].mean(0)
    for metric in ("cosine", "euclidean"):
        scores = knn_label_disagreement(features, labels, k=10, metric=metric)
        np.testing.assert_array_equal(_top(scores, 6), np.sort(np.r_[flips, poison]))
        assert scores[poison] == 1.0
    assert np.all(np.isin(knn_label_disagreement(features, labels, k=4), np.arange(5) / 4))


def test_knn_label_disagreement_excludes_the_sample_itself():
    features = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.1]], dtype=np.float32)
    labels = np.array([0, 1, 1, 1])
    scores = knn_label_disagreement(features, labels, k=1, metric="euclidean", n_components=None)
    np.testing.assert_array_equal(scores, [1.0, 1.0, 0.0, 0.0])


def test_knn_distance_outlier_flags_isolated_samples_per_class(clean, caplog):
    features, labels = clean
    features = features.copy()
    isolated = np.array([30, 250, 580])  # one per class, pushed 8 units out of its blob
    features[isolated, 10] += 8.0
    scores = knn_distance_outlier(features, labels, k=5, metric="euclidean")
    np.testing.assert_array_equal(_top(scores, 3), isolated)
    for c in range(3):
        assert abs(np.median(scores[labels == c])) < 1e-9
    # Small classes: a class of 3 uses its farthest other member, a class of one scores 0.
    features = np.vstack([features, [[40.0] * DIM] * 3, [[-40.0] * DIM]])
    labels = np.r_[labels, 5, 5, 5, 6]
    with caplog.at_level(logging.WARNING, logger="forensics.signals.neighbors"):
        scores = knn_distance_outlier(features, labels, k=5)
    assert "class 5 has 3 samples; using neighbour rank 2" in caplog.text
    assert "class 6 has one sample" in caplog.text
    assert scores[-1] == 0


def test_neighbours_beyond_the_exact_limit_are_approximate_but_close(flipped, monkeypatch):
    from forensics.signals import neighbors

    features, labels, flips = flipped
    x = neighbors.reduce_features(features, metric="euclidean", n_components=None)
    exact_d, exact_i = neighbors.nearest_neighbors(x, 10)
    monkeypatch.setattr(neighbors, "EXACT_MAX_ROWS", 100)
    d, i = neighbors.nearest_neighbors(x, 10)
    assert d.shape == i.shape == (len(x), 10)
    assert not (i == np.arange(len(x))[:, None]).any()  # never its own neighbour
    assert np.all(np.diff(d, axis=1) >= 0)  # nearest first
    found = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, exact_i)])
    assert found > 0.9
    # The signal on the approximate graph still ranks the flips first.
    scores = knn_label_disagreement(features, labels, k=10, metric="euclidean")
    np.testing.assert_array_equal(_top(scores, len(flips)), np.sort(flips))


def test_the_outlier_signal_searches_large_classes_approximately_and_still_finds_the_isolated(clean, monkeypatch):
    from forensics.signals import neighbors

    features, labels = clean
    features = features.copy()
    isolated = np.array([30, 250, 580])
    features[isolated, 10] += 8.0
    exact = knn_distance_outlier(features, labels, k=5, metric="euclidean")
    calls = []
    real = neighbors._approximate_neighbors
    monkeypatch.setattr(neighbors, "_approximate_neighbors", lambda *a: calls.append(len(a[0])) or real(*a))
    monkeypatch.setattr(neighbors, "EXACT_MAX_ROWS", 100)  # three classes of 200: 3 x 200^2 > 100^2
    scores = knn_distance_outlier(features, labels, k=5, metric="euclidean")
    assert sorted(calls) == sorted(np.bincount(labels).tolist())  # every class searched approximately
    np.testing.assert_array_equal(_top(scores, 3), isolated)
    assert np.corrcoef(scores, exact)[0, 1] > 0.95


# ---------------------------------------------------------------- shared contract


SIGNALS = {
    "activation_clustering": activation_clustering,
    "spectral_signature": spectral_signature,
    "robust_spectral": robust_spectral,
    "knn_label_disagreement": knn_label_disagreement,
    "knn_distance_outlier": knn_distance_outlier,
    "label_issue_scores": lambda f, y, **kw: label_issue_scores(y, features=f, **kw),
}


@pytest.mark.parametrize("name", SIGNALS)
def test_feature_signals_return_one_finite_float_per_sample_deterministically(name, backdoor):
    features, labels, _ = backdoor
    signal = SIGNALS[name]
    kwargs = {} if name == "spectral_signature" else {"random_state": 5}
    first = signal(features, labels, **kwargs)
    assert first.shape == (len(labels),) and first.dtype == np.float64 and np.isfinite(first).all()
    np.testing.assert_array_equal(signal(features, labels, **kwargs), first)
    # Integer features are accepted too.
    assert np.isfinite(signal(np.round(features).astype(np.int64), labels)).all()


@pytest.mark.parametrize("name", SIGNALS)
def test_feature_signals_reject_bad_input(name, backdoor):
    features, labels, _ = backdoor
    signal = SIGNALS[name]
    with pytest.raises(InputError, match="labels has 599 entries but features has 600 rows"):
        signal(features, labels[:-1])
    bad = features.copy()
    bad[[42, 77], 3] = np.nan
    with pytest.raises(InputError, match="2 NaN or infinite value.* in 2 row.*first at row 42"):
        signal(bad, labels)
    with pytest.raises(InputError, match="features must be 2-D"):
        signal(features[:, 0], labels)
    with pytest.raises(InputError, match="labels must be integer class indices"):
        signal(features, labels + 0.5)


def test_option_errors(backdoor):
    features, labels, _ = backdoor
    with pytest.raises(InputError, match="k = 600 needs at least 601 samples"):
        knn_label_disagreement(features, labels, k=600)
    with pytest.raises(InputError, match="k must be an integer >= 1; got 0"):
        knn_distance_outlier(features, labels, k=0)
    with pytest.raises(InputError, match=r"metric must be one of \['cosine', 'euclidean'\]; got 'manhattan'"):
        knn_label_disagreement(features, labels, metric="manhattan")
    with pytest.raises(InputError, match="max_relative_size must be in \\(0, 0.5\\]; got 0.7"):
        cluster_classes(features, labels, max_relative_size=0.7)
    with pytest.raises(InputError, match="keep must be in \\[0.5, 1\\]; got 0.2"):
        robust_spectral(features, labels, keep=0.2)
    with pytest.raises(InputError, match="give exactly one of pred_probs"):
        label_issue_scores(labels)
    with pytest.raises(InputError, match="give exactly one of pred_probs"):
        label_issue_scores(labels, features=features, pred_probs=np.full((600, 3), 1 / 3))
    with pytest.raises(InputError, match="cv_folds must be an integer >= 2; got 1"):
        label_issue_scores(labels, features=features, cv_folds=1)
    with pytest.raises(InputError, match="method must be one of"):
        label_issue_scores(labels, pred_probs=np.full((600, 3), 1 / 3), method="entropy")
    with pytest.raises(InputError, match="at least two classes with two or more samples"):
        label_issue_scores(np.r_[np.zeros(599, int), 1], features=features)
    with pytest.raises(InputError, match="labels has 599 entries but pred_probs has 600 rows"):
        label_issue_scores(labels[:-1], pred_probs=np.full((600, 3), 1 / 3))
    with pytest.raises(InputError, match="labels has class 3 but only 3 classes are known"):
        label_issue_scores(np.r_[labels[:-1], 3], pred_probs=np.full((600, 3), 1 / 3))


def test_loss_errors():
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    with pytest.raises(InputError, match="labels is required when probs_or_loss holds probabilities"):
        high_loss(probs)
    with pytest.raises(InputError, match="rows sum to 1"):
        high_loss(np.array([[0.5, 0.7], [0.9, 0.1]]), np.array([0, 1]))
    with pytest.raises(InputError, match="labels has 3 entries but probs_or_loss has 2 rows"):
        high_loss(probs, np.array([0, 1, 1]))
    with pytest.raises(InputError, match="loss must be >= 0 .*found -0.5 at row 1"):
        low_loss_within_class(np.array([0.1, -0.5]), np.array([0, 0]))
    with pytest.raises(InputError, match="loss has 1 NaN or infinite value.*first at row 0"):
        low_loss_within_class(np.array([np.nan, 0.5]), np.array([0, 0]))
    with pytest.raises(InputError, match="labels has 1 entries but loss has 2 rows"):
        low_loss_within_class(np.array([0.1, 0.5]), np.array([0]))
    with pytest.raises(InputError, match="probs_or_loss must be probabilities of shape"):
        high_loss(np.zeros((2, 2, 2)), np.array([0, 1]))


def test_robust_spectral_is_the_robust_distance_divided_by_its_class_spread(backdoor):
    # The score is sqrt(tau) / s: a clean class's median sample scores about its median / MAD ratio, not its
    # square, so a heavy tail of the whitened distances does not become an extreme one.
    features, labels, planted = backdoor
    scores = robust_spectral(features, labels)
    for c in np.unique(labels):
        v = scores[(labels == c) & ~np.isin(np.arange(len(labels)), planted)]
        mad = 1.4826 * np.median(np.abs(v - np.median(v)))
        assert mad == pytest.approx(1.0, rel=0.25)  # the class's spread is the unit
    assert scores[planted].min() > 3 * np.median(scores)
