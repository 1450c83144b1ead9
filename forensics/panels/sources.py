"""Sources (contributors, annotators, shards) ranked by the suspicion of their samples; choosing one selects its
samples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..errors import InputError
from ..html import escape_html
from ..signals.combine import DEFAULT_THRESHOLD
from ..signals.registry import score_column
from ._common import Columns, Panel, fmt, plural, review_status, table_html
from .state import Change, PanelState

if TYPE_CHECKING:
    from ..investigation import Investigation

_FLAGGED = ("suspected", "confirmed")
#: Sources listed (the most suspicious); the others stay reachable through :meth:`SourcePanel.choose`.
MAX_LISTED = 300


def source_summary(
    sources: np.ndarray,
    labels: np.ndarray,
    suspicion: np.ndarray,
    marked: np.ndarray,
    *,
    n_classes: int,
    threshold: float = DEFAULT_THRESHOLD,
) -> pd.DataFrame:
    """One row per source: its size, the suspicion of its samples, the share *flagged* (suspicion at or above
    ``threshold``, as the scan and the report count them), the share *marked* in the review, and how far its label
    distribution lies from everyone else's.

    Parameters
    ----------
    sources : ndarray of str, shape (n,)
    labels : ndarray of int, shape (n,)
    suspicion : ndarray of float, shape (n,)
    marked : ndarray of bool, shape (n,)
        Suspected or confirmed in the review.
    n_classes : int
    threshold : float
        The suspicion that flags a sample (default 2, about 1% of clean samples).

    Returns
    -------
    DataFrame indexed by source, by decreasing mean suspicion: ``n``, ``mean_suspicion``, ``max_suspicion``,
    ``share_flagged``, ``share_marked``, ``dominant_label`` (index), ``dominant_share``, ``label_distance`` (total
    variation distance between the source's label distribution and that of all other sources: 0 = the same, 1 =
    disjoint).
    """
    names, codes = np.unique(np.asarray(sources).astype(str), return_inverse=True)
    codes = codes.ravel()
    flagged = np.nan_to_num(np.asarray(suspicion, dtype=np.float64), nan=-np.inf) >= threshold
    k = len(names)
    n_per = np.bincount(codes, minlength=k)
    s = pd.Series(np.asarray(suspicion, dtype=np.float64)).groupby(codes)
    counts = np.zeros((k, n_classes))
    np.add.at(counts, (codes, labels), 1)
    total = counts.sum(axis=0)
    own = counts / n_per[:, None]
    rest = total[None, :] - counts
    rest_n = rest.sum(axis=1, keepdims=True)
    others = np.divide(rest, rest_n, out=np.full_like(rest, np.nan), where=rest_n > 0)
    table = pd.DataFrame({
        "n": n_per,
        "mean_suspicion": s.mean().reindex(range(k)).to_numpy(),
        "max_suspicion": s.max().reindex(range(k)).to_numpy(),
        "share_flagged": np.bincount(codes, weights=flagged.astype(np.float64), minlength=k) / n_per,
        "share_marked": np.bincount(codes, weights=np.asarray(marked, dtype=np.float64), minlength=k) / n_per,
        "dominant_label": own.argmax(axis=1),
        "dominant_share": own.max(axis=1),
        "label_distance": 0.5 * np.abs(own - others).sum(axis=1),
    }, index=pd.Index(names.astype(object), name="source"))
    order = np.lexsort((names, -n_per, -np.nan_to_num(table["mean_suspicion"].to_numpy(), nan=-np.inf)))
    return table.iloc[order]


class SourcePanel(Panel):
    """Sources ranked by the mean suspicion of their samples; choosing one selects its samples.

    Parameters
    ----------
    inv : Investigation
    state : PanelState, optional
    """

    def __init__(self, inv: Investigation, state: PanelState | None = None, *, columns: Columns | None = None) -> None:
        self.inv = inv
        self.columns = columns if columns is not None else Columns.of(inv)
        self.state = state if state is not None else PanelState(self.columns.ids)
        self.available = self.columns.sources is not None
        self._quiet = False
        self.chosen: str | None = None
        if not self.available:
            self.list = None
            self.widget = widgets.HTML("This dataset has no sources (give sources=... when building the Dataset).")
            return
        self.list = widgets.Select(options=[], rows=10, layout=widgets.Layout(width="100%"))
        self.details = widgets.HTML()
        self.list.observe(self.state.guard(self._on_list), names="value")
        self.widget = widgets.VBox([self.list, self.details])
        self.widget.add_class("forensics-sources")
        self.state.observe(self._forget_choice, "selection")
        self.state.observe(self._refresh, "revision")
        self._refresh()

    def summary(self) -> pd.DataFrame:
        """:func:`source_summary` with the current review, and, when the ``source`` signal ran, each source's
        ``suspicion_among_sources``: the signal's score, which the samples that make the source unusual carry
        (:func:`forensics.signals.sources.source_scores`: 0 where the source is like the others)."""
        if not self.available:
            raise InputError("this dataset has no sources")
        marked = np.isin(review_status(self.inv), _FLAGGED)
        table = source_summary(self.columns.sources, self.columns.labels, self.columns.suspicion, marked,
                               n_classes=len(self.columns.class_names))
        column = score_column("source")
        if column in self.inv.signals:
            per_source = pd.Series(self.inv.signals[column].to_numpy(dtype=np.float64),
                                   index=self.columns.sources).groupby(level=0).max().reindex(table.index)
            table["suspicion_among_sources"] = per_source.fillna(0.0)
        return table

    def choose(self, source: str) -> None:
        """Select every sample of ``source``."""
        if not self.available:
            raise InputError("this dataset has no sources")
        pos = np.flatnonzero(self.columns.sources == str(source))
        if not len(pos):
            raise InputError(f"source {str(source)[:60]!r} is not in this dataset")
        self.chosen = str(source)
        self.state.select_positions(pos, origin="sources")
        self.details.value = self.details_html(str(source))
        self.state.report(f"source {source}: {plural(len(pos))} selected")
        if self.list.value != self.chosen:
            self._quiet = True
            try:
                self.list.value = self.chosen if self.chosen in [v for _, v in self.list.options] else None
            finally:
                self._quiet = False

    def details_html(self, source: str) -> str:
        """The source's row and its label distribution against everyone else's (escaped)."""
        summary = self.summary()
        row = summary.loc[source]
        names = self.columns.class_names
        rows = [("source", source), ("samples", int(row["n"])), ("mean suspicion", row["mean_suspicion"]),
                ("max suspicion", row["max_suspicion"]),
                (f"flagged (suspicion >= {DEFAULT_THRESHOLD:g})", f"{row['share_flagged']:.0%}"),
                *([("suspicion among sources", row["suspicion_among_sources"])]
                  if "suspicion_among_sources" in row else []),
                ("marked in the review", f"{row['share_marked']:.0%}"),
                ("label distance", row["label_distance"])]
        mine = self.columns.sources == source
        own = np.bincount(self.columns.labels[mine], minlength=len(names)) / max(1, mine.sum())
        rest_n = max(1, (~mine).sum())
        rest = np.bincount(self.columns.labels[~mine], minlength=len(names)) / rest_n
        dist = "".join(
            f"<tr><td>{escape_html(names[c])}</td><td style='text-align:right'>{own[c]:.0%}</td>"
            f"<td style='text-align:right;color:#777'>{rest[c]:.0%}</td></tr>"
            for c in np.argsort(-own, kind="stable")[:10] if own[c] > 0 or rest[c] > 0
        )
        return (table_html(rows) + '<table style="font-size:12px;margin-top:4px"><tr><th>label</th><th>this '
                f"source</th><th>others</th></tr>{dist}</table>")

    def _refresh(self, change: Change | None = None) -> None:
        summary = self.summary()
        names = self.columns.class_names
        options = [
            (f"{src} · {int(r['n'])} samples · suspicion {fmt(r['mean_suspicion'])} (max {fmt(r['max_suspicion'])})"
             f" · flagged {r['share_flagged']:.0%} · marked {r['share_marked']:.0%}"
             f" · {names[int(r['dominant_label'])]} {r['dominant_share']:.0%}"
             f" · label distance {fmt(r['label_distance'])}", str(src))
            for src, r in summary.iloc[:MAX_LISTED].iterrows()
        ]
        self._quiet = True
        try:
            self.list.options = options
            self.list.value = self.chosen if self.chosen in summary.index[:MAX_LISTED] else None
        finally:
            self._quiet = False
        if self.chosen is not None:
            self.details.value = self.details_html(self.chosen)

    def _on_list(self, change: dict[str, Any]) -> None:
        if not self._quiet and change["new"] is not None:
            self.choose(change["new"])

    def _forget_choice(self, change: Change) -> None:
        if change.origin != "sources" and self.list.value is not None:
            self.chosen = None
            self._quiet = True
            try:
                self.list.value = None
            finally:
                self._quiet = False
            self.details.value = ""
