"""Run the registered signals over one shared context and combine them: :func:`compute_signals`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

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


def compute_signals(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    probs: np.ndarray | None = None,
    dataset: Dataset | None = None,
    source_ids: Sequence[str] | None = None,
    signals: Selection = None,
    trusted: tuple[np.ndarray, np.ndarray] | None = None,
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
    trusted : (array (m, d), array of int (m,)), optional
        Activations (same layer) and labels of samples the user vouches for: the ``trusted_*`` signals run beside
        the default set when ``signals`` is not given (:mod:`forensics.signals.trusted`).
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
        ``relabelled_pairs``) when they were computed.
    """
    if signals is None and trusted is not None:  # the default set, and what reads the trusted samples
        signals = [*default_signals(), *(s.name for s in registered_signals() if "trusted" in s.needs)]
    selected = resolve(signals)
    context: dict[str, Any] = {"probs": probs, "dataset": dataset, "sources": source_ids, "trusted": trusted,
                               "random_state": random_state}
    ctx = SignalContext(features, labels, **context)  # checks every input here, before any work
    if client is None:
        scores, seconds, skipped = score_signals(ctx, selected)
        shared_seconds, outputs = dict(ctx.seconds), ctx.outputs
    else:
        from ..distributed import score_on

        scores, seconds, skipped, shared_seconds, outputs = {}, {}, {}, {}, {}
        for part in score_on(client, ctx.features, ctx.labels, selected, context):
            scores.update(part["scores"])
            seconds.update(part["seconds"])
            skipped.update(part["skipped"])
            shared_seconds.update(part["shared_seconds"])
            outputs.update(part["outputs"])
        # The order asked for, whatever order the tasks finished in.
        scores = {name: scores[name] for name in selected if name in scores}
        skipped = {name: skipped[name] for name in selected if name in skipped}
    if not scores:
        raise InputError(f"no signal could run: {'; '.join(f'{k} {v}' for k, v in skipped.items())}")
    t = time.perf_counter()
    combined = _combine.combine(scores, ctx.labels, n_classes=ctx.n_classes)
    seconds["combine"] = round(time.perf_counter() - t, 3)
    table = pd.DataFrame({score_column(k): v for k, v in scores.items()})
    table["suspicion"] = combined.suspicion
    table["reasons"] = combined.reasons
    info = {"seconds": seconds, "shared_seconds": shared_seconds, "skipped": skipped, "signals": list(scores),
            "signal_params": selected, "threshold": _combine.DEFAULT_THRESHOLD, "random_state": ctx.random_state,
            "toolkit_version": __version__, **outputs}
    return table, info


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
