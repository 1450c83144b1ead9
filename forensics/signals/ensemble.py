"""Out-of-sample ensemble disagreement: how much the models that never saw a sample doubt its label.

The models may be trained elsewhere (k-fold, bootstrap or random subsets of the training set) and scored here
with :func:`ensemble_disagreement`; :func:`random_half_probs` trains them on activations itself (the registered
``ensemble`` signal). For each sample, only the models for which it was *held out* count: a model that trained on
a poisoned sample has learnt its label and vouches for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._validate import check_features, check_int, check_labels, check_random_state
from ..errors import InputError
from .label_quality import linear_probe, stratified_subsample
from .loss import check_labels_against


def _check_inputs(probs: Any, labels: Any, in_train: Any, min_held_out: Any
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    p = np.asarray(probs)
    if p.ndim != 3:
        raise InputError(f"probs must be 3-D (n_models, n_samples, n_classes); got shape {p.shape}")
    if p.dtype.kind not in "fiu":
        raise InputError(f"probs must be numeric; got dtype {p.dtype}")
    k, n, c = p.shape
    if k == 0 or c == 0:
        raise InputError(f"probs must have at least one model and one class; got shape {p.shape}")
    y = check_labels(labels, n, n_classes=c)
    mask = np.asarray(in_train)
    if mask.shape != (k, n):
        raise InputError(f"in_train must have shape (n_models, n_samples) = {(k, n)}; got {mask.shape}")
    if mask.dtype != bool:
        raise InputError(f"in_train must be a boolean array (True where the model trained on the sample); "
                         f"got dtype {mask.dtype}")
    if isinstance(min_held_out, bool) or not isinstance(min_held_out, (int, np.integer)) or min_held_out < 1:
        raise InputError(f"min_held_out must be an integer >= 1; got {min_held_out!r}")
    if not np.isfinite(p).all():
        raise InputError("probs has NaN or infinite values")
    if p.min(initial=0.0) < 0 or p.max(initial=0.0) > 1 or not np.allclose(p.sum(axis=2), 1.0, atol=1e-3):
        raise InputError("probs must hold probabilities in [0, 1] whose rows sum to 1 (apply a softmax first)")
    # Only the probability of each sample's own label is used: shape (k, n).
    p_label = p[:, np.arange(n), y].astype(np.float64)
    return p_label, y, mask, int(min_held_out)


def ensemble_table(
    probs: np.ndarray, labels: np.ndarray, in_train: np.ndarray, *, min_held_out: int = 1
) -> pd.DataFrame:
    """Per-sample held-out statistics behind :func:`ensemble_disagreement`.

    Parameters
    ----------
    probs : ndarray of float, shape (k, n, C)
        Class probabilities of each of the k models for every sample.
    labels : ndarray of int, shape (n,)
    in_train : ndarray of bool, shape (k, n)
        True where model m was trained on sample i.
    min_held_out : int, default 1
        Fewest held-out models a sample needs to be scored.

    Returns
    -------
    DataFrame, n rows in sample order
        ``n_held_out``; ``mean_p_label`` (mean probability the held-out models give the label);
        ``std_p_label`` (their population standard deviation, 0 for one model); ``score``
        (``1 - mean_p_label + std_p_label``, NaN with fewer than ``min_held_out`` held-out models).
    """
    p_label, _, mask, min_held = _check_inputs(probs, labels, in_train, min_held_out)
    held = ~mask
    count = held.sum(axis=0)
    ok = count >= min_held
    safe = np.maximum(count, 1)
    mean = np.where(held, p_label, 0.0).sum(axis=0) / safe
    var = np.where(held, (p_label - mean[None, :]) ** 2, 0.0).sum(axis=0) / safe
    mean = np.where(ok, mean, np.nan)
    std = np.where(ok, np.sqrt(var), np.nan)
    return pd.DataFrame({
        "n_held_out": count.astype(np.int64),
        "mean_p_label": mean,
        "std_p_label": std,
        "score": 1.0 - mean + std,
    })


def ensemble_disagreement(
    probs: np.ndarray, labels: np.ndarray, in_train: np.ndarray, *, min_held_out: int = 1
) -> np.ndarray:
    """Suspicion from models that never trained on the sample; higher = more suspicious.

    ``score = (1 - mean p(label)) + std p(label)`` over the held-out models: the first term is high when the
    models that did not see the sample give its label little probability (a flipped label, a sample whose
    label only a trigger explains), the second when they disagree with each other (an ambiguous or
    borderline sample). Range 0 .. 1.5.

    Parameters
    ----------
    probs : ndarray of float, shape (k, n, C)
        Class probabilities of each of the k models for every sample (rows sum to 1).
    labels : ndarray of int, shape (n,)
    in_train : ndarray of bool, shape (k, n)
        True where model m was trained on sample i.
    min_held_out : int, default 1
        Fewest held-out models a sample needs. A sample held out by fewer models (for example one that every
        model trained on) gets NaN: there is no out-of-sample evidence about it, and NaN ranks as least
        suspicious in ``flag``, ``top_k`` and ``forensics.evaluate``.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    return ensemble_table(probs, labels, in_train, min_held_out=min_held_out)["score"].to_numpy()


def random_half_probs(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_splits: int = 4,
    max_train: int = 20_000,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split the samples ``n_splits`` times into two random stratified halves, train a linear probe on each half,
    and predict every sample with all ``2 * n_splits`` probes.

    Every sample is held out by exactly ``n_splits`` probes (the ones trained on the other halves). The probe is
    the one of :func:`forensics.signals.label_quality.out_of_fold_probs` (standardization, then a multinomial
    logistic regression).

    Parameters
    ----------
    features : ndarray of shape (n, d)
    labels : ndarray of int, shape (n,)
    n_splits : int, default 4
        At least 1.
    max_train : int, default 20000
        Most training rows per probe (a larger half is subsampled, stratified).
    random_state : int
        Seed of the splits.

    Returns
    -------
    probs : ndarray of float64, shape (2 * n_splits, n, labels.max() + 1)
        0 for a class a probe never saw.
    in_train : ndarray of bool, shape (2 * n_splits, n)
    """
    x = check_features(features)
    y = check_labels_against(labels, len(x), "features")
    splits = check_int(n_splits, "n_splits", low=1)
    cap = check_int(max_train, "max_train", low=2)
    if np.sum(np.bincount(y) >= 2) < 2:
        raise InputError("the ensemble's probes need at least two classes with two or more samples each; "
                         f"got class sizes {np.bincount(y)[np.bincount(y) > 0].tolist()}")
    rng = np.random.default_rng(check_random_state(random_state))
    n_classes = int(y.max()) + 1
    probs = np.zeros((2 * splits, len(y), n_classes), dtype=np.float64)
    in_train = np.zeros((2 * splits, len(y)), dtype=bool)
    rows = np.arange(len(y))
    for s in range(splits):
        half = stratified_subsample(rows, y, len(y) // 2, rng)
        for m, part in ((2 * s, half), (2 * s + 1, np.setdiff1d(rows, half))):
            train = stratified_subsample(part, y[part], cap, rng) if len(part) > cap else part
            model = linear_probe().fit(x[train], y[train])
            probs[m][:, model.classes_] = model.predict_proba(x)
            in_train[m, train] = True
    return probs, in_train


__all__ = ["ensemble_disagreement", "ensemble_table", "random_half_probs"]
