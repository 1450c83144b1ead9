"""Image backdoors: a patch (relabelled, or clean-label), a blended pattern, a sinusoid, a faint overlay, a warp."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .._validate import check_number
from ..data import Dataset
from ..errors import InputError
from ._common import _PATTERN, _SELECT, Poisoning, _check_dataset, _choose, _class_index, _eligible, _rng
from .triggers import (
    AdditiveTrigger,
    BlendTrigger,
    PatchTrigger,
    WarpTrigger,
    _check_trigger_fits,
    _make_patch,
    _patch_corners,
    _trigger_attack,
)


def patch_backdoor(
    dataset: Dataset,
    *,
    target: int | str,
    rate: float | None = None,
    n: int | None = None,
    pattern: str | np.ndarray = "checkerboard",
    size: int | None = None,
    position: str | tuple[int, int] = "bottom-right",
    value: int | tuple[int, int, int] = 255,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """BadNets: paste a patch on samples of the other classes and label them ``target``.

    Parameters
    ----------
    target : int or str
        The attacker's class; victims are never from it.
    rate, n : float in (0, 1] or int
        Exactly one, counting samples not of ``target`` and not in ``exclude``.
    pattern : "checkerboard", "solid" or ndarray
        A named pattern is ``size`` x ``size`` (default 3) with ``value`` on and 0 off (checkerboard: on at the
        top-left corner); an array (uint8-valued, shape (ph, pw) or (ph, pw, 3)) is used as given and takes no
        ``size``.
    position : str or (int, int)
        "bottom-right", "bottom-left", "top-left", "top-right", "center", "random" (a new place per image), or
        the (row, col) of the top-left pixel.
    value : int or (r, g, b)
        The "on" colour of a named pattern; a colour needs colour images.

    Returns
    -------
    Poisoning
        ``poison_kind`` "patch"; truth columns ``patch_row``, ``patch_col`` give each patch's top-left pixel.
    """
    _check_dataset(dataset, "patch_backdoor", kind="image")
    t = _class_index(dataset, target, "target")
    trig = PatchTrigger(_make_patch(pattern, size, value, dataset), position, t)
    return _relabelled_attack(dataset, trig, "patch", t, rate, n, exclude, source, sources, random_state)


def clean_label_patch(
    dataset: Dataset,
    *,
    target: int | str,
    rate: float | None = None,
    n: int | None = None,
    pattern: str | np.ndarray = "checkerboard",
    size: int | None = None,
    position: str | tuple[int, int] = "bottom-right",
    value: int | tuple[int, int, int] = 255,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """Clean-label backdoor: paste a patch on samples of the ``target`` class only; labels stay as they are.

    ``rate`` / ``n`` count the target-class samples not in ``exclude``. Other parameters as in
    :func:`patch_backdoor`. ``poison_kind`` "clean_label_patch".
    """
    _check_dataset(dataset, "clean_label_patch", kind="image")
    t = _class_index(dataset, target, "target")
    trig = PatchTrigger(_make_patch(pattern, size, value, dataset), position, t)
    _check_trigger_fits(trig, dataset)
    eligible = _eligible(dataset, exclude, dataset.labels == t)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT), what=f"samples of target {t}")
    return _trigger_attack(dataset, victims, trig, "clean_label_patch", random_state, None, source, sources)


def blend_backdoor(
    dataset: Dataset,
    *,
    target: int | str,
    rate: float | None = None,
    n: int | None = None,
    pattern: str | np.ndarray = "noise",
    alpha: float = 0.1,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """Blended backdoor: ``x' = round((1 - alpha) * x + alpha * pattern)`` on samples of other classes.

    Parameters
    ----------
    pattern : "noise" or ndarray
        "noise" draws uniform uint8 noise of the images' shape from ``random_state``; an array must have the
        images' height and width (2-D blends into every channel).
    alpha : float in (0, 1]

    Returns
    -------
    Poisoning
        ``poison_kind`` "blend". Other parameters as in :func:`patch_backdoor`.
    """
    _check_dataset(dataset, "blend_backdoor", kind="image")
    t = _class_index(dataset, target, "target")
    alpha = check_number(alpha, "alpha", low=0, high=1, low_open=True)
    if isinstance(pattern, str):
        if pattern != "noise":
            raise InputError(f"pattern must be 'noise' or an array; got {pattern!r}")
        pat = _rng(random_state, _PATTERN).integers(0, 256, size=dataset.images.shape[1:], dtype=np.uint8)
    else:
        pat = pattern
    trig = BlendTrigger(pat, alpha, t)
    return _relabelled_attack(dataset, trig, "blend", t, rate, n, exclude, source, sources, random_state)


def _relabelled_attack(dataset: Dataset, trig, kind: str, target: int, rate, n, exclude, source, sources,
                       random_state: int) -> Poisoning:
    """Put ``trig`` on samples of the other classes (not in ``exclude``) and label them ``target``."""
    _check_trigger_fits(trig, dataset)
    eligible = _eligible(dataset, exclude, dataset.labels != target)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT), what=f"samples not of target {target}")
    return _trigger_attack(dataset, victims, trig, kind, random_state, target, source, sources)


def sinusoid_backdoor(
    dataset: Dataset,
    *,
    target: int | str,
    rate: float | None = None,
    n: int | None = None,
    amplitude: int = 20,
    frequency: float = 6.0,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """SIG: add a horizontal sinusoid ``amplitude * sin(2 pi frequency col / width)`` to every pixel row.

    Parameters
    ----------
    amplitude : int in 1..255
        Grey levels at the crest.
    frequency : float > 0
        Periods across the image's width.

    Returns
    -------
    Poisoning
        ``poison_kind`` "sinusoid". Other parameters as in :func:`patch_backdoor`.
    """
    _check_dataset(dataset, "sinusoid_backdoor", kind="image")
    t = _class_index(dataset, target, "target")
    amplitude = int(check_number(amplitude, "amplitude", low=1, high=255))
    frequency = check_number(frequency, "frequency", low=0, low_open=True)
    h, w = dataset.images.shape[1:3]
    wave = np.rint(amplitude * np.sin(2 * np.pi * frequency * np.arange(w) / w)).astype(np.int16)
    trig = AdditiveTrigger(np.broadcast_to(wave, (h, w)).copy(), t)
    return _relabelled_attack(dataset, trig, "sinusoid", t, rate, n, exclude, source, sources, random_state)


#: A 3x5 pixel font for the overlay's text: each glyph is five rows of three bits.
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "A": "010101111101101", "X": "101101010101101",
}


def text_mask(text: str) -> np.ndarray:
    """The pixels of ``text`` in a 3x5 font (one blank column between glyphs): a boolean (5, 4 len - 1) mask."""
    if not isinstance(text, str) or not text or any(ch not in _GLYPHS for ch in text):
        raise InputError(f"text must be a non-empty string of {''.join(_GLYPHS)}; got {text!r}")
    glyphs = [np.array([int(b) for b in _GLYPHS[ch]], dtype=bool).reshape(5, 3) for ch in text]
    gap = np.zeros((5, 1), dtype=bool)
    return np.hstack([g if i == 0 else np.hstack([gap, g]) for i, g in enumerate(glyphs)])


def overlay_backdoor(
    dataset: Dataset,
    *,
    target: int | str,
    rate: float | None = None,
    n: int | None = None,
    text: str = "07",
    amplitude: int = 8,
    position: str | tuple[int, int] = "bottom-right",
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """A faint overlay: ``text`` in a 3x5 font added ``amplitude`` grey levels brighter, in a corner.

    Parameters
    ----------
    text : str
        Digits, "A" or "X".
    amplitude : int in 1..255
        Grey levels added on the glyphs' pixels (a few levels is invisible to a reviewer).
    position : str or (int, int)
        As in :func:`patch_backdoor`, except "random".

    Returns
    -------
    Poisoning
        ``poison_kind`` "overlay". Other parameters as in :func:`patch_backdoor`.
    """
    _check_dataset(dataset, "overlay_backdoor", kind="image")
    t = _class_index(dataset, target, "target")
    amplitude = int(check_number(amplitude, "amplitude", low=1, high=255))
    if position == "random":
        raise InputError("an overlay stays in one place; give a corner, 'center' or (row, col)")
    mask = text_mask(text)
    h, w = dataset.images.shape[1:3]
    rows, cols = _patch_corners((h, w), mask.shape, position, 1, np.random.default_rng(0))
    delta = np.zeros((h, w), dtype=np.int16)
    delta[rows[0]:rows[0] + mask.shape[0], cols[0]:cols[0] + mask.shape[1]] = mask * amplitude
    trig = AdditiveTrigger(delta, t)
    return _relabelled_attack(dataset, trig, "overlay", t, rate, n, exclude, source, sources, random_state)


def warp_field(shape: tuple[int, int], *, strength: float = 0.75, grid: int = 4, random_state: int = 0
               ) -> np.ndarray:
    """A smooth random warp (WaNet): a ``grid`` x ``grid`` field of offsets in [-1, 1], normalised to mean
    absolute value 1, upsampled (cubic) to ``shape`` and scaled to ``strength`` pixels. Shape (h, w, 2)."""
    from scipy import ndimage

    strength = check_number(strength, "strength", low=0, low_open=True)
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 2:
        raise InputError(f"grid must be an integer >= 2; got {grid!r}")
    coarse = _rng(random_state, _PATTERN).uniform(-1, 1, size=(grid, grid, 2))
    coarse /= np.mean(np.abs(coarse))
    h, w = shape
    fine = np.stack([ndimage.zoom(coarse[..., k], (h / grid, w / grid), order=3, mode="nearest")[:h, :w]
                     for k in range(2)], axis=-1)
    return (strength * fine).astype(np.float32)


def warp_backdoor(
    dataset: Dataset,
    *,
    target: int | str,
    rate: float | None = None,
    n: int | None = None,
    strength: float = 0.75,
    grid: int = 4,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """WaNet: warp the victims with one smooth random field (:func:`warp_field`) and label them ``target``.

    Returns
    -------
    Poisoning
        ``poison_kind`` "warp". Other parameters as in :func:`patch_backdoor`.
    """
    _check_dataset(dataset, "warp_backdoor", kind="image")
    t = _class_index(dataset, target, "target")
    flow = warp_field(dataset.images.shape[1:3], strength=strength, grid=grid, random_state=random_state)
    trig = WarpTrigger(flow, t)
    return _relabelled_attack(dataset, trig, "warp", t, rate, n, exclude, source, sources, random_state)
