"""Loss-based signals: mislabelled samples cost the model a lot; backdoored samples cost it almost nothing.

Both functions return one float64 per sample, **higher = more suspicious**.
"""

from __future__ import annotations

import logging

import numpy as np

from .._validate import check_labels, check_probs
from ..errors import InputError

logger = logging.getLogger(__name__)

# Probabilities and losses below this are indistinguishable after float32 round-off (a logit margin of about
# 27.6 nats); flooring keeps the scores finite and treats such samples as equally confident.
LOSS_FLOOR = 1e-12


def _check_loss(loss: np.ndarray, *, name: str = "loss") -> np.ndarray:
    """A finite, non-negative 1-D float64 array of per-sample losses, or a clear error."""
    v = np.asarray(loss)
    if v.ndim != 1:
        raise InputError(f"{name} must be 1-D (one loss per sample); got shape {v.shape}")
    if v.dtype.kind not in "fiu":
        raise InputError(f"{name} must be numeric; got dtype {v.dtype}")
    v = v.astype(np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        raise InputError(f"{name} has {int(bad.sum())} NaN or infinite value(s), first at row {np.flatnonzero(bad)[0]}")
    if len(v) and v.min() < 0:
        raise InputError(f"{name} must be >= 0 (a per-sample loss); found {v.min():g} at row {int(v.argmin())}")
    return v


def check_labels_against(labels: np.ndarray, n: int, other: str, *, n_classes: int | None = None) -> np.ndarray:
    """:func:`check_labels`, with a length mismatch reported against the array named ``other``."""
    if np.ndim(labels) == 1 and len(labels) != n:
        raise InputError(f"labels has {len(labels)} entries but {other} has {n} rows")
    return check_labels(labels, n, n_classes=n_classes)


def robust_z_within_class(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Standardize ``values`` within each class: ``(v - median) / (1.4826 * MAD)``.

    The median and MAD ignore the few extreme samples that a signal is meant to expose, so scores of
    different classes share one scale (about N(0, 1) for the bulk of every class). When more than half of a
    class shares one value (MAD = 0), the mean absolute deviation from the median (times 1.2533, its normal
    consistency factor) sets the scale instead; a class whose values are all equal, or that has one member,
    gets 0.

    Parameters
    ----------
    values : ndarray of shape (n,)
        Finite per-sample values (already validated).
    labels : ndarray of shape (n,)
        Integer class of each sample (already validated).

    Returns
    -------
    ndarray of shape (n,), float64
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(values), dtype=np.float64)
    for members in class_members(labels):
        v = values[members]
        dev = v - np.median(v)
        scale = 1.4826 * np.median(np.abs(dev))
        if scale == 0:
            scale = 1.2533 * np.mean(np.abs(dev))
        if scale > 0:
            out[members] = dev / scale
    return out


def class_members(labels: np.ndarray) -> list[np.ndarray]:
    """Row positions of each class present in ``labels``, classes in increasing order (one sort, no n x C mask)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds) if len(order) else []


def high_loss(probs_or_loss: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Cross-entropy of each sample's given label: **higher = more suspicious** (label flips, hard samples).

    Parameters
    ----------
    probs_or_loss : ndarray of shape (n, n_classes) or (n,)
        Either predicted probabilities (softmax outputs, rows summing to 1), from which the loss
        ``-log p[i, labels[i]]`` is computed, or a per-sample loss already computed (returned as float64).
        Probabilities below ``LOSS_FLOOR`` are floored, so the loss is at most about 27.6. Above 0.5, the loss is
        read from the other classes' share of the row (``-log1p(-other)``), which keeps its precision where the
        label's own probability rounds to 1.
    labels : ndarray of shape (n,), optional
        Given class of each sample; required with probabilities, optional (and then checked) with a loss.

    Returns
    -------
    ndarray of shape (n,), float64
        The per-sample loss. A label flip that the model did not memorize has a high loss.

    Raises
    ------
    InputError
        On a shape or length mismatch, NaN, negative losses, or probabilities given without labels.
    """
    arr = np.asarray(probs_or_loss)
    if arr.ndim == 1:
        loss = _check_loss(arr, name="probs_or_loss")
        if labels is not None:
            check_labels_against(labels, len(loss), "probs_or_loss")
        return loss
    if arr.ndim != 2:
        raise InputError(
            "probs_or_loss must be probabilities of shape (n, n_classes) or a loss of shape (n,); "
            f"got shape {arr.shape}"
        )
    if labels is None:
        raise InputError("labels is required when probs_or_loss holds probabilities (shape (n, n_classes))")
    probs = check_probs(arr, arr.shape[0], name="probs_or_loss")
    y = check_labels_against(labels, len(probs), "probs_or_loss", n_classes=probs.shape[1])
    p_given = np.asarray(probs[np.arange(len(y)), y], dtype=np.float64)
    loss = -np.log(np.maximum(p_given, LOSS_FLOOR))
    # A confident label's probability rounds to 1 in float32 (a saturated softmax) while the other classes' keep their
    # precision: its loss is read from them, so that saturated samples do not tie at 0. On review snippets 0.5% of a
    # clean set tied there, which low_loss's fitted tail called 1-in-3,000 each.
    # (Rows may sum to 1 within 1e-3: the other classes' share is read relative to the row's sum.)
    confident = p_given > 0.5
    if confident.any():
        total = np.asarray(probs[confident], dtype=np.float64).sum(axis=1)
        other = (total - p_given[confident]) / total
        loss[confident] = -np.log1p(-np.clip(other, 0.0, 0.5))
    return loss


def low_loss_within_class(loss: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unusually confident samples relative to their own class: **higher = more suspicious** (backdoors).

    A backdoor teaches the model a shortcut: the trigger alone decides the class, so poisoned samples are
    fitted faster and more confidently than the clean samples of the target class, whose loss reflects the
    real visual variety of the class. Their loss is not just low but low *for their class*. The score is the
    robust z-score (:func:`robust_z_within_class`) of ``-log(loss)`` within each class; ``-log(loss)`` is about
    the logit margin of a confident sample, so the score measures how far a sample's margin exceeds its
    class's usual margin. Losses are floored at ``LOSS_FLOOR`` before the logarithm.

    Parameters
    ----------
    loss : ndarray of shape (n,)
        Per-sample loss (e.g. ``high_loss(probs, labels)``), non-negative.
    labels : ndarray of shape (n,)
        Given class of each sample.

    Returns
    -------
    ndarray of shape (n,), float64
        About N(0, 1) for the bulk of each class; large positive values are the unusually confident samples.

    Raises
    ------
    InputError
        On a length mismatch, NaN or negative loss, or labels that are not class indices.
    """
    v = _check_loss(loss)
    y = check_labels_against(labels, len(v), "loss")
    return robust_z_within_class(-np.log(np.maximum(v, LOSS_FLOOR)), y)


__all__ = ["LOSS_FLOOR", "high_loss", "low_loss_within_class", "robust_z_within_class"]
