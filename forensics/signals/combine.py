"""One suspicion score per sample, comparable across classes and signals, with readable reasons.

Each signal's scores are first made comparable across classes (a robust z-score within each class: median and
MAD), then turned into a tail probability under the *bulk* of the data: below an upper quantile the empirical
survival function, above it an exponential tail fitted to the bulk's own spread. Most of a training set is clean,
so this tail is an estimate of how often a clean sample would score that high by chance.

The suspicion of a sample is ``-log10`` of its smallest tail probability across signals, multiplied by the number
of signals (a Bonferroni bound: with k signals, the chance that a clean sample reaches ``suspicion >= t`` on any of
them is at most about ``10**-t``). A threshold therefore reads as an estimated share of clean samples flagged:
``suspicion >= 2`` flags about 1% of clean samples or fewer, ``>= 3`` about 0.1%.

Signals that carry no evidence for a sample (NaN, or scores at or below the bulk) leave it alone. The reasons name
the signals whose own tail probability is below ``reason_p``, strongest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import InputError
from ._checks import check_labels, check_scores

#: Quantiles of the pooled, class-standardized scores between which the exponential tail is fitted.
TAIL_FIT = (0.5, 0.9)
#: Default threshold: an estimated 1% of clean samples or fewer reach it.
DEFAULT_THRESHOLD = 2.0

#: How each signal is named in the reasons.
SIGNAL_TEXT = {
    "high_loss": "high loss",
    "low_loss": "unusually confident for its class",
    "label_quality": "label disagrees with out-of-fold prediction",
    "activation_cluster": "in a small, separate activation cluster",
    "spectral": "spectral signature",
    "robust_spectral": "robust spectral signature",
    "knn_disagreement": "neighbours carry other labels",
    "knn_outlier": "far from its class",
    "duplicates": "near-duplicate group (conflicting labels or several sources)",
    "source": "its source is suspicious",
    "ensemble": "reference models disagree with its label",
    "trigger": "carries a trigger candidate",
}


@dataclass(frozen=True)
class Combined:
    """The combined score: ``suspicion`` (n,), per-signal tail probabilities and reasons."""

    suspicion: np.ndarray
    tail_p: pd.DataFrame = field(repr=False)
    reasons: np.ndarray = field(repr=False)
    top_signal: np.ndarray = field(repr=False)

    def estimated_clean_flag_rate(self, threshold: float) -> float:
        """Estimated share of clean samples whose suspicion reaches ``threshold`` (``10**-threshold``)."""
        return float(min(1.0, 10.0 ** (-threshold)))


def _within_class_z(s: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Robust z-score within each class; NaN stays NaN. Zero spread falls back to the class's std, then to 1."""
    z = np.full_like(s, np.nan)
    for c in np.unique(labels):
        rows = np.flatnonzero((labels == c) & np.isfinite(s))
        if len(rows) == 0:
            continue
        v = s[rows]
        med = np.median(v)
        spread = 1.4826 * np.median(np.abs(v - med))
        if not spread > 0:
            spread = float(np.std(v))
        if not spread > 0:
            spread = 1.0
        z[rows] = (v - med) / spread
    return z


def tail_probability(z: np.ndarray, *, fit: tuple[float, float] = TAIL_FIT) -> np.ndarray:
    """Upper-tail probability of each value under the bulk of ``z`` (NaN -> 1).

    Empirical survival up to the ``fit[1]`` quantile; above it an exponential tail whose scale is the bulk's
    spread between the two ``fit`` quantiles, so the poison at the top does not widen its own null.
    """
    p = np.ones_like(z)
    ok = np.isfinite(z)
    v = z[ok]
    if len(v) == 0:
        return p
    lo, hi = np.quantile(v, fit)
    # Empirical survival P(Z >= x), computed by ranking.
    order = np.sort(v)
    surv = 1.0 - np.searchsorted(order, v, side="left") / len(v)
    scale = (hi - lo) / np.log((1 - fit[0]) / (1 - fit[1]))
    if not scale > 0:  # a signal that is constant over the bulk: its scale comes from what lies above it
        above = v[v > hi]
        scale = float(np.mean(above - hi)) if len(above) else 1.0
    s_hi = 1.0 - fit[1]
    tail = np.where(v > hi, s_hi * np.exp(-(v - hi) / scale), surv)
    p[ok] = np.clip(tail, 1e-300, 1.0)
    return p


def combine(
    scores: Mapping[str, np.ndarray] | pd.DataFrame,
    labels: np.ndarray,
    *,
    reason_p: float = 0.01,
) -> Combined:
    """Combine per-sample signal scores (higher = more suspicious) into one suspicion score.

    Parameters
    ----------
    scores : mapping of signal name to array (n,), or a DataFrame with one column per signal
        NaN where a signal could not score a sample.
    labels : array of int, shape (n,)
        Each sample's given label: scores are standardized within each class.
    reason_p : float
        A signal is named in a sample's reasons when its tail probability is below this.

    Returns
    -------
    Combined
        ``suspicion`` (n,) is ``-log10(min(1, k * min_s p_s))``: higher = more suspicious, and a threshold ``t``
        flags an estimated ``10**-t`` of clean samples or fewer.
    """
    items = list(scores.items()) if isinstance(scores, Mapping) else [(c, scores[c].to_numpy()) for c in scores]
    if not items:
        raise InputError("scores is empty; give at least one signal")
    n = len(items[0][1])
    y = check_labels(labels, n)
    tails = {}
    for name, values in items:
        s = check_scores(values, name=f"scores[{name!r}]")
        if len(s) != n:
            raise InputError(f"scores[{name!r}] has {len(s)} entries but labels has {n}")
        tails[name] = tail_probability(_within_class_z(s, y))
    tail_p = pd.DataFrame(tails)
    k = tail_p.shape[1]
    p = tail_p.to_numpy()
    min_p = p.min(axis=1)
    suspicion = -np.log10(np.clip(k * min_p, 1e-300, 1.0))
    top = np.asarray(tail_p.columns, dtype=object)[p.argmin(axis=1)]
    reasons = np.empty(n, dtype=object)
    names = list(tail_p.columns)
    order = np.argsort(p, axis=1)
    for i in range(n):
        parts = [
            f"{SIGNAL_TEXT.get(names[j], names[j])} (1 in {_odds(p[i, j])})"
            for j in order[i] if p[i, j] < reason_p
        ]
        reasons[i] = "; ".join(parts)
    top[min_p >= reason_p] = ""
    return Combined(suspicion=suspicion, tail_p=tail_p, reasons=reasons, top_signal=top)


def _odds(p: float) -> str:
    inv = 1.0 / max(p, 1e-300)
    if inv < 1e4:
        return f"{inv:,.0f}"
    return f"10^{np.log10(inv):.0f}"


__all__ = ["Combined", "DEFAULT_THRESHOLD", "SIGNAL_TEXT", "combine", "tail_probability"]
