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

Measured on the attack matrix's cached models at the defaults (30 Adam steps on 150 images, 400 to measure:
``python benchmarks/warps.py``; ``benchmarks/RESULTS.md``, "A warp found on the model"): on the report seeds the
eight warps whose attack succeeded at least 68% of the time (victims trained 8 epochs) put their target first, at an
anomaly of 13.4 to 48.9 (0.52-0.92 of the held-out images turned; no other class above 5.8), and ten clean models
reached at most 6.7, with at most 13% of the images turned (the add test of :func:`find_warp` leaves them
unconfirmed); on the tuning seeds a half-learned warp (attack success 16%) reached 6.2, clean models at most 3.9.
Twice the steps on twice the images (four times the cost) kept clean models at 3.3 and below.

:func:`find_warp` takes the class that stands out, confirms its warp by the add test, and finds its carriers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._validate import check_images, check_int, check_number, check_random_state
from ..errors import InputError
from .confirm import Confirmation

#: Columns of :func:`reconstruct_warps`.
WARP_COLUMNS = ("class", "turned", "random", "anomaly", "n_eval", "flow")
#: A rate spread (median absolute deviation) below this is read as this: rates are shares of a few hundred images.
MIN_SPREAD = 0.01
#: The anomaly from which a class's warp is reported (:func:`find_warp`): on the attack matrix's tuning seeds clean
#: models reached at most 3.9, a half-learned warp 6.2, warps that took 20 and more.
WARP_ANOMALY = 6.0
#: Fewest held-out images on each side of the carrier probe (warped images the model turns, clean target images).
MIN_PROBE = 10
#: A training image carries the warp when its evidence reaches ``-log10`` of this, or lies beyond every clean held-out
#: image of the class where there are too few of them to reach it.
CARRIER_P = 0.01


class _TooFewRight(InputError):
    """The model classifies too few held-out images right to read a warp on."""


def reconstruct_warps(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classes: Any = None,
    strength: float = 1.0,
    grid: int = 4,
    steps: int = 30,
    n_fit: int = 150,
    n_eval: int = 400,
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
    # Run where the model's parameters are (a GPU model gets its batches there); the images stay on the CPU.
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = torch.cat([prep(x[i:i + 256]) for i in range(0, len(x), 256)])
        if inputs.ndim != 4:
            raise InputError(f"preprocess must give (batch, channels, h, w) image tensors; got {tuple(inputs.shape)}")
        h, w = inputs.shape[2:]
        rows, cols = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack([cols, rows], dim=-1)[None].to(device)

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
                    batch = inputs[rows_[i:i + 256]].to(device)
                    out.append(_logits_tensor(model(batch if flow is None else warp(batch, flow)), len(batch)))
            return torch.cat(out).argmax(1).cpu().numpy()

        def share_turned(rows_: np.ndarray, flow: torch.Tensor, c: int) -> float:
            return float((classes_of(rows_, flow) == c).mean())

        predicted = classes_of(np.arange(len(inputs)))

        out = []
        for c in chosen:
            right = np.flatnonzero((y != c) & (predicted == y))
            if len(right) < 2:
                raise _TooFewRight(f"class {int(c)}: fewer than 2 images of the other classes that the model "
                                 "classifies right")
            order = rng.permutation(right)
            fit = order[:min(n_fit, len(order) // 2)]
            held = order[len(fit):len(fit) + n_eval]
            coarse = (0.1 * torch.randn(1, 2, grid, grid, generator=torch.Generator().manual_seed(
                int(rng.integers(2**31))))).to(device).requires_grad_(True)
            opt = torch.optim.Adam([coarse], lr=0.1)
            goal = torch.full((len(fit),), int(c), device=device)
            fit_inputs = inputs[fit].to(device)
            for _ in range(steps):
                opt.zero_grad()
                loss = F.cross_entropy(_logits_tensor(model(warp(fit_inputs, offsets(coarse))), len(fit)), goal)
                loss.backward()
                opt.step()
            flow = offsets(coarse.detach())
            control = offsets(torch.randn(1, 2, grid, grid, generator=torch.Generator().manual_seed(
                int(rng.integers(2**31)))).to(device))
            out.append({"class": int(c), "turned": share_turned(held, flow, int(c)),
                        "random": share_turned(held, control, int(c)), "n_eval": len(held),
                        "flow": flow[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)})
    finally:
        model.train(was_training)
    table = pd.DataFrame(out)
    turned = table["turned"].to_numpy()
    spread = max(1.4826 * float(np.median(np.abs(turned - np.median(turned)))), MIN_SPREAD)
    table["anomaly"] = (turned - np.median(turned)) / spread
    table = table.loc[:, list(WARP_COLUMNS)].sort_values("anomaly", ascending=False, kind="stable")
    return table.reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class WarpTriggerCandidate:
    """A warp reconstructed on the model whose class stands out (:func:`find_warp`).

    Attributes
    ----------
    target : int
    flow : ndarray of float32, shape (h, w, 2)
        The reconstructed warp, in pixels (what :class:`forensics.redteam.WarpTrigger` applies); not the attacker's
        own field, but one the model answers the same way.
    anomaly : float
        The class's robust z among the classes (:func:`reconstruct_warps`).
    evidence : ndarray of float64, shape (n,)
        Per training sample, ``-log10`` of how rarely a clean image of the target class looks this much like a
        warped image of another class to the model (0 for samples of other labels).
    threshold : float
        The evidence from which a sample is a carrier: ``-log10`` :data:`CARRIER_P`, or ``log10(m + 1)`` for ``m``
        clean held-out images of the class when that is less (beyond all of them: a p-value cannot be read finer).
    confirmation : Confirmation
        The add test on held-out images beside a random warp of the same size; there is no remove test (a warp
        cannot be taken out of its carriers), so ``remove_tried`` is 0.
    add_log10_p : float
        ``-log10`` p of the add test against its control (a one-sided binomial test, as
        :func:`~forensics.triggers.confirmation_log10_p` reads each test).
    description : str
    """

    target: int
    flow: np.ndarray = field(repr=False)
    anomaly: float
    evidence: np.ndarray = field(repr=False)
    threshold: float
    confirmation: Confirmation
    add_log10_p: float
    description: str = ""

    @property
    def carriers(self) -> np.ndarray:
        """Which training samples carry the warp: their evidence reaches ``threshold``."""
        return np.asarray(self.evidence) >= self.threshold


def find_warp(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    holdout_images: np.ndarray,
    holdout_labels: np.ndarray,
    *,
    preprocess: Any = None,
    layer: str | None = None,
    pooling: Any = "flatten",
    strength: float | None = None,
    min_anomaly: float = WARP_ANOMALY,
    random_state: int = 0,
) -> WarpTriggerCandidate | None:
    """The warp backdoor of a model, if one stands out, confirmed and with its carriers' evidence; else None.

    :func:`reconstruct_warps` on the held-out images; the class whose warp stands out most, at an anomaly of at least
    ``min_anomaly``, is tested as a trigger: its warp is added to held-out images of other classes beside a random
    warp of the same size (the rates :func:`reconstruct_warps` measured). Its carriers are the training images
    labelled with the class that look, in the model's features, like the warped images of other classes it turns
    rather than like its own clean held-out images: a logistic probe between the two, its scores on the training
    images read against the clean side's own (out-of-fold) scores as a tail probability
    (:func:`forensics.signals.combine.tail_probability`). On the attack matrix's tuning warps (seeds 0-4, victims
    trained 8 epochs) the probe ranked the carriers among their label at AUROC 0.993-0.998; at ``-log10`` p >= 2 it
    took 72-95% of them and 0.6-1.5% of the clean images of the label.

    Parameters
    ----------
    model : torch nn.Module
    images, labels : the training images and labels (the carriers are searched among them)
    holdout_images, holdout_labels : held-out images with their true labels (at least 3 classes)
    preprocess : callable, optional
        As for :func:`reconstruct_warps`.
    layer, pooling
        The features the probe reads (:func:`forensics.activations.extract_activations`; default the penultimate
        layer).
    strength : float, optional
        Largest offset of the reconstructed warp, in pixels (:func:`reconstruct_warps`). Default: 1, or a sixteenth
        of the image's shorter side when that is less (a pixel is much of a small image: warps of 1 pixel turned
        70-90% of held-out 8x8 digits into most classes on a clean model, half a pixel at most 27%).
    min_anomaly : float
    random_state : int

    Returns
    -------
    WarpTriggerCandidate or None
        None when no class stands out, or when the model gets fewer than 2 held-out images of the other classes
        right for some class.
    """
    from ..redteam import WarpTrigger
    from .findings import binomial_log10_p

    x = check_images(images, allow_empty=False)
    y = np.asarray(labels)
    hx = check_images(holdout_images, allow_empty=False)
    hy = np.asarray(holdout_labels)
    if hx.shape[1:] != x.shape[1:]:
        raise InputError(f"holdout images are {hx.shape[1:]} but the training images are {x.shape[1:]}")
    if strength is None:
        strength = min(1.0, min(x.shape[1:3]) / 16)
    try:
        table = reconstruct_warps(model, hx, hy, strength=strength, preprocess=preprocess, random_state=random_state)
    except _TooFewRight:  # a model that gets almost nothing right has no warp to read: there is no trigger to show
        return None
    top = table.iloc[0]
    if not top["anomaly"] >= min_anomaly:
        return None
    target = int(top["class"])
    n_eval = int(top["n_eval"])
    turned, control = int(round(top["turned"] * n_eval)), int(round(top["random"] * n_eval))
    rate, margin = turned / n_eval, (turned - control) / n_eval
    v = ("confirmed" if rate >= 0.5 and margin >= 0.2 else "weak" if rate >= 0.2 and margin >= 0.1
         else "not confirmed")
    reason = (f"{v}: adding it flipped {turned}/{n_eval} ({100 * rate:.0f}%, control {control}/{n_eval}). A warp "
              "cannot be taken out of its carriers, so there is no remove test: it is confirmed by the add test "
              "alone (at least 50% of held-out images of other classes, 20 points above a random warp of the same "
              f"size; weak at 20% and 10 points) on a class that stands out among the classes (anomaly "
              f"{top['anomaly']:.1f} >= {min_anomaly:g}).")
    confirmation = Confirmation(target=target, remove_changed=0, remove_tried=0, add_flipped=turned, add_tried=n_eval,
                                control_remove_changed=0, control_remove_tried=0, control_add_flipped=control,
                                control_add_tried=n_eval, verdict=v, reason=reason)
    flow = np.asarray(top["flow"], dtype=np.float32)

    evidence, n_clean = probe_carriers(model, x, y, target, WarpTrigger(flow, target).apply(hx[hy != target]),
                                       hx[hy == target], preprocess=preprocess, layer=layer, pooling=pooling,
                                       random_state=random_state)
    threshold = min(-np.log10(CARRIER_P), np.log10(n_clean + 1))
    pixels = f"{strength:g} pixel{'' if strength == 1 else 's'}"
    description = (f"a smooth warp of at most {pixels} (WaNet) reconstructed on the model: it turns "
                   f"{100 * turned / n_eval:.0f}% of held-out images of other classes into class {target} (a random "
                   f"warp of the same size: {100 * control / n_eval:.0f}%); the class stands out among the classes "
                   f"(anomaly {top['anomaly']:.1f})")
    return WarpTriggerCandidate(target=target, flow=flow, anomaly=float(top["anomaly"]), evidence=evidence,
                                threshold=float(threshold), confirmation=confirmation,
                                add_log10_p=binomial_log10_p(turned, n_eval, control, n_eval),
                                description=description)


def probe_carriers(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    target: int,
    triggered: np.ndarray,
    clean: np.ndarray,
    *,
    preprocess: Any = None,
    layer: str | None = None,
    pooling: Any = "flatten",
    random_state: int = 0,
) -> tuple[np.ndarray, int]:
    """How surely each image labelled ``target`` carries a trigger, read in the model's features: ``-log10`` p, 0 for
    the other images (shape (n,)), and how many clean images the null was read from.

    A logistic probe between the ``triggered`` held-out images of other classes that the model turns to ``target``
    and the ``clean`` held-out images of ``target`` that it gets right; each image labelled ``target`` is scored by
    it and read against the clean side's own out-of-fold scores as a tail probability
    (:func:`forensics.signals.combine.tail_probability`). All zero when either side has fewer than
    :data:`MIN_PROBE` images. A carrier looks to the model like the trigger it learned, whether or not its pixels
    show it plainly (a warp leaves nothing to find in them; a faint sinusoid of low frequency is partly taken for the
    look-alikes' own shading).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from ..activations import extract_activations
    from ..data import Dataset
    from ..signals.combine import tail_probability

    def features(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        acts = extract_activations(model, Dataset.from_numpy(batch, np.zeros(len(batch), np.int64)), layers=layer,
                                   pooling=pooling, preprocess=preprocess, progress=False)
        return np.asarray(acts.feature(), dtype=np.float64), np.asarray(acts.predictions)

    x, y = np.asarray(images), np.asarray(labels)
    turned, turned_pred = features(triggered)
    right, right_pred = features(clean)
    a, b = turned[turned_pred == target], right[right_pred == target]
    evidence = np.zeros(len(x))
    rows = np.flatnonzero(y == target)
    if min(len(a), len(b)) >= MIN_PROBE and len(rows):
        both = np.vstack([a, b])
        side = np.r_[np.ones(len(a)), np.zeros(len(b))]
        mean, scale = both.mean(axis=0), both.std(axis=0) + 1e-6
        probe = LogisticRegression(C=0.1, max_iter=2000)
        folds = StratifiedKFold(n_splits=min(5, len(b)), shuffle=True, random_state=random_state)
        reference = cross_val_predict(probe, (both - mean) / scale, side, cv=folds,
                                      method="decision_function")[len(a):]
        probe.fit((both - mean) / scale, side)
        scores = probe.decision_function((features(x[rows])[0] - mean) / scale)
        evidence[rows] = np.clip(-np.log10(tail_probability(scores, reference=reference)), 0.0, 300.0)
    return evidence, len(b)


__all__ = ["CARRIER_P", "MIN_PROBE", "MIN_SPREAD", "WARP_ANOMALY", "WARP_COLUMNS", "WarpTriggerCandidate", "find_warp",
           "probe_carriers", "reconstruct_warps"]
