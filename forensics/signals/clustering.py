"""Activation clustering (Chen et al., 2018), gated: flag a class's small cluster only when it is really apart.

Within each class, poisoned samples that share a trigger form their own tight group in activation space. Each
class is reduced with PCA, split in two with k-means, and the smaller cluster is reported only when it is
both small (at most ``max_relative_size`` of the class) and separated (``min_separation``). Always flagging the
smaller cluster, as the original recipe does, flags a third to a half of every clean class, because k-means
splits any cloud in two.

The separation of a split is Ashman's D along the line through the two centroids,
``sqrt(2) |m_1 - m_2| / sqrt(s_1^2 + s_2^2)`` (means and standard deviations of the projections): the distance
between the clusters in units of their own spread along it. k-means splitting one Gaussian in two gives about
2.7; the splits of clean classes of a CNN's penultimate layer on Fashion-MNIST gave 2.7 to 4.0, a 3x3 patch
backdoor at 1% and 5% of the data gave 6.7 and 7.5.

How unusual a flagged split is comes from the other classes, which an attack on one class cannot move
(:func:`split_p_values`): ``log D`` of the classes' splits has a median and a spread (MAD, at least
``MIN_LOG_SPREAD``), and a split's p-value is the normal tail beyond its robust z. Over the 55 Fashion-MNIST
training sets of the attack matrix's tuning seeds (``benchmarks/matrix.py --seeds 0-4``) the median ``log D`` of
the classes was ``log 3.1`` to ``log 4.5`` (typically ``log 3.3``) and their MAD 0.08-0.27 (typically 0.15); all 22
splits that passed the gates were in poisoned classes, with p-values from 1e-14 (a relabelled class, D = 10.7) to
0.18 (random flips, where several classes split and widen the spread). The per-sample score, ``-log10`` of that
p-value, is the same for every member of the cluster; it is what the combination reads (the signal's null is
``exact_p``), so a gated signal whose non-zero scores are all poison no longer shapes its own
null. With fewer than ``MIN_CLASSES_FOR_NULL`` split classes the reference is the clean Fashion-MNIST one
(median 3.3, spread ``REFERENCE_LOG_SPREAD``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from .._validate import check_features
from ..errors import InputError
from .loss import check_labels_against, class_members

logger = logging.getLogger(__name__)

# Below this many samples a two-way split says nothing about the class.
MIN_CLASS_SIZE = 10
#: Smallest spread of ``log D`` over classes (a few classes can agree by chance far more closely than that).
MIN_LOG_SPREAD = 0.15
#: Below this many split classes their spread is not estimated; the reference null is used instead.
MIN_CLASSES_FOR_NULL = 5
#: The reference null of ``log D``: median ``log 3.3`` and this spread (clean Fashion-MNIST classes, above).
REFERENCE_LOG_MEDIAN = float(np.log(3.3))
REFERENCE_LOG_SPREAD = 0.2


@dataclass(frozen=True)
class ActivationClusters:
    """Result of :func:`cluster_classes`.

    Attributes
    ----------
    scores : ndarray of shape (n,), float64
        Per-sample score, **higher = more suspicious**: for members of a flagged small cluster, how far past
        the boundary between the two clusters a sample lies, in units of the pooled spread along the line
        through the centroids (> 0); 0 for every other sample.
    table : pandas.DataFrame
        One row per class present: ``label``, ``n_samples``, ``small_cluster_size``, ``relative_size``,
        ``separation`` (Ashman's D; NaN when the class was not split), ``p_value`` (how often a class's split is
        this separated, from the other classes: :func:`split_p_values`), ``flagged`` (bool) and ``reason`` (why
        the small cluster was or was not flagged, for a person to read).
    """

    scores: np.ndarray
    table: pd.DataFrame


def _split(z: np.ndarray, random_state: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Two-means split of ``z`` (m, k): (small-cluster mask, signed position past the boundary, separation D).

    The k-means boundary is the hyperplane halfway between the centroids, so a sample's projection on the
    centroid line, measured from the midpoint, is positive exactly for the members of the small cluster.
    """
    km = KMeans(n_clusters=2, n_init=3, random_state=random_state).fit(z)
    small_id = int(np.argmin(np.bincount(km.labels_, minlength=2)))
    small = km.labels_ == small_id
    c_small, c_big = km.cluster_centers_[small_id], km.cluster_centers_[1 - small_id]
    gap = float(np.linalg.norm(c_small - c_big))
    if gap == 0 or small.all() or not small.any():
        return np.zeros(len(z), dtype=bool), np.zeros(len(z)), 0.0
    p = (z - (c_small + c_big) / 2) @ ((c_small - c_big) / gap)
    # A floor on the spread keeps D finite when both clusters are single repeated points.
    spread = max(float(np.sqrt((p[small].var() + p[~small].var()) / 2)), 1e-6 * gap)
    return small, p / spread, abs(p[small].mean() - p[~small].mean()) / spread


def cluster_classes(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_components: int = 10,
    max_relative_size: float = 0.35,
    min_separation: float = 5.0,
    random_state: int = 0,
) -> ActivationClusters:
    """Split each class in two and flag the small cluster when it is small and separated.

    Parameters
    ----------
    features : ndarray of shape (n, d)
        Activations, one row per sample.
    labels : ndarray of shape (n,)
        Given class of each sample.
    n_components : int, default 10
        PCA dimensions per class before k-means (fewer when the class is smaller or narrower). PCA, not
        ICA: ICA rescales every component to unit variance, which lets k-means split on noise directions.
    max_relative_size : float in (0, 0.5], default 0.35
        Largest share of its class that a flagged cluster may have.
    min_separation : float, default 5.0
        Smallest Ashman's D of a flagged split (see the module notes for measured values).
    random_state : int, default 0
        Seed of PCA and k-means.

    Returns
    -------
    ActivationClusters
        Per-sample scores and the per-class table. A class with fewer than ``MIN_CLASS_SIZE`` (10) samples, or
        without spread, scores 0 with the reason in the table (and in the log).

    Raises
    ------
    InputError
        On a shape or length mismatch, NaN or infinite features, labels that are not class indices, or an
        option out of range.
    """
    x = check_features(features)
    y = check_labels_against(labels, len(x), "features")
    if not isinstance(n_components, (int, np.integer)) or isinstance(n_components, bool) or n_components < 1:
        raise InputError(f"n_components must be a positive integer; got {n_components!r}")
    if not 0 < max_relative_size <= 0.5:
        raise InputError(f"max_relative_size must be in (0, 0.5]; got {max_relative_size!r}")
    if not np.isfinite(min_separation) or min_separation < 0:
        raise InputError(f"min_separation must be a finite number >= 0; got {min_separation!r}")
    scores = np.zeros(len(x), dtype=np.float64)
    rows = []
    for members in class_members(y):
        label, m = int(y[members[0]]), len(members)
        row = {"label": label, "n_samples": m, "small_cluster_size": 0, "relative_size": np.nan,
               "separation": np.nan, "flagged": False, "reason": ""}
        rows.append(row)
        if m < MIN_CLASS_SIZE:
            row["reason"] = f"not split: {m} samples, fewer than {MIN_CLASS_SIZE}"
            logger.warning("cluster_classes: class %d %s", label, row["reason"])
            continue
        xc = x[members].astype(np.float64)
        xc -= xc.mean(axis=0)
        if not np.any(xc):
            row["reason"] = "not split: all samples have the same features"
            logger.warning("cluster_classes: class %d %s", label, row["reason"])
            continue
        k = min(int(n_components), x.shape[1], m - 1)
        z = PCA(n_components=k, random_state=random_state).fit_transform(xc)
        small, position, separation = _split(z, random_state)
        rel = small.sum() / m
        row.update(small_cluster_size=int(small.sum()), relative_size=rel, separation=separation)
        if rel > max_relative_size:
            row["reason"] = f"small cluster is {rel:.1%} of the class (more than {max_relative_size:.1%})"
        elif separation < min_separation:
            row["reason"] = f"separation {separation:.2f} is below {min_separation:g}"
        else:
            row["flagged"] = True
            row["reason"] = (
                f"{int(small.sum())} samples ({rel:.1%}) apart from the class with separation {separation:.2f}"
            )
            scores[members[small]] = position[small]
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("separation") + 1, "p_value", split_p_values(table["separation"].to_numpy()))
    return ActivationClusters(scores=scores, table=table)


def split_p_values(separations: np.ndarray) -> np.ndarray:
    """How often a clean class's split is as separated as each one, judged against the other classes' splits.

    ``log D`` is taken as normal around the median of the classes' ``log D`` with their MAD as spread (at least
    ``MIN_LOG_SPREAD``); with fewer than ``MIN_CLASSES_FOR_NULL`` finite values, around the reference null. The
    median and MAD ignore the one or two attacked classes. NaN (a class not split) gives 1.
    """
    d = np.asarray(separations, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0)
    p = np.ones(len(d))
    if not ok.any():
        return p
    logs = np.log(d[ok])
    if len(logs) >= MIN_CLASSES_FOR_NULL:
        center = float(np.median(logs))
        spread = max(1.4826 * float(np.median(np.abs(logs - center))), MIN_LOG_SPREAD)
    else:
        center, spread = REFERENCE_LOG_MEDIAN, REFERENCE_LOG_SPREAD
    p[ok] = np.clip(stats.norm.sf((logs - center) / spread), 1e-300, 1.0)
    return p


def cluster_evidence(clusters: ActivationClusters, labels: np.ndarray) -> np.ndarray:
    """Per sample, ``-log10`` of its flagged cluster's :func:`split_p_values` (0 outside flagged clusters).

    Members deeper in the cluster rank a hair higher (a thousandth of their position), so the order within a
    cluster follows the split without changing its p-value in any printed digit.
    """
    y = np.asarray(labels)
    out = np.zeros(len(y))
    inside = clusters.scores > 0
    for row in clusters.table.itertuples():
        if row.flagged:
            rows = inside & (y == row.label)
            out[rows] = -np.log10(max(float(row.p_value), 1e-300)) + 1e-3 * clusters.scores[rows]
    return out


def activation_clustering(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_components: int = 10,
    max_relative_size: float = 0.35,
    min_separation: float = 5.0,
    random_state: int = 0,
) -> np.ndarray:
    """Per-sample activation-clustering score, **higher = more suspicious**: ``cluster_classes(...).scores``.

    Members of a flagged small cluster score their distance past the boundary between the class's two
    clusters (in units of the pooled spread, > 0); all other samples score 0. See :func:`cluster_classes`
    for the parameters and the per-class table that says why each class was or was not flagged.

    Returns
    -------
    ndarray of shape (n,), float64
    """
    return cluster_classes(
        features,
        labels,
        n_components=n_components,
        max_relative_size=max_relative_size,
        min_separation=min_separation,
        random_state=random_state,
    ).scores


__all__ = ["MIN_CLASSES_FOR_NULL", "MIN_CLASS_SIZE", "MIN_LOG_SPREAD", "ActivationClusters", "activation_clustering",
           "cluster_classes", "cluster_evidence", "split_p_values"]
