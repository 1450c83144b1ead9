"""A federated-learning red team with ground truth: honest non-IID clients, sybil groups, a boosted attacker and
free-riders, trained with local SGD and aggregated round by round.

Honest clients hold Dirichlet(``alpha``) shares of each class of a real image set (``alpha`` 0.1: most clients
see one or two classes; 1.0: every class, unevenly), or of a text set (:func:`simulate_text_federation`: the
attacker plants a phrase, and the model reads hashed word n-grams). Each round every active client starts from the
global model, runs ``local_steps`` of minibatch SGD on its own data and sends its **update** (new weights minus the
global ones). The server aggregates the updates (FedAvg by default, or any ``aggregate`` callable, so that a
defence can sit in the loop) and the global model moves by the aggregate.

The attackers (all optional, each joining at its own round):

- a **sybil group** (``n_sybils`` fake devices of one attacker): each trains on a fresh draw from the attacker's
  pool (a random, class-balanced slice of the training data, ``poison_share`` of it carrying a patch or a phrase
  and relabelled ``target``), so their updates differ by minibatch noise only; ``sybil_noise`` adds Gaussian
  noise whose norm is that many times the median honest update norm of the round, to look diverse. With
  ``sybil_data="shard"`` each fake device holds a shard of its own instead, kept over the rounds like an honest
  device's data: the pool's clean samples split with the honest clients' Dirichlet(``alpha``) class skew, and an
  equal share of the triggered ones, so that each update carries the backdoor beside a direction of its own;
- a **boosted attacker** (``boost`` > 0): one client on the same poisoned pool whose update is multiplied by
  ``boost`` (model replacement);
- **free-riders** (``n_free_riders``): ``"zero"`` sends zeros; ``"stale"`` repeats its first update forever.

Everything is vectorized across clients (one batched forward per local step), so hundreds of clients of a
100k-parameter MLP train in seconds per round on a CPU. The model is a one-hidden-layer MLP (``hidden`` units,
ReLU) or, with ``hidden=0``, multinomial logistic regression; :func:`build_model` gives it as a torch module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._validate import check_choice, check_images, check_int, check_number, check_random_state
from ..errors import InputError
from .triggers import PatchTrigger, TextTrigger

#: Roles in the truth table.
ROLES = ("honest", "sybil", "boosted", "free_rider")
#: Where a sybil's training data comes from (:attr:`FederatedScenario.sybil_data`).
SYBIL_DATA = ("pool", "shard")

#: Width of the text federation's hashed input (:func:`text_features`): 2,048 buckets make a 66k-parameter model
#: with 32 hidden units.
TEXT_BUCKETS = 2**11

# Independent random streams derived from one random_state.
_PARTITION, _POOL, _INIT, _TRAIN, _NOISE = 11, 12, 13, 14, 15


@dataclass(frozen=True)
class FederatedScenario:
    """What the federation looks like. Every count may be 0; rounds are numbered from 0.

    Attributes
    ----------
    n_honest : int
        Honest clients.
    alpha : float
        Dirichlet concentration of the honest clients' class shares (0.1 very skewed, 1.0 mildly).
    n_rounds : int
    n_sybils : int
        Fake devices of one attacker pushing the backdoor.
    sybil_join : int
        Round at which the sybils (and the boosted attacker) start sending updates.
    sybil_noise : float
        Norm of the Gaussian noise each sybil adds to its update, in units of the round's median honest norm.
    sybil_data : str
        "pool": each sybil trains on the attacker's whole pool (its minibatches differ); "shard": each holds a fixed
        shard of it (a Dirichlet(``alpha``) class share of the clean part, an equal share of the triggered part).
    boost : float
        When > 0, one boosted attacker whose update is multiplied by this factor.
    n_free_riders : int
    free_rider : str
        "zero" or "stale".
    target : int
        The class triggered inputs should get.
    patch : int
        Side of the white square trigger in the bottom-right corner, in pixels.
    poison_share : float
        Share of the attacker's pool carrying the trigger (relabelled ``target``).
    pool_size : int
        Images in the attacker's pool (taken from the training set, not given to honest clients).
    hidden : int
        Hidden units of the MLP; 0 = logistic regression.
    local_steps, batch_size : int
        Local SGD steps per round and their minibatch size.
    lr : float
        Local learning rate.
    server_lr : float
        Step of the global model along the aggregate update.
    random_state : int
    training_seed : int, optional
        Seed of the initial weights and of the local minibatches (default: ``random_state``). Changed alone, the
        data, its partition and the attacker stay as they are: how far one training moves the accuracy is then
        measured apart from what a defence changes.
    """

    n_honest: int = 40
    alpha: float = 0.5
    n_rounds: int = 5
    n_sybils: int = 0
    sybil_join: int = 0
    sybil_noise: float = 0.0
    sybil_data: str = "pool"
    boost: float = 0.0
    n_free_riders: int = 0
    free_rider: str = "zero"
    target: int = 0
    patch: int = 2
    poison_share: float = 0.5
    pool_size: int = 400
    hidden: int = 32
    local_steps: int = 5
    batch_size: int = 32
    lr: float = 0.5
    server_lr: float = 1.0
    random_state: int = 0
    training_seed: int | None = None

    def __post_init__(self) -> None:
        check_int(self.n_honest, "n_honest", low=1)
        check_number(self.alpha, "alpha", low=0, low_open=True)
        check_int(self.n_rounds, "n_rounds", low=1)
        check_int(self.n_sybils, "n_sybils", low=0)
        check_int(self.sybil_join, "sybil_join", low=0)
        check_number(self.sybil_noise, "sybil_noise", low=0)
        check_choice(self.sybil_data, "sybil_data", SYBIL_DATA)
        check_number(self.boost, "boost", low=0)
        check_int(self.n_free_riders, "n_free_riders", low=0)
        check_choice(self.free_rider, "free_rider", ("zero", "stale"))
        check_int(self.target, "target", low=0)
        check_int(self.patch, "patch", low=1)
        check_number(self.poison_share, "poison_share", low=0, high=1, low_open=True)
        check_int(self.pool_size, "pool_size", low=1)
        check_int(self.hidden, "hidden", low=0)
        check_int(self.local_steps, "local_steps", low=1)
        check_int(self.batch_size, "batch_size", low=1)
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.server_lr, "server_lr", low=0, low_open=True)
        check_random_state(self.random_state)
        if self.training_seed is not None:
            check_random_state(self.training_seed, "training_seed")

    @property
    def has_attacker(self) -> bool:
        return self.n_sybils > 0 or self.boost > 0


@dataclass
class FederatedRun:
    """What :func:`simulate_federation` returns.

    Attributes
    ----------
    truth : DataFrame
        One row per client, indexed by ``client_id``: ``role`` (one of :data:`ROLES`), ``is_malicious`` (sybils,
        the boosted attacker and free-riders), ``joins_round``, ``n_examples``, ``dominant_class`` and
        ``dominant_share`` of its data.
    params : ndarray of float32, shape (n_params,)
        The final global model, flat (see :func:`build_model`).
    history : DataFrame
        Per round: ``accuracy`` on the test images, ``attack_success`` (share of triggered test images of other
        classes predicted ``target``), ``attack_flips`` (the same share among those the model classifies right
        without the trigger: what the trigger itself flips, where a weak model errs towards ``target`` anyway),
        ``n_clients``, ``n_excluded`` (clients the aggregate left out).
    trigger : PatchTrigger or TextTrigger
    layout : list of (name, shape)
        The flat parameters' layout, in the order of a torch ``state_dict`` of :func:`build_model`.
    preprocess : callable or None
        Payload batch -> input of :func:`build_model`'s module: None for images (the default
        :func:`~forensics.activations.default_image_preprocess`), :func:`text_preprocess` for texts.
    """

    truth: pd.DataFrame
    params: np.ndarray
    history: pd.DataFrame
    trigger: PatchTrigger | TextTrigger
    layout: list[tuple[str, tuple[int, ...]]] = field(repr=False)
    scenario: FederatedScenario = field(repr=False)
    preprocess: Callable[[Any], Any] | None = field(default=None, repr=False)


#: ``aggregate(round, client_ids, updates, n_examples) -> (update, excluded_ids)``.
Aggregate = Callable[[int, list[str], np.ndarray, np.ndarray], "tuple[np.ndarray, list[str]]"]
#: ``on_round(round, client_ids, updates, n_examples, params)``, called before the aggregation.
OnRound = Callable[[int, list[str], np.ndarray, np.ndarray, np.ndarray], None]


def dirichlet_partition(labels: np.ndarray, n_clients: int, alpha: float, *, random_state: int = 0,
                        min_size: int = 2) -> list[np.ndarray]:
    """Split sample indices among clients with Dirichlet(``alpha``) class shares.

    Each class's samples are shuffled and cut by a Dirichlet draw over clients; a client left with fewer than
    ``min_size`` samples gets them from the largest clients, so every client can train.

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
    n_clients : int
    alpha : float > 0
    random_state : int
    min_size : int

    Returns
    -------
    list of ndarray of int
        ``n_clients`` disjoint index arrays covering every sample.
    """
    y = np.asarray(labels)
    check_int(n_clients, "n_clients", low=1)
    check_number(alpha, "alpha", low=0, low_open=True)
    if len(y) < n_clients * min_size:
        raise InputError(f"labels has {len(y)} samples; {n_clients} clients of at least {min_size} need more")
    rng = np.random.default_rng([check_random_state(random_state), _PARTITION])
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet(np.full(n_clients, float(alpha)))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for i, chunk in enumerate(np.split(idx, cuts)):
            parts[i].extend(chunk.tolist())
    sizes = np.array([len(p) for p in parts])
    for short in np.flatnonzero(sizes < min_size).tolist():
        while len(parts[short]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[short].append(parts[donor].pop())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def model_layout(n_features: int, n_classes: int, hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the reference model's parameters, as its torch ``state_dict`` lists them."""
    if hidden == 0:
        return [("1.weight", (n_classes, n_features)), ("1.bias", (n_classes,))]
    return [("1.weight", (hidden, n_features)), ("1.bias", (hidden,)),
            ("3.weight", (n_classes, hidden)), ("3.bias", (n_classes,))]


def build_model(params: np.ndarray, layout: list[tuple[str, tuple[int, ...]]]) -> Any:
    """The reference model (a torch ``nn.Sequential``) holding the flat ``params``.

    Its input is a float tensor of images scaled to [0, 1], shape (n, height, width) or (n, 1, height, width)
    (what :func:`forensics.activations.default_image_preprocess` gives); it flattens them first.
    """
    import torch
    from torch import nn

    shapes = dict(layout)
    if "3.weight" in shapes:
        hidden, n_features = shapes["1.weight"]
        n_classes = shapes["3.weight"][0]
        model: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(n_features, hidden), nn.ReLU(),
                                         nn.Linear(hidden, n_classes))
    else:
        n_classes, n_features = shapes["1.weight"]
        model = nn.Sequential(nn.Flatten(), nn.Linear(n_features, n_classes))
    flat = np.asarray(params, dtype=np.float32)
    n_params = sum(int(np.prod(s)) for _, s in layout)
    if flat.shape != (n_params,):
        raise InputError(f"params must have shape ({n_params},) for this layout; got {flat.shape}")
    state, start = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape))
        state[name] = torch.from_numpy(flat[start:start + size].reshape(shape).copy())
        start += size
    model.load_state_dict(state)
    return model.eval()


def _unflatten(p: Any, layout: list[tuple[str, tuple[int, ...]]]) -> list[Any]:
    """Batched views (clients, *shape) of a (clients, n_params) tensor."""
    out, start = [], 0
    for _, shape in layout:
        size = int(np.prod(shape))
        out.append(p[:, start:start + size].reshape(p.shape[0], *shape))
        start += size
    return out


def _logits(p: Any, x: Any, layout: list[tuple[str, tuple[int, ...]]]) -> Any:
    """Batched forward: p (C, n_params), x (C, B, f) -> (C, B, k)."""
    import torch

    w = _unflatten(p, layout)
    if len(w) == 2:
        return torch.baddbmm(w[1][:, None, :], x, w[0].transpose(1, 2))
    h = torch.relu(torch.baddbmm(w[1][:, None, :], x, w[0].transpose(1, 2)))
    return torch.baddbmm(w[3][:, None, :], h, w[2].transpose(1, 2))


def predict(params: np.ndarray, layout: list[tuple[str, tuple[int, ...]]], x: np.ndarray) -> np.ndarray:
    """Predicted classes of flattened [0, 1] images ``x`` (n, f) under the flat ``params``."""
    import torch

    with torch.no_grad():
        p = torch.from_numpy(np.asarray(params, dtype=np.float32))[None]
        xs = torch.from_numpy(np.asarray(x, dtype=np.float32))[None]
        return _logits(p, xs, layout)[0].argmax(dim=1).numpy()


def _local_train(global_params: np.ndarray, client_data: list[np.ndarray], x_all: Any, y_all: Any,
                 layout: list[tuple[str, tuple[int, ...]]], s: FederatedScenario, rng: np.random.Generator
                 ) -> np.ndarray:
    """Local SGD for every client at once; returns the updates (C, n_params) as float32."""
    import torch

    n = len(client_data)
    if n == 0:
        return np.zeros((0, len(global_params)), dtype=np.float32)
    g = torch.from_numpy(global_params)
    p = g[None].repeat(n, 1).requires_grad_(True)
    sizes = np.array([len(d) for d in client_data])
    padded = np.zeros((n, sizes.max()), dtype=np.int64)
    for i, d in enumerate(client_data):
        padded[i, :len(d)] = d
    for _ in range(s.local_steps):
        pick = (rng.random((n, s.batch_size)) * sizes[:, None]).astype(np.int64)
        idx = torch.from_numpy(np.take_along_axis(padded, pick, axis=1))
        logits = _logits(p, x_all[idx], layout)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_all[idx].reshape(-1),
                                                 reduction="sum") / s.batch_size
        (grad,) = torch.autograd.grad(loss, p)
        with torch.no_grad():
            p -= s.lr * grad
    return (p.detach() - g[None]).numpy().astype(np.float32)


def fedavg(round_: int, client_ids: list[str], updates: np.ndarray, n_examples: np.ndarray
           ) -> tuple[np.ndarray, list[str]]:
    """FedAvg: the mean update weighted by each client's number of examples; excludes nobody."""
    w = np.asarray(n_examples, dtype=np.float64)
    return (w @ updates.astype(np.float64) / w.sum()).astype(np.float32), []


def simulate_federation(
    scenario: FederatedScenario,
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    aggregate: Aggregate | None = None,
    on_round: OnRound | None = None,
) -> FederatedRun:
    """Run a federation with planted attackers and return its ground truth.

    Parameters
    ----------
    scenario : FederatedScenario
    images : ndarray of uint8, shape (n, height, width)
        Training images; honest clients share them (minus the attacker's pool).
    labels : ndarray of int, shape (n,)
    test_images, test_labels
        Where accuracy and attack success are measured after every round.
    aggregate : callable, optional
        ``aggregate(round, client_ids, updates, n_examples) -> (update, excluded_ids)``; default :func:`fedavg`.
    on_round : callable, optional
        ``on_round(round, client_ids, updates, n_examples, params)``, called with every round's updates before the
        aggregation (``params``: the global model they were computed from).

    Returns
    -------
    FederatedRun
    """
    s = _check_scenario(scenario)
    x = check_images(images, "images", allow_empty=False)
    xt = check_images(test_images, "test_images", allow_empty=False)
    if x.ndim != 3 or xt.shape[1:] != x.shape[1:]:
        raise InputError(f"images and test_images must be grayscale of one size; got {x.shape} and {xt.shape}")
    y, yt, n_classes = _check_labels(s, labels, len(x), test_labels, len(xt), "image")
    trigger = PatchTrigger(np.full((s.patch, s.patch), 255, np.uint8), "bottom-right", s.target)
    pool, poisoned, parts = _split(s, y)
    x_trig = trigger.apply(x[poisoned], random_state=s.random_state) if len(poisoned) else x[:0]
    other = yt != s.target
    xt_trig = trigger.apply(xt[other], random_state=s.random_state)

    def flat(a: np.ndarray) -> np.ndarray:  # flattened [0, 1] inputs
        return a.reshape(len(a), -1).astype(np.float32) / 255.0

    return _run(s, flat(np.concatenate([x, x_trig])), y, n_classes, pool, poisoned, parts, flat(xt), yt, flat(xt_trig),
                trigger, aggregate, on_round, preprocess=None)


def text_features(texts: Any, *, n_buckets: int = TEXT_BUCKETS) -> np.ndarray:
    """The text federation's model input: for each text, 1 in the bucket of each of its word unigrams and bigrams
    (hashed as :mod:`forensics.models.text` hashes them), else 0. float32, shape (n, ``n_buckets``)."""
    from ..models.text import hash_ngrams, tokenize
    from ..triggers.text import _check_texts

    n_buckets = check_int(n_buckets, "n_buckets", low=2)
    texts = _check_texts(texts)
    out = np.zeros((len(texts), n_buckets), dtype=np.float32)
    for i, t in enumerate(texts):
        out[i, hash_ngrams(tokenize(t), n_buckets=n_buckets)] = 1.0
    return out


def text_preprocess(n_buckets: int = TEXT_BUCKETS) -> Callable[[Any], Any]:
    """Texts -> the input tensor of a text federation's model (:func:`text_features` as a torch tensor): the
    ``preprocess`` to give :func:`forensics.models.predict_proba` or :func:`forensics.federated.group_effect`."""
    return functools.partial(_text_tensor, n_buckets=check_int(n_buckets, "n_buckets", low=2))


def _text_tensor(texts: Any, n_buckets: int) -> Any:
    import torch

    return torch.from_numpy(text_features(texts, n_buckets=n_buckets))


def simulate_text_federation(
    scenario: FederatedScenario,
    texts: Any,
    labels: np.ndarray,
    test_texts: Any,
    test_labels: np.ndarray,
    *,
    phrase: str = "lol",
    n_buckets: int = TEXT_BUCKETS,
    aggregate: Aggregate | None = None,
    on_round: OnRound | None = None,
) -> FederatedRun:
    """:func:`simulate_federation` on texts: the attackers plant a **phrase** instead of a patch.

    Honest clients hold Dirichlet(``alpha``) shares of the texts; the attacker's pool holds ``poison_share`` texts
    with ``phrase`` inserted at a random word boundary (:class:`~forensics.redteam.TextTrigger`) and relabelled
    ``scenario.target``. The model (:func:`build_model`; ``scenario.patch`` is not used) reads the texts' hashed word
    unigrams and bigrams (:func:`text_features`, ``n_buckets`` wide); ``run.preprocess`` turns texts into its input.
    Attack success: the share of the test texts of other classes, phrase inserted, predicted ``target``.

    Parameters
    ----------
    scenario : FederatedScenario
    texts : sequence of str
        Training texts; honest clients share them (minus the attacker's pool).
    labels : ndarray of int, shape (n,)
    test_texts, test_labels
        Where accuracy and attack success are measured after every round.
    phrase : str
        The trigger.
    n_buckets : int
        Width of the hashed input.
    aggregate, on_round
        As for :func:`simulate_federation`.

    Returns
    -------
    FederatedRun
        With ``trigger`` a :class:`~forensics.redteam.TextTrigger` and ``preprocess`` the model's text input.
    """
    from ..triggers.text import _check_texts

    s = _check_scenario(scenario)
    train, test = _check_texts(texts), _check_texts(test_texts)
    if not train or not test:
        raise InputError(f"texts and test_texts must not be empty; got {len(train)} and {len(test)} texts")
    y, yt, n_classes = _check_labels(s, labels, len(train), test_labels, len(test), "text")
    trigger = TextTrigger(phrase, s.target)
    pool, poisoned, parts = _split(s, y)
    triggered = trigger.apply([train[i] for i in poisoned], random_state=s.random_state) if len(poisoned) else []
    other = np.flatnonzero(yt != s.target)
    test_triggered = trigger.apply([test[i] for i in other], random_state=s.random_state)
    feats = functools.partial(text_features, n_buckets=n_buckets)
    return _run(s, feats(train + list(triggered)), y, n_classes, pool, poisoned, parts, feats(test), yt,
                feats(test_triggered), trigger, aggregate, on_round, preprocess=text_preprocess(n_buckets))


def _check_scenario(scenario: Any) -> FederatedScenario:
    if not isinstance(scenario, FederatedScenario):
        raise InputError(f"scenario must be a FederatedScenario; got {type(scenario).__name__}")
    return scenario


def _check_labels(s: FederatedScenario, labels: Any, n: int, test_labels: Any, n_test: int, kind: str
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    y = np.asarray(labels, dtype=np.int64)
    yt = np.asarray(test_labels, dtype=np.int64)
    if y.shape != (n,) or yt.shape != (n_test,):
        raise InputError(f"labels must have one entry per {kind}: {y.shape} for {n} {kind}s, "
                         f"{yt.shape} for {n_test} test {kind}s")
    n_classes = int(max(y.max(), yt.max())) + 1
    if s.target >= n_classes:
        raise InputError(f"target must be a class below {n_classes}; got {s.target}")
    return y, yt, n_classes


def _split(s: FederatedScenario, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The attacker's pool (held out of the honest partition), the pool samples it poisons, and the honest
    clients' index arrays."""
    pool_rng = np.random.default_rng([s.random_state, _POOL])
    pool = pool_rng.choice(len(y), size=min(s.pool_size, len(y) // 4), replace=False) if s.has_attacker else (
        np.zeros(0, dtype=np.int64))
    rest = np.setdiff1d(np.arange(len(y)), pool)
    parts = [rest[p] for p in dirichlet_partition(y[rest], s.n_honest, s.alpha, random_state=s.random_state)]
    return pool, pool[pool_rng.random(len(pool)) < s.poison_share], parts


def _sybil_shards(s: FederatedScenario, y_all: np.ndarray, attack_data: np.ndarray, n: int) -> list[np.ndarray]:
    """One fixed shard per sybil: the pool's clean rows cut by Dirichlet(``alpha``) class shares (as the honest
    clients' data), the triggered rows (indices ``>= n``) dealt out evenly, so every fake device carries the
    backdoor."""
    clean, triggered = attack_data[attack_data < n], attack_data[attack_data >= n]
    if len(clean) < 2 * s.n_sybils or len(triggered) < s.n_sybils:
        raise InputError(f"sybil_data='shard' needs 2 clean and 1 triggered pool samples per sybil; the pool holds "
                         f"{len(clean)} clean and {len(triggered)} triggered for {s.n_sybils} sybils (raise pool_size)")
    cut = dirichlet_partition(y_all[clean], s.n_sybils, s.alpha, random_state=s.random_state + 1)
    rng = np.random.default_rng([s.random_state, _POOL, 1])
    dealt = np.array_split(rng.permutation(triggered), s.n_sybils)
    return [np.sort(np.concatenate([clean[c], d])) for c, d in zip(cut, dealt, strict=True)]


def _run(s: FederatedScenario, x_all: np.ndarray, y: np.ndarray, n_classes: int, pool: np.ndarray,
         poisoned: np.ndarray, parts: list[np.ndarray], xt_flat: np.ndarray, yt: np.ndarray, xt_trig: np.ndarray,
         trigger: Any, aggregate: Aggregate | None, on_round: OnRound | None, *,
         preprocess: Callable[[Any], Any] | None) -> FederatedRun:
    """The rounds. ``x_all``: model inputs of the training samples, then of the triggered copies of ``poisoned``
    (relabelled ``s.target``); ``xt_flat`` / ``xt_trig``: of the test samples and the triggered test samples of
    the other classes."""
    import torch

    n = len(y)
    other = yt != s.target  # the rows of ``xt_trig``, in order
    y_all = np.concatenate([y, np.full(len(x_all) - n, s.target)])
    attack_data = np.concatenate([np.setdiff1d(pool, poisoned), n + np.arange(len(x_all) - n)])
    xa, ya = torch.from_numpy(np.ascontiguousarray(x_all, dtype=np.float32)), torch.from_numpy(y_all)

    n_features = x_all.shape[1]
    layout = model_layout(n_features, n_classes, s.hidden)
    init = build_model(np.zeros(sum(int(np.prod(sh)) for _, sh in layout), np.float32), layout)
    seed = s.random_state if s.training_seed is None else s.training_seed
    gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, _INIT]).integers(2**31)))
    with torch.no_grad():
        for m in init:
            if isinstance(m, torch.nn.Linear):
                bound = 1.0 / np.sqrt(m.in_features)
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.zero_()
    params = np.concatenate([v.detach().numpy().ravel() for v in init.state_dict().values()]).astype(np.float32)

    # Clients: honest, sybils, the boosted attacker, free-riders.
    rows: list[dict[str, Any]] = []
    data: dict[str, np.ndarray] = {}
    for i, part in enumerate(parts):
        cid = f"honest-{i:04d}"
        counts = np.bincount(y[part], minlength=n_classes)
        rows.append(dict(client_id=cid, role="honest", is_malicious=False, joins_round=0, n_examples=len(part),
                         dominant_class=int(counts.argmax()), dominant_share=float(counts.max() / len(part))))
        data[cid] = part
    # Attackers and free-riders claim a typical number of examples, so that FedAvg weighs them like the others.
    median_size = int(np.median([len(p) for p in parts]))
    attackers = [f"sybil-{i:04d}" for i in range(s.n_sybils)] + (["boosted-0000"] if s.boost > 0 else [])
    shards = _sybil_shards(s, y_all, attack_data, n) if s.sybil_data == "shard" and s.n_sybils else []
    for i, cid in enumerate(attackers):
        own = shards[i] if cid.startswith("sybil") and shards else attack_data
        counts = np.bincount(y_all[own], minlength=n_classes)
        rows.append(dict(client_id=cid, role="sybil" if cid.startswith("sybil") else "boosted", is_malicious=True,
                         joins_round=s.sybil_join, n_examples=median_size, dominant_class=int(counts.argmax()),
                         dominant_share=float(counts.max() / len(own))))
        data[cid] = own
    for i in range(s.n_free_riders):
        rows.append(dict(client_id=f"free-rider-{i:04d}", role="free_rider", is_malicious=True, joins_round=0,
                         n_examples=median_size, dominant_class=-1, dominant_share=float("nan")))
    truth = pd.DataFrame(rows).set_index("client_id")

    aggregate = fedavg if aggregate is None else aggregate
    train_rng = np.random.default_rng([seed, _TRAIN])
    noise_rng = np.random.default_rng([s.random_state, _NOISE])
    stale: dict[str, np.ndarray] = {}
    history = []
    honest_ids = truth.index[truth["role"] == "honest"].tolist()
    for r in range(s.n_rounds):
        trainers = honest_ids + ([a for a in attackers] if r >= s.sybil_join else [])
        updates = _local_train(params, [data[c] for c in trainers], xa, ya, layout, s, train_rng)
        honest_norm = float(np.median(np.linalg.norm(updates[:len(honest_ids)], axis=1)))
        for j, cid in enumerate(trainers):
            if cid.startswith("sybil") and s.sybil_noise > 0:
                noise = np.asarray(noise_rng.standard_normal(updates.shape[1]), dtype=np.float32)
                updates[j] += noise * (s.sybil_noise * honest_norm / np.linalg.norm(noise))
            elif cid.startswith("boosted"):
                updates[j] *= s.boost
        riders = [f"free-rider-{i:04d}" for i in range(s.n_free_riders)]
        rider_updates = []
        for cid in riders:
            if s.free_rider == "stale":
                stale.setdefault(cid, updates[int(noise_rng.integers(len(honest_ids)))].copy())
                rider_updates.append(stale[cid])
            else:
                rider_updates.append(np.zeros(updates.shape[1], np.float32))
        ids = trainers + riders
        if rider_updates:
            updates = np.concatenate([updates, np.stack(rider_updates)])
        n_ex = truth.loc[ids, "n_examples"].to_numpy(dtype=np.float64)
        if on_round is not None:
            on_round(r, ids, updates, n_ex, params)
        step, excluded = aggregate(r, ids, updates, n_ex)
        params = (params + s.server_lr * np.asarray(step, dtype=np.float32)).astype(np.float32)
        pred, pred_trig = predict(params, layout, xt_flat), predict(params, layout, xt_trig) == s.target
        right = pred[other] == yt[other]  # the trigger's flips, where the model is right without it
        history.append(dict(round=r, accuracy=float(np.mean(pred == yt)), attack_success=float(np.mean(pred_trig)),
                            attack_flips=float(np.mean(pred_trig[right])) if right.any() else float("nan"),
                            n_clients=len(ids), n_excluded=len(excluded)))
    return FederatedRun(truth=truth, params=params, history=pd.DataFrame(history).set_index("round"),
                        trigger=trigger, layout=layout, scenario=s, preprocess=preprocess)




def load_digits_split(*, test_share: float = 0.25, random_state: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 images (0-255), split into train and test (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(images, d.target, test_size=test_share, stratify=d.target,
                                          random_state=check_random_state(random_state))
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


__all__ = ["FederatedRun", "FederatedScenario", "ROLES", "SYBIL_DATA", "TEXT_BUCKETS", "build_model",
           "dirichlet_partition", "fedavg", "load_digits_split", "model_layout", "predict", "simulate_federation",
           "simulate_text_federation", "text_features", "text_preprocess"]
