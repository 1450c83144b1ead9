"""One suspicion per client over the recorded rounds, with reasons: :func:`analyze_clients`.

Each signal of :mod:`forensics.federated.signals` becomes a tail probability (lower = more surprising):

- ``norm``, ``dissent``, ``krum``, ``trust``: the client's mean per-round score over the window, under the bulk of
  the clients outside any significant sybil group (:func:`forensics.signals.combine.tail_probability`, a
  generalized Pareto tail above the 87.5th percentile, so an eighth of the clients cannot shape their own null;
  a sybil group, alike by design, would make every honest non-IID client look far from the rest);
- ``sybil``: its closeness under that of the clients outside its HDBSCAN group and of the other groups
  (:func:`~.signals.sybil_groups`; a group may be half of the federation), counted only for a client without
  individuality or not measured yet, or in a group without it (:func:`~.signals.shared_pool`);
- ``pool``: its individuality (:func:`~.signals.individuality`: whether what sets it apart from its look-alikes
  persists over rounds) within chance, under that of the clients beyond chance: many ids fed from one data pool;
- ``stale``: each all-zero update, or one byte-identical to an earlier update of the same client, counts
  ``STALE_P`` (local training never repeats 100k floats to the bit);
- ``anomaly``: a non-finite update or one of the wrong size, anywhere in the recording, is ``ANOMALY_P``.

The client's ``suspicion`` is the strongest of them, Bonferroni-corrected for the number of signals that ran:
``-log10(min(1, m * min p))``, so a threshold ``t`` reads as about ``10**-t`` of honest clients reaching it
(``suspicion >= 2``: about 1%). A minimum, not a sum: a sybil group can be half of the clients, and a null fitted
to summed evidence would then be fitted to the sybils. ``consistency`` (mean cosine of a client's consecutive
directions) is reported as context and not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._validate import check_int, check_number
from ..errors import InputError
from . import signals as fs
from .recorder import UpdateRecorder

#: Evidence of one stale (all-zero or repeated) update.
STALE_P = 1e-3
#: Evidence of a non-finite or wrong-size update.
ANOMALY_P = 1e-12
#: A signal whose probability is below this is named in the reasons.
REASON_P = 0.01
#: Default threshold on the suspicion: about 1% of honest clients reach it.
DEFAULT_THRESHOLD = 2.0

#: Signals in the order they are reported and tie-broken.
SIGNALS = ("anomaly", "sybil", "pool", "stale", "norm", "krum", "dissent", "trust")


@dataclass(frozen=True)
class ClientReport:
    """What :func:`analyze_clients` returns.

    Attributes
    ----------
    table : DataFrame
        One row per client (index ``client_id``), most suspicious first: ``suspicion``, ``is_flagged``,
        ``reasons``, ``top_signal``, ``first_round``, ``n_rounds`` (in the window), ``sybil_group`` (-1 none),
        ``closeness``, ``individuality``, ``consistency``, and per signal ``<signal>_score`` and ``<signal>_p``.
    groups : DataFrame
        One row per HDBSCAN group: ``size``, ``n_flagged``, ``median_closeness``, ``median_p`` (of the smaller of
        ``sybil_p`` and ``pool_p``), ``first_round``
        (earliest of its members), ``members``. Honest clients form groups too; :attr:`sybil_groups` keeps the
        groups whose members are flagged for being alike.
    params : dict
        The parameters of the analysis (window, rounds, threshold, ...).
    """

    table: pd.DataFrame
    groups: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> list[str]:
        """Ids of the flagged clients, most suspicious first."""
        return [str(c) for c in self.table.index[self.table["is_flagged"].to_numpy(dtype=bool)]]

    @property
    def sybil_groups(self) -> pd.DataFrame:
        """The rows of ``groups`` that are sybil groups: at least one member is flagged for being alike with the
        others or for being one pool (its ``sybil_p`` or ``pool_p`` below :data:`REASON_P`). A group of honest
        clients that HDBSCAN also finds is not one because a free-rider or an outsized update among them is flagged
        for that."""
        t = self.table
        if not len(self.groups):
            return self.groups
        together = np.minimum(t["sybil_p"].to_numpy(), t["pool_p"].to_numpy() if "pool_p" in t else 1.0)
        alike = t["is_flagged"].to_numpy(dtype=bool) & (together < REASON_P) \
            & (t["sybil_group"].to_numpy() >= 0)
        return self.groups[self.groups.index.isin(np.unique(t["sybil_group"].to_numpy()[alike]))]


def _reason(name: str, row: pd.Series) -> str:
    if name == "anomaly":
        return f"sent {row['anomalies']}"
    if name == "sybil":
        if row["sybil_group"] < 0:
            return f"with its nearest clients far more alike than the others (closeness {row['closeness']:.2f})"
        return (f"in group {int(row['sybil_group'])} of {int(row['group_size'])} clients far more alike than the "
                f"others (closeness {row['closeness']:.2f})")
    if name == "pool":
        where = f"group {int(row['sybil_group'])} of {int(row['group_size'])}" if row["sybil_group"] >= 0 else (
            "its nearest clients")
        return (f"differs from {where} only by chance from round to round (individuality "
                f"{row['individuality']:.2f}): one data pool behind many ids, not devices with their own data")
    if name == "stale":
        return f"sent {int(row['stale_score'])} all-zero or repeated update(s)"
    if name == "norm":
        return f"update norm far from the round's typical one (robust z {row['norm_score']:.1f})"
    if name == "krum":
        return f"far from its nearest updates (Krum log-ratio {row['krum_score']:.1f})"
    if name == "dissent":
        return f"points away from the robust aggregate (robust z {row['dissent_score']:.1f})"
    return f"disagrees with the trusted root-data update (robust z {row['trust_score']:.1f})"


def analyze_clients(
    recorder: UpdateRecorder,
    *,
    window: int | None = 3,
    min_group: int = 10,
    n_components: int = 10,
    threshold: float = DEFAULT_THRESHOLD,
    n_malicious: int | None = None,
    trusted: Mapping[int, np.ndarray] | None = None,
) -> ClientReport:
    """Score every recorded client on the last ``window`` rounds and flag those above ``threshold``.

    Parameters
    ----------
    recorder : UpdateRecorder
    window : int or None
        Rounds analysed, counted back from the last recorded one (None: all). Anomalies count from every round.
    min_group : int >= 2
        Smallest sybil group (see :func:`~forensics.federated.signals.sybil_groups`).
    n_components : int >= 1
        Principal components kept per round when accumulating directions.
    threshold : float
        Suspicion at or above which a client is flagged.
    n_malicious : int, optional
        Krum's ``f`` (default a quarter of each round's clients).
    trusted : mapping round -> sketch of shape (k,), optional
        An update computed on a trusted root dataset, sketched with the recorder's projection
        (``forensics.federated.sketch(update, k=recorder.k, random_state=recorder.random_state)``); adds the
        FLTrust-style ``trust`` signal.

    Returns
    -------
    ClientReport
    """
    from threadpoolctl import threadpool_limits

    # The matrices here are small (clients x 256); a multi-threaded BLAS spin-waits on them on a busy machine
    # (a 256 x 256 eigendecomposition took 3.3 s instead of 0.03 s at a load of 6 on 2 cores).
    with threadpool_limits(1, user_api="blas"):
        return _analyze(recorder, window=window, min_group=min_group, n_components=n_components,
                        threshold=threshold, n_malicious=n_malicious, trusted=trusted)


def _analyze(
    recorder: UpdateRecorder,
    *,
    window: int | None,
    min_group: int,
    n_components: int,
    threshold: float,
    n_malicious: int | None,
    trusted: Mapping[int, np.ndarray] | None,
) -> ClientReport:
    if not isinstance(recorder, UpdateRecorder):
        raise InputError(f"recorder must be an UpdateRecorder; got {type(recorder).__name__}")
    if not recorder.rounds:
        raise InputError("recorder holds no round yet; record at least one round before analysing")
    min_group = check_int(min_group, "min_group", low=2)
    n_components = check_int(n_components, "n_components", low=1)
    threshold = check_number(threshold, "threshold", low=0)
    rounds = fs.rounds_window(recorder.rounds, window)

    clean_rounds: list[tuple[list[str], np.ndarray]] = []
    per: dict[str, list[tuple[list[str], np.ndarray]]] = {"norm": [], "dissent": [], "krum": [], "trust": []}
    for r in rounds:
        rec = recorder.round(r)
        ok = rec.finite
        ids = [str(c) for c in rec.client_ids[ok]]
        sk = rec.sketches[ok].astype(np.float64)
        if len(ids) == 0:
            continue
        clean_rounds.append((ids, sk))
        per["norm"].append((ids, fs.norm_deviation(rec.norms[ok])))
        per["dissent"].append((ids, fs.aggregate_dissent(sk)))
        per["krum"].append((ids, fs.krum_distance(sk, n_malicious=n_malicious)))
        if trusted is not None and r in trusted:
            t = np.asarray(trusted[r], dtype=np.float64)
            if t.shape != (recorder.k,):
                raise InputError(f"trusted[{r}] must be a sketch of shape ({recorder.k},); got {t.shape}")
            per["trust"].append((ids, fs.trust_dissent(sk, t)))

    clients = recorder.clients
    all_ids = [str(c) for c in clients.index]
    table = pd.DataFrame(index=pd.Index(all_ids, name="client_id"))
    table["first_round"] = clients["first_round"].to_numpy()
    in_window: dict[str, int] = {}
    for ids, _ in clean_rounds:
        for c in ids:
            in_window[c] = in_window.get(c, 0) + 1
    table["n_rounds"] = [in_window.get(c, 0) for c in all_ids]

    from ..signals.combine import tail_probability

    ran = []
    # Sybil groups on the denoised directions accumulated over the window.
    d_ids, directions = fs.accumulated_directions(clean_rounds, n_components=n_components)
    group, close, p_syb = fs.sybil_groups(directions, min_group=min_group) if len(d_ids) else (
        np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    pos = {c: i for i, c in enumerate(d_ids)}
    idx = np.array([pos.get(c, -1) for c in all_ids])
    has = idx >= 0
    table["sybil_group"] = np.where(has, group[np.maximum(idx, 0)] if len(group) else -1, -1)
    table["closeness"] = np.where(has, close[np.maximum(idx, 0)] if len(close) else np.nan, np.nan)
    # One pool behind many ids: what sets a client apart from its look-alikes does not persist across rounds.
    ind, near = fs.individuality(clean_rounds, d_ids, directions, neighbours=min_group - 1) if len(d_ids) else (
        np.zeros(0), np.zeros((0, 0), dtype=np.int64))
    p_pool, p_syb = fs.shared_pool(ind, near, group, p_syb, k=recorder.k, min_group=min_group) if len(d_ids) else (
        np.zeros(0), np.zeros(0))
    table["sybil_score"] = table["closeness"]
    table["sybil_p"] = np.where(has, p_syb[np.maximum(idx, 0)] if len(p_syb) else 1.0, 1.0)
    table["individuality"] = np.where(has, ind[np.maximum(idx, 0)] if len(ind) else np.nan, np.nan)
    table["pool_score"] = table["individuality"]
    table["pool_p"] = np.where(has, p_pool[np.maximum(idx, 0)] if len(p_pool) else 1.0, 1.0)
    sizes = table["sybil_group"].map(table["sybil_group"].value_counts())
    table["group_size"] = np.where(table["sybil_group"] >= 0, sizes, 0)
    ran += ["sybil", "pool"]

    # Outlier signals, each under the bulk of the clients outside any significant group: a sybil group is alike
    # by design, and left in the null it would make every honest non-IID client look far from the rest (on 400
    # honest Fashion-MNIST clients and 100 sybils, 10 honest clients reached 2 on the Krum distance that way).
    ordinary = (table["sybil_p"].to_numpy() >= REASON_P) & (table["pool_p"].to_numpy() >= REASON_P)
    for name in ("norm", "dissent", "krum", "trust"):
        if not per[name]:
            continue
        m = fs.mean_by_client(per[name])
        score = np.array([m.get(c, np.nan) for c in all_ids])
        table[f"{name}_score"] = score
        table[f"{name}_p"] = tail_probability(score, reference=score[ordinary] if ordinary.sum() >= 8 else None)
        ran.append(name)
    cons = fs.consistency(clean_rounds, n_components=n_components)
    table["consistency"] = [cons.get(c, np.nan) for c in all_ids]

    # Stale updates: all-zero, or byte-identical to an earlier update of the same client.
    seen: dict[str, set[str]] = {}
    stale = dict.fromkeys(all_ids, 0)
    window_set = set(rounds)
    for r in recorder.rounds:
        rec = recorder.round(r)
        for c, dg, nrm in zip(rec.client_ids, rec.digests, rec.norms):
            repeat = dg in seen.get(c, set())
            if r in window_set and (repeat or nrm == 0):
                stale[c] += 1
            seen.setdefault(c, set()).add(dg)
    table["stale_score"] = [stale[c] for c in all_ids]
    table["stale_p"] = STALE_P ** table["stale_score"].to_numpy(dtype=np.float64)
    ran.append("stale")

    anomalies = recorder.anomalies
    text = {c: "; ".join(f"a {'non-finite' if k == 'non_finite' else 'wrong-size'} update in round {r}"
                         for r, k in zip(g["round"], g["kind"])) for c, g in anomalies.groupby("client_id")}
    table["anomalies"] = [text.get(c, "") for c in all_ids]
    table["anomaly_score"] = [int((anomalies["client_id"] == c).sum()) for c in all_ids]
    table["anomaly_p"] = np.where(table["anomaly_score"] > 0, ANOMALY_P, 1.0)
    ran.append("anomaly")

    order = [s for s in SIGNALS if s in ran]
    pmat = table[[f"{s}_p" for s in order]].to_numpy(dtype=np.float64)
    best = pmat.argmin(axis=1)
    pmin = pmat[np.arange(len(table)), best]
    table["suspicion"] = -np.log10(np.clip(len(order) * pmin, 1e-300, 1.0)) + 0.0
    table["is_flagged"] = table["suspicion"] >= threshold
    table["top_signal"] = np.where(pmin < REASON_P, np.array(order, dtype=object)[best], "")
    reasons = []
    for i, (_, row) in enumerate(table.iterrows()):
        named = [order[j] for j in np.argsort(pmat[i], kind="stable") if pmat[i, j] < REASON_P]
        reasons.append("; ".join(_reason(s, row) for s in named))
    table["reasons"] = reasons
    table = table.sort_values("suspicion", ascending=False, kind="stable")

    rows = []
    for g, members in table[table["sybil_group"] >= 0].groupby("sybil_group"):
        rows.append(dict(group=int(g), size=len(members), n_flagged=int(members["is_flagged"].sum()),
                         median_closeness=float(members["closeness"].median()),
                         median_p=float(np.median(np.minimum(members["sybil_p"], members["pool_p"]))),
                         first_round=int(members["first_round"].min()), members=list(members.index)))
    groups = pd.DataFrame(rows, columns=["group", "size", "n_flagged", "median_closeness", "median_p",
                                         "first_round", "members"]).set_index("group")
    groups = groups.sort_values("median_p", kind="stable")
    params = dict(window=window, rounds=rounds, min_group=min_group, n_components=n_components,
                  threshold=threshold, n_malicious=n_malicious, signals=order, k=recorder.k,
                  random_state=recorder.random_state)
    return ClientReport(table=table, groups=groups, params=params)


__all__ = ["ANOMALY_P", "ClientReport", "DEFAULT_THRESHOLD", "REASON_P", "SIGNALS", "STALE_P", "analyze_clients"]
