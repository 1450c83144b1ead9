"""Per-sample suspicion signals: pure functions over arrays, one float per sample, higher = more suspicious.

Scoring and flagging are separate steps: a signal returns scores; :func:`flag` and :func:`top_k` turn scores into
a boolean selection. Every signal is declared once in the registry (:mod:`forensics.signals.registry`; the built-in
ones in :mod:`forensics.signals.builtin`): :func:`register` adds a user's own, which then runs in
:func:`forensics.investigate` and shows in the suspicion, the reasons, the panels and the report.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_scores
from ..errors import InputError


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


# The built-in signals are registered whenever any part of the signals package is used.
from . import builtin  # noqa: E402,F401
from .registry import (  # noqa: E402
    SignalContext,
    SignalSkipped,
    default_signals,
    get_signal,
    register,
    registered_signals,
    unregister,
)

__all__ = ["SignalContext", "SignalSkipped", "default_signals", "flag", "get_signal", "register",
           "registered_signals", "top_k", "unregister"]
