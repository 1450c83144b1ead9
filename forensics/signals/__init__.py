"""Per-sample suspicion signals: pure functions over arrays, one float per sample, higher = more suspicious.

Scoring and flagging are separate steps: a signal returns scores; :func:`flag` and :func:`top_k` turn scores into
a boolean selection.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ._checks import check_scores


def flag(scores: np.ndarray, *, threshold: float) -> np.ndarray:
    """Boolean mask of the samples whose score is at least ``threshold`` (NaN scores are never flagged)."""
    s = check_scores(scores)
    if not np.isfinite(threshold):
        raise InputError(f"threshold must be a finite number; got {threshold!r}")
    return np.nan_to_num(s, nan=-np.inf) >= threshold


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, highest first (ties broken by position; NaN last)."""
    s = check_scores(scores)
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise InputError(f"k must be a non-negative integer; got {k!r}")
    if k > len(s):
        raise InputError(f"k = {k} is larger than the number of scores ({len(s)})")
    order = np.lexsort((np.arange(len(s)), -np.nan_to_num(s, nan=-np.inf)))
    return order[:k]


__all__ = ["flag", "top_k"]
