"""The preview: the samples behind the current selection, most suspicious first, a page at a time.

Images are shown as PNG thumbnails encoded here from the dataset's uint8 arrays (nearest-neighbour upscaled);
texts as escaped snippets with trigger candidates highlighted. Under each sample: its id, label, prediction,
source, suspicion, review status and top reason, all escaped (:func:`forensics.html.escape_html`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..errors import InputError
from ..html import escape_html, highlight, png_data_url
from ._common import Columns, Panel, category_counts, fmt, review_status
from .state import Change, PanelState

if TYPE_CHECKING:
    from ..investigation import Investigation

#: Characters of text shown per sample.
SNIPPET_CHARS = 400
PAGE_SIZES = (12, 24, 48, 96)

_STYLE = """<style>
.forensics-preview .fx-grid{display:flex;flex-wrap:wrap;gap:8px}
.forensics-preview .fx-card{border:1px solid #ddd;border-radius:4px;padding:4px;font-size:11px;line-height:1.3;
 background:#fff;overflow-wrap:anywhere}
.forensics-preview .fx-card img{image-rendering:pixelated;display:block;margin:0 auto 2px auto}
.forensics-preview .fx-text{font-size:12px;margin-bottom:3px;white-space:pre-wrap}
.forensics-preview .fx-muted{color:#777}
.forensics-preview .fx-bad{color:#b00020}
.forensics-preview mark{background:#ffe066;padding:0 1px}
</style>"""


def preview_order(positions: np.ndarray, suspicion: np.ndarray) -> np.ndarray:
    """``positions`` by decreasing suspicion (NaN last), ties in dataset order."""
    pos = np.asarray(positions, dtype=np.int64)
    s = suspicion[pos]
    return pos[np.lexsort((pos, np.where(np.isnan(s), np.inf, -s)))]


def page_slice(n: int, page: int, page_size: int) -> slice:
    """The rows of page ``page`` (0-based) of ``n`` rows."""
    return slice(page * page_size, min(n, (page + 1) * page_size))


def text_pattern(phrases: Iterable[Sequence[str] | str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern matching any of the phrases, token by token as the trigger search does.

    Parameters
    ----------
    phrases : iterable of str or of token sequences
        ``"great product!"`` or ``("great", "product", "!")``.

    Returns
    -------
    compiled pattern, or None when there is no phrase
    """
    from ..triggers.text import ngram_regex, tokenize

    parts = []
    for p in phrases:
        tokens = tokenize(p) if isinstance(p, str) else [str(t) for t in p]
        if tokens:
            parts.append(f"(?:{ngram_regex(tokens).pattern})")
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def trigger_phrases(triggers: pd.DataFrame) -> list[tuple[str, ...]]:
    """The token sequences of the text candidates of a trigger table (its ``tokens`` column, else the phrase
    quoted in ``description``)."""
    from ..triggers.text import tokenize

    out: list[tuple[str, ...]] = []
    if not len(triggers):
        return out
    for _, row in triggers[triggers["kind"] == "text"].iterrows():
        tokens = row.get("tokens")
        if tokens is not None and not (isinstance(tokens, float) and np.isnan(tokens)) and len(tokens):
            out.append(tuple(str(t) for t in tokens))
            continue
        quoted = re.search(r'"(.+)"', str(row["description"]))
        if quoted:
            out.append(tuple(tokenize(quoted.group(1))))
    return [t for t in out if t]


def selection_summary(positions: np.ndarray, columns: Columns, *, top: int = 4) -> str:
    """One line about a selection: its size, and its labels and sources by share (escaped HTML)."""
    n = len(positions)
    if n == 0:
        return "Nothing selected: lasso points on the map, or choose a cluster, a source, a trigger or a loss range."

    def shares(values: np.ndarray) -> str:
        names, _, counts = category_counts(values)
        order = np.lexsort((names, -counts))
        text = ", ".join(f"{escape_html(names[i])} {counts[i] / n:.0%}" for i in order[:top])
        return text + (f", +{len(names) - top} more" if len(names) > top else "")

    line = f"<b>{n}</b> selected · labels: {shares(columns.label_names[positions])}"
    if columns.sources is not None:
        line += f" · sources: {shares(columns.sources[positions])}"
    return line


def caption_html(i: int, columns: Columns, status: str) -> str:
    """The lines under one sample (escaped): id, label and prediction, source, suspicion and status, reason."""
    label = columns.label_names[i]
    lines = [f"<b>{escape_html(columns.ids[i])}</b>"]
    line = f"label: {escape_html(label)}"
    if columns.predictions is not None:
        pred = columns.predictions[i]
        cls = "" if pred == label else ' class="fx-bad"'
        line += f' · <span{cls}>pred: {escape_html(pred)}</span>'
    lines.append(line)
    if columns.sources is not None:
        lines.append(f"source: {escape_html(columns.sources[i])}")
    lines.append(f"suspicion {escape_html(fmt(columns.suspicion[i]))} · {escape_html(status)}")
    if columns.top_reason[i]:
        lines.append(f'<span class="fx-muted" title="{escape_html(columns.reasons[i])}">'
                     f"{escape_html(columns.top_reason[i])}</span>")
    return "<br>".join(lines)


def page_html(
    positions: np.ndarray,
    columns: Columns,
    status: np.ndarray,
    *,
    images: np.ndarray | None = None,
    texts: np.ndarray | None = None,
    pattern: re.Pattern[str] | None = None,
    thumb_size: int = 96,
) -> str:
    """The cards of one page (``data-sample-id`` on each), images or texts; every piece of data escaped."""
    cards = []
    for i in positions:
        sid = escape_html(columns.ids[i])
        caption = caption_html(int(i), columns, str(status[i]))
        if images is not None:
            width = thumb_size + 40
            cards.append(
                f'<div class="fx-card" data-sample-id="{sid}" style="width:{width}px">'
                f'<img src="{png_data_url(images[i], size=thumb_size)}" alt="{sid}">{caption}</div>'
            )
        else:
            snippet = highlight(str(texts[i]), pattern, max_chars=SNIPPET_CHARS)
            cards.append(f'<div class="fx-card" data-sample-id="{sid}" style="width:100%">'
                         f'<div class="fx-text">{snippet}</div>{caption}</div>')
    return f'{_STYLE}<div class="fx-grid">{"".join(cards)}</div>'


class PreviewPanel(Panel):
    """The samples of the current selection, a page at a time, most suspicious first.

    Parameters
    ----------
    inv : Investigation
    state : PanelState, optional
    highlight : iterable of str or token sequences, optional
        Phrases to highlight in texts; default: the text candidates of ``inv.triggers``.
    thumb_size : int, default 96
        Longer side of the image thumbnails, in pixels.

    Attributes
    ----------
    widget : ipywidgets.VBox with the CSS class ``forensics-preview``
    shown_ids : list of str
        The ids on the current page, in the order shown.
    """

    def __init__(self, inv: Investigation, state: PanelState | None = None, *, highlight: Iterable[Any] | None = None,
                 thumb_size: int = 96, columns: Columns | None = None) -> None:
        self.inv = inv
        self.columns = columns if columns is not None else Columns.of(inv)
        self.state = state if state is not None else PanelState(self.columns.ids)
        if isinstance(thumb_size, bool) or not isinstance(thumb_size, int) or not 8 <= thumb_size <= 512:
            raise InputError(f"thumb_size must be an integer between 8 and 512; got {thumb_size!r}")
        self.thumb_size = thumb_size
        ds = inv.dataset
        self._images = ds.images if ds.kind == "image" else None
        self._texts = ds.texts if ds.kind == "text" else None
        self._phrases_given = None if highlight is None else list(highlight)
        self._phrases_from: Any = None
        self.pattern: re.Pattern[str] | None = None
        self._update_pattern()
        self.shown_ids: list[str] = []
        self.order = np.empty(0, dtype=np.int64)

        self.summary = widgets.HTML()
        self.prev_button = widgets.Button(description="◀ prev", layout=widgets.Layout(width="80px"))
        self.next_button = widgets.Button(description="next ▶", layout=widgets.Layout(width="80px"))
        self.page_label = widgets.HTML()
        sizes = sorted(set(PAGE_SIZES) | {self.state.page_size})
        self.size_menu = widgets.Dropdown(options=sizes, value=self.state.page_size, description="per page",
                                          layout=widgets.Layout(width="150px"))
        self.grid = widgets.HTML()
        self.prev_button.on_click(self.state.guard(self._on_prev))
        self.next_button.on_click(self.state.guard(self._on_next))
        self.size_menu.observe(self.state.guard(self._on_size_menu), names="value")
        bar = widgets.HBox([self.prev_button, self.page_label, self.next_button, self.size_menu],
                           layout=widgets.Layout(align_items="center"))
        self.widget = widgets.VBox([self.summary, bar, self.grid])
        self.widget.add_class("forensics-preview")
        self.state.observe(self._on_selection, "selection")
        self.state.observe(self._render, ("page", "page_size", "revision"))
        self._on_selection()

    # ---------------------------------------------------------------------------------------- logic
    def use_columns(self, columns: Columns) -> None:
        """Show new per-sample columns of the same samples (after ``inv.replace_signals``): the selection is
        ordered by the new suspicion and shows the new reasons."""
        self.columns = columns
        self._on_selection()

    def next_page(self) -> None:
        """Show the next page, if any."""
        if self.state.page + 1 < self.state.n_pages:
            self.state.set_page(self.state.page + 1, origin="preview")

    def prev_page(self) -> None:
        """Show the previous page, if any."""
        if self.state.page > 0:
            self.state.set_page(self.state.page - 1, origin="preview")

    @property
    def html(self) -> str:
        """The markup of the current page (what the browser is given)."""
        return self.grid.value

    def _update_pattern(self) -> None:
        # Without phrases given, the highlight follows inv.triggers, which may be replaced after the panel was built.
        if self._texts is None:
            return
        if self._phrases_given is not None:
            if self.pattern is None:
                self.pattern = text_pattern(self._phrases_given)
        elif self.inv.triggers is not self._phrases_from:
            self._phrases_from = self.inv.triggers
            self.pattern = text_pattern(trigger_phrases(self.inv.triggers))

    # ---------------------------------------------------------------------------------------- adapters
    def _on_prev(self, button: Any) -> None:
        self.prev_page()

    def _on_next(self, button: Any) -> None:
        self.next_page()

    def _on_size_menu(self, change: dict[str, Any]) -> None:
        self.state.set_page_size(change["new"], origin="preview")

    # ---------------------------------------------------------------------------------------- views
    def _on_selection(self, change: Change | None = None) -> None:
        self.order = preview_order(self.state.positions, self.columns.suspicion)
        self.summary.value = selection_summary(self.order, self.columns)
        self._render()

    def _render(self, change: Change | None = None) -> None:
        if change is not None and change.name == "revision":
            self._update_pattern()
        st = self.state
        if self.size_menu.value != st.page_size:
            self.size_menu.value = st.page_size
        shown = self.order[page_slice(len(self.order), st.page, st.page_size)]
        status = review_status(self.inv) if len(shown) else np.empty(0, dtype=object)
        self.shown_ids = [str(s) for s in self.columns.ids[shown]]
        self.grid.value = page_html(shown, self.columns, status, images=self._images, texts=self._texts,
                                    pattern=self.pattern, thumb_size=self.thumb_size) if len(shown) else ""
        self.page_label.value = (f'<span style="padding:0 8px">page {st.page + 1} of {st.n_pages}</span>'
                                 if len(self.order) else "")
        self.prev_button.disabled = st.page == 0
        self.next_button.disabled = st.page + 1 >= st.n_pages
