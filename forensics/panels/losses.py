"""High and low loss: the histogram of the model's loss for one class (or all), and the samples behind a range.

High loss points at mislabelled samples and label flips; unusually low loss within a class at samples the model
learnt by heart, such as clean-label poisons and backdoor carriers. The histogram is on log10 of the loss, so
both ends are visible; drag a box over its bars, move the range slider, or take the highest or lowest share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from ..errors import InputError
from ..html import escape_html
from ._common import Columns, Panel, plural
from .state import PanelState

if TYPE_CHECKING:
    from ..investigation import Investigation

#: Losses below this are drawn at this value on the log axis (a loss of exactly 0 has no logarithm).
LOSS_FLOOR = 1e-8
BINS = 40


def log_loss(loss: np.ndarray) -> np.ndarray:
    """log10 of the loss, floored at :data:`LOSS_FLOOR`; NaN stays NaN."""
    with np.errstate(invalid="ignore"):
        return np.log10(np.maximum(np.asarray(loss, dtype=np.float64), LOSS_FLOOR))


def class_rows(labels: np.ndarray, loss: np.ndarray, cls: int | None) -> np.ndarray:
    """Row positions of class ``cls`` (all classes for None) that have a loss."""
    keep = ~np.isnan(loss)
    if cls is not None:
        keep &= labels == cls
    return np.flatnonzero(keep)


def histogram(values: np.ndarray, *, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of ``values`` (finite values only; one unit-wide bin when all are equal)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.histogram(v, bins=bins, range=(lo, hi))


def rows_in_range(rows: np.ndarray, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The ``rows`` whose value lies in [lo, hi]."""
    v = values[rows]
    return rows[(v >= lo) & (v <= hi)]


def extreme_rows(rows: np.ndarray, values: np.ndarray, share: float, *, highest: bool) -> np.ndarray:
    """The ``share`` of ``rows`` with the highest (or lowest) values; at least one row when there are any."""
    if not 0 < share <= 1:
        raise InputError(f"share must be in (0, 1]; got {share!r}")
    if len(rows) == 0:
        return rows
    k = max(1, int(round(share * len(rows))))
    order = np.argsort(values[rows], kind="stable")
    return np.sort(rows[order[-k:]] if highest else rows[order[:k]])


class LossPanel(Panel):
    """Loss histogram per class and the samples behind a range of it.

    Parameters
    ----------
    inv : Investigation
        Needs a loss: ``inv.samples["loss"]`` (an investigation run with a model) or a ``high_loss_score`` signal.
    state : PanelState, optional
    """

    def __init__(self, inv: Investigation, state: PanelState | None = None, *, columns: Columns | None = None) -> None:
        self.inv = inv
        self.columns = columns if columns is not None else Columns.of(inv)
        self.state = state if state is not None else PanelState(self.columns.ids)
        self.available = self.columns.loss is not None
        self.values = log_loss(self.columns.loss) if self.available else None
        self.cls: int | None = None
        self.rows = np.empty(0, dtype=np.int64)
        self.edges = np.zeros(1)
        self._quiet = False
        if not self.available:
            self.widget = widgets.HTML("This investigation has no loss: open it with the model "
                                       "(forensics.investigate(dataset, model)) to see high- and low-loss samples.")
            return
        names = self.columns.class_names
        self.class_menu = widgets.Dropdown(options=[("all classes", -1)] + [(str(c), i) for i, c in enumerate(names)],
                                           value=-1, description="class", layout=widgets.Layout(width="260px"))
        self.figure = go.FigureWidget(
            data=[go.Bar(x=[], y=[], marker={"color": "#6f8fbf"}, hovertemplate="%{y} samples<extra></extra>")],
            layout={"width": 600, "height": 220, "margin": {"l": 40, "r": 8, "t": 8, "b": 36}, "dragmode": "select",
                    "selectdirection": "h", "bargap": 0.05, "plot_bgcolor": "white",
                    "xaxis": {"title": {"text": "log10 loss"}}, "yaxis": {"type": "log", "title": None}},
        )
        self.bars = self.figure.data[0]
        self.slider = widgets.FloatRangeSlider(description="log10 loss", continuous_update=False,
                                               readout_format=".2f", layout=widgets.Layout(width="95%"))
        self.high_button = widgets.Button(description="highest 1%",
                                          tooltip="the 1% of this class with the highest loss")
        self.low_button = widgets.Button(description="lowest 1%",
                                         tooltip="the 1% of this class with the lowest loss")
        self.info = widgets.HTML()
        self.class_menu.observe(self.state.guard(self._on_class_menu), names="value")
        self.slider.observe(self.state.guard(self._on_slider), names="value")
        self.high_button.on_click(self.state.guard(self._on_high))
        self.low_button.on_click(self.state.guard(self._on_low))
        self.bars.on_selection(self.state.guard(self._on_bar_selection))
        self.widget = widgets.VBox([widgets.HBox([self.class_menu, self.high_button, self.low_button]),
                                    self.figure, self.slider, self.info])
        self.widget.add_class("forensics-losses")
        self.set_class(None)

    # ---------------------------------------------------------------------------------------- logic
    def _require(self) -> None:
        if not self.available:
            raise InputError("this investigation has no loss (it was built without a model)")

    def set_class(self, cls: int | None) -> None:
        """Show the histogram of class ``cls`` (an index into the class names; None for all classes)."""
        self._require()
        if cls is not None and not 0 <= int(cls) < len(self.columns.class_names):
            raise InputError(f"class must be in 0..{len(self.columns.class_names) - 1} or None; got {cls!r}")
        self.cls = None if cls is None else int(cls)
        self.rows = class_rows(self.columns.labels, self.columns.loss, self.cls)
        counts, self.edges = histogram(self.values[self.rows])
        centres = (self.edges[:-1] + self.edges[1:]) / 2
        with self.figure.batch_update():
            self.bars.x = centres
            self.bars.y = counts
            self.bars.width = float(self.edges[1] - self.edges[0]) if len(self.edges) > 1 else 1.0
            self.bars.selectedpoints = None
            self.figure.layout.shapes = ()
        self._quiet = True
        try:
            lo, hi = float(self.edges[0]), float(self.edges[-1])
            self.slider.min, self.slider.max = min(lo, self.slider.min), max(hi, self.slider.max)
            self.slider.value = (lo, hi)
            self.slider.min, self.slider.max = lo, hi
            self.slider.step = max((hi - lo) / 200, 1e-6)
            wanted = -1 if self.cls is None else self.cls
            if self.class_menu.value != wanted:
                self.class_menu.value = wanted
        finally:
            self._quiet = False
        self.info.value = f"{len(self.rows)} samples with a loss"

    def select_range(self, lo: float, hi: float) -> None:
        """Select the samples of the current class whose log10 loss lies in [lo, hi]."""
        self._require()
        if not lo <= hi:
            raise InputError(f"the range must have lo <= hi; got ({lo}, {hi})")
        self._select(rows_in_range(self.rows, self.values, lo, hi), lo, hi)

    def select_extreme(self, share: float = 0.01, *, highest: bool = True) -> None:
        """Select the ``share`` of the current class with the highest (or lowest) loss."""
        self._require()
        rows = extreme_rows(self.rows, self.values, share, highest=highest)
        if len(rows):
            self._select(rows, float(self.values[rows].min()), float(self.values[rows].max()))

    def _select(self, rows: np.ndarray, lo: float, hi: float) -> None:
        self.state.select_positions(rows, origin="losses")
        with self.figure.batch_update():
            self.figure.layout.shapes = ({"type": "rect", "xref": "x", "yref": "paper", "x0": lo, "x1": hi,
                                          "y0": 0, "y1": 1, "fillcolor": "#ff7f0e", "opacity": 0.2,
                                          "line": {"width": 0}},)
        self._quiet = True
        try:
            self.slider.value = (max(lo, self.slider.min), min(hi, self.slider.max))
        finally:
            self._quiet = False
        which = "all classes" if self.cls is None else f"class {self.columns.class_names[self.cls]}"
        text = f"{plural(len(rows))} of {which} with loss {10 ** lo:.3g} – {10 ** hi:.3g}"
        self.info.value = escape_html(text)
        self.state.report(text)

    # ---------------------------------------------------------------------------------------- adapters
    def _on_class_menu(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            self.set_class(None if change["new"] == -1 else int(change["new"]))

    def _on_slider(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            self.select_range(*change["new"])

    def _on_high(self, button: Any) -> None:
        self.select_extreme(0.01, highest=True)

    def _on_low(self, button: Any) -> None:
        self.select_extreme(0.01, highest=False)

    def _on_bar_selection(self, trace: Any, points: Any, selector: Any) -> None:
        if points.point_inds:
            self.select_range(float(self.edges[min(points.point_inds)]), float(self.edges[max(points.point_inds) + 1]))
