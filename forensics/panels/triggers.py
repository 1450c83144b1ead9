"""Trigger candidates with their evidence and confirmation on the model; choosing one selects its carriers.

The reconstructed pattern of an image candidate is shown from ``patterns`` (as returned by
:func:`forensics.triggers.trigger_patterns`) when given, else as the carriers' median inside the candidate's
box; a text candidate shows its phrase.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..errors import InputError
from ..html import escape_html, png_data_url
from ._common import Columns, Panel, fmt, plural, table_html
from .state import Change, PanelState

if TYPE_CHECKING:
    from ..investigation import Investigation

_VERDICT_ORDER = {"confirmed": 0, "weak": 1, "untested": 2, "not confirmed": 3}


def trigger_option(i: int, row: pd.Series) -> str:
    """The text of one candidate in the list (plain text)."""
    tid = row.get("trigger_id", f"{row['kind']}-{i + 1}")
    rates = ""
    if pd.notna(row["remove_flip_rate"]) or pd.notna(row["add_flip_rate"]):
        rates = f" · removing flips {fmt(row['remove_flip_rate'] * 100, 0)}%, adding flips " \
                f"{fmt(row['add_flip_rate'] * 100, 0)}%"
    return f"{tid}: {row['description']} · {row['verdict']}{rates} · {len(row['sample_ids'])} carriers"


def _box(value: Any) -> tuple[int, int, int, int] | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    box = [int(v) for v in np.asarray(value).ravel()]
    return tuple(box) if len(box) == 4 else None  # type: ignore[return-value]


def median_patch(images: np.ndarray, rows: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The carriers' per-pixel median inside ``box`` = (row, col, height, width), as uint8."""
    r, c, h, w = box
    patch = np.median(images[rows, r:r + h, c:c + w], axis=0)
    return np.clip(np.rint(patch), 0, 255).astype(np.uint8)


class TriggerPanel(Panel):
    """The trigger candidates of ``inv.triggers``, confirmed first.

    Parameters
    ----------
    inv : Investigation
    state : PanelState, optional
    patterns : mapping of trigger_id to uint8 image, optional
        Reconstructed patterns (:func:`forensics.triggers.trigger_patterns`).
    """

    def __init__(self, inv: Investigation, state: PanelState | None = None, *,
                 patterns: Mapping[str, np.ndarray] | None = None, columns: Columns | None = None) -> None:
        self.inv = inv
        self.columns = columns if columns is not None else Columns.of(inv)
        self.state = state if state is not None else PanelState(self.columns.ids)
        self.patterns = dict(patterns or {})
        self._quiet = False
        self._shown: pd.DataFrame | None = None
        self.table = inv.triggers
        self.list = widgets.Select(options=[], rows=8, layout=widgets.Layout(width="100%"))
        self.details = widgets.HTML()
        self.list.observe(self.state.guard(self._on_list), names="value")
        self.widget = widgets.VBox()
        self.widget.add_class("forensics-triggers")
        self.state.observe(self._forget_choice, "selection")
        self.state.observe(self.refresh, "revision")
        self.refresh()

    def refresh(self, change: Change | None = None) -> None:
        """List the candidates of ``inv.triggers`` again if it was replaced (e.g. by ``inv.find_triggers()``)."""
        table = self.inv.triggers
        if table is self._shown:
            return
        self._shown = table
        rank = table["verdict"].map(_VERDICT_ORDER).fillna(len(_VERDICT_ORDER)) if len(table) else table["verdict"]
        self.table = table.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank")
        if not len(self.table):
            self.widget.children = [widgets.HTML(
                "No trigger candidates yet: run <code>inv.find_triggers()</code> (or set <code>inv.triggers</code> "
                "to a table of <code>forensics.triggers.triggers_table</code>), then <code>dash.refresh()</code>.")]
            return
        self._quiet = True
        try:
            self.list.options = [(trigger_option(i, row), i) for i, (_, row) in enumerate(self.table.iterrows())]
            self.list.rows = min(8, len(self.table))
            self.list.value = None
        finally:
            self._quiet = False
        self.details.value = ""
        self.widget.children = [self.list, self.details]

    def choose(self, i: int) -> None:
        """Select the carriers of candidate ``i`` (its row in the list) and show its evidence and pattern."""
        if not 0 <= i < len(self.table):
            raise InputError(f"trigger candidate {i!r} does not exist; there are {len(self.table)}")
        row = self.table.iloc[i]
        self.state.select(row["sample_ids"], origin="triggers")
        self.details.value = self.details_html(row)
        carriers = plural(len(row["sample_ids"]), "carrier")
        self.state.report(f"trigger {row.get('trigger_id', i + 1)}: {carriers} selected")
        if self.list.value != i:
            self._quiet = True
            try:
                self.list.value = i
            finally:
                self._quiet = False

    def details_html(self, row: pd.Series) -> str:
        """Evidence, confirmation and the pattern or phrase of one candidate (escaped)."""
        keys = ("description", "evidence", "verdict", "remove_flip_rate", "add_flip_rate", "control_remove_rate",
                "control_add_rate", "target", "reason")
        rows = [(k, row[k]) for k in keys if k in row.index and not _missing(row[k])]
        shown = ""
        if row["kind"] == "warp" and self.columns is not None and str(row.get("trigger_id")) in self.patterns:
            grid = png_data_url(self.patterns[str(row["trigger_id"])], size=64)
            shown = (f'<div style="margin:4px 0"><img src="{grid}" style="image-rendering:pixelated;border:1px solid '
                     '#ccc" alt="warp"> <span style="font-size:12px">a grid warped by the reconstructed warp (offsets '
                     'magnified; the warp itself moves pixels by less than one)</span></div>')
        elif row["kind"] == "image" and self.columns is not None and self.inv.dataset.kind == "image":
            pattern = self.patterns.get(str(row.get("trigger_id")))
            box = _box(row.get("box"))
            if pattern is None and box is not None and len(row["sample_ids"]):
                carriers = self.state.positions_of(row["sample_ids"])
                pattern = median_patch(self.inv.dataset.images, carriers, box)
            if pattern is not None:
                where = f" at rows {box[0]}..{box[0] + box[2] - 1}, columns {box[1]}..{box[1] + box[3] - 1}" \
                    if box is not None else ""
                caption = ("image-wide difference from the images the group looks like (grey: none; brighter and "
                           "darker: what it adds and takes away)" if _image_wide(row)
                           else f"reconstructed pattern{where}")
                shown = (f'<div style="margin:4px 0"><img src="{png_data_url(pattern, size=64)}" '
                         f'style="image-rendering:pixelated;border:1px solid #ccc" alt="pattern"> '
                         f'<span style="font-size:12px">{escape_html(caption)}</span></div>')
        elif row["kind"] == "text":
            tokens = row.get("tokens")
            phrase = " ".join(map(str, tokens)) if tokens is not None and not _missing(tokens) else row["description"]
            shown = f'<div style="margin:4px 0;font-size:13px">phrase: <mark>{escape_html(phrase)}</mark></div>'
        return shown + table_html(rows)

    def _on_list(self, change: dict[str, Any]) -> None:
        if not self._quiet and change["new"] is not None:
            self.choose(int(change["new"]))

    def _forget_choice(self, change: Change) -> None:
        if change.origin != "triggers" and self.list.value is not None:
            self._quiet = True
            try:
                self.list.value = None
            finally:
                self._quiet = False


def _image_wide(row: pd.Series) -> bool:
    """Whether an image candidate has no local pattern (``local`` False; None or missing for text and old tables)."""
    local = row.get("local")
    return local is not None and not _missing(local) and not bool(local)


def _missing(v: Any) -> bool:
    if isinstance(v, (list, tuple, np.ndarray)):
        return len(v) == 0
    return v is None or (isinstance(v, float) and np.isnan(v))
