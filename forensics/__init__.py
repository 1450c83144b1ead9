"""poison-forensics: find poisoned samples, their sources and their triggers in a training set.

The public API. Names that need torch (``extract_activations``, ``list_layers``, ``Activations``,
``image_preprocess``, ``encoder_activations``) are imported
on first use, so that ``import forensics`` and the data loaders stay fast.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__  # noqa: E402
from .analysis import compute_signals, investigate  # noqa: E402
from .data import Dataset  # noqa: E402
from .errors import ForensicsError, InputError, IntegrityError, UnsafeFileError  # noqa: E402
from .investigation import Investigation  # noqa: E402

_LAZY = {"extract_activations": "activations", "list_layers": "activations", "Activations": "activations",
         "image_preprocess": "activations", "encoder_activations": "encoders"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'forensics' has no attribute {name!r}")


__all__ = [
    "Activations", "Dataset", "ForensicsError", "InputError", "IntegrityError", "Investigation", "UnsafeFileError",
    "__version__", "compute_signals", "encoder_activations", "extract_activations", "image_preprocess", "investigate",
    "list_layers",
]
