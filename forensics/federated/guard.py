"""A server-side guard: record each round, analyse, and say which clients the aggregation should leave out.

:class:`AggregationGuard` is what the Flower strategy wrapper (:mod:`forensics.federated.flower`) delegates to,
kept free of flwr so that any server loop can use it: ``kept = guard.screen(round, updates, n_examples)`` records
the round into its :class:`~forensics.federated.recorder.UpdateRecorder`, runs
:func:`~forensics.federated.analysis.analyze_clients` on the recent rounds and returns the ids to aggregate.
By default a client is left out of the rounds in which the analysis flags it and of the next ``hold`` updates it
sends (3, the analysis's window): it comes back once that many of its updates have gone unflagged, that is once the
rounds that flagged it have left the window and a whole window since holds nothing against it. Without the hold
(``hold=0``), sybils that the analysis catches in most rounds but not every round slip into the rounds they are
missed: with 100 sybils among 100 honest clients at Dirichlet alpha 1.0 (``benchmarks/federated.py``, tuning seed 0),
8-15 of them were aggregated in each of the last five rounds and the attack success rate ended at 0.092 (0.085 with
a hold of one round, 0.077 with two, 0.047 with three; 0.060 -> 0.038 when they add noise), while honest clients
that look alike for a round or two come back: at alpha 0.1, where a dozen single-class honest clients are flagged
together in the first rounds, the final accuracy was 0.712 with the hold, 0.711 without, and 0.683 with
``sticky=True``, which leaves a client out for good once it was flagged. A non-finite or wrong-size update flags its
client for good in the analysis itself. Updates that could not be recorded (wrong size) and non-finite ones are
never aggregated.

A client that joins after the first round screened can be put on ``probation``: its first that many updates are
recorded and analysed but not aggregated. Sybils give nothing to measure their lack of individuality by before their
second round (:func:`~forensics.federated.signals.individuality`), and one round aggregated can be enough: on the
bundled reviews, 100 sybils among 100 honest clients at Dirichlet 1.0 were caught from their second round on and the
phrase they planted in their first round stayed learned (attack success 0.19-0.23 at the end against 0.15 for a model
trained without them; 0.05-0.06 with ``probation=1``; ``benchmarks/federated.py text``). On the Fashion-MNIST cells it
moved the attack success by at most 0.006 on the report seeds, and by 0.02 in two tuning cells where the sybils' first
round slipped in (``guard_probation``). An honest newcomer gives up its first update: not the default, since under
client sampling (Flower's ``fraction_fit`` below 1) every device sampled for the first time is a newcomer.

Once the analyst knows the trigger (confirmed with :func:`~forensics.federated.confirm.group_effect`, rebuilt by
:func:`~forensics.federated.confirm.group_trigger`), ``guard.watch(trigger, probes)`` leaves out, from the next round
on, every client whose own update pushes it (:func:`~forensics.federated.confirm.trigger_pushers`), measured on
``reference=`` (a checkpoint of the global model from before the attack) or on the round's global model, which
``screen`` then needs. This catches fake devices that each hold poisoned data of their own, whose updates
the analysis reads as honest devices of one class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._validate import check_int
from ..errors import InputError
from .analysis import DEFAULT_THRESHOLD, ClientReport, analyze_clients
from .confirm import trigger_pushers
from .recorder import UpdateRecorder

#: Unflagged updates a flagged client sends before it is aggregated again: the analysis's default window.
HOLD = 3


class AggregationGuard:
    """Record, analyse and exclude, round by round.

    Parameters
    ----------
    recorder : UpdateRecorder
    exclude : bool
        False records and analyses only (a dry run that reports whom it would exclude).
    sticky : bool
        Leave a client out of every later round once it was flagged.
    hold : int >= 0
        After a round that flags it, a client is left out of its next ``hold`` updates as well (and longer if it is
        flagged again among them); 0 aggregates it again as soon as the analysis no longer flags it.
    probation : int >= 0
        Updates of a client that joins after the first round screened that are recorded and analysed but not
        aggregated (0: none).
    analysis : dict, optional
        Keyword arguments of :func:`analyze_clients` (``window``, ``min_group``, ``threshold``, ...).

    Attributes
    ----------
    flagged : set of str
        Every client flagged so far.
    reports : dict round -> ClientReport
    excluded : dict round -> list of str
        Who was left out of each round's aggregation.
    held : dict str -> int
        Clients that are no longer flagged but still held out: how many more of their updates will be.
    on_probation : dict str -> int
        Newcomers and how many more of their updates will not be aggregated.
    watched : list of dict
        The triggers watched (see :meth:`watch`).
    pushes : dict round -> DataFrame
        Each watched round's :func:`~forensics.federated.confirm.trigger_pushers` table (the largest suspicion over
        the triggers watched); that round's report flags the pushers too (signal ``push``, first among their
        reasons), so the verdict, the panel and the HTML report name them.
    """

    def __init__(self, recorder: UpdateRecorder, *, exclude: bool = True, sticky: bool = False,
                 hold: int = HOLD, probation: int = 0, analysis: Mapping[str, Any] | None = None):
        if not isinstance(recorder, UpdateRecorder):
            raise InputError(f"recorder must be an UpdateRecorder; got {type(recorder).__name__}")
        self.recorder = recorder
        self.exclude = bool(exclude)
        self.sticky = bool(sticky)
        self.hold = check_int(hold, "hold", low=0)
        self.probation = check_int(probation, "probation", low=0)
        self.on_probation: dict[str, int] = {}
        self._seen: set[str] = set()
        self.analysis = dict(analysis or {})
        self.flagged: set[str] = set()
        self.reports: dict[int, ClientReport] = {}
        self.excluded: dict[int, list[str]] = {}
        self.held: dict[str, int] = {}
        self.watched: list[dict[str, Any]] = []
        self.pushes: dict[int, Any] = {}

    @property
    def last_report(self) -> ClientReport | None:
        """The report of the latest round screened."""
        return self.reports[max(self.reports)] if self.reports else None

    def watch(self, trigger: Any, images: Any, *, labels: np.ndarray | None = None, preprocess: Any = None,
              threshold: float = DEFAULT_THRESHOLD, reference: Any = None) -> None:
        """From the next round screened on, also leave out the clients whose own update pushes ``trigger``.

        Arguments as for :func:`~forensics.federated.confirm.trigger_pushers` (probe images or texts the server holds,
        their labels, the model's preprocess). The pushes are measured on ``reference``, a checkpoint of the global
        model from before the attack (best: once a model has learned the trigger, pushes on it fade), else on the
        round's global model, which ``screen`` then needs as ``model=``.
        """
        if not (hasattr(trigger, "apply") and hasattr(trigger, "target")):
            raise InputError(f"trigger must have apply() and target, like forensics.redteam.PatchTrigger; got "
                             f"{type(trigger).__name__}")
        self.watched.append(dict(trigger=trigger, images=images, labels=labels, preprocess=preprocess,
                                 threshold=threshold, reference=reference))

    def _pushers(self, round: int, model: Any, updates: Mapping[str, Any] | np.ndarray, given: list[str],
                 usable: set[str]) -> set[str]:
        if model is None and any(w["reference"] is None for w in self.watched):
            raise InputError("the guard watches a trigger without a reference model: screen(..., model=) needs the "
                             "global model the round's updates were computed from")
        rows = updates if isinstance(updates, Mapping) else dict(zip(given, updates))
        fine = {str(c): u for c, u in rows.items() if str(c) in usable}
        if len(fine) < 8:  # too few to read the spread of pushes from; the analysis still runs
            return set()
        tables = [trigger_pushers(model if w["reference"] is None else w["reference"], fine, w["trigger"],
                                  w["images"], labels=w["labels"], preprocess=w["preprocess"],
                                  threshold=w["threshold"]) for w in self.watched]
        table = tables[0]
        for t in tables[1:]:  # per client, the trigger it pushes most
            table = table.where(table["suspicion"] >= t["suspicion"], t)
        self.pushes[int(round)] = table
        return set(table.index[table["is_pusher"]])

    def screen(self, round: int, updates: Mapping[str, Any] | np.ndarray, *, client_ids: Sequence[str] | None = None,
               n_examples: Mapping[str, int] | Sequence[int] | None = None,
               metadata: Mapping[str, Mapping[str, Any]] | None = None, model: Any = None) -> list[str]:
        """Record ``updates`` as round ``round``, analyse, and return the ids to aggregate (in the given order).

        ``model``: the round's global model, needed only while a trigger is watched (:meth:`watch`).
        """
        rec = self.recorder.record_round(round, updates, client_ids=client_ids, n_examples=n_examples,
                                         metadata=metadata, bad_shape="record")
        report = analyze_clients(self.recorder, **self.analysis)
        self.reports[int(round)] = report
        given = [str(c) for c in (updates if isinstance(updates, Mapping) else (client_ids or []))]
        usable = {str(c) for c, ok in zip(rec.client_ids, rec.finite) if ok}
        pushers: set[str] = set()
        if self.watched:
            pushers = self._pushers(round, model, updates, given, usable)
            if int(round) in self.pushes:
                report = self.reports[int(round)] = _with_pushes(report, self.pushes[int(round)])
        now = set(report.flagged) | pushers
        self.flagged |= now
        # A client flagged now owes ``hold`` unflagged updates; one held from before pays one with this update.
        still = {c for c in given if c not in now and self.held.get(c, 0) > 0}
        out = self.flagged if self.sticky else now | still
        for c in still:
            self.held[c] -= 1
            if not self.held[c]:
                del self.held[c]
        self.held.update(dict.fromkeys(now, self.hold) if self.hold else {})
        # Newcomers (after the first round screened) sit out their first ``probation`` updates.
        if self.probation and self._seen:
            self.on_probation.update({c: self.probation for c in given if c not in self._seen})
        waiting = {c for c in given if self.on_probation.get(c, 0) > 0}
        for c in waiting:
            self.on_probation[c] -= 1
            if not self.on_probation[c]:
                del self.on_probation[c]
        self._seen.update(given)
        kept = [c for c in given if c in usable and not (self.exclude and (c in out or c in waiting))]
        self.excluded[int(round)] = [c for c in given if c not in kept]
        return kept


def _with_pushes(report: ClientReport, pushes: pd.DataFrame) -> ClientReport:
    """The round's report with the watched trigger's pushers flagged, their push first among their reasons, so that
    the verdict, the panel and the HTML report show them."""
    t = report.table.copy()
    t["push"] = pushes["push"].reindex(t.index)
    t["push_suspicion"] = pushes["suspicion"].reindex(t.index)
    hit = t.index[pushes["is_pusher"].reindex(t.index, fill_value=False).to_numpy(dtype=bool)]
    for c in hit:
        stronger = t.at[c, "push_suspicion"] > t.at[c, "suspicion"]
        t.at[c, "suspicion"] = max(float(t.at[c, "suspicion"]), float(t.at[c, "push_suspicion"]))
        t.at[c, "is_flagged"] = True
        if stronger or not t.at[c, "top_signal"]:
            t.at[c, "top_signal"] = "push"
        why = f"its own update ties the watched trigger to its class (log-odds +{t.at[c, 'push']:.2f} beyond clean)"
        t.at[c, "reasons"] = "; ".join(r for r in (why, str(t.at[c, "reasons"])) if r)
    params = dict(report.params, signals=[*report.params.get("signals", []), "push"])
    return dataclasses.replace(report, table=t.sort_values("suspicion", ascending=False, kind="stable"),
                               params=params)


__all__ = ["HOLD", "AggregationGuard"]
