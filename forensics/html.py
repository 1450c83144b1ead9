"""Safe HTML from untrusted data: escaping, highlighted text and thumbnails encoded here.

Everything a dataset carries (ids, texts, labels, class names, sources, reasons, notes) is untrusted: an id or a
review text may hold ``<img src=x onerror=...>``. Notebook widgets (``ipywidgets.HTML``) and the HTML report
assign markup unsanitized, so every piece of data goes through :func:`escape_html` before it meets markup, and
images only ever reach a page as PNG bytes encoded by :func:`png_bytes` (a data URL holds nothing but base64).

plotly's hover text, ``text`` and titles understand a small HTML subset (``<b>``, ``<span style>``, ``<a href>``
as a live link); escape with ``quote=False`` there: plotly decodes ``&lt; &gt; &amp;`` but shows ``&quot;`` as
is.
"""

from __future__ import annotations

import base64
import html as _html
import io
import re
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["escape_html", "highlight", "png_bytes", "png_data_url", "upscale"]


def escape_html(value: Any, *, quote: bool = True) -> str:
    """``str(value)`` with ``& < >`` (and with ``quote=True`` also ``" '``) replaced by character references.

    Parameters
    ----------
    value : any
        Converted with ``str`` first (None becomes ``"None"``).
    quote : bool, default True
        Also escape quotes, as attribute values need. Use ``quote=False`` for plotly text, which shows
        ``&quot;`` literally.

    Returns
    -------
    str
    """
    return _html.escape(str(value), quote=quote)


def highlight(text: str, pattern: re.Pattern[str] | None, *, tag: str = "mark", max_chars: int | None = None) -> str:
    """Escaped ``text`` with every match of ``pattern`` wrapped in ``<tag>`` (both sides escaped alike).

    Parameters
    ----------
    text : str
        Untrusted text.
    pattern : compiled regular expression, or None
        What to highlight; matched on the raw text, so a match never splits a character reference.
    tag : str, default "mark"
        A bare tag name (letters only).
    max_chars : int, optional
        Keep about this many characters: a window around the first match (or the start), with "…" where cut.

    Returns
    -------
    str
        Markup in which only the highlight tags are not escaped data.
    """
    if not isinstance(text, str):
        raise InputError(f"text must be a string; got {type(text).__name__}")
    if not re.fullmatch(r"[a-z]+", tag):
        raise InputError(f"tag must be a bare lowercase tag name such as 'mark'; got {tag!r}")
    matches = [] if pattern is None else [m.span() for m in pattern.finditer(text) if m.end() > m.start()]
    lo, hi = 0, len(text)
    if max_chars is not None and len(text) > max_chars:
        first = matches[0][0] if matches else 0
        lo = max(0, min(first - max_chars // 3, len(text) - max_chars))
        hi = lo + max_chars
    out = ["…" if lo > 0 else ""]
    at = lo
    for start, end in matches:
        if end <= lo or start >= hi:
            continue
        start, end = max(start, lo), min(end, hi)
        out.append(escape_html(text[at:start]))
        out.append(f"<{tag}>{escape_html(text[start:end])}</{tag}>")
        at = end
    out.append(escape_html(text[at:hi]))
    out.append("…" if hi < len(text) else "")
    return "".join(out)


def upscale(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscale by the largest whole factor that keeps the longer side at most ``size``
    (at least 1), so that pixels stay crisp squares."""
    factor = max(1, int(size) // max(image.shape[0], image.shape[1]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def png_bytes(image: np.ndarray, *, size: int = 96) -> bytes:
    """A PNG of one uint8 image, upscaled nearest-neighbour towards ``size`` pixels (see :func:`upscale`).

    Parameters
    ----------
    image : ndarray of uint8, shape (h, w), (h, w, 1) or (h, w, 3)
    size : int, default 96
        Target length of the longer side, in pixels.

    Returns
    -------
    bytes
        The PNG file.
    """
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise InputError(f"image must be uint8; got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)) or 0 in a.shape:
        raise InputError(f"image must have shape (h, w) or (h, w, 3); got {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(upscale(a, size))).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_data_url(image: np.ndarray, *, size: int = 96) -> str:
    """``data:image/png;base64,...`` of :func:`png_bytes`: safe inside an ``src`` attribute."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, size=size)).decode("ascii")
