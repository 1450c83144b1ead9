"""Save, load, review and export of a large investigation: seconds and peak memory per stage.

    python benchmarks/scale_store.py [--n 100000 1000000] [--dim 128] [--work DIR]

A synthetic investigation (short texts, 10 classes, 1,000 sources, n x dim float32 features, a signals table of six
scores, a suspicion and reasons) is built directly, without computing signals, and saved; then each stage runs in
a fresh process on the saved folder:

- ``save``: the first save of the investigation just built (the build itself is timed apart);
- ``load``: ``Investigation.load``, then the first read of one row of the features;
- ``flag + save``: after a load, 1,000 samples flagged and the investigation saved again (the bytes of the files
  that save wrote are counted);
- ``export``: after a load, the 1,000 marked rows exported as CSV, Parquet and JSON;
- ``review``: the saved investigation opened only to read its review decisions, with ``Investigation.read_review``
  and with a full load.

Peak memory is the process's peak resident set size (``VmHWM``, file-backed pages of memory-mapped files
included) over the stage alone: the peak is reset (``/proc/self/clear_refs``) when the stage starts, after the
imports and whatever the stage needs first (the build, a load). ``start`` is the resident size at that moment.
Linux only. Files are read from a warm page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_FLAG = 1_000


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class _Stage:
    """Time one stage and its peak resident memory, the peak reset at the start."""

    def __init__(self, rows: list[dict], name: str, note: str = "") -> None:
        self.rows, self.name, self.note = rows, name, note

    def __enter__(self) -> _Stage:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        self.start_mb = _rss_mb("VmRSS")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.rows.append({"stage": self.name, "seconds": time.perf_counter() - self.t0,
                              "start_mb": self.start_mb, "peak_mb": _rss_mb("VmHWM"), "note": self.note})


def _build(n: int, dim: int):
    import numpy as np
    import pandas as pd

    from forensics.data import Dataset
    from forensics.investigation import Investigation

    rng = np.random.default_rng(0)
    sources = np.array([f"src-{s:03d}" for s in range(1000)], dtype=object)[rng.integers(0, 1000, n)]
    ds = Dataset.from_texts([f"text {i} w{i % 97}" for i in range(n)], rng.integers(0, 10, n),
                            ids=[f"s{i:07d}" for i in range(n)], sources=sources,
                            class_names=[f"class-{c}" for c in range(10)])
    index = pd.Index(ds.ids, name="sample_id", dtype=object)
    scores = {f"{name}_score": rng.random(n) for name in
              ("loss", "label_quality", "spectral", "neighbors", "duplicates", "sources")}
    suspicion = rng.random(n)
    reasons = np.where(suspicion > 0.99, "high loss; spectral outlier", "").astype(object)
    signals = pd.DataFrame({**scores, "suspicion": suspicion, "reasons": reasons}, index=index)
    samples = ds.to_frame()
    samples["prediction"] = rng.integers(0, 10, n)
    samples["confidence"] = rng.random(n)
    features = rng.standard_normal((n, dim), dtype=np.float32)
    return Investigation(ds, signals=signals, samples=samples, features=features,
                         params={"layer": "synthetic", "random_state": 0})


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_size) for p in folder.iterdir() if p.is_file()}


def _run_stage(stage: str, folder: Path, n: int, dim: int) -> list[dict]:
    from forensics.investigation import Investigation

    rows: list[dict] = []
    if stage == "save":
        t0 = time.perf_counter()
        inv = _build(n, dim)
        rows.append({"stage": "build (not a store stage)", "seconds": time.perf_counter() - t0,
                     "start_mb": float("nan"), "peak_mb": _rss_mb("VmHWM"), "note": ""})
        with _Stage(rows, "save"):
            inv.save(folder)
        size = sum(s for _, s in _files(folder).values())
        rows[-1]["note"] = f"folder {size / 1e6:,.0f} MB; resident after it {_rss_mb('VmRSS'):,.0f} MB"
    elif stage == "load":
        with _Stage(rows, "load"):
            inv = Investigation.load(folder)
        with _Stage(rows, "first use of the features (one row read)"):
            float(inv.features[n // 2].sum())
    elif stage == "flag_save":
        inv = Investigation.load(folder)
        before = _files(folder)
        ids = inv.dataset.ids[:: max(1, n // N_FLAG)][:N_FLAG]
        with _Stage(rows, f"flag {len(ids):,} + save"):
            inv.flag(ids, note="benchmark", who="bench")
            inv.save(folder)
        after = _files(folder)
        written = {k: v for k, v in after.items() if before.get(k, (None,))[0] != v[0]}
        rows[-1]["note"] = (f"wrote {sum(s for _, s in written.values()) / 1e6:,.1f} MB "
                            f"({', '.join(sorted(written))})")
    elif stage == "export":
        inv = Investigation.load(folder)
        marked = int(inv.counts()[["suspected", "confirmed"]].sum())
        for fmt in ("csv", "parquet", "json"):
            with _Stage(rows, f"export {marked:,} marked rows, {fmt}"):
                inv.export(folder.parent / f"export.{fmt}", include="marked")
    elif stage == "review":
        with _Stage(rows, "open to read the review: Investigation.read_review"):
            review = Investigation.read_review(folder)
        rows[-1]["note"] = f"{int((review['status'] != 'unreviewed').sum()):,} decided"
    elif stage == "review_by_load":
        with _Stage(rows, "open to read the review: load, then .review"):
            review = Investigation.load(folder).review
        rows[-1]["note"] = f"{int((review['status'] != 'unreviewed').sum()):,} decided"
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    return rows


STAGES = ("save", "load", "flag_save", "export", "review", "review_by_load")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="rows (one run each)")
    parser.add_argument("--dim", type=int, default=128, help="feature columns")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:  # one stage, in this fresh process
        print(json.dumps(_run_stage(args.stage, args.folder, args.n[0], args.dim)))
        return

    work = Path(tempfile.mkdtemp(prefix="scale-store-", dir=args.work))
    # The stages import the toolkit of this checkout, not whichever one is installed.
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(f"Save, load and export of a large investigation ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs visible, Python {platform.python_version()}); command: `{command}`\n")
    print("| rows | stage | seconds | start MB | peak MB | note |")
    print("|---:|---|---:|---:|---:|---|")
    try:
        for n in args.n:
            folder = work / f"inv-{n}" / "inv"
            folder.parent.mkdir(parents=True)
            for stage in STAGES:
                out = subprocess.run([sys.executable, __file__, "--stage", stage, "--folder", str(folder),
                                      "--n", str(n), "--dim", str(args.dim)],
                                     capture_output=True, text=True, check=False, env=env)
                if out.returncode != 0:
                    raise SystemExit(f"stage {stage} at n={n} failed:\n{out.stderr}")
                for row in json.loads(out.stdout.strip().splitlines()[-1]):
                    start = "" if row["start_mb"] != row["start_mb"] else f"{row['start_mb']:,.0f}"
                    print(f"| {n:,} | {row['stage']} | {row['seconds']:.2f} | {start} | {row['peak_mb']:,.0f} | "
                          f"{row['note']} |", flush=True)
            shutil.rmtree(folder.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
