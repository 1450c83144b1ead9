"""The remediation loop on the bundled data: investigate, plan, apply, retrain, verify, against a truly clean model.

For each bundled dataset: :func:`forensics.investigate` with its shipped model, ``find_triggers`` on the test split,
the default plan (review, confirmed triggers, suspicion >= 2; relabel where the label evidence leads), applied; then
the reference model is trained three times with the same seed and settings, on the original data, on the sanitized
data and on the truly clean data (the ground truth's clean samples, which no user has), and each is measured on the
test split: clean accuracy and the attack success rate of every confirmed trigger (:func:`forensics.verify.verify`);
the truly clean model's rate is what the trigger does without any poison (a phrase like "great product!" turns some
negative reviews positive by itself).
The plan's cost is read against the ground truth: poison removed or relabelled, clean samples sacrificed.

    python benchmarks/remediation.py [--data image_backdoor text_trigger] [--seed 0]
    python benchmarks/remediation.py --data --matrix blend-seed102 pair_flip-seed100   # cells of the attack matrix
    python benchmarks/remediation.py --data --matrix warp-e8-seed104   # a victim trained 8 epochs
    python benchmarks/remediation.py --trusted 500   # 500 test samples as a trusted set
    python benchmarks/remediation.py --train-seeds 5   # accuracies also as the mean of 5 trainings each

Prints a Markdown table with the command that produced it (the numbers go to ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

import forensics
from forensics import redteam, sample_data
from forensics.data import Dataset
from forensics.models import predict_proba, train_reference_model
from forensics.sample_data.build import attack_metrics
from forensics.verify import verify


def run(name: str, train_data: Dataset, test: Dataset, model: Any, truth: pd.DataFrame, seed: int, *,
        pairs: bool = False, trusted: int = 0, epochs: int | None = None, trigger: Any = None,
        train_seeds: int = 1) -> dict[str, object]:
    """The loop on one dataset with its model and ground truth: one row of the table. With ``trusted``, that many
    samples drawn from the test split (never trained on) are the trusted set, and the rest is the holdout; ``epochs``:
    the retrained models' (None: the reference default); ``trigger``: the attacker's own (default the one planted in
    the ground truth, ``truth.attrs["trigger"]``), whose attack success is measured on the retrained models too;
    ``train_seeds`` > 1: the three models are trained again with that many seeds in all (``seed``, ``seed + 1``, ...)
    and their mean accuracies (and the attacker's trigger's mean attack success) reported too, since one training's
    accuracy moves by about a point from seed to seed."""
    t0 = time.perf_counter()
    trusted_set = None
    if trusted:
        pick = np.zeros(len(test), dtype=bool)
        pick[np.random.default_rng(seed).permutation(len(test))[:trusted]] = True
        trusted_set, test = test.subset(pick), test.subset(~pick)
    inv = forensics.investigate(train_data, model, random_state=seed, progress=False, trusted=trusted_set)
    inv.find_triggers(holdout=test)
    plan = inv.plan(pairs=pairs)
    sanitized = plan.apply(train_data)
    poison = truth.loc[train_data.ids, "is_poison"].to_numpy(bool)
    acted = np.isin(train_data.ids, plan.table.index)
    models: list[Any] = []

    def train(ds: Dataset) -> Any:  # the reference model, kept to measure the attacker's own trigger on it
        models.append(train_reference_model(ds, random_state=seed, progress=False, epochs=epochs))
        return models[-1]

    result = verify(inv, sanitized, holdout=test, train_fn=train, reinvestigate=False)
    clean_data = train_data.subset(~poison)
    clean = verify(inv, clean_data, holdout=test, train_fn=train, reinvestigate=False)
    trigger = truth.attrs.get("trigger") if trigger is None else trigger
    if isinstance(trigger, dict):  # a bundled dataset's ground truth keeps it as its JSON description
        trigger = redteam.trigger_from_dict(trigger)
    # verify trains the original, then the sanitized data; the second call the original again, then the clean data.
    own = [attack_metrics(m, test, trigger)["attack_success"] for m in (models[0], models[1], models[3])] \
        if trigger is not None and len(models) == 4 else None
    accuracies = [[result.table.loc["original", "accuracy"], result.table.loc["sanitized", "accuracy"],
                   clean.table.loc["sanitized", "accuracy"]]]
    successes = [own] if own is not None else []
    for s in range(seed + 1, seed + train_seeds):
        retrained = [train_reference_model(ds, random_state=s, progress=False, epochs=epochs)
                     for ds in (train_data, sanitized.dataset, clean_data)]
        accuracies.append([float((predict_proba(m, test).argmax(axis=1) == test.labels).mean()) for m in retrained])
        if own is not None:
            successes.append([attack_metrics(m, test, trigger)["attack_success"] for m in retrained])
    mean = np.mean(accuracies, axis=0)
    asr = [c for c in result.table.columns if c.startswith("asr ")]
    counts = plan.counts()
    return {
        "data": name + (f" (trusted set of {trusted})" if trusted else ""), "n": len(train_data),
        "poison": int(poison.sum()),
        "confirmed triggers": ", ".join(c[4:] for c in asr) or "none",
        "removed / relabelled / quarantined": f"{counts['remove']} / {counts['relabel']} / {counts['quarantine']}",
        "poison acted on": f"{(acted & poison).sum() / max(1, poison.sum()):.3f}",
        "clean sacrificed": f"{(acted & ~poison).sum() / (~poison).sum():.4f}",
        "ASR original -> sanitized (truly clean)": "; ".join(
            f"{result.table.loc['original', c]:.3f} -> {result.table.loc['sanitized', c]:.3f} "
            f"({clean.table.loc['sanitized', c]:.3f})" for c in asr) or "-",
        "attacker's trigger: ASR original -> sanitized (truly clean)": (
            f"{own[0]:.3f} -> {own[1]:.3f} ({own[2]:.3f})" if own is not None else "-"),
        "accuracy original / sanitized / truly clean": " / ".join(f"{a:.4f}" for a in accuracies[0]),
        **({f"accuracy over {train_seeds} training seeds (mean, sanitized minus truly clean)": (
            f"{mean[0]:.4f} / {mean[1]:.4f} / {mean[2]:.4f} ({100 * (mean[1] - mean[2]):+.2f} points)")}
           if train_seeds > 1 else {}),
        **({f"attacker's trigger over {train_seeds} training seeds (mean)": "{:.3f} -> {:.3f} ({:.3f})".format(
            *np.mean(successes, axis=0))} if train_seeds > 1 and successes else {}),
        "seconds": round(time.perf_counter() - t0),
    }


def bundled(name: str, seed: int, pairs: bool, trusted: int, train_seeds: int) -> dict[str, object]:
    data = sample_data.load(name)
    model, _ = data.model()
    return run(name, data.train, data.test, model, sample_data.load_truth(name), seed, pairs=pairs, trusted=trusted,
               train_seeds=train_seeds)


def matrix_cell(name: str, pairs: bool, trusted: int, train_seeds: int) -> dict[str, object]:
    """A cell of the attack matrix (``family-seedN``, or ``family-eK-seedN`` for a victim trained K epochs), with the
    model the matrix trained and cached for it; the models are retrained as long."""
    import matrix

    from forensics.models import load_model

    family, seed = name.rsplit("-seed", 1)
    family, _, trained = family.partition("-e")
    epochs = int(trained) if trained else None
    built = matrix.draw(family, int(seed), epochs).build()
    folder = matrix.WORK / f"matrix-{name}" / "model"
    if not folder.with_suffix(".safetensors").is_file():
        raise SystemExit(f"no cached model for {name}: run python benchmarks/matrix.py first")
    model, _ = load_model(folder)
    return run(f"matrix {name}", built.train, built.test, model, built.truth, int(seed), pairs=pairs, trusted=trusted,
               epochs=epochs, trigger=built.trigger, train_seeds=train_seeds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", default=["image_backdoor", "text_trigger"],
                        choices=["image_backdoor", "text_trigger"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matrix", nargs="*", default=[], metavar="CELL",
                        help="cells of the attack matrix too, e.g. blend-seed102 pair_flip-seed100 (cached models)")
    parser.add_argument("--pairs", action="store_true", help="the plan relabels back one-way relabellings as a whole")
    parser.add_argument("--trusted", type=int, default=0, metavar="N",
                        help="N test samples are a trusted set (investigate(trusted=...)), not the holdout")
    parser.add_argument("--train-seeds", type=int, default=1, metavar="N",
                        help="also the mean accuracy of the original, sanitized and truly clean models over N "
                             "training seeds (one training's accuracy moves by about a point)")
    args = parser.parse_args(argv)
    rows = ([bundled(name, args.seed, args.pairs, args.trusted, args.train_seeds) for name in args.data]
            + [matrix_cell(name, args.pairs, args.trusted, args.train_seeds) for name in args.matrix])
    table = pd.DataFrame(rows)
    print(f"Command: `python benchmarks/remediation.py {shlex.join(argv if argv is not None else sys.argv[1:])}`  ")
    print(f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"forensics {forensics.__version__}\n")
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for _, row in table.iterrows():
        print("| " + " | ".join(str(v) for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
