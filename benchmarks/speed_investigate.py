"""Speed and memory of the investigation path.

    python benchmarks/speed_investigate.py investigate     # forensics.investigate on the bundled image data
    python benchmarks/speed_investigate.py map --n 100000  # map + clusters on n x 128 activations

``investigate`` runs in a fresh process twice: cold (an empty numba cache, so umap's code is compiled as on the
first run after install, and no activation or map cache) and warm (all three caches filled). ``map`` tiles the
bundled image data's activations with jitter up to ``n`` rows. Each prints one Markdown row with seconds and
peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _investigate(cache_dir: str) -> None:
    import forensics
    from forensics import sample_data

    t0 = time.perf_counter()
    data = sample_data.load("image_backdoor")
    model, _ = data.model()
    inv = forensics.investigate(data.train, model, cache_dir=cache_dir, progress=False)
    t_signals = time.perf_counter() - t0
    _ = inv.clusters
    total = time.perf_counter() - t0
    print(f"| {len(data.train):,} | {t_signals:.1f} | {total:.1f} | "
          f"{_peak_gb():.2f} |", flush=True)


def _map(n: int) -> None:
    import numpy as np

    from forensics import sample_data
    from forensics.activations import extract_activations
    from forensics.embedding import build_map

    data = sample_data.load("image_backdoor")
    model, _ = data.model()
    acts = extract_activations(model, data.train, progress=False)
    x = acts.feature()
    reps = -(-n // len(x))
    rng = np.random.default_rng(0)
    big = np.tile(x, (reps, 1))[:n]
    big = big + rng.normal(scale=0.05 * x.std(), size=big.shape).astype(np.float32)
    labels = np.tile(data.train.labels, reps)[:n]
    ids = np.arange(n).astype(str)
    t0 = time.perf_counter()
    result = build_map(big, labels, ids=ids)
    took = time.perf_counter() - t0
    print(f"| map + clusters | {n:,} x {x.shape[1]} | {took:.1f} | {len(result.table) - 1} clusters | "
          f"{_peak_gb():.2f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["investigate", "map", "_investigate_once"])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    if args.what == "_investigate_once":
        _investigate(args.cache_dir)
    elif args.what == "investigate":
        print("`python benchmarks/speed_investigate.py investigate`\n")
        print("| run | samples | signals (s) | with map + clusters (s) | peak RSS (GB) |\n|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as numba_cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": numba_cache}
            for run in ("cold", "warm"):
                print(f"| {run} ", end="", flush=True)
                subprocess.run([sys.executable, __file__, "_investigate_once", "--cache-dir", cache],
                               check=True, env=env)
    else:
        print(f"`python benchmarks/speed_investigate.py map --n {args.n}`\n")
        print("| run | size | seconds | result | peak RSS (GB) |\n|---|---|---|---|---|")
        _map(args.n)


if __name__ == "__main__":
    main()
