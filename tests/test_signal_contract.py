"""The contract every registered signal must keep (as scikit-learn's check_estimator does for estimators).

For each signal computed from activations: one float64 per sample; higher on a planted case of the poison it is
made for; the same scores under the same random_state; a clear error on a length mismatch and on NaN features; and
the same scores whatever other signals run beside it and in whatever order. A built-in signal without a planted
case here fails the first test: a new signal comes with its case.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

import forensics
from forensics import Dataset, compute_signals
from forensics.errors import InputError
from forensics.signals import registry

COMPUTED = [s.name for s in registry.registered_signals() if s.score is not None]


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = load_digits()
    images = (d.images * 15).astype(np.uint8)
    features = d.data.astype(np.float32) / 16 + np.random.default_rng(0).normal(0, 0.05, d.data.shape).astype(
        np.float32)
    return images, features, d.target.astype(np.int64)


def _probs(labels: np.ndarray, *, sure: np.ndarray | None = None, wrong: np.ndarray | None = None) -> np.ndarray:
    """A model's probabilities: fairly sure of each given label, very sure on ``sure``, sure of another class on
    ``wrong``."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (len(labels), 10))
    logits[np.arange(len(labels)), labels] += 4
    if sure is not None:
        logits[sure, labels[sure]] += 12
    if wrong is not None:
        logits[wrong, (labels[wrong] + 1) % 10] += 10
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _planted(name: str) -> tuple[dict, np.ndarray]:
    """compute_signals' inputs with a poison this signal is made to see, and the poisoned rows."""
    images, x, y = _digits()
    n = len(y)
    rng = np.random.default_rng(2)
    poison = np.zeros(n, bool)
    kw: dict = {}
    if name in ("high_loss", "label_quality", "knn_disagreement", "ensemble"):
        poison[rng.choice(n, 90, replace=False)] = True  # random label flips
        y = y.copy()
        y[poison] = (y[poison] + rng.integers(1, 10, poison.sum())) % 10
        kw["probs"] = _probs(y, wrong=poison)
    elif name == "targeted_flip":
        # Features of Gaussian classes: a linear probe cannot memorize which 3s were relabelled, as a model's
        # features do not (on the 64 pixels it learns part of the flip and the confusion looks mutual).
        x = (rng.normal(0, 1.5, (10, 16))[y] + rng.normal(0, 1, (n, 16))).astype(np.float32)
        threes = np.flatnonzero(y == 3)
        poison[rng.choice(threes, int(0.4 * len(threes)), replace=False)] = True  # 3 relabelled 8, one way
        y = y.copy()
        y[poison] = 8
    elif name in ("low_loss", "activation_cluster", "spectral", "robust_spectral"):
        zeros = np.flatnonzero(y != 0)
        poison[rng.choice(zeros, 30, replace=False)] = True  # a backdoor: one direction, relabelled 0
        y = y.copy()
        y[poison] = 0
        x = x.copy()
        x[poison] += 3.0 * (np.arange(x.shape[1]) % 7 == 0)
        kw["probs"] = _probs(y, sure=poison)
    elif name == "knn_outlier":
        poison[rng.choice(n, 20, replace=False)] = True  # lone samples far from their class
        x = x.copy()
        x[poison] = rng.normal(0, 1, (20, x.shape[1])) * 3
    elif name == "duplicates":
        src = rng.choice(n, 20, replace=False)
        dst = rng.choice(np.setdiff1d(np.arange(n), src), 20, replace=False)
        images = images.copy()
        images[dst] = images[src]  # copies under another label
        y = y.copy()
        y[dst] = (y[src] + 1) % 10
        poison[src] = poison[dst] = True
    elif name == "shared_mark":
        poison[rng.choice(n, 30, replace=False)] = True  # a 3x3 checkerboard at one place
        images = images.copy()
        images[np.ix_(poison, [5, 6, 7], [5, 6, 7])] = np.array([[255, 0, 255], [0, 255, 0], [255, 0, 255]],
                                                                np.uint8)
    elif name == "source":
        sources = np.array([f"worker-{i % 12}" for i in range(n)], dtype=object)
        poison = sources == "worker-5"  # a bot: random labels
        y = y.copy()
        y[poison] = rng.integers(0, 10, poison.sum())
        kw["source_ids"] = list(sources)
        kw["probs"] = _probs(y, wrong=poison & (y != load_digits().target))
    elif name in ("trusted_disagreement", "trusted_distance"):
        # The first poison: random flips; the second: a backdoor direction, relabelled 0. The trusted set: 150 clean
        # digits, seen with other noise (not rows of the data).
        if name == "trusted_disagreement":
            poison[rng.choice(n, 90, replace=False)] = True
            y = y.copy()
            y[poison] = (y[poison] + rng.integers(1, 10, poison.sum())) % 10
        else:
            poison[rng.choice(np.flatnonzero(y != 0), 30, replace=False)] = True
            y = y.copy()
            y[poison] = 0
            x = x.copy()
            x[poison] += 3.0 * (np.arange(x.shape[1]) % 7 == 0)
        kw["trusted"] = _trusted(rng)
    else:
        raise KeyError(name)
    kw["dataset"] = Dataset.from_numpy(images, y)
    return {"features": x, "labels": y, **kw}, poison


def _trusted(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """150 clean digits with their true labels, the activations drawn with noise of their own."""
    d = load_digits()
    rows = rng.choice(len(d.target), 150, replace=False)
    x = d.data[rows].astype(np.float32) / 16 + rng.normal(0, 0.05, (150, d.data.shape[1])).astype(np.float32)
    return x, d.target[rows].astype(np.int64)


@pytest.mark.parametrize("name", COMPUTED)
def test_planted_case_scores_higher(name):
    inputs, poison = _planted(name)
    table, info = compute_signals(**inputs, signals=[name, *_companion(name)])
    assert name in info["signals"], info["skipped"]
    s = table[registry.score_column(name)].to_numpy()
    assert s.dtype == np.float64 and s.shape == (len(poison),)
    assert not np.isneginf(s).any()
    s = np.nan_to_num(s, nan=-np.inf, posinf=np.finfo(np.float64).max)
    assert roc_auc_score(poison, s) > 0.8
    assert s[poison].mean() > s[~poison].mean()


def _companion(name: str) -> list[str]:
    """A context-only signal is not summed into the suspicion, so it runs beside one that is."""
    return ["spectral"] if registry.get_signal(name).context_only else []


@pytest.fixture(scope="module")
def mixed():
    """One dataset that every signal can run on: images, probabilities, several sources, a duplicate pair."""
    images, x, y = _digits()
    images = images.copy()
    images[1] = images[0]
    sources = [f"worker-{i % 5}" for i in range(len(y))]
    return {"features": x, "labels": y, "probs": _probs(y), "dataset": Dataset.from_numpy(images, y),
            "source_ids": sources, "trusted": _trusted(np.random.default_rng(3))}


@pytest.fixture(scope="module")
def both_orders(mixed):
    forward, _ = compute_signals(**mixed, signals=COMPUTED)
    backward, _ = compute_signals(**mixed, signals=COMPUTED[::-1])
    return forward, backward


@pytest.mark.parametrize("name", COMPUTED)
def test_scores_do_not_depend_on_the_other_signals_or_their_order(name, mixed, both_orders):
    column = registry.score_column(name)
    alone, _ = compute_signals(**mixed, signals=[name, *_companion(name)])
    forward, backward = both_orders
    np.testing.assert_array_equal(alone[column], forward[column])
    np.testing.assert_array_equal(alone[column], backward[column])


@pytest.mark.parametrize("name", COMPUTED)
def test_same_random_state_same_scores(name, mixed):
    column = registry.score_column(name)
    a, _ = compute_signals(**mixed, signals=[name, *_companion(name)], random_state=7)
    b, _ = compute_signals(**mixed, signals=[name, *_companion(name)], random_state=7)
    np.testing.assert_array_equal(a[column], b[column])


@pytest.mark.parametrize("name", COMPUTED)
def test_length_mismatch_and_nan_features_are_refused(name, mixed):
    inputs = {**mixed, "labels": mixed["labels"][:-1]}
    with pytest.raises(InputError, match=r"labels has 1796 entries but features has 1797 rows"):
        compute_signals(**inputs, signals=[name])
    x = mixed["features"].copy()
    x[3, 2] = np.nan
    with pytest.raises(InputError, match=r"features has 1 NaN or infinite value\(s\) in 1 row\(s\), first at row 3"):
        compute_signals(**{**mixed, "features": x}, signals=[name])


def test_every_builtin_signal_has_a_planted_case():
    for name in COMPUTED:
        _planted(name)


def test_a_signal_registered_in_a_notebook_runs_shows_in_the_reasons_and_takes_parameters(mixed):
    @registry.register("brightness", reason="unusually bright", params={"power": 1.0})
    def brightness(ctx, *, power):
        """Mean pixel value, raised to a power."""
        return ctx.dataset.images.reshape(ctx.n, -1).mean(axis=1) ** power

    try:
        images = mixed["dataset"].images.copy()
        images[:5] = 255
        ds = Dataset.from_numpy(images, mixed["labels"])
        table, info = compute_signals(**{**mixed, "dataset": ds}, signals={"brightness": {"power": 2.0},
                                                                          "spectral": None})
        assert info["signal_params"] == {"brightness": {"power": 2.0}, "spectral": {}}
        assert np.allclose(table["brightness_score"], images.reshape(len(images), -1).mean(axis=1) ** 2)
        assert all("unusually bright (1 in" in r for r in table["reasons"][:5])
        assert registry.get_signal("brightness").summary == "Mean pixel value, raised to a power."
        with pytest.raises(InputError, match=r"signal 'brightness' has no parameter\(s\) \['gamma'\]"):
            compute_signals(**mixed, signals={"brightness": {"gamma": 1}})
        with pytest.raises(InputError, match="a signal named 'brightness' is registered already"):
            registry.register("brightness", reason="again")(brightness)
    finally:
        registry.unregister("brightness")
    assert "brightness" not in [s.name for s in registry.registered_signals()]


def test_a_signal_that_returns_the_wrong_shape_is_named(mixed):
    registry.register("broken", reason="broken")(lambda ctx: np.zeros(3))
    try:
        with pytest.raises(InputError, match=r"signal 'broken' returned float64 values of shape \(3,\); "
                                             r"a signal returns one number per sample, shape \(1797,\)"):
            compute_signals(**mixed, signals=["broken"])
    finally:
        registry.unregister("broken")


def test_selection_errors_name_the_problem():
    x, y = np.zeros((20, 2), np.float32), np.arange(20) % 2
    with pytest.raises(InputError, match=r"unknown signal\(s\) \['spectrall'\]; choose from \['high_loss'"):
        compute_signals(x, y, signals=["spectrall"])
    with pytest.raises(InputError, match="signal 'trigger' is not computed from activations"):
        compute_signals(x, y, signals=["trigger"])
    with pytest.raises(InputError, match="signals names a signal twice"):
        compute_signals(x, y, signals=["spectral", "spectral"])
    with pytest.raises(InputError, match=r"signals must be a sequence of names or a mapping"):
        compute_signals(x, y, signals="spectral")
    with pytest.raises(InputError, match=r"random_state must be an integer in \[0, 4294967295\]; got -1"):
        compute_signals(x, y, signals=["spectral"], random_state=-1)


def test_old_names_still_work_with_a_warning():
    from forensics import analysis
    from forensics.signals import combine

    with pytest.warns(DeprecationWarning, match="DEFAULT_SIGNALS is deprecated"):
        assert analysis.DEFAULT_SIGNALS == registry.default_signals()
    with pytest.warns(DeprecationWarning, match="SIGNAL_TEXT is deprecated"):
        assert combine.SIGNAL_TEXT["spectral"] == "spectral signature"
    with pytest.warns(DeprecationWarning, match="EXACT_P_SIGNALS is deprecated"):
        assert set(combine.EXACT_P_SIGNALS) == {"activation_cluster", "shared_mark", "source", "trigger"}
    assert analysis.find_triggers is forensics.triggers.discover.find_triggers
