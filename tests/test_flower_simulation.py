"""A real Flower simulation (its Ray backend, offline, on this machine) driving ForensicStrategy end to end.

Thirty honest digit clients on Dirichlet(0.5) partitions and ten fake devices that train on one attacker's pool,
half of it carrying a 2x2 patch relabelled 0, all sampled every round by Flower itself. The same federation is run
twice: with plain FedAvg the patch takes; with ForensicStrategy the fake devices are flagged, left out, and it does
not. The global model is measured by Flower's own server-side ``evaluate_fn``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.simulation import run_simulation

from forensics.federated import UpdateRecorder
from forensics.federated.flower import ForensicStrategy
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
    """Client data, the initial weights, and a server-side evaluation that logs (accuracy, attack success)."""
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
    test, triggered = _flat(xte), _flat(trigger.apply(xte[yte != TARGET], random_state=0))
    measured: dict[int, tuple[float, float]] = {}

    def evaluate(server_round, arrays, config):
        p = np.concatenate([a.ravel() for a in arrays]).astype(np.float32)
        measured[server_round] = (float(np.mean(predict(p, layout, test) == yte)),
                                  float(np.mean(predict(p, layout, triggered) == TARGET)))
        return 0.0, {}

    return data, layout, initial, evaluate, measured


def _simulate(strategy_class, data, layout, initial, evaluate, **kwargs):
    ids = sorted(data)

    class Device(NumPyClient):
        """Five steps of local SGD on the device's own data; it reports its id in the fit metrics."""

        def __init__(self, cid: str):
            self.cid = cid
            x, y = data[cid]
            self.x, self.y = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())

        def fit(self, parameters, config):
            model = build_model(np.concatenate([p.ravel() for p in parameters]), layout).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            rng = np.random.default_rng([ids.index(self.cid), int(config["server_round"])])
            for _ in range(5):
                batch = torch.from_numpy(rng.integers(len(self.x), size=32))
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(self.x[batch]), self.y[batch]).backward()
                opt.step()
            return [v.detach().numpy() for v in model.state_dict().values()], len(self.x), {"client_id": self.cid}

    def client_fn(context: Context):
        return Device(ids[int(context.node_config["partition-id"])]).to_client()

    strategy = strategy_class(initial_parameters=ndarrays_to_parameters(initial), fraction_fit=1.0,
                              fraction_evaluate=0.0, min_fit_clients=len(ids), min_available_clients=len(ids),
                              on_fit_config_fn=lambda r: {"server_round": r}, evaluate_fn=evaluate, **kwargs)

    def server_fn(context: Context):
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ROUNDS))

    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=len(ids),
                   backend_config={"client_resources": {"num_cpus": 1},
                                   "init_args": {"include_dashboard": False, "num_cpus": 2}})
    return strategy


@pytest.mark.slow
def test_a_real_flower_simulation_records_flags_and_excludes_the_fake_devices():
    data, layout, initial, evaluate, measured = _federation()
    _simulate(FedAvg, data, layout, initial, evaluate)
    plain = dict(measured)
    measured.clear()
    strategy = _simulate(ForensicStrategy, data, layout, initial, evaluate, recorder=UpdateRecorder())

    sybils = {c for c in data if c.startswith("sybil")}
    guard = strategy.guard
    assert guard.recorder.rounds == list(range(1, ROUNDS + 1))  # Flower counts rounds from 1
    assert set(guard.recorder.round(1).client_ids) == set(data)
    for r in range(1, ROUNDS + 1):
        assert sybils <= set(guard.excluded[r]), r
    honest_flagged = guard.flagged - sybils
    assert len(honest_flagged) <= 3, honest_flagged
    # Without the guard the patch takes and the fake devices drag accuracy down; with it, it does not.
    assert plain[ROUNDS][1] >= 0.9 and measured[ROUNDS][1] <= 0.05, (plain, measured)
    assert measured[ROUNDS][0] >= plain[ROUNDS][0] + 0.2, (plain, measured)
