"""Speed of manifests and manifest diffs on synthetic data (default: 1,000,000 samples, 1,000 sources).

Builds an old and a new manifest with 1% of the samples in each kind of change (added, removed, relabelled,
modified payload, moved source), then times making, saving, loading and diffing them, checks that the diff finds
exactly the planted changes, and prints a Markdown table with the command that produced it.

    python benchmarks/integrity_speed.py [--n 1000000] [--sources 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from forensics.integrity import diff, load_manifest, manifest_from_arrays, save_manifest


def _hex_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.bytes(16 * n).hex()
    return np.array([raw[i:i + 32] for i in range(0, 32 * n, 32)], dtype=object)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="samples in the old manifest")
    parser.add_argument("--sources", type=int, default=1_000, help="number of sources")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n, k = args.n, max(1, args.n // 100)
    rng = np.random.default_rng(args.seed)
    class_names = [f"class-{c}" for c in range(10)]

    # The old version.
    ids = np.array([f"s{i:08d}" for i in range(n)], dtype=object)
    hashes = _hex_hashes(rng, n)
    labels = rng.integers(0, 10, n)
    source_names = np.array([f"src-{s:04d}" for s in range(args.sources)], dtype=object)
    sources = source_names[rng.integers(0, args.sources, n)]

    # The new version: five disjoint groups of k samples, one per kind of change, plus k new samples.
    groups = rng.permutation(n)[: 4 * k].reshape(4, k)
    removed, relabelled, modified, moved = groups
    new_hashes, new_labels, new_sources = hashes.copy(), labels.copy(), sources.copy()
    new_labels[relabelled] = (labels[relabelled] + 1) % 10
    new_hashes[modified] = _hex_hashes(rng, k)
    new_sources[moved] = "src-moved"
    keep = np.ones(n, dtype=bool)
    keep[removed] = False
    new_ids = np.concatenate([ids[keep], np.array([f"new{i:08d}" for i in range(k)], dtype=object)])
    new_hashes = np.concatenate([new_hashes[keep], _hex_hashes(rng, k)])
    new_labels = np.concatenate([new_labels[keep], rng.integers(0, 10, k)])
    new_sources = np.concatenate([new_sources[keep], np.full(k, "new-vendor", dtype=object)])

    timings: list[tuple[str, float, str]] = []

    def timed(step: str, fn, note: str = ""):
        start = time.perf_counter()
        out = fn()
        timings.append((step, time.perf_counter() - start, note))
        return out

    old = timed("make manifest (old)", lambda: manifest_from_arrays(
        ids, hashes, labels, class_names=class_names, sources=sources, time_added="2024-01-01T00:00Z"))
    new = timed("make manifest (new, previous=old)", lambda: manifest_from_arrays(
        new_ids, new_hashes, new_labels, class_names=class_names, sources=new_sources,
        time_added="2024-02-01T00:00Z", previous=old))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "old.parquet"
        timed("save (Parquet + sha256 sidecar)", lambda: save_manifest(old, path))
        size_mb = path.stat().st_size / 1e6
        timings[-1] = (*timings[-1][:2], f"{size_mb:.1f} MB")
        loaded = timed("load (checksum verified)", lambda: load_manifest(path))
    result = timed("diff", lambda: diff(loaded, new))

    expected = {"added": k, "removed": k, "relabelled": k, "modified": k, "moved_source": k}
    found = {name: len(getattr(result, name)) for name in expected}
    if found != expected:
        raise SystemExit(f"the diff found {found}, expected {expected}")

    total_make_diff = sum(t for step, t, _ in timings if step.startswith(("make", "diff")))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(f"Manifest integrity speed: {n:,} samples, {args.sources:,} sources, {k:,} changes of each kind")
    print(f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"Python {platform.python_version()}); command: `{command}`\n")
    print("| step | seconds | note |")
    print("|---|---:|---|")
    for step, seconds, note in timings:
        print(f"| {step} | {seconds:.2f} | {note} |")
    print(f"| **make both + diff** | **{total_make_diff:.2f}** | target < 60 s |")
    print(f"\nThe diff found exactly the planted changes: {found}")


if __name__ == "__main__":
    main()
