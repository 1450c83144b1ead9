"""Shared marks: a small patch, identical to the pixel, at the same place in many otherwise different images.

A pasted trigger (BadNets) is copied pixel for pixel. The evidence needs no model, so it also finds a clean-label
patch (labels kept) that the model barely learned, which no activation or loss signal sees.

Natural images do share exact windows at one place (the edge of a trouser leg, a digit's stroke), but such a
content also turns up at other places, since objects shift; a pasted patch stays at its place. So each ``k x k``
window with contrast counts as its content at its place, and its **net count** is the number of images holding it
there minus the number holding that content only elsewhere (``2 * here - anywhere``). On the 60,000 clean
Fashion-MNIST training images no net count reaches 10, while a planted 3x3 patch reaches the number of carriers.

How unlikely is a net count by chance? The net counts from 2 to ``min_count - 1`` are fitted by a discrete power
law (heavier-tailed than a geometric fall-off, which the 60,000 images showed to be too bold), leaving out a
mark's own partial windows and adding one pseudo-window of each count 2 and 3, so that data with no natural
repeats gets a cautious prior. A window with net count ``m`` gets ``chance`` = the expected number of natural
windows with a net count of ``m`` or more, ``base * zeta(alpha, m)``, which already counts every window tested;
``log10_p = -log10(min(1, chance))``.

Only windows whose contrast (largest minus smallest value, over every channel) reaches ``min_contrast`` count: flat
windows (a black corner, a white sky) recur everywhere. So a patch of one colour pasted over a varying background is
out of reach: no window with contrast is the same in all its carriers. A few grey levels of contrast suffice
(``MIN_CONTRAST = 4``): a faint overlay (two glyphs 4-16 grey levels bright in a black corner) is the same to the
pixel in all its carriers, and the net count and its null already tell a mark from natural repeats; at 64 grey
levels, the bar before, no faint overlay was found, and at 4 still no net count of the 60,000 clean Fashion-MNIST
training images, of the 1,797 scikit-learn digits or of two colour Fashion-MNIST subsets of 10,000 reaches a mark.
Exact duplicate images count once. Windows whose carriers overlap merge into one mark; a mark that spans more than a
quarter of the image is a set of near copies, not a mark (the duplicate signal reports those), and is dropped. A
patch that moves from image to image is out of reach too (window contents recur naturally at some place or other);
the trigger search finds those among suspicious groups. Places are counted a block of rows at a time, so memory
stays bounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage, optimize, special

from .._validate import check_images, check_int
from ..errors import InputError

#: Window side (pixels) compared between images.
WINDOW = 3
#: A window counts only when its values span at least this many grey levels.
MIN_CONTRAST = 4
#: A mark needs a net count of at least this many images; the null is fitted to the net counts below it.
MIN_COUNT = 10
#: A window becomes (part of) a mark when chance would give fewer than this many natural windows as strong.
MAX_CHANCE = 0.01
#: A mark whose box covers more than this share of the image is a set of near copies.
MAX_AREA = 0.25
#: Windows examined as marks, most frequent first (a bound for images with many repeats).
_MAX_KEYS = 2000
#: Images hashed per chunk.
_CHUNK = 2048
#: Windows counted at once: places are taken a block of rows at a time, so memory stays bounded.
_BLOCK = 1 << 23
#: Odd 64-bit multiplier that moves a window's key by its place.
_PLACE = np.uint64(0x9E3779B97F4A7C15)

MARK_COLUMNS = ("row", "col", "height", "width", "n_carriers", "chance", "log10_p", "carriers")


def window_keys(q: np.ndarray, k: int) -> np.ndarray:
    """64-bit keys of every k x k window of images q (m, h, w, c): shape (m, positions), row-major positions.

    The key is the sum of the window's values times a weight ``a[channel] * b[row] * c[column]`` of random odd
    64-bit numbers, in wrap-around arithmetic (collisions are vanishingly rare). The weight factorizes, so the
    sum is built along columns, then rows: 2k passes over the images instead of k * k.
    """
    m, h, w, ch = q.shape
    rows, cols = h - k + 1, w - k + 1
    weights = np.random.default_rng(k).integers(1, 2**63, size=(3, max(k, ch)), dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        base = (q.astype(np.uint64) * weights[0, :ch]).sum(axis=-1, dtype=np.uint64)  # (m, h, w)
        across = np.zeros((m, h, cols), dtype=np.uint64)
        for j in range(k):
            across += base[:, :, j:j + cols] * weights[1, j]
        key = np.zeros((m, rows, cols), dtype=np.uint64)
        for i in range(k):
            key += across[:, i:i + rows, :] * weights[2, i]
    return key.reshape(m, -1)


def _contrast(q: np.ndarray, k: int) -> np.ndarray:
    """Largest minus smallest value of every k x k window over every channel, shape (m, positions)."""
    hi = ndimage.maximum_filter(q.max(axis=-1), size=(1, k, k), mode="nearest")
    lo = ndimage.minimum_filter(q.min(axis=-1), size=(1, k, k), mode="nearest")
    # The filters centre their window; a window's top-left corner is its centre minus k // 2.
    h, w = q.shape[1] - k + 1, q.shape[2] - k + 1
    c = k // 2
    return (hi[:, c:c + h, c:c + w].astype(np.int16) - lo[:, c:c + h, c:c + w]).reshape(len(q), -1)


def _row_blocks(n: int, rows: int, cols: int) -> list[range]:
    """Window rows in blocks of about ``_BLOCK`` windows over ``n`` images (at least one row per block)."""
    step = max(1, _BLOCK // max(1, n * cols))
    return [range(r, min(rows, r + step)) for r in range(0, rows, step)]


def _windows(u: np.ndarray, k: int, min_contrast: int, rows: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Content keys, images and places (row-major over all windows) of the windows with contrast whose top row
    is in ``rows``."""
    cols = u.shape[2] - k + 1
    frees, images, places = [], [], []
    for s in range(0, len(u), _CHUNK):
        q = u[s:s + _CHUNK, rows.start:rows.stop + k - 1]
        ok = _contrast(q, k) >= min_contrast
        img, pos = np.nonzero(ok)
        frees.append(window_keys(q, k)[ok])
        images.append(img + s)
        places.append(pos + rows.start * cols)
    return np.concatenate(frees), np.concatenate(images), np.concatenate(places)


def _repeated_windows(u: np.ndarray, k: int, min_contrast: int, blocks: list[range]) -> dict[str, np.ndarray]:
    """The windows seen in two or more images at one place (a window is its content at its place, and each image
    has one window per place, so counts are image counts), a block of places at a time.

    Returns per such window ``free`` (content key), ``place`` and ``count``, and per occurrence ``of`` (which
    window) and ``image``.
    """
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("free", "place", "count", "of", "image")}
    n_rep = 0
    for rows in blocks:
        free, img, place = _windows(u, k, min_contrast, rows)
        with np.errstate(over="ignore"):
            codes, _ = pd.factorize(free + place.astype(np.uint64) * _PLACE)
        count = np.bincount(codes, minlength=1)
        twice = np.flatnonzero(count >= 2)
        at = np.flatnonzero(count[codes] >= 2)
        number = np.full(len(count), -1, dtype=np.int64)
        number[twice] = np.arange(n_rep, n_rep + len(twice))
        one = np.zeros(len(count), dtype=np.int64)
        one[codes[at]] = at
        for key, value in (("free", free[one[twice]]), ("place", place[one[twice]]), ("count", count[twice]),
                           ("of", number[codes[at]]), ("image", img[at])):
            parts[key].append(value)
        n_rep += len(twice)
    return {key: np.concatenate(value) for key, value in parts.items()}


def _images_anywhere(u: np.ndarray, k: int, min_contrast: int, blocks: list[range], free: np.ndarray
                     ) -> np.ndarray:
    """For each content key of ``free``, the number of images holding it at any place."""
    contents = pd.Index(pd.unique(free))
    pairs = []
    for rows in blocks:
        keys, img, _ = _windows(u, k, min_contrast, rows)
        which = contents.get_indexer(keys)
        seen = which >= 0
        pairs.append(pd.unique(which[seen].astype(np.int64) * len(u) + img[seen]))
    anywhere = np.bincount(pd.unique(np.concatenate(pairs)) // len(u), minlength=len(contents))
    return anywhere[contents.get_indexer(free)]


def _merge(windows: list[tuple[set[int], tuple[int, int], float]], k: int) -> list[dict[str, Any]]:
    """Windows (carriers, top-left place, chance), strongest first, merged into marks where their carriers overlap
    by half of the smaller set: the union of carriers, the box around the windows, the smallest chance."""
    marks: list[dict[str, Any]] = []
    for carriers, (r, c), chance in windows:
        box = (r, c, r + k, c + k)
        for m in marks:
            if len(carriers & m["set"]) >= 0.5 * min(len(carriers), len(m["set"])):
                m["set"] |= carriers
                m["box"] = (min(m["box"][0], r), min(m["box"][1], c), max(m["box"][2], box[2]),
                            max(m["box"][3], box[3]))
                m["chance"] = min(m["chance"], chance)
                break
        else:
            marks.append({"set": carriers, "box": box, "chance": chance})
    return marks


def fall_off(counts: np.ndarray, min_count: int) -> tuple[float, float]:
    """The power-law null of window counts: ``(alpha, base)``, where ``base * zeta(alpha, m)`` (Hurwitz zeta: the
    sum of ``j ** -alpha`` over ``j >= m``) is the expected number of natural windows counted ``m`` or more.

    ``counts`` are the windows' counts; those from 2 to ``min_count - 1`` are fitted (a discrete power law
    truncated to that range, plus one pseudo-window of count 2 and one of count 3, a cautious prior for data with
    no natural repeats).
    """
    c = np.asarray(counts, dtype=np.int64)
    c = np.concatenate([c[(c >= 2) & (c < min_count)], [2, 3]])
    support = np.arange(2, min_count, dtype=np.float64)
    total_log = float(np.log(c).sum())

    def nll(alpha: float) -> float:
        return alpha * total_log + len(c) * np.log(np.sum(support ** -alpha))

    alpha = float(optimize.minimize_scalar(nll, bounds=(1.01, 60.0), method="bounded").x)
    return alpha, len(c) / float(np.sum(support ** -alpha))


def shared_marks(
    images: np.ndarray,
    *,
    window: int = WINDOW,
    min_contrast: int = MIN_CONTRAST,
    min_count: int = MIN_COUNT,
    max_chance: float = MAX_CHANCE,
) -> pd.DataFrame:
    """Patches identical to the pixel at the same place in many images, beyond what chance gives.

    Parameters
    ----------
    images : uint8 array, shape (n, h, w) or (n, h, w, 3)
    window : int
        Side of the compared windows; a patch smaller than it is still caught with its border when that border
        is itself the same in every carrier (a corner), and a larger one by any window inside it with contrast.
    min_contrast : int
        Smallest span of values (grey levels) for a window to count.
    min_count : int
        Smallest net count (images holding the window at its place minus images holding its content only
        elsewhere) that makes a mark; the null is fitted to the net counts below it.
    max_chance : float
        A window joins a mark when chance would give fewer than this many natural windows with its net count.

    Returns
    -------
    DataFrame
        One row per mark, strongest first: ``row``, ``col``, ``height``, ``width`` (the box of its windows),
        ``n_carriers``, ``chance`` (expected number of natural windows with a net count as high as its strongest
        window's),
        ``log10_p`` (``-log10 min(1, chance)``) and ``carriers`` (row positions, int64).
    """
    x = check_images(images, allow_empty=False)
    x = x[..., None] if x.ndim == 3 else x
    k = check_int(window, "window", low=2)
    if k > min(x.shape[1:3]):
        raise InputError(f"window {k} is larger than the {x.shape[1]}x{x.shape[2]} images")
    min_contrast = check_int(min_contrast, "min_contrast", low=1)
    min_count = check_int(min_count, "min_count", low=4)
    if isinstance(max_chance, bool) or not isinstance(max_chance, (int, float)) or not max_chance > 0:
        raise InputError(f"max_chance must be a positive number; got {max_chance!r}")
    n, h, w = x.shape[:3]
    flat = np.ascontiguousarray(x).reshape(n, -1)
    _, first, copy_of = np.unique(flat.view(np.dtype((np.void, flat.shape[1]))).ravel(), return_index=True,
                                  return_inverse=True)
    u = x[first]
    cols = w - k + 1
    blocks = _row_blocks(len(u), h - k + 1, cols)
    rep = _repeated_windows(u, k, min_contrast, blocks)
    net = 2 * rep["count"] - _images_anywhere(u, k, min_contrast, blocks, rep["free"])
    strong = np.flatnonzero(net >= min_count)
    # A mark's partial windows (a patch corner over varying background) recur below min_count in its own carriers
    # only; they are the mark, not natural repeats, and stay out of the null.
    of, img = rep["of"], rep["image"]
    own = np.bincount(of, weights=np.isin(img, img[np.isin(of, strong)]), minlength=len(net)) == rep["count"]
    alpha, base = fall_off(net[~own], min_count)
    chance = base * special.zeta(alpha, net[strong].astype(np.float64))
    keep = chance < max_chance
    order = np.argsort(-net[strong[keep]], kind="stable")[:_MAX_KEYS]
    strong, chance = strong[keep][order], chance[keep][order]
    hit = np.flatnonzero(np.isin(of, strong))
    rows_of = pd.Series(hit).groupby(of[hit]).indices
    marks = _merge([(set(img[hit[rows_of[code]]].tolist()), divmod(int(rep["place"][code]), cols), float(ch))
                    for code, ch in zip(strong, chance)], k)
    rows = []
    for m in marks:
        r0, c0, r1, c1 = m["box"]
        if (r1 - r0) * (c1 - c0) > MAX_AREA * h * w:
            continue
        carriers = np.flatnonzero(np.isin(copy_of, np.fromiter(m["set"], dtype=np.int64)))
        rows.append({"row": r0, "col": c0, "height": r1 - r0, "width": c1 - c0, "n_carriers": len(carriers),
                     "chance": m["chance"], "log10_p": -np.log10(min(1.0, max(m["chance"], 1e-300))),
                     "carriers": carriers})
    table = pd.DataFrame(rows, columns=list(MARK_COLUMNS))
    return table.sort_values("log10_p", ascending=False, kind="stable").reset_index(drop=True)


def shared_mark_scores(marks: pd.DataFrame, n: int) -> np.ndarray:
    """Each sample's strongest mark, as ``-log10`` of its chance (0 for a sample that carries none)."""
    scores = np.zeros(check_int(n, "n", low=0))
    for carriers, value in zip(marks["carriers"], marks["log10_p"]):
        if len(carriers) and np.max(carriers) >= n:
            raise InputError(f"a mark's carriers reach row {int(np.max(carriers))} but there are {n} samples")
        scores[carriers] = np.maximum(scores[carriers], value)
    return scores


def mark_of(marks: pd.DataFrame, n: int) -> np.ndarray:
    """Each sample's strongest mark (its row in ``marks``, which lists the strongest first), or -1."""
    out = np.full(check_int(n, "n", low=0), -1, dtype=np.int64)
    for i, carriers in reversed(list(enumerate(marks["carriers"]))):
        out[carriers] = i
    return out


__all__ = ["MARK_COLUMNS", "fall_off", "mark_of", "shared_mark_scores", "shared_marks", "window_keys"]
