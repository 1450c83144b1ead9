"""Run the registered signals over one shared context and combine them: :func:`compute_signals`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._validate import check_features, check_labels
from .._version import __version__
from ..errors import InputError
from . import builtin  # noqa: F401  (registers the built-in signals)
from . import combine as _combine
from .registry import (
    Signal,
    SignalContext,
    SignalSkipped,
    default_signals,
    get_signal,
    registered_signals,
    resolve,
    score_column,
)

if TYPE_CHECKING:
    from ..data import Dataset

Selection = Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None

#: Built-in signals whose fitted null a trusted set anchors: they read the activations, labels and predictions
#: only, so the trusted samples can be scored with the data (those that read payloads or sources cannot).
ANCHORED_SIGNALS = ("low_loss", "targeted_flip", "spectral", "robust_spectral", "knn_disagreement")

#: Fewest trusted samples that anchor those nulls: on the tuning seeds of the attack matrix 500 clean samples as the
#: null kept the clean controls near the threshold's 1%, 200 let one reach 4.9% (benchmarks/RESULTS.md, "A trusted
#: set anchoring the nulls").
ANCHOR_MIN_TRUSTED = 500


def compute_signals(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    probs: np.ndarray | None = None,
    dataset: Dataset | None = None,
    source_ids: Sequence[str] | None = None,
    signals: Selection = None,
    trusted: tuple[np.ndarray, ...] | None = None,
    random_state: int = 0,
    client: Any = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run the signals and combine them.

    Parameters
    ----------
    features : array, shape (n, d)
        Activations of one layer.
    labels : array of int, shape (n,)
        The given labels.
    probs : array, shape (n, n_classes), optional
        The model's predicted probabilities on these samples; needed by the loss signals and the source signal's
        agreement test (skipped without it).
    dataset : Dataset, optional
        For duplicate detection on the payload (images or texts); without it duplicates are found on features.
    source_ids : sequence of str, optional
        Each sample's source; defaults to ``dataset.sources``. The source signal needs at least two sources.
    signals : sequence of names, or mapping of name to parameters, optional
        Which registered signals to run (:func:`~forensics.signals.registry.registered_signals`), and with which
        parameters: ``{"knn_disagreement": {"k": 20}, "spectral": {}}``. Default: every signal registered as a
        default (:func:`~forensics.signals.registry.default_signals`), with its default parameters.
    trusted : (array (m, d), array of int (m,)[, array (m, n_classes)]), optional
        Activations (same layer), labels and optionally the model's probabilities of samples the user vouches for:
        the ``trusted_*`` signals run beside the default set when ``signals`` is not given
        (:mod:`forensics.signals.trusted`). With at least ``ANCHOR_MIN_TRUSTED`` of them, the signals of
        ``ANCHORED_SIGNALS`` also score the trusted samples with the data, and those scores, not the bulk of the
        data, are each signal's null (:func:`~forensics.signals.combine.combine`'s ``null_scores``); a signal that
        needs the probabilities is anchored only when they are given.
    random_state : int
        The seed of every signal.
    client : dask.distributed.Client, optional
        Run the signals as tasks on the cluster (:func:`forensics.distributed.score_on`: signals that share an
        intermediate together, the others apart); the scores equal a local run's. The combination runs here.

    Returns
    -------
    table : DataFrame, shape (n, k + 2)
        One ``<signal>_score`` column per signal that ran, in the order asked, then ``suspicion`` and ``reasons``;
        row order as given. The result does not depend on the order of ``signals``, only the columns' order does.
    info : dict
        ``seconds`` per signal (a shared intermediate counts for the first signal that asked for it, and on its own
        in ``shared_seconds``), ``skipped`` signals and why, ``signals`` that ran, ``signal_params`` (the effective
        parameters of every signal asked for), the combination's ``threshold``, ``random_state``, the toolkit's
        version, and the intermediates kept for an investigation (``duplicate_groups``, ``shared_marks``,
        ``relabelled_pairs``, ``label_issues``) when they were computed; ``anchored``: the signals whose null the
        trusted set gave, and ``null_scores``: the trusted samples' scores on them.
    """
    if signals is None and trusted is not None:  # the default set, and what reads the trusted samples
        signals = [*default_signals(), *(s.name for s in registered_signals() if "trusted" in s.needs)]
    selected = resolve(signals)
    trusted_probs = None
    if trusted is not None and len(trusted) == 3:
        trusted, trusted_probs = (trusted[0], trusted[1]), trusted[-1]
    context: dict[str, Any] = {"probs": probs, "dataset": dataset, "sources": source_ids, "trusted": trusted,
                               "random_state": random_state}
    ctx = SignalContext(features, labels, **context)  # checks every input here, before any work
    t_probs = _trusted_probs(trusted_probs, ctx)
    anchored = _anchored(selected, ctx, t_probs)
    if anchored:
        t_features = check_features(ctx.trusted[0])  # type: ignore[index]
        if t_features.shape[1] != ctx.features.shape[1]:
            raise InputError(f"the trusted activations have {t_features.shape[1]} dimensions but the data's have "
                             f"{ctx.features.shape[1]}: extract both from the same layer")
        t_labels = check_labels(ctx.trusted[1], len(t_features), name="trusted_labels")  # type: ignore[index]
        # The trusted samples scored with the data: their rows come after the data's.
        both: dict[str, Any] = {"probs": None if t_probs is None else np.vstack([ctx.probs, t_probs]),  # type: ignore[list-item]
                                "random_state": random_state}
        union = _score(client, SignalContext(np.vstack([ctx.features, t_features]), np.r_[ctx.labels, t_labels],
                                             **both), {k: selected[k] for k in anchored}, both)
    rest = {k: v for k, v in selected.items() if k not in anchored}
    scores, seconds, skipped, shared_seconds, outputs = _score(client, ctx, rest, context)
    null_scores = {}
    if anchored:
        for name, values in union[0].items():
            scores[name], null_scores[name] = values[: ctx.n], values[ctx.n :]
        seconds.update(union[1])
        skipped.update(union[2])
        shared_seconds.update({f"{k} (with the trusted set)": v for k, v in union[3].items()})
        # Class-level findings (the relabelled pairs) hold for the data with a few clean samples more.
        outputs.update(union[4])
    # The order asked for, whatever order the signals ran in.
    scores = {name: scores[name] for name in selected if name in scores}
    skipped = {name: skipped[name] for name in selected if name in skipped}
    if not scores:
        raise InputError(f"no signal could run: {'; '.join(f'{k} {v}' for k, v in skipped.items())}")
    t = time.perf_counter()
    label_null = None if ctx.probs is None else _combine.label_null(ctx.probs)
    combined = _combine.combine(scores, ctx.labels, n_classes=ctx.n_classes, null_scores=null_scores,
                                label_null=label_null)
    seconds["combine"] = round(time.perf_counter() - t, 3)
    table = pd.DataFrame({score_column(k): v for k, v in scores.items()})
    table["suspicion"] = combined.suspicion
    table["reasons"] = combined.reasons
    info = {"seconds": seconds, "shared_seconds": shared_seconds, "skipped": skipped, "signals": list(scores),
            "signal_params": selected, "threshold": _combine.DEFAULT_THRESHOLD, "random_state": ctx.random_state,
            "toolkit_version": __version__, "anchored": sorted(null_scores), "null_scores": null_scores,
            "label_null": label_null, "label_gate": combined.label_gate, **outputs}
    return table, info


def _anchored(selected: Mapping[str, Any], ctx: SignalContext, trusted_probs: Any) -> list[str]:
    """The selected signals whose null the trusted set anchors (none below ``ANCHOR_MIN_TRUSTED`` samples)."""
    if ctx.trusted is None or len(ctx.trusted[0]) < ANCHOR_MIN_TRUSTED:
        return []
    have_probs = ctx.probs is not None and trusted_probs is not None
    return [name for name in selected
            if name in ANCHORED_SIGNALS and ("probs" not in get_signal(name).needs or have_probs)]


def _trusted_probs(trusted_probs: Any, ctx: SignalContext) -> np.ndarray | None:
    if trusted_probs is None or ctx.probs is None:
        return None
    p = np.asarray(trusted_probs, dtype=ctx.probs.dtype)
    if p.shape != (len(ctx.trusted[0]), ctx.probs.shape[1]):  # type: ignore[index]
        raise InputError(f"the trusted probabilities have shape {p.shape}; expected "
                         f"({len(ctx.trusted[0])}, {ctx.probs.shape[1]}), one row per trusted sample")  # type: ignore[index]
    return p


def _score(client: Any, ctx: SignalContext, selected: Mapping[str, Mapping[str, Any]], context: dict[str, Any]
           ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, str], dict[str, float], dict[str, Any]]:
    """Scores, seconds, skipped, shared seconds and kept outputs of the selected signals on one context, here or
    as tasks on a cluster."""
    if not selected:
        return {}, {}, {}, {}, {}
    if client is None:
        scores, seconds, skipped = score_signals(ctx, selected)
        return scores, seconds, skipped, dict(ctx.seconds), ctx.outputs
    from ..distributed import score_on

    scores, seconds, skipped, shared_seconds, outputs = {}, {}, {}, {}, {}
    for part in score_on(client, ctx.features, ctx.labels, selected, context):
        scores.update(part["scores"])
        seconds.update(part["seconds"])
        skipped.update(part["skipped"])
        shared_seconds.update(part["shared_seconds"])
        outputs.update(part["outputs"])
    return scores, seconds, skipped, shared_seconds, outputs


def score_signals(ctx: SignalContext, selected: Mapping[str, Mapping[str, Any]], *,
                  specs: Mapping[str, Signal] | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, str]]:
    """Each selected signal's scores over one context, the seconds each took, and why the others were skipped.

    ``specs`` gives the signals' declarations where the registry may not hold them (a worker of a cluster does
    not see a signal registered in a notebook)."""
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name, params in selected.items():
        spec = specs[name] if specs is not None else get_signal(name)
        assert spec.score is not None  # resolve() refuses signals computed by a later step
        why = ctx.missing(spec.needs)
        if why is not None:
            skipped[name] = why
            continue
        t = time.perf_counter()
        try:
            values = spec.score(ctx, **params)
        except SignalSkipped as e:
            skipped[name] = str(e)
            continue
        scores[name] = _checked_output(name, values, ctx.n)
        seconds[name] = round(time.perf_counter() - t, 3)
    return scores, seconds, skipped


def _checked_output(name: str, values: Any, n: int) -> np.ndarray:
    """A scoring function's result as float64 of shape (n,), or an error that names the signal."""
    s = np.asarray(values)
    if s.shape != (n,) or s.dtype.kind not in "fiub":
        raise InputError(f"signal {name!r} returned {s.dtype} values of shape {s.shape}; "
                         f"a signal returns one number per sample, shape ({n},)")
    s = s.astype(np.float64)
    if np.isneginf(s).any():
        raise InputError(f"signal {name!r} returned -inf; higher = more suspicious, NaN = no evidence")
    return s


__all__ = ["compute_signals", "score_signals"]
