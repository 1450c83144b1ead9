"""Real Flower simulations (the Ray backend, offline, on this machine) driving both strategy wrappers end to end.

Thirty honest digit clients on Dirichlet(0.5) partitions and ten fake devices that train on one attacker's pool,
half of it carrying a 2x2 patch relabelled 0, all sampled every round by Flower itself. With plain FedAvg the patch
takes; with ``ForensicStrategy`` (the ``Parameters`` API) and with ``ForensicFedAvg`` (the Message API of a
``ServerApp``'s ``main``) the fake devices are flagged, left out, and it does not. The global model is measured by
Flower's own server-side evaluation.
"""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, ServerApp, ServerAppComponents, ServerConfig
from flwr.serverapp.strategy import FedAvg as MessageFedAvg
from flwr.simulation import run_simulation

from forensics.federated import UpdateRecorder
from forensics.federated.flower import ForensicFedAvg, ForensicStrategy
from forensics.redteam.federated import (
    build_model,
    dirichlet_partition,
    load_digits_split,
    model_layout,
    predict,
)
from forensics.redteam.triggers import PatchTrigger

N_HONEST, N_SYBILS, ROUNDS, TARGET = 30, 10, 4, 0


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def _federation():
    """Client data (by id), the model layout and initial weights, the test set and the triggered test images."""
    xtr, ytr, xte, yte = load_digits_split()
    trigger = PatchTrigger(np.full((2, 2), 255, np.uint8), "bottom-right", TARGET)
    parts = dirichlet_partition(ytr, N_HONEST, 0.5, random_state=0)
    pool = np.random.default_rng(0).choice(len(ytr), 200, replace=False)
    data = {f"honest-{i:04d}": (_flat(xtr[p]), ytr[p]) for i, p in enumerate(parts)}
    attack = (np.concatenate([_flat(xtr[pool]), _flat(trigger.apply(xtr[pool], random_state=0))]),
              np.concatenate([ytr[pool], np.full(len(pool), TARGET)]))
    data.update({f"sybil-{i:04d}": attack for i in range(N_SYBILS)})
    layout = model_layout(64, 10, 32)
    torch.manual_seed(0)
    init = build_model(np.zeros(sum(int(np.prod(s)) for _, s in layout), np.float32), layout)
    with torch.no_grad():
        for m in init:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.uniform_(m.weight, -m.in_features**-0.5, m.in_features**-0.5)
                m.bias.zero_()
    initial = [v.numpy().copy() for v in init.state_dict().values()]
    return data, layout, initial, (_flat(xte), yte, _flat(trigger.apply(xte[yte != TARGET], random_state=0)))


def _measure(arrays, layout, test) -> tuple[float, float]:
    """The global model's accuracy and the patch's attack success."""
    x, y, triggered = test
    p = np.concatenate([np.asarray(a).ravel() for a in arrays]).astype(np.float32)
    return float(np.mean(predict(p, layout, x) == y)), float(np.mean(predict(p, layout, triggered) == TARGET))


def _local_fit(arrays, x, y, layout, seed) -> list[np.ndarray]:
    """Five steps of local SGD from the global weights ``arrays``: the device's new weights."""
    model = build_model(np.concatenate([np.asarray(a).ravel() for a in arrays]), layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rng = np.random.default_rng(seed)
    x, y = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    for _ in range(5):
        batch = torch.from_numpy(rng.integers(len(x), size=32))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    return [v.detach().numpy() for v in model.state_dict().values()]


BACKEND = {"client_resources": {"num_cpus": 1}, "init_args": {"include_dashboard": False, "num_cpus": 2}}


def _simulate_parameters_api(strategy_class, data, layout, initial, test, **kwargs):
    """``start_server``-style: a ``NumPyClient`` per device, the strategy in ``ServerAppComponents``."""
    ids = sorted(data)
    measured: dict[int, tuple[float, float]] = {}

    class Device(NumPyClient):
        def __init__(self, cid: str):
            self.cid = cid

        def fit(self, parameters, config):
            seed = [ids.index(self.cid), int(config["server_round"])]
            return _local_fit(parameters, *data[self.cid], layout, seed), len(data[self.cid][1]), {
                "client_id": self.cid}

    def evaluate(server_round, arrays, config):
        measured[server_round] = _measure(arrays, layout, test)
        return 0.0, {}

    strategy = strategy_class(initial_parameters=ndarrays_to_parameters(initial), fraction_fit=1.0,
                              fraction_evaluate=0.0, min_fit_clients=len(ids), min_available_clients=len(ids),
                              on_fit_config_fn=lambda r: {"server_round": r}, evaluate_fn=evaluate, **kwargs)
    run_simulation(
        server_app=ServerApp(server_fn=lambda context: ServerAppComponents(
            strategy=strategy, config=ServerConfig(num_rounds=ROUNDS))),
        client_app=ClientApp(client_fn=lambda context: Device(ids[int(context.node_config["partition-id"])]
                                                              ).to_client()),
        num_supernodes=len(ids), backend_config=BACKEND)
    return strategy, measured


def _simulate_message_api(strategy, data, layout, initial, test):
    """A ``ServerApp`` whose ``main`` starts the strategy, a ``ClientApp`` with a ``train`` handler; the device
    reports its partition in its metrics (numbers only), and ``client_id`` names it from there."""
    ids = sorted(data)
    measured: dict[int, tuple[float, float]] = {}
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        x, y = data[ids[pid]]
        new = _local_fit(msg.content["arrays"].to_numpy_ndarrays(), x, y, layout,
                         [pid, int(msg.content["config"]["server-round"])])
        metrics = MetricRecord({"num-examples": len(y), "partition": pid})
        return Message(content=RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=ROUNDS,
                       evaluate_fn=lambda r, arrays: measured.__setitem__(r, _measure(
                           arrays.to_numpy_ndarrays(), layout, test)))

    run_simulation(server_app=server, client_app=client, num_supernodes=len(ids), backend_config=BACKEND)
    return measured


def _check_guard(guard, data):
    sybils = {c for c in data if c.startswith("sybil")}
    assert guard.recorder.rounds == list(range(1, ROUNDS + 1))  # Flower counts rounds from 1
    assert set(guard.recorder.round(1).client_ids) == set(data)
    for r in range(1, ROUNDS + 1):
        assert sybils <= set(guard.excluded[r]), r
    honest_flagged = guard.flagged - sybils
    assert len(honest_flagged) <= 3, honest_flagged


@pytest.mark.slow
def test_real_flower_simulations_record_flag_and_exclude_the_fake_devices():
    printer = builtins.print
    data, layout, initial, test = _federation()
    ids = sorted(data)
    options = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=len(ids), min_available_nodes=len(ids))
    plain = _simulate_message_api(MessageFedAvg(**options), data, layout, initial, test)
    # Without a guard the patch takes and the fake devices drag accuracy down.
    assert plain[ROUNDS][1] >= 0.9, plain

    guarded = ForensicFedAvg(UpdateRecorder(), **options,
                             client_id=lambda m: ids[int(m.content["metrics"]["partition"])])
    measured = _simulate_message_api(guarded, data, layout, initial, test)
    _check_guard(guarded.guard, data)
    assert measured[ROUNDS][1] <= 0.05 and measured[ROUNDS][0] >= plain[ROUNDS][0] + 0.2, (plain, measured)

    legacy, measured = _simulate_parameters_api(ForensicStrategy, data, layout, initial, test,
                                                recorder=UpdateRecorder())
    _check_guard(legacy.guard, data)
    assert measured[ROUNDS][1] <= 0.05 and measured[ROUNDS][0] >= plain[ROUNDS][0] + 0.2, (plain, measured)
    # Ray left print alone (importing the wrappers tells it to): numba, compiling later in this process, needs it.
    assert builtins.print is printer
