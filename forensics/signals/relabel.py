"""Targeted relabelling: one class's samples given another class's label, far more often than the reverse.

A targeted flip ("relabel 20% of the shirts as T-shirts") hides among natural confusion: a shirt that a model
calls a T-shirt is common, and a model trained on the flipped labels learns to hedge, so no single sample's loss
stands out. What stands out is the *pair*. Natural confusion between two classes is mutual: about as many T-shirts
look like shirts as shirts look like T-shirts. An attack that relabels one way makes the count one-sided.

:func:`relabelled_pairs` counts, from out-of-sample predicted probabilities, the samples of each given label that
look like each other class (cleanlab's confident joint: the count of given label ``a`` whose predicted
probability of ``b`` reaches ``b``'s own threshold) and tests each ordered pair against its mirror: under mutual
confusion the count of (``a`` looks like ``b``) out of both directions is Binomial(1/2). The counts, not the
shares of each class, are even: a classifier's boundary moves toward the smaller class. (On Fashion-MNIST with
one class cut to a quarter of its size, the counts stayed even while a null scaled by class size found a pair at
p = 2e-11.) Pairs beyond a Bonferroni-corrected level are relabelled in excess.

:func:`targeted_flip_scores` then gives each sample of such a label the posterior probability that it came from
the other class: its label's samples are a mixture of its own class and a share ``pi`` (the excess over the
mirror, per member) of the other, and the predicted probabilities give the likelihood ratio of the two. Samples
of other labels score 0, and so does every sample when no pair is in excess (random flips are mutual and leave
this signal silent: the loss and label-quality signals find those).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .._validate import check_probs
from ..errors import InputError
from .loss import check_labels_against

#: Family-wise level of the pair tests: the chance that a training set without a targeted flip shows any pair.
ALPHA = 0.01
#: Probabilities are floored here before their ratios are taken, so a zero probability stays a finite ratio.
PROB_FLOOR = 1e-6
#: Columns of :func:`relabelled_pairs`.
PAIR_COLUMNS = ("label", "looks_like", "count", "mirror", "excess", "p_value")


def _checked(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.shape(pred_probs)[0] if np.ndim(pred_probs) else 0
    probs = check_probs(pred_probs, n, name="pred_probs").astype(np.float64)
    y = check_labels_against(labels, len(probs), "pred_probs", n_classes=probs.shape[1])
    return y, probs


def relabelled_pairs(labels: np.ndarray, pred_probs: np.ndarray, *, alpha: float = ALPHA) -> pd.DataFrame:
    """Ordered class pairs whose given label holds far more lookalikes of the other class than the reverse.

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
        Given class of each sample.
    pred_probs : ndarray, shape (n, n_classes)
        Out-of-sample predicted probabilities (out-of-fold, or from a model that never saw these samples): a
        model's probabilities on its own training data agree with the labels it memorized, flips included.
    alpha : float in (0, 1)
        Family-wise level over all ordered pairs of classes present in ``labels`` (Bonferroni).

    Returns
    -------
    DataFrame
        One row per pair in excess, most significant first, with :data:`PAIR_COLUMNS`: ``count`` samples of
        ``label`` look like ``looks_like``, ``mirror`` samples of ``looks_like`` look like ``label`` (what
        natural confusion explains), ``excess = count - mirror`` estimates how many were relabelled
        (conservatively: relabelled samples that look like their new label are not counted), and ``p_value``
        is the one-sided binomial test before the correction.
    """
    y, probs = _checked(labels, pred_probs)
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1); got {alpha!r}")
    # cleanlab imports in about 1.5 s: only when this signal runs.
    from cleanlab.count import compute_confident_joint

    k = probs.shape[1]
    joint = np.rint(compute_confident_joint(y, probs)).astype(np.int64)
    both = joint + joint.T
    present = np.bincount(y, minlength=k) > 0
    tested = present[:, None] & present[None, :] & ~np.eye(k, dtype=bool) & (both > 0)
    p_value = np.ones((k, k))
    p_value[tested] = stats.binom.sf(joint[tested] - 1, both[tested], 0.5)
    n_present = int(present.sum())
    level = alpha / max(n_present * (n_present - 1), 1)
    rows = []
    for a, b in zip(*np.nonzero(tested & (p_value < level))):
        rows.append((int(a), int(b), int(joint[a, b]), int(joint[b, a]), int(joint[a, b] - joint[b, a]),
                     float(p_value[a, b])))
    table = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    return table.sort_values(["p_value", "label", "looks_like"], ignore_index=True)


def targeted_flip_scores(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    pairs: pd.DataFrame | None = None,
    alpha: float = ALPHA,
) -> np.ndarray:
    """Posterior probability that each sample was relabelled from another class in a pair relabelled in excess.

    For a sample given label ``a``, with pairs ``(a, b)`` in excess: ``pi_b = excess / n_a`` is the share of
    ``a``'s samples that came from ``b``, and ``r_b = (p_b / p_a) * (n_a / n_b)`` the likelihood ratio of ``b``
    over ``a`` (the predicted probabilities divided by the class priors). The score is
    ``sum_b pi_b r_b / (1 - sum_b pi_b + sum_b pi_b r_b)``: **higher = more suspicious**.

    Parameters
    ----------
    labels, pred_probs, alpha
        As for :func:`relabelled_pairs`.
    pairs : DataFrame, optional
        The result of :func:`relabelled_pairs` on the same arrays (computed when not given).

    Returns
    -------
    ndarray of float64, shape (n,)
        In [0, 1); 0 for every sample whose label is in no excess pair.
    """
    y, probs = _checked(labels, pred_probs)
    if pairs is None:
        pairs = relabelled_pairs(y, probs, alpha=alpha)
    missing = set(PAIR_COLUMNS) - set(pairs.columns)
    if missing:
        raise InputError(f"pairs lacks the column(s) {sorted(missing)}; pass the result of relabelled_pairs")
    size = np.bincount(y, minlength=probs.shape[1]).astype(np.float64)
    p = np.maximum(probs, PROB_FLOOR)
    weighted = np.zeros(len(y))  # sum_b pi_b r_b
    share = np.zeros(len(y))  # sum_b pi_b
    for pair in pairs.itertuples(index=False):
        a, b = int(pair.label), int(pair.looks_like)
        if not (0 <= a < len(size) and 0 <= b < len(size)) or size[a] == 0 or size[b] == 0:
            raise InputError(f"pairs names classes {a} and {b}, which these labels do not both hold")
        rows = np.flatnonzero(y == a)
        pi = max(float(pair.excess), 0.0) / size[a]
        weighted[rows] += pi * (p[rows, b] / p[rows, a]) * (size[a] / size[b])
        share[rows] += pi
    share = np.minimum(share, 0.5)  # an estimate, not a certainty: a label stays at least half its own class
    return np.divide(weighted, 1.0 - share + weighted, out=np.zeros(len(y)), where=weighted > 0)


__all__ = ["ALPHA", "PAIR_COLUMNS", "PROB_FLOOR", "relabelled_pairs", "targeted_flip_scores"]
