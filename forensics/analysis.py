"""From a dataset (and a model, or activations) to an :class:`~forensics.investigation.Investigation`.

:func:`compute_signals` runs every signal on arrays and combines them; :func:`investigate` is the one call an
analyst makes: it extracts activations when given a model, trains a reference model when given neither, and
returns an investigation whose map and clusters are computed on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .data import Dataset
from .errors import InputError
from .signals import combine as _combine
from .signals import duplicates, label_quality, loss, marks, neighbors, relabel, sources, spectral
from .signals import clustering as _clustering
from .signals._checks import check_features, check_labels, check_probs

log = logging.getLogger(__name__)

#: The signals :func:`compute_signals` runs by default, in the order of the signals table.
DEFAULT_SIGNALS = (
    "high_loss", "low_loss", "label_quality", "targeted_flip", "activation_cluster", "spectral", "robust_spectral",
    "knn_disagreement", "knn_outlier", "duplicates", "shared_mark", "source",
)


def _groups(dataset: Dataset | None, features: np.ndarray, random_state: int) -> np.ndarray:
    """Duplicate groups: exact content first, then near duplicates of the payload (or of the features)."""
    if dataset is None:
        return duplicates.near_duplicate_groups_features(features, radius=1e-3, random_state=random_state)
    exact = duplicates.exact_duplicate_groups(dataset.hashes)
    if dataset.kind == "image":
        near = duplicates.near_duplicate_groups_images(dataset.images)
    else:
        near = duplicates.near_duplicate_groups_texts(list(dataset.texts), random_state=random_state)
    # A sample joins the near-duplicate group when it has one, else its exact group; both number from 0.
    out = np.where(near >= 0, near, -1)
    lone = (out < 0) & (exact >= 0)
    if lone.any():
        out[lone] = exact[lone] + (out.max() + 1)
    return out


def compute_signals(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    probs: np.ndarray | None = None,
    dataset: Dataset | None = None,
    source_ids: Sequence[str] | None = None,
    signals: Sequence[str] = DEFAULT_SIGNALS,
    random_state: int = 0,
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
    signals : sequence of str
        Which signals to run (names from :data:`DEFAULT_SIGNALS`).

    Returns
    -------
    table : DataFrame, shape (n, k + 2)
        One ``<signal>_score`` column per signal that ran, then ``suspicion`` and ``reasons``; row order as given.
    info : dict
        Seconds per signal, the signals skipped and why, and the combination's parameters.
    """
    x = check_features(features)
    n = len(x)
    y = check_labels(labels, n)
    n_classes = int(y.max()) + 1
    if n_classes > max(n, 1 << 16):
        # Signals keep per-class arrays (n x classes, sources x classes): an index far beyond the samples is an
        # id or a hash, not a class number.
        raise InputError(
            f"labels has class index {n_classes - 1} for {n} samples; labels must be class numbers "
            "0..n_classes-1 (renumber them with np.unique(labels, return_inverse=True)[1])"
        )
    if probs is not None:
        probs = check_probs(probs, n)
        n_classes = max(n_classes, probs.shape[1])
    unknown = [s for s in signals if s not in DEFAULT_SIGNALS]
    if unknown:
        raise InputError(f"unknown signal(s) {unknown}; choose from {list(DEFAULT_SIGNALS)}")
    if source_ids is None and dataset is not None:
        source_ids = dataset.sources
    if dataset is not None and len(dataset) != n:
        raise InputError(f"dataset has {len(dataset)} samples but features has {n} rows")

    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    groups = None
    info_marks = None
    pairs = None
    out_of_fold = None
    predictions = None if probs is None else probs.argmax(axis=1)
    per_sample_loss = None if probs is None else loss.high_loss(probs, y)

    def run(name: str, fn) -> None:
        t = time.perf_counter()
        scores[name] = np.asarray(fn(), dtype=np.float64)
        seconds[name] = round(time.perf_counter() - t, 3)

    for name in signals:
        if name in ("high_loss", "low_loss") and probs is None:
            skipped[name] = "needs the model's predicted probabilities"
            continue
        if name == "high_loss":
            run(name, lambda: per_sample_loss)
        elif name == "low_loss":
            run(name, lambda: loss.low_loss_within_class(per_sample_loss, y))
        elif name in ("label_quality", "targeted_flip"):
            t = time.perf_counter()
            if out_of_fold is None:  # both read the same out-of-fold probabilities: computed once
                out_of_fold = label_quality.out_of_fold_probs(x, y, random_state=random_state)
            if name == "label_quality":
                scores[name] = label_quality.label_issue_scores(y, pred_probs=out_of_fold)
            else:
                pairs = relabel.relabelled_pairs(y, out_of_fold)
                scores[name] = relabel.targeted_flip_scores(y, out_of_fold, pairs=pairs)
            seconds[name] = round(time.perf_counter() - t, 3)
        elif name == "activation_cluster":
            run(name, lambda: _clustering.activation_clustering(x, y, random_state=random_state))
        elif name == "spectral":
            run(name, lambda: spectral.spectral_signature(x, y, random_state=random_state))
        elif name == "robust_spectral":
            run(name, lambda: spectral.robust_spectral(x, y, random_state=random_state))
        elif name == "knn_disagreement":
            run(name, lambda: neighbors.knn_label_disagreement(x, y, random_state=random_state))
        elif name == "knn_outlier":
            run(name, lambda: neighbors.knn_distance_outlier(x, y, random_state=random_state))
        elif name == "duplicates":
            t = time.perf_counter()
            groups = _groups(dataset, x, random_state)
            scores[name] = duplicates.duplicate_scores(groups, y, source_ids)
            seconds[name] = round(time.perf_counter() - t, 3)
        elif name == "shared_mark":
            if dataset is None or dataset.kind != "image":
                skipped[name] = "needs the images (a dataset of kind image)"
                continue
            if min(dataset.images.shape[1:3]) < marks.WINDOW:
                skipped[name] = f"images smaller than its {marks.WINDOW}x{marks.WINDOW} window"
                continue
            t = time.perf_counter()
            found = marks.shared_marks(dataset.images)
            scores[name] = marks.shared_mark_scores(found, n)
            seconds[name] = round(time.perf_counter() - t, 3)
            info_marks = found
        elif name == "source":
            if source_ids is None or len(set(source_ids)) < 2:
                skipped[name] = "needs at least two sources"
                continue
            run(name, lambda: sources.source_scores(
                np.asarray(source_ids, dtype=object), y, n_classes=n_classes, predictions=predictions,
                groups=groups))

    if not scores:
        raise InputError(f"no signal could run: {'; '.join(f'{k} {v}' for k, v in skipped.items())}")
    t = time.perf_counter()
    combined = _combine.combine(scores, y)
    seconds["combine"] = round(time.perf_counter() - t, 3)
    table = pd.DataFrame({f"{k}_score": v for k, v in scores.items()})
    table["suspicion"] = combined.suspicion
    table["reasons"] = combined.reasons
    info = {"seconds": seconds, "skipped": skipped, "signals": list(scores),
            "threshold": _combine.DEFAULT_THRESHOLD, "random_state": random_state, "toolkit_version": __version__}
    if groups is not None:
        info["duplicate_groups"] = groups
    if info_marks is not None:
        info["shared_marks"] = info_marks
    if pairs is not None:
        info["relabelled_pairs"] = pairs
    return table, info


def investigate(
    dataset: Dataset,
    model: Any = None,
    *,
    activations: Any = None,
    layer: str | None = None,
    pooling: str = "flatten",
    preprocess: Any = None,
    batch_size: int = 256,
    device: Any = None,
    cache_dir: Any = None,
    signals: Sequence[str] = DEFAULT_SIGNALS,
    random_state: int = 0,
    progress: bool = True,
    map_builder: Any = None,
):
    """Open an investigation of ``dataset``: one call from data (and model) to ranked, explained suspicion.

    Parameters
    ----------
    dataset : Dataset
    model : torch.nn.Module, optional
        The model trained on ``dataset``. Without a model and without ``activations``, a reference model is
        trained on the dataset first (:func:`forensics.models.train_reference_model`).
    activations : Activations or array of shape (n, d), optional
        Precomputed activations (in ``dataset`` order); skips extraction. A bare array has no probabilities,
        so the loss signals are skipped.
    layer, pooling, preprocess, batch_size, device, cache_dir
        Passed to :func:`forensics.activations.extract_activations` (``layer=None``: the input of the last
        ``nn.Linear``). ``cache_dir`` also keeps the map and its clusters (:func:`forensics.embedding.build_map`),
        so that a rerun on the same data and model reads both back.
    signals : sequence of str
        Signals to run (:data:`DEFAULT_SIGNALS`).

    Returns
    -------
    Investigation
        Tables indexed by ``sample_id``: ``samples`` (label, source, prediction, loss, duplicate group, and for
        images the strongest shared mark, -1 for none), ``signals`` (one
        ``<signal>_score`` column per signal, ``suspicion``, ``reasons``); ``map`` and ``clusters`` are computed
        on first use. The model, when there is one, is kept as ``inv.model`` (not saved with the investigation).
    """
    from .investigation import Investigation

    if not isinstance(dataset, Dataset):
        raise InputError(f"dataset must be a forensics.Dataset; got {type(dataset).__name__}")
    t0 = time.perf_counter()
    trained = False
    probs = None
    meta: dict[str, Any] = {}
    if activations is None:
        from .activations import extract_activations

        if model is None:
            from .models import train_reference_model

            log.info("no model given: training a reference model on the dataset")
            model = train_reference_model(dataset, random_state=random_state, progress=progress)
            trained = True
        activations = extract_activations(model, dataset, layers=layer, pooling=pooling, preprocess=preprocess,
                                          batch_size=batch_size, device=device, cache_dir=cache_dir,
                                          progress=progress)
    if isinstance(activations, np.ndarray):
        features = check_features(activations)
        if len(features) != len(dataset):
            raise InputError(f"activations has {len(features)} rows but the dataset has {len(dataset)} samples")
        used_layer = layer or "given"
    else:
        ids = np.asarray(activations.ids).astype(str)
        if len(ids) != len(dataset) or not np.array_equal(ids, dataset.ids.astype(str)):
            raise InputError("activations.ids do not match dataset.ids (same samples, same order, are needed)")
        used_layer = layer or activations.layer
        features = np.asarray(activations.feature(used_layer), dtype=np.float32)
        probs = np.asarray(activations.probs)
        meta = dict(activations.meta)
    table, info = compute_signals(features, dataset.labels, probs=probs, dataset=dataset, signals=signals,
                                  random_state=random_state)
    table.index = pd.Index(dataset.ids, name="sample_id", dtype=object)
    samples = dataset.to_frame()
    if probs is not None:
        pred = probs.argmax(axis=1)
        samples["prediction"] = pred
        samples["prediction_name"] = np.asarray(dataset.class_names, dtype=object)[pred]
        samples["confidence"] = probs.max(axis=1)
        samples["loss"] = table["high_loss_score"].to_numpy() if "high_loss_score" in table else np.nan
    found_marks = info.pop("shared_marks", None)
    if found_marks is not None:
        samples["shared_mark"] = marks.mark_of(found_marks, len(dataset))
    groups = info.pop("duplicate_groups", None)
    if groups is not None:
        samples["duplicate_group"] = groups
    pairs = info.pop("relabelled_pairs", None)
    params = {
        "layer": used_layer, "pooling": pooling, "random_state": random_state, "signals": info["signals"],
        "skipped_signals": info["skipped"], "signal_seconds": info["seconds"], "threshold": info["threshold"],
        "reference_model_trained": trained, "activation_meta": {k: str(v) for k, v in meta.items()},
        "toolkit_version": info["toolkit_version"], "seconds": round(time.perf_counter() - t0, 2),
    }
    if pairs is not None:
        # Class numbers with the names an analyst reads; kept in the saved manifest with the other parameters.
        names = np.asarray(dataset.class_names, dtype=object)
        params["relabelled_pairs"] = [
            {**row, "label_name": str(names[row["label"]]), "looks_like_name": str(names[row["looks_like"]])}
            for row in pairs.to_dict("records")
        ]
    if map_builder is None and cache_dir is not None:
        from .embedding import build_map

        # The map is the slow part of a rerun; it is cached beside the activations.
        map_builder = functools.partial(build_map, cache_dir=cache_dir)
    inv = Investigation(dataset, signals=table, samples=samples, features=features, params=params,
                        map_builder=map_builder)
    inv.model = model
    inv.preprocess = preprocess
    return inv


#: The signals a backdoor shows (confident, clustered, off the class's main direction): text trigger discovery
#: also looks among the samples these rank highest, where label noise in the overall suspicion cannot hide them.
BACKDOOR_SIGNALS = ("low_loss", "activation_cluster", "spectral", "robust_spectral")


def backdoor_suspicion(signals: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """The combined suspicion of the backdoor signals present in a signals table (else its ``suspicion``)."""
    present = {name: signals[f"{name}_score"].to_numpy() for name in BACKDOOR_SIGNALS if f"{name}_score" in signals}
    if not present:
        return signals["suspicion"].to_numpy()
    return _combine.combine(present, labels).suspicion


_VERDICT_RANK = {"confirmed": 0, "weak": 1}


def _by_verdict(confirmations: list[Any]) -> list[int]:
    """Positions of the candidates, confirmed first, then weak, then the rest; each by the strength of its
    confirmation (:func:`forensics.triggers.confirmation_log10_p`), ties kept in discovery order."""
    from .triggers import confirmation_log10_p

    def key(i: int) -> tuple[int, float, int]:
        c = confirmations[i]
        if c is None:
            return (3, 0.0, i)
        v = c["verdict"] if isinstance(c, pd.Series) else c.verdict
        return (_VERDICT_RANK.get(v, 2), -confirmation_log10_p(c), i)

    return sorted(range(len(confirmations)), key=key)


def _restates(candidate: Any, group: np.ndarray) -> bool:
    """Whether a local image candidate's carriers make up at least half of a group, or the group half of them."""
    if not candidate.local:
        return False
    carried = candidate.group[candidate.carriers]
    shared = int(group[carried].sum())
    return shared >= 0.5 * min(len(carried), int(group.sum()))


def _mark_groups(inv) -> list[tuple[np.ndarray, float]]:
    """The shared marks of an investigation's images as (carrier mask, chance): read back from what
    :func:`investigate` kept (``samples["shared_mark"]`` and the signal's scores), else found anew."""
    ds = inv.dataset
    if "shared_mark" in inv.samples and "shared_mark_score" in inv.signals:
        mark = inv.samples["shared_mark"].to_numpy()
        score = inv.signals["shared_mark_score"].to_numpy()
        return [(mark == m, float(10.0 ** -score[mark == m].max())) for m in np.unique(mark[mark >= 0])]
    if min(ds.images.shape[1:3]) < marks.WINDOW:
        return []
    found = marks.shared_marks(ds.images)
    mark = marks.mark_of(found, len(ds))
    return [(mark == m, float(c)) for m, c in enumerate(found["chance"])]


def find_triggers(
    inv,
    model: Any = None,
    *,
    group_share: float = 0.05,
    min_group: int = 10,
    top_text: int = 10,
    holdout: Dataset | None = None,
    preprocess: Any = None,
    random_state: int = 0,
) -> pd.DataFrame:
    """Discover trigger candidates in an investigation, confirm them on the model, and search for carriers.

    Text: n-grams over-represented among the most suspicious texts and tied to one predicted class. Images: for
    each class, the pattern its most suspicious members (the top ``group_share`` of the class by suspicion, at
    least ``min_group``) share and the rest of the class lacks; and every shared mark
    (:func:`forensics.signals.marks.shared_marks`) those groups do not already hold. Texts are searched three
    times, up to ``top_text`` candidates each: among the most suspicious samples overall, among those that look backdoored
    (:func:`backdoor_suspicion`, so that label noise cannot hide them), and by the class test alone (a trigger
    too rare for the signals to gather); the candidates are pooled. Every candidate is confirmed on ``model``
    (default ``inv.model``): removed from its carriers and added to clean samples of other classes, beside a
    random control. The table lists confirmed candidates first, strongest first, then weak ones, then the rest.
    ``holdout`` (a :class:`~forensics.Dataset` of held-out samples with the same classes, such as a validation
    split) is where the add test pastes candidates: the model has not memorized those samples' labels, so the
    rate says how well the trigger works on new inputs. ``preprocess`` turns a payload batch into the model's
    input (default: the one :func:`investigate` was given, else ``model.preprocess``, else for images
    :func:`~forensics.activations.default_image_preprocess`).

    Sets ``inv.triggers`` (one row per candidate, with verdicts and carrier ids) and, when a candidate is
    confirmed, adds a ``trigger_score`` signal and recombines the suspicion: a sample that carries a confirmed
    trigger scores the strength of its confirmation (``-log10`` p, :func:`forensics.triggers.trigger_evidence`),
    every other sample 0. Returns the triggers table.
    """
    from . import triggers as tr
    from .models import predict_proba

    model = inv.model if model is None else model
    if model is None:
        raise InputError("find_triggers needs the model: pass model=, or set inv.model")
    ds = inv.dataset
    preprocess = getattr(inv, "preprocess", None) if preprocess is None else preprocess
    predict = functools.partial(predict_proba, model, preprocess=preprocess)
    suspicion = inv.signals["suspicion"].to_numpy()
    if "prediction" in inv.samples:
        pred = inv.samples["prediction"].to_numpy()
    else:
        pred = predict(ds.images if ds.kind == "image" else list(ds.texts)).argmax(axis=1)
    found: list[Any] = []
    held = None
    if holdout is not None:
        if not isinstance(holdout, Dataset) or holdout.kind != ds.kind:
            raise InputError(f"holdout must be a forensics.Dataset of {ds.kind}s (held-out samples); "
                             f"got {type(holdout).__name__}")
        if list(holdout.class_names) != list(ds.class_names):
            raise InputError(f"holdout has classes {list(holdout.class_names)} but the investigation has "
                             f"{list(ds.class_names)}")
        held = tr.holdout_set((holdout.images if ds.kind == "image" else list(holdout.texts), holdout.labels),
                              predict, kind=ds.kind, like=ds.images if ds.kind == "image" else None)
    if ds.kind == "text":
        texts = list(ds.texts)
        kw = dict(predictions=pred, labels=ds.labels, ids=ds.ids, sources=ds.sources, top=top_text)
        searched = [tr.text_trigger_candidates(texts, suspicion=s, **kw)
                    for s in (backdoor_suspicion(inv.signals, ds.labels), suspicion)]
        # A trigger on 1% of the texts may be too rare for any signal to gather; it still shows as an n-gram whose
        # carriers are all predicted as one class, and confirmation tells it from a genuine class phrase.
        by_class = tr.text_trigger_candidates(texts, suspicion=None, **kw)
        top = tr.suspicious_set(suspicion, len(ds))
        by_class["count_suspicious"] = [int(top[np.isin(ds.ids, c)].sum()) for c in by_class["carrier_ids"]]
        by_class["suspicious_share"] = by_class["count_suspicious"] / by_class["count"]
        # The first search that found an n-gram describes it (its suspicious counts are the telling ones).
        cands = pd.concat([*searched, by_class]).drop_duplicates("ngram").reset_index(drop=True)
        if len(cands):
            confirmed = tr.confirm_text_candidates(cands, texts, predict_proba=predict, labels=ds.labels,
                                                   predictions=pred, holdout=held, random_state=random_state)
            ranked = confirmed.iloc[_by_verdict([row for _, row in confirmed.iterrows()])].reset_index(drop=True)
            found.append(tr.text.drop_restatements(ranked))
        search_kw = {"texts": texts}
    else:
        groups = []
        for c in range(len(ds.class_names)):
            rows = np.flatnonzero(ds.labels == c)
            k = max(min_group, int(round(group_share * len(rows))))
            if len(rows) < 2 * k:
                continue
            top = rows[np.argsort(-suspicion[rows], kind="stable")[:k]]
            group = np.zeros(len(ds), bool)
            group[top] = True
            groups.append(tr.image_trigger_candidate(ds.images, group, peers=tr.label_peers(ds.labels, group),
                                                     ids=ds.ids, labels=ds.labels, random_state=random_state))
        # A patch pasted pixel for pixel into many images is a candidate even when the model barely learned it
        # (a clean-label patch): its carriers need not stand out to any other signal.
        for group, chance in _mark_groups(inv):
            if not any(_restates(c, group) for c in groups):
                cand = tr.image_trigger_candidate(ds.images, group, peers=tr.label_peers(ds.labels, group),
                                                  ids=ds.ids, labels=ds.labels, random_state=random_state)
                groups.append(dataclasses.replace(cand, description=(
                    f"{cand.description}; a shared mark: the same to the pixel in {int(group.sum())} images, "
                    f"which chance would give {chance:.0e} times")))
        confirmed = tr.confirm_image_candidates(groups, ds.images, predict_proba=predict, labels=ds.labels,
                                                predictions=pred, holdout=held, random_state=random_state)
        found.extend(confirmed[i] for i in _by_verdict([c.confirmation for c in confirmed]))
        search_kw = {"images": ds.images}
    table = tr.triggers_table(found, ids=ds.ids)
    inv.triggers = table
    if (table["verdict"] == "confirmed").any():
        scores = tr.trigger_evidence(found, **search_kw)
        signals = inv.signals.drop(columns=["suspicion", "reasons"] + (["trigger_score"] if "trigger_score"
                                                                        in inv.signals else []))
        signals["trigger_score"] = scores
        combined = _combine.combine({c[: -len("_score")]: signals[c].to_numpy() for c in signals}, ds.labels)
        signals["suspicion"] = combined.suspicion
        signals["reasons"] = combined.reasons
        inv.replace_signals(signals)
    return table
