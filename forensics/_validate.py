"""Argument checks, one wording per kind of mistake: done once at each public function's edge.

Every message names the parameter, what is allowed and what was received ("k must be an integer >= 1; got 0").
Scalars: :func:`check_int`, :func:`check_number`, :func:`check_random_state`, :func:`check_choice`; arrays:
:func:`check_images`, :func:`check_features`, :func:`check_labels`, :func:`check_probs`, :func:`check_scores`.
Nothing here imports the rest of the package, so every module may use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

#: Largest seed: scikit-learn, UMAP and numpy's legacy generators take seeds below 2**32.
MAX_SEED = 2**32 - 1


def _range_text(low: float | None, high: float | None, *, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}]"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    return "" if high is None else f" <= {high}"


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (not a bool) in ``[low, high]``, as a Python int, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
            low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{name} must be an integer{_range_text(low, high)}; got {value!r}")
    return int(value)


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """A finite real number (not a bool) in ``[low, high]`` (``(low, high]`` with ``low_open``), or a clear error."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) and bool(
        np.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise InputError(f"{name} must be a finite number{_range_text(low, high, low_open=low_open)}; got {value!r}")
    return float(value)


def check_random_state(random_state: Any, name: str = "random_state") -> int:
    """The one seed contract of the toolkit: an integer in ``[0, 2**32 - 1]``, returned as a Python int."""
    return check_int(random_state, name, low=0, high=MAX_SEED)


def check_choice(value: Any, name: str, choices: Any) -> Any:
    """One of ``choices``, or a clear error that lists them."""
    options = list(choices)
    if not any(type(value) is type(c) and value == c for c in options):
        raise InputError(f"{name} must be one of {options!r}; got {value!r}")
    return value


def check_images(images: Any, name: str = "images", *, allow_empty: bool = True) -> np.ndarray:
    """A uint8 stack of images: (n, height, width) for grayscale (a single channel last is dropped) or
    (n, height, width, 3) for colour, with no empty side (and at least one image unless ``allow_empty``)."""
    x = images if isinstance(images, np.ndarray) else np.asarray(images)
    if x.dtype != np.uint8:
        raise InputError(f"{name} must be a uint8 array (0-255); got dtype {x.dtype}. "
                         "For floats in [0, 1] use (x * 255).round().astype(np.uint8)")
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3))):
        raise InputError(f"{name} must have shape (n, height, width) or (n, height, width, channels) with 1 or 3 "
                         f"channels last; got {x.shape}")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise InputError(f"{name} have an empty side: shape {x.shape}")
    if not allow_empty and len(x) == 0:
        raise InputError(f"{name} is empty; give at least one image")
    return x


def check_features(features: Any, *, name: str = "features", min_rows: int = 1) -> np.ndarray:
    """A finite float32 2-D array of shape (n, d), or a clear error."""
    x = np.asarray(features)
    if x.dtype.kind not in "fiub":
        raise InputError(f"{name} must be numeric; got dtype {x.dtype}")
    if x.ndim != 2:
        raise InputError(f"{name} must be 2-D (n_samples, n_features); got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise InputError(f"{name} has {x.shape[0]} rows; at least {min_rows} are needed")
    if x.shape[1] == 0:
        raise InputError(f"{name} has no columns")
    if x.dtype.itemsize > 4 and x.dtype.kind == "f" and x.size:
        # Finite float64 beyond float32's range would become inf below and be reported as such: say what it is.
        top = float(np.nanmax(np.abs(np.where(np.isfinite(x), x, 0))))
        if top > float(np.finfo(np.float32).max):
            raise InputError(f"{name} has values up to {top:.3g} in size, beyond float32's range (about 3.4e38) "
                             "in which activations are kept; scale them down")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise InputError(
            f"{name} has {int(bad.sum())} NaN or infinite value(s) in {len(rows)} row(s), first at row {rows[0]}"
        )
    return x


def check_labels(labels: Any, n: int, *, name: str = "labels", n_classes: int | None = None) -> np.ndarray:
    """Integer class indices of length n (and below n_classes when given), or a clear error."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {y.shape}")
    if len(y) != n:
        raise InputError(f"{name} has {len(y)} entries but features has {n} rows")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise InputError(f"{name} must be integer class indices; got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if n and y.min() < 0:
        raise InputError(f"{name} must be >= 0; found {int(y.min())}")
    if n_classes is not None and n and y.max() >= n_classes:
        raise InputError(f"{name} has class {int(y.max())} but only {n_classes} classes are known")
    return y


def check_probs(probs: Any, n: int, *, name: str = "probs") -> np.ndarray:
    """Row-stochastic probabilities of shape (n, n_classes), or a clear error."""
    p = check_features(probs, name=name)
    if p.shape[0] != n:
        raise InputError(f"{name} has {p.shape[0]} rows but labels has {n} entries")
    if p.min() < 0 or p.max() > 1 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise InputError(f"{name} must hold probabilities in [0, 1] whose rows sum to 1 (apply a softmax first)")
    return p


def check_scores(scores: Any, *, name: str = "scores") -> np.ndarray:
    """A 1-D float array of per-sample scores, NaN allowed only where a signal could not score a sample."""
    s = np.asarray(scores)
    if s.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {s.shape}")
    if s.dtype.kind not in "fiub":
        raise InputError(f"{name} must be numeric; got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if np.isinf(s).any():
        raise InputError(f"{name} has infinite values")
    return s
