"""Moved to :mod:`forensics.redteam`, split by family (label, image, text, sources, triggers).

``forensics.attacks`` still gives every public name, with a deprecation warning.
"""

from __future__ import annotations

import warnings

from .redteam import *  # noqa: F403
from .redteam import __all__  # noqa: F401

warnings.warn("forensics.attacks is deprecated: use forensics.redteam", DeprecationWarning, stacklevel=2)
