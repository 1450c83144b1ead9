"""Training, prediction and evaluation of models that carry a ``preprocess(payload_batch)`` method.

A model here is any ``nn.Module`` with ``preprocess``: it turns a batch of raw payloads (uint8 images, or a list
of texts) into the model's input, a tensor or a tuple of tensors passed to ``forward`` as positional arguments.
The reference models (:class:`ImageCNN`, :class:`TextClassifier`) have one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validate import check_int, check_random_state
from ..data import Dataset
from ..errors import InputError
from .image import ImageCNN
from .text import TextClassifier

logger = logging.getLogger(__name__)

#: Training defaults per dataset kind, used by :func:`train_reference_model` and :func:`train_ensemble`.
#: ``epochs`` is raised on small datasets until training takes at least ``min_steps`` optimizer steps.
REFERENCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {"epochs": 3, "min_steps": 250, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.0},
    "text": {"epochs": 2, "min_steps": 250, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.0},
}


# ---------------------------------------------------------------------------------------------------- helpers
def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch nn.Module; got {type(model).__name__}")
    return model


def _check_dataset(dataset: Any, model: nn.Module | None = None) -> Dataset:
    if not isinstance(dataset, Dataset):
        raise InputError(f"dataset must be a forensics.data.Dataset; got {type(dataset).__name__}")
    config = getattr(model, "config", None)
    n_classes = config.get("n_classes") if isinstance(config, dict) else None
    if n_classes is not None and len(dataset.class_names) > n_classes:
        raise InputError(
            f"the dataset has {len(dataset.class_names)} classes but the model predicts {n_classes}"
        )
    return dataset


def _payload_array(data: Dataset | np.ndarray | Sequence[str]) -> np.ndarray:
    """The payloads as one array to slice batches from: images as they are, texts as an object array."""
    if isinstance(data, Dataset):
        return data.images if data.kind == "image" else data.texts
    if isinstance(data, str):
        raise InputError("the payload must be an image array or a sequence of texts, not one string")
    if not isinstance(data, (np.ndarray, Sequence)):
        raise InputError(
            f"the payload must be a Dataset, a uint8 image array or a sequence of texts; got {type(data).__name__}"
        )
    if len(data) == 0:
        raise InputError("the payload is empty; give at least one sample")
    if isinstance(data, np.ndarray) and data.dtype != object:
        return data
    texts = np.empty(len(data), dtype=object)
    texts[:] = list(data)
    return texts


def _batch(payload: np.ndarray, idx: np.ndarray | slice) -> np.ndarray | list[str]:
    """A batch of raw payloads for ``preprocess``: an image array, or a list of texts."""
    return list(payload[idx]) if payload.dtype == object else payload[idx]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


# ---------------------------------------------------------------------------------------------------- training
def train_model(
    model: nn.Module,
    dataset: Dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    random_state: int = 0,
    lr_schedule: Literal["cosine", "constant"] = "cosine",
    device: str | torch.device = "cpu",
    progress: bool = True,
    preprocess: Any = None,
) -> dict[str, list[float]]:
    """Train ``model`` on ``dataset`` in place with AdamW and the cross-entropy loss.

    Every epoch visits every sample once, in an order drawn from a ``torch.Generator`` seeded with
    ``random_state`` (the global torch seed is neither read nor changed); the last, partial batch is kept.
    Given the same initial weights, the same seed gives the same trained weights.

    Parameters
    ----------
    model : nn.Module
        Any module whose call on a preprocessed batch returns logits (a tensor, element 0 of a tuple, or a
        ``.logits`` attribute, as a Hugging Face classifier's output).
    dataset : Dataset
        Its ``labels`` are the targets; payloads are ``dataset.images[idx]`` or ``list(dataset.texts[idx])``.
    epochs, batch_size : int
    lr, weight_decay : float
        AdamW's learning rate and decoupled weight decay.
    random_state : int
        Seed of the sample order.
    lr_schedule : {"cosine", "constant"}
        ``"cosine"`` lowers the learning rate from ``lr`` to 0 along a half cosine over all batches, which
        settles a short training; ``"constant"`` keeps ``lr``.
    device : str or torch.device
        The model is moved there.
    progress : bool
        Show a progress bar (``tqdm.auto``: a widget in notebooks).
    preprocess : callable, optional
        Payload batch -> model input (a tensor, a tuple for ``model(*args)``, a dict for ``model(**kwargs)``);
        default ``model.preprocess``, else for images
        :func:`~forensics.activations.default_image_preprocess` (texts need one, e.g.
        :func:`~forensics.models.tokenizer_preprocess`).

    Returns
    -------
    dict of lists, one entry per epoch
        ``loss`` (mean training loss), ``train_accuracy`` (on the batches as seen during the epoch),
        ``samples_seen`` and ``seconds``.
    """
    from ..activations import _logits_tensor, _model_inputs, _resolve_preprocess

    model = _check_model(model)
    dataset = _check_dataset(dataset, model)
    prep = _resolve_preprocess(model, dataset.kind, preprocess)
    epochs = check_int(epochs, "epochs", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    if not _is_number(lr) or not lr > 0:
        raise InputError(f"lr must be a positive number; got {lr!r}")
    if not _is_number(weight_decay) or not weight_decay >= 0:
        raise InputError(f"weight_decay must be a non-negative number; got {weight_decay!r}")
    if lr_schedule not in ("cosine", "constant"):
        raise InputError(f"lr_schedule must be 'cosine' or 'constant'; got {lr_schedule!r}")
    generator = torch.Generator().manual_seed(check_random_state(random_state))
    device = torch.device(device)

    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    labels = torch.from_numpy(dataset.labels.copy())
    payload = _payload_array(dataset)
    n = len(dataset)
    n_batches = -(-n // batch_size)  # ceil: the last partial batch is a batch
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * n_batches)
                 if lr_schedule == "cosine" else None)
    history: dict[str, list[float]] = {"loss": [], "train_accuracy": [], "samples_seen": [], "seconds": []}
    bar = tqdm(total=epochs * n_batches, desc=f"training {type(model).__name__}", unit="batch",
               disable=not progress, leave=False)
    try:
        for epoch in range(epochs):
            start = time.perf_counter()
            order = torch.randperm(n, generator=generator)
            total_loss, correct, seen = 0.0, 0, 0
            for b in range(n_batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                args, kwargs = _model_inputs(prep(_batch(payload, idx.numpy())), device)
                y = labels[idx].to(device)
                logits = _logits_tensor(model(*args, **kwargs), len(idx))
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                (loss / len(idx)).backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                total_loss += float(loss.detach())
                correct += int((logits.detach().argmax(dim=1) == y).sum())
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total_loss / seen:.4f}", refresh=False)
            history["loss"].append(total_loss / seen)
            history["train_accuracy"].append(correct / seen)
            history["samples_seen"].append(seen)
            history["seconds"].append(time.perf_counter() - start)
            logger.info("epoch %d/%d: loss %.4f, train accuracy %.4f, %.1f s", epoch + 1, epochs,
                        history["loss"][-1], history["train_accuracy"][-1], history["seconds"][-1])
    finally:
        bar.close()
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_proba(
    model: nn.Module,
    data: Dataset | np.ndarray | Sequence[str],
    *,
    preprocess: Any = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Class probabilities (softmax of the logits) of every sample, in evaluation mode, without gradients.

    Parameters
    ----------
    model : nn.Module
        Any module whose call on a preprocessed batch returns logits (as for
        :func:`forensics.activations.extract_activations`).
    data : Dataset, ndarray of uint8 (n, h, w[, c]) or sequence of str
        A dataset, or raw payloads (for example triggered copies of some samples).
    preprocess : callable, optional
        Payload batch -> model input; default ``model.preprocess``, else for images
        :func:`forensics.activations.default_image_preprocess` (texts need one).

    Returns
    -------
    ndarray of float32, shape (n, n_classes)
    """
    from ..activations import _logits_of, _model_inputs, _resolve_preprocess

    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch nn.Module; got {type(model).__name__}")
    payload = _payload_array(data)
    prep = _resolve_preprocess(model, "text" if payload.dtype == object else "image", preprocess)
    n = len(payload)
    batch_size = check_int(batch_size, "batch_size", low=1)
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        out = []
        with torch.no_grad():
            for start in range(0, n, batch_size):
                batch = _batch(payload, slice(start, start + batch_size))
                args, kwargs = _model_inputs(prep(batch), device)
                out.append(torch.softmax(_logits_of(model(*args, **kwargs), len(batch)), dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32, copy=False)


def accuracy(model: nn.Module, dataset: Dataset, *, batch_size: int = 256,
             device: str | torch.device = "cpu") -> float:
    """Share of the samples of ``dataset`` whose predicted class is their label."""
    dataset = _check_dataset(dataset)
    pred = predict_proba(model, dataset, batch_size=batch_size, device=device).argmax(axis=1)
    return float(np.mean(pred == dataset.labels))


def attack_success_rate(
    model: nn.Module,
    triggered_payload: Dataset | np.ndarray | Sequence[str],
    *,
    target: int,
    original_labels: Sequence[int] | np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> float:
    """Share of triggered inputs, among those whose true class is not ``target``, predicted as ``target``.

    Parameters
    ----------
    triggered_payload : Dataset, ndarray of uint8 or sequence of str, n samples
        Inputs carrying the trigger.
    target : int
        The attacker's target class.
    original_labels : array of int, shape (n,)
        The true class of each input before the trigger was added.
    """
    n = len(_payload_array(triggered_payload))
    y = np.asarray(original_labels)
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"original_labels has shape {y.shape} but there are {n} triggered inputs")
    if y.dtype.kind not in "iu":
        raise InputError(f"original_labels must be integer class indices; got dtype {y.dtype}")
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 0:
        raise InputError(f"target must be a class index (a non-negative integer); got {target!r}")
    keep = y != target
    if not keep.any():
        raise InputError(f"every original label is the target class {target}; the attack success is undefined")
    probs = predict_proba(model, triggered_payload, batch_size=batch_size, device=device)
    if target >= probs.shape[1]:
        raise InputError(f"target = {target} is not a class of the model, which predicts {probs.shape[1]} classes")
    return float(np.mean(probs[keep].argmax(axis=1) == target))


# ---------------------------------------------------------------------------------------------------- reference
def build_reference_model(dataset: Dataset, *, random_state: int = 0) -> nn.Module:
    """An untrained reference model sized for ``dataset``: :class:`ImageCNN` for images, :class:`TextClassifier`
    for texts, with weights drawn from a generator seeded with ``random_state``."""
    dataset = _check_dataset(dataset)
    generator = torch.Generator().manual_seed(check_random_state(random_state))
    n_classes = max(len(dataset.class_names), 2)
    # Built on the meta device, then given memory and drawn from the seeded generator: torch's global random
    # state is neither read nor advanced.
    with torch.device("meta"):
        if dataset.kind == "image":
            images = dataset.images
            model: nn.Module = ImageCNN(
                in_channels=1 if images.ndim == 3 else images.shape[-1],
                n_classes=n_classes,
                image_size=images.shape[1:3],
            )
        else:
            model = TextClassifier(n_classes=n_classes)
    model = model.to_empty(device="cpu")
    model.reset_parameters(generator)
    return model


def train_reference_model(
    dataset: Dataset,
    *,
    epochs: int | None = None,
    random_state: int = 0,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> nn.Module:
    """Build a reference model for ``dataset`` and train it with :func:`train_model`.

    Options left at ``None`` take the defaults of the dataset's kind (:data:`REFERENCE_DEFAULTS`); the default
    number of epochs grows on small datasets so that training takes at least ``min_steps`` batches.
    Measured on 2 CPU cores: a 12,000-image Fashion-MNIST subset trains in 3 epochs to about 0.88 test accuracy;
    10,000 Rotten Tomatoes snippets train in 2 epochs to about 0.72.

    Returns
    -------
    nn.Module
        The trained model, in evaluation mode.
    """
    model = build_reference_model(dataset, random_state=random_state)
    train_model(model, dataset, random_state=random_state, device=device, progress=progress,
                **_options(dataset.kind, len(dataset), epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay))
    return model


def _options(kind: str, n: int, **given: Any) -> dict[str, Any]:
    defaults = REFERENCE_DEFAULTS[kind]
    out = {k: defaults[k] if v is None else v for k, v in given.items()}
    if given["epochs"] is None:
        batches = -(-n // check_int(out["batch_size"], "batch_size", low=1))
        out["epochs"] = max(defaults["epochs"], -(-defaults["min_steps"] // batches))
    return out


def train_ensemble(
    dataset: Dataset,
    *,
    k: int = 4,
    random_state: int = 0,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Train ``k`` reference models, each on a random half of ``dataset``, and predict every sample with each.

    The halves are balanced per sample: each sample is in the training set of exactly ``k // 2`` models and held
    out by the other ``k - k // 2``, so every sample has held-out predictions.

    Returns
    -------
    probs : ndarray of float32, shape (k, n, n_classes)
        Class probabilities of every sample under each model.
    in_train : ndarray of bool, shape (k, n)
        Whether each sample was in each model's training half.
    """
    dataset = _check_dataset(dataset)
    k = check_int(k, "k", low=2)
    rng = np.random.default_rng(check_random_state(random_state))
    n = len(dataset)
    if n < k:
        raise InputError(f"train_ensemble needs at least k = {k} samples; the dataset has {n}")
    # Rank the k models in a random order per sample; the first k // 2 train on it.
    in_train = rng.random((k, n)).argsort(axis=0).argsort(axis=0) < k // 2
    seeds = rng.integers(0, 2**31 - 1, size=k)
    probs = []
    for j in tqdm(range(k), desc="ensemble", unit="model", disable=not progress, leave=False):
        model = train_reference_model(dataset.subset(in_train[j]), epochs=epochs, random_state=int(seeds[j]),
                                      device=device, progress=progress)
        probs.append(predict_proba(model, dataset, device=device))
    return np.stack(probs).astype(np.float32, copy=False), in_train
