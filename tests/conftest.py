"""Fixtures shared by test files: the benchmark scripts, loaded as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_benchmark(stem: str) -> ModuleType:
    name = f"bench_{stem}"
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def quality() -> ModuleType:
    """``benchmarks/quality.py``."""
    return _load_benchmark("quality")


@pytest.fixture(scope="session")
def sweep() -> ModuleType:
    """``benchmarks/triggers_sweep.py``."""
    return _load_benchmark("triggers_sweep")


@pytest.fixture(scope="session")
def matrix() -> ModuleType:
    """``benchmarks/matrix.py`` (it imports ``quality`` from its own folder, as when run as a script)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return _load_benchmark("matrix")


@pytest.fixture(scope="session")
def scale() -> ModuleType:
    """``benchmarks/scale.py``."""
    return _load_benchmark("scale")


@pytest.fixture(scope="session")
def fusion_lab(matrix) -> ModuleType:
    """``benchmarks/fusion_lab.py`` (it imports ``matrix``)."""
    return _load_benchmark("fusion_lab")


@pytest.fixture(scope="session")
def scale_store() -> ModuleType:
    """``benchmarks/scale_store.py``."""
    return _load_benchmark("scale_store")
