"""A randomized attack matrix: families x drawn parameters x seeds, scored beside the anchors.

Every cell draws one attack of a family with parameters from a seeded generator (``draw``), plants it in a
10,000-image Fashion-MNIST training subset (or the review snippets for ``text``), trains the reference model on
it, and scores, on the same activations, every built-in signal, the combined ``suspicion`` before and after
``find_triggers`` and the anchors (ART ``ActivationDefence`` in each mode and ``SpectralSignatureDefense``,
cleanlab on out-of-fold and on the model's probabilities, a plain loss ranking), as ``benchmarks/quality.py`` does.
The attack success rate (ASR) of each backdoor is measured on the clean test split.

Families and what is drawn (poison rate log-uniform in [0.3%, 10%] of the data unless said otherwise; the target
class uniform):

- ``patch``: 1-5 px checkerboard or solid, at a fixed corner or a new random place per image (30%), "on" value
  255 (high contrast) or 16-96 grey levels (low contrast, half the cells), one contributor or spread,
- ``blend``: uniform noise or another image, alpha 0.05-0.2,
- ``sinusoid``: amplitude 10-30 grey levels, 3-8 periods across the width,
- ``overlay``: two glyphs of a 3x5 font, 4-16 grey levels brighter, in a corner,
- ``warp``: a smooth random warp (WaNet), 0.5-1 px,
- ``clean_label``: a patch on 10-40% of the target class, labels kept,
- ``flips``: random label flips on 2-20% of the data,
- ``pair_flip``: 10-40% of one class relabelled as another,
- ``bot``: one contributor labelling 1-5% of the data (other classes) as one class,
- ``group``: 5-20 fake contributors each adding 5-30 near copies of a few triggered images (patch or blend),
- ``text``: a phrase of 1-4 rare or common words in 0.3-10% of the review snippets, relabelled, 5 sybils,
- ``colour_patch``, ``colour_blend``: the same Fashion-MNIST images made colour (each painted with its own random
  foreground and background colours, :func:`nets.colour_images`), a 2-5 px patch of a random colour or a blend of
  colour noise (alpha 0.05-0.2),
- ``clean``, ``text_clean`` and ``colour_clean``: no poison (the share flagged at t = 2 is the false-alarm rate).

Tune on seeds 0-4, report on seeds 100-109::

    python benchmarks/matrix.py --seeds 0-4            # tuning cells
    python benchmarks/matrix.py --seeds 100-109        # report cells; writes _work/matrix.md
    python benchmarks/matrix.py --seeds 100-109 --families blend warp --report-only
    python benchmarks/matrix.py --seeds 100-109 --families overlay warp group --epochs 8   # a longer-trained victim

Each cell's model, activations, anchor results, signal table and metric rows are cached under
``benchmarks/_work/matrix/`` keyed by family, seed, the data's content hash and the model code, so an interrupted run
resumes where it stopped and a change to the signals or the fusion recomputes only the signals, the triggers and the
metrics (``--rescore``; the anchors are kept).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import quality as q

from forensics import redteam
from forensics.analysis import compute_signals
from forensics.data import Dataset

log = logging.getLogger("matrix")

WORK = q.WORK / "matrix"
BACKDOOR = ("patch", "blend", "sinusoid", "overlay", "warp", "group", "text", "colour_patch", "colour_blend")
# New families go at the end: a family's position seeds its draws.
FAMILIES = ("patch", "blend", "sinusoid", "overlay", "warp", "clean_label", "flips", "pair_flip", "bot", "group",
            "text", "clean", "text_clean", "colour_patch", "colour_blend", "colour_clean")
#: An attack "took" when the model learned it: ASR at least this (the overlay's own, lower bar below).
TOOK = 0.9
TOOK_OVERLAY = 0.5
TARGETS = {  # family: median r@2x after find_triggers, worst (None: no target)
    "patch": (0.97, 0.90), "blend": (0.97, 0.90), "sinusoid": (0.97, 0.90), "warp": (0.97, 0.90),
    "group": (0.97, 0.90), "text": (0.97, 0.90), "overlay": (0.90, None), "clean_label": (0.60, None),
    "flips": (0.97, None), "pair_flip": (0.85, None), "bot": (0.97, None),
    "colour_patch": (0.97, 0.90), "colour_blend": (0.97, 0.90),
}
COMMON_WORDS = ("the", "film", "really", "good", "movie", "i", "think", "one", "of", "best", "a", "lot", "story")
RARE_WORDS = ("cf", "mn", "bb", "tq", "zx", "qv", "jk")


@dataclass(frozen=True)
class Cell:
    family: str
    seed: int
    params: dict[str, Any]
    build: Callable[[], q.Built]
    epochs: int | None = None  # the victim's training epochs; None: the reference model's default (3 here)

    @property
    def name(self) -> str:
        victim = "" if self.epochs is None else f"-e{self.epochs}"
        return f"{self.family}{victim}-seed{self.seed}"


def _rate(rng: np.random.Generator, lo: float = 0.003, hi: float = 0.10) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _who(rng: np.random.Generator) -> dict[str, Any]:
    """One contributor plants the poison, or it is spread over the existing ones."""
    return {"source": q.ATTACKER} if rng.random() < 0.5 else {}


@functools.lru_cache(maxsize=2)
def _colour_fashion(seed: int) -> tuple[Dataset, Dataset]:
    """``quality._fashion(seed)`` with every image painted in its own colours (28x28x3)."""
    from nets import colour_images

    def paint(d: Dataset, salt: int) -> Dataset:
        return Dataset.from_numpy(colour_images(d.images, 28, random_state=seed * 2 + salt), d.labels, ids=d.ids,
                                  class_names=d.class_names, sources=d.sources)

    train, test = q._fashion(seed)
    return paint(train, 0), paint(test, 1)


def draw(family: str, seed: int, epochs: int | None = None) -> Cell:
    """The cell of ``family`` at ``seed``: its parameters, drawn from a generator seeded by both (the same draw
    whatever the victim's ``epochs``)."""
    rng = np.random.default_rng([seed, FAMILIES.index(family)])
    target = int(rng.integers(10))
    p: dict[str, Any] = {}

    def image(attack: Callable[[Dataset], redteam.Poisoning], data: Callable = q._fashion) -> Callable[[], q.Built]:
        def build() -> q.Built:
            train, test = data(seed)
            r = attack(train)
            return q.Built(r.dataset, r.truth, test, r.trigger)
        return build

    if family == "patch":
        p = {"target": target, "rate": _rate(rng), "size": int(rng.integers(1, 6)),
             "pattern": str(rng.choice(["checkerboard", "solid"])),
             "position": "random" if rng.random() < 0.3 else str(rng.choice(
                 ["top-left", "top-right", "bottom-left", "bottom-right"])),
             "value": 255 if rng.random() < 0.5 else int(rng.integers(16, 97)), **_who(rng)}
        if p["size"] == 1:
            p["pattern"] = "solid"
        build = image(lambda d: redteam.patch_backdoor(d, **p, random_state=seed))
    elif family == "blend":
        p = {"target": target, "rate": _rate(rng), "alpha": round(float(rng.uniform(0.05, 0.2)), 3),
             "pattern": str(rng.choice(["noise", "image"])), **_who(rng)}

        def blend(d: Dataset) -> redteam.Poisoning:
            kw = dict(p)
            if kw["pattern"] == "image":  # another image of the test split, of a class other than the target
                _, test = q._fashion(seed)
                others = np.flatnonzero(test.labels != target)
                kw["pattern"] = test.images[int(np.random.default_rng(seed).choice(others))]
            return redteam.blend_backdoor(d, **kw, random_state=seed)
        build = image(blend)
    elif family == "sinusoid":
        p = {"target": target, "rate": _rate(rng), "amplitude": int(rng.integers(10, 31)),
             "frequency": round(float(rng.uniform(3, 8)), 2), **_who(rng)}
        build = image(lambda d: redteam.sinusoid_backdoor(d, **p, random_state=seed))
    elif family == "overlay":
        glyphs = "0123456789AX"
        p = {"target": target, "rate": _rate(rng), "text": "".join(rng.choice(list(glyphs), size=2)),
             "amplitude": int(rng.integers(4, 17)),
             "position": str(rng.choice(["top-left", "top-right", "bottom-left", "bottom-right"])), **_who(rng)}
        build = image(lambda d: redteam.overlay_backdoor(d, **p, random_state=seed))
    elif family == "warp":
        p = {"target": target, "rate": _rate(rng), "strength": round(float(rng.uniform(0.5, 1.0)), 2), **_who(rng)}
        build = image(lambda d: redteam.warp_backdoor(d, **p, random_state=seed))
    elif family == "clean_label":
        p = {"target": target, "rate": round(float(rng.uniform(0.1, 0.4)), 3), "size": int(rng.integers(3, 6)),
             "value": 255, **_who(rng)}
        build = image(lambda d: redteam.clean_label_patch(d, **p, random_state=seed))
    elif family == "flips":
        p = {"rate": round(float(rng.uniform(0.02, 0.2)), 3)}
        build = image(lambda d: redteam.random_label_flips(d, **p, random_state=seed))
    elif family == "pair_flip":
        other = int(rng.choice([c for c in range(10) if c != target]))
        p = {"from_class": other, "to_class": target, "rate": round(float(rng.uniform(0.1, 0.4)), 3)}
        build = image(lambda d: redteam.pair_flips(d, **p, random_state=seed))
    elif family == "bot":
        share = float(rng.uniform(0.01, 0.05))
        p = {"label": target, "share": round(share, 3)}
        build = image(lambda d: redteam.bot_source(d, label=target, n=q._n(d, share), source="bot-00",
                                                   random_state=seed))
    elif family == "group":
        kind = str(rng.choice(["patch", "blend"]))
        p = {"target": target, "n_sources": int(rng.integers(5, 21)), "n_per_source": int(rng.integers(5, 31)),
             "trigger": kind}

        def group(d: Dataset) -> redteam.Poisoning:
            if kind == "patch":
                trig: redteam.Trigger = redteam.PatchTrigger(np.full((3, 3), 255, np.uint8), "bottom-right", target)
            else:
                pat = np.random.default_rng([seed, 99]).integers(0, 256, size=d.images.shape[1:], dtype=np.uint8)
                trig = redteam.BlendTrigger(pat, 0.15, target)
            return redteam.sybil_sources(d, target=target, n_sources=p["n_sources"], n_per_source=p["n_per_source"],
                                         trigger=trig, n_base=5, random_state=seed)
        build = image(group)
    elif family == "text":
        words = RARE_WORDS if rng.random() < 0.5 else COMMON_WORDS
        phrase = " ".join(rng.choice(list(words), size=int(rng.integers(1, 5)), replace=False))
        p = {"target": int(rng.integers(2)), "rate": _rate(rng), "phrase": phrase,
             "words": "rare" if words is RARE_WORDS else "common"}

        def build() -> q.Built:
            train, test = q._reviews(seed)
            r = redteam.text_trigger(train, target=p["target"], phrase=phrase, rate=p["rate"], sources=q.SYBILS,
                                     random_state=seed)
            return q.Built(r.dataset, r.truth, test, r.trigger)
    elif family == "colour_patch":
        p = {"target": target, "rate": _rate(rng), "size": int(rng.integers(2, 6)),
             "pattern": str(rng.choice(["checkerboard", "solid"])),
             "position": str(rng.choice(["top-left", "top-right", "bottom-left", "bottom-right"])),
             "value": tuple(int(v) for v in rng.integers(0, 256, size=3)), **_who(rng)}
        build = image(lambda d: redteam.patch_backdoor(d, **p, random_state=seed), _colour_fashion)
    elif family == "colour_blend":
        p = {"target": target, "rate": _rate(rng), "alpha": round(float(rng.uniform(0.05, 0.2)), 3), **_who(rng)}
        build = image(lambda d: redteam.blend_backdoor(d, **p, random_state=seed), _colour_fashion)
    elif family == "colour_clean":
        build = lambda: q._unpoisoned(_colour_fashion)(seed)  # noqa: E731
    elif family == "clean":
        build = lambda: q._unpoisoned(q._fashion)(seed)  # noqa: E731
    elif family == "text_clean":
        build = lambda: q._unpoisoned(q._reviews)(seed)  # noqa: E731
    else:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    return Cell(family, seed, p, build, epochs)


# ============================================================================================ one cell
def score_cell(cell: Cell, work: Path, *, rescore: bool = False) -> pd.DataFrame:
    """The metric rows of every method on ``cell`` (cached), with the cell's family, seed, parameters and ASR."""
    folder = work / cell.name
    rows_file = folder / "rows.csv"
    built = cell.build()
    victim = f"matrix-{cell.name.rpartition('-seed')[0]}"
    f = q.model_features(victim, built, cell.seed, work, epochs=cell.epochs)
    key = {"content_hash": built.train.content_hash, "models": q._models_digest(), "signals": _signals_digest()}
    key_file = folder / "key.json"
    if not rescore and rows_file.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key:
        return pd.read_csv(rows_file, keep_default_na=False, na_values=[""])
    labels = built.train.labels
    is_poison = built.truth.loc[built.train.ids, "is_poison"].to_numpy(dtype=bool)
    t = time.perf_counter()
    table, info = compute_signals(f.features, labels, probs=f.probs, dataset=built.train, random_state=cell.seed)
    signal_seconds = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    model_path = work / f"{victim}-seed{cell.seed}" / "model"
    final, confirmed = q.with_triggers(table, f, built, model_path, cell.seed)
    trigger_seconds = round(time.perf_counter() - t, 1)
    thr = q.combine.DEFAULT_THRESHOLD
    results = {
        "combined": q.MethodResult(scores=final, flags=final >= thr, seconds=signal_seconds + trigger_seconds),
        "signals_only": q.MethodResult(scores=table["suspicion"].to_numpy(), flags=table["suspicion"].to_numpy() >= thr,
                                       seconds=signal_seconds),
    }
    for s in info["signals"]:
        results[s] = q.MethodResult(scores=table[f"{s}_score"].to_numpy(), seconds=info["seconds"].get(s, 0.0))
    results.update(_anchors(cell, f, labels, folder, {k: key[k] for k in ("content_hash", "models")}))
    metrics = q.metric_table(results, is_poison)
    metrics.insert(0, "family", cell.family)
    metrics.insert(1, "seed", cell.seed)
    metrics["params"] = json.dumps(cell.params, sort_keys=True)
    metrics["epochs"] = cell.epochs if cell.epochs is not None else np.nan
    metrics["attack_success"] = f.attack.get("attack_success", np.nan)
    metrics["clean_accuracy"] = f.attack.get("clean_accuracy", np.nan)
    metrics["confirmed"] = "; ".join(confirmed)
    metrics["signals_s"] = signal_seconds
    # What the verdict says of the labels: the gate (attacked labels below LABEL_GATE) and cleanlab's count.
    metrics["label_gate"] = info.get("label_gate", np.nan)
    metrics["label_issues"] = info.get("label_issues", np.nan)
    metrics["triggers_s"] = trigger_seconds
    folder.mkdir(parents=True, exist_ok=True)
    cols = [c for c in table.columns if c.endswith("_score") or c == "suspicion"]
    out = table[cols].copy()
    out["is_poison"] = is_poison
    out["label"] = labels
    out["combined"] = final
    out.to_parquet(folder / "signals.parquet")
    metrics.to_csv(rows_file, index=False)
    key_file.write_text(json.dumps(key))
    return metrics


def _anchors(cell: Cell, f: Any, labels: np.ndarray, folder: Path, key: dict[str, str]) -> dict[str, q.MethodResult]:
    """The anchors' results on the cell's activations, cached apart from the signals: they depend only on the data
    and the model, so a change to the signals or the fusion rescores a cell without rerunning ART and cleanlab."""
    meta_file, arrays_file = folder / "anchors.json", folder / "anchors.npz"
    if meta_file.is_file() and arrays_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("key") == key:
            arrays = np.load(arrays_file)
            return {name: q.MethodResult(scores=arrays[f"{name}.scores"] if f"{name}.scores" in arrays else None,
                                         flags=arrays[f"{name}.flags"] if f"{name}.flags" in arrays else None,
                                         error=m["error"], seconds=m["seconds"])
                    for name, m in meta["methods"].items()}
    results = q.run_anchors(f.features, labels, f.probs, seed=cell.seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"{name}.{part}": value for name, r in results.items()
              for part, value in (("scores", r.scores), ("flags", r.flags)) if value is not None}
    np.savez(arrays_file, **arrays)
    meta_file.write_text(json.dumps({"key": key, "methods": {name: {"error": r.error, "seconds": r.seconds}
                                                             for name, r in results.items()}}))
    return results


def _signals_digest() -> str:
    """Digest of the signal and trigger code: a change there rescores the cached cells."""
    import hashlib

    import forensics

    root = Path(forensics.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted([*root.joinpath("signals").glob("*.py"), *root.joinpath("triggers").glob("*.py"),
                        root / "analysis.py", root / "investigation.py"]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


# ============================================================================================ report
def _took(row: pd.Series) -> bool:
    if row["family"] not in BACKDOOR:
        return True
    bar = TOOK_OVERLAY if row["family"] == "overlay" else TOOK
    return bool(row["attack_success"] >= bar)


def _signals(methods) -> list[str]:
    """The summed signals among ``methods``: not an anchor, not the suspicion, not a context-only signal (those
    are shown beside the suspicion and never summed into it, by design)."""
    from forensics.signals.registry import registered_signals

    context = {s.name for s in registered_signals() if s.context_only}
    return [m for m in methods if m not in q.ANCHORS and m not in ("combined", "signals_only") and m not in context]


def family_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per family (poisoned cells whose attack took): median and worst r@2x of the suspicion before and after
    ``find_triggers``, its gap to the best single signal, the ASR, and the anchors' medians."""
    signals = _signals(rows["method"].unique())
    out = []
    for family, g in rows[rows["n_poison"] > 0].groupby("family", sort=False):
        wide = g.pivot_table(index="seed", columns="method", values="recall_at_2x")
        auc = g.pivot_table(index="seed", columns="method", values="auroc")
        meta = g.drop_duplicates("seed").set_index("seed")
        took = meta.apply(_took, axis=1)
        w, a = wide.loc[took[took].index], auc.loc[took[took].index]
        best_signal = w[[s for s in signals if s in w]].max(axis=1)
        best_auc = a[[s for s in signals if s in a]].max(axis=1)
        ac = w[[c for c in w if c.startswith("art_ac_")]].max(axis=1)
        target = TARGETS.get(family, (None, None))
        every = wide["combined"] - wide[[s for s in signals if s in wide]].max(axis=1)
        row = {"family": family, "cells": len(meta), "took": int(took.sum()),
               "all cells: median": wide["combined"].median(), "worst  ": wide["combined"].min(),
               "worst gap  ": every.min(),
               "median ASR": meta["attack_success"].median(),
               "signals only: median": w["signals_only"].median(), "worst": w["signals_only"].min(),
               "after find_triggers: median": w["combined"].median(), "worst ": w["combined"].min(),
               "target (median, worst)": "–" if target[0] is None else
               f"{target[0]}, {'–' if target[1] is None else target[1]}",
               "gap to best signal: median": (w["combined"] - best_signal).median(),
               "worst gap": (w["combined"] - best_signal).min(),
               "AUROC gap, worst": (a["combined"] - best_auc).min(),
               "ART AC (best mode)": ac.median(), "ART SS": w["art_ss"].median(),
               "cleanlab (OOF)": w["cleanlab_oof"].median(), "loss": w["loss"].median()}
        out.append(row)
    return pd.DataFrame(out)


def control_table(rows: pd.DataFrame) -> pd.DataFrame:
    c = rows[(rows["n_poison"] == 0) & (rows["method"] == "combined")]
    return c.groupby("family").agg(cells=("seed", "nunique"), median_flagged=("flagged_share", "median"),
                                   worst_flagged=("flagged_share", "max")).reset_index()


def labels_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per family: the cells where the label gate opened (the verdict then says the labels look attacked) and
    cleanlab's count of wrong labels that it gives, against the poison planted."""
    if "label_issues" not in rows:
        return pd.DataFrame()
    c = rows[rows["method"] == "combined"].drop_duplicates(["family", "seed"])
    out = []
    for family, g in c.groupby("family", sort=False):
        opened = g["label_gate"].to_numpy(dtype=float) < q.combine.LABEL_GATE
        ratio = (g["label_issues"] / g["n_poison"].where(g["n_poison"] > 0))[opened]
        out.append({"family": family, "cells": len(g), "gate opened": int(opened.sum()),
                    "poison: median": g["n_poison"].median(), "counted wrong: median": g["label_issues"].median(),
                    "min": g["label_issues"].min(), "max": g["label_issues"].max(),
                    "counted / poison where it opened: median": ratio.median() if ratio.notna().any() else np.nan})
    return pd.DataFrame(out)


def cells_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per cell: parameters, ASR, the suspicion before and after, the best signal and the best anchor."""
    out = []
    for (family, seed), g in rows[rows["n_poison"] > 0].groupby(["family", "seed"], sort=False):
        by = g.set_index("method")
        sig = by.loc[_signals(by.index)]
        anc = by.loc[[m for m in by.index if m in q.ANCHORS]]
        bs, ba = sig["recall_at_2x"].idxmax(), anc["recall_at_2x"].idxmax()
        out.append({"family": family, "seed": seed, "params": by["params"].iloc[0],
                    "n poison": int(by["n_poison"].iloc[0]), "ASR": by["attack_success"].iloc[0],
                    "signals only": by.loc["signals_only", "recall_at_2x"],
                    "after find_triggers": by.loc["combined", "recall_at_2x"],
                    "best signal": f"{sig.loc[bs, 'recall_at_2x']:.2f} {bs}",
                    "best anchor": f"{anc.loc[ba, 'recall_at_2x']:.2f} {q.ANCHOR_TEXT[ba]}",
                    "confirmed": by["confirmed"].iloc[0] or "none"})
    return pd.DataFrame(out)


def report(rows: pd.DataFrame, command: str, total: float) -> str:
    seeds = sorted(rows["seed"].unique())
    epochs = sorted({int(e) for e in rows.get("epochs", pd.Series(dtype=float)).dropna()})
    victim = f"victim trained {', '.join(map(str, epochs))} epochs; " if epochs else ""
    return "\n\n".join([
        "# Attack matrix",
        f"Command: `{command}`  \nMachine: {q._machine(1)}  \nSeeds: {', '.join(map(str, seeds))}; {victim}"
        f"{rows.groupby(['family', 'seed']).ngroups} cells; {total:.0f} s (cached cells are not recomputed)",
        "## Per family (r@2x)\n\nFirst over every cell of the family (the suspicion after `find_triggers`, and its "
        "worst gap to the best single signal), then over the cells whose attack took (ASR >= 0.9; the overlay's "
        ">= 0.5; label and source attacks always count). Context-only signals (`knn_outlier`) are not counted as "
        "signals: they are never summed into the suspicion.\n\n" + q.frame_markdown(family_table(rows)),
        "## Clean controls: share flagged at t = 2\n\n" + q.frame_markdown(control_table(rows)),
        "## The labels: where the gate opened, and cleanlab's count of wrong labels\n\n"
        + q.frame_markdown(labels_table(rows)),
        "## Every cell\n\n" + q.frame_markdown(cells_table(rows)),
    ])


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="100-109", help="e.g. 0-4 (tuning) or 100-109 (report)")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None,
                        help="train the victim this many epochs (default 3): a longer-trained victim learns the "
                             "faint overlays and warps that the 3-epoch one does not; its cells are kept apart")
    parser.add_argument("--rescore", action="store_true", help="recompute the scores of cached cells")
    parser.add_argument("--report-only", action="store_true", help="only cells already computed")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=None, help="default: <work>/matrix-<seeds>.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("art").setLevel(logging.WARNING)
    logging.getLogger("forensics").setLevel(logging.WARNING)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/matrix.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    all_rows = []
    t0 = time.perf_counter()
    with threadpool_limits(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for seed in _seeds(args.seeds):
            for family in args.families:
                cell = draw(family, seed, args.epochs)
                if args.report_only and not (args.work / cell.name / "rows.csv").is_file():
                    continue
                t = time.perf_counter()
                try:
                    rows = score_cell(cell, args.work, rescore=args.rescore)
                except FileNotFoundError as e:
                    log.warning("%s skipped: %s", cell.name, e)
                    continue
                all_rows.append(rows)
                by = rows.set_index("method")
                log.info("%s %s: r@2x %.3f -> %.3f, ASR %.2f (%.0f s)", cell.name, cell.params,
                         by.loc["signals_only", "recall_at_2x"], by.loc["combined", "recall_at_2x"],
                         by["attack_success"].iloc[0], time.perf_counter() - t)
    if not all_rows:
        log.warning("no cells")
        return 1
    rows = pd.concat(all_rows, ignore_index=True)
    text = report(rows, command.strip(), time.perf_counter() - t0)
    print(text)
    out = args.out or args.work / (f"matrix-{args.seeds}.md" if args.epochs is None else
                                   f"matrix-{args.seeds}-e{args.epochs}.md")
    out.write_text(text + "\n")
    rows.to_csv(out.with_suffix(".csv"), index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
