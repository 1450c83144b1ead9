"""The map: every sample as a point of the 2-D map, coloured by cluster, label, suspicion, source, review status
or ground truth; lasso, box or click to select.

The points are sent to the browser once. A colour change sends ``marker`` colour properties only (one colour code
per point and a colour scale); a selection sends ``marker.opacity`` only (selected points opaque, the others
faint) and removes plotly's own selection. A lasso or box is read both from plotly's selection event and from the
shape it leaves in ``layout.selections`` (the points inside it are found here): the widget's message buffer may
drop the first when hover events follow it, never the second. One trace holds every point, so a point's
index in the trace is its row in the dataset. The trace is WebGL (``Scattergl``) at every size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import InputError
from ..html import escape_html
from ._common import Columns, Panel, plural, review_status
from .state import Change, PanelState

if TYPE_CHECKING:
    from ..investigation import Investigation

#: Colour modes of the map, in the order of its dropdown ("truth" only when ground truth is given).
COLOR_MODES = ("cluster", "label", "prediction", "suspicion", "source", "review", "truth")
#: Categories with their own colour; the rest share the "other" grey.
MAX_CATEGORIES = 24

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#393b79", "#ad494a", "#637939", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#843c39",
           "#8c6d31", "#de9ed6", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8")
GREY = "#c7c7c7"
#: Opacity of every point when nothing is selected, and of selected and other points during a selection.
BASE_OPACITY, SELECTED_OPACITY, UNSELECTED_OPACITY = 0.8, 1.0, 0.1
REVIEW_COLORS = {"unreviewed": "#d0d0d0", "suspected": "#ff7f0e", "confirmed": "#d62728", "cleared": "#2ca02c"}
TRUTH_COLORS = {"clean": "#d0d0d0", "poison": "#d62728"}
SUSPICION_SCALE = [[0.0, "#d9d9d9"], [0.5, "#fdae61"], [0.8, "#e34a33"], [1.0, "#7f0000"]]


@dataclass(frozen=True)
class Coloring:
    """What the map's ``marker`` needs for one colour mode.

    Attributes
    ----------
    values : ndarray of float64, shape (n,)
        One number per point: a category code, or the value itself for a continuous mode.
    colorscale : list of [float, str]
    cmin, cmax : float
    showscale : bool
        Whether to show a colour bar (continuous modes).
    title : str
    legend : list of (name, colour, count)
        Categories in the order shown (empty for continuous modes). Names are raw data: escape them.
    """

    values: np.ndarray
    colorscale: list[list[Any]]
    cmin: float
    cmax: float
    showscale: bool
    title: str
    legend: list[tuple[str, str, int]]

    def marker(self) -> dict[str, Any]:
        """The ``marker`` properties to set (never x or y)."""
        return {"color": self.values, "colorscale": self.colorscale, "cmin": self.cmin, "cmax": self.cmax,
                "showscale": self.showscale, "colorbar": {"title": {"text": escape_html(self.title, quote=False)},
                                                          "thickness": 12}}


def categorical_coloring(
    values: Sequence[Any] | np.ndarray,
    *,
    title: str,
    order: Sequence[str] | None = None,
    colors: dict[str, str] | None = None,
    max_categories: int = MAX_CATEGORIES,
) -> Coloring:
    """One colour per category: the ``max_categories`` most frequent (or those of ``order``) get their own.

    Parameters
    ----------
    values : array-like, shape (n,)
        Category of each point (converted to str); a pandas Categorical is read through its codes.
    title : str
    order : sequence of str, optional
        Categories in the legend's order (all kept, palette cycled); default: by decreasing count.
    colors : dict of str to str, optional
        Fixed colours of some categories; the others take the palette in turn.
    max_categories : int
        Without ``order``, categories past this many are shown as "other" in grey.

    Returns
    -------
    Coloring
    """
    # Distinct values by hashing (linear time), then their text sorted: a million points take milliseconds, where
    # sorting a million strings took a second.
    v = values if isinstance(values, pd.Categorical) else np.asarray(values)
    codes, uniques = pd.factorize(v, use_na_sentinel=False)
    if v.dtype == object and pd.isna(uniques).any():  # None and NaN: one missing value to pandas, two texts here
        codes, uniques = pd.factorize(v.astype(str))
    names, merged = np.unique(np.asarray(uniques).astype(str), return_inverse=True)
    inverse = merged.ravel()[codes]
    counts = np.bincount(inverse, minlength=len(names))
    if order is None:
        ranked = [str(names[i]) for i in np.lexsort((names, -counts))]
        kept = ranked[:max_categories]
    else:
        kept = [str(c) for c in order]
    code_of = {c: i for i, c in enumerate(kept)}
    other = len(kept)
    name_codes = np.asarray([code_of.get(str(c), other) for c in names], dtype=np.float64)
    codes = name_codes[inverse.ravel()]
    palette = iter(PALETTE * (1 + len(kept) // len(PALETTE)))
    fixed = colors or {}
    shown = [fixed[c] if c in fixed else next(palette) for c in kept]
    count_of = dict(zip(names.tolist(), counts.tolist()))
    legend = [(c, shown[i], int(count_of.get(c, 0))) for i, c in enumerate(kept)]
    n_other = int((codes == other).sum())
    if n_other:
        shown.append(GREY)
        legend.append(("other", GREY, n_other))
    k = len(shown)
    if k == 0:
        raise InputError("there is nothing to colour: values is empty")
    scale = []
    for i, colour in enumerate(shown):
        scale += [[i / k, colour], [(i + 1) / k, colour]]
    return Coloring(values=codes, colorscale=scale, cmin=-0.5, cmax=k - 0.5, showscale=False, title=title,
                    legend=legend)


def continuous_coloring(values: np.ndarray, *, title: str, colorscale: list[list[Any]] | None = None) -> Coloring:
    """A colour scale from the smallest to the largest finite value; NaN points take the lowest colour.

    Parameters
    ----------
    values : ndarray of float, shape (n,)
    title : str
    colorscale : list of [float, str], optional
    """
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return Coloring(values=np.where(np.isfinite(v), v, lo), colorscale=colorscale or SUSPICION_SCALE, cmin=lo,
                    cmax=hi, showscale=True, title=title, legend=[])


def check_truth(truth: Any, ids: np.ndarray) -> np.ndarray:
    """Ground truth as one value per sample in the dataset's order.

    Parameters
    ----------
    truth : Series indexed by sample_id, or array-like of shape (n,)
        Booleans (poison or not) or categories (e.g. the kind of poison).
    ids : ndarray of str, shape (n,)

    Returns
    -------
    ndarray, shape (n,)
        bool, or str for categories.
    """
    n = len(ids)
    if isinstance(truth, pd.DataFrame):
        raise InputError(
            f"truth must be one column (a Series indexed by sample_id, or an array of {n} values); got a DataFrame "
            f"with columns {list(truth.columns)[:10]!r}: pass one of them, e.g. truth['is_poison']"
        )
    if isinstance(truth, pd.Series):
        index = truth.index.astype(str)
        if index.has_duplicates:
            raise InputError("truth's index has duplicate sample ids")
        missing = pd.Index(ids).difference(index)
        if len(missing):
            raise InputError(f"truth has no value for {len(missing)} sample(s), e.g. {str(missing[0])[:60]!r}")
        values = truth.set_axis(index).reindex(pd.Index(ids)).to_numpy()
    else:
        values = np.asarray(truth)
        if values.ndim != 1 or len(values) != n:
            raise InputError(f"truth must have one value per sample ({n}); got shape {values.shape}")
    if values.dtype == bool:
        return values
    if values.dtype == object and all(isinstance(v, (bool, np.bool_)) for v in values):
        return values.astype(bool)
    return values.astype(str).astype(object)


def map_coloring(
    mode: str,
    columns: Columns,
    *,
    clusters: np.ndarray,
    review: np.ndarray | None = None,
    truth: np.ndarray | None = None,
) -> Coloring:
    """The colouring of one mode of :data:`COLOR_MODES`.

    Parameters
    ----------
    mode : str
    columns : Columns
        The investigation's per-sample arrays.
    clusters : ndarray of int, shape (n,)
        Cluster of each sample (-1 = noise).
    review : ndarray of str, shape (n,), optional
        Review status of each sample; needed for "review".
    truth : ndarray, shape (n,), optional
        From :func:`check_truth`; needed for "truth".
    """
    if mode == "cluster":
        codes, found = pd.factorize(np.where(np.asarray(clusters) < 0, -1, clusters))
        names = np.where(found < 0, "noise", found.astype(str))
        return categorical_coloring(pd.Categorical.from_codes(codes, categories=names), title="cluster",
                                    colors={"noise": GREY})
    if mode == "label":
        return categorical_coloring(columns.label_names, title="label", order=columns.class_names)
    if mode == "prediction":
        if columns.predictions is None:
            raise InputError("this investigation has no predictions (it was built without a model)")
        return categorical_coloring(columns.predictions, title="prediction", order=columns.class_names)
    if mode == "suspicion":
        return continuous_coloring(columns.suspicion, title="suspicion")
    if mode == "source":
        if columns.sources is None:
            raise InputError("this dataset has no sources")
        return categorical_coloring(columns.sources, title="source")
    if mode == "review":
        if review is None:
            raise InputError("colouring by review status needs the review statuses")
        return categorical_coloring(review, title="review", order=list(REVIEW_COLORS), colors=REVIEW_COLORS)
    if mode == "truth":
        if truth is None:
            raise InputError("no ground truth was given: pass truth=... to show it")
        if truth.dtype == bool:
            return categorical_coloring(np.where(truth, "poison", "clean"), title="truth", order=["clean", "poison"],
                                        colors=TRUTH_COLORS)
        return categorical_coloring(truth, title="truth")
    raise InputError(f"unknown colour mode {mode!r}; choose from {list(COLOR_MODES)}")


def hover_texts(
    ids: np.ndarray,
    label_names: np.ndarray,
    sources: np.ndarray | None,
    top_reason: np.ndarray,
    clusters: np.ndarray | None = None,
) -> np.ndarray:
    """One hover text per point: id, label, source, cluster and top reason, every piece escaped for plotly.

    Returns
    -------
    ndarray of str (object), shape (n,)
    """
    esc = np.frompyfunc(lambda s: escape_html(s, quote=False), 1, 1)
    text = "<b>" + esc(ids) + "</b><br>label: " + esc(label_names)
    if sources is not None:
        text = text + "<br>source: " + esc(sources)
    if clusters is not None:
        c = np.asarray(clusters)
        text = text + "<br>cluster: " + np.where(c < 0, "noise", c.astype(str)).astype(object)
    reason = esc(top_reason)
    return np.where(reason != "", text + "<br>" + reason, text).astype(object)


def selection_opacity(n: int, positions: np.ndarray) -> float | np.ndarray:
    """Marker opacity: :data:`BASE_OPACITY` for every point when nothing is selected, else
    :data:`SELECTED_OPACITY` for the selected points and :data:`UNSELECTED_OPACITY` for the rest (float32, (n,))."""
    if not len(positions):
        return BASE_OPACITY
    out = np.full(n, UNSELECTED_OPACITY, dtype=np.float32)
    out[positions] = SELECTED_OPACITY
    return out


def _path_vertices(path: str) -> np.ndarray:
    """Vertices (k, 2) of an SVG path made of M/L/Z commands with absolute coordinates, as plotly writes lasso
    selections ("M1,2L3,4L5,6Z")."""
    numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", path)
    if not numbers or len(numbers) % 2 or re.search(r"[^MLZmlz0-9eE+\-.,\s]", path):
        raise InputError(f"cannot read the selection path {path[:80]!r}: expected M/L/Z commands with x,y pairs")
    return np.asarray(numbers, dtype=np.float64).reshape(-1, 2)


class PointIndex:
    """The map's points sorted by y, so that a lasso or a box is tested only against the points in its y range.

    An edge of a lasso can only be crossed by the points whose y lies in its own y range: one slice of the sorted
    points per edge, and about twice the points of the lasso's height in all, however many vertices the lasso has
    (a hand-drawn lasso has hundreds; testing every point against every edge took seconds at a million points).

    Parameters
    ----------
    x, y : ndarray of float, shape (n,)
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise InputError(f"x and y must be 1-D of one length; got shapes {x.shape} and {y.shape}")
        self.order = np.argsort(y, kind="stable")  # NaN last: no finite range reaches them
        self.xs, self.ys = x[self.order], y[self.order]

    def __len__(self) -> int:
        return len(self.order)

    def _rows(self, lo: float, hi: float, *, closed: bool) -> slice:
        """The sorted points with ``lo <= y < hi`` (``<= hi`` when ``closed``)."""
        return slice(int(np.searchsorted(self.ys, lo, "left")),
                     int(np.searchsorted(self.ys, hi, "right" if closed else "left")))

    def _polygon(self, poly: np.ndarray, inside: np.ndarray) -> None:
        """Even-odd rule: toggle ``inside`` (in sorted order) for each edge of the closed polygon ``poly`` (k, 2)
        that the horizontal ray from a point crosses to its right."""
        xj, yj = poly[-1]
        for xi, yi in poly:
            if yi != yj:  # a horizontal edge is crossed by no ray
                rows = self._rows(min(yi, yj), max(yi, yj), closed=False)
                at = (xj - xi) * (self.ys[rows] - yi) / (yj - yi) + xi
                inside[rows] ^= self.xs[rows] < at
            xj, yj = xi, yi

    def inside(self, selections: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Row positions (ascending, int64) of the points inside any of plotly's ``layout.selections``; see
        :func:`points_in_selections`."""
        keep = np.zeros(len(self), dtype=bool)
        for sel in selections:
            if sel.get("xref", "x") != "x" or sel.get("yref", "y") != "y":
                raise InputError(f"a selection drawn on {sel.get('xref')}/{sel.get('yref')} is not on the map's axes")
            kind = sel.get("type", "rect" if "x0" in sel else "path")
            if kind == "rect":
                x0, x1 = sorted((float(sel["x0"]), float(sel["x1"])))
                y0, y1 = sorted((float(sel["y0"]), float(sel["y1"])))
                rows = self._rows(y0, y1, closed=True)
                keep[rows] |= (self.xs[rows] >= x0) & (self.xs[rows] <= x1)
            elif kind == "path":
                inside = np.zeros(len(self), dtype=bool)
                self._polygon(_path_vertices(str(sel["path"])), inside)
                keep |= inside
            else:
                raise InputError(f"unknown selection type {kind!r}; expected 'rect' or 'path'")
        return np.sort(self.order[keep])


def points_in_selections(x: np.ndarray, y: np.ndarray, selections: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Row positions of the points inside any of plotly's ``layout.selections`` (lasso paths and boxes drawn
    in data coordinates).

    Parameters
    ----------
    x, y : ndarray of float, shape (n,)
    selections : sequence of dict
        As plotly reports them: ``{"type": "path", "path": "M..L..Z", "xref": "x", "yref": "y"}`` or
        ``{"type": "rect", "x0": .., "x1": .., "y0": .., "y1": ..}``. A box holds its edges; a lasso follows the
        even-odd rule.

    Returns
    -------
    ndarray of int64, ascending

    See Also
    --------
    PointIndex : the same, sorting the points once for many selections.
    """
    return PointIndex(x, y).inside(selections)


def legend_html(coloring: Coloring) -> str:
    """The categories of a colouring as swatches with names and counts (names escaped)."""
    if not coloring.legend:
        return ""
    items = "".join(
        f'<span style="display:inline-block;margin:0 10px 2px 0;white-space:nowrap">'
        f'<span style="display:inline-block;width:10px;height:10px;border-radius:5px;background:{colour};'
        f'margin-right:4px"></span>{escape_html(name)} <span style="color:#777">({count})</span></span>'
        for name, colour, count in coloring.legend
    )
    return f'<div style="font-size:11px;line-height:1.4">{items}</div>'


class MapPanel(Panel):
    """The map of an investigation, linked to a :class:`PanelState`.

    Parameters
    ----------
    inv : Investigation
        Its map is built on first use (UMAP: about a minute for 10^4 samples).
    state : PanelState, optional
        Shared with the other panels; a new one by default.
    truth : Series indexed by sample_id, or array of shape (n,), optional
        Ground truth, offered as the "truth" colour mode.
    width, height : int, default 620 and 480
        Size of the plot in pixels (a widget's plot does not follow its container's width).

    Attributes
    ----------
    figure : plotly.graph_objects.FigureWidget
    widget : ipywidgets.VBox
    """

    def __init__(self, inv: Investigation, state: PanelState | None = None, *, truth: Any = None, width: int = 620,
                 height: int = 480, columns: Columns | None = None) -> None:
        self.inv = inv
        self.columns = columns if columns is not None else Columns.of(inv)
        self.state = state if state is not None else PanelState(self.columns.ids)
        m = inv.map
        self.clusters = m["cluster"].to_numpy()
        self.truth = None if truth is None else check_truth(truth, self.columns.ids)
        n = len(m)
        self.modes = tuple(mode for mode in COLOR_MODES if self._available(mode))
        if self.state.color_by not in self.modes:
            raise InputError(f"state.color_by is {self.state.color_by!r}, which this map cannot show; "
                             f"choose from {list(self.modes)}")
        size = 3 if n > 20_000 else 5 if n > 3_000 else 7
        coloring = self.coloring(self.state.color_by)
        # WebGL at every size: one code path, and the only one where plotly's own selection styling can be made
        # neutral (below) while the selection is drawn with per-point opacity.
        trace = go.Scattergl(
            x=m["x"].to_numpy(), y=m["y"].to_numpy(), mode="markers",
            hovertext=hover_texts(self.columns.ids, self.columns.label_names, self.columns.sources,
                                  self.columns.top_reason, self.clusters),
            hoverinfo="text",
            marker={"size": size, "line": {"width": 0}, "opacity": BASE_OPACITY, **coloring.marker()},
            # Given (as the same size), these keep plotly.js from fading the points its own selection leaves
            # out (a drawn lasso, or the empty selection left after one is removed).
            selected={"marker": {"size": size}}, unselected={"marker": {"size": size}},
            showlegend=False,
        )
        axis = {"showgrid": False, "zeroline": False, "showticklabels": False, "title": None}
        self.figure = go.FigureWidget(data=[trace], layout={
            "width": width, "height": height, "margin": {"l": 8, "r": 8, "t": 8, "b": 8}, "dragmode": "lasso",
            "hovermode": "closest", "clickmode": "event", "xaxis": axis, "yaxis": axis, "uirevision": "map",
            "plot_bgcolor": "white",
        })
        self.trace = self.figure.data[0]
        # Plotly callbacks are one-line adapters to the named handlers below.
        self.trace.on_selection(self.state.guard(self._on_selection))
        self.trace.on_click(self.state.guard(self._on_click))
        self.trace.on_deselect(self.state.guard(self._on_deselect))
        # The drawn lasso or box also arrives as layout.selections, in a message of its own: hover events that
        # follow a lasso can overwrite its points message in the widget's outgoing buffer, never this one.
        self.figure.layout.on_change(self.state.guard(self._on_selection_shapes), "selections")
        self._x, self._y = m["x"].to_numpy(dtype=np.float64), m["y"].to_numpy(dtype=np.float64)
        self._points = PointIndex(self._x, self._y)

        self.color_menu = widgets.Dropdown(options=list(self.modes), value=self.state.color_by,
                                           description="colour by", layout=widgets.Layout(width="230px"))
        self.color_menu.observe(self.state.guard(self._on_color_menu), names="value")
        self.info = widgets.HTML(
            f'<span style="font-size:12px;color:#555">{n} samples · lasso or box to select, click a point, '
            "shift-click to add, double-click to clear</span>")
        self.legend = widgets.HTML(legend_html(coloring))
        self.widget = widgets.VBox([widgets.HBox([self.color_menu, self.info]), self.figure, self.legend])
        self.widget.add_class("forensics-map")
        self.state.observe(self._show_selection, "selection")
        self.state.observe(self._show_colors, ("color_by", "revision"))

    # ---------------------------------------------------------------------------------------- logic
    def _available(self, mode: str) -> bool:
        if mode == "prediction":
            return self.columns.predictions is not None
        if mode == "source":
            return self.columns.sources is not None
        if mode == "truth":
            return self.truth is not None
        return True

    def use_columns(self, columns: Columns) -> None:
        """Show new per-sample columns of the same samples (after ``inv.replace_signals``): the hover texts and
        the current colouring follow."""
        self.columns = columns
        coloring = self.coloring(self.state.color_by)
        with self.figure.batch_update():
            self.trace.hovertext = hover_texts(columns.ids, columns.label_names, columns.sources,
                                               columns.top_reason, self.clusters)
            self.trace.marker.update(coloring.marker())
        self.legend.value = legend_html(coloring)

    def coloring(self, mode: str) -> Coloring:
        """The colouring of ``mode`` for the current data and review."""
        if mode not in self.modes:
            raise InputError(f"colour mode {mode!r} is not available here; choose from {list(self.modes)}")
        review = review_status(self.inv) if mode == "review" else None
        return map_coloring(mode, self.columns, clusters=self.clusters, review=review, truth=self.truth)

    def set_color(self, mode: str) -> None:
        """Colour the points by ``mode`` (one of :attr:`modes`)."""
        if mode not in self.modes:
            raise InputError(f"colour mode {mode!r} is not available here; choose from {list(self.modes)}")
        self.state.set_color_by(mode, origin="map")

    def select_points(self, point_inds: Sequence[int], *, add: bool = False) -> None:
        """Select the samples at these point indices (= dataset rows); ``add`` keeps the current selection."""
        pos = np.asarray(point_inds, dtype=np.int64)
        if add:
            pos = np.concatenate([self.state.positions, pos])
        self.state.select_positions(pos, origin="map")
        self.state.report(f"{plural(len(self.state.positions))} selected on the map")

    def select_shapes(self, selections: Sequence[Mapping[str, Any]]) -> None:
        """Select the points inside lasso paths or boxes given in data coordinates (see
        :func:`points_in_selections`)."""
        self.select_points(self._points.inside(selections))

    # ---------------------------------------------------------------------------------------- plotly adapters
    def _on_selection(self, trace: Any, points: Any, selector: Any) -> None:
        if points.point_inds:
            self.select_points(points.point_inds)

    def _on_click(self, trace: Any, points: Any, device: Any) -> None:
        if points.point_inds:
            self.select_points(points.point_inds, add=bool(device is not None and device.shift))

    def _on_selection_shapes(self, layout: Any, selections: Any) -> None:
        # layout.selections stays empty after a relayout from the browser; the layout's JSON holds the shapes.
        shapes = layout.to_plotly_json().get("selections")
        if shapes:
            self.select_shapes(shapes)

    def _on_deselect(self, trace: Any, points: Any) -> None:
        self.state.clear_selection(origin="map")

    def _on_color_menu(self, change: dict[str, Any]) -> None:
        self.set_color(change["new"])

    # ---------------------------------------------------------------------------------------- views
    def _show_selection(self, change: Change) -> None:
        pos = self.state.positions
        # The selection is drawn as per-point opacity, not with plotly's selectedpoints: plotly.js re-applies a
        # drawn lasso over any selectedpoints sent later, so a cluster chosen after a lasso would show as the
        # lasso. The lasso's outline is removed when the selection comes from elsewhere (layout.selections = ()
        # would send nothing: the property reads empty after a selection made in the browser).
        opacity = selection_opacity(len(self.columns.ids), pos)
        if change.origin != "map" and self.figure.layout.to_plotly_json().get("selections"):
            self.figure.plotly_update(restyle_data={"marker.opacity": [opacity]}, relayout_data={"selections": []},
                                      trace_indexes=[0])
        else:
            self.trace.marker.opacity = opacity

    @property
    def highlighted(self) -> np.ndarray:
        """Row positions drawn as selected (full opacity while something is selected), ascending."""
        opacity = self.trace.marker.opacity
        if opacity is None or np.ndim(opacity) == 0:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(np.asarray(opacity) == SELECTED_OPACITY)

    def _show_colors(self, change: Change) -> None:
        if change.name == "revision" and self.state.color_by != "review":
            return
        mode = self.state.color_by
        if self.color_menu.value != mode:
            self.color_menu.value = mode
        coloring = self.coloring(mode)
        with self.figure.batch_update():
            self.trace.marker.update(coloring.marker())
        self.legend.value = legend_html(coloring)
