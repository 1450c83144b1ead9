"""Speed and peak memory of every signal together (``compute_signals``) on activations of a realistic size.

Default: 60,000 x 128 synthetic activations in 10 classes (a Gaussian cloud per class with a few directions of
larger spread, and a tight planted cluster of 3% relabelled to class 0), softmax probabilities with some mistakes,
and 100 sources, on 2 threads. Prints a Markdown table of seconds per signal, the total, and the peak resident
memory of the process, with the command that produced it.

    python benchmarks/speed_signals.py [--n 60000] [--dim 128] [--classes 10] [--threads 2] [--seed 0]
    python benchmarks/speed_signals.py --npz activations.npz   # real arrays: features, labels, probs (optional)
    python benchmarks/speed_signals.py --marks                 # shared marks on Fashion-MNIST's 60,000 images
    python benchmarks/speed_signals.py --n 20000 --cleanlab    # and cleanlab's own label quality, same features
    python benchmarks/speed_signals.py --fashion 20000 --cleanlab   # real: the reference CNN on Fashion-MNIST

``--fashion N``: the reference CNN (3 epochs, seed ``--seed``) trained on the first N Fashion-MNIST training images,
its default layer's activations and its probabilities on them (cached in ``_work/fashion<N>-seed<seed>.npz``; the
training is not timed).

``--cleanlab`` also times cleanlab's reference run on the same features in the same process: its own
cross-validated probabilities (``estimate_cv_predicted_probabilities``, 3 folds of scikit-learn's
``LogisticRegression``) and ``get_label_quality_scores``; ``label_quality`` should stay within twice that.

The signals run on features alone (no payloads): duplicates are then found on the features, and shared marks,
the one signal that reads pixels, are skipped; ``--marks`` times them alone on real images.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from forensics.analysis import compute_signals
from forensics.signals.registry import default_signals


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, dim) float32, labels (n,), probabilities (n, n_classes) float32 and sources (n,) object."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centres = rng.normal(scale=4.0, size=(n_classes, dim))
    # Each class spreads more along a few directions of its own, like a penultimate layer's.
    stretch = (rng.normal(size=(4, n_classes, dim)) / np.sqrt(dim)).astype(np.float32)
    x = rng.standard_normal(size=(n, dim), dtype=np.float32)
    for direction in stretch:  # one (n, d) term at a time keeps the generator's own memory small
        x += rng.normal(scale=3.0, size=(n, 1)).astype(np.float32) * direction[labels]
    x += centres[labels].astype(np.float32)
    planted = rng.choice(np.flatnonzero(labels != 0), size=int(0.03 * n), replace=False)
    labels[planted] = 0
    x[planted] = (centres[0] + 5.0 + 0.5 * rng.normal(size=(len(planted), dim))).astype(np.float32)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), labels] += 4.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    sources = np.array([f"src-{i:03d}" for i in rng.integers(0, 100, n)], dtype=object)
    return x, labels, probs, sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--npz", help="real arrays instead: features (n, d), labels (n,), probs (n, k) optional")
    parser.add_argument("--fashion", type=int, metavar="N",
                        help="real arrays: the reference CNN trained on the first N Fashion-MNIST images")
    parser.add_argument("--cleanlab", action="store_true",
                        help="also time cleanlab's own cross-validated label quality on the same features")
    parser.add_argument("--marks", action="store_true",
                        help="time shared_marks alone on the 60,000 Fashion-MNIST training images")
    args = parser.parse_args(argv)
    command = "python benchmarks/speed_signals.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.marks:
        return _marks(command, args.threads)

    if args.fashion:
        args.npz = str(_fashion_arrays(args.fashion, args.seed))
    if args.npz:
        arrays = np.load(args.npz)
        x, labels = np.asarray(arrays["features"], dtype=np.float32), np.asarray(arrays["labels"], dtype=np.int64)
        probs = np.asarray(arrays["probs"], dtype=np.float32) if "probs" in arrays else None
        sources = None
        what = f"{args.npz}: {x.shape[0]:,} x {x.shape[1]}, {labels.max() + 1} classes"
    else:
        x, labels, probs, sources = synthetic(args.n, args.dim, args.classes, args.seed)
        what = f"synthetic: {args.n:,} x {args.dim}, {args.classes} classes, 100 sources"
    rss_before = _peak_rss_mb()
    t = time.perf_counter()
    with threadpool_limits(args.threads):
        table, info = compute_signals(x, labels, probs=probs, source_ids=sources, signals=default_signals(),
                                      random_state=args.seed)
    total = time.perf_counter() - t
    peak = _peak_rss_mb()

    lines = [
        "# Signal speed",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores visible, {args.threads} thread(s); "
        f"Python {platform.python_version()}, numpy {np.__version__}  ",
        f"Data: {what}",
        "",
        "| signal | seconds |",
        "|---|---|",
        *[f"| {name} | {sec:.2f} |" for name, sec in info["seconds"].items()],
        f"| **all (compute_signals)** | **{total:.1f}** |",
        "",
        f"Peak resident memory: {peak:,.0f} MB (before the signals: {rss_before:,.0f} MB; inputs "
        f"{(x.nbytes + (0 if probs is None else probs.nbytes)) / 2**20:,.0f} MB).",
    ]
    if info["skipped"]:
        lines.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in info["skipped"].items()))
    if args.cleanlab:
        seconds = _cleanlab_reference(x, labels, args.threads, args.seed)
        ours = info["seconds"].get("label_quality", float("nan"))
        lines += ["", f"cleanlab's own label quality on the same features (3-fold logistic regression, then "
                      f"get_label_quality_scores): {seconds:.1f} s; label_quality here: {ours:.1f} s "
                      f"({ours / seconds:.2f}x)."]
    print("\n".join(lines))
    return 0


def _fashion_arrays(n: int, seed: int) -> Path:
    """The reference CNN's activations and probabilities on the first ``n`` Fashion-MNIST training images."""
    path = Path(__file__).resolve().parent / "_work" / f"fashion{n}-seed{seed}.npz"
    if not path.is_file():
        import torch

        from forensics.activations import extract_activations
        from forensics.data import Dataset
        from forensics.models import train_reference_model
        from forensics.sample_data._sources import read_fashion_mnist

        raw = read_fashion_mnist()
        train = Dataset.from_numpy(raw["train_images"][:n], raw["train_labels"][:n].astype(np.int64))
        model = train_reference_model(train, random_state=seed, progress=False)
        with torch.no_grad():
            act = extract_activations(model, train, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, features=np.asarray(act.feature(), dtype=np.float32), labels=train.labels,
                 probs=np.asarray(act.probs, dtype=np.float32))
    return path


def _cleanlab_reference(x: np.ndarray, labels: np.ndarray, threads: int, seed: int) -> float:
    """Seconds of cleanlab's reference label-quality run on ``x``: its own out-of-fold probabilities, then scores."""
    from cleanlab.count import estimate_cv_predicted_probabilities
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression

    t = time.perf_counter()
    with threadpool_limits(threads):
        probs = estimate_cv_predicted_probabilities(x, labels, clf=LogisticRegression(max_iter=1000),
                                                    cv_n_folds=3, seed=seed)
        get_label_quality_scores(labels, probs)
    return time.perf_counter() - t


def _marks(command: str, threads: int) -> int:
    from forensics.sample_data import _sources
    from forensics.signals.marks import shared_marks

    images = _sources.read_fashion_mnist()["train_images"]
    rss_before = _peak_rss_mb()
    t = time.perf_counter()
    with threadpool_limits(threads):
        marks = shared_marks(images)
    seconds = time.perf_counter() - t
    print("\n".join([
        "# Shared marks speed", "", f"Command: `{command.strip()}`  ",
        f"Data: Fashion-MNIST training images, {images.shape[0]:,} x {images.shape[1]}x{images.shape[2]}", "",
        f"shared_marks: {seconds:.1f} s, {len(marks)} mark(s); peak resident memory {_peak_rss_mb():,.0f} MB "
        f"(before: {rss_before:,.0f} MB)."]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
