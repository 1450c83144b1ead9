"""Run an investigation's heavy steps on a Dask cluster: ``forensics.investigate(..., client=client)``.

Two steps leave this process when a ``dask.distributed.Client`` is given:

* **Extraction** (:func:`forward_chunks_on`): the model is sent once to every worker; each chunk of the dataset
  (``chunk_size`` rows, 65,536 by default) is one task that runs the same forward pass as a local run and
  returns its rows. Rows come back as tasks finish and go into this process's memory or, with ``cache_dir``,
  into its resumable on-disk store: a lost worker's task is rerun by Dask on another worker, and a run that
  stops altogether resumes from the chunks it stored.
* **Signals** (:func:`score_on`): the signals that share an intermediate (the out-of-fold probabilities, the
  neighbour graph, the loss) run together as one task, the others one task each; the features are sent to
  the cluster once. The combination runs here, on the gathered scores.

On a real cluster every worker needs the same Python packages as this process (``pip install
poison-forensics`` and torch, at the same versions), and the model's class must be importable there (a class
defined in a notebook is sent by value, which works when it only uses installed packages). The dataset's
payloads are sent with the tasks, chunk by chunk, so the workers need no access to this machine's files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .data import Dataset

#: Signals that read the same shared intermediate run in one task, so that it is computed once.
SHARED_INTERMEDIATE = {
    "low_loss": "high_loss",
    "targeted_flip": "label_quality",
    "ensemble": "label_quality",
    "knn_outlier": "knn_disagreement",
    "trusted_distance": "trusted_disagreement",
}


def check_client(client: Any) -> Any:
    """The client, after checking it is a connected ``dask.distributed.Client``."""
    try:
        from distributed import Client
    except ImportError as e:  # pragma: no cover - dask is a dependency of the dev and scale extras
        raise InputError("client= needs dask.distributed: pip install 'poison-forensics[scale]'") from e
    if not isinstance(client, Client):
        raise InputError(f"client must be a dask.distributed.Client; got {type(client).__name__}")
    if client.status != "running":
        raise InputError(f"the Dask client is {client.status!r}, not connected to a scheduler")
    if not client.scheduler_info().get("workers"):
        try:  # a cluster whose workers are (re)starting: wait for one rather than fail
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, OSError):
            raise InputError(f"the Dask cluster at {client.scheduler.address} has no workers (none joined in "
                             f"{WORKER_WAIT_S:g} s)") from None
    return client


#: Seconds to wait for a worker to join a cluster that has none (one restarting after a crash).
WORKER_WAIT_S = 30.0


#: On a worker: the models it has unpacked, by model hash (a task reuses the one sent before it).
_WORKER_MODELS: dict[str, Any] = {}


def _extract_chunk(packed: bytes, model_key: str, part: Dataset, options: Mapping[str, Any]
                   ) -> tuple[dict[str, np.ndarray], dict]:
    """One task: the forward pass over one chunk, as a local run does it."""
    import cloudpickle

    from .activations import _forward_chunks

    model = _WORKER_MODELS.get(model_key)
    if model is None:
        # Bytes this process's own client packed (never a file from elsewhere); unpacked once per worker.
        _WORKER_MODELS.clear()
        model = _WORKER_MODELS[model_key] = cloudpickle.loads(packed)
    meta: dict[str, Any] = {}
    ((_, arrays),) = _forward_chunks(model, part, [(0, len(part))], [0], meta=meta, **options)
    return arrays, meta


def forward_chunks_on(
    client: Any, model: Any, dataset: Dataset, chunks: Sequence[tuple[int, int]], todo: Sequence[int], *,
    meta: dict[str, Any], options: Mapping[str, Any],
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield ``(chunk index, arrays)`` for the chunks in ``todo``, computed on the cluster, as they finish.

    ``meta`` gets the device and batch size the workers used."""
    import cloudpickle
    from distributed import as_completed

    client = check_client(client)
    if not todo:
        return
    # The model travels as pickled bytes, once to each worker: Dask's own serialization of a torch module
    # loses the hook tables that the forward pass registers its hooks in.
    packed = client.scatter(cloudpickle.dumps(model), broadcast=True, hash=False)
    futures = {}
    for index in todo:
        start, stop = chunks[index]
        part = dataset._take(np.arange(start, stop))
        futures[client.submit(_extract_chunk, packed, meta["model_hash"], part, dict(options), pure=False)] = index
    try:
        for future in as_completed(futures):
            arrays, task_meta = future.result()
            meta.update(task_meta)
            yield futures[future], arrays
            future.release()
    finally:
        for future in futures:
            future.cancel()


def _score_group(features: np.ndarray, labels: np.ndarray, selected: Mapping[str, tuple[Any, Mapping[str, Any]]],
                 context: Mapping[str, Any]) -> dict[str, Any]:
    """One task: the signals of one group (name -> (declaration, parameters)) over their own context."""
    from .signals.compute import score_signals
    from .signals.registry import SignalContext

    ctx = SignalContext(features, labels, **context)
    scores, seconds, skipped = score_signals(ctx, {name: params for name, (_, params) in selected.items()},
                                             specs={name: spec for name, (spec, _) in selected.items()})
    return {"scores": scores, "seconds": seconds, "skipped": skipped, "shared_seconds": dict(ctx.seconds),
            "outputs": dict(ctx.outputs)}


def groups_of(names: Sequence[str]) -> list[list[str]]:
    """The selected signals in tasks: each with the signal whose intermediate it reads, else alone."""
    groups: dict[str, list[str]] = {}
    for name in names:
        head = SHARED_INTERMEDIATE.get(name, name)
        groups.setdefault(head if head in names else name, []).append(name)
    return list(groups.values())


def score_on(client: Any, features: np.ndarray, labels: np.ndarray, selected: Mapping[str, Mapping[str, Any]],
             context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run the selected signals on the cluster, a task per group (:func:`groups_of`); one result per group."""
    from concurrent.futures import CancelledError

    from .signals.registry import get_signal

    client = check_client(client)
    data = {"features": features, "labels": labels,
            **{k: v for k, v in context.items() if k != "random_state" and v is not None}}
    for attempt in range(_SCATTER_ATTEMPTS):
        # The arrays (and the dataset) go to the cluster once; every task reads them from there. Scattered as a
        # list, each under a fresh key: a dict's keys would be the data's keys, and a second run (or a retry) could
        # read the first run's "features" while those are still held.
        names = list(data)
        scattered = dict(zip(names, client.scatter([data[k] for k in names], broadcast=False, hash=False)))
        f, y = scattered.pop("features"), scattered.pop("labels")
        rest = {**context, **scattered}
        # Each task carries its signals' declarations: a signal registered in a notebook runs on a worker too.
        futures = [client.submit(_score_group, f, y, {name: (get_signal(name), selected[name]) for name in group},
                                 rest, pure=False)
                   for group in groups_of(list(selected))]
        try:
            return client.gather(futures)
        except CancelledError:
            # A worker left with the scattered arrays, and the tasks that needed them were cancelled for lost
            # dependencies: send the arrays again (a task that failed for another reason raises as it is).
            if attempt == _SCATTER_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


#: Times the signals' arrays are sent to the cluster when a worker holding them leaves mid-run.
_SCATTER_ATTEMPTS = 3


__all__ = ["SHARED_INTERMEDIATE", "check_client", "forward_chunks_on", "groups_of", "score_on"]
