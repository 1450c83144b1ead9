"""The map of a training set: a 2-D picture to look at, a separate 5-10-D space to cluster in, HDBSCAN clusters,
and a table of the clusters. Poison tends to show up as small islands that sit away from the rest of their label.

The pipeline, shared by every function here::

    features (n, d) --[standardize?]--> PCA (<= pca_dims) --+--> UMAP 2-D          (display only: project_2d)
                                                            +--> UMAP or PCA 5-10-D (cluster_space) --> HDBSCAN

The 2-D picture is never clustered (UMAP's 2-D layout tears and squeezes distances for the eye), and neither are
raw activations of hundreds of dimensions (HDBSCAN's trees stall past ~50 dimensions): HDBSCAN only ever sees at
most :data:`MAX_CLUSTER_DIMS` columns.

Scale: above ``fit_sample`` rows, PCA and UMAP are fitted on a sample stratified by label and the other rows are
placed in chunks where UMAP's own ``transform`` starts them (:func:`_place_rest`); HDBSCAN is fitted on a sample
and the rest assigned with ``hdbscan.approximate_predict``. No n x n matrix is formed.

Reproducibility: with an integer ``random_state`` every result is identical from run to run on one machine. UMAP
is then single-threaded (it only parallelizes without a seed); ``random_state=None`` lets it use every core at the
price of run-to-run differences.

It is one module, past 600 lines, because projection, clustering, the cluster table and the map cache share one
preparation (the PCA fitted once, one sample for the fit) and one set of option checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._io import atomic_write_text, atomic_write_with, file_digest
from ._validate import check_features, check_int, check_random_state, check_scores
from .data import check_ids
from .errors import InputError
from .signals.loss import check_labels_against, class_members

logger = logging.getLogger(__name__)

#: HDBSCAN never receives more columns than this (its space-partitioning trees degrade fast with dimension).
MAX_CLUSTER_DIMS = 10
#: Rows placed per chunk beyond the fitted sample: bounds the memory of their neighbour graph.
_TRANSFORM_CHUNK = 50_000
#: Rows HDBSCAN is fitted on before the rest is assigned by ``approximate_predict``.
DEFAULT_CLUSTER_FIT_SAMPLE = 50_000
#: A cluster holding at most this share of its dominant label's samples is "small" (Chen et al. 2018,
#: activation clustering, call a cluster poisoned below 35% of its class).
DEFAULT_SMALL_SHARE = 0.35


# ------------------------------------------------------------------------------------------------ validation
def _check_seed(random_state: Any) -> int | None:
    """The toolkit's seed contract, or None: UMAP and HDBSCAN then run in parallel, not reproducibly."""
    return None if random_state is None else check_random_state(random_state)


def _check_min_dist(min_dist: Any) -> float:
    if isinstance(min_dist, bool) or not isinstance(min_dist, (int, float, np.floating, np.integer)) or not (
        0.0 <= float(min_dist) <= 1.0
    ):
        raise InputError(f"min_dist must be a number between 0 and 1; got {min_dist!r}")
    return float(min_dist)


def _check_rows_for_umap(x: np.ndarray, n_neighbors: int, option: str = "n_neighbors") -> None:
    if len(x) <= n_neighbors:
        raise InputError(
            f"features has {len(x)} rows; UMAP with {option} = {n_neighbors} needs at least {n_neighbors + 1}"
        )


def _check_strings(values: Any, n: int, name: str, other: str) -> np.ndarray:
    a = np.asarray(values, dtype=object)
    if a.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {a.shape}")
    if len(a) != n:
        raise InputError(f"{name} has {len(a)} entries but {other} has {n} rows")
    missing = np.flatnonzero(pd.isna(a))
    if len(missing):
        raise InputError(f"{name} has {len(missing)} missing value(s), first at row {missing[0]}")
    return a.astype(str).astype(object)


def _check_class_names(class_names: Any, labels: np.ndarray) -> tuple[str, ...] | None:
    if class_names is None:
        return None
    names = tuple(str(c) for c in class_names)
    if len(labels) and labels.max() >= len(names):
        raise InputError(
            f"labels has class {int(labels.max())} but class_names has only {len(names)} names"
        )
    return names


# ------------------------------------------------------------------------------------------------ reduction
def _fit_rows(n: int, fit_sample: int, labels: np.ndarray | None, random_state: int | None) -> np.ndarray | None:
    """Sorted positions of the rows to fit on (None: all ``n``), stratified by label when labels are given.

    Each class gets its proportional share of ``fit_sample`` (largest remainders round), so a 1% island in the
    data stays a 1% island in the sample.
    """
    if n <= fit_sample:
        return None
    rng = np.random.default_rng(random_state)
    if labels is None:
        return np.sort(rng.choice(n, fit_sample, replace=False))
    groups = class_members(labels)
    sizes = np.array([len(g) for g in groups])
    quota = sizes * (fit_sample / n)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: fit_sample - int(take.sum())]] += 1
    picked = [rng.choice(g, k, replace=False) for g, k in zip(groups, take) if k]
    return np.sort(np.concatenate(picked))


def _chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    """``rows`` split into near-equal chunks of at most ``size``."""
    return np.array_split(rows, max(1, -(-len(rows) // size)))


def _reduce(
    x: np.ndarray, fit_rows: np.ndarray | None, *, pca_dims: int, standardize: bool, random_state: int | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Optional standardization, then PCA to ``min(pca_dims, d)`` columns, both fitted on ``fit_rows``.

    Returns the reduced float32 (n, p) array and what was done (for ``params``).
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    fit = x if fit_rows is None else x[fit_rows]
    steps: list[Any] = []
    if standardize:
        steps.append(StandardScaler().fit(fit))
    p = min(pca_dims, x.shape[1], len(fit))
    explained = None
    if p < x.shape[1]:
        z = steps[0].transform(fit) if steps else fit
        pca = PCA(n_components=p, random_state=random_state).fit(z)
        explained = float(pca.explained_variance_ratio_.sum())
        steps.append(pca)
    if not steps:
        return x, {"pca_dims_used": None, "pca_explained_variance": None}
    out = np.empty((len(x), p), dtype=np.float32)
    for start in range(0, len(x), 200_000):  # bounded temporary copies, also for memory-mapped inputs
        z = x[start : start + 200_000]
        for step in steps:
            z = step.transform(z)
        out[start : start + 200_000] = z
    return out, {"pca_dims_used": p if p < x.shape[1] else None, "pca_explained_variance": explained}


def _exact_knn(x: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances of each row's ``n_neighbors`` nearest rows, itself included (UMAP's convention)."""
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(x).kneighbors(x)
    return idx, dist.astype(np.float32)


def _umap(
    x: np.ndarray,
    fit_rows: np.ndarray | None,
    *,
    n_components: int,
    n_neighbors: int,
    min_dist: float,
    random_state: int | None,
) -> np.ndarray:
    """UMAP of ``x`` to ``n_components``: fitted on ``fit_rows`` (or all rows), the rest placed in chunks.

    The fitted rows' neighbour graph is exact (scikit-learn, chunked brute force) and handed to UMAP: it spares
    pynndescent's compilation, about 30 s in every new process on 2 cores (its functions are not cached on disk),
    for a search that takes under a second on 20,000 x 50. The other rows are placed by :func:`_place_rest`.
    """
    import umap

    fit = x if fit_rows is None else x[fit_rows]
    model = umap.UMAP(
        n_components=n_components,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        random_state=random_state,
        transform_seed=42 if random_state is None else random_state,
        # UMAP runs single-threaded whenever it is seeded; say so instead of letting it warn.
        n_jobs=1 if random_state is not None else -1,
        precomputed_knn=(*_exact_knn(fit, n_neighbors), None),
    )
    if fit_rows is None:
        return np.asarray(_fit_umap(model, x), dtype=np.float32)
    out = np.empty((len(x), n_components), dtype=np.float32)
    out[fit_rows] = _fit_umap(model, fit)
    rest = np.setdiff1d(np.arange(len(x)), fit_rows, assume_unique=True)
    out[rest] = _place_rest(out[fit_rows], fit, x[rest], n_neighbors)
    return out


def _place_rest(embedding: np.ndarray, fit: np.ndarray, rest: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Positions of new rows in a fitted UMAP: the mean of their ``n_neighbors`` nearest fitted rows' positions,
    weighted by UMAP's membership strengths, which is where ``UMAP.transform`` starts them.

    ``transform`` then refines each position for 30 epochs against a pynndescent index. Without that refinement
    the clusters of 100,000 augmented Fashion-MNIST activations match those with it (adjusted Rand index 0.98),
    as does their detection of the planted backdoor (``benchmarks/scale.py quality``), at a fraction of the cost:
    a million rows are placed in seconds instead of minutes, with no index to compile.
    """
    from sklearn.neighbors import NearestNeighbors
    from umap.umap_ import smooth_knn_dist

    search = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(fit)
    out = np.empty((len(rest), embedding.shape[1]), dtype=np.float32)
    for rows in _chunks(np.arange(len(rest)), _TRANSFORM_CHUNK):
        dist, idx = search.kneighbors(rest[rows])
        dist = dist.astype(np.float32)
        # UMAP's membership strengths, as in its transform (local connectivity 0: a new row need not touch its
        # nearest fitted row): exp(-(d - rho) / sigma), and 1 where d <= rho or sigma is 0.
        sigmas, rhos = smooth_knn_dist(dist, float(n_neighbors), local_connectivity=0.0)
        gap = dist - rhos[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where((gap <= 0) | (sigmas[:, None] == 0), 1.0, np.exp(-gap / sigmas[:, None]))
        weight /= weight.sum(axis=1, keepdims=True)
        out[rows] = np.einsum("rk,rkc->rc", weight, embedding[idx])
    return out


def _fit_umap(model: Any, x: np.ndarray) -> np.ndarray:
    """``model.fit_transform(x)`` with UMAP's and scikit-learn's benign warnings said once in our own words (a
    logged line) instead of leaking to the user; any other warning still shows."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.fit_transform(x)
    for w in caught:
        text = str(w.message)
        if "precomputed_knn" in text and "NNDescent" in text:
            continue  # without a search index UMAP says transform is unavailable: this model never transforms
        if "not fully connected" in text:
            logger.info("the map: the neighbour graph falls into separate groups; UMAP places them apart")
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _prepare(
    features: Any, labels: Any, *, n_neighbors: int | None, pca_dims: int, fit_sample: int, random_state: Any
) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """Checked features, labels and seed; ``n_neighbors`` None when no UMAP runs."""
    x = check_features(features)
    y = None if labels is None else check_labels_against(labels, len(x), "features")
    check_int(pca_dims, "pca_dims", low=2)
    if n_neighbors is None:
        check_int(fit_sample, "fit_sample", low=2)
        if len(x) < 2:
            raise InputError(f"features has {len(x)} rows; PCA needs at least 2")
    else:
        check_int(n_neighbors, "n_neighbors", low=2)
        check_int(fit_sample, "fit_sample", low=n_neighbors + 1)
        _check_rows_for_umap(x, n_neighbors)
    return x, y, _check_seed(random_state)


def project_2d(
    features: np.ndarray,
    *,
    random_state: int | None = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    pca_dims: int = 50,
    fit_sample: int = 20_000,
    standardize: bool = False,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """A 2-D UMAP picture of ``features``, for display only (never cluster it: use :func:`cluster_space`).

    Parameters
    ----------
    features : ndarray of shape (n, d)
        Activations, one row per sample (may be memory-mapped).
    random_state : int or None, default 0
        Seed of PCA, the sample and UMAP. An integer makes the result identical from run to run, and UMAP
        single-threaded; None lets UMAP use every core, and results differ between runs.
    n_neighbors, min_dist : int, float
        UMAP's neighbourhood size (local versus global structure) and how tightly points may pack.
    pca_dims : int, default 50
        PCA first reduces ``d`` to at most this many columns: it removes noise dimensions and makes UMAP's
        neighbour search several times faster.
    fit_sample : int, default 20,000
        Above this many rows, PCA and UMAP are fitted on a sample of this size (stratified by ``labels`` when
        given) and the other rows are placed where ``UMAP.transform`` starts them (:func:`_place_rest`).
    standardize : bool, default False
        Scale every feature to unit variance before PCA. Off by default: activations share one scale, scaling
        gives near-constant units (dead ReLUs) as much weight as the informative ones, and on the penultimate
        activations of a backdoored Fashion-MNIST CNN it changed neither the clean clusters nor the backdoor's.
    labels : ndarray of shape (n,), optional
        Class of each sample, used only to stratify the fitting sample.

    Returns
    -------
    ndarray of shape (n, 2), float32

    Raises
    ------
    InputError
        NaN or infinite features, a labels length that does not match, fewer than ``n_neighbors + 1`` rows,
        or an option out of range.
    """
    x, y, seed = _prepare(features, labels, n_neighbors=n_neighbors, pca_dims=pca_dims, fit_sample=fit_sample,
                          random_state=random_state)
    min_dist = _check_min_dist(min_dist)
    rows = _fit_rows(len(x), fit_sample, y, seed)
    z, _ = _reduce(x, rows, pca_dims=pca_dims, standardize=bool(standardize), random_state=seed)
    return _umap(z, rows, n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed)


def _space(
    z: np.ndarray,
    fit_rows: np.ndarray | None,
    *,
    is_pca: bool,
    method: str,
    n_components: int,
    n_neighbors: int,
    random_state: int | None,
) -> np.ndarray:
    """The clustering space from the reduced features ``z`` (``is_pca``: ``z`` is already PCA output)."""
    if method == "pca":
        if is_pca:  # principal components come ordered: the first k of a PCA are the k-component PCA
            return np.ascontiguousarray(z[:, :n_components])
        return _reduce(z, fit_rows, pca_dims=n_components, standardize=False, random_state=random_state)[0]
    # min_dist = 0 packs each group tightly: what a density-based clusterer wants (UMAP's clustering guide).
    return _umap(z, fit_rows, n_components=n_components, n_neighbors=n_neighbors, min_dist=0.0,
                 random_state=random_state)


def cluster_space(
    features: np.ndarray,
    *,
    n_components: int = 8,
    random_state: int | None = 0,
    method: Literal["umap", "pca"] = "umap",
    n_neighbors: int = 30,
    pca_dims: int = 50,
    fit_sample: int = 20_000,
    standardize: bool = False,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """A low-dimensional space (5-10 columns) to cluster in with :func:`find_clusters`.

    ``"umap"`` (default) runs PCA to ``pca_dims`` then UMAP to ``n_components`` with ``min_dist = 0`` and a wider
    neighbourhood than the display map, which packs groups densely and keeps small islands apart. ``"pca"`` keeps
    the first ``n_components`` principal components: faster, linear, and blind to curved groups.

    Parameters
    ----------
    features : ndarray of shape (n, d)
    n_components : int, default 8
        Columns of the space, at most :data:`MAX_CLUSTER_DIMS` (10).
    random_state : int or None, default 0
        As in :func:`project_2d`.
    method : {"umap", "pca"}
    n_neighbors : int, default 30
        UMAP's neighbourhood size (``"umap"`` only).
    pca_dims, fit_sample, standardize, labels
        As in :func:`project_2d`.

    Returns
    -------
    ndarray of shape (n, n_components), float32

    Raises
    ------
    InputError
        As :func:`project_2d`, an unknown ``method``, or ``n_components`` above 10.
    """
    if method not in ("umap", "pca"):
        raise InputError(f'method must be "umap" or "pca"; got {method!r}')
    k = check_int(n_components, "n_components", low=1, high=MAX_CLUSTER_DIMS)
    x, y, seed = _prepare(features, labels, n_neighbors=n_neighbors if method == "umap" else None,
                          pca_dims=pca_dims, fit_sample=fit_sample, random_state=random_state)
    if k >= x.shape[1]:
        raise InputError(f"n_components = {k} must be below the number of feature columns ({x.shape[1]})")
    if k > pca_dims:
        raise InputError(f"n_components = {k} must be at most pca_dims = {pca_dims}")
    rows = _fit_rows(len(x), fit_sample, y, seed)
    z, info = _reduce(x, rows, pca_dims=pca_dims, standardize=bool(standardize), random_state=seed)
    return _space(z, rows, is_pca=info["pca_dims_used"] is not None, method=method, n_components=k,
                  n_neighbors=n_neighbors, random_state=seed)


# ------------------------------------------------------------------------------------------------ clustering
def default_min_cluster_size(n: int) -> int:
    """HDBSCAN's smallest cluster for ``n`` clustered rows: 0.25% of them, at least 15.

    Small enough that a 1% island (120 of 12,000 samples) is several times the minimum and stands as its own
    cluster; large enough that clusters stay meaningful groups rather than tens of tiny shards (12,000 rows:
    30; 50,000 rows: 125).
    """
    return max(15, int(round(0.0025 * n)))


def _hdbscan(
    space: np.ndarray,
    *,
    min_cluster_size: int | None,
    min_samples: int | None,
    fit_sample: int,
    random_state: int | None,
) -> tuple[np.ndarray, int, int, int]:
    """HDBSCAN labels, and the min_cluster_size, min_samples and number of rows it was fitted with."""
    import hdbscan

    n = len(space)
    rng = np.random.default_rng(random_state)
    rows = None if n <= fit_sample else np.sort(rng.choice(n, fit_sample, replace=False))
    n_fit = n if rows is None else fit_sample
    mcs = default_min_cluster_size(n_fit) if min_cluster_size is None else min_cluster_size
    ms = min(mcs, 10) if min_samples is None else min_samples
    if n_fit < mcs:
        what = f"space has {n}" if rows is None else f"fit_sample = {fit_sample} gives"
        raise InputError(f"{what} rows to cluster; min_cluster_size = {mcs} needs at least that many")
    # One core-distance job: measured faster than 2 or 4 on 50,000 x 8 (joblib overhead outweighs the gain).
    clusterer = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms, prediction_data=rows is not None,
                                core_dist_n_jobs=1)
    if rows is None:
        return clusterer.fit_predict(space).astype(np.int64), mcs, ms, n_fit
    out = np.empty(n, dtype=np.int64)
    out[rows] = clusterer.fit_predict(space[rows])
    rest = np.setdiff1d(np.arange(n), rows, assume_unique=True)
    for chunk in _chunks(rest, 200_000):
        out[chunk] = hdbscan.approximate_predict(clusterer, space[chunk])[0]
    return out, mcs, ms, n_fit


def _check_space(space: Any, name: str = "space") -> np.ndarray:
    s = check_features(space, name=name)
    if s.shape[1] > MAX_CLUSTER_DIMS:
        raise InputError(
            f"{name} has {s.shape[1]} columns; HDBSCAN is given at most {MAX_CLUSTER_DIMS} (it stalls in high "
            "dimension): reduce the features with cluster_space first"
        )
    return s


def find_clusters(
    space: np.ndarray,
    *,
    min_cluster_size: int | None = None,
    min_samples: int | None = None,
    fit_sample: int = DEFAULT_CLUSTER_FIT_SAMPLE,
    random_state: int | None = 0,
) -> np.ndarray:
    """HDBSCAN clusters of the rows of a clustering space from :func:`cluster_space`.

    Parameters
    ----------
    space : ndarray of shape (n, k), k <= 10
        Never the 2-D display map, never raw activations.
    min_cluster_size : int, optional
        The smallest group called a cluster. None: :func:`default_min_cluster_size` of the rows HDBSCAN is fitted
        on (0.25%, at least 15).
    min_samples : int, optional
        Neighbours that make a point a core point; lower keeps more points out of noise. None: the smaller of
        ``min_cluster_size`` and 10.
    fit_sample : int, default 50,000
        Above this many rows, HDBSCAN is fitted on a random sample of this size and the other rows are assigned
        with ``hdbscan.approximate_predict`` (a row far from every cluster is noise).
    random_state : int or None, default 0
        Seed of that sample (HDBSCAN itself is deterministic).

    Returns
    -------
    ndarray of shape (n,), int64
        Cluster of each row, 0, 1, ...; -1 marks noise (in no cluster).

    Raises
    ------
    InputError
        NaN or infinite values, more than 10 columns, fewer rows than ``min_cluster_size``, options out of range.
    """
    s = _check_space(space)
    if min_cluster_size is not None:
        check_int(min_cluster_size, "min_cluster_size", low=2)
    if min_samples is not None:
        check_int(min_samples, "min_samples", low=1)
    check_int(fit_sample, "fit_sample", low=2)
    labels, *_ = _hdbscan(s, min_cluster_size=min_cluster_size, min_samples=min_samples, fit_sample=fit_sample,
                            random_state=_check_seed(random_state))
    return labels


# ------------------------------------------------------------------------------------------------ cluster table
def _check_clusters(clusters: Any) -> np.ndarray:
    c = np.asarray(clusters)
    if c.ndim != 1:
        raise InputError(f"clusters must be 1-D; got shape {c.shape}")
    if c.dtype.kind not in "iu":
        raise InputError(f"clusters must be integer cluster ids (-1 for noise); got dtype {c.dtype}")
    c = c.astype(np.int64, copy=False)
    if len(c) and c.min() < -1:
        raise InputError(f"clusters must be -1 (noise) or a cluster id >= 0; found {int(c.min())}")
    return c


def _median_centre(points: np.ndarray) -> np.ndarray:
    return np.median(points, axis=0)


def _top_sources(values: np.ndarray, k: int = 3) -> tuple[int, str, float, str]:
    names, counts = np.unique(values.astype(str), return_counts=True)
    order = np.lexsort((names, -counts))[:k]
    text = ", ".join(f"{names[i]} {counts[i] / len(values):.0%}" for i in order)
    return len(names), str(names[order[0]]), float(counts[order[0]] / len(values)), text


def cluster_table(
    clusters: np.ndarray,
    labels: np.ndarray,
    *,
    ids: Sequence[Any],
    sources: Sequence[Any] | None = None,
    suspicion: np.ndarray | None = None,
    space: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    n_examples: int = 5,
    small_share: float = DEFAULT_SMALL_SHARE,
) -> pd.DataFrame:
    """One row per cluster: what it holds, where it comes from, and how much it looks like a planted island.

    Parameters
    ----------
    clusters : ndarray of shape (n,), int
        From :func:`find_clusters`; -1 is noise.
    labels : ndarray of shape (n,), int
        Given class of each sample.
    ids : sequence of shape (n,)
        Sample ids (the examples are reported by id).
    sources : sequence of shape (n,), optional
        Contributor, annotator or shard of each sample.
    suspicion : ndarray of shape (n,), optional
        Any per-sample suspicion score (higher = more suspicious); NaN = not scored.
    space : ndarray of shape (n, k), optional
        The clustering space. Needed for ``distance_to_label_bulk`` and to pick central examples.
    class_names : sequence of str, optional
        Names of the label indices.
    n_examples : int, default 5
        Sample ids listed per cluster.
    small_share : float, default 0.35
        ``is_small`` when the cluster holds at most this share of its dominant label's samples.

    Returns
    -------
    pandas.DataFrame indexed by ``cluster`` (-1 first when there is noise, then 0, 1, ...)
        ``size`` and ``share`` (of all samples); ``dominant_label``, ``dominant_name`` and ``purity`` (share of the
        cluster with the dominant label); ``label_share`` (the share of the dominant label's samples that sit in
        this cluster); ``is_small`` (``label_share <= small_share``);
        ``smallness_rank`` (1 = the cluster smallest relative to its label; noise has none);
        ``distance_to_label_bulk`` (distance from the cluster's median to the median of all samples of its
        dominant label, in units of those samples' median distance to their median: near 0 for the label's
        bulk, several units for an island; the coordinate-wise median stays in the bulk as long as the island
        holds less than half the label; NaN without ``space`` and for noise); ``n_sources``, ``dominant_source``,
        ``source_purity`` and ``top_sources`` (text, e.g. ``"s1 62%, s0 20%, s3 18%"``; missing without
        ``sources``); ``mean_suspicion`` and ``max_suspicion`` (NaN without ``suspicion``); ``examples`` (list of
        ids: those closest to the cluster's median in ``space``, else the first ones; for noise the most
        suspicious, else the first ones); ``is_noise``.

    Raises
    ------
    InputError
        Lengths that differ, cluster ids below -1, NaN in ``space``, labels that are not class indices.
    """
    c = _check_clusters(clusters)
    n = len(c)
    if n == 0:
        raise InputError("clusters is empty; the table needs at least one sample")
    y = check_labels_against(labels, n, "clusters")
    s = None
    if space is not None:
        s = check_features(space, name="space")
        if len(s) != n:
            raise InputError(f"space has {len(s)} rows but clusters has {n} entries")
    id_arr, src, susp, names = _check_table_options(ids, sources, suspicion, class_names, n_examples, small_share,
                                                    y, "clusters")
    return _table(c, y, id_arr, src, susp, s, names, n_examples, small_share)


def _check_table_options(
    ids: Any, sources: Any, suspicion: Any, class_names: Any, n_examples: Any, small_share: Any, y: np.ndarray,
    other: str,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, tuple[str, ...] | None]:
    n = len(y)
    id_arr = check_ids(ids, n)
    src = None if sources is None else _check_strings(sources, n, "sources", other)
    susp = None
    if suspicion is not None:
        susp = check_scores(suspicion, name="suspicion")
        if len(susp) != n:
            raise InputError(f"suspicion has {len(susp)} entries but {other} has {n} rows")
    names = _check_class_names(class_names, y)
    check_int(n_examples, "n_examples", low=0)
    if isinstance(small_share, bool) or not isinstance(small_share, (int, float)) or not 0 < small_share <= 1:
        raise InputError(f"small_share must be a number in (0, 1]; got {small_share!r}")
    return id_arr, src, susp, names


def _table(
    c: np.ndarray,
    y: np.ndarray,
    id_arr: np.ndarray,
    src: np.ndarray | None,
    susp: np.ndarray | None,
    s: np.ndarray | None,
    names: tuple[str, ...] | None,
    n_examples: int,
    small_share: float,
) -> pd.DataFrame:
    """:func:`cluster_table` on checked inputs."""
    n = len(c)
    label_members = {int(y[g[0]]): g for g in class_members(y)}
    label_bulk: dict[int, tuple[np.ndarray, float]] = {}
    rows = []
    for members in class_members(c):
        k = int(c[members[0]])
        counts = np.bincount(y[members])
        dom = int(np.argmax(counts))
        row: dict[str, Any] = {
            "cluster": k,
            "size": len(members),
            "share": len(members) / n,
            "dominant_label": dom,
            "dominant_name": names[dom] if names is not None else str(dom),
            "purity": counts[dom] / len(members),
            "label_share": counts[dom] / len(label_members[dom]),
            "distance_to_label_bulk": np.nan,
            "n_sources": pd.NA,
            "dominant_source": None,
            "source_purity": np.nan,
            "top_sources": None,
            "mean_suspicion": np.nan,
            "max_suspicion": np.nan,
            "is_noise": k == -1,
        }
        if src is not None:
            row["n_sources"], row["dominant_source"], row["source_purity"], row["top_sources"] = _top_sources(
                src[members]
            )
        if susp is not None and not np.isnan(susp[members]).all():
            row["mean_suspicion"] = float(np.nanmean(susp[members]))
            row["max_suspicion"] = float(np.nanmax(susp[members]))
        order = np.arange(len(members))  # examples: first ones unless something better is known
        if k == -1:
            if susp is not None:
                order = np.lexsort((order, -np.nan_to_num(susp[members], nan=-np.inf)))
        elif s is not None:
            centre = _median_centre(s[members])
            order = np.argsort(np.linalg.norm(s[members] - centre, axis=1), kind="stable")
            if dom not in label_bulk:  # once per label, however many clusters it dominates
                pts = s[label_members[dom]]
                centre_of_label = _median_centre(pts)
                label_bulk[dom] = centre_of_label, float(np.median(np.linalg.norm(pts - centre_of_label, axis=1)))
            bulk, spread = label_bulk[dom]
            gap = float(np.linalg.norm(centre - bulk))
            row["distance_to_label_bulk"] = gap / spread if spread > 0 else (np.inf if gap > 0 else 0.0)
        row["examples"] = [str(i) for i in id_arr[members[order[:n_examples]]]]
        rows.append(row)

    table = pd.DataFrame(rows).set_index("cluster").sort_index()
    table["is_small"] = ~table["is_noise"] & (table["label_share"] <= small_share)
    rank = table.loc[~table["is_noise"]].sort_values(["label_share", "size"], kind="stable")
    table["smallness_rank"] = pd.Series(np.arange(1, len(rank) + 1), index=rank.index).astype("Int64")
    table["n_sources"] = table["n_sources"].astype("Int64")
    columns = ["size", "share", "dominant_label", "dominant_name", "purity", "label_share", "is_small",
               "smallness_rank", "distance_to_label_bulk", "n_sources", "dominant_source", "source_purity",
               "top_sources", "mean_suspicion", "max_suspicion", "examples", "is_noise"]
    return table[columns]


# ------------------------------------------------------------------------------------------------ the map
@dataclasses.dataclass(frozen=True)
class MapResult:
    """The map of a training set, row ``i`` of every array belonging to sample ``ids[i]``.

    Attributes
    ----------
    ids : ndarray of str (object), shape (n,)
    coords : ndarray of float32, shape (n, 2)
        The 2-D display map.
    space : ndarray of float32, shape (n, k), k <= 10
        The space the clusters were found in.
    clusters : ndarray of int64, shape (n,)
        HDBSCAN cluster of each sample, -1 for noise.
    table : pandas.DataFrame
        :func:`cluster_table` of the clusters.
    params : dict
        Every option, the seeds, the rows fitted on, and the versions of umap-learn, hdbscan, scikit-learn and
        numpy.
    class_coords : dict of int to ndarray of float32 (n_c, 2), or None
        With ``per_class=True``: a 2-D map of each class on its own, rows in dataset order of that class's samples
        (``class_coords[c][j]`` is sample ``ids[labels == c][j]``).
    """

    ids: np.ndarray
    coords: np.ndarray
    space: np.ndarray
    clusters: np.ndarray
    table: pd.DataFrame
    params: dict[str, Any]
    class_coords: dict[int, np.ndarray] | None = None

    def points(self) -> pd.DataFrame:
        """One row per sample, indexed by ``sample_id``: ``x``, ``y`` (the display map) and ``cluster``."""
        return pd.DataFrame(
            {"x": self.coords[:, 0], "y": self.coords[:, 1], "cluster": self.clusters},
            index=pd.Index(self.ids.astype(str), name="sample_id"),
        )


def _versions() -> dict[str, str]:
    return {pkg: version(pkg) for pkg in ("umap-learn", "hdbscan", "scikit-learn", "numpy")}


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def build_map(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    ids: Sequence[Any],
    sources: Sequence[Any] | None = None,
    suspicion: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    random_state: int | None = 0,
    per_class: bool = False,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    pca_dims: int = 50,
    fit_sample: int = 20_000,
    standardize: bool = False,
    cluster_method: Literal["umap", "pca"] = "umap",
    cluster_dims: int = 8,
    cluster_neighbors: int = 30,
    min_cluster_size: int | None = None,
    min_samples: int | None = None,
    cluster_fit_sample: int = DEFAULT_CLUSTER_FIT_SAMPLE,
    n_examples: int = 5,
    small_share: float = DEFAULT_SMALL_SHARE,
    cache_dir: str | os.PathLike | None = None,
) -> MapResult:
    """The map of a training set in one call: display coordinates, clustering space, clusters and their table.

    PCA runs once and feeds both the 2-D map (:func:`project_2d`) and the clustering space
    (:func:`cluster_space`); HDBSCAN (:func:`find_clusters`) runs on the latter; :func:`cluster_table`
    summarizes the clusters. Look first at small clusters far from their label's bulk (``is_small`` and a high
    ``distance_to_label_bulk``): a cluster is never suspicious merely for being the smaller half of a class.

    Parameters
    ----------
    features : ndarray of shape (n, d)
        Activations (e.g. the penultimate layer), one row per sample.
    labels : ndarray of shape (n,), int
        Given class of each sample.
    ids, sources, suspicion, class_names
        As in :func:`cluster_table`.
    random_state : int or None, default 0
        One seed for PCA, the samples, both UMAPs and the HDBSCAN sample; an integer makes every array identical
        from run to run (and UMAP single-threaded); None lets UMAP use every core.
    per_class : bool, default False
        Also map each class on its own (``class_coords``); a class with ``n_neighbors`` samples or fewer has
        no map (a warning is logged).
    n_neighbors, min_dist, pca_dims, fit_sample, standardize
        As in :func:`project_2d` (``fit_sample`` and ``standardize`` also apply to the clustering space).
    cluster_method, cluster_dims, cluster_neighbors
        ``method``, ``n_components`` and ``n_neighbors`` of :func:`cluster_space`.
    min_cluster_size, min_samples, cluster_fit_sample
        As in :func:`find_clusters`.
    n_examples, small_share
        As in :func:`cluster_table`.
    cache_dir : path, optional
        Keep the coordinates, the clustering space and the clusters in this folder (``~`` is expanded), keyed
        by the features, the labels, every option above that shapes them and the library versions: the same map
        is then read back instead of recomputed (a seeded map only; ``random_state=None`` is never cached). The
        cluster table is always rebuilt, since the suspicion it summarizes may have changed. A damaged entry is
        recomputed.

    Returns
    -------
    MapResult

    Raises
    ------
    InputError
        As the functions it calls: NaN or infinite features, lengths that differ, too few rows, options out of
        range.
    """
    x = check_features(features)
    n = len(x)
    y = check_labels_against(labels, n, "features")
    id_arr, src, susp, names = _check_table_options(ids, sources, suspicion, class_names, n_examples, small_share,
                                                    y, "features")
    seed = _check_seed(random_state)
    for value, name in ((n_neighbors, "n_neighbors"), (cluster_neighbors, "cluster_neighbors")):
        check_int(value, name, low=2)
    check_int(pca_dims, "pca_dims", low=2)
    check_int(fit_sample, "fit_sample", low=max(n_neighbors, cluster_neighbors) + 1)
    if not isinstance(per_class, bool):
        raise InputError(f"per_class must be True or False; got {per_class!r}")
    check_int(cluster_fit_sample, "cluster_fit_sample", low=2)
    k = check_int(cluster_dims, "cluster_dims", low=1, high=MAX_CLUSTER_DIMS)
    if k >= x.shape[1]:
        raise InputError(f"cluster_dims = {k} must be below the number of feature columns ({x.shape[1]})")
    if k > pca_dims:
        raise InputError(f"cluster_dims = {k} must be at most pca_dims = {pca_dims}")
    if cluster_method not in ("umap", "pca"):
        raise InputError(f'cluster_method must be "umap" or "pca"; got {cluster_method!r}')
    if min_cluster_size is not None:
        check_int(min_cluster_size, "min_cluster_size", low=2)
    if min_samples is not None:
        check_int(min_samples, "min_samples", low=1)
    min_dist = _check_min_dist(min_dist)
    _check_rows_for_umap(x, n_neighbors)
    if cluster_method == "umap":
        _check_rows_for_umap(x, cluster_neighbors, "cluster_neighbors")

    options = {
        "random_state": seed, "n_neighbors": n_neighbors, "min_dist": min_dist, "pca_dims": pca_dims,
        "standardize": bool(standardize), "fit_sample": fit_sample, "cluster_method": cluster_method,
        "cluster_dims": k, "cluster_neighbors": cluster_neighbors, "min_cluster_size": min_cluster_size,
        "min_samples": min_samples, "cluster_fit_sample": cluster_fit_sample, "per_class": bool(per_class),
    }
    entry = None
    if cache_dir is not None and seed is not None:
        entry = Path(cache_dir).expanduser() / f"map-{_map_key(x, y, options)}"
    cached = None if entry is None else _read_map_cache(entry, n)
    if cached is not None:
        coords, space, clusters, class_coords, params = cached
    else:
        coords, space, clusters, class_coords, params = _compute_map(x, y, options)
        if entry is not None:
            try:
                _write_map_cache(entry, coords, space, clusters, class_coords, params)
            except OSError as e:
                logger.warning("could not write the map cache to %s (%s); the map is not cached", entry, e)
    table = _table(clusters, y, id_arr, src, susp, space, names, n_examples, small_share)
    return MapResult(ids=_frozen(id_arr), coords=_frozen(coords), space=_frozen(space), clusters=_frozen(clusters),
                     table=table, params=params, class_coords=class_coords)


def _compute_map(
    x: np.ndarray, y: np.ndarray, o: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray] | None, dict[str, Any]]:
    """The expensive half of :func:`build_map`: PCA, both UMAPs, HDBSCAN (and the per-class maps)."""
    n, seed = len(x), o["random_state"]
    rows = _fit_rows(n, o["fit_sample"], y, seed)
    z, reduced = _reduce(x, rows, pca_dims=o["pca_dims"], standardize=o["standardize"], random_state=seed)
    coords = _umap(z, rows, n_components=2, n_neighbors=o["n_neighbors"], min_dist=o["min_dist"],
                   random_state=seed)
    space = _space(z, rows, is_pca=reduced["pca_dims_used"] is not None, method=o["cluster_method"],
                   n_components=o["cluster_dims"], n_neighbors=o["cluster_neighbors"], random_state=seed)
    clusters, mcs, ms, n_cluster_fit = _hdbscan(space, min_cluster_size=o["min_cluster_size"],
                                                min_samples=o["min_samples"], fit_sample=o["cluster_fit_sample"],
                                                random_state=seed)
    class_coords = None
    if o["per_class"]:
        class_coords = {}
        for members in class_members(y):
            label = int(y[members[0]])
            if len(members) <= o["n_neighbors"]:
                logger.warning("build_map: class %d has %d samples, too few for a map with n_neighbors = %d; "
                               "it has no per-class map", label, len(members), o["n_neighbors"])
                continue
            zc = z[members]
            class_coords[label] = _frozen(_umap(zc, _fit_rows(len(zc), o["fit_sample"], None, seed),
                                                n_components=2, n_neighbors=o["n_neighbors"],
                                                min_dist=o["min_dist"], random_state=seed))
    params = {
        "n_samples": n,
        "n_features": x.shape[1],
        "random_state": seed,
        "n_neighbors": o["n_neighbors"],
        "min_dist": o["min_dist"],
        "pca_dims": o["pca_dims"],
        **reduced,
        "standardize": o["standardize"],
        "fit_sample": o["fit_sample"],
        "n_fit_rows": n if rows is None else len(rows),
        "cluster_method": o["cluster_method"],
        "cluster_dims": o["cluster_dims"],
        "cluster_neighbors": o["cluster_neighbors"],
        "cluster_min_dist": 0.0,
        "min_cluster_size": mcs,
        "min_samples": ms,
        "cluster_fit_sample": o["cluster_fit_sample"],
        "n_cluster_fit_rows": n_cluster_fit,
        "n_clusters": int(clusters.max()) + 1 if len(clusters) else 0,
        "noise_share": float(np.mean(clusters == -1)),
        "per_class": o["per_class"],
        "versions": _versions(),
    }
    return coords, space, clusters, class_coords, params


# ------------------------------------------------------------------------------------------------ map cache
#: Bumped whenever what a cache entry holds, or how it is computed, changes.
_MAP_CACHE_FORMAT = 2


def _map_key(x: np.ndarray, y: np.ndarray, options: dict[str, Any]) -> str:
    """Hex key of a map: the features' and labels' bytes, the options and the library versions."""
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps({"format": _MAP_CACHE_FORMAT, "shape": list(x.shape), "options": options,
                         "versions": _versions()}, sort_keys=True).encode())
    for start in range(0, len(x), 100_000):  # bounded copies, also for memory-mapped features
        h.update(np.ascontiguousarray(x[start : start + 100_000], dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


def _write_map_cache(entry: Path, coords: np.ndarray, space: np.ndarray, clusters: np.ndarray,
                     class_coords: dict[int, np.ndarray] | None, params: dict[str, Any]) -> None:
    """The arrays in one ``.npz``, then a ``.json`` with its checksum and the params (written last: the entry)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"coords": coords, "space": space, "clusters": clusters,
              **{f"class_{label}": a for label, a in (class_coords or {}).items()}}
    digest = atomic_write_with(entry.with_suffix(".npz"),
                               lambda tmp: np.savez(tmp, allow_pickle=False, **arrays))
    meta = {"format": _MAP_CACHE_FORMAT, "blake2b": digest, "per_class": class_coords is not None,
            "params": params}
    atomic_write_text(entry.with_suffix(".json"), json.dumps(meta, indent=1))


def _read_map_cache(entry: Path, n: int) -> tuple | None:
    """The cached arrays and params, or None (with a warning when the entry is damaged) to recompute them."""
    meta_path, npz_path = entry.with_suffix(".json"), entry.with_suffix(".npz")
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["format"] != _MAP_CACHE_FORMAT or file_digest(npz_path) != meta["blake2b"]:
            logger.warning("map cache entry %s does not match its checksum or format; recomputing", npz_path)
            return None
        with np.load(npz_path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        coords, space, clusters = arrays.pop("coords"), arrays.pop("space"), arrays.pop("clusters")
        if coords.shape != (n, 2) or len(space) != n or clusters.shape != (n,):
            logger.warning("map cache entry %s holds arrays of the wrong length; recomputing", npz_path)
            return None
        class_coords = ({int(k.removeprefix("class_")): _frozen(a) for k, a in arrays.items()}
                        if meta["per_class"] else None)
        return coords, space, clusters, class_coords, meta["params"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("map cache entry %s is unreadable (%s: %s); recomputing", entry, type(e).__name__, e)
        return None


__all__ = [
    "MAX_CLUSTER_DIMS",
    "MapResult",
    "build_map",
    "cluster_space",
    "cluster_table",
    "default_min_cluster_size",
    "find_clusters",
    "project_2d",
]
