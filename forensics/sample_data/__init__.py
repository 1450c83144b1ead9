"""The bundled sample data: real data with planted poison, ground truth apart, and the models trained on it.

>>> from forensics import sample_data
>>> data = sample_data.load("image_backdoor")
>>> data.train, data.test            # forensics.Dataset
>>> model, card = data.model()        # the reference model, loaded from safetensors
>>> truth = sample_data.load_truth("image_backdoor")   # only when measuring, never during an analysis

Rebuild everything with ``python -m forensics.sample_data build`` (see :mod:`forensics.sample_data.build`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..data import Dataset
from ..errors import InputError
from ._store import read_datasets, read_meta, read_truth

NAMES = ("image_backdoor", "text_trigger")


def data_dir() -> Path:
    """Where the bundled data lives: ``$FORENSICS_SAMPLE_DATA``, the copy inside an installed wheel, or the
    repository's ``sample_data/`` folder (editable installs)."""
    env = os.environ.get("FORENSICS_SAMPLE_DATA")
    if env:
        return Path(env)
    packaged = Path(__file__).resolve().parent.parent / "_sample_data"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sample_data"


def _folder(name: str) -> Path:
    if name not in NAMES:
        raise InputError(f"unknown sample dataset {name!r}; choose one of {list(NAMES)}")
    return data_dir() / name


@dataclass(frozen=True)
class SampleData:
    """One bundled dataset: the poisoned training split, a clean test split and what describes them."""

    name: str
    train: Dataset
    test: Dataset
    info: dict[str, Any] = field(repr=False)
    folder: Path = field(repr=False)

    def model(self):
        """The reference model trained on ``train`` and its card (loads torch on first use)."""
        from ..models import load_model

        return load_model(self.folder / "model")

    @property
    def model_path(self) -> Path:
        return self.folder / "model"


def load(name: str) -> SampleData:
    """Load a bundled dataset by name (``"image_backdoor"`` or ``"text_trigger"``); checks its content hashes."""
    folder = _folder(name)
    meta, train, test = read_datasets(folder)
    return SampleData(name=name, train=train, test=test, info=meta, folder=folder)


def load_truth(name: str) -> pd.DataFrame:
    """Ground truth of a bundled dataset: one row per training sample (``poison_kind``, ``is_poison``,
    ``original_label``, ...), with the planted trigger in ``.attrs["trigger"]``."""
    truth, trigger = read_truth(_folder(name))
    truth.attrs["trigger"] = trigger
    return truth


def describe() -> pd.DataFrame:
    """One row per bundled dataset: size, classes, sources and the reference model's card figures."""
    import json

    rows = []
    for name in NAMES:
        folder = _folder(name)
        meta = read_meta(folder)
        card = json.loads((folder / "model.json").read_text())
        rows.append({
            "dataset": name, "kind": meta["kind"], "train": meta["train"]["n"], "test": meta["test"]["n"],
            "classes": len(meta["class_names"]), "model": card.get("architecture"),
            "clean_accuracy": card.get("clean_accuracy"), "attack_success": card.get("attack_success"),
        })
    return pd.DataFrame(rows).set_index("dataset")


__all__ = ["NAMES", "SampleData", "data_dir", "describe", "load", "load_truth"]
