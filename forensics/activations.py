"""Activations of any torch model: layer listing, forward hooks, pooling, batching and an on-disk cache.

Works for any ``nn.Module``, not only ``nn.Sequential``: layers are the model's named sub-modules
(``model.named_modules()``), read with forward hooks, and ``"<name>:input"`` names the *input* of a module, read
with a forward pre-hook. :func:`list_layers` shows them all with their output shapes; the layer used is always said
in the result. Non-flat outputs (convolution maps, token sequences) become one vector per sample by an explicit
``pooling``.

This module and ``forensics.models`` are the only places that import torch; everything downstream takes the numpy
arrays of :class:`Activations`.
Keeping torch in one place is why this module holds the hooks, the layer listing, batching, devices and the
cache together, past 600 lines.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._chunkstore import ChunkStore, MemorySink
from ._io import atomic_write_bytes
from ._validate import check_labels
from ._version import __version__
from .data import Dataset, check_ids
from .errors import InputError

logger = logging.getLogger(__name__)

#: Named ways of turning a layer's output into one vector per sample.
POOLINGS = ("flatten", "avg", "max", "cls")
#: Arithmetic of the forward pass: float32, or autocast to bfloat16 / float16 (features are stored as float32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: ImageNet's channel means and standard deviations, the normalization most pretrained vision networks expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Suffix of a layer name that reads the input of a module instead of its output.
INPUT_SUFFIX = ":input"

_CACHE_FORMAT = 1
_MAX_NAMES_SHOWN = 60

Preprocess = Callable[[Any], Any]
Pooling = str | Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Activations:
    """Per-sample features and model outputs, in the dataset's order and keyed by its sample ids.

    Attributes
    ----------
    ids : ndarray of str (object), shape (n,)
        Sample ids, row ``i`` of every array belongs to ``ids[i]``.
    features : dict of str to ndarray of float32, shape (n, d)
        One array per layer name (may be memory-mapped from the cache, read-only).
    layer : str
        The default layer: the one :meth:`feature` returns without an argument.
    logits : ndarray of float32, shape (n, n_classes), or None
    probs : ndarray of float32, shape (n, n_classes), or None
        Softmax of the logits.
    predictions : ndarray of int64, shape (n,), or None
        Argmax of the logits.
    loss : ndarray of float32, shape (n,), or None
        Per-sample cross-entropy of the logits against the dataset's labels.
    meta : dict
        How they were made: model and dataset hashes, layers, pooling, preprocess, versions, device, and
        ``from_cache``.
    """

    ids: np.ndarray
    features: dict[str, np.ndarray]
    layer: str
    logits: np.ndarray | None = None
    probs: np.ndarray | None = None
    predictions: np.ndarray | None = None
    loss: np.ndarray | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=object)
        if ids.ndim != 1:
            raise InputError(f"ids must be 1-D; got shape {ids.shape}")
        n = len(ids)
        if not isinstance(self.features, Mapping) or not self.features:
            raise InputError("features must be a non-empty dict of layer name -> array of shape (n, d)")
        for name, x in self.features.items():
            if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[0] != n:
                got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
                raise InputError(f"features[{name!r}] must be a float32 array of shape ({n}, d); got {got}")
        if self.layer not in self.features:
            raise InputError(f"layer {self.layer!r} is not among the features' layers {list(self.features)}")
        n_classes = None if self.logits is None else (self.logits.shape[1] if self.logits.ndim == 2 else None)
        for name, shape, kind in (
            ("logits", (n, n_classes), "f"),
            ("probs", (n, n_classes), "f"),
            ("predictions", (n,), "i"),
            ("loss", (n,), "f"),
        ):
            a = getattr(self, name)
            if a is None:
                continue
            if name != "logits" and self.logits is None:
                raise InputError(f"{name} is given without logits")
            if not isinstance(a, np.ndarray) or a.dtype.kind != kind or a.shape != shape:
                got = f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                want = "float" if kind == "f" else "integer"
                raise InputError(f"{name} must be a {want} array of shape {shape}; got {got}")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "features", dict(self.features))
        object.__setattr__(self, "meta", dict(self.meta))

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        layers = ", ".join(f"{k!r} {v.shape[1]}-d" for k, v in self.features.items())
        logits = "" if self.logits is None else f", {self.logits.shape[1]} classes"
        return f"Activations({len(self)} samples, layer {self.layer!r}, features [{layers}]{logits})"

    def feature(self, layer: str | None = None) -> np.ndarray:
        """Features of one layer (the default layer when None), float32 of shape (n, d)."""
        name = self.layer if layer is None else layer
        if name not in self.features:
            raise InputError(f"layer {name!r} was not extracted; extracted layers are {list(self.features)}")
        return self.features[name]

    def to_frame(self) -> pd.DataFrame:
        """Table indexed by ``sample_id`` with ``prediction``, ``loss`` and ``max_prob`` where they are known."""
        df = pd.DataFrame(index=pd.Index(self.ids, name="sample_id", dtype=object))
        if self.predictions is not None:
            df["prediction"] = np.asarray(self.predictions)
        if self.loss is not None:
            df["loss"] = np.asarray(self.loss)
        if self.probs is not None:
            df["max_prob"] = np.asarray(self.probs).max(axis=1)
        return df

    @classmethod
    def from_arrays(
        cls,
        ids: Sequence[Any],
        features: np.ndarray | Mapping[str, np.ndarray],
        *,
        logits: np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        layer: str | None = None,
    ) -> Activations:
        """Activations computed elsewhere (your own pipeline), checked and completed.

        Parameters
        ----------
        ids : sequence, length n
            Unique sample ids (text or integers), in the rows' order.
        features : array of shape (n, d), or dict of layer name -> array of shape (n, d)
        logits : array of shape (n, n_classes), optional
            Probabilities and predictions are derived from them.
        labels : array of int, shape (n,), optional
            With ``logits``: the per-sample cross-entropy ``loss`` is computed against them.
        layer : str, optional
            Default layer. With an array ``features`` it names it (``"features"`` when None); with a dict it must
            be one of its keys (may be None when the dict has one key).

        Raises
        ------
        InputError
            Length mismatches, non-2-D arrays, NaN or infinite values (the rows are named), labels without logits.
        """
        ids = check_ids(list(ids), len(ids))
        n = len(ids)
        if isinstance(features, Mapping):
            feats = {str(k): v for k, v in features.items()}
            if not feats:
                raise InputError("features is an empty dict; give at least one layer")
            if layer is None:
                if len(feats) > 1:
                    raise InputError(f"features has several layers {list(feats)}; say which is the default: layer=")
                layer = next(iter(feats))
            elif layer not in feats:
                raise InputError(f"layer {layer!r} is not a key of features {list(feats)}")
        else:
            layer = "features" if layer is None else str(layer)
            feats = {layer: features}
        feats = {k: _check_matrix(v, f"features[{k!r}]", ids) for k, v in feats.items()}
        probs = predictions = loss = None
        if logits is not None:
            logits = _check_matrix(logits, "logits", ids)
            y = None
            if labels is not None:
                y = torch.from_numpy(check_labels(labels, n, n_classes=logits.shape[1]).copy())
            probs, predictions, loss = (
                None if t is None else t.numpy() for t in _outputs_of_logits(torch.from_numpy(logits), y)
            )
        elif labels is not None:
            raise InputError("labels are used with logits to compute the loss; give logits too, or no labels")
        meta = {"source": "from_arrays", "layers": list(feats), "layer": layer, **_versions(), "from_cache": False}
        return cls(ids=ids, features=feats, layer=layer, logits=logits, probs=probs, predictions=predictions,
                   loss=loss, meta=meta)


def _check_matrix(x: Any, name: str, ids: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise InputError(f"{name} must be numeric; got dtype {a.dtype}")
    if a.ndim != 2:
        raise InputError(f"{name} must be 2-D (n_samples, d); got shape {a.shape}")
    if a.shape[0] != len(ids):
        raise InputError(f"{name} has {a.shape[0]} rows but ids has {len(ids)} entries")
    a = a.astype(np.float32, copy=False)
    bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
    if len(bad):
        raise InputError(
            f"{name} has NaN or infinite values in {len(bad)} row(s): rows {bad[:10].tolist()} "
            f"(sample ids {ids[bad[:10]].tolist()})"
        )
    return a


def _outputs_of_logits(
    logits: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Probabilities (float32), predictions (int64) and per-sample cross-entropy (float32, or None)."""
    logits = logits.to(torch.float32)
    probs = torch.softmax(logits, dim=1)
    predictions = logits.argmax(dim=1)
    loss = None if labels is None else F.cross_entropy(logits, labels, reduction="none")
    return probs, predictions, loss


def _versions() -> dict[str, str]:
    return {"torch_version": torch.__version__, "forensics_version": __version__}


# ---------------------------------------------------------------------------------------------------- layers


def _named_layers(model: nn.Module) -> dict[str, nn.Module]:
    # The root module (name "") is the model itself: its output is the logits, which are always returned.
    return {name: m for name, m in model.named_modules() if name}


def default_layer(model: nn.Module) -> str:
    """Name of the default layer: the input of the model's last ``nn.Linear`` (its penultimate representation).

    "Last" is the order of ``model.named_modules()`` (the order the layers were assigned in ``__init__``).
    """
    _check_model(model)
    linears = [name for name, m in _named_layers(model).items() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError(
            f"the model ({type(model).__name__}) has no nn.Linear layer, so there is no default penultimate "
            f"layer; pass layers= one of {_shown(list(_named_layers(model)))} (see list_layers)"
        )
    return linears[-1] + INPUT_SUFFIX


def _resolve_layers(model: nn.Module, layers: str | Sequence[str] | None) -> list[str]:
    if layers is None:
        return [default_layer(model)]
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise InputError("layers is empty; give a layer name, a list of names, or None for the default layer")
    modules = _named_layers(model)
    for name in names:
        if not isinstance(name, str):
            raise InputError(f"layers must be layer names (str); got {type(name).__name__} {name!r}")
        base = name[: -len(INPUT_SUFFIX)] if name.endswith(INPUT_SUFFIX) else name
        if base not in modules:
            raise InputError(
                f"unknown layer {name!r}; valid layers are the module names {_shown(list(modules))}, "
                f"each also as '<name>{INPUT_SUFFIX}' for its input (see list_layers)"
            )
    if len(set(names)) != len(names):
        raise InputError(f"layers has duplicates: {names}")
    return names


def _shown(names: list[str]) -> str:
    more = len(names) - _MAX_NAMES_SHOWN
    return repr(names[:_MAX_NAMES_SHOWN]) + (f" (and {more} more)" if more > 0 else "")


def _first_tensor(out: Any) -> torch.Tensor | None:
    """The tensor a layer's output stands for: itself, element 0 of a tuple/list, the first value of a dict."""
    while True:
        if isinstance(out, torch.Tensor):
            # Fast-path transformer layers may pass nested (ragged) tensors; pad them to a regular batch.
            return torch.nested.to_padded_tensor(out, 0.0) if out.is_nested else out
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        elif isinstance(out, Mapping) and out:
            out = next(iter(out.values()))
        else:
            return None


def _input_of(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else next(iter(kwargs.values()), None)


def list_layers(
    model: nn.Module,
    dataset_or_batch: Dataset | torch.Tensor | tuple | Mapping,
    *,
    preprocess: Preprocess | None = None,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """The layers of a model, with the shape of each one's output for one sample.

    Runs one forward pass on two samples (or the batch given) with a hook on every named sub-module.

    Parameters
    ----------
    model : nn.Module
        Any module (not only ``nn.Sequential``).
    dataset_or_batch : Dataset, or a ready model input
        A :class:`~forensics.data.Dataset` (its first two samples are preprocessed as in
        :func:`extract_activations`), or a tensor / tuple of tensors / dict of tensors passed to the model as is.
    preprocess, device
        As in :func:`extract_activations`.

    Returns
    -------
    DataFrame
        One row per module in ``model.named_modules()`` order, with columns ``name`` (what ``layers=`` takes),
        ``type``, ``output_shape`` (tuple, per sample; None if the module did not run or returned no tensor),
        ``n_params`` (including sub-modules), ``calls`` (times it ran in the forward pass; a module that runs
        more than once cannot be extracted) and ``default``. The default layer, the input of the last
        ``nn.Linear``, is the extra row ``"<name>:input"`` just before that layer.
    """
    _check_model(model)
    modules = _named_layers(model)
    linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
    default = linears[-1] if linears else None
    if isinstance(dataset_or_batch, Dataset):
        _check_dataset(dataset_or_batch)
        prep = _resolve_preprocess(model, dataset_or_batch.kind, preprocess)
        batch = prep(_payload(dataset_or_batch, 0, min(2, len(dataset_or_batch))))
    else:
        batch = dataset_or_batch
    shapes: dict[str, tuple | None] = {}
    calls: dict[str, int] = dict.fromkeys(modules, 0)

    def on_output(name: str, out: Any) -> None:
        calls[name] += 1
        t = _first_tensor(out)
        shapes[name] = None if t is None else tuple(t.shape[1:])

    with _Running(model, device) as run:
        run.handles += [m.register_forward_hook(functools.partial(lambda n, _m, _a, o: on_output(n, o), name))
                        for name, m in modules.items()]
        if default is not None:
            calls[default + INPUT_SUFFIX] = 0
            run.handles.append(modules[default].register_forward_pre_hook(
                lambda _m, a, k: on_output(default + INPUT_SUFFIX, _input_of(a, k)), with_kwargs=True))
        args, kwargs = _model_inputs(batch, run.device)
        _check_call(model, args, kwargs)
        try:
            model(*args, **kwargs)
        except RuntimeError as e:
            raise (_channel_mismatch(e, args) or e) from e

    rows = []
    for name, m in modules.items():
        if name == default:
            rows.append({"name": name + INPUT_SUFFIX, "type": f"input of {type(m).__name__}",
                         "output_shape": shapes.get(name + INPUT_SUFFIX), "n_params": 0,
                         "calls": calls[name + INPUT_SUFFIX], "default": True})
        rows.append({"name": name, "type": type(m).__name__, "output_shape": shapes.get(name),
                     "n_params": sum(p.numel() for p in m.parameters()), "calls": calls[name], "default": False})
    return pd.DataFrame(rows, columns=["name", "type", "output_shape", "n_params", "calls", "default"])


# ---------------------------------------------------------------------------------------------------- inputs


def default_image_preprocess(images: np.ndarray) -> torch.Tensor:
    """Model input from uint8 images: float32 in [0, 1], channels first.

    Parameters
    ----------
    images : ndarray of uint8, shape (batch, h, w) or (batch, h, w, c)

    Returns
    -------
    Tensor of float32, shape (batch, 1, h, w) for grayscale or (batch, c, h, w)
    """
    # astype copies into a writable array (dataset arrays are read-only, which torch warns about).
    x = torch.from_numpy(np.asarray(images).astype(np.float32)).mul_(1.0 / 255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous()


def image_preprocess(
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Callable[[np.ndarray], torch.Tensor]:
    """A preprocess for networks trained on normalized images: ``(x / 255 - mean) / std`` per channel.

    Parameters
    ----------
    mean, std : sequences of floats, one per channel (3 for RGB, 1 for grayscale)
        The normalization the model was trained with, e.g. :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD` for
        most pretrained torchvision and timm networks. Resizing and cropping belong to the dataset
        (:meth:`~forensics.data.Dataset.from_image_folder` ``size=`` and ``fit=``), so that previews show what
        the model saw.

    Returns
    -------
    callable
        ``preprocess(images)`` for :func:`extract_activations` and :func:`~forensics.investigate`, with a
        ``cache_key`` naming the normalization.
    """
    if (mean is None) != (std is None):
        raise InputError("give both mean and std (one value per channel), or neither")
    m = s = None
    if mean is not None and std is not None:
        m = np.asarray(mean, dtype=np.float64).reshape(-1)
        s = np.asarray(std, dtype=np.float64).reshape(-1)
        if len(m) != len(s) or len(m) not in (1, 3) or not np.isfinite(m).all() or not (s > 0).all():
            raise InputError(f"mean and std must be 1 or 3 finite values each, std positive; got {mean!r}, {std!r}")

    def preprocess(images: np.ndarray) -> torch.Tensor:
        x = default_image_preprocess(images)
        if m is None or s is None:
            return x
        if x.shape[1] != len(m):
            raise InputError(f"the images have {x.shape[1]} channel(s) but mean and std give {len(m)}")
        shape = (1, len(m), 1, 1)
        return (x - torch.tensor(m, dtype=x.dtype).view(shape)) / torch.tensor(s, dtype=x.dtype).view(shape)

    preprocess.cache_key = (  # type: ignore[attr-defined]
        "image_preprocess" if m is None or s is None else f"image_preprocess(mean={m.tolist()}, std={s.tolist()})"
    )
    return preprocess


def _resolve_preprocess(model: nn.Module, kind: str, preprocess: Preprocess | None) -> Preprocess:
    if preprocess is not None:
        if not callable(preprocess):
            raise InputError(f"preprocess must be a function (payload batch) -> tensor(s); got {type(preprocess)}")
        return preprocess
    own = getattr(model, "preprocess", None)
    if callable(own):
        return own
    if kind == "image":
        return default_image_preprocess
    raise InputError(
        f"a {kind} dataset needs a preprocess: a function from a list of texts to the model's input tensor(s) "
        "(e.g. token ids, or (tokens, offsets) for an nn.EmbeddingBag); pass preprocess=, or give the model a "
        "preprocess(texts) method"
    )


def _payload(dataset: Dataset, start: int, stop: int) -> np.ndarray | list[str]:
    return dataset.images[start:stop] if dataset.kind == "image" else list(dataset.texts[start:stop])


def _model_inputs(batch: Any, device: torch.device, *, channels_last: bool = False) -> tuple[tuple, dict]:
    """Positional and keyword arguments of the model call, on ``device``.

    For a GPU, tensors are copied from pinned (page-locked) memory without blocking the host.
    """
    pinned = device.type == "cuda"

    def to(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        if channels_last and v.ndim == 4:
            v = v.contiguous(memory_format=torch.channels_last)
        if pinned and v.device.type == "cpu":
            return v.pin_memory().to(device, non_blocking=True)
        return v.to(device)

    if isinstance(batch, torch.Tensor):
        return (to(batch),), {}
    if isinstance(batch, (tuple, list)):
        return tuple(to(v) for v in batch), {}
    if isinstance(batch, Mapping):
        return (), {str(k): to(v) for k, v in batch.items()}
    raise InputError(
        "preprocess must return a torch.Tensor, a tuple of tensors (passed as model(*args)) or a dict "
        f"(passed as model(**kwargs)); got {type(batch).__name__}"
    )


def _check_call(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Name a forward that needs other arguments than the prepared batch gives, before running it."""
    try:
        inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as e:
        parts = [f"{len(args)} positional argument(s)"] * bool(args) + [f"keywords {sorted(kwargs)}"] * bool(kwargs)
        given = ", ".join(parts)
        raise InputError(
            f"{type(model).__name__}.forward{inspect.signature(model.forward)} cannot take what the preprocess gave "
            f"({given or 'nothing'}): {e}. Make preprocess return a tensor (forward(x)), a tuple (forward(*args)) or "
            "a dict (forward(**kwargs)) that fits, or wrap the model"
        ) from None
    except ValueError:  # a forward without an inspectable signature (a builtin): let the call itself tell
        return


def _channel_mismatch(e: RuntimeError, args: tuple) -> InputError | None:
    """torch's "expected input[...] to have 3 channels, but got 1 channels instead", said for images."""
    found = re.search(r"to have (\d+) channels, but got (\d+) channels", str(e))
    x = args[0] if args else None
    if found is None or not isinstance(x, torch.Tensor) or x.ndim != 4:
        return None
    return InputError(
        f"the images have {found.group(2)} channel(s) but the model takes {found.group(1)}: load the images with the "
        "channels the model was trained on (e.g. Dataset.from_image_folder(..., mode='RGB' or 'L')) or give a "
        f"preprocess that converts them (torch said: {e})"
    )


def _logits_of(out: Any, n_rows: int) -> torch.Tensor:
    """The logits of a forward pass as float32, detached (see :func:`_logits_tensor`)."""
    return _logits_tensor(out, n_rows).detach().to(torch.float32)


def _logits_tensor(out: Any, n_rows: int) -> torch.Tensor:
    """The logits a model returned (a tensor, element 0 of a tuple, or ``.logits``), checked to be (n_rows, k)."""
    if isinstance(out, Mapping) and "logits" in out:
        out = out["logits"]
    elif not isinstance(out, torch.Tensor) and isinstance(getattr(out, "logits", None), torch.Tensor):
        out = out.logits
    t = _first_tensor(out)
    if t is None or t.ndim != 2 or t.shape[0] != n_rows:
        got = type(out).__name__ if t is None else f"shape {tuple(t.shape)}"
        raise InputError(
            f"the model must return logits of shape (batch, n_classes) (a tensor, element 0 of a tuple, or "
            f"a .logits attribute); for a batch of {n_rows} samples it returned {got}"
        )
    return t


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch nn.Module; got {type(model).__name__}")


def _check_dataset(dataset: Any) -> None:
    if not isinstance(dataset, Dataset):
        raise InputError(f"dataset must be a forensics Dataset (see Dataset.from_numpy); got {type(dataset)}")


# ---------------------------------------------------------------------------------------------------- running


def _model_device(model: nn.Module) -> tuple[torch.device, set[torch.device]]:
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    first = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    return first, devices


class _Running:
    """Context for a forward pass: eval mode, no gradients, the model on the device; all undone on exit.

    The training flag of every sub-module is restored (not only the root's), the hooks are removed, and a model
    moved to ``device`` is moved back (``Module.to`` keeps the parameter objects, so an optimizer stays valid).
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None, *, channels_last: bool = False) -> None:
        self.model = model
        self.channels_last = channels_last
        self.handles: list[Any] = []  # hooks registered inside the context, removed on exit
        self.modes = {m: m.training for m in model.modules()}
        first, devices = _model_device(model)
        self.home = None
        if device is None:
            self.device = first
        else:
            try:
                self.device = torch.device(device)
            except (RuntimeError, TypeError) as e:
                raise InputError(
                    f"device must be 'cpu', 'cuda', 'cuda:1', ... or a torch.device; got {device!r}"
                ) from e
            if devices and devices != {self.device}:
                if len(devices) > 1:
                    raise InputError(
                        f"the model spans several devices {sorted(map(str, devices))}; pass device=None to run it "
                        "where it is"
                    )
                self.home = first

    def __enter__(self) -> _Running:
        self._grad = torch.no_grad()
        self._grad.__enter__()
        try:
            if self.home is not None:
                self.model.to(self.device)
            if self.channels_last:
                self.model.to(memory_format=torch.channels_last)
            self.model.eval()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        for m, training in self.modes.items():
            m.train(training)
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        if self.home is not None:
            self.model.to(self.home)
        self._grad.__exit__(*exc)


def _compiled(model: nn.Module, compile: bool | str) -> Callable[..., Any]:
    """The model's forward, through ``torch.compile`` when asked (hooks on its modules still fire)."""
    if compile is False:
        return model
    try:
        return torch.compile(model) if compile is True else torch.compile(model, backend=compile)
    except Exception as e:  # an unknown backend, or no compiler on this machine: say which
        raise InputError(f"torch.compile(backend={compile!r}) failed: {type(e).__name__}: {e}") from e


def _pool(t: torch.Tensor, how: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per sample. ``mask`` (batch, tokens), 1 for real tokens, keeps padding out of a token average."""
    if t.ndim == 1:
        return t[:, None]
    if how == "cls" and t.ndim != 2:
        if t.ndim != 3:
            raise InputError(
                f"pooling='cls' takes the first token of a (batch, tokens, dim) sequence; this layer gave shape "
                f"{tuple(t.shape)}: use 'avg' or 'max' for a convolution map, or a layer of the token sequence"
            )
        return t[:, 0]
    if t.ndim == 2 or how == "flatten":
        return t.reshape(t.shape[0], -1)
    if t.ndim == 3 and mask is not None and tuple(mask.shape) == tuple(t.shape[:2]):
        keep = mask.to(dtype=torch.bool, device=t.device)[:, :, None]
        if how == "avg":
            return (t * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        return t.masked_fill(~keep, float("-inf")).amax(dim=1)
    # (batch, tokens, dim) -> over tokens; (batch, channels, *spatial) -> over the spatial dims.
    dims = (1,) if t.ndim == 3 else tuple(range(2, t.ndim))
    return t.mean(dim=dims) if how == "avg" else t.amax(dim=dims)


def _resolve_pooling(pooling: Pooling) -> tuple[Callable[..., torch.Tensor], str, bool]:
    """The pooling function, its cache key, and whether it takes the batch's attention mask."""
    if isinstance(pooling, str):
        if pooling not in POOLINGS:
            raise InputError(
                f"pooling must be one of {list(POOLINGS)} or a function tensor -> (batch, d); got {pooling!r}"
            )
        return functools.partial(_pool, how=pooling), pooling, True
    if callable(pooling):
        return pooling, _callable_key(pooling), False
    raise InputError(f"pooling must be one of {list(POOLINGS)} or a function tensor -> (batch, d); got {pooling!r}")


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and device.type == "cpu":
        # float16 autocast on CPU is slow where it runs at all; bfloat16 is the CPU's reduced precision.
        raise InputError("precision='fp16' needs a GPU; on the CPU use precision='bf16' or 'fp32'")
    return dtype


def _is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def extract_activations(
    model: nn.Module,
    dataset: Dataset,
    *,
    layers: str | Sequence[str] | None = None,
    pooling: Pooling = "flatten",
    batch_size: int = 256,
    device: str | torch.device | None = None,
    preprocess: Preprocess | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool | str = False,
    chunk_size: int = 65_536,
    client: Any = None,
) -> Activations:
    """Features of chosen layers, logits, probabilities, predictions and per-sample loss for every sample.

    Parameters
    ----------
    model : nn.Module
        Any module whose call on a preprocessed batch returns logits of shape (batch, n_classes) (a tensor,
        element 0 of a tuple, or a ``.logits`` attribute).
    dataset : Dataset
        Every sample is used, in order; the last partial batch is kept.
    layers : str or list of str, optional
        Names from :func:`list_layers`: a module name reads its output, ``"<name>:input"`` its input. The first
        is the result's default layer. None: the input of the last ``nn.Linear``, i.e. the penultimate
        representation (see :func:`default_layer`).
    pooling : {"flatten", "avg", "max", "cls"} or callable
        How an output that is not (batch, d) becomes one vector per sample. ``"flatten"`` keeps everything
        (a (B, C, H, W) map gives C*H*W columns). ``"avg"`` / ``"max"`` reduce (B, C, *spatial) over the spatial
        dims to (B, C) and a 3-D (B, T, D) token sequence over the tokens to (B, D); when the batch carries an
        ``attention_mask`` (a tokenizer's output), padding tokens are left out. ``"cls"`` takes the first token of
        a token sequence (a BERT's [CLS], a ViT's class token). 3-D outputs are read as batch-first token
        sequences: for a Conv1d map (B, C, L) pass a function ``tensor -> (batch, d)``. A layer that returns a
        tuple is read from its element 0.
    batch_size : int
        Samples per forward pass. On a GPU that runs out of memory, the batch is halved and the same samples
        run again (down to one sample); the size that worked is kept in ``meta["batch_size"]``.
    device : "cpu", "cuda", torch.device or None
        None runs the model where its parameters are. Otherwise the model is moved there for the call and moved
        back afterwards. On a GPU the input batches are copied from pinned memory.
    preprocess : callable, optional
        ``preprocess(payload)`` -> model input, where the payload is a uint8 image array (batch, h, w[, c]) or a
        list of texts. It may return a tensor, a tuple of tensors (``model(*args)``) or a dict
        (``model(**kwargs)``). None: ``model.preprocess`` if the model has one, else for images
        :func:`default_image_preprocess`; texts need one. Give it a ``cache_key`` attribute (str) when its
        behaviour depends on state (a vocabulary, a normalization) that the cache key cannot see.
    cache_dir : path, optional
        Folder of cached results, which is also the on-disk store an extraction writes into chunk by chunk
        (``~`` is expanded), keyed by a hash of the model (class, structure, ``config``
        and weights), the dataset's ``content_hash``, the layers, the pooling and the preprocess. A hit returns
        memory-mapped arrays without running the model; a cache file that does not match its checksum is reported
        in a warning and recomputed. A change in ``forward`` code that shows neither in the weights, the config nor
        the module structure is not seen: use another folder then.
    progress : bool
        Show a progress bar (notebook or terminal).
    precision : {"fp32", "bf16", "fp16"}
        The forward pass in float32, or under autocast to bfloat16 (CPU or GPU) or float16 (GPU only): faster
        on hardware made for it, features within about 1e-2 relative of float32. Features, logits and losses
        are stored as float32 either way.
    channels_last : bool
        Run a convolutional network with channels-last tensors (the model's parameters are converted for the
        call and converted back); often faster on GPUs and recent CPUs.
    compile : bool or str
        Run the forward pass through ``torch.compile`` (``True``, or the name of a backend such as
        ``"inductor"`` or ``"eager"``). The first batch pays the compilation.
    chunk_size : int
        Rows computed and stored together (and, with a ``client``, per task). With ``cache_dir``, each finished
        chunk is written to disk at once, so that the rows never all sit in memory and a run that stops (a
        killed process, a worker lost, a full disk) resumes from the chunks it finished; the free space is
        checked against the whole result before the first chunk is written.
    client : dask.distributed.Client, optional
        Run the chunks as tasks on the cluster's workers (:mod:`forensics.distributed`): the model is sent once
        to each worker, each task gets its chunk of the dataset; the result equals a local run (within float
        rounding). The rows come back to this process (and, with ``cache_dir``, into its store).

    Returns
    -------
    Activations
        ``features[layer]`` float32 (n, d) per layer, ``logits`` / ``probs`` float32 (n, n_classes),
        ``predictions`` int64 (n,), ``loss`` float32 (n,) against ``dataset.labels``; ``layer`` says which layer
        is the default and ``meta`` how the result was made.

    Raises
    ------
    InputError
        Unknown layers (the valid ones are listed), a layer that did not run or ran more than once in a forward
        pass, outputs that are not batch-first, labels beyond the model's classes, texts without a preprocess.
    """
    _check_model(model)
    _check_dataset(dataset)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer; got {batch_size!r}")
    _, pooling_key, _ = _resolve_pooling(pooling)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    prep = _resolve_preprocess(model, dataset.kind, preprocess)
    names = _resolve_layers(model, layers)
    if not isinstance(channels_last, bool):
        raise InputError(f"channels_last must be True or False; got {channels_last!r}")
    if not isinstance(compile, (bool, str)):
        raise InputError(f"compile must be True, False or the name of a torch.compile backend; got {compile!r}")
    model_key = model_hash(model)
    meta: dict[str, Any] = {
        "model_hash": model_key,
        "dataset_hash": dataset.content_hash,
        "layers": names,
        "layer": names[0],
        "pooling": pooling_key,
        "preprocess": _callable_key(prep),
    }
    if precision != "fp32":
        # Only a reduced precision changes the numbers (and the key); fp32 keeps the keys of earlier caches.
        meta["precision"] = precision
    key = _hash_json({"format": _CACHE_FORMAT, **meta})
    entry = None if cache_dir is None else Path(cache_dir).expanduser() / key
    if entry is not None:
        hit = _read_cache(entry, key, dataset)
        if hit is not None:
            return hit

    n = len(dataset)
    chunks = [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]
    if entry is not None:
        try:
            (entry / "partial").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            # The extraction can still run: hand its result over rather than fail on an unwritable folder.
            logger.warning("could not write the activation cache to %s (%s); the result is not cached", entry, e)
            entry = None
    sink: MemorySink | ChunkStore
    sink = MemorySink(n) if entry is None else ChunkStore(entry / "partial", key=key, chunks=chunks)
    todo = [i for i in range(len(chunks)) if not sink.done(i)]
    options = {"names": names, "pooling": pooling, "prep": prep, "batch_size": batch_size, "device": device,
               "precision": precision, "channels_last": channels_last, "compile": compile}
    with tqdm(total=n, initial=n - sum(b - a for i, (a, b) in enumerate(chunks) if i in todo), unit="sample",
              desc="activations", disable=not progress) as bar:
        if client is None:
            done = _forward_chunks(model, dataset, chunks, todo, meta=meta, **options)
        else:
            from .distributed import forward_chunks_on

            done = forward_chunks_on(client, model, dataset, chunks, todo, meta=meta, options=options)
        for index, arrays in done:
            shown = {"logits": arrays["logits"], **{f"features[{layer!r}]": arrays[f"feature_{i}"]
                                                    for i, layer in enumerate(names)}}
            _warn_not_finite(dataset.ids[chunks[index][0] : chunks[index][1]], shown)
            sink.put(index, chunks[index][0], arrays)
            bar.update(chunks[index][1] - chunks[index][0])
    meta.setdefault("batch_size", batch_size)
    meta.setdefault("device", str(device) if device is not None else "cpu")
    meta.update(_versions(), from_cache=False)
    layer_files = {layer: f"feature_{i}" for i, layer in enumerate(names)}
    if isinstance(sink, MemorySink):
        arrays = sink.finish()
        return Activations(ids=dataset.ids, features={k: arrays[f] for k, f in layer_files.items()},
                           layer=names[0], **{name: arrays[name] for name in _ARRAYS}, meta=meta)
    files = sink.finish()
    _commit_store(entry, key, files, layer_files, names[0], meta)
    sink.remove()
    hit = _read_cache(entry, key, dataset)
    if hit is None:
        raise OSError(f"the activation cache {entry} could not be read back after writing it")
    return dataclasses.replace(hit, meta={**hit.meta, "from_cache": False})


def _forward_chunks(
    model: nn.Module, dataset: Dataset, chunks: Sequence[tuple[int, int]], todo: Sequence[int], *,
    names: list[str], pooling: Pooling, prep: Preprocess, batch_size: int, device: Any, precision: str,
    channels_last: bool, compile: bool | str, meta: dict[str, Any],
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Run the model over the chunks listed in ``todo``; yield each one's arrays (``feature_<i>`` per layer,
    logits, probs, predictions, loss) as it finishes. ``meta`` gets the device and the batch size that worked."""
    pool, _, takes_mask = _resolve_pooling(pooling)
    modules = _named_layers(model)
    captured: dict[str, list[torch.Tensor]] = {}
    mask: list[torch.Tensor | None] = [None]  # the running batch's attention mask, for masked token pooling

    def keep(name: str, out: Any) -> None:
        t = _first_tensor(out)
        if t is None:
            raise InputError(f"layer {name!r} returned {type(out).__name__}, not a tensor; choose another layer")
        t = t.detach()
        captured.setdefault(name, []).append(pool(t, mask=mask[0]) if takes_mask else pool(t))

    labels = torch.from_numpy(dataset.labels.copy())
    n_classes = None
    with _Running(model, device, channels_last=channels_last) as run:
        dev = run.device
        autocast_dtype = _resolve_precision(precision, dev)
        meta["device"] = str(dev)
        forward = _compiled(model, compile)
        for name in names:
            if name.endswith(INPUT_SUFFIX):
                run.handles.append(modules[name[: -len(INPUT_SUFFIX)]].register_forward_pre_hook(
                    functools.partial(lambda nm, _m, a, k: keep(nm, _input_of(a, k)), name), with_kwargs=True))
            else:
                run.handles.append(modules[name].register_forward_hook(
                    functools.partial(lambda nm, _m, _a, o: keep(nm, o), name)))
        size, checked = batch_size, False
        for index in todo:
            first, last = chunks[index]
            m = last - first
            feats: dict[str, np.ndarray] = {}
            out_arrays: dict[str, np.ndarray] = {}
            start = first
            while start < last:
                stop = min(start + size, last)
                b = stop - start
                captured.clear()
                args, kwargs = _model_inputs(prep(_payload(dataset, start, stop)), dev, channels_last=channels_last)
                if not checked:
                    _check_call(model, args, kwargs)
                    checked = True
                mask[0] = kwargs.get("attention_mask")
                try:
                    with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        out = _logits_of(forward(*args, **kwargs), b).cpu()
                except (torch.OutOfMemoryError, RuntimeError) as e:
                    if not _is_out_of_memory(e) or size == 1:
                        raise (_channel_mismatch(e, args) or e) from e
                    # Free what the failed batch held, then run the same samples in halves.
                    del args, kwargs
                    captured.clear()
                    mask[0] = None
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    size = max(1, size // 2)
                    logger.warning("out of memory at a batch of %d samples on %s; retrying with %d", b, dev, size)
                    continue
                if n_classes is None:
                    n_classes = out.shape[1]
                    if int(dataset.labels.max()) >= n_classes:
                        raise InputError(
                            f"the dataset has labels up to {int(dataset.labels.max())} but the model returns "
                            f"{n_classes} logits per sample"
                        )
                if not out_arrays:
                    out_arrays = {"logits": np.empty((m, n_classes), np.float32),
                                  "probs": np.empty((m, n_classes), np.float32),
                                  "predictions": np.empty(m, np.int64), "loss": np.empty(m, np.float32)}
                p, pred, lo = _outputs_of_logits(out, labels[start:stop])
                rows = slice(start - first, stop - first)
                out_arrays["logits"][rows], out_arrays["probs"][rows] = out.numpy(), p.numpy()
                out_arrays["predictions"][rows], out_arrays["loss"][rows] = pred.numpy(), lo.numpy()
                for i, name in enumerate(names):
                    key = f"feature_{i}"
                    feats[key] = _store(feats.get(key), name, captured.get(name, []), start - first, stop - first, m)
                start = stop
            meta["batch_size"] = size
            yield index, {**feats, **out_arrays}


def _commit_store(entry: Path, key: str, files: Mapping[str, Path], layer_files: Mapping[str, str], layer: str,
                  meta: Mapping[str, Any]) -> None:
    """Move a finished store's files into the cache entry and write its manifest (the entry is trusted after)."""
    (entry / "manifest.json").unlink(missing_ok=True)
    specs = {}
    for name, src in files.items():
        a = np.load(src, mmap_mode="r", allow_pickle=False)
        path = entry / f"{name}.npy"
        os.replace(src, path)
        specs[name] = {"file": path.name, "shape": list(a.shape), "dtype": a.dtype.str, "blake2b": _file_digest(path)}
        del a
    manifest = {"format": _CACHE_FORMAT, "key": key, "layer": layer, "features": dict(layer_files),
                "arrays": specs, "meta": dict(meta)}
    atomic_write_bytes(entry / "manifest.json", json.dumps(manifest, indent=1, default=repr).encode())


def _store(
    dest: np.ndarray | None, name: str, got: list[torch.Tensor], start: int, stop: int, n: int
) -> np.ndarray:
    """Write one batch of a layer's pooled output into its (n, d) array, allocated at the first batch."""
    if not got:
        raise InputError(
            f"layer {name!r} did not run during the forward pass; list_layers shows which layers run "
            "(calls > 0)"
        )
    if len(got) > 1:
        raise InputError(
            f"layer {name!r} ran {len(got)} times in one forward pass (the module is reused), so its output is "
            "ambiguous; choose a layer that runs once (list_layers: calls == 1)"
        )
    x = got[0]
    b = stop - start
    if x.ndim != 2 or x.shape[0] != b:
        raise InputError(
            f"layer {name!r} gave shape {tuple(x.shape)} after pooling for a batch of {b} samples; expected "
            f"({b}, d). Its output is not batch-first (e.g. a transformer without batch_first=True), or the "
            "pooling function does not return (batch, d)"
        )
    if dest is None:
        dest = np.empty((n, x.shape[1]), np.float32)
    elif x.shape[1] != dest.shape[1]:
        raise InputError(
            f"layer {name!r} gave {x.shape[1]} features for samples {start}..{stop - 1} but {dest.shape[1]} "
            "before: its output size varies (e.g. padded token sequences); use pooling='avg' or 'max'"
        )
    dest[start:stop] = x.to(torch.float32).cpu().numpy()
    return dest


def _warn_not_finite(ids: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    for name, a in arrays.items():
        bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
        if len(bad):
            logger.warning("%s has NaN or infinite values in %d row(s), e.g. sample ids %s", name, len(bad),
                           ids[bad[:5]].tolist())


# ---------------------------------------------------------------------------------------------------- hashing


def _new_hash() -> Any:
    return hashlib.blake2b(digest_size=16)


def _update(h: Any, data: bytes | np.ndarray) -> None:
    """Add bytes, or a 1-D uint8 array, length-prefixed so that the concatenation of parts is unambiguous."""
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _hash_json(obj: Any) -> str:
    h = _new_hash()
    h.update(json.dumps(obj, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _config_json(config: Any) -> str:
    if config is None:
        return "null"
    if callable(getattr(config, "to_dict", None)):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return json.dumps(config, sort_keys=True, default=repr)


def model_hash(model: nn.Module) -> str:
    """Hash of a model: class, module structure (``repr``), ``config`` attribute, and every state_dict tensor's
    name, dtype, shape and bytes (32 hex characters)."""
    _check_model(model)
    h = _new_hash()
    for part in (f"{type(model).__module__}.{type(model).__qualname__}", repr(model),
                 _config_json(getattr(model, "config", None))):
        _update(h, part.encode())
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            _update(h, f"{name} {t!r}".encode())
            continue
        t = t.detach()
        t = t.to_dense() if t.layout != torch.strided else t
        _update(h, f"{name} {t.dtype} {tuple(t.shape)}".encode())
        _update(h, t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _code_digest(code: types.CodeType, h: Any) -> None:
    _update(h, code.co_code)
    _update(h, " ".join(code.co_names).encode())
    for c in code.co_consts:
        # Nested code objects (lambdas, comprehensions) have a repr with a memory address: hash their content.
        if isinstance(c, types.CodeType):
            _code_digest(c, h)
        else:
            _update(h, repr(c).encode())


def _callable_key(fn: Callable) -> str:
    """Cache key of a preprocess or pooling function: its ``cache_key`` attribute, else its qualified name and a
    digest of its byte code (two different lambdas share a name, not a digest)."""
    key = getattr(fn, "cache_key", None)
    if key is not None:
        return str(key)
    target = getattr(fn, "__func__", fn)
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    code = getattr(target, "__code__", None)
    if code is None:
        return f"{module}.{name}"
    h = _new_hash()
    _code_digest(code, h)
    return f"{module}.{name}#{h.hexdigest()[:16]}"


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- cache

_ARRAYS = ("logits", "probs", "predictions", "loss")


def _read_cache(entry: Path, key: str, dataset: Dataset) -> Activations | None:
    """The cached result, or None (with a warning when the entry is damaged) to recompute it."""
    manifest_path = entry / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest["format"] != _CACHE_FORMAT or manifest["key"] != key:
            logger.warning("activation cache manifest %s does not match its key; recomputing", manifest_path)
            return None
        arrays = {}
        for name, spec in manifest["arrays"].items():
            path = entry / spec["file"]
            if Path(spec["file"]).name != spec["file"] or not path.is_file():
                logger.warning("activation cache file %s is missing; recomputing", path)
                return None
            if _file_digest(path) != spec["blake2b"]:
                logger.warning("activation cache file %s does not match its checksum (truncated or edited); "
                               "recomputing", path)
                return None
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            if list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
                logger.warning("activation cache file %s has shape %s, %s; the manifest says %s, %s; recomputing",
                               path, a.shape, a.dtype.str, spec["shape"], spec["dtype"])
                return None
            arrays[name] = a
        features = {layer: arrays[f] for layer, f in manifest["features"].items()}
        return Activations(ids=dataset.ids, features=features, layer=manifest["layer"],
                           **{name: arrays[name] for name in _ARRAYS},
                           meta={**manifest["meta"], "from_cache": True})
    except (OSError, ValueError, KeyError, TypeError) as e:
        # A damaged manifest or array file (json and numpy raise ValueError subclasses) is recomputed.
        logger.warning("activation cache entry %s is unreadable (%s: %s); recomputing", entry, type(e).__name__, e)
        return None
