"""poison-forensics: find poisoned samples, their sources and their triggers in a training set."""

from __future__ import annotations

from .data import Dataset
from .errors import ForensicsError, InputError, IntegrityError, UnsafeFileError

__version__ = "0.1.0"

__all__ = ["Dataset", "ForensicsError", "InputError", "IntegrityError", "UnsafeFileError", "__version__"]
