"""Every panel of an investigation in one layout, sharing one selection.

::

    ┌ map (colour by …) ───────────────┐ ┌ preview of the selection ─────────┐
    │ lasso / box / click              │ │ thumbnails or texts, paged        │
    └──────────────────────────────────┘ └───────────────────────────────────┘
    ┌ Clusters │ High/low loss │ Triggers │ Sources ┐ ┌ review: flag, confirm, ┐
    │ choosing an entry selects its samples          │ │ undo, counts, export   │
    └────────────────────────────────────────────────┘ └────────────────────────┘
    status line (errors in red)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np

from ..html import escape_html
from ._common import DEFAULT_PAGE_SIZE, Columns, status_line
from .clusters import ClusterPanel
from .losses import LossPanel
from .map import MAX_POINTS, MapPanel
from .preview import PreviewPanel
from .review import ReviewPanel
from .sources import SourcePanel
from .state import PanelState
from .triggers import TriggerPanel

if TYPE_CHECKING:
    from ..investigation import Investigation


class Dashboard(widgets.VBox):
    """The investigation dashboard: a widget holding every panel over one :class:`PanelState`.

    Build it with :func:`dashboard` (or ``inv.dashboard()``).

    Attributes
    ----------
    state : PanelState
    map : MapPanel
    preview : PreviewPanel
    clusters : ClusterPanel
    losses : LossPanel
    triggers : TriggerPanel
    sources : SourcePanel
    review : ReviewPanel
    status : ipywidgets.HTML
    """

    def __init__(self, inv: Investigation, *, truth: Any = None, page_size: int = DEFAULT_PAGE_SIZE,
                 patterns: Mapping[str, np.ndarray] | None = None, export_path: str = "flagged_samples.csv",
                 max_points: int = MAX_POINTS) -> None:
        columns = Columns.of(inv)
        state = PanelState(columns.ids, page_size=page_size)
        self.inv = inv
        self.columns = columns
        self.state = state
        self.status = status_line(state)
        self.map = MapPanel(inv, state, truth=truth, columns=columns, max_points=max_points)
        self.preview = PreviewPanel(inv, state, columns=columns)
        self.clusters = ClusterPanel(inv, state, columns=columns)
        self.losses = LossPanel(inv, state, columns=columns)
        if patterns is None:  # what find_triggers stored: patches, and image-wide differences made visible
            from ..triggers import display_pattern

            patterns = {tid: display_pattern(a) for tid, a in inv.trigger_arrays.items()}
        self.triggers = TriggerPanel(inv, state, patterns=patterns, columns=columns)
        self.sources = SourcePanel(inv, state, columns=columns)
        self.review = ReviewPanel(inv, state, export_path=export_path, columns=columns)
        tabs = widgets.Tab(children=[self.clusters.widget, self.losses.widget, self.triggers.widget,
                                     self.sources.widget])
        for i, title in enumerate(("Clusters", "High/low loss", "Triggers", "Sources")):
            tabs.set_title(i, title)
        self.tabs = tabs
        ds = inv.dataset
        header = widgets.HTML(
            f'<div style="font-size:14px"><b>Investigation</b> · {len(ds)} {escape_html(ds.kind)} samples · '
            f"{len(ds.class_names)} classes"
            + (f" · {len(set(ds.sources))} sources" if ds.sources is not None else "") + "</div>")
        # The plots have a fixed width: the left column keeps it, the right one takes the rest and wraps below
        # on narrow screens.
        def left() -> widgets.Layout:
            return widgets.Layout(flex="0 0 640px", width="640px", padding="0 12px 0 0")

        def right() -> widgets.Layout:
            return widgets.Layout(flex="1 1 360px", min_width="360px")

        def row(*children: widgets.Widget) -> widgets.HBox:
            return widgets.HBox(children, layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))

        super().__init__([
            header,
            row(widgets.Box([self.map.widget], layout=left()), widgets.Box([self.preview.widget], layout=right())),
            row(widgets.Box([tabs], layout=left()), widgets.Box([self.review.widget], layout=right())),
            self.status,
        ])
        self.add_class("forensics-dashboard")

    @property
    def selection(self):
        """The selected sample ids (a pandas Index)."""
        return self.state.selection

    def select(self, ids: Any) -> None:
        """Select samples by id, as if lassoed on the map."""
        self.state.select(ids, origin="api")

    def select_query(self, query: str) -> None:
        """Select every sample for which ``query`` holds, e.g. ``"suspicion > 3 and label_name == 'cat'"``
        (:meth:`MapPanel.select_query`)."""
        self.map.select_query(query)

    def refresh(self) -> None:
        """Redraw after changes made outside the dashboard: review decisions (``inv.flag(...)``), new trigger
        candidates (``inv.find_triggers()``) and new signals (``inv.replace_signals``, which ``find_triggers``
        calls when it confirms a trigger): the suspicion, the reasons and every ranking by them follow."""
        fresh = Columns.of(self.inv)
        if not (np.array_equal(fresh.suspicion, self.columns.suspicion, equal_nan=True)
                and np.array_equal(fresh.reasons, self.columns.reasons)):
            self.columns = fresh
            for panel in (self.losses, self.triggers, self.sources):
                panel.columns = fresh  # the sources list is measured again on the revision below
            for panel in (self.map, self.preview, self.clusters):
                panel.use_columns(fresh)
        self.state.bump_revision(origin="api")


def dashboard(inv: Investigation, *, truth: Any = None, page_size: int = DEFAULT_PAGE_SIZE,
              patterns: Mapping[str, np.ndarray] | None = None, export_path: str = "flagged_samples.csv",
              max_points: int = MAX_POINTS) -> Dashboard:
    """The investigation dashboard: map, preview, clusters, high/low loss, triggers, sources and review.

    Parameters
    ----------
    inv : Investigation
        Its map is built on first use if it is not yet (UMAP: about a minute for 10^4 samples).
    truth : Series indexed by sample_id, or array of shape (n,), optional
        Ground truth (e.g. ``load_truth(...)["is_poison"]``), offered as a colour of the map.
    page_size : int, default 24
        Samples per preview page.
    patterns : mapping of trigger_id to uint8 image, optional
        Reconstructed trigger patterns (:func:`forensics.triggers.trigger_patterns`); default: those
        :meth:`~forensics.Investigation.find_triggers` stored (``inv.trigger_arrays``).
    export_path : str
        Proposed in the export box.
    max_points : int, default 60,000
        Points the map draws at most; past this many samples it draws the most suspicious, the reviewed and a
        sample by cluster of the rest, and a lasso, a box or a query still selects every sample (:class:`MapPanel`).

    Returns
    -------
    Dashboard
        An ``ipywidgets.VBox``; display it (last expression of a cell). Its panels are attributes.
    """
    return Dashboard(inv, truth=truth, page_size=page_size, patterns=patterns, export_path=export_path,
                     max_points=max_points)
