"""The map: deterministic UMAP pictures, a <= 10-D clustering space, HDBSCAN clusters and the cluster table."""

from __future__ import annotations

import dataclasses

import hdbscan
import numpy as np
import pandas as pd
import pytest
import umap

from forensics import embedding
from forensics.embedding import (
    MapResult,
    build_map,
    cluster_space,
    cluster_table,
    default_min_cluster_size,
    find_clusters,
    project_2d,
)
from forensics.errors import InputError

N_CLASSES, PER_CLASS, N_PLANTED, N_OUTLIERS, DIM = 4, 180, 40, 6, 24


@pytest.fixture(scope="module")
def planted():
    """Four Gaussian classes, a tight island of 40 samples labelled class 0 far from class 0, and 6 outliers."""
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 6, (N_CLASSES, DIM))
    x = [rng.normal(centres[c], 1.0, (PER_CLASS, DIM)) for c in range(N_CLASSES)]
    y = [np.full(PER_CLASS, c) for c in range(N_CLASSES)]
    island = centres[0] + rng.normal(0, 1, DIM) / np.sqrt(DIM) * 14  # 14 class-0 spreads away, between classes
    x.append(rng.normal(island, 0.25, (N_PLANTED, DIM)))
    y.append(np.zeros(N_PLANTED, dtype=int))
    x.append(rng.uniform(-20, 20, (N_OUTLIERS, DIM)))
    y.append(np.arange(N_OUTLIERS) % N_CLASSES)
    x = np.vstack(x).astype(np.float32)
    y = np.concatenate(y).astype(np.int64)
    is_planted = np.zeros(len(x), bool)
    is_planted[N_CLASSES * PER_CLASS : N_CLASSES * PER_CLASS + N_PLANTED] = True
    ids = np.array([f"s{i:04d}" for i in range(len(x))], dtype=object)
    sources = np.where(is_planted, "mallory", np.array(["alice", "bob"])[np.arange(len(x)) % 2])
    suspicion = is_planted * 5.0 + rng.uniform(0, 1, len(x))
    return dict(x=x, y=y, is_planted=is_planted, ids=ids, sources=sources, suspicion=suspicion)


@pytest.fixture(scope="module")
def result(planted) -> MapResult:
    return build_map(planted["x"], planted["y"], ids=planted["ids"], sources=planted["sources"],
                     suspicion=planted["suspicion"], class_names=["a", "b", "c", "d"], random_state=0)


def _planted_cluster(result: MapResult, is_planted: np.ndarray) -> int:
    ks, counts = np.unique(result.clusters[is_planted & (result.clusters >= 0)], return_counts=True)
    return int(ks[np.argmax(counts)])


# ------------------------------------------------------------------------------------------------ build_map
def test_planted_island_is_its_own_small_distant_cluster(result, planted):
    k = _planted_cluster(result, planted["is_planted"])
    members = result.clusters == k
    assert planted["is_planted"][members].mean() >= 0.9
    assert planted["is_planted"][members].sum() >= 0.9 * N_PLANTED
    row = result.table.loc[k]
    assert row["size"] == members.sum()
    assert row["dominant_label"] == 0 and row["dominant_name"] == "a"
    assert bool(row["is_small"]) and row["smallness_rank"] == 1
    assert row["dominant_source"] == "mallory" and row["source_purity"] >= 0.9
    # The island sits many spreads away from class 0's bulk; the clean classes' clusters are the bulk itself.
    others = result.table.drop(index=[k, -1], errors="ignore")["distance_to_label_bulk"]
    assert row["distance_to_label_bulk"] > 3
    assert row["distance_to_label_bulk"] > 3 * others.max()
    assert row["mean_suspicion"] == result.table["mean_suspicion"].max()
    assert set(row["examples"]) <= set(planted["ids"][planted["is_planted"]])
    assert len(row["examples"]) == 5


def test_clean_classes_are_not_small(result, planted):
    clean = result.table[~result.table["is_noise"] & (result.table["dominant_source"] != "mallory")]
    assert len(clean) == N_CLASSES
    assert not clean["is_small"].any()
    assert (clean["purity"] >= 0.95).all()


def test_table_sizes_are_exact(result, planted):
    table = result.table
    ks, counts = np.unique(result.clusters, return_counts=True)
    assert list(table.index) == list(ks)
    assert table["size"].tolist() == counts.tolist()
    assert table["share"].sum() == pytest.approx(1.0)
    assert table["size"].sum() == len(planted["x"])


def test_noise_row_is_marked(result, planted):
    # UMAP ties every point to its neighbours, so this fixture has no noise; five far, scattered points in the
    # clustering space are noise for HDBSCAN.
    assert -1 not in result.table.index
    far = np.random.default_rng(0).uniform(-1, 1, (5, result.space.shape[1])) * 1000
    space = np.vstack([result.space, far]).astype(np.float32)
    clusters = find_clusters(space)
    assert clusters[-5:].tolist() == [-1] * 5 and (clusters[:-5] >= 0).all()
    labels = np.concatenate([planted["y"], [0, 1, 1, 2, 3]])
    ids = [*planted["ids"], "n1", "n2", "n3", "n4", "n5"]
    suspicion = np.concatenate([planted["suspicion"], [0.1, 0.9, 0.5, 0.3, 0.7]])
    table = cluster_table(clusters, labels, ids=ids, suspicion=suspicion, space=space, n_examples=3)
    noise = table.loc[-1]
    assert table.index[0] == -1 and table["is_noise"].tolist() == [True] + [False] * (len(table) - 1)
    assert noise["size"] == 5 and noise["dominant_label"] == 1 and noise["purity"] == pytest.approx(0.4)
    assert not noise["is_small"] and pd.isna(noise["smallness_rank"]) and np.isnan(noise["distance_to_label_bulk"])
    assert noise["examples"] == ["n2", "n5", "n3"]  # most suspicious first


def test_shapes_params_and_frozen_result(result, planted):
    n = len(planted["x"])
    assert result.coords.shape == (n, 2) and result.coords.dtype == np.float32
    assert result.space.shape == (n, 8) and result.space.dtype == np.float32
    assert result.space.shape[1] <= embedding.MAX_CLUSTER_DIMS  # HDBSCAN never sees more than 10 columns
    assert result.clusters.shape == (n,)
    assert result.params["random_state"] == 0
    assert result.params["min_cluster_size"] == default_min_cluster_size(n) == 15
    assert result.params["pca_dims_used"] is None  # 24 columns: nothing for PCA to cut
    assert result.params["versions"]["umap-learn"] == umap.__version__
    assert "hdbscan" in result.params["versions"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.coords = None  # type: ignore[misc]
    with pytest.raises(ValueError):
        result.clusters[0] = 3
    points = result.points()
    assert points.index.name == "sample_id" and points.loc["s0000", "cluster"] == result.clusters[0]


@pytest.mark.slow
def test_deterministic_and_per_class_maps(result, planted):
    again = build_map(planted["x"], planted["y"], ids=planted["ids"], sources=planted["sources"],
                      suspicion=planted["suspicion"], class_names=["a", "b", "c", "d"], random_state=0,
                      per_class=True)
    np.testing.assert_array_equal(again.coords, result.coords)
    np.testing.assert_array_equal(again.space, result.space)
    np.testing.assert_array_equal(again.clusters, result.clusters)
    pd.testing.assert_frame_equal(again.table, result.table)
    assert result.class_coords is None
    assert sorted(again.class_coords) == list(range(N_CLASSES))
    for c, xy in again.class_coords.items():
        assert xy.shape == ((planted["y"] == c).sum(), 2) and np.isfinite(xy).all()


def test_map_cache_reads_back_the_same_map(result, planted, tmp_path, monkeypatch, caplog):
    kw = dict(ids=planted["ids"], sources=planted["sources"], class_names=["a", "b", "c", "d"], random_state=0,
              per_class=True, cache_dir=tmp_path)
    first = build_map(planted["x"], planted["y"], suspicion=planted["suspicion"], **kw)
    np.testing.assert_array_equal(first.coords, result.coords)
    assert len(list(tmp_path.glob("map-*.npz"))) == 1 and len(list(tmp_path.glob("map-*.json"))) == 1

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cached map was recomputed")

    monkeypatch.setattr(embedding, "_compute_map", no_recompute)
    # A new suspicion changes only the table, which is rebuilt from the cached clusters.
    again = build_map(planted["x"], planted["y"], suspicion=planted["suspicion"] * 2, **kw)
    np.testing.assert_array_equal(again.coords, first.coords)
    np.testing.assert_array_equal(again.space, first.space)
    np.testing.assert_array_equal(again.clusters, first.clusters)
    assert sorted(again.class_coords) == sorted(first.class_coords)
    assert again.params == first.params
    np.testing.assert_allclose(again.table["mean_suspicion"], first.table["mean_suspicion"] * 2)

    # Other labels are another map: the cache is not consulted, so the recompute is attempted.
    with pytest.raises(AssertionError, match="recomputed"):
        build_map(planted["x"], (planted["y"] + 1) % N_CLASSES, suspicion=planted["suspicion"], **kw)
    monkeypatch.undo()

    # A damaged entry is recomputed, with a warning, and rewritten.
    npz = next(tmp_path.glob("map-*.npz"))
    npz.write_bytes(npz.read_bytes()[:-10])
    with caplog.at_level("WARNING", logger="forensics.embedding"):
        fixed = build_map(planted["x"], planted["y"], suspicion=planted["suspicion"], **kw)
    assert "recomputing" in caplog.text
    np.testing.assert_array_equal(fixed.coords, first.coords)
    # An unseeded map is never cached.
    before = sorted(p.name for p in tmp_path.iterdir())
    build_map(planted["x"], planted["y"], **{**kw, "random_state": None, "per_class": False})
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------------------------------------------ fit on a sample
@pytest.mark.slow
def test_fit_sample_path_places_the_rest_where_umap_would_start_them(planted, monkeypatch):
    calls = []
    original = embedding._place_rest

    def spy(emb, fit, rest, k):
        calls.append(len(rest))
        return original(emb, fit, rest, k)

    monkeypatch.setattr(embedding, "_place_rest", spy)
    monkeypatch.setattr(umap.UMAP, "transform", lambda *a, **k: pytest.fail("no pynndescent index is built"))
    x, y = planted["x"][::2], planted["y"][::2]
    a = project_2d(x, labels=y, fit_sample=150, random_state=3)
    assert sum(calls) == len(x) - 150
    b = project_2d(x, labels=y, fit_sample=150, random_state=3)
    assert a.shape == (len(x), 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # A placed row lands among the fitted rows of its own kind: the planted island with the island.
    fitted = embedding._fit_rows(len(x), 150, y, 3)
    rest = np.setdiff1d(np.arange(len(x)), fitted)
    planted_rows = planted["is_planted"][::2]
    from sklearn.neighbors import KNeighborsClassifier

    near = KNeighborsClassifier(n_neighbors=5).fit(a[fitted], planted_rows[fitted]).predict(a[rest])
    assert np.mean(near == planted_rows[rest]) > 0.95


def test_place_rest_weights_the_nearest_fitted_rows():
    fit = np.array([[0.0], [1.0], [2.0], [3.0], [20.0], [21.0], [22.0], [23.0]], dtype=np.float32)
    emb = fit[:, [0, 0]] * [1.0, -1.0]  # a 2-D "embedding" that mirrors the line
    placed = embedding._place_rest(emb, fit, np.array([[0.2], [22.9]], np.float32), 4)
    # Each lies among its own group, nearer its nearest fitted row than the plain mean of its 4 neighbours.
    assert 0.0 <= placed[0, 0] < 1.5 and placed[0, 1] == -placed[0, 0]
    assert 21.5 < placed[1, 0] <= 23.0


def test_fit_rows_are_stratified_by_label():
    labels = np.repeat([0, 1, 2], [700, 200, 100])
    rows = embedding._fit_rows(1000, 100, labels, 0)
    assert len(rows) == 100 and len(np.unique(rows)) == 100
    assert np.bincount(labels[rows]).tolist() == [70, 20, 10]
    assert embedding._fit_rows(100, 100, labels[:100], 0) is None


def test_find_clusters_on_a_sample_keeps_the_island(result, planted, monkeypatch):
    full = find_clusters(result.space)
    np.testing.assert_array_equal(full, result.clusters)
    fitted, predicted = [], []
    fit, predict = hdbscan.HDBSCAN.fit, hdbscan.approximate_predict
    monkeypatch.setattr(hdbscan.HDBSCAN, "fit", lambda self, x, *a, **k: fitted.append(x.shape) or fit(self, x, *a, **k))
    monkeypatch.setattr(hdbscan, "approximate_predict", lambda c, x: predicted.append(x.shape) or predict(c, x))
    sampled = find_clusters(result.space, fit_sample=400, random_state=1)
    assert fitted == [(400, 8)] and predicted == [(len(planted["x"]) - 400, 8)]
    k = _planted_cluster(MapResult(result.ids, result.coords, result.space, sampled, result.table, {}),
                         planted["is_planted"])
    assert planted["is_planted"][sampled == k].mean() >= 0.9
    assert (sampled == k).sum() >= 0.9 * N_PLANTED


def test_pca_cluster_space_is_the_leading_components(planted):
    from sklearn.decomposition import PCA

    x = planted["x"]
    space = cluster_space(x, method="pca", n_components=5)
    expected = PCA(n_components=5, random_state=0).fit_transform(x)
    assert space.shape == (len(x), 5)
    np.testing.assert_allclose(np.abs(space), np.abs(expected), atol=1e-3)


# ------------------------------------------------------------------------------------------------ cluster_table
def test_cluster_table_exact_values():
    clusters = np.array([-1, 0, 0, 0, 0, 1, 1, 0])
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 1])
    ids = [f"x{i}" for i in range(8)]
    sources = ["a", "a", "a", "b", "b", "c", "c", "a"]
    suspicion = np.array([0.5, 1.0, 2.0, 3.0, np.nan, 9.0, 7.0, 0.0])
    space = np.array([[9, 9], [0, 0], [1, 0], [0, 1], [1, 1], [10, 0], [10, 2], [0.5, 0.5]], dtype=np.float32)
    t = cluster_table(clusters, labels, ids=ids, sources=sources, suspicion=suspicion, space=space,
                      class_names=["cat", "dog"], n_examples=2)
    assert t.index.tolist() == [-1, 0, 1] and t.index.name == "cluster"
    assert t["size"].tolist() == [1, 5, 2]
    assert t.loc[0, "dominant_name"] == "cat" and t.loc[0, "purity"] == pytest.approx(3 / 5)
    assert t.loc[0, "label_share"] == pytest.approx(3 / 5) and t.loc[1, "label_share"] == pytest.approx(2 / 5)
    assert t.loc[0, "top_sources"] == "a 60%, b 40%" and t.loc[1, "dominant_source"] == "c"
    assert t.loc[0, "mean_suspicion"] == pytest.approx(1.5) and t.loc[1, "max_suspicion"] == 9.0
    assert t.loc[0, "examples"] == ["x7", "x1"]  # closest to the cluster's median (0.5, 0.5)
    # Label 0's five samples have median (1, 0) and median distance sqrt(2) to it; cluster 1's median is (10, 1),
    # cluster 0's (0.5, 0.5).
    assert t.loc[1, "distance_to_label_bulk"] == pytest.approx(np.sqrt(82) / np.sqrt(2), rel=1e-5)
    assert t.loc[0, "distance_to_label_bulk"] == pytest.approx(0.5, rel=1e-5)
    assert t["is_small"].tolist() == [False, False, False]
    assert t.loc[0, "smallness_rank"] == 2 and t.loc[1, "smallness_rank"] == 1
    assert bool(t.loc[-1, "is_noise"]) and t.loc[-1, "dominant_name"] == "dog"
    loose = cluster_table(clusters, labels, ids=ids, small_share=0.4)
    assert loose["is_small"].tolist() == [False, False, True]
    assert loose["distance_to_label_bulk"].isna().all() and loose["top_sources"].isna().all()
    assert loose.loc[0, "examples"] == ["x1", "x2", "x3", "x4", "x7"]


# ------------------------------------------------------------------------------------------------ errors
def test_input_errors(planted):
    x, y, ids = planted["x"], planted["y"], planted["ids"]
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match=r"features has 1 NaN or infinite value\(s\) in 1 row\(s\), first at row 3"):
        build_map(bad, y, ids=ids)
    with pytest.raises(InputError, match="labels has 5 entries but features has 766 rows"):
        build_map(x, y[:5], ids=ids)
    with pytest.raises(InputError, match="ids has 3 entries but there are 766 samples"):
        build_map(x, y, ids=ids[:3])
    with pytest.raises(InputError, match="sources has 2 entries but features has 766 rows"):
        build_map(x, y, ids=ids, sources=["a", "b"])
    with pytest.raises(InputError, match="features has 10 rows; UMAP with n_neighbors = 15 needs at least 16"):
        project_2d(x[:10])
    with pytest.raises(InputError, match="n_components must be an integer in \\[1, 10\\]; got 12"):
        cluster_space(x, n_components=12)
    with pytest.raises(InputError, match="cluster_dims = 8 must be at most pca_dims = 5"):
        build_map(x, y, ids=ids, pca_dims=5)
    with pytest.raises(InputError, match='method must be "umap" or "pca"'):
        cluster_space(x, method="tsne")
    with pytest.raises(InputError, match="space has 24 columns; HDBSCAN is given at most 10"):
        find_clusters(x)
    with pytest.raises(InputError, match="min_cluster_size = 50 needs at least that many"):
        find_clusters(x[:20, :5], min_cluster_size=50)
    with pytest.raises(InputError, match="labels has class 3 but class_names has only 2 names"):
        cluster_table(np.zeros(len(y), int), y, ids=ids, class_names=["a", "b"])
    with pytest.raises(InputError, match="clusters must be -1 \\(noise\\) or a cluster id >= 0; found -2"):
        cluster_table(np.full(len(y), -2), y, ids=ids)
    with pytest.raises(InputError, match="random_state must be an integer"):
        project_2d(x, random_state=1.5)


def test_a_disconnected_neighbour_graph_is_logged_not_warned(caplog):
    import logging
    import warnings

    # Four separate classes and a tight island: UMAP's spectral start sees a graph in several pieces.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    centres = rng.normal(scale=6.0, size=(4, 16))
    x = centres[y] + rng.normal(size=(400, 16))
    x[:20] = centres[0] + 8.0 + 0.3 * rng.normal(size=(20, 16))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="forensics"):
        warnings.simplefilter("always")
        embedding.build_map(x.astype(np.float32), y, ids=[f"s{i}" for i in range(400)], random_state=7)
    assert not [w for w in caught if "not fully connected" in str(w.message)]
    assert "the neighbour graph falls into separate groups" in caplog.text
