"""Does the ``ensemble`` signal earn a place in the default set? Measured on the bundled image data.

The bundled images carry two attacks (a patch backdoor from contrib-17 and a bot, contrib-31, whose labels are
random). With the shipped model's activations, this compares ``ensemble`` with ``label_quality`` (the same kind of
linear probe on the same activations, out of fold) on the bot's flipped labels, and the combined suspicion with and
without ``ensemble``, by AUROC and recall when reviewing twice the poison count (r@2x); and the seconds each takes.

    python benchmarks/ensemble.py            # prints a Markdown table

The numbers are in ``benchmarks/RESULTS.md`` ("Ensemble disagreement").
"""

from __future__ import annotations

import numpy as np

from forensics import compute_signals, evaluate, sample_data
from forensics.activations import extract_activations
from forensics.signals.registry import default_signals


def main() -> None:
    data = sample_data.load("image_backdoor")
    model, _ = data.model()
    truth = sample_data.load_truth("image_backdoor").reindex(data.train.ids)
    acts = extract_activations(model, data.train, progress=False)
    features = np.asarray(acts.feature(acts.layer), dtype=np.float32)
    base = list(default_signals())
    runs = {}
    for name, chosen in (("default", base), ("default + ensemble", [*base, "ensemble"])):
        table, info = compute_signals(features, data.train.labels, probs=np.asarray(acts.probs), dataset=data.train,
                                      signals=chosen)
        runs[name] = (table, info)
    flips = truth["source"].eq("contrib-31").to_numpy() & truth["is_poison"].to_numpy()
    poison = truth["is_poison"].to_numpy()
    table, info = runs["default + ensemble"]
    base_table, base_info = runs["default"]
    print(f"bundled image_backdoor: {len(poison)} samples, {poison.sum()} poison, of which {flips.sum()} bot flips\n")
    print("| scores | bot flips AUROC | bot flips r@2x | all poison AUROC | all poison r@2x | seconds |")
    print("|---|---|---|---|---|---|")
    rows = [("label_quality", table["label_quality_score"], info["seconds"]["label_quality"]),
            ("ensemble", table["ensemble_score"], info["seconds"]["ensemble"]),
            ("suspicion, default signals", base_table["suspicion"], sum(base_info["seconds"].values())),
            ("suspicion, default + ensemble", table["suspicion"], sum(info["seconds"].values()))]
    for label, scores, seconds in rows:
        s = scores.to_numpy(dtype=np.float64)
        print(f"| {label} | {evaluate.auroc(s, flips):.3f} | {evaluate.recall_at_k_times_poison(s, flips):.3f} "
              f"| {evaluate.auroc(s, poison):.3f} | {evaluate.recall_at_k_times_poison(s, poison):.3f} "
              f"| {seconds:.1f} |")


if __name__ == "__main__":
    main()
