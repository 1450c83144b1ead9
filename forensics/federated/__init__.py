"""Federated-learning forensics: which clients' model updates look like fake devices, attackers or free-riders.

The analyst sees each client's model update per round. :class:`UpdateRecorder` keeps a fixed random sketch and
the exact norm of every update (saved round by round to a folder, atomically); :func:`analyze_clients` scores
every client on the recorded rounds (norm outliers, dissent from the robust aggregate, Krum distance, sybil
groups far more alike than honest non-IID clients, stale and non-finite updates) into one calibrated suspicion
with reasons; :func:`group_effect` measures what a flagged group's mean update does to the global model (attack
success of a trigger with and without it, and which classes gain predictions), and :func:`group_trigger`
reconstructs the image trigger it induces from the model alone when none is known (:func:`group_phrases`: the
phrase, for a text model); once a trigger is known, :func:`trigger_pushers` says which clients' own updates push it
(fake devices that hold poisoned data of their own look like honest devices of one class in every other respect), and
:func:`screen_group_triggers` rebuilds every group's trigger (or phrase) and counts who pushes it, for when none is
known. The Flower strategy wrappers (:class:`forensics.federated.flower.ForensicStrategy`, and
:class:`~forensics.federated.flower.ForensicFedAvg` for Flower's Message API) record every round and can leave
flagged clients out of the aggregation; they import flwr on first use. :func:`write_client_report` writes a
self-contained HTML report of the clients (:mod:`forensics.federated.report`).

Examples
--------
>>> from forensics.federated import UpdateRecorder, analyze_clients
>>> rec = UpdateRecorder("runs/fl-audit")
>>> rec.record_round(0, {"phone-1": delta_1, "phone-2": delta_2})
>>> report = analyze_clients(rec)
>>> report.table[["suspicion", "is_flagged", "reasons"]].head()
"""

from __future__ import annotations

from typing import Any

from .analysis import DEFAULT_THRESHOLD, ClientReport, analyze_clients
from .confirm import (
    InducedTrigger,
    apply_update,
    group_effect,
    group_phrases,
    group_trigger,
    screen_group_triggers,
    trigger_pushers,
)
from .recorder import RoundRecord, UpdateRecorder
from .sketch import SKETCH_DIM, flatten_update, sketch

_LAZY = {"ForensicFedAvg": "flower", "ForensicStrategy": "flower", "client_report_html": "report",
         "write_client_report": "report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'forensics.federated' has no attribute {name!r}")


__all__ = ["ClientReport", "DEFAULT_THRESHOLD", "ForensicFedAvg", "ForensicStrategy", "InducedTrigger", "RoundRecord",
           "SKETCH_DIM", "UpdateRecorder", "analyze_clients", "apply_update", "client_report_html", "flatten_update",
           "group_effect", "group_phrases", "group_trigger", "screen_group_triggers", "sketch", "trigger_pushers",
           "write_client_report"]
