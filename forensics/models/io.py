"""Weight files that cannot run code: safetensors plus a JSON model card, and a guarded reader for user files.

:func:`save_model` writes ``<path>.safetensors`` (the weights) and ``<path>.json`` (the model card: architecture,
config, layer names, the caller's metadata, toolkit version and the SHA-256 of the weights file).
:func:`load_model` rebuilds only the toolkit's own architectures, looked up by name in :data:`ARCHITECTURES`
(a name in a file never selects code to import), and checks the checksum before reading a weight.
:func:`load_state_dict_file` reads a user's weights: safetensors, or a torch file through
``torch.load(weights_only=True)``; a pickle that needs code to load is refused with :class:`UnsafeFileError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import pickletools
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._io import atomic_write_text, atomic_write_with
from ..errors import InputError, IntegrityError, UnsafeFileError
from .image import ImageCNN
from .text import TextClassifier

#: The architectures :func:`load_model` may rebuild, by the name written in the model card.
ARCHITECTURES: dict[str, type[nn.Module]] = {"ImageCNN": ImageCNN, "TextClassifier": TextClassifier}

CARD_FORMAT = "forensics-model/1"
_RESERVED = ("format", "architecture", "config", "layers", "weights_file", "weights_sha256", "toolkit_version")


def _base(path: str | os.PathLike) -> Path:
    """``path`` without a ``.safetensors`` or ``.json`` suffix: both files share that base."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(value: Any) -> Any:
    # Metrics often arrive as numpy scalars or arrays; anything else is refused by json.dumps.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def save_model(model: nn.Module, path: str | os.PathLike, *, card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save a reference model as ``<path>.safetensors`` and its model card as ``<path>.json``.

    Parameters
    ----------
    model : ImageCNN or TextClassifier
        One of :data:`ARCHITECTURES`. For another model, save ``model.state_dict()`` with
        ``safetensors.torch.save_file`` and read it back with :func:`load_state_dict_file`.
    path : str or path-like
        Base path; a ``.safetensors`` or ``.json`` suffix is dropped.
    card : dict, optional
        JSON-serializable metadata kept in the card, for example ``class_names``, ``random_state``,
        ``clean_accuracy``, ``attack_success``. Its keys must not be one of the card's own
        (``format``, ``architecture``, ``config``, ``layers``, ``weights_file``, ``weights_sha256``,
        ``toolkit_version``).

    Returns
    -------
    dict
        The model card as written.
    """
    name = type(model).__name__
    if ARCHITECTURES.get(name) is not type(model):
        raise InputError(
            f"save_model saves the toolkit's architectures {sorted(ARCHITECTURES)}; got {name}. Save your own "
            "model's weights with safetensors.torch.save_file(model.state_dict(), path)"
        )
    card = dict(card or {})
    clash = sorted(set(card) & set(_RESERVED))
    if clash:
        raise InputError(f"card keys {clash} are reserved for the model card itself; rename them")
    base = _base(path)
    if not base.parent.is_dir():
        raise InputError(f"{base.parent}: no such folder to save the model in")
    weights_path = base.with_name(base.name + ".safetensors")
    card_path = base.with_name(base.name + ".json")

    from .._version import __version__

    full = {
        "format": CARD_FORMAT,
        "architecture": name,
        "config": model.config,
        "layers": [n for n, _ in model.named_modules() if n],
        "toolkit_version": __version__,
        **card,
        "weights_file": weights_path.name,
    }
    try:
        text = json.dumps(full, indent=2, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InputError(f"card must be JSON-serializable (finite numbers, text, lists, dicts): {e}") from e

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(weights_path, lambda tmp: save_file(state, tmp, metadata={"format": CARD_FORMAT,
                                                                             "architecture": name}))
    full["weights_sha256"] = _sha256(weights_path)
    text = json.dumps(full, indent=2, default=_json_default, allow_nan=False)
    atomic_write_text(card_path, text + "\n")
    return json.loads(text)


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model`.

    The architecture named in the card must be one of :data:`ARCHITECTURES`; the weights file must match the
    card's SHA-256 before it is read.

    Returns
    -------
    model : nn.Module
        In evaluation mode, on the CPU.
    card : dict
        The model card.

    Raises
    ------
    InputError
        A file is missing, or the card is unreadable or names an unknown architecture.
    IntegrityError
        The weights file does not match the card's checksum, or its tensors do not fit the architecture.
    """
    base = _base(path)
    card_path = base.with_name(base.name + ".json")
    if not card_path.is_file():
        raise InputError(f"{card_path}: no such model card (save_model writes <path>.json beside the weights)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{card_path}: not a readable model card ({e})") from e
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise InputError(f"{card_path}: not a model card of format {CARD_FORMAT!r}")
    missing = [k for k in ("architecture", "config", "weights_file", "weights_sha256") if k not in card]
    if missing:
        raise InputError(f"{card_path}: the model card lacks {missing}")
    name = card["architecture"]
    if name not in ARCHITECTURES:
        raise InputError(
            f"{card_path}: architecture {name!r} is not one of the toolkit's {sorted(ARCHITECTURES)}; "
            "read other weights with load_state_dict_file"
        )
    # The weights file is named by the card but must stay beside it: no path from a file leads elsewhere.
    weights_path = card_path.with_name(Path(str(card["weights_file"])).name)
    if not weights_path.is_file():
        raise InputError(f"{weights_path}: no such weights file (named by {card_path})")
    digest = _sha256(weights_path)
    if digest != card["weights_sha256"]:
        raise IntegrityError(
            f"{weights_path}: SHA-256 {digest} does not match {card['weights_sha256']} recorded in {card_path}; "
            "the file was changed, truncated or replaced after saving. It was not loaded"
        )
    state = _load_safetensors(weights_path)
    config = card["config"]
    if not isinstance(config, dict):
        raise InputError(f"{card_path}: config must be an object; got {type(config).__name__}")
    try:
        # Built on the meta device: no memory is allocated for a config until the weights are assigned.
        with torch.device("meta"):
            model = ARCHITECTURES[name](**config)
    except (TypeError, InputError) as e:
        raise InputError(f"{card_path}: config {config!r} does not build a {name}: {e}") from e
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise IntegrityError(f"{weights_path}: the tensors do not fit a {name} with config {config}: {e}") from e
    model.eval()
    return model, card


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        if path.is_file() and _looks_like_pickle(path):
            raise UnsafeFileError(
                f"{path}: this is a pickle (or a torch archive of one), not a safetensors file; reading it could "
                "execute code from it, so it was NOT loaded. Convert the weights to safetensors where you trust "
                "them (safetensors.torch.save_file(state_dict, 'weights.safetensors'))"
            ) from None
        raise InputError(f"{path}: not a readable safetensors file ({e})") from e


#: Largest file read whole to tell a protocol 0 or 1 pickle from other bytes.
_PICKLE_SNIFF_BYTES = 16 * 2**20


def _looks_like_pickle(path: Path) -> bool:
    """A torch zip archive or a pickle: protocol 2 and later open with the PROTO opcode (0x80); protocols 0 and 1
    have no magic, so the whole file must read as pickle opcodes up to a final STOP (parsed, never run)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" or head[:1] == b"\x80":
        return True
    if not head or path.stat().st_size > _PICKLE_SNIFF_BYTES:
        return False
    data = path.read_bytes()
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # noqa: BLE001  (any parse failure means: not a pickle)
        return False
    return bool(ops) and ops[-1][0].name == "STOP" and not data[ops[-1][2] + 1:].strip()


def load_state_dict_file(path: str | os.PathLike, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a user's weights without running code from the file.

    ``.safetensors`` files are read with safetensors; any other file with
    ``torch.load(path, weights_only=True, map_location="cpu")``, which only accepts tensors, numbers, strings and
    containers of them.

    Parameters
    ----------
    path : str or path-like
    key : str, optional
        For a checkpoint that keeps the weights under one key of a dict (``{"state_dict": {...}, "epoch": 3}``),
        that key.

    Returns
    -------
    dict of str to Tensor
        The state dict, on the CPU.

    Raises
    ------
    UnsafeFileError
        The file is a pickle that holds objects other than tensors: loading it would execute code from it.
        It is not loaded.
    InputError
        The file is missing or unreadable, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        obj: Any = _load_safetensors(path)
    else:
        try:
            with warnings.catch_warnings():
                # torch warns about pickle protocols it may not parse; the outcome is reported below instead.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, weights_only=True, map_location="cpu")
        except (pickle.UnpicklingError, RuntimeError) as e:
            if not _looks_like_pickle(path):
                raise InputError(f"{path}: not a readable torch weights file (neither a torch zip archive nor a "
                                 "pickle)") from None
            found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(e))
            with open(path, "rb") as f:
                old_format = f.read(1) not in (b"\x80", b"P")
            if found:
                what = f"needs arbitrary code execution to load (it refers to {found.group(1)})"
            elif old_format:
                what = ("is a protocol 0 or 1 pickle, which the safe loader cannot read; any other loader could "
                        "execute code from it")
            else:
                what = "needs arbitrary code execution to load"
            raise UnsafeFileError(
                f"{path}: this file {what}, so it was NOT loaded. "
                "Convert it to safetensors where you trust it (safetensors.torch.save_file(state_dict, "
                "'weights.safetensors')), or save a plain state_dict with torch.save(model.state_dict(), path)"
            ) from None
        except Exception as e:  # torch reports damaged files with many exception types
            raise InputError(f"{path}: not a readable torch weights file ({type(e).__name__}: {e})") from e
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = list(obj)[:20] if isinstance(obj, dict) else type(obj).__name__
            raise InputError(f"{path}: key {key!r} not found; the file holds {keys}")
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    others = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise InputError(
            f"{path}: entries {others[:10]} are not tensors; if the weights sit under one key of this "
            f"checkpoint, pass key= (keys: {list(obj)[:20]})"
        )
    return {str(k): v for k, v in obj.items()}
