"""Review: flag, confirm, clear or unflag the current selection with a note, undo, count, and export the list."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..errors import InputError
from ..html import escape_html
from ._common import Columns, Panel, plural
from .state import Change, PanelState

if TYPE_CHECKING:
    from ..investigation import Investigation

#: The review actions of :class:`~forensics.investigation.Investigation` and how the panel reports them.
ACTIONS = {"flag": "suspected", "confirm": "confirmed", "clear": "cleared", "unflag": "unreviewed"}


def counts_html(counts: Any) -> str:
    """The review counts as one line (names are fixed, counts are numbers)."""
    colours = {"unreviewed": "#777", "suspected": "#e66a00", "confirmed": "#c62828", "cleared": "#2e7d32"}
    return " · ".join(f'<span style="color:{colours.get(k, "#333")}">{escape_html(k)} <b>{int(v)}</b></span>'
                      for k, v in counts.items())


class ReviewPanel(Panel):
    """Buttons acting on the current selection, the review counts, undo and export.

    Parameters
    ----------
    inv : Investigation
    state : PanelState, optional
    export_path : path-like, default "flagged_samples.csv"
        Proposed in the export box (.csv, .parquet or .json).
    """

    def __init__(self, inv: Investigation, state: PanelState | None = None, *,
                 export_path: str | os.PathLike = "flagged_samples.csv", columns: Columns | None = None) -> None:
        self.inv = inv
        ids = columns.ids if columns is not None else inv.dataset.ids
        self.state = state if state is not None else PanelState(ids)
        self.note = widgets.Text(placeholder="note: why (kept with the decision)", layout=widgets.Layout(width="98%"))
        self.buttons = {
            "flag": widgets.Button(description="Flag", button_style="warning", tooltip="mark the selection suspected"),
            "confirm": widgets.Button(description="Confirm", button_style="danger",
                                      tooltip="mark the selection confirmed poison"),
            "clear": widgets.Button(description="Clear", button_style="success",
                                    tooltip="mark the selection reviewed and clean"),
            "unflag": widgets.Button(description="Unflag", tooltip="return the selection to unreviewed"),
        }
        self.undo_button = widgets.Button(description="Undo", icon="undo", tooltip="revert the last decision")
        for action, button in self.buttons.items():
            button.layout = widgets.Layout(width="86px")
            button.on_click(self.state.guard(getattr(self, f"_on_{action}")))
        self.undo_button.layout = widgets.Layout(width="86px")
        self.undo_button.on_click(self.state.guard(self._on_undo))
        self.counter = widgets.HTML()
        self.path = widgets.Text(value=str(export_path), description="export to",
                                 layout=widgets.Layout(flex="1 1 auto", width="auto", min_width="160px"))
        self.include = widgets.Dropdown(options=[("marked", "marked"), ("all samples", "all")], value="marked",
                                        layout=widgets.Layout(width="110px", flex="0 0 auto"))
        self.export_button = widgets.Button(description="Export", icon="download",
                                            layout=widgets.Layout(width="90px", flex="0 0 auto"))
        self.export_button.on_click(self.state.guard(self._on_export))
        self.message = widgets.HTML()
        self.widget = widgets.VBox([
            widgets.HBox([*self.buttons.values(), self.undo_button]),
            self.note,
            self.counter,
            widgets.HBox([self.path, self.include, self.export_button]),
            self.message,
        ])
        self.widget.add_class("forensics-review")
        self.state.observe(self._show_counts, "revision")
        self._show_counts()

    # ---------------------------------------------------------------------------------------- logic
    def decide(self, action: str, *, note: str | None = None) -> list[str]:
        """Apply ``action`` ("flag", "confirm", "clear" or "unflag") to the selection; returns the ids decided on.

        ``note`` defaults to the note box's text.
        """
        if action not in ACTIONS:
            raise InputError(f"action must be one of {list(ACTIONS)}; got {action!r}")
        ids = self.state.selection
        if not len(ids):
            raise InputError(f"nothing is selected: select samples before choosing {action!r}")
        text = self.note.value if note is None else str(note)
        done = getattr(self.inv, action)(ids, note=text)
        self.state.bump_revision(origin="review")
        self.state.report(f"{plural(len(done))} marked {ACTIONS[action]}" + (f" ({text})" if text else ""))
        return [str(s) for s in done]

    def undo(self) -> list[str]:
        """Revert the last review decision; returns the ids restored."""
        done = self.inv.undo()
        self.state.bump_revision(origin="review")
        self.state.report(f"undone: {plural(len(done))} restored to their previous status")
        return [str(s) for s in done]

    def export(self, path: str | os.PathLike | None = None, *, include: str | None = None) -> Path:
        """Write the review list (:meth:`Investigation.export`) to ``path`` (default: the path box)."""
        target = Path(self.path.value if path is None else path).expanduser()
        if not str(target).strip() or target.name == "":
            raise InputError("give a file name to export to, e.g. flagged_samples.csv")
        which = self.include.value if include is None else include
        written = self.inv.export(target, include=which)
        counts = self.inv.counts()
        rows = int(counts["suspected"] + counts["confirmed"]) if which == "marked" else int(counts.sum())
        text = f"Exported {plural(rows)} ({which}) to {Path(written).resolve()}"
        self.message.value = f'<span style="color:#2e7d32">{escape_html(text)}</span>'
        self.state.report(text)
        return Path(written)

    # ---------------------------------------------------------------------------------------- adapters
    def _on_flag(self, button: Any) -> None:
        self.decide("flag")

    def _on_confirm(self, button: Any) -> None:
        self.decide("confirm")

    def _on_clear(self, button: Any) -> None:
        self.decide("clear")

    def _on_unflag(self, button: Any) -> None:
        self.decide("unflag")

    def _on_undo(self, button: Any) -> None:
        self.undo()

    def _on_export(self, button: Any) -> None:
        self.export()

    # ---------------------------------------------------------------------------------------- views
    def _show_counts(self, change: Change | None = None) -> None:
        self.counter.value = counts_html(self.inv.counts())
