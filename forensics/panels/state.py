"""The shared state of the panels: a plain object with observers, no widgets.

Every panel of a dashboard reads and writes one :class:`PanelState`: the current selection (sample ids), the map's
colour mode, the preview's page, a status line, and a revision counter that moves with each review decision.
Views subscribe with :meth:`PanelState.observe`; widget and plotly callbacks go through :meth:`PanelState.guard`,
which shows any error in the status line (and logs its traceback) instead of letting the widget machinery swallow
it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..data import positions_in
from ..errors import ForensicsError, InputError

logger = logging.getLogger(__name__)

#: The names :meth:`PanelState.observe` accepts.
FIELDS = ("selection", "color_by", "page", "page_size", "status", "revision")


@dataclass(frozen=True)
class Change:
    """One change of a :class:`PanelState` field, as given to observers.

    ``origin`` names who made it ("map", "clusters", "api", ...), so that a view can skip its own echoes.
    """

    name: str
    old: Any
    new: Any
    origin: str


class PanelState:
    """Selection, colour mode, paging and status shared by the panels of one investigation.

    Parameters
    ----------
    ids : sequence of str, shape (n,)
        The dataset's sample ids, in the dataset's order (``inv.dataset.ids``).
    page_size : int, default 24
        Samples per preview page.
    color_by : str, default "cluster"
        The map's colour mode (the map checks the name).

    Attributes
    ----------
    color_by : str
    page : int
        0-based page of the preview; reset to 0 by every new selection.
    page_size : int
    status : str
        The last message for the analyst ("" for none).
    status_is_error : bool
    revision : int
        Incremented after each review decision, so views that show review state refresh.
    """

    def __init__(self, ids: Iterable[Any], *, page_size: int = 24, color_by: str = "cluster") -> None:
        self.ids = np.asarray([str(s) for s in ids], dtype=object)
        self._index: dict[str, int] | None = None
        self._positions = np.empty(0, dtype=np.int64)
        self.color_by = str(color_by)
        self.page = 0
        self.page_size = _check_page_size(page_size)
        self.status = ""
        self.status_is_error = False
        self.revision = 0
        self._observers: list[tuple[frozenset[str] | None, Callable[[Change], Any]]] = []
        self._failing = False

    # ---------------------------------------------------------------------------------------- selection
    @property
    def positions(self) -> np.ndarray:
        """Row positions of the selected samples, ascending (read-only)."""
        return self._positions

    @property
    def selection(self) -> pd.Index:
        """The selected sample ids, in the dataset's order."""
        return pd.Index(self.ids[self._positions], name="sample_id", dtype=object)

    def __len__(self) -> int:
        return len(self.ids)

    def positions_of(self, ids: Iterable[Any]) -> np.ndarray:
        """Row positions of sample ids; an unknown id raises :class:`InputError` naming it."""
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.ids)}
        if isinstance(ids, (str, bytes)):
            ids = [ids]
        return positions_in(self._index, ids, where="investigation")

    def select(self, ids: Iterable[Any], *, origin: str = "api") -> None:
        """Select samples by id (any order, duplicates ignored); replaces the selection."""
        self.select_positions(self.positions_of(ids), origin=origin)

    def select_positions(self, positions: Iterable[int] | np.ndarray, *, origin: str = "api") -> None:
        """Select samples by row position; replaces the selection and returns the preview to its first page."""
        pos = np.asarray(positions if isinstance(positions, np.ndarray) else list(positions))
        if pos.size and pos.dtype.kind not in "iu":
            raise InputError(f"positions must be integers; got dtype {pos.dtype}")
        pos = pos.astype(np.int64, copy=True)
        if pos.size > 1 and not (pos[1:] > pos[:-1]).all():  # a lasso's rows come sorted: no need to sort again
            pos = np.unique(pos)
        if pos.size and (pos[0] < 0 or pos[-1] >= len(self.ids)):
            bad = pos[0] if pos[0] < 0 else pos[-1]
            raise InputError(f"position {int(bad)} is outside 0..{len(self.ids) - 1}")
        pos.flags.writeable = False
        old = self._positions
        if np.array_equal(old, pos):
            return  # the same selection again (a lasso reported twice): nothing to redraw
        self._positions = pos
        self.page = 0
        self._notify(Change("selection", old, pos, origin))

    def clear_selection(self, *, origin: str = "api") -> None:
        """Select nothing."""
        self.select_positions(np.empty(0, dtype=np.int64), origin=origin)

    # ---------------------------------------------------------------------------------------- other fields
    @property
    def n_pages(self) -> int:
        """Pages the selection fills (at least 1)."""
        return max(1, -(-len(self._positions) // self.page_size))

    def set_page(self, page: int, *, origin: str = "api") -> None:
        """Show page ``page`` (0-based) of the selection."""
        if isinstance(page, bool) or not isinstance(page, (int, np.integer)) or not 0 <= page < self.n_pages:
            raise InputError(f"page must be an integer in 0..{self.n_pages - 1}; got {page!r}")
        self._set("page", int(page), origin)

    def set_page_size(self, page_size: int, *, origin: str = "api") -> None:
        """Samples per page; returns to the first page."""
        size = _check_page_size(page_size)
        self.page = 0
        self._set("page_size", size, origin)

    def set_color_by(self, mode: str, *, origin: str = "api") -> None:
        """The map's colour mode (checked by the map)."""
        self._set("color_by", str(mode), origin)

    def report(self, message: str, *, error: bool = False, origin: str = "api") -> None:
        """Show ``message`` in the status line (``error=True`` shows it as an error)."""
        self.status_is_error = bool(error)
        # Always notify: the same message twice (e.g. the same error again) is still news to the analyst.
        old = self.status
        self.status = str(message)
        self._notify(Change("status", old, self.status, origin))

    def bump_revision(self, *, origin: str = "api") -> None:
        """Say that review decisions changed."""
        self._set("revision", self.revision + 1, origin)

    # ---------------------------------------------------------------------------------------- observers
    def observe(self, callback: Callable[[Change], Any], names: str | Iterable[str] | None = None) -> None:
        """Call ``callback(change)`` after each change of the named fields (all fields with ``names=None``).

        Errors raised by the callback are shown in the status line and logged; the other observers still run.
        """
        if not callable(callback):
            raise InputError(f"callback must be callable; got {type(callback).__name__}")
        wanted = None
        if names is not None:
            wanted = frozenset([names] if isinstance(names, str) else names)
            unknown = sorted(wanted - set(FIELDS))
            if unknown:
                raise InputError(f"unknown field(s) {unknown}; fields are {list(FIELDS)}")
        self._observers.append((wanted, callback))

    def _set(self, name: str, value: Any, origin: str) -> None:
        old = getattr(self, name)
        if isinstance(old, type(value)) and old == value:
            return
        setattr(self, name, value)
        self._notify(Change(name, old, value, origin))

    def _notify(self, change: Change) -> None:
        for names, callback in list(self._observers):
            if names is None or change.name in names:
                self.run(callback, change)

    # ---------------------------------------------------------------------------------------- errors
    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn``; an exception becomes an error in the status line (its traceback goes to the log).

        Returns ``fn``'s result, or None when it failed.
        """
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - shown to the analyst and logged, never dropped
            self._fail(getattr(fn, "__name__", repr(fn)), e)
            return None

    def guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` wrapped by :meth:`run`: the form to hand to widget and plotly callbacks."""

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self.run(fn, *args, **kwargs)

        return guarded

    def _fail(self, where: str, error: Exception) -> None:
        if isinstance(error, ForensicsError):
            message = f"Error: {error}"  # a message written for the analyst
        else:
            message = f"Error in {where.lstrip('_')}: {type(error).__name__}: {error}"
        logger.error("panel handler %s failed", where, exc_info=error)
        if self._failing:
            return  # a status view failed while showing an error: the log is the only place left
        self._failing = True
        try:
            self.report(message, error=True, origin="error")
        finally:
            self._failing = False


def _check_page_size(page_size: Any) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, (int, np.integer)) or not 1 <= page_size <= 500:
        raise InputError(f"page_size must be an integer between 1 and 500; got {page_size!r}")
    return int(page_size)
