"""Image backdoors: a patch (relabelled, or clean-label) and a blended pattern."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .._validate import check_number
from ..data import Dataset
from ..errors import InputError
from ._common import _PATTERN, _SELECT, Poisoning, _check_dataset, _choose, _class_index, _eligible, _rng
from .triggers import BlendTrigger, PatchTrigger, _check_trigger_fits, _make_patch, _trigger_attack


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
    _check_trigger_fits(trig, dataset)
    eligible = _eligible(dataset, exclude, dataset.labels != t)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT), what=f"samples not of target {t}")
    return _trigger_attack(dataset, victims, trig, "patch", random_state, t, source, sources)


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
    _check_trigger_fits(trig, dataset)
    eligible = _eligible(dataset, exclude, dataset.labels != t)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT), what=f"samples not of target {t}")
    return _trigger_attack(dataset, victims, trig, "blend", random_state, t, source, sources)
