"""A self-contained HTML report of a recorded federation's clients, for the person who decides whom to exclude.

:func:`client_report_html` returns one page built like the investigation report (:mod:`forensics.report`): the same
head, style and tables, plotly's JavaScript inlined once, nothing fetched from elsewhere, so it works offline. It
reads a :class:`~forensics.federated.analysis.ClientReport`; given the recording, it adds the clients' map (the
principal components of their mean sketches, :func:`~forensics.federated.views.client_points`, as the client panel
draws it) and their metadata; given a guard's per-round reports, each flagged client's suspicion round by round.

Client ids, reasons and metadata come from the federation and may be hostile (``<script>`` as a device name):
every one of them is escaped with :func:`forensics.html.escape_html` before it meets markup, and with
``quote=False`` in plotly's hover text and trace names (plotly shows ``&quot;`` literally).
:func:`write_client_report` writes the page atomically: a failed write leaves the previous file, never half of one.

Examples
--------
>>> report = analyze_clients(rec)
>>> write_client_report("clients.html", report, rec, reports=guard.reports)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write_text
from .._version import __version__
from ..errors import InputError
from ..html import escape_html
from ..report import _clean_rate, _fmt, _head, _now, _plain, _table
from .analysis import SIGNALS, ClientReport
from .recorder import UpdateRecorder
from .views import client_points, suspicion_timeline

__all__ = ["DEFAULT_TITLE", "SIGNAL_MEANINGS", "check_report_path", "client_report_html", "client_verdict",
           "write_client_report"]

DEFAULT_TITLE = "Federated clients"

#: What each signal of :func:`~forensics.federated.analysis.analyze_clients` means, in a reader's words.
SIGNAL_MEANINGS = {
    "anomaly": "the client sent a non-finite (NaN or infinite) or wrong-size update, which honest training does "
               "not produce",
    "sybil": "the directions of the client's updates over the analysed rounds are far more alike with those of a "
             "group of others than honest clients training on their own data are: many devices driven by one party",
    "stale": "the client sent all-zero updates, or repeated an earlier update of its own to the bit: it does not "
             "train (a free-rider)",
    "norm": "the size of the client's update is far from the round's typical size (robust z-score): a scaled-up "
            "(boosted) attack, or a broken client",
    "krum": "the client's update is far from its nearest updates (a Krum-style distance): unlike any other client's",
    "dissent": "the client's update points away from the round's robust aggregate (robust z-score)",
    "trust": "the client's update disagrees with an update computed on trusted root data (FLTrust-style)",
    "push": "the client's own update, applied alone to the global model, ties a trigger the analyst watches to its "
            "class, far beyond what it does to the same inputs without the trigger (a device training on poisoned "
            "data of its own)",
}

#: How the verdict names flagged clients outside any sybil group, by their strongest signal.
_KINDS = {
    "anomaly": "with non-finite or wrong-size updates",
    "sybil": "alike with their nearest clients but in no group",
    "pool": "fed from one data pool but in no group",
    "stale": "with all-zero or repeated updates (free-riders)",
    "norm": "with outsized updates",
    "krum": "with updates far from every other client's",
    "dissent": "pulling against the aggregate",
    "trust": "disagreeing with the trusted update",
    "push": "pushing the watched trigger",
    "": "with no single strong signal",
}

#: Suspicion is drawn up to this value in the charts (a non-finite update scores 11 and more).
CHART_CAP = 10.0

_CSS = "ul.members{columns:4 16em;font-size:.85em;margin:.3em 0 1em}"


# ------------------------------------------------------------------------------------------------ public
def client_verdict(report: ClientReport) -> str:
    """One plain sentence an analyst can act on: how many clients are flagged, as which groups and kinds, and what
    to do about them.

    Parameters
    ----------
    report : ClientReport

    Returns
    -------
    str
        E.g. "13 of 43 clients flagged over rounds 1-3: one coordinated group of 11 (sybils) and 2 with all-zero
        or repeated updates (free-riders); exclude them from the aggregation and re-aggregate from round 0, the
        first round any of them sent an update." Plain text, no markup.
    """
    _check_report(report)
    t = report.table
    threshold = float(report.params.get("threshold", np.nan))
    over = _rounds_text(report.params.get("rounds") or [])
    flagged = t[t["is_flagged"].to_numpy(dtype=bool)]
    if not len(flagged):
        return f"No client of {len(t):,} reaches suspicion >= {threshold:g} over {over}: nothing to exclude."
    groups = report.sybil_groups
    in_group = flagged["sybil_group"].isin(groups.index).to_numpy()
    parts = []
    if len(groups):
        sizes = [int((flagged["sybil_group"] == g).sum()) for g in groups.index]
        parts.append(f"one coordinated group of {sizes[0]:,} (sybils)" if len(sizes) == 1
                     else f"{len(sizes)} coordinated groups of {_and([f'{s:,}' for s in sizes])} (sybils)")
    rest = flagged[~in_group]
    counts = rest["top_signal"].astype(str).value_counts()
    # The largest kind first; ties in the order the analysis reports its signals.
    known = [*SIGNALS, ""]
    for signal in sorted(counts.index, key=lambda s: (-counts[s], known.index(s) if s in known else len(known), s)):
        kind = _KINDS.get(signal, f"flagged by {signal}")  # a signal added later than this text
        parts.append(f"{int(counts[signal]):,} {kind}")
    first = int(flagged["first_round"].min())
    n = len(flagged)
    return (f"{n:,} of {len(t):,} clients flagged over {over}: {_and(parts)}; exclude "
            f"{'them' if n > 1 else 'it'} from the aggregation and re-aggregate from round {first}, the first round "
            f"{'any of them' if n > 1 else 'it'} sent an update.")


def client_report_html(
    report: ClientReport,
    recorder: UpdateRecorder | None = None,
    *,
    title: str = DEFAULT_TITLE,
    reports: Mapping[int, ClientReport] | None = None,
) -> str:
    """A self-contained HTML page of a federation's clients: whom to exclude and why.

    Parameters
    ----------
    report : ClientReport
        :func:`~forensics.federated.analysis.analyze_clients`' result.
    recorder : UpdateRecorder, optional
        The recording the report was computed from (``UpdateRecorder.load(folder)``): adds the clients' map and
        their metadata.
    title : str
    reports : mapping round -> ClientReport, optional
        One report per round (``AggregationGuard.reports``): adds each flagged client's suspicion round by round
        and the round the guard first flagged it.

    Returns
    -------
    str
        The HTML page: a summary with the verdict, what to do next, the flagged clients with their reasons, the
        sybil groups with their members, the map, the timeline, what each signal means and the parameters. Every
        string from the federation is escaped; with a map or a timeline, plotly's JavaScript is inlined once
        (about 4.5 MB).
    """
    _check_report(report)
    if recorder is not None:
        if not isinstance(recorder, UpdateRecorder):
            raise InputError(f"recorder must be an UpdateRecorder (UpdateRecorder.load(folder) reads a recording); "
                             f"got {type(recorder).__name__}")
        missing = [r for r in report.params.get("rounds") or [] if r not in set(recorder.rounds)]
        if missing:
            raise InputError(f"recorder does not hold round(s) {missing[:10]} that report analysed; give the "
                             "recording the report was computed from")
    if reports is not None:
        reports = _check_reports(reports)
    if not isinstance(title, str):
        raise InputError(f"title must be a string; got {type(title).__name__}")

    verdict = client_verdict(report)
    first_flagged = _first_flagged(reports) if reports is not None else None
    plotly_js = [True]  # the first chart inlines plotly's JavaScript, the others use it

    parts = [_head(title, css=_CSS), f"<h1>{escape_html(title)}</h1>",
             f"<p class=meta>Generated {escape_html(_now())} by poison-forensics {escape_html(__version__)}.</p>",
             _summary(report, recorder, verdict), _next_steps(report, recorder),
             _flagged_section(report, recorder, first_flagged, sampled=reports is not None and recorder is not None
                              and len(reports) < len(recorder.rounds)), _groups_section(report),
             _map_section(report, recorder, plotly_js)]
    if reports is not None:
        parts.append(_timeline_section(report, reports, plotly_js, recorder))
    parts += [_signals_section(report), _params_section(report, recorder), "</body></html>\n"]
    return "\n".join(p for p in parts if p)


def write_client_report(
    path: str | os.PathLike,
    report: ClientReport,
    recorder: UpdateRecorder | None = None,
    *,
    title: str = DEFAULT_TITLE,
    reports: Mapping[int, ClientReport] | None = None,
) -> Path:
    """Write :func:`client_report_html` to ``path`` atomically and return the path.

    The page is rendered first and then written through a temporary file in the same folder, renamed over
    ``path``: an existing file is replaced only when the whole page is written, and no temporary file is left.

    Parameters
    ----------
    path : str or path
        The HTML file; its folder must exist.
    report, recorder, title, reports
        As :func:`client_report_html`.

    Returns
    -------
    Path
    """
    target = check_report_path(path)
    page = client_report_html(report, recorder, title=title, reports=reports)
    atomic_write_text(target, page)
    return target


def check_report_path(path: Any, name: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path` to a file whose folder exists, or an :class:`InputError` naming
    ``name`` and the path."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"{name} must be the path of an HTML file; got {path!r}")
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{name} {p} is a folder; give the report's file name, e.g. {p / 'clients.html'}")
    if not p.parent.is_dir():
        raise InputError(f"{name} {p}: {p.parent} is not an existing folder")
    return p


# ------------------------------------------------------------------------------------------------ checks
def _check_report(report: Any) -> None:
    if not isinstance(report, ClientReport):
        raise InputError(f"report must be a ClientReport (forensics.federated.analyze_clients); "
                         f"got {type(report).__name__}")


def _check_reports(reports: Any) -> dict[int, ClientReport]:
    if not isinstance(reports, Mapping):
        raise InputError(f"reports must map rounds to ClientReports (AggregationGuard.reports); "
                         f"got {type(reports).__name__}")
    if not reports:
        raise InputError("reports is empty: screen at least one round (AggregationGuard.reports)")
    out = {}
    for r, rep in reports.items():
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not isinstance(rep, ClientReport):
            raise InputError(f"reports must map rounds (integers) to ClientReports (AggregationGuard.reports); "
                             f"got {type(r).__name__} -> {type(rep).__name__}")
        out[int(r)] = rep
    return out


# ------------------------------------------------------------------------------------------------ sections
def _summary(report: ClientReport, recorder: UpdateRecorder | None, verdict: str) -> str:
    t = report.table
    p = report.params
    threshold = float(p.get("threshold", np.nan))
    flagged = t["is_flagged"].to_numpy(dtype=bool)
    groups = report.sybil_groups
    other = report.groups.drop(index=groups.index) if len(report.groups) else report.groups
    window = p.get("window")
    facts = [
        ("rounds analysed", _rounds_text(p.get("rounds") or []) + (" (all recorded)" if window is None
                                                                   else f" (the last {window} recorded)")),
        ("clients", f"{len(t):,} recorded, {int((t['n_rounds'] > 0).sum()):,} with updates in the analysed rounds"),
        ("flagged", f"{int(flagged.sum()):,} with suspicion >= {threshold:g} (about {_clean_rate(threshold)} of "
                    "honest clients reach it by chance)"),
        ("sybil groups", "none" if not len(groups) else f"{len(groups)} (" + "; ".join(
            f"group {g}: {int(row['size']):,} clients, {int(row['n_flagged']):,} flagged, since round "
            f"{int(row['first_round'])}" for g, row in groups.iterrows()) + ")"),
    ]
    if len(other):
        facts.append(("other groups", f"{len(other)} group(s) of {_and([f'{int(s):,}' for s in other['size']])} "
                      "clients whose members are not flagged for being alike: honest clients with similar data "
                      "group together too"))
    if flagged.any():
        by = t.loc[flagged, "top_signal"].astype(str).replace("", "none").value_counts()
        facts.append(("flagged by strongest signal", ", ".join(f"{k} {int(v):,}" for k, v in by.items())))
    facts.append(("non-finite or wrong-size updates", f"{int(t['anomaly_score'].sum()):,}"))
    facts.append(("signals", ", ".join(str(s) for s in p.get("signals", []))))
    if recorder is not None:
        facts.append(("recording", (f"{recorder.folder}; " if recorder.folder is not None else "")
                      + f"{len(recorder.rounds):,} round(s), updates of {recorder.n_params or 0:,} parameters kept "
                        f"as {recorder.k}-dimensional sketches"))
    rows = "".join(f"<tr><th>{escape_html(k)}</th><td>{escape_html(v)}</td></tr>" for k, v in facts)
    css = "fail" if flagged.any() else "pass"
    return (f"<h2 id=summary>Summary</h2><p class='verdict {css}'>{escape_html(verdict)}</p>"
            "<p>A client's suspicion is <code>-log10</code> of its strongest signal's tail probability among the "
            "clients, corrected for the number of signals: suspicion &gt;= 2 is reached by about 1% of honest "
            "clients by chance, 3 by about 0.1%. A sybil group's members carry the group's evidence, so they score "
            f"alike and high.</p><table>{rows}</table>")


def _next_steps(report: ClientReport, recorder: UpdateRecorder | None) -> str:
    t = report.table
    flagged = t[t["is_flagged"].to_numpy(dtype=bool)]
    # The analysis reads how updates relate to each other: fake devices that each keep data of their own (and a few
    # poisoned images) look like honest devices of one class, and only what their updates teach tells them apart.
    unflagged = report.groups[report.groups["n_flagged"] == 0] if len(report.groups) else report.groups
    which = "the group" if len(unflagged) == 1 else f"the {len(unflagged):,} groups"
    screen = (f"Screen {which} of look-alike clients that no signal flags for a planted trigger: "
              "forensics.federated.screen_group_triggers(model, updates, report.groups, probe_images) "
              "rebuilds the trigger each group's mean update induces and names the clients whose own update pushes "
              "it; a trigger pushed by many is confirmed with group_effect.") if len(unflagged) else ""
    if not len(flagged):
        steps = ["Nothing to exclude. Keep recording the rounds: a sybil group stands out once its members have "
                 "sent updates over a few rounds.", *([screen] if screen else [])]
    else:
        steps = [f"Leave the {len(flagged):,} flagged client(s) out of the aggregation from now on "
                 "(AggregationGuard(recorder, sticky=True) does it round by round) and re-aggregate the rounds since "
                 f"round {int(flagged['first_round'].min())} without them."]
        for g, row in report.sybil_groups.iterrows():
            steps.append(f"Measure what sybil group {g} pushes: forensics.federated.group_effect(model, update, "
                         "images, labels=..., trigger=...) with the mean update of its "
                         f"{int(row['size']):,} members (attack success with and without it, and which classes "
                         "gain predictions).")
        if screen:
            steps.append(screen)
        if recorder is not None and len(_metadata(recorder).columns):
            steps.append("Look at what the flagged clients share in their recorded metadata (in the table below): "
                         "the devices, accounts or enrolments behind a sybil group are the ones to block.")
    items = "".join(f"<li>{escape_html(s)}</li>" for s in steps)
    return f"<h2 id=next>What to do next</h2><ol>{items}</ol>"


def _flagged_section(report: ClientReport, recorder: UpdateRecorder | None,
                     first_flagged: dict[str, int] | None, *, sampled: bool = False) -> str:
    t = report.table
    threshold = float(report.params.get("threshold", np.nan))
    flagged = t["is_flagged"].to_numpy(dtype=bool)
    if flagged.any():
        view = t[flagged]
        intro = (f"<p>The {int(flagged.sum()):,} clients with suspicion &gt;= {threshold:g}, most suspicious first, "
                 "with the signals behind it (what they mean: <a href='#signals'>below</a>).</p>")
    else:
        view = t.head(10)
        intro = (f"<p>No client reaches suspicion {threshold:g}. The {len(view)} most suspicious, for the "
                 "record:</p>")
    groups = set(report.sybil_groups.index)
    frame = pd.DataFrame({
        "suspicion": view["suspicion"].to_numpy(dtype=np.float64),
        "strongest signal": view["top_signal"].astype(str).to_numpy(dtype=object),
        "sybil group": [str(g) if g in groups else "" for g in view["sybil_group"]],
        "first recorded in round": view["first_round"].to_numpy(),
        "rounds analysed": view["n_rounds"].to_numpy(),
    }, index=pd.Index([str(c) for c in view.index], name="client"))
    if first_flagged is not None:
        # With evenly spaced rounds analysed, the first of them that flagged a client, not necessarily the first round.
        name = "guard flagged it from round" + (" (of the rounds analysed)" if sampled else "")
        frame[name] = [str(first_flagged[c]) if c in first_flagged else "never" for c in frame.index]
    if recorder is not None:
        meta = _metadata(recorder).reindex(frame.index)
        for col in meta.columns:
            name = f"{col} (metadata)" if str(col) in frame.columns or str(col) == "reasons" else str(col)
            frame[name] = meta[col].to_numpy(dtype=object)
    frame["reasons"] = view["reasons"].astype(str).to_numpy(dtype=object)
    return f"<h2 id=flagged>Flagged clients</h2>{intro}{_table(frame)}"


def _groups_section(report: ClientReport) -> str:
    groups = report.sybil_groups
    out = ["<h2 id=groups>Sybil groups</h2>"]
    if not len(groups):
        out.append("<p>No sybil group: no group of clients is flagged for being alike.</p>")
        return "\n".join(out)
    min_group = report.params.get("min_group")
    out.append("<p>Clients whose update directions, accumulated over the analysed rounds, are far more alike than "
               "honest clients' are (HDBSCAN groups of at least "
               f"{escape_html(min_group)} clients, tested against the clients outside them and against the other "
               "groups). <i>Closeness</i> is <code>-log(1 - cosine)</code> to a client's "
               f"{escape_html(_ordinal(min_group - 1) if isinstance(min_group, int) else 'k-th')} nearest client: "
               "0.7 is a "
               "cosine of 0.5, 2.3 one of 0.9.</p>")
    t = report.table
    for g, row in groups.iterrows():
        members = [str(m) for m in row["members"]]
        is_flagged = t["is_flagged"].reindex(members).fillna(False).to_numpy(dtype=bool)
        items = "".join(f"<li>{escape_html(m)}{'' if f else ' (not flagged)'}</li>"
                        for m, f in zip(members, is_flagged))
        out.append(f"<h3 id=group-{int(g)}>Sybil group {int(g)}: {int(row['size']):,} clients, "
                   f"{int(row['n_flagged']):,} flagged</h3><p>Median closeness {_fmt(row['median_closeness'])}; "
                   f"first recorded in round {int(row['first_round'])}.</p><ul class=members>{items}</ul>")
    return "\n".join(out)


def _map_section(report: ClientReport, recorder: UpdateRecorder | None, plotly_js: list[bool]) -> str:
    head = "<h2 id=map>Client map</h2>"
    if recorder is None:
        return head + "<p>The map is drawn from the recording's sketches: give the recorder to see it.</p>"
    try:
        points = client_points(report, recorder)
    except InputError as e:  # fewer than two clients with finite updates: said on the page, not drawn
        return head + f"<p>No map: {escape_html(e)}.</p>"
    import plotly.graph_objects as go

    x = points["x"].to_numpy()
    y = points["y"].to_numpy()
    s = points["suspicion"].to_numpy(dtype=np.float64)
    flagged = points["is_flagged"].to_numpy(dtype=bool)
    group = points["group"].to_numpy()
    hover = [f"{escape_html(c, quote=False)}<br>suspicion {v:.1f}"
             + (f" · {escape_html(g, quote=False)}" if g != "none" else "")
             + (f"<br>{escape_html(r, quote=False)}" if r else "")
             for c, v, g, r in zip(points.index, s, group, points["reasons"])]
    scatter = go.Scattergl if len(points) > 3000 else go.Scatter
    fig = go.Figure()
    for i, name in enumerate(sorted(set(group), key=lambda g: (g == "none", g))):
        rows = np.flatnonzero(group == name)
        fig.add_trace(scatter(
            x=np.round(x[rows], 4), y=np.round(y[rows], 4), mode="markers",
            name=escape_html(name if name != "none" else "in no sybil group", quote=False),
            text=[hover[j] for j in rows], hoverinfo="text",
            marker={"color": np.round(np.minimum(np.nan_to_num(s[rows]), CHART_CAP), 2), "cmin": 0,
                    "cmax": CHART_CAP, "colorscale": "Reds", "size": 9,
                    "symbol": "circle" if name == "none" else "diamond",
                    "line": {"width": np.where(flagged[rows], 2.0, 0.5).tolist(), "color": "#333"},
                    "showscale": i == 0, "colorbar": {"title": {"text": "suspicion"}}}))
    fig.update_layout(height=520, margin={"l": 40, "r": 10, "t": 10, "b": 40}, plot_bgcolor="white",
                      legend={"orientation": "h", "y": -0.12}, xaxis={"title": {"text": "first principal component"}},
                      yaxis={"title": {"text": "second principal component"}})
    div = _plot(fig, plotly_js)
    return (head + "<p>Each point is a client, placed by the first two principal components of its mean sketch over "
            "the analysed rounds (the client panel's map); colour is suspicion, capped at "
            f"{CHART_CAP:g}; sybil groups are diamonds, flagged clients have a thick outline. Sybils usually sit in "
            "a tight group apart from the honest clients, a boosted attacker far out on its own. Hover for the "
            "id.</p>"
            + div)


def _timeline_section(report: ClientReport, reports: dict[int, ClientReport], plotly_js: list[bool],
                      recorder: UpdateRecorder | None) -> str:
    import plotly.graph_objects as go

    t = suspicion_timeline(reports)
    recorded = None if recorder is None else len(recorder.rounds)
    which = (f"each of the {len(t)} round(s) given" if recorded is None or recorded <= len(t) else
             f"{len(t)} of the {recorded} recorded rounds (evenly spaced; one analysis each)")
    threshold = float(report.params.get("threshold", np.nan))
    flagged = [c for c in report.flagged if c in t.columns]
    others = t.drop(columns=flagged)
    fig = go.Figure()
    rounds = t.index.to_numpy()
    if others.shape[1]:
        for name, values, dash in (("median", others.median(axis=1), "dash"), ("highest", others.max(axis=1), "dot")):
            fig.add_trace(go.Scatter(x=rounds, y=np.round(np.minimum(values.to_numpy(dtype=np.float64), CHART_CAP), 3),
                                     mode="lines", name=f"the other clients' {name}",
                                     line={"color": "#777", "dash": dash, "width": 2}))
    for c in flagged:
        fig.add_trace(go.Scatter(x=rounds, y=np.round(np.minimum(t[c].to_numpy(dtype=np.float64), CHART_CAP), 3),
                                 mode="lines+markers", name=escape_html(c, quote=False), legendgroup="flagged",
                                 showlegend=False, hoverinfo="name+x+y",
                                 line={"color": "#b2182b", "width": 1}, marker={"size": 4}))
    fig.add_hline(y=threshold, line={"color": "#333", "width": 1}, annotation_text=f"threshold {threshold:g}")
    fig.update_layout(height=380, margin={"l": 40, "r": 10, "t": 10, "b": 40}, plot_bgcolor="white",
                      xaxis={"title": {"text": "round"}, **({"dtick": 1} if len(t) <= 30 else {})},
                      yaxis={"title": {"text": f"suspicion (capped at {CHART_CAP:g})"}},
                      legend={"orientation": "h", "y": -0.2})
    return ("<h2 id=timeline>Suspicion round by round</h2><p>The suspicion of each flagged client (red) as the guard "
            f"analysed {which}, against the median and the highest of the other "
            "clients (grey). A line that jumps when the client joins is a client that attacked from the start; one "
            "that climbs over rounds is a group whose likeness builds up. Hover for the id.</p>"
            + _plot(fig, plotly_js))


def _signals_section(report: ClientReport) -> str:
    ran = [str(s) for s in report.params.get("signals", [])]
    items = "".join(f"<li><b>{escape_html(s)}</b>: {escape_html(SIGNAL_MEANINGS.get(s, 'a signal of its own'))}.</li>"
                    for s in ran)
    return ("<h2 id=signals>What the signals mean</h2><p>Each signal becomes a tail probability among the clients "
            "(the outlier signals against the clients outside any sybil group); a client is named for a signal in "
            f"its reasons when that probability is below 1%.</p><ul>{items}</ul>"
            "<p><i>consistency</i> (in the exported table) is the mean cosine of a client's consecutive update "
            "directions: context, not counted in the suspicion.</p>")


def _params_section(report: ClientReport, recorder: UpdateRecorder | None) -> str:
    items: dict[str, Any] = dict(report.params)
    if recorder is not None:
        items.update({"recording folder": "" if recorder.folder is None else str(recorder.folder),
                      "recorded rounds": recorder.rounds, "parameters per update": recorder.n_params})
    rows = "".join(f"<tr><th>{escape_html(k)}</th><td>{escape_html(_plain(v))}</td></tr>" for k, v in items.items())
    return f"<h2 id=params>Parameters</h2><table>{rows}</table>"


# ------------------------------------------------------------------------------------------------ helpers
def _plot(fig: Any, plotly_js: list[bool]) -> str:
    """The figure as a div; the first one on the page inlines plotly's JavaScript (nothing is fetched)."""
    div = fig.to_html(full_html=False, include_plotlyjs=plotly_js[0], config={"displaylogo": False})
    plotly_js[0] = False
    return str(div)


def _metadata(recorder: UpdateRecorder) -> pd.DataFrame:
    """The recorded metadata of each client (the columns of ``recorder.clients`` the recorder did not add)."""
    return recorder.clients.drop(columns=["first_round", "n_rounds", "n_params"], errors="ignore")


def _first_flagged(reports: dict[int, ClientReport]) -> dict[str, int]:
    """The first round whose report flagged each client."""
    out: dict[str, int] = {}
    for r in sorted(reports):
        for c in reports[r].flagged:
            out.setdefault(c, r)
    return out


def _rounds_text(rounds: list[int]) -> str:
    """"round 4", "rounds 2-4" (consecutive) or "rounds 1, 3, 7"."""
    rounds = sorted(int(r) for r in rounds)
    if not rounds:
        return "no rounds"
    if len(rounds) == 1:
        return f"round {rounds[0]}"
    if rounds == list(range(rounds[0], rounds[-1] + 1)):
        return f"rounds {rounds[0]}-{rounds[-1]}"
    return "rounds " + ", ".join(map(str, rounds))


def _ordinal(n: int) -> str:
    """"1st", "2nd", "3rd", "9th", "11th", "22nd"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _and(words: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
