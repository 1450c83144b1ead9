"""What to do about the poison found: a remediation plan, its cost before anything is applied, and the sanitized data.

:func:`plan_remediation` turns an investigation into one row per affected sample: an **action** (``remove``,
``relabel`` with the suggested label, or ``quarantine`` for human review), the **rule** that chose it and **who
decided** (a review decision names its reviewer; a rule names itself), and the reasons. Policies combine; each sample
takes the first that applies, in this order:

1. the review (``review=True``): a sample the analyst *cleared* is never touched; one *confirmed* as poison is
   removed; one *suspected* but not decided is quarantined;
2. the carriers of a confirmed trigger (``triggers=True``) are removed;
3. every sample of a chosen source, then of a chosen map cluster, is removed;
4. a one-way relabelling (``pairs=True``): for each pair of classes the investigation found relabelled in excess
   (``inv.params["relabelled_pairs"]``), as many samples of label ``a`` as its ``targeted_flip`` probabilities
   expect were relabelled (their sum; shared among the pairs of one label by their ``excess``), the most likely
   first, are relabelled ``b``; where a label holds a few lookalikes of every class at once (many-to-one), its share
   is removed instead (which class each came from is not known, and they may carry a trigger);
5. a suspicion at or above ``threshold``: relabelled to the model's prediction when a label signal is the strongest
   evidence and the model predicts another class (``relabel=True``), removed otherwise.

The plan is a value: nothing is applied until :meth:`RemediationPlan.apply`. Its dry run
(:meth:`RemediationPlan.dry_run`) says what it costs: samples per action, per class and per source, the estimated
number of clean samples the suspicion rule sacrifices (the threshold's own estimate, ``10**-threshold`` of the
data), and how many rows no person has reviewed. Applying it to a dataset that is not the one investigated (its
content differs) is refused, naming the samples that differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .data import Dataset
from .errors import InputError
from .signals import combine as _combine
from .signals.registry import score_columns, signals_tagged

if TYPE_CHECKING:
    from .investigation import Investigation

#: The actions a plan can take on a sample.
ACTIONS = ("remove", "relabel", "quarantine")
#: The columns of :attr:`RemediationPlan.table` (indexed by ``sample_id``).
PLAN_COLUMNS = ("action", "label", "new_label", "source", "suspicion", "rule", "decided_by", "reasons")


@dataclass(frozen=True)
class Sanitized:
    """A plan applied: the training data to keep (relabelled where planned) and the quarantined samples aside."""

    dataset: Dataset
    quarantine: Dataset | None
    plan: RemediationPlan = field(repr=False)


@dataclass(frozen=True)
class RemediationPlan:
    """One row per affected sample (:data:`PLAN_COLUMNS`), the policy that made it, and the data it was made for."""

    table: pd.DataFrame
    policy: dict[str, Any]
    class_names: tuple[str, ...]
    ids: np.ndarray = field(repr=False)
    hashes: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    sources: np.ndarray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """Samples in the investigated dataset."""
        return len(self.ids)

    def counts(self) -> pd.Series:
        """Samples per action (all three, zeros included)."""
        return self.table["action"].value_counts().reindex(ACTIONS, fill_value=0).rename("count")

    def by(self, column: str) -> pd.DataFrame:
        """Per class (``column="label"``) or per source (``"source"``): samples in the data, per action, and the
        share affected; sorted by that share."""
        if column not in ("label", "source"):
            raise InputError(f"column must be 'label' or 'source'; got {column!r}")
        if column == "source" and self.sources is None:
            raise InputError("this dataset has no sources")
        everything = self._column(column)
        out = pd.crosstab(self.table[column], self.table["action"]).reindex(columns=ACTIONS, fill_value=0)
        out = out.reindex(everything.value_counts().index, fill_value=0)
        out.insert(0, "n", everything.value_counts().reindex(out.index).to_numpy())
        out["share_affected"] = out[list(ACTIONS)].sum(axis=1) / out["n"]
        out.index.name = "class" if column == "label" else "source"
        return out.sort_values(["share_affected", "n"], ascending=False, kind="stable")

    def dry_run(self) -> dict[str, Any]:
        """What applying the plan would cost, before anything is applied.

        Returns a dict: ``n`` (samples in the data), ``counts`` (per action), ``kept`` (samples left for training),
        ``by_class`` and ``by_source`` (:meth:`by`; ``by_source`` is None without sources), ``by_rule`` (rows per
        rule), ``estimated_clean_sacrificed`` (the clean samples the suspicion rule is expected to catch: the
        threshold's own estimate, ``10**-threshold`` of the data, at most the rows it chose) and ``unreviewed``
        (rows decided by a rule, not by a person).
        """
        t = self.table
        threshold = self.policy.get("threshold")
        by_threshold = int(t["rule"].str.startswith("suspicion").sum())
        estimate = 0.0 if threshold is None else min(by_threshold, self.n * 10.0 ** -threshold)
        counts = self.counts()
        return {
            "n": self.n,
            "counts": counts.to_dict(),
            "kept": int(self.n - counts["remove"] - counts["quarantine"]),
            "by_class": self.by("label"),
            "by_source": None if self.sources is None else self.by("source"),
            "by_rule": t["rule"].str.split(":").str[0].value_counts().rename("rows"),
            "estimated_clean_sacrificed": round(estimate, 1),
            "unreviewed": int((~t["decided_by"].str.startswith("review")).sum()),
        }

    def summary(self) -> str:
        """The dry run in a few lines of text."""
        d = self.dry_run()
        c = d["counts"]
        lines = [f"plan for {d['n']} samples: remove {c['remove']}, relabel {c['relabel']}, quarantine "
                 f"{c['quarantine']}; {d['kept']} kept for training",
                 "rules: " + ", ".join(f"{k} {v}" for k, v in d["by_rule"].items()),
                 f"estimated clean samples among those the suspicion rule chose: {d['estimated_clean_sacrificed']:g}",
                 f"rows no person reviewed: {d['unreviewed']}"]
        top = d["by_class"].head(3)
        lines.append("most affected classes: " + ", ".join(
            f"{name} {100 * row.share_affected:.1f}%" for name, row in top.iterrows()))
        return "\n".join(lines)

    def apply(self, dataset: Dataset) -> Sanitized:
        """The sanitized data: removed and quarantined samples left out, relabelled ones relabelled.

        Refused (:class:`~forensics.errors.InputError`, naming the samples) when ``dataset`` is not the data the
        plan was made for: a sample added, missing, or with other content or another label.
        """
        if not isinstance(dataset, Dataset):
            raise InputError(f"dataset must be a forensics.Dataset; got {type(dataset).__name__}")
        self._check_same_data(dataset)
        t = self.table
        labels = dataset.labels.copy()
        relabel = t[t["action"] == "relabel"]
        labels[dataset.positions(relabel.index.tolist())] = relabel["new_label"].map(self._code).to_numpy()
        relabelled = dataset.replace(labels=labels)
        aside = dataset.positions(t.index[t["action"].isin(["remove", "quarantine"])].tolist())
        keep = np.ones(len(dataset), dtype=bool)
        keep[aside] = False
        if not keep.any():
            raise InputError("the plan removes or quarantines every sample; nothing would be left to train on")
        held = t.index[t["action"] == "quarantine"].tolist()
        return Sanitized(dataset=relabelled.subset(keep), quarantine=dataset.subset(held) if held else None, plan=self)

    def to_frame(self) -> pd.DataFrame:
        """The plan's rows with the policy as a JSON column, for :func:`forensics.export.export_table`."""
        out = self.table.copy()
        out["policy"] = json.dumps(self.policy, sort_keys=True)
        return out

    def _code(self, name: str) -> int:
        return self.class_names.index(name)

    def _column(self, column: str) -> pd.Series:
        if column == "label":
            return pd.Series(np.asarray(self.class_names, dtype=object)[self.labels])
        return pd.Series(self.sources, dtype=object)

    def _check_same_data(self, dataset: Dataset) -> None:
        if tuple(dataset.class_names) != self.class_names:
            raise InputError(f"the dataset has classes {list(dataset.class_names)} but the plan was made for "
                             f"{list(self.class_names)}")
        planned = pd.DataFrame({"hash": self.hashes, "label": self.labels}, index=pd.Index(self.ids, dtype=object))
        given = pd.DataFrame({"hash": dataset.hashes, "label": dataset.labels},
                             index=pd.Index(dataset.ids, dtype=object))
        missing = planned.index.difference(given.index)
        added = given.index.difference(planned.index)
        common = planned.index.intersection(given.index)
        changed = common[(planned.loc[common] != given.loc[common]).any(axis=1).to_numpy()]
        problems = [(what, ids) for what, ids in (("missing", missing), ("added", added),
                                                  ("changed (content or label)", changed)) if len(ids)]
        if problems:
            raise InputError("the dataset changed since the investigation the plan was made from: " + "; ".join(
                f"{len(ids)} {what} ({', '.join(map(repr, list(ids)[:5]))}{', ...' if len(ids) > 5 else ''})"
                for what, ids in problems) + "; investigate the current data and plan again")


def plan_remediation(
    inv: Investigation,
    *,
    threshold: float | None = _combine.DEFAULT_THRESHOLD,
    triggers: bool = True,
    sources: Iterable[str] | str = (),
    clusters: Iterable[int] | int = (),
    review: bool = True,
    relabel: bool = True,
    pairs: bool = False,
) -> RemediationPlan:
    """A remediation plan from an investigation (see the module docstring for the order of the rules).

    Parameters
    ----------
    inv : Investigation
    threshold : float or None
        Samples whose suspicion reaches it are relabelled or removed; None: the suspicion chooses nothing.
    triggers : bool
        Remove the carriers of every confirmed trigger (``inv.triggers``).
    sources : iterable of str
        Remove every sample of these sources.
    clusters : iterable of int
        Remove every sample of these clusters of the map (``inv.map``).
    review : bool
        Follow the review: cleared samples are kept, confirmed ones removed, suspected ones quarantined.
    relabel : bool
        Relabel, rather than remove, a sample the suspicion rule chose when a label signal is its strongest evidence
        and the model predicts another class.
    pairs : bool
        Act on each one-way relabelling the investigation found as a whole: relabel back as many samples as the
        ``targeted_flip`` probabilities expect, the most likely first (many of them stay below the suspicion
        threshold, their relabelling being a matter of degree). The pair test's ``excess`` undercounts (relabelled
        samples that the model learned to call ``a`` are not counted): on the attack matrix's pair flips it was
        26-74% of the relabelled samples, the probabilities' sum 57-94%, and 86-100% of the samples it chooses
        were relabelled. Needs the ``targeted_flip`` signal.

    Returns
    -------
    RemediationPlan
    """
    ds = inv.dataset
    n = len(ds)
    names = np.asarray(ds.class_names, dtype=object)
    src = np.asarray(ds.sources, dtype=object) if ds.sources is not None else np.full(n, None, dtype=object)
    sources = [sources] if isinstance(sources, str) else [str(s) for s in sources]
    unknown = sorted(set(sources) - set(map(str, src)))
    if unknown:
        raise InputError(f"sources {unknown} are not in the data")
    clusters = [clusters] if isinstance(clusters, (int, np.integer)) else list(clusters)
    if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in clusters):
        raise InputError(f"clusters must be cluster numbers of the map; got {clusters!r}")
    clusters = [int(c) for c in clusters]
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number))
                                  or not np.isfinite(threshold)):
        raise InputError(f"threshold must be a finite number or None; got {threshold!r}")

    action = np.full(n, "", dtype=object)
    rule = np.full(n, "", dtype=object)
    decided = np.full(n, "", dtype=object)
    new_label = names[ds.labels].copy()
    done = np.zeros(n, dtype=bool)

    def take(mask: np.ndarray, what: str, why: str, who: Any = "rule") -> None:
        pick = mask & ~done
        action[pick], rule[pick], decided[pick] = what, why, who if isinstance(who, str) else who[pick]
        done[pick] = True

    if review:
        status = inv.review["status"].to_numpy(dtype=object)
        reviewer = np.asarray(["review by " + (w or "unknown") for w in inv.review["who"].to_numpy(dtype=object)],
                              dtype=object)
        done |= status == "cleared"
        take(status == "confirmed", "remove", "review: confirmed poison", reviewer)
        take(status == "suspected", "quarantine", "review: suspected, not decided", reviewer)
    if triggers and len(inv.triggers):
        for _, row in inv.triggers[inv.triggers["verdict"] == "confirmed"].iterrows():
            carriers = np.isin(ds.ids, list(row["sample_ids"] or []))
            take(carriers, "remove", f"trigger: carries the confirmed trigger {row['trigger_id']}")
    for s in sources:
        take(src == s, "remove", f"source: every sample of {s}")
    if clusters:
        cluster_of = inv.map["cluster"].to_numpy()
        for c in clusters:
            if not (cluster_of == c).any():
                raise InputError(f"cluster {c} is not on the map; choose from {sorted(set(cluster_of.tolist()))}")
            take(cluster_of == c, "remove", f"cluster: every sample of cluster {c}")
    suspicion = inv.signals["suspicion"].to_numpy(dtype=np.float64)
    if pairs:
        found = inv.params.get("relabelled_pairs") or []
        column = "targeted_flip_score"
        if found and column not in inv.signals:
            raise InputError("pairs=True needs the targeted_flip signal's scores; investigate with it")
        score = inv.signals[column].to_numpy(dtype=np.float64) if found else None
        # One entry per pair; a label's many-to-one rows (test "label") are one entry, with no class to relabel to.
        entries: dict[tuple[int, int], float] = {}
        for pair in found:
            b = -1 if pair.get("test", "pair") == "label" else int(pair["looks_like"])
            key = (int(pair["label"]), b)
            entries[key] = entries.get(key, 0) + max(pair["excess"], 1)
        excess_of_label: dict[int, float] = {}
        for (a, _), excess in entries.items():
            excess_of_label[a] = excess_of_label.get(a, 0) + excess
        for (a, b), excess in entries.items():
            rows = np.flatnonzero((ds.labels == a) & ~done & (score > 0))
            # The scores are probabilities of a relabelling: their sum is how many to expect, this entry's share of
            # them by its excess.
            count = int(round(score[rows].sum() * excess / excess_of_label[a]))
            chosen = np.zeros(n, dtype=bool)
            # Many reach probability 1: ties go to the more suspicious.
            chosen[rows[np.lexsort((-suspicion[rows], -score[rows]))[:count]]] = True
            if b < 0:
                # A few lookalikes of every class given one label (a backdoor the model did not learn): which class
                # each came from is not known here, and they may carry a trigger: removed, not relabelled.
                take(chosen, "remove", f"pair: {names[a]} holds about {count} relabelled lookalikes of other "
                                       "classes (many-to-one); the most likely")
                continue
            new_label[chosen] = names[b]
            take(chosen, "relabel", f"pair: {names[a]} holds about {count} relabelled {names[b]}; among the most "
                                    f"{names[b]}-like")
    if threshold is not None:
        high = suspicion >= threshold
        if relabel and "prediction" in inv.samples:
            pred = inv.samples["prediction"].to_numpy()
            label_led = _label_signal_strongest(inv)
            swap = high & label_led & (pred != ds.labels) & ~done
            new_label[swap] = names[pred[swap]]
            take(swap, "relabel", f"suspicion: >= {threshold:g}, label evidence strongest")
        take(high, "remove", f"suspicion: >= {threshold:g}")

    rows = np.flatnonzero(done & (action != ""))
    table = pd.DataFrame({
        "action": action[rows],
        "label": names[ds.labels[rows]],
        "new_label": np.where(action[rows] == "relabel", new_label[rows], None),
        "source": src[rows],
        "suspicion": suspicion[rows],
        "rule": rule[rows],
        "decided_by": decided[rows],
        "reasons": inv.signals["reasons"].to_numpy(dtype=object)[rows] if "reasons" in inv.signals else "",
    }, index=pd.Index(ds.ids[rows], name="sample_id", dtype=object))
    policy = {"threshold": threshold, "triggers": triggers, "sources": sources, "clusters": clusters,
              "review": review, "relabel": relabel, "pairs": pairs, "investigation": inv.id}
    return RemediationPlan(table=table, policy=policy, class_names=tuple(ds.class_names), ids=ds.ids.copy(),
                           hashes=np.asarray(ds.hashes).copy(), labels=ds.labels.copy(),
                           sources=None if ds.sources is None else src.copy())


def _label_signal_strongest(inv: Investigation) -> np.ndarray:
    """Per sample: whether a label signal holds its smallest tail probability (the evidence is about its label)."""
    scores = score_columns(inv.signals)
    if not scores:
        return np.zeros(len(inv.dataset), dtype=bool)
    tail = _combine.combine(scores, inv.dataset.labels, n_classes=len(inv.dataset.class_names),
                            null_scores={k: v for k, v in inv.null_scores.items() if k in scores},
                            label_null=inv.label_null).tail_p
    strongest = np.asarray(tail.columns, dtype=object)[tail.to_numpy().argmin(axis=1)]
    return np.isin(strongest, list(signals_tagged("label")))


__all__ = ["ACTIONS", "PLAN_COLUMNS", "RemediationPlan", "Sanitized", "plan_remediation"]
