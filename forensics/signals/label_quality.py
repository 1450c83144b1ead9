"""Label-quality signal: how little a model that never saw a sample believes its given label.

The ranking itself is cleanlab's (:func:`cleanlab.rank.get_label_quality_scores`); this module supplies
out-of-fold predicted probabilities when the caller has none. Returns one float64 per sample,
**higher = more suspicious**.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .._validate import check_features, check_probs
from ..errors import InputError
from .loss import check_labels_against

logger = logging.getLogger(__name__)

METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")


def out_of_fold_probs(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    cv_folds: int = 5,
    max_train: int = 20_000,
    random_state: int = 0,
) -> np.ndarray:
    """Predicted probabilities of each sample from a classifier trained on the other folds.

    The classifier is a standardization followed by a multinomial logistic regression, trained on
    ``cv_folds - 1`` stratified folds and applied to the held-out fold, so a sample's own (possibly wrong)
    label never shapes its prediction.

    A class with fewer members than ``cv_folds`` is spread over as many folds as it has members, one each;
    each member is then predicted by a model trained on the class's other members. A class with a single
    member is absent from the model that predicts it, so that member gets probability 0 for its own label:
    no other sample vouches for it. Both cases are logged.

    Parameters
    ----------
    features : ndarray of shape (n, d)
        Activations (or any numeric features), one row per sample.
    labels : ndarray of shape (n,)
        Given class of each sample.
    cv_folds : int, default 5
        Number of folds (at least 2, at most n).
    max_train : int, default 20000
        Most training rows per fold: larger training folds are subsampled, stratified, keeping every
        class (a linear model on activations gains little beyond this, and the cost stays bounded at 10^7 rows).
    random_state : int, default 0
        Seed of the fold assignment and of the subsampling.

    Returns
    -------
    ndarray of shape (n, labels.max() + 1), float64
        Rows sum to 1; columns of classes absent from a training fold are 0 for that fold.

    Raises
    ------
    InputError
        On a shape or length mismatch, NaN, ``cv_folds`` or ``max_train`` out of range, or fewer than two
        classes with at least two members each.
    """
    features = check_features(features)
    labels = check_labels_against(labels, len(features), "features")
    if not isinstance(cv_folds, (int, np.integer)) or isinstance(cv_folds, bool) or cv_folds < 2:
        raise InputError(f"cv_folds must be an integer >= 2; got {cv_folds!r}")
    if cv_folds > len(features):
        raise InputError(f"cv_folds = {cv_folds} is larger than the number of samples ({len(features)})")
    if not isinstance(max_train, (int, np.integer)) or isinstance(max_train, bool) or max_train < 2:
        raise InputError(f"max_train must be an integer >= 2; got {max_train!r}")
    if len(labels) and labels.max() >= max(len(labels), 1 << 16):
        # The result has one column per class index up to the largest: an index far beyond the samples is not a
        # class number but an id or a hash, and would ask for an (n, index + 1) array.
        raise InputError(
            f"labels has class index {int(labels.max())} for {len(labels)} samples; labels must be class numbers "
            "0..n_classes-1 (renumber them with np.unique(labels, return_inverse=True)[1])"
        )
    counts = np.bincount(labels)
    if np.sum(counts >= 2) < 2:
        raise InputError(
            "the out-of-fold classifier needs at least two classes with two or more samples each; "
            f"got class sizes {counts[counts > 0].tolist()}"
        )
    cv_folds, max_train = int(cv_folds), int(max_train)
    if counts.max() < cv_folds:
        # Every class is smaller than the folds asked for: as many folds as the largest class has members.
        logger.warning("out_of_fold_probs: no class has %d members; using %d folds", cv_folds, int(counts.max()))
        cv_folds = int(counts.max())
    small = np.flatnonzero((counts > 0) & (counts < cv_folds))
    if len(small):
        logger.warning(
            "out_of_fold_probs: class(es) %s have fewer than %d members; single-member classes get probability 0",
            small.tolist(),
            cv_folds,
        )
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=random_state)
    probs = np.zeros((len(labels), len(counts)), dtype=np.float64)
    with warnings.catch_warnings():
        # The small-class case is handled (and logged) above; scikit-learn's generic warning would repeat it.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(folds.split(features, labels))
    rng = np.random.default_rng(random_state)
    for train, test in splits:
        if len(train) > max_train:
            train = stratified_subsample(train, labels[train], max_train, rng)
        model = linear_probe()
        model.fit(features[train], labels[train])
        probs[np.ix_(test, model.classes_)] = model.predict_proba(features[test])
    return probs


def linear_probe() -> Any:
    """The classifier that out-of-fold and ensemble predictions train on activations: a standardization followed by
    a multinomial logistic regression (tol=1e-3 stops lbfgs after a few dozen iterations; the ranking no longer
    changes beyond that)."""
    return make_pipeline(StandardScaler(), LogisticRegression(tol=1e-3, max_iter=500))


def stratified_subsample(rows: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """About ``size`` of ``rows``, each class in proportion and at least one of each, in increasing order."""
    frac = size / len(rows)
    keep = []
    for c in np.unique(labels):
        members = rows[labels == c]
        keep.append(rng.choice(members, size=max(1, int(round(frac * len(members)))), replace=False))
    return np.sort(np.concatenate(keep))


def label_issue_scores(
    labels: np.ndarray,
    *,
    pred_probs: np.ndarray | None = None,
    features: np.ndarray | None = None,
    method: str = "self_confidence",
    cv_folds: int = 5,
    max_train: int = 20_000,
    random_state: int = 0,
) -> np.ndarray:
    """One minus cleanlab's label quality: **higher = more suspicious** (mislabelled samples, label flips).

    Give exactly one of ``pred_probs`` or ``features``. Predicted probabilities must be out-of-sample
    (from cross-validation or a held-out model): a model's predictions on its own training data agree with
    the labels it memorized, flips included. From ``features``, out-of-fold probabilities are computed with
    :func:`out_of_fold_probs`.

    Parameters
    ----------
    labels : ndarray of shape (n,)
        Given class of each sample.
    pred_probs : ndarray of shape (n, n_classes), optional
        Out-of-sample predicted probabilities (rows sum to 1).
    features : ndarray of shape (n, d), optional
        Activations from which out-of-fold probabilities are computed.
    method : {"self_confidence", "normalized_margin", "confidence_weighted_entropy"}, default "self_confidence"
        cleanlab's label quality score.
    cv_folds : int, default 5
        Folds of the out-of-fold classifier (used with ``features`` only).
    max_train : int, default 20000
        Most training rows per fold of the out-of-fold classifier (used with ``features`` only).
    random_state : int, default 0
        Seed of the fold assignment and subsampling (used with ``features`` only).

    Returns
    -------
    ndarray of shape (n,), float64
        Values in [0, 1].

    Raises
    ------
    InputError
        When both or neither of ``pred_probs`` and ``features`` are given, on a shape or length mismatch, NaN,
        an unknown method, ``cv_folds`` out of range, or (with ``features``) fewer than two classes with at
        least two members each.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if (pred_probs is None) == (features is None):
        raise InputError("give exactly one of pred_probs (out-of-sample probabilities) or features")
    if pred_probs is not None:
        # check_probs rejects a non-2-D array before it compares lengths; labels are compared next.
        probs = check_probs(pred_probs, np.shape(pred_probs)[0] if np.ndim(pred_probs) else 0, name="pred_probs")
        y = check_labels_against(labels, len(probs), "pred_probs", n_classes=probs.shape[1])
    else:
        probs = out_of_fold_probs(features, labels, cv_folds=cv_folds, max_train=max_train, random_state=random_state)
        y = check_labels_against(labels, len(probs), "features")
    # cleanlab takes about 1.5 s to import: only when this signal runs.
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(y, np.asarray(probs, dtype=np.float64), method=method)
    return 1.0 - np.asarray(quality, dtype=np.float64)


def estimated_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> int:
    """How many of the labels are wrong, by cleanlab's count (:func:`cleanlab.count.num_label_issues`, the
    confident joint of the labels and out-of-sample probabilities).

    A size, not a list: where a model has half learned flipped labels, few of them are improbable enough to flag,
    but the count still estimates how many there are. On the attack matrix's random flips of 5.7-18.5% of 10,000
    Fashion-MNIST images (tuning seeds) it counted 0.94-1.13 times the flips; on clean controls 188-250 labels,
    images as ambiguous as their neighbours, so that at low flip rates it counts more than were flipped (1.5 times
    280 flips on a report seed); where a model memorized its labels, fewer (``benchmarks/RESULTS.md``).
    """
    probs = check_probs(pred_probs, np.shape(pred_probs)[0] if np.ndim(pred_probs) else 0, name="pred_probs")
    y = check_labels_against(labels, len(probs), "pred_probs", n_classes=probs.shape[1])
    from cleanlab.count import num_label_issues

    return int(num_label_issues(y, np.asarray(probs, dtype=np.float64)))


__all__ = ["METHODS", "estimated_label_issues", "label_issue_scores", "out_of_fold_probs"]
