"""Out-of-sample ensemble disagreement: how much the models that never saw a sample doubt its label.

The models are trained elsewhere (k-fold, bootstrap or random subsets of the training set); this module only
scores. For each sample, only the models for which it was *held out* count: a model that trained on a
poisoned sample has learnt its label and vouches for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ._checks import check_labels


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


__all__ = ["ensemble_disagreement", "ensemble_table"]
