"""What every panel reads from an investigation, once, and the small widgets they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..errors import InputError
from ..html import escape_html
from ..signals.registry import score_column
from .state import Change, PanelState

if TYPE_CHECKING:
    from ..investigation import Investigation

#: Samples per preview page.
DEFAULT_PAGE_SIZE = 24


@dataclass(frozen=True)
class Columns:
    """Per-sample arrays of an investigation, in the dataset's order (all shape (n,)).

    Attributes
    ----------
    ids : ndarray of str
    labels : ndarray of int64
    class_names : tuple of str
    label_names : ndarray of str
    sources : ndarray of str, or None
    suspicion : ndarray of float64 (NaN where not scored)
    reasons : ndarray of str
    top_reason : ndarray of str
        The first of the reasons (they are joined by "; ", strongest first).
    predictions : ndarray of str, or None
        The model's predicted class names (``samples["prediction_name"]``).
    loss : ndarray of float64, or None
    """

    ids: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    label_names: np.ndarray
    sources: np.ndarray | None
    suspicion: np.ndarray
    reasons: np.ndarray
    top_reason: np.ndarray
    predictions: np.ndarray | None
    loss: np.ndarray | None

    @classmethod
    def of(cls, inv: Investigation) -> Columns:
        from ..investigation import Investigation

        if not isinstance(inv, Investigation):
            raise InputError(f"inv must be a forensics.Investigation; got {type(inv).__name__}")
        ds = inv.dataset
        names = np.asarray(ds.class_names, dtype=object)
        reasons = inv.signals["reasons"].to_numpy(dtype=object)
        samples = inv.samples
        predictions = None
        if "prediction_name" in samples.columns:
            predictions = samples["prediction_name"].to_numpy(dtype=object).astype(str).astype(object)
        loss = None
        if "loss" in samples.columns and pd.api.types.is_numeric_dtype(samples["loss"]):
            loss = samples["loss"].to_numpy(dtype=np.float64, na_value=np.nan)
        elif score_column("high_loss") in inv.signals.columns:
            loss = inv.signals[score_column("high_loss")].to_numpy(dtype=np.float64, na_value=np.nan)
        if loss is not None and np.isnan(loss).all():
            loss = None
        return cls(
            ids=ds.ids, labels=ds.labels, class_names=tuple(ds.class_names), label_names=names[ds.labels],
            sources=ds.sources, suspicion=inv.signals["suspicion"].to_numpy(dtype=np.float64, na_value=np.nan),
            reasons=reasons, top_reason=np.asarray([r.split("; ", 1)[0] for r in reasons], dtype=object),
            predictions=predictions, loss=loss,
        )


def category_counts(values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct values of ``values`` as text, each value's index among them, and how many carry each.

    What ``np.unique(np.asarray(values).astype(str), return_inverse=True, return_counts=True)`` gives, found by
    hashing (linear time) rather than by sorting every value's text: milliseconds for a million values, where
    the sort took a second.

    Parameters
    ----------
    values : array-like or pandas Categorical, shape (n,)

    Returns
    -------
    names : ndarray of str, shape (k,), sorted
    inverse : ndarray of int64, shape (n,)
    counts : ndarray of int64, shape (k,)
    """
    v = values if isinstance(values, pd.Categorical) else np.asarray(values)
    codes, uniques = pd.factorize(v, use_na_sentinel=False)
    if v.dtype == object and pd.isna(uniques).any():  # None and NaN: one missing value to pandas, two texts here
        codes, uniques = pd.factorize(v.astype(str))
    names, merged = np.unique(np.asarray(uniques).astype(str), return_inverse=True)
    inverse = merged.ravel()[codes].astype(np.int64)
    return names, inverse, np.bincount(inverse, minlength=len(names)).astype(np.int64)


def review_status(inv: Investigation, positions: np.ndarray | None = None) -> np.ndarray:
    """The review status ("unreviewed", "suspected", "confirmed", "cleared") of every sample, or of those at
    ``positions``."""
    return inv.statuses(positions)


def status_line(state: PanelState) -> widgets.HTML:
    """A one-line view of ``state.status``; errors in red. The message is escaped."""
    line = widgets.HTML(layout=widgets.Layout(min_height="1.6em"))
    line.add_class("forensics-status")

    def _show_status(change: Change | None = None) -> None:
        colour = "#b00020" if state.status_is_error else "#333"
        line.value = f'<span style="color:{colour}">{escape_html(state.status)}</span>'

    state.observe(_show_status, "status")
    _show_status()
    return line


def fmt(value: Any, digits: int = 2) -> str:
    """A number or text for a caption: floats rounded, missing values as "–". Not escaped."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)


def plural(n: int, word: str = "sample") -> str:
    """ "1 sample", "2 samples"."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def table_html(rows: list[tuple[str, Any]]) -> str:
    """A two-column key/value table, every cell escaped."""
    body = "".join(
        f'<tr><th style="text-align:left;padding-right:1em;font-weight:600">{escape_html(k)}</th>'
        f"<td>{escape_html(fmt(v))}</td></tr>"
        for k, v in rows
    )
    return f'<table style="font-size:12px;border-collapse:collapse">{body}</table>'


class Panel:
    """Base of the panels: ``.widget`` is what is displayed, and a panel displays as its widget."""

    widget: widgets.Widget
    state: PanelState

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
