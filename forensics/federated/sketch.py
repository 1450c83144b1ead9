"""Client updates as flat vectors, and their fixed random sketches.

An update arrives as a flat numpy array, a sequence of arrays (Flower's ``NDArrays``), a mapping name -> tensor
or array (a torch ``state_dict`` delta), a Flower ``Parameters`` or a Flower ``ArrayRecord``. :func:`flatten_update`
turns any of them into one float64 vector and the layout it came in, without importing torch or flwr.

:func:`sketch` projects updates on a fixed seeded Gaussian matrix (``k`` columns, scaled by ``1/sqrt(k)`` so that
norms and inner products are kept in expectation, Johnson-Lindenstrauss). The matrix is never held whole: it is
drawn ``chunk`` rows at a time from a generator seeded by ``(random_state, chunk index)``, so that every chunk is
the same whatever the batch and a 100k-parameter update needs at most ``chunk x k`` floats of it at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._validate import check_int, check_random_state
from ..errors import InputError

#: Default sketch size: cosines between 256-d sketches are within about 0.06 of the exact ones.
SKETCH_DIM = 256
#: Rows of the projection drawn at once (16,384 x 256 float32 = 16 MB).
CHUNK = 16384

#: A layout: (name, shape) of each piece of a flattened update, in order.
Layout = list[tuple[str, tuple[int, ...]]]


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    a = np.asarray(value)
    if a.dtype.kind not in "fiub":
        raise InputError(f"{name} must be numeric; got dtype {a.dtype}")
    return a


def flatten_update(update: Any, *, name: str = "update") -> tuple[np.ndarray, Layout]:
    """One update as a flat float64 vector and its layout.

    Parameters
    ----------
    update : ndarray, sequence of ndarrays, mapping name -> tensor/array, flwr Parameters or flwr ArrayRecord
        Mappings are flattened in their own order (a ``state_dict`` keeps its layers' order); sequences and
        Flower objects name their pieces "0", "1", ...

    Returns
    -------
    flat : ndarray of float64, shape (n_params,)
        NaN and inf are kept (the caller decides what they mean).
    layout : list of (name, shape)
    """
    if type(update).__name__ == "ArrayRecord" and hasattr(update, "to_numpy_ndarrays"):
        update = update.to_numpy_ndarrays()
    elif hasattr(update, "tensors") and hasattr(update, "tensor_type"):  # flwr.common.Parameters
        try:
            from flwr.common import parameters_to_ndarrays
        except ImportError as e:  # pragma: no cover - a Parameters object without flwr cannot be made
            raise InputError("reading a Flower Parameters needs flwr: pip install poison-forensics[bench]") from e
        update = parameters_to_ndarrays(update)
    if isinstance(update, Mapping):
        items = [(str(k), _to_numpy(v, f"{name}[{k!r}]")) for k, v in update.items()]
    elif isinstance(update, np.ndarray) or hasattr(update, "detach"):
        items = [("", _to_numpy(update, name))]
    elif isinstance(update, Sequence) and not isinstance(update, (str, bytes)):
        items = [(str(i), _to_numpy(v, f"{name}[{i}]")) for i, v in enumerate(update)]
    else:
        raise InputError(f"{name} must be an array, a sequence of arrays, a mapping name -> array, a Flower "
                         f"Parameters or ArrayRecord; got {type(update).__name__}")
    if not items:
        raise InputError(f"{name} is empty")
    layout = [(k, tuple(int(s) for s in a.shape)) for k, a in items]
    flat = np.concatenate([a.astype(np.float64, copy=False).ravel() for _, a in items])
    if flat.size == 0:
        raise InputError(f"{name} has no parameters")
    return flat, layout


def sketch(updates: np.ndarray, *, k: int = SKETCH_DIM, random_state: int = 0) -> np.ndarray:
    """Project updates on a fixed seeded Gaussian matrix, ``chunk`` rows at a time.

    Parameters
    ----------
    updates : ndarray of float, shape (n, n_params) or (n_params,)
        Finite values (replace non-finite ones first).
    k : int
        Sketch dimension.
    random_state : int
        Seeds the projection: sketches are comparable only under one seed and one ``k``.

    Returns
    -------
    ndarray of float32, shape (n, k) (or (k,) for one update)
    """
    k = check_int(k, "k", low=1)
    seed = check_random_state(random_state)
    x = np.asarray(updates)
    one = x.ndim == 1
    x2 = x[None] if one else x
    if x2.ndim != 2:
        raise InputError(f"updates must be 1-D or 2-D (n, n_params); got shape {x.shape}")
    out = np.zeros((x2.shape[0], k), dtype=np.float64)
    scale = 1.0 / np.sqrt(k)
    for start in range(0, x2.shape[1], CHUNK):
        block = _projection_block(seed, start // CHUNK, min(CHUNK, x2.shape[1] - start), k)
        out += x2[:, start:start + CHUNK].astype(np.float32) @ block
    out *= scale
    res = out.astype(np.float32)
    return res[0] if one else res


def _projection_block(seed: int, index: int, rows: int, k: int) -> np.ndarray:
    """Rows ``index * CHUNK ... + rows`` of the projection matrix (unscaled standard normals, float32)."""
    return np.random.default_rng([seed, index]).standard_normal((rows, k), dtype=np.float32)


__all__ = ["CHUNK", "SKETCH_DIM", "Layout", "flatten_update", "sketch"]
