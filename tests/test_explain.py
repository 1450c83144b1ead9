"""explain_clusters: what sets a cluster apart, with the chance of it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from forensics.errors import InputError
from forensics.explain import EXPLAIN_COLUMNS, describe_cluster, explain_clusters


def _planted():
    rng = np.random.default_rng(0)
    n = 1000
    clusters = np.where(np.arange(n) < 40, 3, rng.integers(0, 3, n))
    clusters[40:60] = -1
    meta = pd.DataFrame({"source": rng.choice([f"w{i}" for i in range(20)], n),
                         "camera": rng.choice(["a", "b"], n), "when": np.arange(n) * 1.5})
    meta.loc[:29, "source"] = "w7"  # 30 of cluster 3's 40 from one contributor, who has ~50 samples overall
    return clusters, meta


def test_the_planted_source_explains_its_cluster_and_nothing_else_stands_out():
    clusters, meta = _planted()
    table = explain_clusters(clusters, meta)
    assert list(table.columns) == list(EXPLAIN_COLUMNS)
    [row] = table.itertuples()
    assert (row.cluster, row.column, row.value, row.cluster_size) == (3, "source", "w7", 40)
    total = int((meta["source"] == "w7").sum())
    assert row.in_cluster == int((meta["source"][:40] == "w7").sum()) and row.share_overall == total / 1000
    expected = -np.log10(stats.hypergeom.sf(row.in_cluster - 1, 1000, total, 40) * 20)  # 20 values tested
    assert row.log10_p == pytest.approx(expected)
    assert describe_cluster(table, 3) == f"source w7: {row.share_in_cluster:.0%} here, {total / 1000:.0%} overall"
    assert describe_cluster(table, 0) == ""
    # the timestamps (1000 distinct values) are left out; noise (-1) is never explained
    assert "when" not in set(table["column"]) and -1 not in set(table["cluster"])


def test_errors_name_the_problem():
    clusters, meta = _planted()
    with pytest.raises(InputError, match="metadata has 999 rows but clusters has 1000 entries"):
        explain_clusters(clusters, meta.iloc[:-1])
    with pytest.raises(InputError, match="clusters must be a 1-D array of integer cluster ids"):
        explain_clusters(clusters.astype(float), meta)
    with pytest.raises(InputError, match="metadata must be a DataFrame"):
        explain_clusters(clusters, meta.to_numpy())


def test_an_investigation_explains_its_clusters_with_the_users_own_columns():
    from types import SimpleNamespace

    from forensics import Dataset, Investigation

    clusters, meta = _planted()
    n = len(clusters)
    ds = Dataset.from_numpy(np.zeros((n, 4, 4), np.uint8) + (np.arange(n) % 250)[:, None, None].astype(np.uint8),
                            np.arange(n) % 2, sources=list(meta["source"]), ids=[f"s{i}" for i in range(n)])

    def builder(features, labels, *, ids, sources, suspicion, class_names):
        return SimpleNamespace(coords=np.zeros((n, 2)), clusters=clusters, table=pd.DataFrame({"size": [1]}))

    inv = Investigation(ds, signals=pd.DataFrame({"suspicion": np.zeros(n), "reasons": [""] * n},
                                                 index=pd.Index(ds.ids, name="sample_id")),
                        features=np.ones((n, 2), np.float32), map_builder=builder)
    camera = pd.DataFrame({"camera": np.where(np.arange(n) < 40, "c9", "c1")}, index=ds.ids)
    table = inv.explain_clusters(camera)
    found = {(r.column, r.value) for r in table[table["cluster"] == 3].itertuples()}
    assert found == {("source", "w7"), ("camera", "c9")}
    with pytest.raises(InputError, match=r"metadata has no row for 1 sample\(s\), for example \['s999'\]"):
        inv.explain_clusters(camera.iloc[:-1])
