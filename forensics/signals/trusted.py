"""Consistency with a trusted set: a few samples the user vouches for, seen through the same model.

Two signals read them (when ``investigate(..., trusted=...)`` is given a trusted dataset):

- :func:`trusted_disagreement` (``trusted_disagreement``, a label signal): the share of a sample's ``k`` nearest
  trusted samples, in activation space, whose label is not the sample's. A flipped label sits among trusted
  samples of its true class. Unlike the neighbours among the training data, the trusted ones cannot have been
  relabelled by the attacker, so a relabelled minority that is large enough to fill its own neighbourhood is
  still outvoted.
- :func:`trusted_distance` (``trusted_distance``, a backdoor signal): how far a sample lies from the nearest
  trusted sample of its own label, as a robust z-score within the label (median and MAD of the label's samples).
  A trigger moves a sample's activations away from every clean example of its label, the trusted ones included.

Activations are standardized with the training set's mean and spread per dimension, and compared by cosine.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

from .._validate import check_features, check_labels
from ..errors import InputError


def _standardized(features: np.ndarray, trusted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = check_features(features).astype(np.float32)
    t = check_features(trusted).astype(np.float32)
    if t.shape[1] != x.shape[1]:
        raise InputError(f"the trusted activations have {t.shape[1]} dimensions but the data's have {x.shape[1]}: "
                         "extract both from the same layer")
    mean, spread = x.mean(axis=0), x.std(axis=0)
    spread[spread == 0] = 1.0
    return (x - mean) / spread, (t - mean) / spread


def _check(labels: np.ndarray, trusted_labels: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    y = check_labels(labels, n)
    ty = check_labels(trusted_labels, m, name="trusted_labels")
    if m < 2:
        raise InputError(f"the trusted set has {m} sample(s); at least 2 are needed")
    return y, ty


def trusted_disagreement(features: np.ndarray, labels: np.ndarray, trusted_features: np.ndarray,
                         trusted_labels: np.ndarray, *, k: int = 10) -> np.ndarray:
    """Share of each sample's ``k`` nearest trusted samples (cosine, standardized activations) with another label:
    **higher = more suspicious** (0..1).

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    x, t = _standardized(features, trusted_features)
    y, ty = _check(labels, trusted_labels, len(x), len(t))
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer; got {k!r}")
    k = min(int(k), len(t))
    _, near = NearestNeighbors(n_neighbors=k, metric="cosine").fit(t).kneighbors(x)
    return (ty[near] != y[:, None]).mean(axis=1).astype(np.float64)


def trusted_distance(features: np.ndarray, labels: np.ndarray, trusted_features: np.ndarray,
                     trusted_labels: np.ndarray) -> np.ndarray:
    """Cosine distance to the nearest trusted sample of the same label, as a robust z-score within the label:
    **higher = more suspicious**. NaN for a label the trusted set does not hold.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    x, t = _standardized(features, trusted_features)
    y, ty = _check(labels, trusted_labels, len(x), len(t))
    out = np.full(len(x), np.nan)
    for c in np.unique(y):
        rows, refs = np.flatnonzero(y == c), np.flatnonzero(ty == c)
        if not len(refs):
            continue
        dist, _ = NearestNeighbors(n_neighbors=1, metric="cosine").fit(t[refs]).kneighbors(x[rows])
        d = dist[:, 0]
        med = np.median(d)
        spread = 1.4826 * np.median(np.abs(d - med))
        out[rows] = (d - med) / (spread if spread > 0 else (np.std(d) or 1.0))
    return out


__all__ = ["trusted_disagreement", "trusted_distance"]
