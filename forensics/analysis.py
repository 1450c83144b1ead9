"""From a dataset (and a model, or activations) to an :class:`~forensics.investigation.Investigation`.

:func:`investigate` is the one call an analyst makes: it extracts activations when given a model, trains a reference
model when given neither, runs the signals (:func:`forensics.signals.compute.compute_signals`, re-exported here) and
returns an investigation whose map and clusters are computed on first use.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._validate import check_features, check_random_state
from .data import Dataset
from .errors import InputError
from .signals import marks
from .signals.compute import Selection, compute_signals
from .signals.registry import default_signals, score_column, signals_tagged

if TYPE_CHECKING:
    from .investigation import Investigation

log = logging.getLogger(__name__)

def investigate(
    dataset: Dataset,
    model: Any = None,
    *,
    activations: Any = None,
    layer: str | None = None,
    pooling: str = "flatten",
    preprocess: Any = None,
    tokenizer: Any = None,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool | str = False,
    batch_size: int = 256,
    device: Any = None,
    cache_dir: Any = None,
    signals: Selection = None,
    trusted: Dataset | None = None,
    random_state: int = 0,
    progress: bool = True,
    map_builder: Any = None,
    client: Any = None,
    chunk_size: int = 65_536,
) -> Investigation:
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
    layer, pooling, preprocess, batch_size, device, cache_dir, precision, channels_last, compile
        Passed to :func:`forensics.activations.extract_activations` (``layer=None``: the input of the last
        ``nn.Linear``). ``cache_dir`` also keeps the map and its clusters (:func:`forensics.embedding.build_map`),
        so that a rerun on the same data and model reads both back.
    tokenizer : Hugging Face tokenizer, optional
        For a text classifier such as an ``AutoModelForSequenceClassification``: the texts are tokenized by it
        (:func:`forensics.models.tokenizer_preprocess`, padded per batch, cut at 256 tokens or the model's
        position limit) and passed to the model
        as keywords. Checked against the model's embedding table. Give it or ``preprocess``, not both.
    signals : sequence of names, or mapping of name to parameters, optional
        Signals to run and their parameters, as in :func:`~forensics.signals.compute.compute_signals`:
        ``signals={"knn_disagreement": {"k": 20}, "spectral": {}}``. Default: the registered default signals. The
        effective parameters of each are kept in ``inv.params["signal_params"]`` (and saved with it).
    trusted : Dataset, optional
        A small set the user vouches for (same classes, never part of ``dataset``): its activations are extracted
        from the same model and layer, and the signals ``trusted_disagreement`` (its labels around each sample) and
        ``trusted_distance`` (how far each sample lies from every trusted sample of its label) run
        (:mod:`forensics.signals.trusted`). With 500 or more trusted samples they also anchor the nulls of the
        signals that read only activations, labels and predictions (spectral, robust spectral, kNN disagreement,
        targeted flip, low loss): the trusted samples are scored with the data and their scores are each signal's
        null, which a poisoned minority cannot inflate (``inv.params["anchored_signals"]``). Needs the model (not
        precomputed activations).
    random_state : int
        The seed of every step: the reference model, the signals, the map and its clusters.
    client : dask.distributed.Client, optional
        Run the extraction (a task per chunk, the model sent once to each worker) and the signals (a task per
        group of signals) on a Dask cluster (:mod:`forensics.distributed`); the result equals a local run's
        within float rounding. The reference model, when one is trained, and the map are computed here.
    chunk_size : int
        Rows per extraction chunk: per task with a ``client``, per write into the ``cache_dir`` store (which a
        stopped run resumes from).

    Returns
    -------
    Investigation
        Tables indexed by ``sample_id``: ``samples`` (label, source, prediction, loss, duplicate group, and for
        images the strongest shared mark, -1 for none), ``signals`` (one
        ``<signal>_score`` column per signal, ``suspicion``, ``reasons``); ``map`` and ``clusters`` are computed
        on first use. The model, when there is one, is kept as ``inv.model`` (not saved with the investigation).
        With the model's probabilities the label signals are read against its own predicted distribution where
        the labels show an attack (``inv.params["label_gate"]`` below 1e-3;
        :func:`~forensics.signals.combine.label_null`).
    """
    from .investigation import Investigation

    if not isinstance(dataset, Dataset):
        raise InputError(f"dataset must be a forensics.Dataset; got {type(dataset).__name__}")
    random_state = check_random_state(random_state)
    t0 = time.perf_counter()
    trained = False
    probs = None
    meta: dict[str, Any] = {}
    if tokenizer is not None:
        from .models.hf import check_tokenizer, max_length_for, tokenizer_preprocess

        if preprocess is not None:
            raise InputError("give tokenizer= or preprocess=, not both (a tokenizer is turned into a preprocess)")
        if model is not None:
            check_tokenizer(model, tokenizer)
        preprocess = tokenizer_preprocess(tokenizer, max_length=max_length_for(model, tokenizer))
    if activations is None:
        from .activations import extract_activations

        if model is None:
            from .models import train_reference_model

            log.info("no model given: training a reference model on the dataset")
            model = train_reference_model(dataset, random_state=random_state, progress=progress)
            trained = True
        activations = extract_activations(model, dataset, layers=layer, pooling=pooling, preprocess=preprocess,
                                          batch_size=batch_size, device=device, cache_dir=cache_dir,
                                          progress=progress, precision=precision, channels_last=channels_last,
                                          compile=compile, chunk_size=chunk_size, client=client)
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
    trusted_pair = None
    if trusted is not None:
        trusted_pair = _trusted_activations(trusted, dataset, model, layer=used_layer, pooling=pooling,
                                            preprocess=preprocess, batch_size=batch_size, device=device)
    table, info = compute_signals(features, dataset.labels, probs=probs, dataset=dataset, signals=signals,
                                  trusted=trusted_pair, random_state=random_state, client=client)
    table.index = pd.Index(dataset.ids, name="sample_id", dtype=object)
    samples = dataset.to_frame()
    if probs is not None:
        pred = probs.argmax(axis=1)
        samples["prediction"] = pred
        samples["prediction_name"] = np.asarray(dataset.class_names, dtype=object)[pred]
        samples["confidence"] = probs.max(axis=1)
        high_loss = score_column("high_loss")
        samples["loss"] = table[high_loss].to_numpy() if high_loss in table else np.nan
    found_marks = info.pop("shared_marks", None)
    if found_marks is not None:
        samples["shared_mark"] = marks.mark_of(found_marks, len(dataset))
    groups = info.pop("duplicate_groups", None)
    if groups is not None:
        samples["duplicate_group"] = groups
    pairs = info.pop("relabelled_pairs", None)
    params = {
        "layer": used_layer, "pooling": pooling, "random_state": random_state, "signals": info["signals"],
        "signal_params": info["signal_params"], "skipped_signals": info["skipped"], "signal_seconds": info["seconds"],
        "threshold": info["threshold"], "anchored_signals": info["anchored"],
        # Kept so that a later recombination (a confirmed trigger, a plan) measures against the same null.
        "trusted_null_scores": {name: [float(v) if np.isfinite(v) else None for v in values]
                                for name, values in info["null_scores"].items()},
        # The label null of the model's predictions (combine's label_null), for the same reason.
        "label_null": None if info["label_null"] is None else info["label_null"].tolist(),
        "label_gate": info["label_gate"] if np.isfinite(info["label_gate"]) else None,
        # cleanlab's count of wrong labels (label_quality's out-of-fold probabilities), for the verdict.
        "label_issues": info.get("label_issues"),
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
        map_builder = functools.partial(build_map, cache_dir=cache_dir, random_state=random_state)
    inv = Investigation(dataset, signals=table, samples=samples, features=features, params=params,
                        map_builder=map_builder)
    inv.model = model
    inv.preprocess = preprocess
    return inv


def _trusted_activations(trusted: Any, dataset: Dataset, model: Any, **extract: Any
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trusted set's activations (same model and layer), labels and the model's probabilities, after checking it
    can be compared."""
    from .activations import extract_activations

    if not isinstance(trusted, Dataset):
        raise InputError(f"trusted must be a forensics.Dataset; got {type(trusted).__name__}")
    if trusted.kind != dataset.kind or tuple(trusted.class_names) != tuple(dataset.class_names):
        raise InputError(f"trusted holds {trusted.kind}s of classes {list(trusted.class_names)}; the dataset holds "
                         f"{dataset.kind}s of classes {list(dataset.class_names)}")
    if model is None:
        raise InputError("trusted needs the model, to see the trusted samples as it sees the data: pass model=, not "
                         "precomputed activations")
    shared = np.intersect1d(trusted.hashes, dataset.hashes)
    if len(shared):
        raise InputError(f"{len(shared)} trusted sample(s) are also in the dataset (same content); a trusted set must "
                         "be kept apart from the data it vouches against")
    layer = extract.pop("layer")
    acts = extract_activations(model, trusted, layers=None if layer == "given" else layer, progress=False, **extract)
    return (np.asarray(acts.feature(layer if layer != "given" else acts.layer), dtype=np.float32), trusted.labels,
            np.asarray(acts.probs))


def __getattr__(name: str) -> Any:
    # Names that moved when the signals got their registry: still readable, with a warning.
    moved = {"DEFAULT_SIGNALS": default_signals, "BACKDOOR_SIGNALS": lambda: signals_tagged("backdoor")}
    if name in moved:
        warnings.warn(f"forensics.analysis.{name} is deprecated: use forensics.signals.registry "
                      "(default_signals(), signals_tagged('backdoor'))", DeprecationWarning, stacklevel=2)
        return moved[name]()
    if name in ("find_triggers", "backdoor_suspicion"):
        from .triggers import discover

        return getattr(discover, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["compute_signals", "investigate"]
