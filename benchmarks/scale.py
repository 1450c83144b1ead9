"""Scale: the cost of an investigation from 10,000 to 1,000,000 samples, and what sampling costs in quality.

Images: the bundled image data's 12,000 Fashion-MNIST training images (600 of them carrying the planted 3x3
patch, relabelled) augmented to ``n`` (each copy: a random original with its label and ground truth, its
brightness scaled by 0.85-1.15 and gray noise of +-12 added, the patch left where it is), written to a
memory-mapped ``.npy`` a chunk at a time. Every stage then runs in a fresh process (so that its peak resident
memory is its own), reading the previous stage's files:

    extract   the bundled model's 128-d activations, chunk by chunk into the on-disk store
    signals   every default signal on the features and probabilities (no payloads: duplicates on features)
    map       the 2-D map and the clusters (UMAP fit on 20,000 rows, the rest transformed; HDBSCAN on an 8-D
              UMAP, fit on a sample, the rest assigned by approximate prediction)

    python benchmarks/scale.py curve [--sizes 10000 100000 1000000]
    python benchmarks/scale.py wide [--n 1000000] [--dim 512]    # features given directly, no model
    python benchmarks/scale.py quality [--n 100000]               # the sampled map and clusters against full fits
    python benchmarks/scale.py dask [--n 200000]                  # extraction on a LocalCluster, 1 and 2 workers
    python benchmarks/scale.py investigate [--n 1000000]          # investigate, map, flag, save, load, export

Quality is measured against the ground truth: r@2x (the share of the planted samples among the top twice their
number) of the suspicion, and of the map's own ranking (samples of small clusters far from their label's bulk
first, by that distance). Results are printed as Markdown with the command that produced them; paste them into
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path(__file__).resolve().parent / "_work" / "scale"


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _load(n: int, work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The augmented images (memory-mapped), labels and ground truth of size ``n``, built on first use."""
    images_path = work / f"images-{n}.npy"
    meta_path = work / f"meta-{n}.npz"
    if not meta_path.is_file():
        from forensics import sample_data

        data = sample_data.load("image_backdoor")
        truth = sample_data.load_truth("image_backdoor").reindex(data.train.ids)
        base, base_labels = data.train.images, data.train.labels
        base_poison = truth["is_poison"].to_numpy(dtype=bool)
        rng = np.random.default_rng(0)
        pick = rng.permutation(len(base))[:n] if n <= len(base) else rng.integers(0, len(base), n)
        out = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(n, *base.shape[1:]))
        for start in range(0, n, 50_000):
            rows = pick[start : start + 50_000]
            im = base[rows].astype(np.float32) * rng.uniform(0.85, 1.15, (len(rows), 1, 1))
            im += rng.integers(-12, 13, im.shape)
            out[start : start + len(rows)] = np.clip(im, 0, 255).astype(np.uint8)
        out.flush()
        del out
        np.savez(meta_path, labels=base_labels[pick], is_poison=base_poison[pick])
    meta = np.load(meta_path)
    return np.load(images_path, mmap_mode="r"), meta["labels"], meta["is_poison"]


def _stage(name: str, n: int, work: Path, extra: dict) -> dict:
    """Run one stage in this (fresh) process; return its seconds, peak memory and results."""
    from forensics.evaluate import recall_at_k_times_poison

    images, labels, is_poison = _load(n, work)
    out: dict = {"stage": name, "n": n}
    t = time.perf_counter()
    if name == "data":
        pass
    elif name == "extract":
        from forensics import sample_data
        from forensics.activations import extract_activations
        from forensics.data import Dataset

        model, _ = sample_data.load("image_backdoor").model()
        t = time.perf_counter()
        ds = Dataset.from_numpy(images, labels, ids=np.char.add("s", np.arange(n).astype(str)))
        out["dataset_seconds"] = round(time.perf_counter() - t, 1)
        act = extract_activations(model, ds, cache_dir=work / f"store-{n}", batch_size=512, progress=False)
        np.save(work / f"features-{n}.npy", act.feature())
        np.save(work / f"probs-{n}.npy", act.probs)
        out["dim"] = act.feature().shape[1]
    elif name == "signals":
        from forensics.signals.compute import compute_signals

        x = np.load(work / f"{extra.get('prefix', 'features')}-{n}.npy", mmap_mode="r")
        probs_path = work / f"probs-{n}.npy"
        probs = np.load(probs_path, mmap_mode="r") if extra.get("prefix", "features") == "features" else None
        table, info = compute_signals(x, labels, probs=probs)
        np.save(work / f"suspicion-{extra.get('prefix', 'features')}-{n}.npy", table["suspicion"].to_numpy())
        out["seconds_by_signal"] = info["seconds"]
        out["r@2x"] = round(recall_at_k_times_poison(table["suspicion"].to_numpy(), is_poison), 3)
    elif name == "map":
        from forensics.embedding import build_map

        prefix = extra.get("prefix", "features")
        x = np.load(work / f"{prefix}-{n}.npy", mmap_mode="r")
        full = bool(extra.get("full"))
        options = {"fit_sample": n, "cluster_fit_sample": n} if full else {}
        suspicion_path = work / f"suspicion-{prefix}-{n}.npy"
        suspicion = np.load(suspicion_path) if suspicion_path.is_file() else None
        m = build_map(x, labels, ids=np.arange(n).astype(str), suspicion=suspicion, **options)
        np.save(work / f"clusters-{prefix}-{n}{'-full' if full else ''}.npy", m.clusters)
        out["n_clusters"] = int(m.params["n_clusters"])
        out["noise_share"] = round(float(m.params["noise_share"]), 3)
        out["r@2x"] = round(recall_at_k_times_poison(_map_ranking(m), is_poison), 3)
    elif name == "investigate":
        import forensics
        from forensics import sample_data
        from forensics.data import Dataset
        from forensics.investigation import Investigation

        model, _ = sample_data.load("image_backdoor").model()
        steps = {}
        t1 = time.perf_counter()
        ds = Dataset.from_numpy(images, labels, ids=np.char.add("s", np.arange(n).astype(str)))
        inv = forensics.investigate(ds, model, cache_dir=work / f"store-{n}", batch_size=512, progress=False)
        steps["investigate (activations from the store)"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        _ = inv.clusters
        steps["map + clusters"] = time.perf_counter() - t1
        top = inv.signals["suspicion"].nlargest(1000).index
        inv.flag(top, note="top 1,000")
        t1 = time.perf_counter()
        inv.save(work / f"inv-{n}", overwrite=True)
        steps["save"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        loaded = Investigation.load(work / f"inv-{n}")
        steps["load"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        loaded.export(work / f"flagged-{n}.csv")
        steps["export the 1,000 flagged"] = time.perf_counter() - t1
        out["steps"] = {k: round(v, 1) for k, v in steps.items()}
        out["r@2x"] = round(recall_at_k_times_poison(inv.signals["suspicion"].to_numpy(), is_poison), 3)
    out["seconds"] = round(time.perf_counter() - t, 1)
    out["peak_rss_gb"] = round(_peak_rss_gb(), 2)
    return out


def _map_ranking(m) -> np.ndarray:
    """The map's own ranking of the samples: those in small clusters far from their label's bulk first (by that
    distance), then every other clustered sample, then noise."""
    table = m.table.drop(index=-1, errors="ignore")
    small = table["is_small"].to_numpy(dtype=bool)
    far = table["distance_to_label_bulk"].fillna(0).to_numpy()
    score_of_cluster = np.where(small, 1.0 + far, 0.5)
    lookup = dict(zip(table.index.to_numpy(), score_of_cluster, strict=True))
    return np.array([lookup.get(c, 0.0) for c in m.clusters], dtype=np.float64)


def _run(stage: str, n: int, work: Path, **extra) -> dict:
    """One stage in a fresh process, so that the peak memory it reports is its own."""
    cmd = [sys.executable, __file__, "_stage", stage, "--n", str(n), "--work", str(work), "--extra", json.dumps(extra)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {stage} {n:,}: {result}", file=sys.stderr, flush=True)
    return result


def _header(argv: list[str]) -> None:
    print(f"Command: `python benchmarks/scale.py {shlex.join(argv)}`  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores visible; load average at start "
          f"{os.getloadavg()[0]:.1f}; Python {platform.python_version()}\n")


def curve(sizes: list[int], work: Path, argv: list[str]) -> None:
    _header(argv)
    print("| samples | build images (s) | extract (s) | extract peak (GB) | signals (s) | signals peak (GB) | "
          "map + clusters (s) | map peak (GB) | total (s) | suspicion r@2x | map r@2x |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        data = _run("data", n, work)
        ext = _run("extract", n, work)
        sig = _run("signals", n, work)
        mp = _run("map", n, work)
        total = ext["seconds"] + sig["seconds"] + mp["seconds"]
        print(f"| {n:,} | {data['seconds']:.0f} | {ext['seconds']:.0f} | {ext['peak_rss_gb']:.2f} | "
              f"{sig['seconds']:.0f} | {sig['peak_rss_gb']:.2f} | {mp['seconds']:.0f} | {mp['peak_rss_gb']:.2f} | "
              f"{total:.0f} | {sig['r@2x']:.3f} | {mp['r@2x']:.3f} |", flush=True)
        slow = sorted(sig["seconds_by_signal"].items(), key=lambda kv: -kv[1])[:3]
        print(f"|  | slowest signals: {', '.join(f'{k} {v:.0f} s' for k, v in slow)} |||||||||", flush=True)


def wide(n: int, dim: int, work: Path, argv: list[str]) -> None:
    """Features given directly: the 128-d activations of the augmented images, lifted to ``dim`` columns by a
    fixed random rotation plus noise (a wider layer's features, same structure)."""
    _header(argv)
    feats = work / f"features-{n}.npy"
    if not feats.is_file():
        _run("data", n, work)
        _run("extract", n, work)
    path = work / f"wide{dim}-{n}.npy"
    if not path.is_file():
        x = np.load(feats, mmap_mode="r")
        rng = np.random.default_rng(1)
        lift = np.linalg.qr(rng.normal(size=(dim, dim)))[0][: x.shape[1]].astype(np.float32)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
        for start in range(0, n, 100_000):
            block = np.asarray(x[start : start + 100_000]) @ lift
            out[start : start + len(block)] = block + rng.normal(scale=0.01, size=block.shape).astype(np.float32)
        out.flush()
        del out
    sig = _run("signals", n, work, prefix=f"wide{dim}")
    mp = _run("map", n, work, prefix=f"wide{dim}")
    print(f"| features given | {n:,} x {dim} | signals {sig['seconds']:.0f} s (peak {sig['peak_rss_gb']:.2f} GB) | "
          f"map + clusters {mp['seconds']:.0f} s (peak {mp['peak_rss_gb']:.2f} GB) | total "
          f"{sig['seconds'] + mp['seconds']:.0f} s | suspicion r@2x {sig['r@2x']:.3f} | map r@2x {mp['r@2x']:.3f} |")
    slow = sorted(sig["seconds_by_signal"].items(), key=lambda kv: -kv[1])[:3]
    print(f"\nSlowest signals: {', '.join(f'{k} {v:.0f} s' for k, v in slow)}")


def quality(n: int, work: Path, argv: list[str]) -> None:
    """The sampled map and clusters against a full fit (UMAP on every row, HDBSCAN on every row), and the
    approximate neighbour graph against the exact one, on the same ``n`` rows."""
    _header(argv)
    if not (work / f"suspicion-features-{n}.npy").is_file():
        _run("data", n, work)
        _run("extract", n, work)
        _run("signals", n, work)
    sampled = _run("map", n, work)
    full = _run("map", n, work, full=True)
    from sklearn.metrics import adjusted_rand_score

    a = np.load(work / f"clusters-features-{n}.npy")
    b = np.load(work / f"clusters-features-{n}-full.npy")
    print("| map and clusters | seconds | peak (GB) | clusters | noise share | map r@2x |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("sampled (default)", sampled), ("full fit", full)):
        print(f"| {name} | {r['seconds']:.0f} | {r['peak_rss_gb']:.2f} | {r['n_clusters']} | {r['noise_share']:.3f} | "
              f"{r['r@2x']:.3f} |")
    print(f"\nAdjusted Rand index between the two clusterings: {adjusted_rand_score(a, b):.3f}; "
          f"map r@2x difference {abs(sampled['r@2x'] - full['r@2x']):.3f} (target <= 0.02).")
    knn = _run("knn", n, work)
    print(f"\nNeighbour graph at {n:,} rows (32 PCA columns of the unit features, k = 10): exact "
          f"{knn['exact_seconds']:.0f} s, NN-descent {knn['approximate_seconds']:.0f} s, share of the exact "
          f"neighbours found {knn['recall']:.3f}; suspicion r@2x exact {knn['r@2x exact']:.3f}, approximate "
          f"{knn['r@2x approximate']:.3f}.")


def _knn_stage(n: int, work: Path) -> dict:
    """Exact against approximate neighbours, and the suspicion computed on each."""
    from forensics.evaluate import recall_at_k_times_poison
    from forensics.signals import neighbors
    from forensics.signals.compute import compute_signals

    _, labels, is_poison = _load(n, work)
    x = np.load(work / f"features-{n}.npy", mmap_mode="r")
    probs = np.load(work / f"probs-{n}.npy", mmap_mode="r")
    z = neighbors.reduce_features(x)
    out: dict = {}
    t = time.perf_counter()
    _, exact = neighbors.nearest_neighbors(z, 10)
    out["exact_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    _, approx = neighbors._approximate_neighbors(z, 10, 0)
    out["approximate_seconds"] = round(time.perf_counter() - t, 1)
    out["recall"] = round(float(np.mean((exact[:, :, None] == approx[:, None, :]).any(axis=2))), 3)
    table, _ = compute_signals(x, labels, probs=probs)
    out["r@2x exact"] = round(recall_at_k_times_poison(table["suspicion"].to_numpy(), is_poison), 3)
    limit = neighbors.EXACT_MAX_ROWS
    neighbors.EXACT_MAX_ROWS = 0
    try:
        table, _ = compute_signals(x, labels, probs=probs)
    finally:
        neighbors.EXACT_MAX_ROWS = limit
    out["r@2x approximate"] = round(recall_at_k_times_poison(table["suspicion"].to_numpy(), is_poison), 3)
    out["peak_rss_gb"] = round(_peak_rss_gb(), 2)
    return out


def _dask_stage(n: int, work: Path, workers: int) -> dict:
    """Extraction of ``n`` images on a LocalCluster of ``workers`` single-threaded worker processes."""
    from distributed import Client, LocalCluster

    from forensics import sample_data
    from forensics.activations import extract_activations
    from forensics.data import Dataset

    images, labels, _ = _load(n, work)
    model, _ = sample_data.load("image_backdoor").model()
    ds = Dataset.from_numpy(images, labels, ids=np.char.add("s", np.arange(n).astype(str)))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("torch").set_num_threads(1))
        t = time.perf_counter()
        act = extract_activations(model, ds, client=client, chunk_size=25_000, batch_size=512, progress=False)
        seconds = time.perf_counter() - t
    local = np.load(work / f"features-{n}.npy", mmap_mode="r") if (work / f"features-{n}.npy").is_file() else None
    same = None if local is None else float(np.abs(np.asarray(local) - act.feature()).max())
    return {"seconds": round(seconds, 1), "max_abs_difference_from_local": same}


def dask(n: int, work: Path, argv: list[str]) -> None:
    _header(argv)
    _run("data", n, work)
    rows = {w: _run("dask", n, work, workers=w) for w in (1, 2)}
    print("| workers (1 thread each) | extract seconds | speed-up |")
    print("|---:|---:|---:|")
    for w, r in rows.items():
        print(f"| {w} | {r['seconds']:.0f} | {rows[1]['seconds'] / r['seconds']:.2f}x |")


def end_to_end(n: int, work: Path, argv: list[str]) -> None:
    """``forensics.investigate`` on the images (activations read back from the store the curve filled, the model
    and data checked as in any run), then the map, a flag of the 1,000 most suspicious, save, load and export."""
    _header(argv)
    _run("data", n, work)
    r = _run("investigate", n, work)
    print("| samples | " + " | ".join(r["steps"]) + " | peak (GB) | suspicion r@2x |")
    print("|---:|" + "---:|" * (len(r["steps"]) + 2))
    print(f"| {n:,} | " + " | ".join(f"{v:.0f} s" for v in r["steps"].values())
          + f" | {r['peak_rss_gb']:.2f} | {r['r@2x']:.3f} |")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("curve")
    c.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    w = sub.add_parser("wide")
    w.add_argument("--n", type=int, default=1_000_000)
    w.add_argument("--dim", type=int, default=512)
    q = sub.add_parser("quality")
    q.add_argument("--n", type=int, default=100_000)
    d = sub.add_parser("dask")
    d.add_argument("--n", type=int, default=200_000)
    e = sub.add_parser("investigate")
    e.add_argument("--n", type=int, default=1_000_000)
    s = sub.add_parser("_stage")
    s.add_argument("stage")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--extra", default="{}")
    for p in (c, w, q, d, e):
        p.add_argument("--work", default=str(WORK))
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.what == "_stage":
        extra = json.loads(args.extra)
        if args.stage == "knn":
            result = _knn_stage(args.n, work)
        elif args.stage == "dask":
            result = _dask_stage(args.n, work, int(extra["workers"]))
        else:
            result = _stage(args.stage, args.n, work, extra)
        print(json.dumps(result))
    elif args.what == "curve":
        curve(args.sizes, work, argv)
    elif args.what == "wide":
        wide(args.n, args.dim, work, argv)
    elif args.what == "quality":
        quality(args.n, work, argv)
    elif args.what == "investigate":
        end_to_end(args.n, work, argv)
    else:
        dask(args.n, work, argv)


if __name__ == "__main__":
    main()
