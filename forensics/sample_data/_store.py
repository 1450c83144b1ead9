"""The on-disk layout of one bundled dataset.

```
<name>/
  dataset.json            kind, class names, description, origin, content hashes, seed
  train.parquet           sample_id, label, source (and text for text datasets)
  train_images.npz        images, uint8 (image datasets)
  test.parquet, test_images.npz
  model.safetensors       the reference model's weights
  model.json              its card: architecture, layers, classes, clean accuracy, attack success
  ground_truth/           kept apart so that an analysis never reads it by accident
    truth.parquet         one row per training sample: poison_kind, is_poison, original_label, ...
    trigger.json          the planted trigger
```
Arrays are read with ``allow_pickle=False``; nothing here is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write_text, atomic_write_with
from ..data import Dataset
from ..errors import InputError, IntegrityError


def _write_split(folder: Path, split: str, ds: Dataset) -> None:
    table = pd.DataFrame({"sample_id": ds.ids.astype(str), "label": ds.labels,
                          "source": None if ds.sources is None else ds.sources.astype(str)})
    if ds.kind == "text":
        table["text"] = ds.texts.astype(str)
    else:
        atomic_write_with(folder / f"{split}_images.npz", lambda tmp: np.savez_compressed(tmp, images=ds.images))
    atomic_write_with(folder / f"{split}.parquet",
                      lambda tmp: table.to_parquet(tmp, index=False, compression="zstd"))


def _read_split(folder: Path, split: str, meta: dict[str, Any]) -> Dataset:
    table = pd.read_parquet(folder / f"{split}.parquet")
    sources = None if table["source"].isna().all() else table["source"].tolist()
    common = dict(ids=table["sample_id"].tolist(), labels=table["label"].to_numpy(np.int64),
                  class_names=meta["class_names"], sources=sources)
    if meta["kind"] == "text":
        ds = Dataset.from_texts(table["text"].tolist(), **common)
    else:
        with np.load(folder / f"{split}_images.npz", allow_pickle=False) as z:
            ds = Dataset.from_numpy(z["images"], **common)
    expected = meta[split]["content_hash"]
    if ds.content_hash != expected:
        raise IntegrityError(
            f"{folder / split}: content hash {ds.content_hash} does not match dataset.json ({expected}); "
            "the files were changed after they were built"
        )
    return ds


def write_dataset(folder: Path, *, name: str, train: Dataset, test: Dataset, truth: pd.DataFrame, model,
                  trigger, metrics: dict[str, Any], info: dict[str, Any]) -> None:
    from ..models import save_model

    folder.mkdir(parents=True)
    (folder / "ground_truth").mkdir()
    _write_split(folder, "train", train)
    _write_split(folder, "test", test)
    meta = {
        "name": name, "kind": train.kind, "class_names": list(train.class_names), **info,
        "train": {"n": len(train), "content_hash": train.content_hash},
        "test": {"n": len(test), "content_hash": test.content_hash},
    }
    atomic_write_text(folder / "dataset.json", json.dumps(meta, indent=2) + "\n")
    save_model(model, folder / "model", card={
        "class_names": list(train.class_names), "training_seed": info["seed"],
        "trained_on": {"dataset": name, "content_hash": train.content_hash}, **metrics,
    })
    atomic_write_with(folder / "ground_truth" / "truth.parquet",
                      lambda tmp: truth.reset_index().to_parquet(tmp, index=False))
    atomic_write_text(folder / "ground_truth" / "trigger.json", json.dumps(trigger.to_dict(), indent=1) + "\n")


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    if not path.is_file():
        raise InputError(f"{folder} holds no dataset.json; rebuild with: python -m forensics.sample_data build")
    return json.loads(path.read_text())


def read_datasets(folder: Path) -> tuple[dict[str, Any], Dataset, Dataset]:
    meta = read_meta(folder)
    return meta, _read_split(folder, "train", meta), _read_split(folder, "test", meta)


def read_truth(folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    truth = pd.read_parquet(folder / "ground_truth" / "truth.parquet").set_index("sample_id")
    trigger = json.loads((folder / "ground_truth" / "trigger.json").read_text())
    return truth, trigger
