"""The clusters of the map, most suspicious (or smallest for their label) first; choosing one selects its
members."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..errors import InputError
from ._common import Columns, Panel, fmt, plural, table_html
from .state import Change, PanelState

if TYPE_CHECKING:
    from ..investigation import Investigation

#: Orders of the cluster list.
SORTS = ("suspicion", "smallness", "size")


def cluster_summary(clusters: np.ndarray, suspicion: np.ndarray, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cluster of the map: size and suspicion measured here, joined with the map's cluster table.

    Parameters
    ----------
    clusters : ndarray of int, shape (n,)
        Cluster of each sample (-1 = noise).
    suspicion : ndarray of float, shape (n,)
    table : DataFrame indexed by cluster, optional
        The investigation's cluster table (any columns; ``is_small``, ``smallness_rank``, ``dominant_name``,
        ``purity``, ``top_sources`` are shown when present).

    Returns
    -------
    DataFrame indexed by cluster: ``n`` (members), ``mean_suspicion``, ``max_suspicion``, then the table's
    other columns.
    """
    c = pd.Series(np.asarray(clusters), name="cluster")
    s = pd.Series(np.asarray(suspicion, dtype=np.float64))
    grouped = s.groupby(c)
    out = pd.DataFrame({"n": grouped.size(), "mean_suspicion": grouped.mean(), "max_suspicion": grouped.max()})
    out.index.name = "cluster"
    if table is not None and len(table):
        extra = table.drop(columns=[col for col in ("mean_suspicion", "max_suspicion") if col in table.columns])
        out = out.join(extra, how="left")
    return out


def sort_clusters(summary: pd.DataFrame, by: str) -> pd.DataFrame:
    """The clusters in the order ``by`` (one of :data:`SORTS`); noise (-1) always last.

    "suspicion": mean suspicion, highest first. "smallness": the table's ``smallness_rank`` (1 = smallest for
    its label) when present, else ``label_share``, else size, smallest first. "size": largest first.
    """
    if by not in SORTS:
        raise InputError(f"sort must be one of {list(SORTS)}; got {by!r}")
    noise = summary.index == -1
    body = summary.loc[~noise]
    if by == "suspicion":
        body = body.sort_values(["mean_suspicion", "n"], ascending=[False, True], kind="stable", na_position="last")
    elif by == "smallness":
        key = next((k for k in ("smallness_rank", "label_share") if k in body.columns), "n")
        body = body.sort_values([key, "n"], kind="stable", na_position="last")
    else:
        body = body.sort_values("n", ascending=False, kind="stable")
    return pd.concat([body, summary.loc[noise]])


def cluster_option(k: int, row: pd.Series) -> str:
    """The text of one cluster in the list (plain text: the list shows it as text)."""
    name = "noise" if k == -1 else f"#{k}"
    parts = [f"{name}: {int(row['n'])} samples"]
    label = row.get("dominant_name", row.get("dominant_label"))
    if label is not None and not (isinstance(label, float) and np.isnan(label)):
        purity = row.get("purity")
        parts.append(f"label {label}" + (f" ({purity:.0%})" if isinstance(purity, float) and purity == purity else ""))
    small = row.get("is_small")
    if isinstance(small, (bool, np.bool_)) and small:
        parts.append("small")
    parts.append(f"suspicion {fmt(row['mean_suspicion'])}")
    if isinstance(row.get("top_sources"), str):
        parts.append(row["top_sources"])
    return " · ".join(parts)


class ClusterPanel(Panel):
    """The map's clusters as a list; choosing one selects its members.

    Parameters
    ----------
    inv : Investigation
    state : PanelState, optional
    sort : {"suspicion", "smallness", "size"}, default "suspicion"
    """

    def __init__(self, inv: Investigation, state: PanelState | None = None, *, sort: str = "suspicion",
                 columns: Columns | None = None) -> None:
        self.inv = inv
        self.columns = columns if columns is not None else Columns.of(inv)
        self.state = state if state is not None else PanelState(self.columns.ids)
        self.clusters = inv.map["cluster"].to_numpy()
        self.summary = cluster_summary(self.clusters, self.columns.suspicion, inv.clusters)
        self.sort_menu = widgets.Dropdown(options=list(SORTS), value=sort, description="sort by",
                                          layout=widgets.Layout(width="220px"))
        self.list = widgets.Select(options=[], rows=12, layout=widgets.Layout(width="100%"))
        self.details = widgets.HTML()
        self._explained: pd.DataFrame | None = None  # inv.explain_clusters(), on the first choice
        self._quiet = False
        self.sort_menu.observe(self.state.guard(self._on_sort), names="value")
        self.list.observe(self.state.guard(self._on_list), names="value")
        self.widget = widgets.VBox([self.sort_menu, self.list, self.details])
        self.widget.add_class("forensics-clusters")
        self.state.observe(self._forget_choice, "selection")
        self.sort(sort)

    # ---------------------------------------------------------------------------------------- logic
    @property
    def order(self) -> list[int]:
        """Cluster ids in the order listed."""
        return [int(v) for _, v in self.list.options]

    def sort(self, by: str) -> None:
        """List the clusters in the order ``by`` (see :func:`sort_clusters`)."""
        ordered = sort_clusters(self.summary, by)
        self._quiet = True
        try:
            self.list.options = [(cluster_option(int(k), row), int(k)) for k, row in ordered.iterrows()]
            self.list.value = None
        finally:
            self._quiet = False
        if self.sort_menu.value != by:
            self.sort_menu.value = by

    def use_columns(self, columns: Columns) -> None:
        """Show new per-sample columns of the same samples (after ``inv.replace_signals``): each cluster's
        suspicion is measured again and the list sorted again."""
        self.columns = columns
        self.summary = cluster_summary(self.clusters, columns.suspicion, self.inv.clusters)
        self.sort(self.sort_menu.value)

    def members(self, cluster: int) -> np.ndarray:
        """Row positions of the cluster's samples."""
        if cluster not in self.summary.index:
            raise InputError(f"cluster {cluster!r} is not on the map; clusters are {self.summary.index.tolist()[:30]}")
        return np.flatnonzero(self.clusters == cluster)

    def choose(self, cluster: int) -> None:
        """Select the members of ``cluster`` and show its row of the cluster table."""
        pos = self.members(cluster)
        self.state.select_positions(pos, origin="clusters")
        row = self.summary.loc[cluster]
        rows = [(str(k), _cell(v)) for k, v in row.items()]
        if cluster >= 0:
            from ..explain import describe_cluster

            if self._explained is None:
                self._explained = self.inv.explain_clusters()
            rows.insert(0, ("stands out by", describe_cluster(self._explained, cluster) or "nothing beyond chance"))
        self.details.value = table_html(rows)
        self.state.report(f"cluster {'noise' if cluster == -1 else cluster}: {plural(len(pos))} selected")
        if self.list.value != cluster:
            self._quiet = True
            try:
                self.list.value = cluster
            finally:
                self._quiet = False

    # ---------------------------------------------------------------------------------------- adapters
    def _on_sort(self, change: dict[str, Any]) -> None:
        self.sort(change["new"])

    def _on_list(self, change: dict[str, Any]) -> None:
        if not self._quiet and change["new"] is not None:
            self.choose(int(change["new"]))

    def _forget_choice(self, change: Change) -> None:
        # Another panel changed the selection: clear the list's choice so the same cluster can be chosen again.
        if change.origin != "clusters" and self.list.value is not None:
            self._quiet = True
            try:
                self.list.value = None
            finally:
                self._quiet = False
            self.details.value = ""


def _cell(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(map(str, list(v)[:8]))
    return v
