"""Warps reconstructed on the attack matrix's models: does the warp's target stand out, and does a clean model's not?

For each cell, :func:`forensics.triggers.reconstruct_warps` on the cell's cached model with its clean test split
(every class), reporting the target's rate and anomaly, the largest anomaly of another class, and for clean cells the
largest anomaly of any class. Needs the cells built by ``benchmarks/matrix.py`` (warps with ``--epochs 8``)::

    python benchmarks/warps.py --seeds 0-4          # tuning
    python benchmarks/warps.py --seeds 100-109      # report
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import matrix
import numpy as np
import pandas as pd
import quality as q

from forensics.models import load_model
from forensics.triggers import reconstruct_warps


def one(family: str, seed: int, epochs: int | None) -> dict:
    cell = matrix.draw(family, seed, epochs)
    built = cell.build()
    folder = matrix.WORK / f"matrix-{cell.name.rpartition('-seed')[0]}-seed{seed}"
    model, _ = load_model(folder / "model")
    attack = json.loads((folder / "meta.json").read_text()).get("attack", {})
    t = time.perf_counter()
    table = reconstruct_warps(model, built.test.images, built.test.labels, random_state=seed)
    seconds = time.perf_counter() - t
    target = cell.params.get("target")
    row = {"family": family, "seed": seed, "ASR": attack.get("attack_success", np.nan), "target": target}
    if target is not None:
        by = table.set_index("class")
        row.update({"target turned": by.loc[target, "turned"], "target random": by.loc[target, "random"],
                    "target anomaly": by.loc[target, "anomaly"], "target rank": int(np.flatnonzero(
                        table["class"].to_numpy() == target)[0]) + 1,
                    "largest other anomaly": by.drop(index=target)["anomaly"].max()})
    else:
        row.update({"largest anomaly": table["anomaly"].max(), "its rate": table["turned"].iloc[0]})
    row["seconds"] = round(seconds, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    for seed in matrix._seeds(args.seeds):
        for family, epochs in (("warp", 8), ("clean", None)):
            rows.append(one(family, seed, epochs))
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    command = "python benchmarks/warps.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"\nCommand: `{command.strip()}`  \nMachine: {q._machine(1)}\n")
    print(q.frame_markdown(frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
