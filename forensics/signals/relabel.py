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

:func:`targeted_flip_scores` then gives each sample of such a label the probability that it came from the other
class. The out-of-sample probabilities come from a model trained on the attacked labels, so they do not compare the
two classes' looks: they give the share of each look that carries each label. Where ``b`` was relabelled ``a`` at
the rate ``rho_b``, a sample that looks wholly like ``b`` gets ``p_b = 1 - rho_b`` (and ``p_a = rho_b``), so
``p_b / (1 - rho_b)`` is the probability that it looks like ``b`` at all; given the label ``a``, it is read as the
probability that it was relabelled (the natural lookalikes of ``b`` among ``a``'s samples score high too; the
mirror count says about how many). ``rho_b`` is the excess over the mirror, per member of ``b`` before the
relabelling. On the attack matrix's pair flips (tuning seeds) the likelihood ratio ``p_b / p_a`` times the prior,
read as odds (the score before), put half-learned flips at 0.3-0.4, below clean samples other signals lit; Bayes'
rule with the label, ``rho_b p_b / ((1 - rho_b) p_a)``, ranked them worse still (the probe gives a flip more of
``a`` than ``rho_b``, and the excess undercounts). Samples of other labels score 0, and so does every sample when no
pair is in excess (random flips are mutual and leave this signal silent: the loss and label-quality signals find
those). The combination reads the score as the posterior it is (:mod:`forensics.signals.combine`, the
``"posterior"`` null).
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
    """Probability that each sample was relabelled from another class in a pair relabelled in excess.

    For a sample given label ``a``, with pairs ``(a, b)`` in excess: ``rho_b = excess / (n_b + excess)`` is the
    share of ``b``'s samples relabelled ``a`` (``n_b``: those still labelled ``b``), and the score is
    ``min(1, sum_b p_b / (1 - rho_b))``: a model trained on the relabelled data gives a lookalike of ``b`` the
    probability ``1 - rho_b`` of label ``b``, whatever label it carries. **Higher = more suspicious**.

    Parameters
    ----------
    labels, pred_probs, alpha
        As for :func:`relabelled_pairs`.
    pairs : DataFrame, optional
        The result of :func:`relabelled_pairs` on the same arrays (computed when not given).

    Returns
    -------
    ndarray of float64, shape (n,)
        In [0, 1]; 0 for every sample whose label is in no excess pair.
    """
    y, probs = _checked(labels, pred_probs)
    if pairs is None:
        pairs = relabelled_pairs(y, probs, alpha=alpha)
    missing = set(PAIR_COLUMNS) - set(pairs.columns)
    if missing:
        raise InputError(f"pairs lacks the column(s) {sorted(missing)}; pass the result of relabelled_pairs")
    size = np.bincount(y, minlength=probs.shape[1]).astype(np.float64)
    out = np.zeros(len(y))
    for pair in pairs.itertuples(index=False):
        a, b = int(pair.label), int(pair.looks_like)
        if not (0 <= a < len(size) and 0 <= b < len(size)) or size[a] == 0 or size[b] == 0:
            raise InputError(f"pairs names classes {a} and {b}, which these labels do not both hold")
        rows = np.flatnonzero(y == a)
        excess = max(float(pair.excess), 0.0)
        out[rows] += probs[rows, b] * (size[b] + excess) / size[b]  # p_b / (1 - rho_b)
    return np.minimum(out, 1.0)


__all__ = ["ALPHA", "PAIR_COLUMNS", "relabelled_pairs", "targeted_flip_scores"]
