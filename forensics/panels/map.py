"""The map: every sample as a point of the 2-D map, coloured by cluster, label, suspicion, source, review status
or ground truth; lasso, box or click to select.

The points are sent to the browser once. A colour change sends ``marker`` colour properties only (one colour code
per point and a colour scale); a selection sends ``marker.opacity`` only (selected points opaque, the others
faint) and removes plotly's own selection. A lasso or box is read both from plotly's selection event and from the
shape it leaves in ``layout.selections`` (the points inside it are found here): the widget's message buffer may
drop the first when hover events follow it, never the second. The trace is WebGL (``Scattergl``) at every size.

Up to ``max_points`` samples (60,000 by default) one trace holds every point, so a point's index in the trace is
its row in the dataset. Past that the map draws a subset (:func:`drawing_subset`: every one of the most suspicious
samples, the reviewed and selected ones, the rest sampled by cluster) and point i is sample ``drawn[i]``; a faint
density of all the samples lies under the points, and the selected samples that are not drawn are drawn over them.
A lasso or a box still selects every sample inside it, drawn or not (from its shape, over all the coordinates),
and a query (:mod:`forensics.panels.query`) selects every sample for which a condition holds.
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

from .._validate import check_int, check_random_state
from ..errors import InputError
from ..html import escape_html
from ._common import Columns, Panel, category_counts, plural, review_status
from .query import query_mask, sample_table
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
#: Points a map draws at most by default: past this many samples it draws a subset (:func:`drawing_subset`). What a
#: selection costs in the browser grows with the points drawn (benchmarks/RESULTS.md, "The map panel at a million
#: points"): 60,000 keeps a map of any size at the cost of a map of 60,000.
MAX_POINTS = 60_000
#: The smallest drawing budget accepted.
MIN_MAX_POINTS = 1_000
#: One point in this many of the budget goes to the most suspicious samples (6,000 of 60,000).
TOP_SHARE = 10
#: Points every cluster keeps when the rest is sampled (all of a smaller cluster).
CLUSTER_FLOOR = 200
#: Selected samples that a sampled map does not draw are shown over it, up to this many.
OVERLAY_POINTS = 2_000
#: Bins per side of the density drawn under a sampled map.
DENSITY_BINS = 160
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

    def marker(self, rows: np.ndarray | None = None, *, scale: bool = True) -> dict[str, Any]:
        """The ``marker`` properties to set (never x or y).

        Parameters
        ----------
        rows : ndarray of int, optional
            The samples drawn, one per point (default: every sample, in order).
        scale : bool
            Whether these points carry the colour bar (one trace of a figure does).
        """
        values = self.values if rows is None else self.values[rows]
        out = {"color": values, "colorscale": self.colorscale, "cmin": self.cmin, "cmax": self.cmax}
        if scale:
            out.update(showscale=self.showscale,
                       colorbar={"title": {"text": escape_html(self.title, quote=False)}, "thickness": 12})
        else:
            out["showscale"] = False
        return out


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
    names, inverse, counts = category_counts(values)
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
    (a hand-drawn lasso has hundreds; testing every point against every edge took a second at a million points).

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


@dataclass(frozen=True)
class Drawing:
    """Which samples a map draws (:func:`drawing_subset`).

    Attributes
    ----------
    drawn : ndarray of int64, shape (m,)
        Row positions of the drawn samples, ascending: point i of the map is sample ``drawn[i]``.
    n : int
        Samples in all.
    n_top : int
        The most suspicious samples, all drawn.
    n_kept, n_keep : int
        Samples asked to be kept (reviewed or selected) beyond the most suspicious: drawn, and in all.
    """

    drawn: np.ndarray
    n: int
    n_top: int
    n_kept: int
    n_keep: int

    @property
    def sampled(self) -> bool:
        """Whether some samples are not drawn."""
        return len(self.drawn) < self.n

    def split(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The point indices of the drawn samples among ``positions`` (ascending row positions), and the
        positions that are not drawn."""
        pos = np.asarray(positions, dtype=np.int64)
        if not self.sampled:
            return pos, pos[:0]
        at = np.searchsorted(self.drawn, pos)
        hit = at < len(self.drawn)
        hit[hit] = self.drawn[at[hit]] == pos[hit]
        return at[hit], pos[~hit]


def stratified_sample(
    candidates: np.ndarray,
    strata: np.ndarray,
    k: int,
    *,
    rng: np.random.Generator,
    floor: int = CLUSTER_FLOOR,
) -> np.ndarray:
    """``k`` of ``candidates``, spread over their strata so that small strata stay visible.

    Each stratum first gets ``floor`` samples (all of a smaller one; less when ``k`` cannot give every stratum as
    many), the rest of ``k`` goes to the strata in proportion to what each has left (largest remainders), and
    within a stratum the samples are drawn uniformly at random.

    Parameters
    ----------
    candidates : ndarray of int, shape (c,)
        Row positions.
    strata : ndarray, shape (n,)
        Stratum of every row (e.g. its cluster); read at ``candidates``.
    k : int
    rng : numpy.random.Generator
    floor : int

    Returns
    -------
    ndarray of int64, shape (min(k, c),), ascending
    """
    cand = np.asarray(candidates, dtype=np.int64)
    if k >= len(cand):
        return np.sort(cand)
    if k <= 0:
        return cand[:0]
    _, which, sizes = np.unique(strata[cand], return_inverse=True, return_counts=True)
    base = np.minimum(sizes, min(floor, k // len(sizes)))
    room = sizes - base
    left = k - int(base.sum())  # > 0 and < room.sum(), since k < len(cand) = sizes.sum()
    share = left * room / room.sum()
    quota = base + np.floor(share).astype(np.int64)
    missing = k - int(quota.sum())
    if missing:
        quota[np.lexsort((np.arange(len(sizes)), -(share - np.floor(share))))[:missing]] += 1
    # A random order, then grouped by stratum (stable): the first quota of each group are taken.
    order = rng.permutation(len(cand))
    order = order[np.argsort(which[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(len(cand)) - starts[which[order]]
    return np.sort(cand[order[rank < quota[which[order]]]])


def drawing_subset(
    suspicion: np.ndarray,
    clusters: np.ndarray,
    *,
    max_points: int = MAX_POINTS,
    keep: np.ndarray | None = None,
    random_state: int = 0,
) -> Drawing:
    """Which samples a map draws within a budget of ``max_points`` points.

    Every sample when there are no more than ``max_points``. Otherwise, as long as the budget lasts: the
    ``max_points // 10`` most suspicious samples (a sample without a suspicion is never among them), then the
    samples of ``keep`` (sampled by cluster if they alone pass what is left of the budget), then the rest sampled
    by cluster (:func:`stratified_sample`, noise as a cluster of its own) up to ``max_points``.

    Parameters
    ----------
    suspicion : ndarray of float, shape (n,)
        Higher = more suspicious; NaN where not scored.
    clusters : ndarray of int, shape (n,)
    max_points : int
    keep : ndarray of bool, shape (n,), optional
        Samples to draw before the sampled rest (reviewed or selected ones).
    random_state : int
        Seed of the sampling.

    Returns
    -------
    Drawing
    """
    s = np.asarray(suspicion, dtype=np.float64)
    n = len(s)
    max_points = check_int(max_points, "max_points", low=MIN_MAX_POINTS)
    if np.shape(clusters) != (n,):
        raise InputError(f"clusters has shape {np.shape(clusters)}; expected ({n},), one per sample")
    if keep is not None and (np.shape(keep) != (n,) or np.asarray(keep).dtype != bool):
        raise InputError(f"keep must be a boolean mask of shape ({n},)")
    if n <= max_points:
        return Drawing(drawn=np.arange(n, dtype=np.int64), n=n, n_top=0, n_kept=0, n_keep=0)
    rng = np.random.default_rng(check_random_state(random_state))
    chosen = np.zeros(n, dtype=bool)
    scored = np.flatnonzero(np.isfinite(s))
    n_top = min(max_points // TOP_SHARE, len(scored))
    # Highest first, ties in dataset order.
    top = scored[np.argsort(-s[scored], kind="stable")[:n_top]]
    chosen[top] = True
    n_kept = n_keep = 0
    if keep is not None:
        wanted = np.flatnonzero(np.asarray(keep) & ~chosen)
        n_keep = len(wanted)
        kept = stratified_sample(wanted, clusters, max_points - n_top, rng=rng)
        chosen[kept] = True
        n_kept = len(kept)
    rest = stratified_sample(np.flatnonzero(~chosen), clusters, max_points - n_top - n_kept, rng=rng)
    chosen[rest] = True
    return Drawing(drawn=np.flatnonzero(chosen).astype(np.int64), n=n, n_top=n_top, n_kept=n_kept, n_keep=n_keep)


def density_trace(x: np.ndarray, y: np.ndarray, *, bins: int = DENSITY_BINS) -> go.Heatmap:
    """Where every sample lies, as a faint grey 2-D histogram (log counts; empty bins transparent) to draw under
    a sampled map; it takes no hover, click or selection.

    Parameters
    ----------
    x, y : ndarray of float, shape (n,)
    bins : int
        Bins per side.
    """
    ok = np.isfinite(x) & np.isfinite(y)
    counts, xe, ye = np.histogram2d(x[ok], y[ok], bins=bins)
    z = np.log1p(counts).T.astype(np.float32)  # rows are y
    top = max(float(z.max()), 1.0)
    # Empty bins (0) take a transparent colour, the others (log 2 and up) grey: NaN gaps would do the same, but NaN
    # is not JSON and the widget's message would need a lenient parser.
    edge = 0.5 * np.log(2) / top
    return go.Heatmap(z=z, zmin=0.0, zmax=top, x0=float(xe[0] + (xe[1] - xe[0]) / 2), dx=float(xe[1] - xe[0]),
                      y0=float(ye[0] + (ye[1] - ye[0]) / 2), dy=float(ye[1] - ye[0]),
                      colorscale=[[0.0, "rgba(255,255,255,0)"], [edge, "rgba(255,255,255,0)"], [edge, "#ececec"],
                                  [1.0, "#8c8c8c"]],
                      opacity=0.6, showscale=False, hoverinfo="skip", name="all samples")


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

    Up to ``max_points`` samples, every sample is a point (point i is sample i). Past that, the map draws a subset
    (:func:`drawing_subset`): every one of the ``max_points // 10`` most suspicious samples, every sample reviewed or
    selected when the panel is built, and the rest sampled by cluster so that small clusters stay visible; a faint
    density of all the samples lies under the points, and the selected samples that are not drawn are shown over
    them (up to :data:`OVERLAY_POINTS`). Point i is then sample ``drawing.drawn[i]``. Whatever is drawn, a lasso or
    a box selects every sample inside it, drawn or not, and :meth:`select_query` (the query box above the map)
    selects every sample for which a condition holds.

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
    max_points : int, default 60,000
        Points drawn at most (at least 1,000). The points go to the browser once, with a hover text each (about
        160 bytes a point), each selection sends one opacity per point, and the browser's work on a lasso grows
        with the points drawn.

    Attributes
    ----------
    figure : plotly.graph_objects.FigureWidget
        Trace 0 holds the drawn points; a sampled map adds the selected samples not drawn (trace 1) and the density
        of all the samples (trace 2).
    drawing : Drawing
        Which samples are drawn.
    query_box : ipywidgets.Text
        A condition for :meth:`select_query`, run on Enter (or by the "select" button beside it).
    widget : ipywidgets.VBox
    """

    def __init__(self, inv: Investigation, state: PanelState | None = None, *, truth: Any = None, width: int = 620,
                 height: int = 480, columns: Columns | None = None, max_points: int = MAX_POINTS) -> None:
        self.max_points = check_int(max_points, "max_points", low=MIN_MAX_POINTS)
        self.inv = inv
        self.columns = columns if columns is not None else Columns.of(inv)
        self.state = state if state is not None else PanelState(self.columns.ids)
        m = inv.map
        self.clusters = m["cluster"].to_numpy()
        self.truth = None if truth is None else check_truth(truth, self.columns.ids)
        self.modes = tuple(mode for mode in COLOR_MODES if self._available(mode))
        if self.state.color_by not in self.modes:
            raise InputError(f"state.color_by is {self.state.color_by!r}, which this map cannot show; "
                             f"choose from {list(self.modes)}")
        self._x, self._y = m["x"].to_numpy(dtype=np.float64), m["y"].to_numpy(dtype=np.float64)
        self._points = PointIndex(self._x, self._y)
        self.drawing = self._choose_drawing()
        rows = self._rows()
        size = 3 if len(self.drawing.drawn) > 20_000 else 5 if len(self.drawing.drawn) > 3_000 else 7
        self._coloring = coloring = self.coloring(self.state.color_by)
        self._overlay = self._not_drawn()
        # WebGL at every size: one code path, and the only one where plotly's own selection styling can be made
        # neutral (below) while the selection is drawn with per-point opacity.
        trace = go.Scattergl(
            x=self._take(m["x"].to_numpy()), y=self._take(m["y"].to_numpy()), mode="markers",
            hovertext=self._hover(rows), hoverinfo="text",
            marker={"size": size, "line": {"width": 0}, "opacity": self._opacity(), **coloring.marker(rows)},
            # Given (as the same size), these keep plotly.js from fading the points its own selection leaves
            # out (a drawn lasso, or the empty selection left after one is removed).
            selected={"marker": {"size": size}}, unselected={"marker": {"size": size}},
            showlegend=False,
        )
        traces: list[Any] = [trace]
        if self.drawing.sampled:
            # The selected samples that are not drawn, over the points; then where all the samples lie, under
            # them (SVG, beneath the WebGL points whatever the trace order).
            traces.append(go.Scattergl(
                x=self._x[self._overlay], y=self._y[self._overlay], mode="markers",
                hovertext=self._hover(self._overlay), hoverinfo="text", name="selected, not drawn",
                marker={"size": size + 1, "line": {"width": 0}, "opacity": SELECTED_OPACITY,
                        **coloring.marker(self._overlay, scale=False)},
                selected={"marker": {"size": size + 1}}, unselected={"marker": {"size": size + 1}},
                showlegend=False))
            traces.append(density_trace(self._x, self._y))
        axis = {"showgrid": False, "zeroline": False, "showticklabels": False, "title": None}
        self.figure = go.FigureWidget(data=traces, layout={
            "width": width, "height": height, "margin": {"l": 8, "r": 8, "t": 8, "b": 8}, "dragmode": "lasso",
            "hovermode": "closest", "clickmode": "event", "xaxis": axis, "yaxis": axis, "uirevision": "map",
            "plot_bgcolor": "white",
        })
        self.trace = self.figure.data[0]
        self.overlay = self.figure.data[1] if self.drawing.sampled else None
        # Plotly callbacks are one-line adapters to the named handlers below.
        self.trace.on_selection(self.state.guard(self._on_selection))
        self.trace.on_click(self.state.guard(self._on_click))
        self.trace.on_deselect(self.state.guard(self._on_deselect))
        if self.overlay is not None:
            self.overlay.on_click(self.state.guard(self._on_overlay_click))
        # The drawn lasso or box also arrives as layout.selections, in a message of its own: hover events that
        # follow a lasso can overwrite its points message in the widget's outgoing buffer, never this one.
        self.figure.layout.on_change(self.state.guard(self._on_selection_shapes), "selections")

        self.color_menu = widgets.Dropdown(options=list(self.modes), value=self.state.color_by,
                                           description="colour by", layout=widgets.Layout(width="230px"))
        self.color_menu.observe(self.state.guard(self._on_color_menu), names="value")
        self.info = widgets.HTML()
        self._show_info()
        self.query_box = widgets.Text(placeholder="select where: suspicion > 3 and label_name == 'cat'",
                                  continuous_update=False, layout=widgets.Layout(width="460px"))
        self.query_box.add_class("forensics-query")
        # Enter (or leaving the box after an edit) runs the query; the button runs it again.
        self.query_box.observe(self.state.guard(self._on_query), names="value")
        self.query_button = widgets.Button(description="select", tooltip="select every sample the query holds for",
                                           layout=widgets.Layout(width="70px"))
        self.query_button.on_click(self.state.guard(self._on_query_button))
        self.legend = widgets.HTML(legend_html(coloring))
        self.widget = widgets.VBox([widgets.HBox([self.color_menu, self.info]),
                                    widgets.HBox([self.query_box, self.query_button]), self.figure, self.legend])
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

    def _choose_drawing(self) -> Drawing:
        n = len(self._x)
        keep = None
        if n > self.max_points:
            keep = np.zeros(n, dtype=bool)
            keep[self.state.positions] = True
            if int(self.inv.counts()["unreviewed"]) < n:
                keep |= review_status(self.inv) != "unreviewed"
        return drawing_subset(self.columns.suspicion, self.clusters, max_points=self.max_points, keep=keep)

    def _rows(self) -> np.ndarray | None:
        """The drawn samples' rows, or None when every sample is drawn (point i is row i)."""
        return self.drawing.drawn if self.drawing.sampled else None

    def _opacity(self) -> float | np.ndarray:
        """Marker opacity of the drawn points for the current selection (:func:`selection_opacity`); while the
        selection holds only samples that are not drawn, every drawn point is faint."""
        pos = self.state.positions
        if not len(pos):
            return BASE_OPACITY
        shown, _ = self.drawing.split(pos)
        if not len(shown):
            return np.full(len(self.drawing.drawn), UNSELECTED_OPACITY, dtype=np.float32)
        return selection_opacity(len(self.drawing.drawn), shown)

    def _take(self, values: np.ndarray) -> np.ndarray:
        return values if not self.drawing.sampled else values[self.drawing.drawn]

    def _hover(self, rows: np.ndarray | None) -> np.ndarray:
        c = self.columns
        if rows is None:
            return hover_texts(c.ids, c.label_names, c.sources, c.top_reason, self.clusters)
        return hover_texts(c.ids[rows], c.label_names[rows], None if c.sources is None else c.sources[rows],
                           c.top_reason[rows], self.clusters[rows])

    def _show_info(self) -> None:
        d = self.drawing
        if not d.sampled:
            self.info.value = (f'<span style="font-size:12px;color:#555">{d.n} samples · lasso or box to select, '
                               "click a point, shift-click to add, double-click to clear</span>")
            return
        kept = ""
        if d.n_keep:
            kept = (f", all {d.n_keep:,} reviewed or selected" if d.n_kept == d.n_keep
                    else f", {d.n_kept:,} of the {d.n_keep:,} reviewed or selected")
        self.info.value = (
            f'<span style="font-size:12px;color:#555">{d.n:,} samples · {len(d.drawn):,} drawn (all {d.n_top:,} most '
            f"suspicious{kept}, the rest sampled by cluster; grey: where all the samples lie) · lasso or box selects "
            "every sample inside, click a point, shift-click to add, double-click to clear</span>")

    def use_columns(self, columns: Columns) -> None:
        """Show new per-sample columns of the same samples (after ``inv.replace_signals``): the hover texts and
        the current colouring follow; a sampled map draws the new most suspicious samples."""
        self.columns = columns
        coloring = self._coloring = self.coloring(self.state.color_by)
        if self.drawing.sampled:
            drawing = self._choose_drawing()
            if not np.array_equal(drawing.drawn, self.drawing.drawn):
                self.drawing = drawing
                rows = drawing.drawn
                with self.figure.batch_update():
                    self.trace.x, self.trace.y = self._x[rows], self._y[rows]
                    self.trace.hovertext = self._hover(rows)
                    self.trace.marker.update(coloring.marker(rows))
                    self.trace.marker.opacity = self._opacity()
                self._show_info()
                self._show_overlay(force=True)
                self.legend.value = legend_html(coloring)
                return
        with self.figure.batch_update():
            self.trace.hovertext = self._hover(self._rows())
            self.trace.marker.update(coloring.marker(self._rows()))
            if self.overlay is not None:
                self.overlay.hovertext = self._hover(self._overlay)
                self.overlay.marker.update(coloring.marker(self._overlay, scale=False))
        self.legend.value = legend_html(coloring)

    def coloring(self, mode: str) -> Coloring:
        """The colouring of ``mode`` for the current data and review (every sample's value, drawn or not)."""
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
        """Select the samples at these point indices of the map's points (trace 0): point i is sample
        ``drawing.drawn[i]``, which is row i when every sample is drawn. ``add`` keeps the current selection."""
        self._select_rows(self._point_rows(point_inds, self._rows()), add=add)

    def _select_rows(self, rows: np.ndarray, *, add: bool) -> None:
        if add:
            rows = np.concatenate([self.state.positions, rows])
        self.state.select_positions(rows, origin="map")
        self.state.report(f"{plural(len(self.state.positions))} selected on the map")

    @staticmethod
    def _point_rows(point_inds: Sequence[int], rows: np.ndarray | None) -> np.ndarray:
        pos = np.asarray(point_inds, dtype=np.int64)
        if rows is None:
            return pos  # every sample drawn: the state checks the rows
        bad = (pos < 0) | (pos >= len(rows))
        if bad.any():
            raise InputError(f"point index {int(pos[bad][0])} is outside 0..{len(rows) - 1} "
                             f"(the {len(rows)} points drawn)")
        return rows[pos]

    def select_shapes(self, selections: Sequence[Mapping[str, Any]]) -> None:
        """Select every sample inside lasso paths or boxes given in data coordinates, drawn or not (see
        :func:`points_in_selections`)."""
        self._select_rows(self._points.inside(selections), add=False)

    def select_query(self, query: str) -> None:
        """Select every sample for which ``query`` holds, drawn or not.

        Parameters
        ----------
        query : str
            A condition in pandas' query language over the columns of :func:`~forensics.panels.query.sample_table`
            (sample_id, label, label_name, source, suspicion, reasons, <signal>_score, x, y, cluster, status, ...):
            ``"suspicion > 3 and label_name == 'cat'"``, ``"cluster in [4, 7] and status == 'unreviewed'"``,
            ``"reasons.str.contains('patch')"``. Only conditions are accepted (see
            :func:`~forensics.panels.query.check_query`); an expression that is not one, or that pandas cannot
            run, raises :class:`InputError` naming the query and what is wrong.
        """
        rows = np.flatnonzero(query_mask(sample_table(self.inv), query))
        self.state.select_positions(rows, origin="query")
        self.state.report(f"{plural(len(rows))} where {query.strip()}" if len(rows) else f"no sample where "
                          f"{query.strip()}")

    # ---------------------------------------------------------------------------------------- plotly adapters
    def _on_selection(self, trace: Any, points: Any, selector: Any) -> None:
        # A lasso or a box on a sampled map covers samples that are not drawn: its shape, which arrives as
        # layout.selections (_on_selection_shapes), selects them all; its drawn points alone would not.
        if points.point_inds and not (self.drawing.sampled and selector is not None):
            self.select_points(points.point_inds)

    def _on_click(self, trace: Any, points: Any, device: Any) -> None:
        if points.point_inds:
            self.select_points(points.point_inds, add=bool(device is not None and device.shift))

    def _on_overlay_click(self, trace: Any, points: Any, device: Any) -> None:
        if points.point_inds:
            self._select_rows(self._point_rows(points.point_inds, self._overlay),
                              add=bool(device is not None and device.shift))

    def _on_selection_shapes(self, layout: Any, selections: Any) -> None:
        # layout.selections stays empty after a relayout from the browser; the layout's JSON holds the shapes.
        shapes = layout.to_plotly_json().get("selections")
        if shapes:
            self.select_shapes(shapes)

    def _on_deselect(self, trace: Any, points: Any) -> None:
        self.state.clear_selection(origin="map")

    def _on_color_menu(self, change: dict[str, Any]) -> None:
        self.set_color(change["new"])

    def _on_query(self, change: dict[str, Any]) -> None:
        if str(change["new"]).strip():
            self.select_query(change["new"])

    def _on_query_button(self, button: Any) -> None:
        self.select_query(self.query_box.value)

    # ---------------------------------------------------------------------------------------- views
    def _show_selection(self, change: Change) -> None:
        # The selection is drawn as per-point opacity, not with plotly's selectedpoints: plotly.js re-applies a
        # drawn lasso over any selectedpoints sent later, so a cluster chosen after a lasso would show as the
        # lasso. The lasso's outline is removed when the selection comes from elsewhere (layout.selections = ()
        # would send nothing: the property reads empty after a selection made in the browser).
        opacity = self._opacity()
        if change.origin != "map" and self.figure.layout.to_plotly_json().get("selections"):
            self.figure.plotly_update(restyle_data={"marker.opacity": [opacity]}, relayout_data={"selections": []},
                                      trace_indexes=[0])
        else:
            self.trace.marker.opacity = opacity
        self._show_overlay()

    def _not_drawn(self) -> np.ndarray:
        """The selected samples that the map does not draw, at most :data:`OVERLAY_POINTS` of them (spread over
        the selection in the dataset's order)."""
        _, rest = self.drawing.split(self.state.positions)
        return _spread(rest, OVERLAY_POINTS) if len(rest) > OVERLAY_POINTS else rest

    def _show_overlay(self, *, force: bool = False) -> None:
        """Draw the selected samples that the map does not draw (up to :data:`OVERLAY_POINTS`, spread over the
        selection in the dataset's order) over the points."""
        if self.overlay is None:
            return
        rest = self._not_drawn()
        if not force and np.array_equal(rest, self._overlay):
            return
        self._overlay = rest
        with self.figure.batch_update():
            self.overlay.x, self.overlay.y = self._x[rest], self._y[rest]
            self.overlay.hovertext = self._hover(rest)
            self.overlay.marker.update(self._coloring.marker(rest, scale=False))

    @property
    def highlighted(self) -> np.ndarray:
        """Row positions drawn as selected (full opacity while something is selected, or drawn over a sampled map),
        ascending."""
        opacity = self.trace.marker.opacity
        if opacity is None or np.ndim(opacity) == 0:
            drawn = np.empty(0, dtype=np.int64)
        else:
            drawn = np.flatnonzero(np.asarray(opacity) == SELECTED_OPACITY)
        if not self.drawing.sampled:
            return drawn
        return np.union1d(self.drawing.drawn[drawn], self._overlay).astype(np.int64)

    def _show_colors(self, change: Change) -> None:
        if change.name == "revision" and self.state.color_by != "review":
            return
        mode = self.state.color_by
        if self.color_menu.value != mode:
            self.color_menu.value = mode
        coloring = self._coloring = self.coloring(mode)
        with self.figure.batch_update():
            self.trace.marker.update(coloring.marker(self._rows()))
            if self.overlay is not None and len(self._overlay):
                self.overlay.marker.update(coloring.marker(self._overlay, scale=False))
        self.legend.value = legend_html(coloring)


def _spread(positions: np.ndarray, k: int) -> np.ndarray:
    """``k`` of ``positions`` evenly spaced in their order (the first and the last included)."""
    return positions[np.unique(np.linspace(0, len(positions) - 1, k).round().astype(np.int64))]
