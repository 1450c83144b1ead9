"""The built-in signals, each declared once: name, reason text, null, tags, needs, parameters and scoring function.

Each scoring function is a thin adapter from the shared :class:`~forensics.signals.registry.SignalContext` to the
pure function of its module, which stays usable on its own arrays. The order here is the order of the signals table.

``ensemble`` is registered but not in the default set. On the bundled images with the shipped model (``python
benchmarks/ensemble.py``) it ranks the bot's 360 flipped labels as ``label_quality`` does (AUROC 0.994 both; recall
at twice the poison count 0.964 against 0.967), being the same kind of linear probe on the same activations; the
combined suspicion is the same with it as without (AUROC 0.948 on the flips, 1.000 on all poison), and it costs
about 1.5 times ``label_quality``'s time. Name it (``signals=[..., "ensemble"]``) where a single out-of-fold split
is too noisy, for example on a small dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from . import (
    clustering,
    duplicates,
    ensemble,
    label_quality,
    loss,
    marks,
    neighbors,
    relabel,
    sources,
    spectral,
    trusted,
)
from .registry import SignalContext, SignalSkipped, register

_KNN = {"k": 10, "metric": "cosine", "n_components": 32}


@register("high_loss", reason="high loss", null="label_loss", needs=("probs",), tags=("label",), default=True)
def _high_loss(ctx: SignalContext) -> np.ndarray:
    """Cross-entropy of the given label under the model: flipped labels the model did not memorize."""
    return ctx.loss


@register("low_loss", reason="unusually confident for its class", null="by_class", needs=("probs",),
          tags=("backdoor",), default=True)
def _low_loss(ctx: SignalContext) -> np.ndarray:
    """Loss far below its class's (robust z): a trigger makes the model surer than any clean feature does."""
    return loss.low_loss_within_class(ctx.loss, ctx.labels)


@register("label_quality", reason="label disagrees with out-of-fold prediction", null="label_doubt", tags=("label",),
          params={"method": "self_confidence"}, default=True)
def _label_quality(ctx: SignalContext, *, method: str) -> np.ndarray:
    """cleanlab's label quality on out-of-fold probabilities of a linear probe on the activations."""
    if method != "self_confidence":  # the combination reads the score as one minus a probability
        raise InputError(f"the label_quality signal scores self_confidence (one minus the out-of-fold probability of "
                         f"the label); got method={method!r}: call label_issue_scores for the other methods")
    oof = ctx.out_of_fold()
    # How many labels are wrong, for the verdict: a model that half learned flipped labels leaves most of them
    # below the threshold, and the count still says how many there are.
    ctx.outputs["label_issues"] = label_quality.estimated_label_issues(ctx.labels, oof)
    return label_quality.label_issue_scores(ctx.labels, pred_probs=oof, method=method)


@register("targeted_flip", reason="looks like a class that its label holds far too many of (a one-way relabelling)",
          null="posterior", tags=("label",), params={"alpha": relabel.ALPHA}, default=True)
def _targeted_flip(ctx: SignalContext, *, alpha: float) -> np.ndarray:
    """Probability of a one-way relabelling between two classes (their confusion is not mutual)."""
    oof = ctx.out_of_fold()
    # The model's own probabilities see a backdoor it did not learn (the label test; see relabel), when they are given.
    own = ctx.probs if ctx.probs is not None and ctx.probs.shape == oof.shape else None
    pairs = ctx.shared(("relabelled_pairs", alpha), lambda: relabel.relabelled_pairs(ctx.labels, oof, alpha=alpha,
                                                                                    model_probs=own))
    ctx.outputs["relabelled_pairs"] = pairs
    return relabel.targeted_flip_scores(ctx.labels, oof, pairs=pairs, alpha=alpha, model_probs=own)


@register("activation_cluster", reason="in a small, separate activation cluster", null="exact_p", tags=("backdoor",),
          params={"n_components": 10, "max_relative_size": 0.35, "min_separation": 5.0}, default=True)
def _activation_cluster(ctx: SignalContext, **params: Any) -> np.ndarray:
    """-log10 chance of a class's small, separate cluster: its separation against the other classes' splits."""
    found = clustering.cluster_classes(ctx.features, ctx.labels, random_state=ctx.random_state, **params)
    return clustering.cluster_evidence(found, ctx.labels)


@register("spectral", reason="spectral signature", null="by_class", group="spectral", tags=("backdoor",),
          default=True)
def _spectral(ctx: SignalContext) -> np.ndarray:
    """Squared projection on the class's top singular direction, over its bulk spread."""
    return spectral.spectral_signature(ctx.features, ctx.labels, random_state=ctx.random_state)


@register("robust_spectral", reason="robust spectral signature", null="by_class", group="spectral",
          tags=("backdoor",), params={"n_components": 10, "keep": 0.5, "alpha": 4.0, "max_iter": 20}, default=True)
def _robust_spectral(ctx: SignalContext, **params: Any) -> np.ndarray:
    """Quantum-entropy score after robust whitening of each class (SPECTRE)."""
    return spectral.robust_spectral(ctx.features, ctx.labels, random_state=ctx.random_state, **params)


@register("knn_disagreement", reason="neighbours carry other labels", tags=("label",), params=_KNN, default=True)
def _knn_disagreement(ctx: SignalContext, *, k: int, metric: neighbors.Metric, n_components: int | None
                      ) -> np.ndarray:
    """Share of the k nearest neighbours (all classes) that carry another label (Deep k-NN)."""
    neighbors.check_options(k, metric, n_components)
    if ctx.n <= k:
        raise SignalSkipped(f"needs more than k = {k} samples; the data has {ctx.n}")
    _, idx = ctx.knn(int(k), metric=metric, n_components=n_components)
    return neighbors.label_disagreement(idx, ctx.labels)


@register("knn_outlier", reason="far from its class", context_only=True, params=_KNN, default=True)
def _knn_outlier(ctx: SignalContext, *, k: int, metric: neighbors.Metric, n_components: int | None) -> np.ndarray:
    """Distance to the k-th nearest classmate, robust z within the class (context only: atypical is not poison)."""
    neighbors.check_options(k, metric, n_components)
    return neighbors.distance_outlier(ctx.reduced(metric=metric, n_components=n_components), ctx.labels, int(k),
                                      random_state=ctx.random_state)


@register("duplicates", reason="near-duplicate group (conflicting labels or several sources)", tags=("source",),
          default=True)
def _duplicates(ctx: SignalContext) -> np.ndarray:
    """Exact and near duplicates whose labels conflict or that come from several sources."""
    return duplicates.duplicate_scores(ctx.duplicate_groups(), ctx.labels, ctx.sources)


@register("shared_mark", reason="carries a patch found, pixel for pixel, at the same place in many images",
          null="exact_p", needs=("images",), tags=("backdoor",),
          params={"window": marks.WINDOW, "min_contrast": marks.MIN_CONTRAST, "min_count": marks.MIN_COUNT,
                  "max_chance": marks.MAX_CHANCE}, default=True)
def _shared_mark(ctx: SignalContext, **params: Any) -> np.ndarray:
    """-log10 chance of a patch repeated pixel for pixel at one place in many images (needs no model)."""
    window = params["window"]
    if min(ctx.images.shape[1:3]) < window:
        raise SignalSkipped(f"images smaller than its {window}x{window} window")
    return marks.shared_mark_scores(ctx.shared_marks(**params), ctx.n)


@register("source", reason="its source is suspicious", null="exact_p", needs=("sources",), tags=("source",),
          default=True)
def _source(ctx: SignalContext) -> np.ndarray:
    """-log10 p of the source among the sources (class mix, disagreement with the model, duplicate groups), read with
    their heterogeneity; 0 below 2."""
    return sources.source_scores(ctx.sources, ctx.labels, n_classes=ctx.n_classes, predictions=ctx.predictions,
                                 groups=ctx.duplicate_groups())


# Not in the default set: they run, beside it, whenever a trusted set is given (compute_signals).
@register("trusted_disagreement", reason="trusted samples nearby carry other labels", needs=("trusted",),
          tags=("label",), params={"k": 10})
def _trusted_disagreement(ctx: SignalContext, *, k: int) -> np.ndarray:
    """Share of the nearest trusted samples (activation space) whose label is not the sample's."""
    assert ctx.trusted is not None  # needs=("trusted",)
    return trusted.trusted_disagreement(ctx.features, ctx.labels, *ctx.trusted, k=k)


@register("trusted_distance", reason="far from every trusted sample of its label", needs=("trusted",),
          tags=("backdoor",))
def _trusted_distance(ctx: SignalContext) -> np.ndarray:
    """Distance to the nearest trusted sample of its label (robust z within the label)."""
    assert ctx.trusted is not None
    return trusted.trusted_distance(ctx.features, ctx.labels, *ctx.trusted)


@register("ensemble", reason="reference models disagree with its label", tags=("label",),
          params={"n_splits": 4})
def _ensemble(ctx: SignalContext, *, n_splits: int) -> np.ndarray:
    """Doubt of linear probes that never trained on the sample (each trained on a random half)."""
    probs, in_train = ensemble.random_half_probs(ctx.features, ctx.labels, n_splits=n_splits,
                                                 random_state=ctx.random_state)
    return ensemble.ensemble_disagreement(probs, ctx.labels, in_train)


# Added by ``find_triggers`` once a trigger is confirmed on the model, not computed from activations: each carrier
# scores the -log10 p-value of the confirmation (an exact test with its own null).
register("trigger", reason="carries a confirmed trigger", null="exact_p", tags=("trigger",))(None)  # type: ignore[arg-type]
