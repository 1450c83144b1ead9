"""What sets a cluster apart: the metadata values it holds far more often than the rest of the data.

The first question an analyst asks of a small island on the map is whether it is one contributor, one camera, one
day. :func:`explain_clusters` answers it for any columns of per-sample metadata (source, label, or the user's own:
device, date, shard...): for each cluster and column, the value most over-represented in the cluster, with the
hypergeometric probability of holding that many by chance, Bonferroni-corrected over the values of the column.
Pure pandas and scipy; nothing here reads a model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ._validate import check_int
from .errors import InputError

#: Columns of :func:`explain_clusters`' table.
EXPLAIN_COLUMNS = ("cluster", "column", "value", "in_cluster", "cluster_size", "share_in_cluster", "share_overall",
                   "log10_p")


def explain_clusters(clusters: Any, metadata: pd.DataFrame, *, max_values: int = 1000,
                     min_log10_p: float = 2.0) -> pd.DataFrame:
    """The over-represented metadata values of each cluster.

    Parameters
    ----------
    clusters : array of int, shape (n,)
        Each sample's cluster (-1 for noise, which is not explained).
    metadata : DataFrame, n rows in the same order
        One column per kind of metadata. Values are compared as text; missing values are their own value
        ("<missing>"). Numeric columns with more than ``max_values`` distinct values (timestamps, scores) are left
        out: bin them first (for example by day).
    max_values : int
        Columns with more distinct values are left out.
    min_log10_p : float
        Only values whose corrected ``-log10`` p-value reaches this are listed (2: 1 in 100 by chance).

    Returns
    -------
    DataFrame with :data:`EXPLAIN_COLUMNS`, strongest first within each cluster, clusters in increasing order:
    ``value`` of ``column`` is held by ``in_cluster`` of the cluster's ``cluster_size`` samples
    (``share_in_cluster``) against ``share_overall`` of all samples; ``log10_p`` is ``-log10`` of the
    Bonferroni-corrected hypergeometric tail probability.
    """
    c = np.asarray(clusters)
    if c.ndim != 1 or c.dtype.kind not in "iu":
        raise InputError(f"clusters must be a 1-D array of integer cluster ids; got {c.dtype} of shape {c.shape}")
    if not isinstance(metadata, pd.DataFrame):
        raise InputError(f"metadata must be a DataFrame; got {type(metadata).__name__}")
    if len(metadata) != len(c):
        raise InputError(f"metadata has {len(metadata)} rows but clusters has {len(c)} entries")
    check_int(max_values, "max_values", low=2)
    n = len(c)
    rows = []
    for column in metadata.columns:
        values = metadata[column].astype(object).where(metadata[column].notna(), "<missing>").astype(str).to_numpy()
        names, codes = np.unique(values, return_inverse=True)
        if len(names) > max_values or len(names) < 2:
            continue
        overall = np.bincount(codes, minlength=len(names))
        for cluster in np.unique(c[c >= 0]):
            members = c == cluster
            size = int(members.sum())
            held = np.bincount(codes[members], minlength=len(names))
            # P(X >= held) for X ~ Hypergeometric(n, overall, size), corrected over the values of the column.
            log_p = stats.hypergeom.logsf(held - 1, n, overall, size) / np.log(10) + np.log10(len(names))
            for v in np.flatnonzero((-log_p >= min_log10_p) & (held > 0)):
                rows.append((int(cluster), str(column), str(names[v]), int(held[v]), size, held[v] / size,
                             overall[v] / n, float(min(-log_p[v], 300.0))))
    table = pd.DataFrame(rows, columns=list(EXPLAIN_COLUMNS))
    return table.sort_values(["cluster", "log10_p"], ascending=[True, False], kind="stable", ignore_index=True)


def describe_cluster(explained: pd.DataFrame, cluster: int, *, top: int = 2) -> str:
    """The strongest explanations of one cluster in words ("source contrib-17: 74% here, 5% overall"), or ""."""
    rows = explained[explained["cluster"] == cluster].head(top)
    return "; ".join(f"{r.column} {r.value}: {r.share_in_cluster:.0%} here, {r.share_overall:.0%} overall"
                     for r in rows.itertuples())


__all__ = ["EXPLAIN_COLUMNS", "describe_cluster", "explain_clusters"]
