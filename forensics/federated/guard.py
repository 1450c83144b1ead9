"""A server-side guard: record each round, analyse, and say which clients the aggregation should leave out.

:class:`AggregationGuard` is what the Flower strategy wrapper (:mod:`forensics.federated.flower`) delegates to,
kept free of flwr so that any server loop can use it: ``kept = guard.screen(round, updates, n_examples)`` records
the round into its :class:`~forensics.federated.recorder.UpdateRecorder`, runs
:func:`~forensics.federated.analysis.analyze_clients` on the recent rounds and returns the ids to aggregate.
By default a client is left out of the rounds in which the analysis flags it (the analysis already looks back over
a window of rounds, and a non-finite or wrong-size update flags its client for good); ``sticky=True`` leaves a
client out for good once it was flagged. Updates that could not be recorded (wrong size) and non-finite ones are
never aggregated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .analysis import ClientReport, analyze_clients
from .recorder import UpdateRecorder


class AggregationGuard:
    """Record, analyse and exclude, round by round.

    Parameters
    ----------
    recorder : UpdateRecorder
    exclude : bool
        False records and analyses only (a dry run that reports whom it would exclude).
    sticky : bool
        Leave a client out of every later round once it was flagged.
    analysis : dict, optional
        Keyword arguments of :func:`analyze_clients` (``window``, ``min_group``, ``threshold``, ...).

    Attributes
    ----------
    flagged : set of str
        Every client flagged so far.
    reports : dict round -> ClientReport
    excluded : dict round -> list of str
        Who was left out of each round's aggregation.
    """

    def __init__(self, recorder: UpdateRecorder, *, exclude: bool = True, sticky: bool = False,
                 analysis: Mapping[str, Any] | None = None):
        if not isinstance(recorder, UpdateRecorder):
            raise InputError(f"recorder must be an UpdateRecorder; got {type(recorder).__name__}")
        self.recorder = recorder
        self.exclude = bool(exclude)
        self.sticky = bool(sticky)
        self.analysis = dict(analysis or {})
        self.flagged: set[str] = set()
        self.reports: dict[int, ClientReport] = {}
        self.excluded: dict[int, list[str]] = {}

    @property
    def last_report(self) -> ClientReport | None:
        """The report of the latest round screened."""
        return self.reports[max(self.reports)] if self.reports else None

    def screen(self, round: int, updates: Mapping[str, Any] | np.ndarray, *, client_ids: Sequence[str] | None = None,
               n_examples: Mapping[str, int] | Sequence[int] | None = None,
               metadata: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
        """Record ``updates`` as round ``round``, analyse, and return the ids to aggregate (in the given order)."""
        rec = self.recorder.record_round(round, updates, client_ids=client_ids, n_examples=n_examples,
                                         metadata=metadata, bad_shape="record")
        report = analyze_clients(self.recorder, **self.analysis)
        self.reports[int(round)] = report
        self.flagged |= set(report.flagged)
        out = self.flagged if self.sticky else set(report.flagged)
        given = [str(c) for c in (updates if isinstance(updates, Mapping) else (client_ids or []))]
        usable = {str(c) for c, ok in zip(rec.client_ids, rec.finite) if ok}
        kept = [c for c in given if c in usable and not (self.exclude and c in out)]
        self.excluded[int(round)] = [c for c in given if c not in kept]
        return kept


__all__ = ["AggregationGuard"]
