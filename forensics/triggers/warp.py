"""A smooth warp reconstructed on the model: WaNet's trigger, where no pixel is added and every pixel moves a little.

A warp leaves no mark to find in the pixels (each carrier's pixels move by less than one pixel, differently in
each image) and, on the attack matrix's warps that took, no signal or anchor ranks its carriers well. What the
backdoor changes is the model: it was taught to answer the target class to a warp. So for each class, the smooth
warp of at most ``strength`` pixels that turns the most images of the other classes into it is optimized on the
model (a ``grid`` x ``grid`` field of offsets upsampled bicubically, WaNet's own form; Adam on the cross-entropy
toward the class, on ``n_fit`` images the model classifies right), then applied to ``n_eval`` other such images. A
class the model was taught to reach by a warp is reached by far more of them than the others: the classes' rates
are read as Neural Cleanse reads its trigger sizes, each class's robust z among them (``anomaly``), beside the rate
of a random warp of the same size (a model that answers the target to any warp has learned the warp's texture, not
one field).

Measured on the attack matrix's cached models (``python benchmarks/warps.py``; ``benchmarks/RESULTS.md``, "Warps
stay short in the ranking"): on the report seeds the five warps that took (victims trained 8 epochs) put their
target first, at an anomaly of 13.3 to 33.2 (0.74-0.92 of the held-out images turned; no other class above 2.5), and
five clean models reached at most 3.0; on the tuning seeds half-learned warps reached 8.2 and 17.0, clean models at
most 3.3.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._validate import check_images, check_int, check_number, check_random_state
from ..errors import InputError

#: Columns of :func:`reconstruct_warps`.
WARP_COLUMNS = ("class", "turned", "random", "anomaly", "n_eval", "flow")
#: A rate spread (median absolute deviation) below this is read as this: rates are shares of a few hundred images.
MIN_SPREAD = 0.01


def reconstruct_warps(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classes: Any = None,
    strength: float = 1.0,
    grid: int = 4,
    steps: int = 60,
    n_fit: int = 300,
    n_eval: int = 600,
    preprocess: Any = None,
    random_state: int = 0,
) -> pd.DataFrame:
    """For each class, the smooth warp that turns the most images of the other classes into it, and how unusual that is.

    Parameters
    ----------
    model : torch nn.Module
        Returns logits for a preprocessed batch.
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, 3)
        Held-out images (the model has not memorized them), with their true ``labels``.
    labels : ndarray of int, shape (n,)
    classes : sequence of int, optional
        The classes to reconstruct a warp for (default: every class in ``labels``); the anomaly is read among them,
        so give at least three.
    strength : float
        Largest offset, in pixels.
    grid : int
        Side of the coarse field of offsets (WaNet's ``k``).
    steps : int
        Adam steps.
    n_fit, n_eval : int
        Images of the other classes (classified right by the model) the warp is fitted on, and measured on.
    preprocess : callable, optional
        Payload batch -> model input, as for :func:`forensics.models.predict_proba`; it must act on each pixel alone
        (a scaling, a normalization), so that warping its output is warping the image.
    random_state : int

    Returns
    -------
    DataFrame
        One row per class (:data:`WARP_COLUMNS`): ``turned``, the share of the evaluation images the warp turns into
        the class; ``random``, the share a random warp of the same size turns; ``anomaly``, the robust z of
        ``turned`` among the classes (median and scaled median absolute deviation, at least :data:`MIN_SPREAD`);
        ``flow``, the warp as an (h, w, 2) array of offsets in pixels (rows, then columns: what
        :class:`forensics.redteam.WarpTrigger` applies). Sorted by ``anomaly``, highest first.
    """
    import torch
    import torch.nn.functional as F

    from ..activations import _logits_tensor, _resolve_preprocess

    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch nn.Module; got {type(model).__name__}")
    x = check_images(images, allow_empty=False)
    y = np.asarray(labels)
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise InputError(f"labels must be integer class indices of shape ({len(x)},); got {y.dtype}, {y.shape}")
    chosen = np.unique(y) if classes is None else np.unique(np.asarray(classes, dtype=np.int64))
    if len(chosen) < 3:
        raise InputError(f"a warp's anomaly is read among classes: give at least 3; got {chosen.tolist()}")
    strength = check_number(strength, "strength", low=0, low_open=True)
    grid = check_int(grid, "grid", low=2)
    steps = check_int(steps, "steps", low=1)
    n_fit = check_int(n_fit, "n_fit", low=1)
    n_eval = check_int(n_eval, "n_eval", low=1)
    rng = np.random.default_rng(check_random_state(random_state))
    prep = _resolve_preprocess(model, "image", preprocess)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = torch.cat([prep(x[i:i + 256]) for i in range(0, len(x), 256)])
        if inputs.ndim != 4:
            raise InputError(f"preprocess must give (batch, channels, h, w) image tensors; got {tuple(inputs.shape)}")
        h, w = inputs.shape[2:]
        rows, cols = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack([cols, rows], dim=-1)[None]

        def offsets(coarse: torch.Tensor) -> torch.Tensor:
            """(1, 2, grid, grid) -> (1, 2, h, w) offsets in pixels, at most ``strength``."""
            return strength * torch.tanh(F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True))

        def warp(batch: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
            shift = torch.stack([flow[:, 1] * 2 / max(w - 1, 1), flow[:, 0] * 2 / max(h - 1, 1)], dim=-1)
            return F.grid_sample(batch, (identity + shift).expand(len(batch), -1, -1, -1), mode="bilinear",
                                 padding_mode="border", align_corners=True)

        def classes_of(rows_: np.ndarray, flow: torch.Tensor | None = None) -> np.ndarray:
            """The model's class for the images at ``rows_``, warped by ``flow`` if given."""
            out = []
            with torch.no_grad():
                for i in range(0, len(rows_), 256):
                    batch = inputs[rows_[i:i + 256]]
                    out.append(_logits_tensor(model(batch if flow is None else warp(batch, flow)), len(batch)))
            return torch.cat(out).argmax(1).numpy()

        def share_turned(rows_: np.ndarray, flow: torch.Tensor, c: int) -> float:
            return float((classes_of(rows_, flow) == c).mean())

        predicted = classes_of(np.arange(len(inputs)))

        out = []
        for c in chosen:
            right = np.flatnonzero((y != c) & (predicted == y))
            if len(right) < 2:
                raise InputError(f"class {int(c)}: fewer than 2 images of the other classes that the model "
                                 "classifies right")
            order = rng.permutation(right)
            fit = order[:min(n_fit, len(order) // 2)]
            held = order[len(fit):len(fit) + n_eval]
            coarse = (0.1 * torch.randn(1, 2, grid, grid, generator=torch.Generator().manual_seed(
                int(rng.integers(2**31))))).requires_grad_(True)
            opt = torch.optim.Adam([coarse], lr=0.1)
            goal = torch.full((len(fit),), int(c))
            for _ in range(steps):
                opt.zero_grad()
                loss = F.cross_entropy(_logits_tensor(model(warp(inputs[fit], offsets(coarse))), len(fit)), goal)
                loss.backward()
                opt.step()
            flow = offsets(coarse.detach())
            control = offsets(torch.randn(1, 2, grid, grid, generator=torch.Generator().manual_seed(
                int(rng.integers(2**31)))))
            out.append({"class": int(c), "turned": share_turned(held, flow, int(c)),
                        "random": share_turned(held, control, int(c)), "n_eval": len(held),
                        "flow": flow[0].permute(1, 2, 0).numpy().astype(np.float32)})
    finally:
        model.train(was_training)
    table = pd.DataFrame(out)
    turned = table["turned"].to_numpy()
    spread = max(1.4826 * float(np.median(np.abs(turned - np.median(turned)))), MIN_SPREAD)
    table["anomaly"] = (turned - np.median(turned)) / spread
    table = table.loc[:, list(WARP_COLUMNS)].sort_values("anomaly", ascending=False, kind="stable")
    return table.reset_index(drop=True)


__all__ = ["MIN_SPREAD", "WARP_COLUMNS", "reconstruct_warps"]
