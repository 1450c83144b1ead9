"""The map panel at scale: building it, what it sends to the browser, and a selection through to the preview.

    python benchmarks/map_panel_scale.py [--n 60000 1000000] [--max-points 60000] [--seed 0]

A synthetic investigation per size, built directly (no model, no signals computed, no UMAP): 4x4 images, 10
classes, 3 sources, 20 clusters of unequal sizes around their own centres on a ring (2% noise), uniform suspicion,
fixed map coordinates. For each size, in one process (the imports warmed first on a small panel):

- ``build``: ``MapPanel(inv, max_points=...)``, and the points it draws;
- ``to_json``: ``len(panel.figure.to_json())``, the figure as plotly writes it (arrays base64-encoded);
- ``sent``: the bytes the widget sends the browser for the figure, as its serializer hands them to the comm
  (numeric arrays as binary buffers, the rest as JSON);
- ``box`` and ``lasso``: a box around the largest cluster and a 300-vertex lasso, each handed to the figure as
  the message plotly's browser code sends (``layout.selections``), until the state holds every sample inside and
  the map has set its opacities; ``reply`` is the bytes the map sends back for that selection;
- ``query``: ``panel.select_query("suspicion > 0.999 and label_name == 'class 3'")``;
- ``dashboard``: building the whole dashboard, then the box handed to its map until the preview's first page is
  rendered (the thumbnails encoded), which is what the analyst waits for after a lasso.

Timings are the median of 3 runs of each selection (the selection is cleared between runs). The browser's own
work (drawing the points, a lasso over them) is measured by ``tests/test_browser.py -k map`` and reported beside
these figures in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd


def synthetic_investigation(n: int, seed: int = 0):
    """An Investigation of n samples with a fixed map (see the module's docstring)."""
    from forensics.data import Dataset
    from forensics.embedding import cluster_table
    from forensics.investigation import Investigation

    rng = np.random.default_rng(seed)
    ids = np.char.add("s", np.char.zfill(np.arange(n).astype(str), 7)).astype(object)
    labels = rng.integers(0, 10, n)
    sources = np.array(["alice", "bob", "carol"], dtype=object)[rng.integers(0, 3, n)]
    weights = np.geomspace(1, 0.005, 20)
    clusters = rng.choice(20, size=n, p=weights / weights.sum())
    clusters[rng.random(n) < 0.02] = -1
    centres = np.c_[np.cos(np.arange(20)), np.sin(np.arange(20))] * 10
    coords = centres[clusters] + rng.normal(0, 1.5, (n, 2))
    images = rng.integers(0, 255, (n, 4, 4), dtype=np.uint8)
    ds = Dataset(kind="image", ids=ids, labels=labels, class_names=[f"class {c}" for c in range(10)],
                 sources=sources, images=images, hashes=np.full(n, "0" * 32, dtype=object))
    suspicion = rng.random(n)
    reasons = np.where(suspicion > 0.99, "high loss; knn label disagreement", "").astype(object)
    signals = pd.DataFrame({"loss_score": suspicion, "suspicion": suspicion, "reasons": reasons},
                           index=pd.Index(ids))
    table = cluster_table(clusters, labels, ids=ids, sources=sources, suspicion=suspicion,
                          class_names=ds.class_names)
    return Investigation(ds, signals=signals, features=np.zeros((n, 1), np.float32),
                         map_builder=lambda *a, **k: SimpleNamespace(coords=coords, clusters=clusters, table=table))


def wire_bytes(value) -> int:
    """Bytes of a widget value as plotly's serializer hands it to the comm: binary buffers plus JSON for the rest."""
    from plotly.serializers import _py_to_js

    buffers = 0

    def strip(v):
        nonlocal buffers
        if isinstance(v, dict):
            if isinstance(v.get("buffer"), memoryview):
                buffers += v["buffer"].nbytes
                return {k: x for k, x in v.items() if k != "buffer"}
            return {k: strip(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strip(x) for x in v]
        return v

    rest = strip(_py_to_js(value, None))
    return buffers + len(json.dumps(rest, default=str))


def _median_seconds(run, reset, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        reset()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _lasso_path(k: int = 300) -> tuple[str, np.ndarray]:
    """A wavy 300-vertex lasso around the ring's right half, as plotly writes it."""
    a = np.linspace(-np.pi / 2, np.pi / 2, k)
    r = 11 + 2 * np.sin(7 * a)
    poly = np.round(np.c_[r * np.cos(a), r * np.sin(a)], 4)
    return "M" + "L".join(f"{x},{y}" for x, y in poly) + "Z", poly


def _shape_message(shape: dict) -> dict:
    return {"source_view_id": "bench", "relayout_data": {"selections": [{"xref": "x", "yref": "y", **shape}]}}


def measure(n: int, max_points: int, seed: int) -> dict:
    from forensics.panels import MapPanel, dashboard

    row: dict = {"n": n}
    t0 = time.perf_counter()
    inv = synthetic_investigation(n, seed)
    _ = inv.map
    row["investigation_s"] = time.perf_counter() - t0
    x, y = inv.map["x"].to_numpy(), inv.map["y"].to_numpy()

    t0 = time.perf_counter()
    panel = MapPanel(inv, max_points=max_points)
    row["build_s"] = time.perf_counter() - t0
    row["drawn"] = len(panel.drawing.drawn)
    row["to_json_mb"] = len(panel.figure.to_json()) / 1e6
    row["sent_mb"] = wire_bytes(panel.figure._widget_data) / 1e6

    fig, state = panel.figure, panel.state
    sent: list[int] = []
    fig.observe(lambda ch: ch["new"] and sent.append(wire_bytes(ch["new"])),
                names=["_py2js_restyle", "_py2js_update", "_py2js_relayout"])
    box = {"type": "rect", "x0": 7.0, "x1": 12.5, "y0": -2.5, "y1": 2.5}
    want = np.flatnonzero((x >= 7) & (x <= 12.5) & (y >= -2.5) & (y <= 2.5))

    def select(shape: dict) -> None:
        # Each run starts from nothing selected and no shape, as a fresh lasso does.
        fig._js2py_relayout = _shape_message(shape)

    def reset() -> None:
        state.clear_selection()
        fig.layout.selections = ()
        sent.clear()

    row["box_s"] = _median_seconds(lambda: select(box), reset)
    assert np.array_equal(state.positions, want), "the box did not select every sample inside it"
    row["selected"] = len(want)
    row["reply_kb"] = sum(sent) / 1e3
    path, _ = _lasso_path()
    row["lasso_s"] = _median_seconds(lambda: select({"type": "path", "path": path}), reset)
    row["lasso_selected"] = len(state.positions)
    query = "suspicion > 0.999 and label_name == 'class 3'"
    row["query_s"] = _median_seconds(lambda: panel.select_query(query), state.clear_selection)
    row["query_selected"] = len(state.positions)

    t0 = time.perf_counter()
    dash = dashboard(inv, max_points=max_points)
    row["dashboard_s"] = time.perf_counter() - t0
    dfig = dash.map.figure

    def select_to_preview() -> None:
        dfig._js2py_relayout = _shape_message(box)
        assert dash.preview.shown_ids and f"<b>{len(want)}</b> selected" in dash.preview.summary.value

    def reset_dash() -> None:
        dash.state.clear_selection()
        dfig.layout.selections = ()

    row["preview_s"] = _median_seconds(select_to_preview, reset_dash)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[60_000, 1_000_000])
    parser.add_argument("--max-points", type=int, default=None,
                        help="the map's drawing budget (default: MapPanel's own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from forensics.panels import MapPanel
    from forensics.panels.map import MAX_POINTS

    max_points = MAX_POINTS if args.max_points is None else args.max_points
    started = time.perf_counter()
    MapPanel(synthetic_investigation(2_000, args.seed))  # imports and first-call costs, outside the figures
    rows = [measure(n, max_points, args.seed) for n in args.n]

    command = shlex.join(["python", "benchmarks/map_panel_scale.py", *sys.argv[1:]])
    print(f"Command: `{command}`  ")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, load average "
          f"{os.getloadavg()[0]:.1f}; Python {platform.python_version()}; max_points {max_points:,}; "
          f"total {time.perf_counter() - started:.0f} s\n")
    print("| samples | drawn | build (s) | to_json (MB) | sent to the browser (MB) | box: selected | box -> state (s) "
          "| reply (kB) | 300-vertex lasso (s) | query (s) | dashboard build (s) | box -> preview (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['drawn']:,} | {r['build_s']:.2f} | {r['to_json_mb']:.1f} | {r['sent_mb']:.1f} | "
              f"{r['selected']:,} | {r['box_s']:.3f} | {r['reply_kb']:.0f} | {r['lasso_s']:.3f} | "
              f"{r['query_s']:.2f} | {r['dashboard_s']:.1f} | {r['preview_s']:.3f} |")


if __name__ == "__main__":
    main()
