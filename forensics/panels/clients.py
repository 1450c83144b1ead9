"""Federated clients: a map of their updates coloured by suspicion with the sybil groups marked, and the suspicion
of each client round by round (:mod:`forensics.federated`). Clicking a client on the map, or drawing a box or lasso
around several, lists them in the table and brings their lines forward in the timeline."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import InputError
from ..federated.views import client_points, suspicion_timeline
from ..html import escape_html
from ._common import Panel


class ClientPanel(Panel):
    """The clients of a federated investigation: their map, the flagged ones with their reasons, and, given the
    reports of every round, how each one's suspicion rose.

    Parameters
    ----------
    report : ClientReport
        :func:`forensics.federated.analyze_clients`' result.
    recorder : UpdateRecorder
        The recording it was computed from (the map is drawn from its sketches).
    reports : mapping round -> ClientReport, optional
        One report per round (``AggregationGuard.reports``): adds the timeline.
    """

    def __init__(self, report: Any, recorder: Any, *, reports: Mapping[int, Any] | None = None) -> None:
        from ..federated import ClientReport, UpdateRecorder

        if not isinstance(report, ClientReport) or not isinstance(recorder, UpdateRecorder):
            raise InputError("ClientPanel takes a ClientReport (analyze_clients) and the UpdateRecorder it read")
        self.report = report
        self.points = client_points(report, recorder)
        self.timeline = None if reports is None else suspicion_timeline(reports)
        self.map = go.FigureWidget(self._map())
        # plotly calls every trace's handler on each click or selection, most with no points: the clients picked in
        # each trace are kept and their union shown, so a lasso across two groups lists both.
        self._picked: dict[int, list[str]] = {}
        for i, trace in enumerate(self.map.data):
            handler = lambda trace, points, selector, i=i: self._on_points(i, points)  # noqa: E731
            trace.on_click(handler)
            trace.on_selection(handler)
        self.selected: list[str] = []
        self.table = widgets.HTML(self.flagged_html())
        self.table.add_class("forensics-clients")
        # The figures are wrapped in boxes that carry the CSS classes (a FigureWidget's own classes do not reach the
        # element plotly draws in).
        parts: list[widgets.Widget] = [widgets.VBox([self.map])]
        parts[0].add_class("forensics-client-map")
        if self.timeline is not None:
            self.timeline_figure = go.FigureWidget(self._timeline(self.timeline))
            parts.append(widgets.VBox([self.timeline_figure]))
            parts[-1].add_class("forensics-client-timeline")
        self.widget = widgets.VBox([*parts, self.table])
        self.widget.add_class("forensics-client-panel")

    def _map(self) -> go.Figure:
        p = self.points
        # Client ids and reasons come from the federation: escaped before plotly renders them as HTML.
        hover = [f"{escape_html(c, quote=False)}<br>suspicion {s:.1f}<br>{escape_html(r, quote=False)}"
                 for c, s, r in zip(p.index, p["suspicion"], p["reasons"])]
        fig = go.Figure()
        for group in sorted(set(p["group"]), key=lambda g: (g == "none", g)):
            rows = np.flatnonzero(p["group"].to_numpy() == group)
            fig.add_scattergl(x=p["x"].to_numpy()[rows], y=p["y"].to_numpy()[rows], mode="markers", name=group,
                              text=[hover[i] for i in rows], hoverinfo="text",
                              customdata=[str(c) for c in p.index[rows]],
                              marker=dict(color=np.minimum(p["suspicion"].to_numpy()[rows], 10), cmin=0, cmax=10,
                                          colorscale="Reds", size=9, symbol="circle" if group == "none" else "diamond",
                                          line=dict(width=1, color="#333")))
        fig.update_layout(height=380, margin=dict(l=30, r=10, t=30, b=30), dragmode="lasso", clickmode="event+select",
                          title="Clients by their updates (click or lasso to follow them)")
        return fig

    def _timeline(self, t: pd.DataFrame) -> go.Figure:
        fig = go.Figure()
        flagged = set(self.points.index[self.points["is_flagged"]])
        for c in t.columns:
            fig.add_scatter(x=t.index, y=np.minimum(t[c].to_numpy(dtype=float), 10), mode="lines",
                            name=escape_html(str(c), quote=False), showlegend=False,
                            line=dict(color=self._line_colour(str(c), flagged), width=1))
        fig.update_layout(height=260, margin=dict(l=30, r=10, t=30, b=30), xaxis_title="round",
                          yaxis_title="suspicion (capped at 10)",
                          title="Suspicion round by round (red: flagged now; blue: picked on the map)")
        return fig

    def flagged_html(self, clients: Iterable[str] | None = None) -> str:
        """The flagged clients (or the ones given), with their suspicion and reasons; every cell escaped."""
        p = self.points
        rows = p[p["is_flagged"]] if clients is None else p.loc[[str(c) for c in clients]]
        body = "".join(f"<tr><td>{escape_html(c)}</td><td style='text-align:right'>{s:.1f}</td>"
                       f"<td>{escape_html(g)}</td><td>{escape_html(r)}</td></tr>"
                       for c, s, g, r in zip(rows.index, rows["suspicion"], rows["group"], rows["reasons"]))
        return ("<table style='font-size:12px'><tr><th>client</th><th>suspicion</th><th>group</th><th>reasons</th>"
                f"</tr>{body}</table><p style='font-size:12px'>{len(rows)} client(s)</p>")

    @staticmethod
    def _line_colour(client: str, flagged: set[str]) -> str:
        return "#b2182b" if client in flagged else "#bbbbbb"

    def select(self, clients: Iterable[str]) -> None:
        """Show these clients in the table and, in the timeline, draw their lines thick and blue over the others
        (an empty selection restores the flagged view)."""
        chosen = [str(c) for c in clients]
        unknown = sorted(set(chosen) - set(self.points.index))
        if unknown:
            raise InputError(f"unknown client(s) {unknown[:5]}; the report has {len(self.points)} clients")
        self.selected = chosen
        self.table.value = self.flagged_html(chosen or None)
        if self.timeline is None:
            return
        flagged = set(self.points.index[self.points["is_flagged"]])
        picked = set(chosen)
        with self.timeline_figure.batch_update():
            for trace, client in zip(self.timeline_figure.data, map(str, self.timeline.columns)):
                on = client in picked
                trace.line.color = "#2166ac" if on else self._line_colour(client, flagged)
                trace.line.width = 3 if on else 1
                trace.opacity = 1.0 if on or not picked else 0.35
                trace.showlegend = on

    def _on_points(self, trace_index: int, points: Any) -> None:
        data = self.map.data[trace_index].customdata
        self._picked[trace_index] = [str(data[i]) for i in points.point_inds]
        union = list(dict.fromkeys(c for ids in self._picked.values() for c in ids))
        if union:  # an event that picked nothing anywhere (a double-click to clear) keeps the view
            self.select(union)
