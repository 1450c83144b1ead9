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

**Many-to-one.** A backdoor relabels images of every class to its target; where the model did not learn the trigger
(a faint blend, too few poisoned samples, too short a training), what is left is a label that holds a few lookalikes
of every other class: 15 to 40 of each, against a natural confusion of each pair that no pair test at a corrected
level can tell them from. Summed over the label's row they stand out: the label's lookalikes of other classes
against the other classes' lookalikes of it, one binomial test (the found pairs left out of both sides), at the
pairs' own corrected level. Its rows (``test == "label"``) carry every class the label holds in excess, and the
probability of each sample is scaled by the label's *purity*, the share of its lookalikes the excess explains: a
label test that holds 82 lookalikes against a mirror of 1 makes its lookalikes near-certain, one at 60 against 30
makes them even odds. The test reads the probe's probabilities and, when given, the model's own (``model_probs``;
each at half the level): a probe fitted to the model's features learns the trigger from the other poisoned samples
(the label's excess is then hidden in the probe: report seed 105's sinusoid, p = 0.02 by the probe, 2e-9 by the model),
while a model that did not learn the trigger gives them the probabilities of their own classes; the reverse also
happens (report seed 104's blend, 7e-6 by the probe, 4e-3 by the model). At the level ``alpha / n_classes`` a cell of
10% random flips fired on natural asymmetry (p = 7e-4, tuning seed 2); at the pairs' level no clean control of the
attack matrix comes near (smallest p 1e-3, tuning and report seeds, both readings). On the attack matrix the cells
whose backdoor did not take, where only the loss had seen the poison, went from r@2x 0.22-0.71 to 0.99-1.00 on the
tuning seeds (blend 0, patches 0 and 2), and on the report seeds ten cells rose, all backdoors that did not take
(sinusoids, blends, a warp: 0.03-0.67 to 0.82-1.00 on the six worst)
(``benchmarks/RESULTS.md``, "Since: a label that holds a few lookalikes of every class"), no clean control changing.
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
#: Further columns of :func:`relabelled_pairs`: ``test`` is ``"pair"`` (the pair against its mirror) or ``"label"``
#: (the label against every other class at once, many-to-one); ``purity`` scales a label row's probabilities;
#: ``read_on``: the probabilities the counts come from, ``"probe"`` (``pred_probs``) or ``"model"`` (``model_probs``).
LABEL_COLUMNS = ("test", "purity", "read_on")


def _checked(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.shape(pred_probs)[0] if np.ndim(pred_probs) else 0
    probs = check_probs(pred_probs, n, name="pred_probs").astype(np.float64)
    y = check_labels_against(labels, len(probs), "pred_probs", n_classes=probs.shape[1])
    return y, probs


def relabelled_pairs(labels: np.ndarray, pred_probs: np.ndarray, *, alpha: float = ALPHA,
                     model_probs: np.ndarray | None = None) -> pd.DataFrame:
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
    model_probs : ndarray, shape (n, n_classes), optional
        The model's own probabilities on these samples, read by the label test beside ``pred_probs`` (default:
        ``pred_probs`` alone). A backdoor the model did not learn leaves its samples looking like their own classes
        there, while a probe fitted to the model's features learns the trigger from the other poisoned samples.

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
    np.fill_diagonal(joint, 0)
    both = joint + joint.T
    present = np.bincount(y, minlength=k) > 0
    tested = present[:, None] & present[None, :] & ~np.eye(k, dtype=bool) & (both > 0)
    p_value = np.ones((k, k))
    p_value[tested] = stats.binom.sf(joint[tested] - 1, both[tested], 0.5)
    n_present = int(present.sum())
    level = alpha / max(n_present * (n_present - 1), 1)
    found = tested & (p_value < level)
    rows = [(int(a), int(b), int(joint[a, b]), int(joint[b, a]), int(joint[a, b] - joint[b, a]), float(p_value[a, b]),
             "pair", 1.0, "probe") for a, b in zip(*np.nonzero(found))]
    if n_present >= 3:
        # Many-to-one: a label that holds lookalikes of every other class a few at a time (a backdoor relabelled to
        # its target that the model did not learn) is in excess over its row, though no single pair is. The pairs
        # already found are left out of both sides. Read on the probe's probabilities and, when given, on the
        # model's own (each at half the level).
        readings = [("probe", joint)]
        if model_probs is not None:
            own = check_probs(model_probs, len(y), name="model_probs").astype(np.float64)
            if own.shape[1] != k:
                raise InputError(f"model_probs has {own.shape[1]} classes; pred_probs has {k}")
            own_joint = np.rint(compute_confident_joint(y, own)).astype(np.int64)
            np.fill_diagonal(own_joint, 0)
            readings.append(("model", own_joint))
        best: dict[int, tuple[float, str, np.ndarray]] = {}
        for read_on, counts in readings:
            rest = np.where(found | found.T, 0, counts)
            held, given = rest.sum(axis=1), rest.sum(axis=0)
            label_p = np.ones(k)
            some = present & (held + given > 0)
            label_p[some] = stats.binom.sf(held[some] - 1, held[some] + given[some], 0.5)
            for a in np.flatnonzero(label_p < level / len(readings)):
                if a not in best or label_p[a] < best[a][0]:
                    best[int(a)] = (float(label_p[a]), read_on, rest)
        for a, (p_a, read_on, rest) in sorted(best.items()):
            # The share of the label's lookalikes of other classes that the excess explains: how likely such a
            # lookalike is to have been relabelled (its targeted_flip probability is scaled by it).
            held_a, given_a = rest[a].sum(), rest[:, a].sum()
            purity = float((held_a - given_a) / held_a)
            rows += [(a, int(b), int(rest[a, b]), int(rest[b, a]), int(rest[a, b] - rest[b, a]), p_a, "label",
                      purity, read_on)
                     for b in np.flatnonzero(present & (rest[a] > rest[:, a])) if b != a]
    table = pd.DataFrame(rows, columns=list(PAIR_COLUMNS + LABEL_COLUMNS))
    return table.sort_values(["p_value", "label", "looks_like"], ignore_index=True)


def targeted_flip_scores(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    pairs: pd.DataFrame | None = None,
    alpha: float = ALPHA,
    model_probs: np.ndarray | None = None,
) -> np.ndarray:
    """Probability that each sample was relabelled from another class in a pair relabelled in excess.

    For a sample given label ``a``, with pairs ``(a, b)`` in excess: ``rho_b = excess / (n_b + excess)`` is the
    share of ``b``'s samples relabelled ``a`` (``n_b``: those still labelled ``b``), and the score is
    ``min(1, sum_b p_b / (1 - rho_b))``: a model trained on the relabelled data gives a lookalike of ``b`` the
    probability ``1 - rho_b`` of label ``b``, whatever label it carries. **Higher = more suspicious**.

    Parameters
    ----------
    labels, pred_probs, alpha, model_probs
        As for :func:`relabelled_pairs`; a label row (many-to-one) reads ``model_probs`` when given.
    pairs : DataFrame, optional
        The result of :func:`relabelled_pairs` on the same arrays (computed when not given).

    Returns
    -------
    ndarray of float64, shape (n,)
        In [0, 1]; 0 for every sample whose label is in no excess pair.
    """
    y, probs = _checked(labels, pred_probs)
    if pairs is None:
        pairs = relabelled_pairs(y, probs, alpha=alpha, model_probs=model_probs)
    own = probs if model_probs is None else check_probs(model_probs, len(y), name="model_probs").astype(np.float64)
    if own.shape != probs.shape:
        raise InputError(f"model_probs has shape {own.shape}; pred_probs has {probs.shape}")
    read_on = pairs["read_on"].to_numpy(dtype=object) if "read_on" in pairs else np.full(len(pairs), "probe", object)
    missing = set(PAIR_COLUMNS) - set(pairs.columns)
    if missing:
        raise InputError(f"pairs lacks the column(s) {sorted(missing)}; pass the result of relabelled_pairs")
    size = np.bincount(y, minlength=probs.shape[1]).astype(np.float64)
    out = np.zeros(len(y))
    purity = pairs["purity"].to_numpy(dtype=np.float64) if "purity" in pairs else np.ones(len(pairs))
    for pair, share, reading in zip(pairs.itertuples(index=False), purity, read_on):
        a, b = int(pair.label), int(pair.looks_like)
        if not (0 <= a < len(size) and 0 <= b < len(size)) or size[a] == 0 or size[b] == 0:
            raise InputError(f"pairs names classes {a} and {b}, which these labels do not both hold")
        if not 0 <= share <= 1:
            raise InputError(f"pairs' purity must lie in [0, 1]; got {share!r} for classes {a} and {b}")
        rows = np.flatnonzero(y == a)
        excess = max(float(pair.excess), 0.0)
        if reading == "model" and model_probs is None:
            raise InputError(f"pairs reads classes {a} and {b} on the model's probabilities; give model_probs")
        seen = own if reading == "model" else probs
        out[rows] += share * seen[rows, b] * (size[b] + excess) / size[b]  # p_b / (1 - rho_b), a label row's share
    return np.minimum(out, 1.0)


__all__ = ["ALPHA", "LABEL_COLUMNS", "PAIR_COLUMNS", "relabelled_pairs", "targeted_flip_scores"]
