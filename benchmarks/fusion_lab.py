"""Try fusions of the signals on the attack matrix's cached cells, in seconds, without retraining anything.

Every cell that ``benchmarks/matrix.py`` scored left its signal table (``signals.parquet``: each signal's scores,
the labels and the truth) and the model's activations and probabilities. This script recombines those scores
under a few fusions and prints, per cell, the recall at twice the poison count of each fusion minus that of the
best single signal (the gap the issue's target bounds at -0.02), the share of the poison each fusion flags at
t = 2, and, on the clean controls, the share of the data flagged (target: at most 1%).

Fusions compared (each ends with :func:`forensics.signals.combine.evidence_tail` on the summed evidence):

- ``current``: :func:`forensics.signals.combine.combine` as shipped,
- ``label_loss``: the two label signals' tail probabilities taken from the model's own prediction instead of a
  fitted tail: a clean label is a draw from the predicted distribution, so ``P(prob of the label <= t) <= k t``
  and ``p = min(1, k * prob)``, ``k`` the number of classes (``high_loss`` with the model's probabilities,
  ``label_quality`` with the out-of-fold ones),
- ``spectral_once``: ``spectral`` and ``robust_spectral`` counted as one piece of evidence (their smaller p times 2),
- ``both``: the two together,
- ``both_capped``: ``both``, whose final tail probability is never below that of Fisher's statistic for half as
  many independent uniform p-values as there are pieces of evidence (a bound that no bulk fit can undercut).

Use only tuning seeds here (0-4); the report seeds are for ``matrix.py``'s report.

    python benchmarks/fusion_lab.py [--seeds 0-4] [--families patch flips ...]
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import matrix
import numpy as np
import pandas as pd
from scipy import stats

from forensics import evaluate
from forensics.signals import combine as cb
from forensics.signals.label_quality import out_of_fold_probs
from forensics.signals.registry import null_kind


class Cell:
    """One cached cell: its signal scores, labels, truth, and (on demand) the model's and out-of-fold probabilities."""

    def __init__(self, folder: Path, work: Path) -> None:
        self.name = folder.name
        self.table = pd.read_parquet(folder / "signals.parquet")
        self.labels = self.table["label"].to_numpy()
        self.is_poison = self.table["is_poison"].to_numpy(dtype=bool)
        self.signals = [c[: -len("_score")] for c in self.table.columns if c.endswith("_score")]
        self._arrays = work / f"matrix-{self.name}" / "activations.npz"

    @functools.cached_property
    def probs(self) -> tuple[np.ndarray, np.ndarray]:
        arrays = np.load(self._arrays)
        seed = int(self.name.rsplit("seed", 1)[1])
        return arrays["probs"], out_of_fold_probs(arrays["features"], self.labels, random_state=seed)


def tail_ps(cell: Cell) -> pd.DataFrame:
    """Each summed signal's tail probability as :func:`~forensics.signals.combine.combine` computes it."""
    out = {}
    for name in cell.signals:
        if name == "knn_outlier":  # context only
            continue
        s = cell.table[f"{name}_score"].to_numpy(dtype=np.float64)
        kind = null_kind(name)
        if kind == "exact_p":
            out[name] = np.clip(np.nan_to_num(10.0 ** -s, nan=1.0), 1e-300, 1.0)
        else:
            out[name] = cb.tail_probability(s, max_shape=0.0 if kind == "log_p" else cb.MAX_SHAPE)
    return pd.DataFrame(out)


def _label_loss(p: pd.DataFrame, cell: Cell) -> pd.DataFrame:
    q = p.copy()
    model, oof = cell.probs
    rows = np.arange(len(cell.labels))
    for name, probs in (("high_loss", model), ("label_quality", oof)):
        if name in q:
            probs = np.asarray(probs, dtype=np.float64)
            prob = probs[rows, cell.labels] / probs.sum(axis=1)
            q[name] = np.clip(probs.shape[1] * prob, 1e-300, 1.0)
    return q


def _spectral_once(p: pd.DataFrame) -> pd.DataFrame:
    pair = [c for c in ("spectral", "robust_spectral") if c in p]
    if len(pair) < 2:
        return p
    q = p.drop(columns=pair)
    q["spectral_once"] = np.clip(p[pair].min(axis=1) * 2, 1e-300, 1.0)
    return q


def _suspicion(p: pd.DataFrame, *, capped: bool = False) -> np.ndarray:
    evidence = -np.log(p.to_numpy()).sum(axis=1)
    tail = cb.evidence_tail(evidence)
    if capped:
        tail = np.maximum(tail, stats.gamma.sf(evidence, p.shape[1] / 2))
    return -np.log10(np.clip(tail, 1e-300, 1.0))


FUSIONS: dict[str, Callable[[Cell], np.ndarray]] = {
    "current": lambda c: _suspicion(tail_ps(c)),
    "label_loss": lambda c: _suspicion(_label_loss(tail_ps(c), c)),
    "spectral_once": lambda c: _suspicion(_spectral_once(tail_ps(c))),
    "both": lambda c: _suspicion(_spectral_once(_label_loss(tail_ps(c), c))),
    "both_capped": lambda c: _suspicion(_spectral_once(_label_loss(tail_ps(c), c)), capped=True),
}


def _recall(scores: np.ndarray, y: np.ndarray) -> float:
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf, posinf=np.finfo(float).max)
    return evaluate.precision_recall_at_budget(s, y, min(len(y), 2 * int(y.sum())))[1]


def compare(cell: Cell) -> dict[str, object]:
    y = cell.is_poison
    row: dict[str, object] = {"cell": cell.name}
    if not y.any():
        for name, fuse in FUSIONS.items():
            row[name] = f"{100 * np.mean(fuse(cell) >= cb.DEFAULT_THRESHOLD):.2f}% flagged"
        return row
    best = max(cell.signals, key=lambda s: _recall(cell.table[f"{s}_score"].to_numpy(), y))
    best_r = _recall(cell.table[f"{best}_score"].to_numpy(), y)
    row["best signal"] = f"{best_r:.2f} {best}"
    for name, fuse in FUSIONS.items():
        s = fuse(cell)
        row[name] = f"{_recall(s, y) - best_r:+.2f} ({np.mean(s[y] >= cb.DEFAULT_THRESHOLD):.2f})"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--families", nargs="+", choices=matrix.FAMILIES, default=list(matrix.FAMILIES))
    parser.add_argument("--work", type=Path, default=matrix.WORK)
    args = parser.parse_args(argv)
    rows = []
    for seed in matrix._seeds(args.seeds):
        for family in args.families:
            folder = args.work / f"{family}-seed{seed}"
            if (folder / "signals.parquet").is_file():
                rows.append(compare(Cell(folder, args.work)))
    if not rows:
        print("no cached cells: run benchmarks/matrix.py first")
        return 1
    print("Per cell: r@2x minus the best single signal's (share of the poison flagged at t = 2); clean controls: "
          "share flagged.\n")
    print(matrix.q.frame_markdown(pd.DataFrame(rows).fillna("")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
