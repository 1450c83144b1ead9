"""Activations from an encoder that has no classifier (a sentence-transformers model, an image embedder).

Its embeddings are the features. The model outputs that the loss and label signals need (probabilities,
predictions, per-sample loss) come from a linear classifier fitted on the embeddings *out of fold*: each sample's
probabilities are predicted by a classifier that never saw it, so a mislabelled sample is not fitted away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from ._validate import check_int, check_random_state
from .data import Dataset
from .errors import InputError


def _encode_function(encoder: Any) -> Callable[[Any], Any]:
    encode = getattr(encoder, "encode", None)
    if callable(encode):
        return encode
    if callable(encoder):
        return encoder
    raise InputError(
        f"encoder must have an encode(batch) method (a sentence-transformers model) or be a function "
        f"batch -> array of shape (batch, d); got {type(encoder).__name__}"
    )


def encoder_activations(
    encoder: Any,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    folds: int = 5,
    random_state: int = 0,
    progress: bool = True,
) -> Any:
    """Embed every sample with ``encoder`` and complete the result with out-of-fold class probabilities.

    Parameters
    ----------
    encoder : object with ``encode(batch)``, or a function ``batch -> array (batch, d)``
        For example a ``sentence_transformers.SentenceTransformer``. A batch is a list of texts or a uint8 image
        array (batch, h, w[, c]).
    dataset : Dataset
    batch_size : int
        Samples per call of the encoder.
    folds : int
        Folds of the cross-validated logistic regression that gives each sample's probabilities (at least 2;
        every class needs at least ``folds`` samples).
    random_state : int
        Seed of the folds.

    Returns
    -------
    Activations
        ``features["embedding"]`` float32 (n, d); ``logits`` are the out-of-fold log-probabilities, from which
        ``probs``, ``predictions`` and ``loss`` follow. Pass it to :func:`forensics.investigate` as
        ``activations=``.

    Raises
    ------
    InputError
        An encoder that returns another number of rows than it was given, NaN or infinite embeddings, or a class
        with fewer samples than ``folds``.
    """
    from .activations import Activations

    if not isinstance(dataset, Dataset):
        raise InputError(f"dataset must be a forensics Dataset; got {type(dataset).__name__}")
    encode = _encode_function(encoder)
    batch_size = check_int(batch_size, "batch_size", low=1)
    folds = check_int(folds, "folds", low=2)
    random_state = check_random_state(random_state)
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    present = counts[counts > 0]
    if len(present) < 2:
        raise InputError("the dataset has one class only; the out-of-fold classifier needs at least two")
    if present.min() < folds:
        small = [dataset.class_names[c] for c in np.flatnonzero((counts > 0) & (counts < folds))]
        raise InputError(f"classes {small} have fewer than folds={folds} samples; lower folds or add samples")

    n = len(dataset)
    chunks = []
    with tqdm(total=n, unit="sample", desc="embedding", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = dataset.images[start:stop] if dataset.kind == "image" else list(dataset.texts[start:stop])
            out = encode(batch)
            out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
            if out.ndim != 2 or out.shape[0] != stop - start:
                raise InputError(f"the encoder returned shape {out.shape} for a batch of {stop - start} samples; "
                                 "expected (batch, d)")
            chunks.append(out.astype(np.float32, copy=False))
            bar.update(stop - start)
    features = np.concatenate(chunks)
    if not np.isfinite(features).all():
        bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
        raise InputError(f"the encoder returned NaN or infinite values for {len(bad)} sample(s), e.g. "
                         f"{dataset.ids[bad[:5]].tolist()}")
    # Classes are renumbered to those present, so that the columns line up with dataset.class_names after.
    classes = np.flatnonzero(counts)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    probs = cross_val_predict(clf, features, dataset.labels, cv=cv, method="predict_proba")
    logits = np.full((n, len(dataset.class_names)), -1e4, np.float32)  # absent classes: probability ~0
    logits[:, classes] = np.log(np.clip(probs, 1e-30, 1.0))
    act = Activations.from_arrays(dataset.ids, {"embedding": features}, logits=logits, labels=dataset.labels)
    meta = {**act.meta, "source": f"encoder {type(encoder).__name__}", "out_of_fold_classifier":
            f"standardized logistic regression, {folds} folds, random_state={random_state}",
            "dataset_hash": dataset.content_hash}
    return Activations(ids=act.ids, features=act.features, layer="embedding", logits=act.logits, probs=act.probs,
                       predictions=act.predictions, loss=act.loss, meta=meta)
