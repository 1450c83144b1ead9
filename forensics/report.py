"""A self-contained HTML report of an investigation, for a person reading the result of a headless scan.

:func:`render_report` returns one HTML page that works offline: plotly's JavaScript is inlined once, images are
PNG data URLs encoded here from the uint8 arrays, and there is no other external resource. Every string that
comes from the data (ids, texts, labels, class names, sources, reasons, trigger descriptions, parameters) is
escaped with :func:`forensics.html.escape_html` before it meets markup; plotly hover text is escaped with
``quote=False`` (plotly shows ``&quot;`` literally).

:func:`scan_verdict` is the pass/fail rule of ``forensics scan``: the share of samples whose suspicion reaches the
threshold, against the largest share allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import InputError
from .html import escape_html, highlight, png_data_url
from .signals.combine import DEFAULT_THRESHOLD, LABEL_GATE
from .signals.registry import get_signal, reason_text, registered_signals

if TYPE_CHECKING:
    from .investigation import Investigation

__all__ = ["Verdict", "render_report", "scan_verdict"]

#: Samples listed in the "most suspicious" and "changed samples" sections.
DEFAULT_TOP = 40
#: Rows of the cluster and source tables.
MAX_TABLE_ROWS = 30
#: Longer side of a sample thumbnail, in pixels (nearest-neighbour upscaled).
THUMB_SIZE = 84
#: Characters of a text shown in a table (a window around the trigger when there is one).
TEXT_CHARS = 320


@dataclass(frozen=True)
class Verdict:
    """The outcome of a scan.

    Attributes
    ----------
    failed : bool
        ``share_flagged > fail_above``, or a trigger was confirmed on the model (with ``fail_on_trigger``).
        Never without ``fail_above``.
    n_flagged : int
        Samples with ``suspicion >= threshold``.
    share_flagged : float
        ``n_flagged / n``.
    threshold : float
    fail_above : float or None
    confirmed_triggers : list of str
        Descriptions of the trigger candidates confirmed on the model.
    text : str
        One sentence for a person (plain text, no markup).
    """

    failed: bool
    n_flagged: int
    share_flagged: float
    threshold: float
    fail_above: float | None
    confirmed_triggers: list[str]
    text: str


def scan_verdict(inv: Investigation, *, threshold: float = DEFAULT_THRESHOLD, fail_above: float | None = None,
                 fail_on_trigger: bool = True) -> Verdict:
    """Whether a scan fails: more than ``fail_above`` (a share, 0..1) of the samples reach ``threshold``, or
    (with ``fail_on_trigger``) a trigger candidate was confirmed on the model.

    A confirmed trigger fails the scan whatever the share: a backdoor planted in many samples raises the bulk
    the suspicion is calibrated on, while the model's own behaviour (the trigger flips predictions) does not
    depend on how many carry it.

    Parameters
    ----------
    inv : Investigation
    threshold : float, default 2
        Suspicion at which a sample counts as flagged. Suspicion is ``-log10`` of the estimated share of clean
        samples scoring as high, so 2 flags about 1% of clean samples by chance.
    fail_above : float in [0, 1], optional
        Largest share of flagged samples allowed. Without it the scan never fails.
    fail_on_trigger : bool, default True
        Fail when ``inv.triggers`` holds a candidate whose verdict is "confirmed".

    Returns
    -------
    Verdict
    """
    threshold = _check_threshold(threshold)
    if fail_above is not None:
        if isinstance(fail_above, bool) or not isinstance(fail_above, (int, float, np.integer, np.floating)) \
                or not 0.0 <= float(fail_above) <= 1.0:
            raise InputError(f"fail_above must be a share between 0 and 1 (0.02 = 2%); got {fail_above!r}")
        fail_above = float(fail_above)
    s = inv.signals["suspicion"].to_numpy(dtype=np.float64)
    n_flagged = int(np.sum(s >= threshold))
    share = n_flagged / len(s)
    trig = inv.triggers
    rows = trig[trig["verdict"] == "confirmed"]
    confirmed = [str(d) for d in rows["description"]]
    base = (f"{n_flagged:,} of {len(s):,} samples ({share:.2%}) reach suspicion >= {threshold:g} "
            f"(about {_clean_rate(threshold)} of clean samples do by chance)")
    described = [f"{d} ({len(ids):,} samples carry it)" for d, ids in zip(confirmed, rows["sample_ids"])]
    found = (f"; {len(confirmed)} trigger(s) confirmed on the model: {', '.join(described[:3])}" if confirmed
             else "")
    pairs = _relabellings(inv.params.get("relabelled_pairs") or [])
    if pairs:
        found += "; relabelled one way: " + ", ".join(short for short, _ in pairs[:3])
    noisy = _label_noise(inv.params, len(s))
    if noisy:
        found += "; " + noisy
    if fail_above is None:
        return Verdict(False, n_flagged, share, threshold, None, confirmed, base + found + ".")
    too_many = share > fail_above
    failed = too_many or (fail_on_trigger and bool(confirmed))
    limit = f"{'more than' if too_many else 'within'} the {fail_above:.2%} allowed"
    text = f"{'FAIL' if failed else 'PASS'}: {base}, {limit}{found}."
    return Verdict(failed, n_flagged, share, threshold, fail_above, confirmed, text)


def _label_noise(params: Mapping[str, Any], n: int) -> str:
    """A phrase where the labels show an attack (the label gate of the combination opened): more labels improbable
    under the model than its own predictions allow, and cleanlab's count of how many are wrong; "" otherwise.

    Said apart from the flagged share: where a model half learned flipped labels (random flips of 17-18% of the
    attack matrix's images), they rank first but few reach the threshold (1.3% flagged), and the count still says how
    many there are."""
    if not _labels_attacked(params):
        return ""
    gate, issues = params["label_gate"], params.get("label_issues")
    size = "" if issues is None else f": about {int(issues):,} ({int(issues) / max(n, 1):.1%}) estimated wrong"
    return (f"more labels are improbable under the model than its own predictions allow (label noise or flipping, "
            f"p = {float(gate):.1e}){size}")


def _labels_attacked(params: Mapping[str, Any]) -> bool:
    """Whether the combination's label gate opened (None: no model probabilities, no gate)."""
    gate = params.get("label_gate")
    return gate is not None and gate < LABEL_GATE


def _relabellings(pairs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The relabellings an investigation found, a short and a long phrase each: one per pair, and one per label
    whose many-to-one rows (test ``"label"``) hold a few lookalikes of several classes."""
    out: list[tuple[str, str]] = []
    many: dict[str, list[dict[str, Any]]] = {}
    for p in pairs:
        if p.get("test", "pair") == "label":
            many.setdefault(p["label_name"], []).append(p)
            continue
        out.append((f"about {p['excess']:.0f} {p['looks_like_name']} as {p['label_name']}",
                    f"{p['label_name']} holds about {p['excess']:.0f} more {p['looks_like_name']} lookalikes than "
                    f"{p['looks_like_name']} holds of it (p = {p['p_value']:.1e})"))
    for label, rows in many.items():
        excess = sum(r["excess"] for r in rows)
        classes = ", ".join(str(r["looks_like_name"]) for r in rows)
        out.append((f"about {excess:.0f} of {len(rows)} class{'es' if len(rows) > 1 else ''} as {label}",
                    f"{label} holds about {excess:.0f} more lookalikes of other classes ({classes}) than they hold "
                    f"of it, a few of each (many-to-one; p = {rows[0]['p_value']:.1e})"))
    return out


def render_report(
    inv: Investigation,
    *,
    diff: Any = None,
    canaries: Any = None,
    title: str = "Data poisoning scan",
    threshold: float = DEFAULT_THRESHOLD,
    fail_above: float | None = None,
    fail_on_trigger: bool = True,
    include_map: bool = True,
    top: int = DEFAULT_TOP,
    run_info: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    verification: Any = None,
) -> str:
    """A self-contained HTML page of an investigation's findings.

    Parameters
    ----------
    inv : Investigation
        With signals; its ``triggers`` are shown when :func:`~forensics.triggers.discover.find_triggers` ran.
    diff : ManifestDiff, optional
        What changed since a baseline manifest (:func:`forensics.integrity.diff`, old = baseline, new = this
        dataset): counts and sources of the changes, a ``changed`` column in the sample tables and a section that
        ranks the changed samples by suspicion.
    canaries : CanaryReport, optional
        The model's accuracy on trusted samples (:func:`forensics.integrity.canary_report`).
    title : str
    threshold : float, default 2
        Suspicion at which a sample counts as flagged (see :func:`scan_verdict`).
    fail_above : float, optional
        Largest share of flagged samples allowed; gives the page its PASS / FAIL verdict.
    fail_on_trigger : bool, default True
        A trigger confirmed on the model fails the verdict too (see :func:`scan_verdict`).
    include_map : bool, default True
        Show the 2-D map (computed here if the investigation has none yet: UMAP takes about a minute on 10^4
        samples). Without it the cluster table is shown only when the map exists already.
    top : int, default 40
        Samples listed in the "most suspicious" and "changed samples" sections.
    run_info : mapping, optional
        Extra facts about the run (command line, input paths, seconds), shown beside ``inv.params``.
    notes : sequence of str
        Remarks shown under the summary (e.g. why trigger search was skipped).
    verification : Verification, optional
        A retraining on the original and the sanitized data (:func:`forensics.verify.verify`): shown before and
        after, side by side.

    Returns
    -------
    str
        The HTML page. Every string from the data is escaped; plotly's JavaScript is inlined once (about 4.5 MB).
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f"top must be a positive integer; got {top!r}")
    verdict = scan_verdict(inv, threshold=threshold, fail_above=fail_above, fail_on_trigger=fail_on_trigger)
    ds = inv.dataset
    signals = inv.signals
    suspicion = signals["suspicion"].to_numpy(dtype=np.float64)
    changed = _changed_kinds(diff, ds.ids) if diff is not None else None
    pattern = _text_trigger_pattern(inv.triggers) if ds.kind == "text" else None

    parts = [_head(title), f"<h1>{escape_html(title)}</h1>",
             f"<p class=meta>Generated {escape_html(_now())} by poison-forensics "
             f"{escape_html(inv.params.get('toolkit_version', ''))}.</p>"]
    parts.append(_summary(inv, verdict, diff, notes))
    parts.append(_next_steps(inv, threshold))
    if diff is not None:
        parts.append(_diff_section(inv, diff, changed, pattern, top))
    if canaries is not None:
        parts.append(_canary_section(canaries))
    map_html, clusters_html = "", ""
    if include_map:
        map_html = _map_section(inv, suspicion, threshold)
    if include_map or inv.has_map:
        clusters_html = _cluster_section(inv.clusters, explained=inv.explain_clusters())
    parts += [map_html, clusters_html]
    order = np.argsort(-np.where(np.isnan(suspicion), -np.inf, suspicion), kind="stable")[:top]
    parts.append(f"<h2 id=suspicious>Most suspicious samples</h2><p>The {len(order)} samples with the highest "
                 "suspicion, with the signals behind it. All flagged samples are in <code>flagged.csv</code>.</p>")
    parts.append(_samples_table(inv, order, changed, pattern))
    parts.append(_trigger_section(inv))
    if verification is not None:
        parts.append(_verification_section(verification))
    parts.append(_source_section(inv, suspicion, threshold))
    parts.append(_params_section(inv, run_info))
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------------ sections
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} th,td{border:1px solid #ddd;padding:3px 6px;
vertical-align:top;text-align:left} th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-size:1.15em;padding:.6em 1em;border-radius:4px}
.fail{background:#fde2e1;border:1px solid #e0726b} .pass{background:#e3f4e1;border:1px solid #77b86f}
.info{background:#eef2fb;border:1px solid #9bb0dc}
td.text{max-width:520px;white-space:pre-wrap;word-break:break-word} mark{background:#ffd54a}
img.thumb{image-rendering:pixelated;border:1px solid #ccc}
.confirmed{color:#b3261e;font-weight:bold} .weak{color:#a05a00}
"""


def _head(title: str, *, css: str = "") -> str:
    """The page's head (``css``: rules of a page's own, after the shared ones) and the opening body tag."""
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><title>{escape_html(title)}</title>"
            f"<style>{_CSS}{css}</style></head><body>")


def _signals_fact(params: Mapping[str, Any]) -> str:
    """Each signal that ran, in the words of the registry, with the parameters set away from its defaults."""
    chosen = params.get("signal_params") or {}
    parts = []
    for name in params.get("signals", []):
        known = name in {spec.name for spec in registered_signals()}
        defaults = get_signal(name).params if known else {}
        changed = [f"{k}={v}" for k, v in (chosen.get(name) or {}).items() if defaults.get(k, object()) != v]
        parts.append(f"{name} ({reason_text(name)}{'; ' + ', '.join(changed) if changed else ''})")
    return "; ".join(parts)


def _summary(inv: Investigation, verdict: Verdict, diff: Any, notes: Sequence[str]) -> str:
    ds = inv.dataset
    params = inv.params
    css = "info" if verdict.fail_above is None else ("fail" if verdict.failed else "pass")
    facts = [
        ("samples", f"{len(ds):,} {ds.kind}s"),
        ("classes", f"{len(ds.class_names)}: " + ", ".join(ds.class_names[:20])
         + (" ..." if len(ds.class_names) > 20 else "")),
        ("sources", "none given" if ds.sources is None else f"{len(set(ds.sources)):,}"),
        ("flagged", f"{verdict.n_flagged:,} ({verdict.share_flagged:.2%}) with suspicion >= {verdict.threshold:g}"),
        ("allowed", "no limit (--fail-above not given)" if verdict.fail_above is None
         else f"at most {verdict.fail_above:.2%} flagged"),
        ("model", "reference model trained on this dataset" if params.get("reference_model_trained")
         else "the model given"),
        ("layer", str(params.get("layer", ""))),
        ("signals", _signals_fact(params)),
    ]
    skipped = params.get("skipped_signals") or {}
    if skipped:
        facts.append(("signals skipped", "; ".join(f"{k}: {v}" for k, v in skipped.items())))
    pairs = _relabellings(params.get("relabelled_pairs") or [])
    if pairs:
        facts.append(("one-way relabelling", "; ".join(long for _, long in pairs[:5])))
    if params.get("label_issues") is not None:
        count = (f"about {int(params['label_issues']):,} estimated wrong (cleanlab's count on out-of-fold "
                 "predictions: ambiguous samples count too, and labels the model memorized do not)")
        gated = params.get("label_gate") is not None
        read = "; no more improbable under the model than its own predictions allow" if gated else ""
        facts.append(("labels", _label_noise(params, len(ds)) or count + read))
    trig = inv.triggers
    if len(trig):
        confirmed = trig[trig["verdict"] == "confirmed"]
        facts.append(("triggers", f"{len(trig)} candidate(s), {len(confirmed)} confirmed on the model"
                      + ("".join(f"; {d}" for d in confirmed["description"].head(3)) if len(confirmed) else "")))
    if diff is not None:
        facts.append(("changes since baseline", f"{len(diff.added):,} added, {len(diff.removed):,} removed, "
                      f"{len(diff.relabelled):,} relabelled, {len(diff.modified):,} modified, "
                      f"{len(diff.moved_source):,} moved source"))
    rows = "".join(f"<tr><th>{escape_html(k)}</th><td>{escape_html(v)}</td></tr>" for k, v in facts)
    out = [f"<h2 id=summary>Summary</h2><p class='verdict {css}'>{escape_html(verdict.text)}</p>",
           f"<p>Suspicion is <code>-log10</code> of the estimated share of clean samples that score as high: "
           f"suspicion &gt;= 2 flags about 1% of clean samples, 3 about 0.1%. A clean dataset still has about "
           f"{escape_html(_clean_rate(verdict.threshold))} of its samples at or above the threshold "
           f"{verdict.threshold:g}; a poisoned one has more, concentrated in a cluster, a class or a source.</p>",
           f"<table>{rows}</table>"]
    out += [f"<p class=meta>{escape_html(n)}</p>" for n in notes]
    return "\n".join(out)


def _diff_section(inv: Investigation, diff: Any, changed: pd.Series, pattern: re.Pattern[str] | None, top: int) -> str:
    counts = pd.DataFrame({"samples": [len(diff.added), len(diff.removed), len(diff.relabelled),
                                       len(diff.modified), len(diff.moved_source), diff.n_unchanged]},
                          index=pd.Index(["added", "removed", "relabelled", "modified", "moved source",
                                          "unchanged"], name="change"))
    out = ["<h2 id=changes>Changes since the baseline</h2>",
           f"<p>Baseline manifest: {diff.n_old:,} samples (made {escape_html(f'{diff.old_created:%Y-%m-%d %H:%M}')}"
           f" UTC); this dataset: {diff.n_new:,} samples. The whole dataset gives the signals their context; the "
           "changed samples are ranked below.</p>", _table(counts)]
    if diff.classes_added or diff.classes_removed:
        out.append(f"<p>Classes added: {escape_html(', '.join(diff.classes_added) or 'none')}; removed: "
                   f"{escape_html(', '.join(diff.classes_removed) or 'none')}.</p>")
    by_source = diff.by_source[diff.by_source["changed"] > 0]
    if len(by_source):
        out.append("<h3>Sources of the changes</h3>")
        out.append(_table(by_source.head(MAX_TABLE_ROWS), percent=("share_changed",)))
    present = changed[changed != ""]
    if len(present):
        s = inv.signals["suspicion"].reindex(present.index).to_numpy(dtype=np.float64)
        pos = inv.dataset.positions(present.index[np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")][:top])
        out.append(f"<h3 id=changed>Changed samples by suspicion</h3><p>{len(present):,} samples of this dataset are "
                   f"new or changed; the {len(pos)} most suspicious:</p>")
        out.append(_samples_table(inv, pos, changed, pattern))
    if len(diff.removed):
        out.append(f"<p>{len(diff.removed):,} samples of the baseline are gone (not analysed); the first:</p>")
        out.append(_table(diff.removed.head(MAX_TABLE_ROWS)[["label_name", "source"]]))
    return "\n".join(out)


def _canary_section(rep: Any) -> str:
    out = ["<h2 id=canaries>Canaries</h2>",
           f"<p>Accuracy on {len(rep.table):,} trusted samples: <b>{rep.accuracy:.1%}</b>"
           + ("" if rep.baseline_accuracy is None else
              f" (baseline model {rep.baseline_accuracy:.1%}; {rep.n_changed:,} canaries changed prediction)")
           + ".</p>", _table(rep.per_class, percent=("accuracy", "baseline_accuracy"))]
    if rep.baseline_accuracy is not None and rep.n_changed:
        out.append("<h3>Canaries that changed prediction</h3>")
        out.append(_table(rep.changed.head(MAX_TABLE_ROWS)[["expected_name", "baseline_name", "now_name"]]))
    else:
        wrong = rep.table[~rep.table["correct"].astype(bool)]
        if len(wrong):
            out.append("<h3>Canaries predicted wrongly</h3>")
            out.append(_table(wrong.head(MAX_TABLE_ROWS)[["expected_name", "now_name"]]))
    return "\n".join(out)


def _map_section(inv: Investigation, suspicion: np.ndarray, threshold: float) -> str:
    import plotly.graph_objects as go

    ds = inv.dataset
    m = inv.map
    names = np.asarray(ds.class_names, dtype=object)[ds.labels]
    src = ds.sources if ds.sources is not None else np.full(len(ds), "", dtype=object)
    hover = [f"{escape_html(i, quote=False)}<br>label {escape_html(c, quote=False)}"
             + (f" · source {escape_html(s, quote=False)}" if s else "") + f"<br>suspicion {v:.2f}"
             for i, c, s, v in zip(ds.ids, names, src, suspicion)]
    # Most suspicious drawn last, on top; WebGL past a few thousand points.
    order = np.argsort(np.nan_to_num(suspicion, nan=-np.inf), kind="stable")
    scatter = go.Scattergl if len(ds) > 3000 else go.Scatter
    color = np.clip(np.nan_to_num(suspicion[order], nan=0.0), 0, max(2 * threshold, 1.0))
    fig = go.Figure(scatter(
        x=np.round(m["x"].to_numpy()[order], 3), y=np.round(m["y"].to_numpy()[order], 3), mode="markers",
        marker={"size": 4, "color": np.round(color, 2), "colorscale": "Viridis",
                "colorbar": {"title": {"text": "suspicion"}}},
        text=[hover[i] for i in order], hoverinfo="text"))
    fig.update_layout(height=620, margin={"l": 10, "r": 10, "t": 10, "b": 10}, plot_bgcolor="white",
                      xaxis={"visible": False}, yaxis={"visible": False})
    div = fig.to_html(full_html=False, include_plotlyjs=True, config={"displaylogo": False})
    return ("<h2 id=map>Map</h2><p>Each point is a sample, placed by UMAP on the model's activations; colour is "
            "suspicion. Poison usually forms a tight group apart from its labelled class. Hover for the id.</p>"
            + div)


#: The cluster table's columns an analyst reads first, with their headings; the others are one click away.
CLUSTER_COLUMNS = {
    "size": "samples", "dominant_name": "label", "purity": "label purity", "is_small": "small island",
    "distance_to_label_bulk": "distance from its label's bulk", "top_sources": "sources",
    "mean_suspicion": "mean suspicion", "max_suspicion": "max suspicion",
}


def next_steps(inv: Investigation, *, threshold: float = DEFAULT_THRESHOLD, max_items: int = 3) -> list[str]:
    """What an analyst should do next, most telling first, in plain sentences: the confirmed triggers and their
    carriers, the small islands of the map to review, the source whose samples are flagged far more often than the
    rest, then how to act on the list. Empty findings give one sentence that says so."""
    ds = inv.dataset
    suspicion = inv.signals["suspicion"].to_numpy(dtype=np.float64)
    flagged = np.nan_to_num(suspicion, nan=-np.inf) >= threshold
    steps = []
    trig = inv.triggers
    for verdict, advice in (("confirmed", "remove its carriers or relabel them"),
                            ("weak", "confirm it on held-out data: find_triggers(holdout=...)")):
        for _, t in trig[trig["verdict"] == verdict].head(max_items).iterrows():
            steps.append(f"Trigger {t.get('trigger_id', '')} is {verdict} on the model ({t['description']}); "
                         f"{len(t['sample_ids']):,} samples carry it: {advice}.")
    if inv.has_map and len(inv.clusters) and "is_small" in inv.clusters:
        small = inv.clusters[inv.clusters["is_small"].astype(bool)]
        if "mean_suspicion" in small:
            small = small.sort_values("mean_suspicion", ascending=False, kind="stable")
        for c, row in small.head(max_items).iterrows():
            where = f", mostly from {row['top_sources']}" if isinstance(row.get("top_sources"), str) else ""
            steps.append(f"Review cluster {c}: a small island of {int(row['size']):,} samples labelled "
                         f"{row.get('dominant_name', '')} ({_pct(row.get('purity'))}){where}, mean suspicion "
                         f"{_fmt(row.get('mean_suspicion'))}.")
    if ds.sources is not None and flagged.any():
        frame = pd.DataFrame({"source": ds.sources.astype(str), "flagged": flagged})
        share = frame.groupby("source", sort=True)["flagged"].agg(["sum", "mean", "size"])
        overall = flagged.mean()
        worst = share[(share["sum"] >= 5) & (share["mean"] >= 3 * overall)].sort_values(
            ["mean", "sum"], ascending=False, kind="stable")
        for source, row in worst.head(max_items).iterrows():
            steps.append(f"Look at source {source}: {int(row['sum']):,} of its {int(row['size']):,} samples "
                         f"({_pct(row['mean'])}) are flagged, against {_pct(overall)} overall; if it is not to be "
                         "trusted, drop everything it contributed.")
    issues = inv.params.get("label_issues")
    if _labels_attacked(inv.params) and issues is not None and int(issues) > flagged.sum():
        steps.append(f"Review the labels: about {int(issues):,} are estimated wrong and {int(flagged.sum()):,} "
                     f"samples reach the threshold; the label signals rank wrong labels first, so review the first "
                     f"{int(issues):,} by suspicion, not only the flagged ones.")
    if not steps:
        steps.append(f"Nothing stands out: no confirmed trigger, no small island, and {int(flagged.sum()):,} samples "
                     f"at or above the threshold ({_pct(flagged.mean())}), about what clean data gives.")
    steps.append("Then mark your decisions in the dashboard (forensics.Investigation.load(folder).dashboard()) "
                 "and act on the exported list (flagged.csv; inv.export(path) for the marked samples).")
    return steps


def _next_steps(inv: Investigation, threshold: float) -> str:
    items = "".join(f"<li>{escape_html(step)}</li>" for step in next_steps(inv, threshold=threshold))
    return f"<h2 id=next>What to do next</h2><ol>{items}</ol>"


def _cluster_section(clusters: pd.DataFrame, *, explained: pd.DataFrame | None = None) -> str:
    if not len(clusters):
        return "<h2 id=clusters>Clusters</h2><p>No clusters were found.</p>"
    sort = "mean_suspicion" if "mean_suspicion" in clusters else clusters.columns[0]
    view = clusters.sort_values(sort, ascending=False, kind="stable").head(MAX_TABLE_ROWS)
    # HDBSCAN's -1 is the samples in no cluster: named, not numbered.
    names = pd.Index(["noise (in no cluster)" if str(c) == "-1" else str(c) for c in view.index], name="cluster")
    main = view[[c for c in CLUSTER_COLUMNS if c in view.columns]].rename(columns=CLUSTER_COLUMNS)
    if explained is not None:
        from .explain import describe_cluster

        main["stands out by"] = [describe_cluster(explained, int(c)) if int(c) >= 0 else "" for c in view.index]
    main.index = names
    rest = view.drop(columns=[c for c in (*CLUSTER_COLUMNS, "examples") if c in view.columns])
    rest.index = names
    every = ("" if rest.empty else "<details><summary>Every column</summary>"
             + _table(rest, percent=tuple(c for c in rest.columns if "purity" in c or "share" in c)) + "</details>")
    return ("<h2 id=clusters>Clusters</h2><p>HDBSCAN clusters of the activations (on a low-dimensional UMAP), by "
            f"decreasing mean suspicion; the first {len(view)} of {len(clusters)}. A small island far from its "
            "label's bulk, with one dominant source, is the first place to look.</p>"
            + _table(main, percent=("label purity",)) + every)


def _samples_table(inv: Investigation, pos: np.ndarray, changed: pd.Series | None,
                   pattern: re.Pattern[str] | None) -> str:
    ds = inv.dataset
    samples, signals = inv.samples, inv.signals
    names = np.asarray(ds.class_names, dtype=object)
    head = ["", "sample_id", "label", "source", "prediction", "suspicion", "reasons"]
    if changed is not None:
        head.append("changed")
    rows = []
    for i in pos:
        sid = ds.ids[i]
        if ds.kind == "image":
            payload = f"<img class=thumb alt='' src='{png_data_url(ds.images[i], size=THUMB_SIZE)}'>"
        else:
            payload = highlight(str(ds.texts[i]), pattern, max_chars=TEXT_CHARS)
        pred = ""
        if "prediction_name" in samples:
            pred = escape_html(samples["prediction_name"].iloc[i])
            if "confidence" in samples:
                pred += f" ({samples['confidence'].iloc[i]:.2f})"
        cells = [f"<td class={'text' if ds.kind == 'text' else 'img'}>{payload}</td>",
                 f"<td>{escape_html(sid)}</td>", f"<td>{escape_html(names[ds.labels[i]])}</td>",
                 f"<td>{escape_html(ds.sources[i]) if ds.sources is not None else ''}</td>",
                 f"<td>{pred}</td>", f"<td class=num>{_fmt(signals['suspicion'].iloc[i])}</td>",
                 f"<td>{escape_html(signals['reasons'].iloc[i])}</td>"]
        if changed is not None:
            cells.append(f"<td>{escape_html(changed.iloc[i])}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table class=samples><tr>" + "".join(f"<th>{escape_html(h)}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def _trigger_section(inv: Investigation) -> str:
    trig = inv.triggers
    out = ["<h2 id=triggers>Trigger candidates</h2>"]
    if not len(trig):
        out.append("<p>No trigger candidates (the search needs a model; it found no pattern shared by the most "
                   "suspicious samples).</p>")
        return "\n".join(out)
    out.append("<p>Each candidate is confirmed on the model: <i>remove</i> is how often removing it from its "
               "carriers changes their prediction, <i>add</i> how often pasting it onto clean samples of other "
               "classes flips them to the target class.</p>")
    ds = inv.dataset
    head = ["", "trigger", "description", "evidence", "carriers", "target", "remove", "add", "verdict"]
    rows = []
    for _, t in trig.iterrows():
        thumb = _trigger_thumbnail(ds, t, inv.trigger_arrays.get(str(t.get("trigger_id")))) if ds.kind == "image" \
            else ""
        verdict = str(t["verdict"])
        target = t.get("target")
        if target is not None and not (isinstance(target, float) and np.isnan(target)):
            try:
                target = ds.class_names[int(target)]
            except (ValueError, IndexError, TypeError):
                target = str(target)
        else:
            target = ""
        rows.append("<tr>" + "".join([
            f"<td>{thumb}</td>", f"<td>{escape_html(t.get('trigger_id', ''))}</td>",
            f"<td>{escape_html(t['description'])}</td>", f"<td>{escape_html(t['evidence'])}</td>",
            f"<td class=num>{len(t['sample_ids']):,}</td>", f"<td>{escape_html(target)}</td>",
            f"<td class=num>{_pct(t['remove_flip_rate'])}</td>", f"<td class=num>{_pct(t['add_flip_rate'])}</td>",
            f"<td class='{escape_html(verdict.replace(' ', '-'))}'>{escape_html(verdict)}</td>"]) + "</tr>")
    out.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")
    return "\n".join(out)


def _verification_section(verification: Any) -> str:
    rows = []
    for column, label, before, after in verification.rows():
        fmt = (lambda v: f"{int(v):,}") if column == "n_train" else _pct
        rows.append(f"<tr><td>{escape_html(label)}</td><td class=num>{fmt(before)}</td>"
                    f"<td class=num>{fmt(after)}</td></tr>")
    worst = verification.worst_classes(3)
    out = ["<h2 id=verification>Retrained: before and after</h2>",
           "<p>A model trained on the original data and one trained on the sanitized data, measured on held-out "
           "samples: what the remediation cost, and whether each confirmed trigger still works.</p>",
           "<table><tr><th></th><th>original</th><th>sanitized</th></tr>" + "".join(rows) + "</table>",
           "<p>Classes whose accuracy fell most: " + ", ".join(
               f"{escape_html(str(name))} {100 * change:+.1f} points" for name, change in worst.items()) + "</p>"]
    return "\n".join(out)


def _trigger_thumbnail(ds: Any, t: pd.Series, array: np.ndarray | None = None) -> str:
    """What find_triggers stored for the candidate (its patch, or its image-wide difference made visible), else the
    reconstructed patch (carriers' median inside the box) of a fixed image trigger, else one carrier."""
    if array is not None:
        from .triggers import display_pattern, is_flow

        wide = np.asarray(array).dtype != np.uint8
        what = ("a grid warped by the reconstructed warp, its offsets magnified" if is_flow(array)
                else "image-wide difference from the images the group looks like (grey: none)" if wide
                else "reconstructed pattern")
        return (f"<img class=thumb title='{escape_html(what)}' alt='' "
                f"src='{png_data_url(display_pattern(array), size=64)}'>")
    ids = list(t["sample_ids"])
    if not ids:
        return ""
    pos = ds.positions(ids[:200])
    box = t.get("box")
    if box is not None and not (isinstance(box, float) and np.isnan(box)) and len(box) == 4:
        r, c, h, w = (int(v) for v in box)
        patch = np.median(ds.images[pos, r:r + h, c:c + w].astype(np.float32), axis=0)
        img = np.clip(np.rint(patch), 0, 255).astype(np.uint8)
        what = f"reconstructed patch at row {r}, column {c}"
    else:
        img = ds.images[pos[0]]
        what = "a carrier"
    return f"<img class=thumb title='{escape_html(what)}' alt='' src='{png_data_url(img, size=64)}'>"


def _source_section(inv: Investigation, suspicion: np.ndarray, threshold: float) -> str:
    ds = inv.dataset
    if ds.sources is None:
        return "<h2 id=sources>Sources</h2><p>The dataset names no sources.</p>"
    flagged = suspicion >= threshold
    frame = pd.DataFrame({"source": ds.sources.astype(str), "suspicion": suspicion, "flagged": flagged})
    g = frame.groupby("source", sort=False)
    table = pd.DataFrame({"n": g.size(), "flagged": g["flagged"].sum().astype(np.int64),
                          "share_flagged": g["flagged"].mean(), "mean_suspicion": g["suspicion"].mean(),
                          "max_suspicion": g["suspicion"].max()})
    if len(table) >= 2:
        from .signals.sources import source_table

        pred = inv.samples["prediction"].to_numpy() if "prediction" in inv.samples else None
        st = source_table(ds.sources, ds.labels, n_classes=len(ds.class_names), predictions=pred,
                          scores=suspicion, flagged=flagged)
        keep = [c for c in ("source_suspicion", "evidence", "dominant_label", "dominant_share") if c in st]
        table = table.join(st[["suspicion_among_sources", *keep]])
        if "dominant_label" in table:
            table["dominant_label"] = [ds.class_names[int(v)] if pd.notna(v) else "" for v in table["dominant_label"]]
        table = table.sort_values(["suspicion_among_sources", "share_flagged"], ascending=False, kind="stable")
    else:
        table = table.sort_values("share_flagged", ascending=False, kind="stable")
    return ("<h2 id=sources>Sources</h2><p>Per source: samples, how many reach the threshold, "
            "<code>suspicion_among_sources</code> (how unusual the source is, read with the heterogeneity the sources "
            f"show, on the scale of the sample suspicion: {threshold:g} = about {_pct(10 ** -threshold)} of clean "
            "sources reach it) and the test behind it, <code>source_suspicion</code> (-log10 of the corrected p-value "
            "of its strongest evidence against the other sources). The first "
            f"{min(len(table), MAX_TABLE_ROWS)} of {len(table)} sources.</p>"
            + _table(table.head(MAX_TABLE_ROWS), percent=("share_flagged", "dominant_share")))


def _params_section(inv: Investigation, run_info: Mapping[str, Any] | None) -> str:
    items = dict(run_info or {})
    items.update({"dataset content hash": inv.dataset.content_hash, "investigation id": inv.id})
    items.update(inv.params)
    rows = "".join(f"<tr><th>{escape_html(k)}</th><td>{escape_html(_plain(v))}</td></tr>" for k, v in items.items())
    return f"<h2 id=params>Parameters and versions</h2><table>{rows}</table>"


# ------------------------------------------------------------------------------------------------ helpers
def _changed_kinds(diff: Any, ids: np.ndarray) -> pd.Series:
    """Per sample of the current dataset, in its order: "added", "relabelled", "modified", "moved source" or ""."""
    out = pd.Series("", index=pd.Index(ids, name="sample_id", dtype=object), dtype=object)
    for name, table in (("added", diff.added), ("moved source", diff.moved_source),
                        ("relabelled", diff.relabelled), ("modified", diff.modified)):
        present = out.index.intersection(pd.Index(table.index.astype(str), dtype=object))
        out.loc[present] = name
    return out


def _text_trigger_pattern(trig: pd.DataFrame) -> re.Pattern[str] | None:
    """A case-insensitive pattern of the confirmed (else weak) text triggers' phrases, or None."""
    if not len(trig) or "tokens" not in trig:
        return None
    for wanted in ("confirmed", "weak"):
        rows = trig[(trig["kind"] == "text") & (trig["verdict"] == wanted)]
        phrases = []
        for tokens in rows["tokens"]:
            if tokens is None or (isinstance(tokens, float) and np.isnan(tokens)) or not len(tokens):
                continue
            words = [re.escape(str(t)) for t in tokens]
            phrases.append(r"\W*".join(words))
        if phrases:
            return re.compile("|".join(f"(?:{p})" for p in phrases), re.IGNORECASE)
    return None


def _table(df: pd.DataFrame, *, percent: Sequence[str] = ()) -> str:
    """An HTML table of ``df`` (index first) with every header and cell escaped."""
    idx_name = df.index.name or ""
    head = "".join(f"<th>{escape_html(c)}</th>" for c in [idx_name, *df.columns])
    rows = []
    for key, row in zip(df.index, df.itertuples(index=False, name=None)):
        cells = [f"<th>{escape_html(_plain(key))}</th>"]
        for col, v in zip(df.columns, row):
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            text = _pct(v) if col in percent and num else _fmt(v)
            cells.append(f"<td class=num>{text}</td>" if num else f"<td>{escape_html(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _fmt(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3g}" if abs(v) < 1000 else f"{float(v):,.0f}"
    return _plain(v)


def _pct(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return ""
    return f"{100 * float(v):.1f}%"


def _plain(v: Any) -> str:
    """Plain text of a value (containers as JSON); escaped by the caller."""
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str, ensure_ascii=False)
    if isinstance(v, np.ndarray):
        return json.dumps(v.tolist(), default=str, ensure_ascii=False)
    return str(v)


def _clean_rate(threshold: float) -> str:
    return f"{min(1.0, 10.0 ** -threshold):.2%}".replace(".00%", "%")


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not np.isfinite(threshold):
        raise InputError(f"threshold must be a finite number (2 = about 1% of clean samples); got {threshold!r}")
    return float(threshold)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
