"""Nearest-neighbour signals in activation space.

Neighbours are found exactly by scikit-learn's ``NearestNeighbors``, which works through the rows in chunks (memory
O(n k), never n x n), up to :data:`EXACT_MAX_ROWS` rows; beyond, where an exact search's O(n^2 d) cost runs to
hours, by pynndescent's approximate NN-descent (a dependency of umap-learn). Both signals return one float64 per
sample, **higher = more suspicious**.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from .._validate import check_choice, check_features, check_int, check_random_state
from ..errors import InputError
from .loss import check_labels_against, class_members, robust_z_within_class

logger = logging.getLogger(__name__)

Metric = Literal["cosine", "euclidean"]

#: The largest search that stays exact: 200,000 rows of 32 columns take about a minute on 2 cores, a million
#: about 20 (quadratic), against about 2 minutes for the approximate graph (benchmarks/scale.py measures both).
EXACT_MAX_ROWS = 200_000


def check_options(k: int, metric: str, n_components: int | None) -> None:
    """The neighbour signals' options, checked before any work (shared with the registry's adapters)."""
    check_int(k, "k", low=1)
    check_choice(metric, "metric", ("cosine", "euclidean"))
    if n_components is not None:
        check_int(n_components, "n_components", low=1)


def reduce_features(
    features: np.ndarray, *, metric: Metric = "cosine", n_components: int | None = 32, random_state: int = 0
) -> np.ndarray:
    """The features as the neighbour signals search them: unit rows for ``metric="cosine"``, then their top
    ``n_components`` principal directions (None keeps every column). Shape (n, min(d, n_components)), float32."""
    x = check_features(features)
    check_options(1, metric, n_components)
    if metric == "cosine":
        # Cosine distance is a monotone function of the euclidean distance between unit vectors, which takes
        # scikit-learn's fast chunked euclidean path. An all-zero row (a dead ReLU layer) stays at the origin.
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1)
    if n_components is not None and n_components < min(x.shape):
        # The distance computations cost O(n^2 d); the top principal directions keep the neighbourhoods
        # (on Fashion-MNIST activations, 32 of 128 directions hold 97% of the variance and give the same AUROC).
        x = PCA(n_components=int(n_components), random_state=check_random_state(random_state)).fit_transform(x)
    return x.astype(np.float32, copy=False)


def nearest_neighbors(x: np.ndarray, k: int, *, random_state: int = 0, exact: bool | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances and positions of each row's ``k`` nearest other rows (the row itself excluded, duplicates kept),
    both of shape (n, k), nearest first: exact up to :data:`EXACT_MAX_ROWS` rows (or as ``exact`` says),
    approximate beyond."""
    if k >= len(x):
        raise InputError(f"k = {k} needs at least {k + 1} samples; features has {len(x)} rows")
    if not (len(x) <= EXACT_MAX_ROWS if exact is None else exact):
        return _approximate_neighbors(x, int(k), random_state)
    nn = NearestNeighbors(n_neighbors=int(k), algorithm="brute", metric="euclidean").fit(x)
    return nn.kneighbors()


def _approximate_neighbors(x: np.ndarray, k: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """NN-descent's graph with ``k + 1`` neighbours per row, the row itself taken out (or, where a duplicate
    displaced it, the farthest)."""
    from pynndescent import NNDescent

    index = NNDescent(np.ascontiguousarray(x, dtype=np.float32), n_neighbors=k + 1, metric="euclidean",
                      random_state=random_state, low_memory=True, compressed=True, verbose=False)
    idx, dist = index.neighbor_graph
    rows = np.arange(len(x))[:, None]
    is_self = idx == rows
    # Drop one column per row: the row itself where it was found, else the last (the farthest) neighbour.
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones(idx.shape, dtype=bool)
    keep[np.arange(len(x)), drop] = False
    return dist[keep].reshape(len(x), k).astype(np.float64), idx[keep].reshape(len(x), k).astype(np.int64)


def label_disagreement(neighbors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of each row's neighbours (positions, shape (n, k)) whose label differs from its own."""
    return np.mean(labels[neighbors] != labels[:, None], axis=1, dtype=np.float64)


def distance_outlier(x: np.ndarray, labels: np.ndarray, k: int, *, random_state: int = 0) -> np.ndarray:
    """Robust z-score within its class of each row's distance to its ``k``-th nearest classmate in ``x``."""
    dist = np.zeros(len(x), dtype=np.float64)
    groups = class_members(labels)
    # The searches within classes cost the sum of their squared sizes: exact while that stays within one exact
    # search of EXACT_MAX_ROWS rows (ten classes of 100,000 would cost 2.5 times more); small classes always are.
    all_exact = sum(len(g) ** 2 for g in groups) <= EXACT_MAX_ROWS**2
    for members in groups:
        m = len(members)
        if m == 1:
            logger.warning("knn_distance_outlier: class %d has one sample; it scores 0", labels[members[0]])
            continue
        k_c = min(int(k), m - 1)
        if k_c < k:
            logger.warning(
                "knn_distance_outlier: class %d has %d samples; using neighbour rank %d", labels[members[0]], m, k_c
            )
        exact = all_exact or m <= EXACT_MAX_ROWS // 10
        d, _ = nearest_neighbors(x[members], k_c, random_state=random_state, exact=exact)
        dist[members] = d[:, -1]
    return robust_z_within_class(dist, labels)


def knn_label_disagreement(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 10,
    metric: Metric = "cosine",
    n_components: int | None = 32,
    random_state: int = 0,
) -> np.ndarray:
    """Share of a sample's ``k`` nearest neighbours that carry another label: **higher = more suspicious**.

    The Deep k-NN defence (Peri et al., 2020): a clean-label poison keeps its correct label but its
    activations sit among the class it attacks; an unlearned label flip keeps the activations of its true
    class. Either way its neighbours disagree with its label. The sample itself is excluded; exact duplicates
    of it count as neighbours.

    Parameters
    ----------
    features : ndarray of shape (n, d)
        Activations, one row per sample.
    labels : ndarray of shape (n,)
        Given class of each sample.
    k : int, default 10
        Neighbours per sample; at most ``n - 1``.
    metric : {"cosine", "euclidean"}, default "cosine"
        Cosine ignores the overall activation magnitude, which varies with image contrast more than with class.
    n_components : int or None, default 32
        Neighbours are searched among the features projected on their top ``n_components`` principal
        directions (after the cosine normalization), which makes the search about ``d / n_components`` times
        cheaper; None searches the features as they are.
    random_state : int, default 0
        Seed of the PCA (its randomized solver is used on wide inputs).

    Returns
    -------
    ndarray of shape (n,), float64
        Values in {0, 1/k, ..., 1}.

    Raises
    ------
    InputError
        On a shape or length mismatch, NaN or infinite features, ``k`` or ``n_components`` out of range, or
        an unknown metric.
    """
    check_options(k, metric, n_components)
    x = reduce_features(features, metric=metric, n_components=n_components, random_state=random_state)
    y = check_labels_against(labels, len(x), "features")
    _, idx = nearest_neighbors(x, int(k), random_state=random_state)
    return label_disagreement(idx, y)


def knn_distance_outlier(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 10,
    metric: Metric = "cosine",
    n_components: int | None = 32,
    random_state: int = 0,
) -> np.ndarray:
    """Distance to the ``k``-th nearest neighbour of the same class, robust z-scored within the class.

    **Higher = more suspicious**: the sample sits far from every other member of its class (an outlier, a
    mislabelled or corrupted sample, a lone poison). A tight backdoor cluster is the opposite case, with small
    distances; :func:`forensics.signals.clustering.activation_clustering` and the spectral scores look for it.
    The z-score uses the class median and MAD (:func:`forensics.signals.loss.robust_z_within_class`), so
    classes of different spread share one scale.

    Parameters
    ----------
    features : ndarray of shape (n, d)
        Activations, one row per sample.
    labels : ndarray of shape (n,)
        Given class of each sample.
    k : int, default 10
        Neighbour rank. A class with ``k`` or fewer members uses its farthest other member instead (logged);
        a class with one member scores 0 (logged).
    metric : {"cosine", "euclidean"}, default "cosine"
        As in :func:`knn_label_disagreement`.
    n_components : int or None, default 32
        As in :func:`knn_label_disagreement` (one PCA of all the features, shared by the classes).
    random_state : int, default 0
        Seed of the PCA.

    Returns
    -------
    ndarray of shape (n,), float64
        About N(0, 1) for the bulk of each class.

    Raises
    ------
    InputError
        On a shape or length mismatch, NaN or infinite features, ``k`` or ``n_components`` out of range, or
        an unknown metric.
    """
    check_options(k, metric, n_components)
    x = reduce_features(features, metric=metric, n_components=n_components, random_state=random_state)
    y = check_labels_against(labels, len(x), "features")
    return distance_outlier(x, y, int(k), random_state=random_state)


__all__ = ["distance_outlier", "knn_distance_outlier", "knn_label_disagreement", "label_disagreement",
           "nearest_neighbors", "reduce_features"]
