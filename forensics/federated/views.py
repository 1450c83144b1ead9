"""What the client panel and the client report draw, as plain tables: the clients' map and their suspicion round by
round. numpy, pandas and scikit-learn only, so that the report reads them without the notebook widgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._validate import check_int
from ..errors import InputError


def client_points(report: Any, recorder: Any) -> pd.DataFrame:
    """One row per client of the report: ``x``, ``y`` (the first two principal components of its mean sketch over
    the analysed rounds), ``suspicion``, ``is_flagged``, ``group`` ("sybil group <n>" for one of the report's
    :attr:`~forensics.federated.analysis.ClientReport.sybil_groups`, else "none") and ``reasons``."""
    from sklearn.decomposition import PCA

    rounds = report.params.get("rounds") or [max(recorder.rounds)]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for r in rounds:
        rec = recorder.round(r)
        for cid, sk, ok in zip(rec.client_ids, rec.sketches, rec.finite):
            if ok:
                cid = str(cid)
                sums[cid] = sums.get(cid, 0) + np.asarray(sk, dtype=np.float64)
                counts[cid] = counts.get(cid, 0) + 1
    ids = [c for c in report.table.index.astype(str) if c in sums]
    if len(ids) < 2:
        raise InputError("the map needs at least two clients with finite updates in the analysed rounds")
    mean = np.stack([sums[c] / counts[c] for c in ids])
    xy = PCA(n_components=2, random_state=0).fit_transform(mean)
    table = report.table.loc[ids]
    suspect = set(report.sybil_groups.index)
    group = np.where(table["sybil_group"].isin(suspect), "sybil group " + table["sybil_group"].astype(str), "none")
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "suspicion": table["suspicion"].to_numpy(),
                         "is_flagged": table["is_flagged"].to_numpy(bool), "group": group,
                         "reasons": table["reasons"].to_numpy(dtype=object)}, index=pd.Index(ids, name="client_id"))


def suspicion_timeline(reports: Mapping[int, Any]) -> pd.DataFrame:
    """Each client's suspicion after every round screened (rounds as rows, clients as columns; NaN before a client
    was seen), from the reports an :class:`~forensics.federated.guard.AggregationGuard` keeps."""
    if not reports:
        raise InputError("reports is empty: screen at least one round (AggregationGuard.reports)")
    return pd.DataFrame({int(r): rep.table["suspicion"] for r, rep in sorted(reports.items())}).T.rename_axis("round")


def timeline_rounds(rounds: Sequence[int], limit: int) -> list[int]:
    """At most ``limit`` (>= 2) of ``rounds``, evenly spaced, the first and the last always among them: the rounds a
    timeline analyses when analysing every one would cost too much (one analysis per round)."""
    rs = sorted(int(r) for r in rounds)
    limit = check_int(limit, "limit", low=2)
    if len(rs) <= limit:
        return rs
    picks = np.unique(np.round(np.linspace(0, len(rs) - 1, limit)).astype(int))
    return [rs[i] for i in picks]


__all__ = ["client_points", "suspicion_timeline", "timeline_rounds"]
