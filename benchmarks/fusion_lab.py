"""Try fusions of the signals on the attack matrix's cached cells, in seconds, without retraining anything.

Every cell that ``benchmarks/matrix.py`` scored left its signal table (``signals.parquet``: each signal's scores,
the labels, the truth and the suspicion as it was computed then) and the model's activations and probabilities. This
script recombines those scores under a few fusions and prints, per cell, the recall at twice the poison count of
each fusion minus that of the best single signal (the gap the issue's target bounds at -0.02), the share of the
poison each fusion flags at t = 2, and, on the clean controls, the share of the data flagged (target: at most 1%).

``--refresh NAME ...`` recomputes the named signals on the cell's data and cached activations first (for a signal
whose code changed since the cell was cached: rebuilding the cell's data takes a few seconds, no model is trained).

Fusions compared:

- ``cached``: the suspicion stored with the cell before ``find_triggers`` (the fusion shipped when it was scored),
  ``cached_final``: after it,
- ``shipped``: :func:`forensics.signals.combine.combine` as it is now, on the (refreshed) scores, with the label
  null of the cell's model (``label_null``, from its cached probabilities, as ``investigate`` passes it),
- ``bound_label_null``: as shipped, with the label signals always read against the bound ``k q`` (the fusion
  before the label gate),
- ``plain_fisher``: every signal through a fitted tail (exact p-values as they are), one piece each, summed, and
  the sum's tail from :func:`forensics.signals.combine.evidence_tail` (the fusion before the label nulls, the
  evidence groups and the Fisher bound),
- ``hmp``: the harmonic mean of the shipped per-signal probabilities, its ``-ln`` through ``evidence_tail``,
- ``anchored`` (with ``--anchor N``): as shipped, with N clean samples of the cell drawn as a trusted set whose
  scores are the null of :data:`forensics.signals.compute.ANCHORED_SIGNALS` (what ``investigate(..., trusted=)``
  does with 500 or more); every fusion is then measured on the other samples,
- ``no_floor``: as shipped, without the floor a confirmed trigger sets (``combine(..., floor=())``),
- ``exact_floor``: as shipped, with every exact p-value signal (activation cluster, shared mark, source) setting a
  floor like the trigger's: its strongest p-value times the number of rules (the sum and each floor),
- ``predicted_label_null``: as ``bound_label_null``, with ``high_loss``'s probability read from the model's own
  predicted distribution (the share of labels a calibrated model would draw with probability at most the label's)
  instead of the bound ``k q`` whatever the labels show (no gate; not with ``--anchor``).

The cells' ``trigger`` scores (from ``find_triggers``) are summed like any signal, so ``shipped`` is the suspicion
after trigger discovery.

Use only tuning seeds for choices (0-4); the report seeds are for the report.

    python benchmarks/fusion_lab.py [--seeds 0-4] [--families patch flips ...] [--refresh source robust_spectral]
    python benchmarks/fusion_lab.py --seeds 100-104 --refresh all --anchor 500
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import matrix
import numpy as np
import pandas as pd
from scipy import stats

from forensics import evaluate
from forensics.analysis import compute_signals
from forensics.signals import combine as cb
from forensics.signals.compute import ANCHORED_SIGNALS
from forensics.signals.registry import null_kind, registered_signals


class Cell:
    """One cached cell: its signal scores, labels and truth, with the named signals recomputed."""

    def __init__(self, folder: Path, work: Path, refresh: list[str], anchor: int = 0) -> None:
        self.name = folder.name
        self.work = work
        self.table = pd.read_parquet(folder / "signals.parquet")
        self.labels = self.table["label"].to_numpy()
        self.is_poison = self.table["is_poison"].to_numpy(dtype=bool)
        context = {s.name for s in registered_signals() if s.context_only}
        self.signals = [c[: -len("_score")] for c in self.table.columns
                        if c.endswith("_score") and c[: -len("_score")] not in context]
        # A cell where no trigger was confirmed has no trigger signal (find_triggers adds none there).
        if "trigger" in self.signals and not (self.table["trigger_score"] > 0).any():
            self.signals.remove("trigger")
        self.scores = {s: self.table[f"{s}_score"].to_numpy(dtype=np.float64) for s in self.signals}
        # ``trigger`` comes from find_triggers on the model, not from the activations: it is kept as cached.
        todo = [s for s in (self.signals if refresh == ["all"] else refresh) if s in self.scores and s != "trigger"]
        if todo:
            family, seed = self.name.rsplit("-seed", 1)
            family, _, epochs = family.partition("-e")  # "warp-e8": the victim trained 8 epochs
            built = matrix.draw(family, int(seed), int(epochs) if epochs else None).build()
            arrays = np.load(work / f"matrix-{self.name}" / "activations.npz")
            fresh, _ = compute_signals(arrays["features"], self.labels, probs=arrays["probs"], dataset=built.train,
                                       signals=todo, random_state=int(seed))
            self.scores.update({s: fresh[f"{s}_score"].to_numpy() for s in todo})
        # The label null of the cell's model (what investigate() passes to combine), from its cached probabilities.
        arrays_path = work / f"matrix-{self.name}" / "activations.npz"
        self.probs = np.load(arrays_path)["probs"] if arrays_path.is_file() else None
        self.nulls: dict[str, np.ndarray] = {}
        if anchor:
            # A trusted set: clean samples drawn per cell, scored with the data, then set apart.
            seed = int(self.name.rsplit("-seed", 1)[1])
            clean = np.flatnonzero(~self.is_poison)
            trusted = np.zeros(len(self.labels), dtype=bool)
            trusted[np.random.default_rng(seed).choice(clean, min(anchor, len(clean)), replace=False)] = True
            self.nulls = {s: v[trusted] for s, v in self.scores.items() if s in ANCHORED_SIGNALS}
            keep = ~trusted
            self.table = self.table[keep].reset_index(drop=True)
            self.labels, self.is_poison = self.labels[keep], self.is_poison[keep]
            self.scores = {s: v[keep] for s, v in self.scores.items()}
            self.probs = None if self.probs is None else self.probs[keep]
        self.label_null = None if self.probs is None else cb.label_null(self.probs)


def _plain_fisher(c: Cell) -> np.ndarray:
    p = []
    for name, s in c.scores.items():
        if null_kind(name) == "exact_p":
            p.append(np.clip(np.nan_to_num(10.0 ** -s, nan=1.0), 1e-300, 1.0))
        else:
            p.append(cb.tail_probability(s))
    return -np.log10(cb.evidence_tail(-np.log(np.column_stack(p)).sum(axis=1)))


def _hmp(c: Cell) -> np.ndarray:
    p = cb.combine(c.scores, c.labels, label_null=c.label_null).tail_p.to_numpy()
    return -np.log10(cb.evidence_tail(np.log(np.mean(1.0 / p, axis=1)).clip(0)))


def _predicted_label_null(c: Cell) -> np.ndarray | None:
    """As shipped, with ``high_loss``'s probability read from the model's own predictions instead of the bound
    ``k q``: the share of labels a calibrated model would draw with probability at most ``q``,
    ``mean_i sum_c p_ic [p_ic <= q]`` (needs the cell's cached probabilities)."""
    if c.nulls or "high_loss" not in c.scores or c.probs is None:  # (with --anchor the rows differ)
        return None
    probs = c.probs
    comb = cb.combine(c.scores, c.labels)
    tail_p = comb.tail_p.copy()
    flat = np.sort(probs.ravel())
    mass = np.cumsum(flat) / len(probs)
    at = np.searchsorted(flat, np.exp(-c.scores["high_loss"]), side="right")
    tail_p["high_loss"] = np.clip(np.where(at > 0, mass[np.maximum(at - 1, 0)], 0.0), 1e-300, 1.0)
    pieces = cb._evidence_pieces(tail_p)
    evidence = -np.log(pieces).sum(axis=1)
    return -np.log10(np.maximum(cb.evidence_tail(evidence), stats.gamma.sf(evidence, pieces.shape[1] / 2.0)))


#: Each fusion's suspicion on a cell, or None where it does not apply.
FUSIONS: dict[str, Callable[[Cell], np.ndarray | None]] = {
    "cached": lambda c: c.table["suspicion"].to_numpy(),
    "cached_final": lambda c: c.table["combined"].to_numpy(),
    "shipped": lambda c: cb.combine(c.scores, c.labels, label_null=c.label_null).suspicion,
    "bound_label_null": lambda c: cb.combine(c.scores, c.labels).suspicion,
    "plain_fisher": _plain_fisher,
    "hmp": _hmp,
    "no_floor": lambda c: cb.combine(c.scores, c.labels, floor=(), label_null=c.label_null).suspicion,
    "exact_floor": lambda c: cb.combine(c.scores, c.labels, label_null=c.label_null,
                                        floor=[s for s in c.scores if null_kind(s) == "exact_p"]).suspicion,
    "predicted_label_null": _predicted_label_null,
    "no_label_floor": lambda c: cb.combine(c.scores, c.labels, label_null=c.label_null,
                                           floor=("trigger", "targeted_flip")).suspicion,
}
ANCHORED: dict[str, Callable[[Cell], np.ndarray | None]] = {
    "anchored": lambda c: cb.combine(c.scores, c.labels, null_scores=c.nulls, label_null=c.label_null).suspicion,
}


def _recall(scores: np.ndarray, y: np.ndarray) -> float:
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf, posinf=np.finfo(float).max)
    return evaluate.precision_recall_at_budget(s, y, min(len(y), 2 * int(y.sum())))[1]


def compare(cell: Cell) -> dict[str, object]:
    y = cell.is_poison
    row: dict[str, object] = {"cell": cell.name}
    fusions = {**FUSIONS, **(ANCHORED if cell.nulls else {})}
    scored = {name: fuse(cell) for name, fuse in fusions.items()}
    scored = {name: s for name, s in scored.items() if s is not None}
    if not y.any():
        for name, s in scored.items():
            row[name] = f"{100 * np.mean(s >= cb.DEFAULT_THRESHOLD):.2f}% flagged"
        return row
    best = max(cell.signals, key=lambda s: _recall(cell.scores[s], y))
    best_r = _recall(cell.scores[best], y)
    row["best signal"] = f"{best_r:.2f} {best}"
    for name, s in scored.items():
        row[name] = f"{_recall(s, y) - best_r:+.2f} ({np.mean(s[y] >= cb.DEFAULT_THRESHOLD):.2f})"
    return row


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per fusion: median and worst gap over the attacked cells, cells short of -0.02, worst clean controls."""
    attacked = rows[rows["best signal"].fillna("") != ""]
    clean = rows[rows["best signal"].fillna("") == ""]
    out = {}
    for name in [f for f in {**FUSIONS, **ANCHORED} if f in rows]:
        gap = pd.to_numeric(attacked[name].str.split().str[0], errors="coerce")
        flagged = pd.to_numeric(clean[name].str.split("%").str[0], errors="coerce")
        images = flagged[~clean["cell"].str.startswith("text")]
        texts = flagged[clean["cell"].str.startswith("text")]
        caught = attacked[name].str.extract(r"\(([\d.]+)\)", expand=False).astype(float)
        out[name] = {"median gap": f"{gap.median():+.2f}", "worst gap": f"{gap.min():+.2f}",
                     "cells below -0.02": f"{int((gap < -0.02).sum())} of {int(gap.notna().sum())}",
                     "poison flagged at 2, mean": f"{caught.mean():.3f}",
                     "clean images, worst % flagged": f"{images.max():.2f}" if len(images) else "",
                     "clean texts, worst % flagged": f"{texts.max():.2f}" if len(texts) else ""}
    return pd.DataFrame(out).T.rename_axis("fusion").reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--families", nargs="+", choices=matrix.FAMILIES, default=list(matrix.FAMILIES))
    parser.add_argument("--refresh", nargs="*", default=[],
                        help="signals to recompute on each cell first ('all': every signal of the cell)")
    parser.add_argument("--anchor", type=int, default=0, metavar="N",
                        help="add the 'anchored' fusion: N clean samples per cell as a trusted set")
    parser.add_argument("--epochs", type=int, default=None,
                        help="the cells of the victim trained this many epochs (matrix.py --epochs)")
    parser.add_argument("--work", type=Path, default=matrix.WORK)
    args = parser.parse_args(argv)
    victim = "" if args.epochs is None else f"-e{args.epochs}"
    rows = []
    for seed in matrix._seeds(args.seeds):
        for family in args.families:
            folder = args.work / f"{family}{victim}-seed{seed}"
            if (folder / "signals.parquet").is_file():
                rows.append(compare(Cell(folder, args.work, args.refresh, args.anchor)))
    if not rows:
        print("no cached cells: run benchmarks/matrix.py first")
        return 1
    table = pd.DataFrame(rows).fillna("")
    print(matrix.q.frame_markdown(summary(table)))
    print("\nPer cell: r@2x minus the best single signal's (share of the poison flagged at t = 2); clean controls: "
          "share flagged.\n")
    print(matrix.q.frame_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
