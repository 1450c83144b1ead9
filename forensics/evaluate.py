"""How well suspicion scores find the poison, against ground truth (planted attacks, audited samples).

Pure functions over arrays. Conventions shared by every metric:

- a higher score means more suspicious; a NaN score (a signal that could not score the sample) counts as
  less suspicious than any number;
- ties are resolved without looking at positions: a review budget that cuts through a block of equal scores
  takes the expected share of poison in that block (the average over every order of the tied samples), so a
  constant signal gets the base rate whatever order the samples are in;
- a metric that is undefined for the input (an AUROC without clean samples, a recall without poison)
  returns NaN and emits :class:`UndefinedMetricWarning` saying why; inputs that cannot be used at all
  (lengths that differ, no samples) raise :class:`~forensics.errors.InputError`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from ._validate import check_scores
from .errors import InputError


class UndefinedMetricWarning(UserWarning):
    """A metric could not be computed for this input and was returned as NaN."""


def _check_truth_mask(is_poison: Any, n: int, *, name: str = "is_poison", other: str = "scores") -> np.ndarray:
    y = np.asarray(is_poison)
    if y.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {y.shape}")
    if len(y) != n:
        raise InputError(f"{name} has {len(y)} entries but {other} has {n}")
    if y.dtype == bool:
        return y
    if y.dtype.kind in "iuf" and np.isin(y, (0, 1)).all():
        return y.astype(bool)
    raise InputError(f"{name} must be boolean (or 0/1); got dtype {y.dtype}")


def _prepare(scores: Any, is_poison: Any) -> tuple[np.ndarray, np.ndarray]:
    s = check_scores(scores)
    if len(s) == 0:
        raise InputError("scores is empty; there is nothing to evaluate")
    y = _check_truth_mask(is_poison, len(s))
    # NaN = least suspicious: below every real score (only the order matters to the metrics).
    nan = np.isnan(s)
    if nan.any():
        low = s[~nan].min() if (~nan).any() else 0.0
        floor = low - 1.0 - abs(low)
        s = np.where(nan, floor, s)
    return s, y


def _warn(reason: str) -> float:
    warnings.warn(reason, UndefinedMetricWarning, stacklevel=3)
    return math.nan


def _auroc(s: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    if y.all() or not y.any():
        return math.nan, "AUROC needs both poisoned and clean samples; " + (
            "all samples are poisoned" if y.all() else "no sample is poisoned")
    return float(roc_auc_score(y, s)), ""


def _ap(s: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    if not y.any():
        return math.nan, "average precision needs at least one poisoned sample"
    return float(average_precision_score(y, s)), ""


def _expected_hits(s: np.ndarray, y: np.ndarray, budget: int) -> float:
    """Expected number of poisoned samples among the ``budget`` highest scores, ties taken at random."""
    if budget == 0:
        return 0.0
    cut = np.partition(s, len(s) - budget)[len(s) - budget]
    above, tied = s > cut, s == cut
    remaining = budget - int(above.sum())
    return float(y[above].sum()) + remaining * float(y[tied].sum()) / float(tied.sum())


def _check_budget(budget: Any, n: int, name: str = "budget") -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise InputError(f"{name} must be an integer number of reviewed samples; got {budget!r}")
    if not 1 <= budget <= n:
        raise InputError(f"{name} must be between 1 and the number of samples ({n}); got {budget}")
    return int(budget)


def auroc(scores: np.ndarray, is_poison: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random poisoned sample outscores a random clean one.

    Parameters
    ----------
    scores : ndarray of float, shape (n,)
        Higher = more suspicious; NaN = least suspicious.
    is_poison : ndarray of bool, shape (n,)

    Returns
    -------
    float
        1.0 for a perfect ranking, 0.5 for chance, 0.0 for a reversed one; NaN (with a warning) when all
        samples are poisoned or none is.
    """
    s, y = _prepare(scores, is_poison)
    value, reason = _auroc(s, y)
    return _warn(reason) if reason else value


def average_precision(scores: np.ndarray, is_poison: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, scikit-learn's step-wise definition).

    Parameters
    ----------
    scores : ndarray of float, shape (n,)
        Higher = more suspicious; NaN = least suspicious.
    is_poison : ndarray of bool, shape (n,)

    Returns
    -------
    float
        In [0, 1]; the poison share for a random ranking; NaN (with a warning) when no sample is poisoned.
    """
    s, y = _prepare(scores, is_poison)
    value, reason = _ap(s, y)
    return _warn(reason) if reason else value


def precision_recall_at_budget(scores: np.ndarray, is_poison: np.ndarray, budget: int) -> tuple[float, float]:
    """Precision and recall of reviewing the ``budget`` most suspicious samples.

    Parameters
    ----------
    scores : ndarray of float, shape (n,)
        Higher = more suspicious; NaN = least suspicious.
    is_poison : ndarray of bool, shape (n,)
    budget : int
        Number of samples reviewed, 1 .. n. Equal scores at the cut count with the expected share of
        poison among them.

    Returns
    -------
    (precision, recall) : tuple of float
        Recall is NaN (with a warning) when no sample is poisoned.
    """
    s, y = _prepare(scores, is_poison)
    b = _check_budget(budget, len(s))
    hits = _expected_hits(s, y, b)
    n_pos = int(y.sum())
    recall = hits / n_pos if n_pos else _warn("recall needs at least one poisoned sample")
    return hits / b, recall


def recall_at_k_times_poison(scores: np.ndarray, is_poison: np.ndarray, k: float = 2) -> float:
    """Recall when reviewing k times as many samples as there are poisoned ones (capped at n).

    Parameters
    ----------
    scores : ndarray of float, shape (n,)
    is_poison : ndarray of bool, shape (n,)
    k : float, default 2
        Budget multiple, > 0; the budget is ``min(n, ceil(k * n_poison))``.

    Returns
    -------
    float
    """
    s, y = _prepare(scores, is_poison)
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)) or not k > 0 \
            or not np.isfinite(k):
        raise InputError(f"k must be a positive number; got {k!r}")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise InputError("is_poison has no poisoned sample; recall at k x poison needs at least one")
    b = min(len(s), math.ceil(k * n_pos))
    return _expected_hits(s, y, b) / n_pos


def elimination_and_sacrifice(flagged: np.ndarray, is_poison: np.ndarray) -> tuple[float, float]:
    """Share of the poison that a flag removes, and share of the clean data it sacrifices.

    Parameters
    ----------
    flagged : ndarray of bool, shape (n,)
    is_poison : ndarray of bool, shape (n,)

    Returns
    -------
    (elimination, sacrifice) : tuple of float
        elimination = flagged poison / poison; sacrifice = flagged clean / clean. Each is NaN (with a
        warning) when its denominator is 0.
    """
    f = np.asarray(flagged)
    if f.ndim != 1:
        raise InputError(f"flagged must be 1-D; got shape {f.shape}")
    if f.dtype != bool:
        raise InputError(f"flagged must be a boolean mask; got dtype {f.dtype}")
    if len(f) == 0:
        raise InputError("flagged is empty; there is nothing to evaluate")
    y = _check_truth_mask(is_poison, len(f), other="flagged")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    elimination = f[y].sum() / n_pos if n_pos else _warn("elimination needs at least one poisoned sample")
    sacrifice = f[~y].sum() / n_neg if n_neg else _warn("sacrifice needs at least one clean sample")
    return float(elimination), float(sacrifice)


def _score_columns(scores: Mapping[str, Any] | pd.DataFrame, truth: pd.DataFrame) -> dict[str, np.ndarray]:
    """Score arrays in the order of ``truth``'s rows: aligned on the index when both carry sample ids."""
    n = len(truth)
    if isinstance(scores, pd.DataFrame):
        frame = scores
        default = lambda idx: isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1  # noqa: E731
        if not default(frame.index) and not default(truth.index):
            missing = truth.index.difference(frame.index)
            extra = frame.index.difference(truth.index)
            if len(missing) or len(extra) or frame.index.has_duplicates:
                raise InputError(
                    f"the scores' index and truth's index must hold the same sample ids; {len(missing)} id(s) "
                    f"of truth are missing from scores (e.g. {list(missing[:3])!r}) and {len(extra)} are "
                    f"extra (e.g. {list(extra[:3])!r})"
                )
            frame = frame.loc[truth.index]
        columns = {str(c): frame[c].to_numpy() for c in frame.columns}
    elif isinstance(scores, Mapping):
        columns = {str(k): np.asarray(v) for k, v in scores.items()}
    else:
        raise InputError(f"scores must be a dict of name -> array or a DataFrame; got {type(scores).__name__}")
    if not columns:
        raise InputError("scores holds no signal")
    out = {}
    for name, values in columns.items():
        s = check_scores(values, name=f"scores[{name!r}]")
        if len(s) != n:
            raise InputError(f"scores[{name!r}] has {len(s)} entries but truth has {n} rows")
        out[name] = s
    return out


def evaluate_scores(
    scores: Mapping[str, np.ndarray] | pd.DataFrame, truth: pd.DataFrame, *, budget: int | None = None
) -> pd.DataFrame:
    """Every metric for every signal, over all poison and per kind of poison.

    Parameters
    ----------
    scores : dict of str -> ndarray of shape (n,), or DataFrame with one column per signal
        Higher = more suspicious; NaN = least suspicious. A DataFrame is aligned with ``truth`` on the
        index when both are indexed by sample id (neither has the default 0 .. n-1 index); otherwise rows
        are matched by position.
    truth : DataFrame, n rows
        ``is_poison`` (bool); optional ``poison_kind`` (str, read on poisoned rows only; a missing kind
        is reported as ``"unspecified"``).
    budget : int, optional
        Samples reviewed for ``precision_at_budget`` / ``recall_at_budget``. Default: the number of
        poisoned samples of the row (so precision equals recall, the R-precision). A budget larger than a
        row's samples is capped (see the ``budget`` column).

    Returns
    -------
    DataFrame
        One row per (signal, poison_kind), ``"all"`` first then kinds sorted; columns ``signal``,
        ``poison_kind``, ``n_poison``, ``n_clean``, ``budget``, ``auroc``, ``average_precision``,
        ``precision_at_budget``, ``recall_at_budget``, ``recall_at_2x``, ``note`` (why a metric is NaN).
        A per-kind row compares that kind's poison with the clean samples; other kinds are left out.
    """
    if not isinstance(truth, pd.DataFrame):
        raise InputError(f"truth must be a DataFrame with an is_poison column; got {type(truth).__name__}")
    if "is_poison" not in truth.columns:
        raise InputError(f"truth has no is_poison column; its columns are {list(truth.columns)!r}")
    if len(truth) == 0:
        raise InputError("truth is empty; there is nothing to evaluate")
    y = _check_truth_mask(truth["is_poison"].to_numpy(), len(truth), name="truth['is_poison']", other="truth")
    if not y.any():
        raise InputError("truth has no poisoned sample (is_poison is all False); there is nothing to find")
    if budget is not None:
        _check_budget(budget, len(truth))
    columns = _score_columns(scores, truth)

    if "poison_kind" in truth.columns:
        kinds = truth["poison_kind"].to_numpy(dtype=object)[y]
        kinds = np.array(["unspecified" if (k is None or (isinstance(k, float) and np.isnan(k)) or str(k) == "")
                          else str(k) for k in kinds], dtype=object)
    else:
        kinds = np.full(int(y.sum()), "unspecified", dtype=object)
    kind_of = np.full(len(truth), "", dtype=object)
    kind_of[y] = kinds
    pools = [("all", np.ones(len(truth), dtype=bool))]
    if "poison_kind" in truth.columns:
        pools += [(k, ~y | (kind_of == k)) for k in sorted(set(kinds))]

    rows = []
    for name, raw in columns.items():
        for kind, pool in pools:
            s, t = _prepare(raw[pool], y[pool])
            n_pos, n_neg = int(t.sum()), int((~t).sum())
            b = n_pos if budget is None else min(budget, len(s))
            value_auroc, note = _auroc(s, t)
            value_ap, _ = _ap(s, t)
            hits = _expected_hits(s, t, b)
            hits2 = _expected_hits(s, t, min(len(s), 2 * n_pos))
            rows.append({
                "signal": name, "poison_kind": kind, "n_poison": n_pos, "n_clean": n_neg, "budget": b,
                "auroc": value_auroc, "average_precision": value_ap,
                "precision_at_budget": hits / b, "recall_at_budget": hits / n_pos, "recall_at_2x": hits2 / n_pos,
                "note": note,
            })
    return pd.DataFrame(rows)


__all__ = [
    "UndefinedMetricWarning",
    "auroc",
    "average_precision",
    "elimination_and_sacrifice",
    "evaluate_scores",
    "precision_recall_at_budget",
    "recall_at_k_times_poison",
]
