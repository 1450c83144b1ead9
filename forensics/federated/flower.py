"""Flower integration: a FedAvg strategy that records every round's client updates and can leave flagged clients
out of the aggregation, for both of Flower's strategy APIs.

Needs flwr (``pip install poison-forensics[bench]``); the rest of :mod:`forensics.federated` does not.

- :class:`ForensicStrategy`: the ``flwr.server.strategy.FedAvg`` of ``start_server`` and ``ServerAppComponents``
  (``Parameters``, ``FitRes``).
- :class:`ForensicFedAvg`: the ``flwr.serverapp.strategy.FedAvg`` of a ``ServerApp``'s ``main`` (Flower 1.21 and
  later: ``ArrayRecord`` replies, ``strategy.start(grid, initial_arrays, ...)``). A client is named by its node id,
  or by ``client_id(message)``.

:class:`ForensicStrategy` is Flower's ``FedAvg`` with one change in ``aggregate_fit``: each client's update (its
returned weights minus the global weights it was sent, which the strategy remembers from ``initialize_parameters``,
``configure_fit`` and its own previous aggregate) goes through an
:class:`~forensics.federated.guard.AggregationGuard` (record, analyse, exclude), and FedAvg then averages the clients
the guard keeps. The round's report is in ``strategy.guard.reports``; the metrics returned to the server add
``forensics_excluded`` and ``forensics_flagged``. Given the global model's architecture (``model=``),
``strategy.guard.watch(trigger, probes)`` also leaves out the clients whose own update pushes a known trigger.

Examples
--------
>>> from forensics.federated import UpdateRecorder
>>> from forensics.federated.flower import ForensicStrategy
>>> strategy = ForensicStrategy(UpdateRecorder("runs/fl-audit"), initial_parameters=params, min_fit_clients=10)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import InputError

# Ray (Flower's simulation engine) replaces builtins.print with a Python function for its progress bars, unless told
# not to; numba, compiling pynndescent's and UMAP's functions later in the same process, then failed with "Untyped
# global name 'print'" (the approximate neighbours of a large class, right after a simulation).
os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")

try:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg
    from flwr.serverapp.strategy import FedAvg as MessageFedAvg
except ImportError as e:  # pragma: no cover - exercised only without flwr
    raise ImportError("forensics.federated.flower needs Flower (flwr): install the extra with "
                      "pip install poison-forensics[bench] (Flower 1.21 or later)") from e

from .guard import HOLD, AggregationGuard
from .recorder import UpdateRecorder


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)


def _delta(flat: np.ndarray, base: np.ndarray) -> np.ndarray:
    """A client's update from its returned weights; a wrong-size one is kept as it is, for the guard to record as
    an anomaly (its delta cannot be taken)."""
    return flat - base if flat.size == base.size else flat


def _global_model(model: Any, guard: AggregationGuard, base: np.ndarray) -> Any:
    """The round's global model, where a watched trigger needs it (the guard says so when none is given)."""
    if model is None or all(w["reference"] is not None for w in guard.watched):
        return None
    from .confirm import apply_update

    own = np.concatenate([v.detach().cpu().numpy().astype(np.float64).ravel()
                          for v in model.state_dict().values() if v.is_floating_point()])
    if own.size != base.size:
        raise InputError(f"the global weights have {base.size} values; the model= given has {own.size} "
                         "floating-point parameters and buffers in its state_dict")
    return apply_update(model, base - own)


def _default_client_id(proxy: Any, fit_res: Any) -> str:
    """The client's own id if it reports one in its metrics (``client_id``), else the proxy's ``cid``."""
    metrics = getattr(fit_res, "metrics", None) or {}
    return str(metrics.get("client_id", getattr(proxy, "cid", None)))


class ForensicStrategy(FedAvg):
    """FedAvg that records every round into ``recorder`` and excludes the clients the analysis flags.

    Parameters
    ----------
    recorder : UpdateRecorder
    exclude : bool
        False: record and analyse only.
    sticky : bool
        Leave a client out of every later round once it was flagged.
    hold : int >= 0
        Unflagged updates a flagged client sends before it is aggregated again (default
        :data:`~forensics.federated.guard.HOLD`, the analysis's window; 0: as soon as it is no longer flagged).
    probation : int >= 0
        Updates of a client joining after the first round that are analysed but not aggregated (default 0).
    analysis : dict, optional
        Keyword arguments of :func:`~forensics.federated.analyze_clients`.
    client_id : callable, optional
        ``(client_proxy, fit_res) -> str``; default: ``fit_res.metrics["client_id"]`` if present, else the proxy's
        ``cid``.
    model : torch.nn.Module, optional
        The global model's architecture, whose ``state_dict`` floating entries, in order, are the arrays the clients
        exchange: each round the global weights are loaded into a copy of it, for a trigger the guard watches
        (:meth:`~forensics.federated.guard.AggregationGuard.watch`).
    **fedavg_kwargs
        Passed to Flower's ``FedAvg`` (``initial_parameters``, ``min_fit_clients``, ...).
    """

    def __init__(self, recorder: UpdateRecorder, *, exclude: bool = True, sticky: bool = False, hold: int = HOLD,
                 probation: int = 0, analysis: Mapping[str, Any] | None = None,
                 client_id: Callable[[Any, Any], str] | None = None, model: Any = None, **fedavg_kwargs: Any):
        super().__init__(**fedavg_kwargs)
        self.model = model
        self.guard = AggregationGuard(recorder, exclude=exclude, sticky=sticky, hold=hold, probation=probation,
                                      analysis=analysis)
        self.client_id = _default_client_id if client_id is None else client_id
        initial = fedavg_kwargs.get("initial_parameters")
        self._global: list[np.ndarray] | None = None if initial is None else parameters_to_ndarrays(initial)

    def __repr__(self) -> str:
        return f"ForensicStrategy(exclude={self.guard.exclude}, flagged={len(self.guard.flagged)})"

    def set_global_parameters(self, parameters: Parameters | list[np.ndarray]) -> None:
        """Tell the strategy the global weights the next round's clients start from."""
        arrays = parameters_to_ndarrays(parameters) if isinstance(parameters, Parameters) else list(parameters)
        self._global = [np.asarray(a) for a in arrays]

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        params = super().initialize_parameters(client_manager)
        if params is not None:
            self.set_global_parameters(params)
        return params

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        self.set_global_parameters(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, Any]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
        if not results:
            return None, {}
        if self._global is None:
            raise InputError("ForensicStrategy does not know the global weights the clients started from: give "
                             "initial_parameters, or call set_global_parameters before aggregate_fit")
        base = _flat(self._global)
        updates: dict[str, Any] = {}
        n_examples: dict[str, int] = {}
        by_id: dict[str, tuple[Any, Any]] = {}
        for proxy, fit_res in results:
            cid = self.client_id(proxy, fit_res)
            if cid in updates:
                raise InputError(f"two results of round {server_round} come from client {cid!r}")
            updates[cid] = _delta(_flat(parameters_to_ndarrays(fit_res.parameters)), base)
            n_examples[cid] = int(fit_res.num_examples)
            by_id[cid] = (proxy, fit_res)
        kept = self.guard.screen(server_round, updates, n_examples=n_examples,
                                 model=_global_model(self.model, self.guard, base))
        kept_results = [by_id[c] for c in kept]
        if not kept_results:
            return None, {"forensics_excluded": len(results), "forensics_flagged": len(self.guard.flagged)}
        params, metrics = super().aggregate_fit(server_round, kept_results, failures)
        if params is not None:
            self.set_global_parameters(params)
        metrics = dict(metrics)
        metrics["forensics_excluded"] = len(results) - len(kept)
        metrics["forensics_flagged"] = len(self.guard.flagged)
        return params, metrics


def _node_id(message: Message) -> str:
    return str(message.metadata.src_node_id)


class ForensicFedAvg(MessageFedAvg):
    """Flower's Message-API ``FedAvg`` that records every round into ``recorder`` and excludes the clients the
    analysis flags: :class:`ForensicStrategy` for a ``ServerApp``'s ``main``.

    Each reply's weights (its one ``ArrayRecord``) minus the global arrays ``configure_train`` sent is the client's
    update, its MetricRecord's ``weighted_by_key`` entry its number of examples; they go through the
    :class:`~forensics.federated.guard.AggregationGuard`, and FedAvg averages the replies it keeps. Replies that
    carry an error are left to FedAvg, which logs them (nothing came back to record). The round's report is in
    ``strategy.guard.reports``; the aggregated metrics add ``forensics-excluded`` and ``forensics-flagged``.

    Parameters
    ----------
    recorder : UpdateRecorder
    exclude, sticky, hold, probation, analysis, model
        As :class:`ForensicStrategy`.
    client_id : callable, optional
        ``(reply message) -> str``; default: the sending node's id (``message.metadata.src_node_id``).
    **fedavg_kwargs
        Passed to Flower's ``flwr.serverapp.strategy.FedAvg`` (``fraction_train``, ``min_available_nodes``, ...).

    Examples
    --------
    >>> strategy = ForensicFedAvg(UpdateRecorder("runs/fl-audit"), fraction_train=1.0)
    >>> result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=10)
    >>> strategy.guard.flagged
    """

    def __init__(self, recorder: UpdateRecorder, *, exclude: bool = True, sticky: bool = False, hold: int = HOLD,
                 probation: int = 0, analysis: Mapping[str, Any] | None = None,
                 client_id: Callable[[Message], str] | None = None, model: Any = None, **fedavg_kwargs: Any):
        super().__init__(**fedavg_kwargs)
        self.model = model
        self.guard = AggregationGuard(recorder, exclude=exclude, sticky=sticky, hold=hold, probation=probation,
                                      analysis=analysis)
        self.client_id = _node_id if client_id is None else client_id
        self._global: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"ForensicFedAvg(exclude={self.guard.exclude}, flagged={len(self.guard.flagged)})"

    def set_global_arrays(self, arrays: ArrayRecord | list[np.ndarray]) -> None:
        """Tell the strategy the global weights the next round's clients start from (``configure_train`` does)."""
        self._global = _flat(arrays.to_numpy_ndarrays() if isinstance(arrays, ArrayRecord) else list(arrays))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any
                        ) -> Any:
        self.set_global_arrays(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Any) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        answered = [m for m in replies if not m.has_error()]
        if not answered:
            return super().aggregate_train(server_round, replies)
        if self._global is None:
            raise InputError("ForensicFedAvg does not know the global arrays the clients started from: "
                             "aggregate_train follows configure_train (strategy.start calls both), or call "
                             "set_global_arrays first")
        updates: dict[str, Any] = {}
        n_examples: dict[str, int] = {}
        by_id: dict[str, Message] = {}
        for message in answered:
            cid = str(self.client_id(message))
            if cid in updates:
                raise InputError(f"two replies of round {server_round} come from client {cid!r}")
            arrays, metrics = message.content.array_records, message.content.metric_records
            if len(arrays) != 1 or len(metrics) != 1 or self.weighted_by_key not in next(iter(metrics.values())):
                raise InputError(f"the reply of client {cid!r} in round {server_round} must hold one ArrayRecord "
                                 f"and one MetricRecord with {self.weighted_by_key!r}; it holds "
                                 f"{len(arrays)} and {len(metrics)}")
            updates[cid] = _delta(_flat(next(iter(arrays.values())).to_numpy_ndarrays()), self._global)
            n_examples[cid] = int(next(iter(metrics.values()))[self.weighted_by_key])
            by_id[cid] = message
        kept = self.guard.screen(server_round, updates, n_examples=n_examples,
                                 model=_global_model(self.model, self.guard, self._global))
        counts = {"forensics-excluded": len(answered) - len(kept), "forensics-flagged": len(self.guard.flagged)}
        if not kept:
            return None, MetricRecord(counts)
        failed = [m for m in replies if m.has_error()]
        arrays_out, metrics_out = super().aggregate_train(server_round, [by_id[c] for c in kept] + failed)
        metrics_out = MetricRecord() if metrics_out is None else metrics_out
        for key, value in counts.items():
            metrics_out[key] = value
        return arrays_out, metrics_out


__all__ = ["ForensicFedAvg", "ForensicStrategy", "ndarrays_to_parameters"]
