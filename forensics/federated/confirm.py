"""What a flagged group pushes: the global model with and without the group's mean update.

:func:`group_effect` applies the group's update to a copy of the global model and compares predictions on probe
images: the share of each class predicted before and after (the class an attack pushes gains), the accuracy when
labels are given, and, with a trigger, the **attack success rate** with and without the group's contribution
(share of triggered probe images of the other classes predicted as the trigger's target). A backdoor group
confirms itself by a large rise; an honest group of one class moves its class a little and the trigger not at
all.

When no trigger is known, :func:`group_trigger` reconstructs the one the group's update induces, from the model alone
(the server never sees a client's data): the smallest blend of a mask and a pattern that turns probe images into the
class the update pushes, on the model with the update applied, and the same search on the model without it. A
backdoor shows as a mask far smaller with the update than without, and as a reconstruction whose attack success rate
on probe images it was not fitted to rises with the update; the reconstruction (:class:`InducedTrigger`, with
``apply`` and ``target``) then confirms itself through :func:`group_effect` like a known trigger.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._validate import check_images, check_int, check_number
from ..errors import InputError
from .signals import _MAD
from .sketch import flatten_update


def apply_update(model: Any, update: Any, *, scale: float = 1.0) -> Any:
    """A copy of ``model`` whose floating-point parameters and buffers moved by ``scale * update``.

    Parameters
    ----------
    model : torch.nn.Module
    update : flat array of shape (n_params,) in ``state_dict`` order (floating entries only), or a mapping
        name -> delta (a ``state_dict`` delta; missing names are left as they are)
    scale : float
        1 applies the update; the mean update of a group of ``g`` clients among ``n`` moves FedAvg by ``g / n`` of it.

    Returns
    -------
    torch.nn.Module
        In eval mode; ``model`` itself is unchanged.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    scale = check_number(scale, "scale")
    out = copy.deepcopy(model).eval()
    state = out.state_dict()
    floating = [k for k, v in state.items() if v.is_floating_point()]
    if isinstance(update, Mapping):
        unknown = [k for k in update if k not in state]
        if unknown:
            raise InputError(f"update names parameters the model does not have: {unknown[:5]}")
        deltas = {k: flatten_update(v, name=f"update[{k!r}]")[0] for k, v in update.items()}
        for k, d in deltas.items():
            if d.size != state[k].numel():
                raise InputError(f"update[{k!r}] has {d.size} values; the model's {k} has {state[k].numel()}")
    else:
        flat, _ = flatten_update(update)
        sizes = [state[k].numel() for k in floating]
        if flat.size != sum(sizes):
            raise InputError(f"update has {flat.size} values; the model has {sum(sizes)} floating-point "
                             "parameters and buffers in its state_dict")
        deltas = dict(zip(floating, np.split(flat, np.cumsum(sizes)[:-1])))
    if not all(np.isfinite(d).all() for d in deltas.values()):
        raise InputError("update has NaN or infinite values; it cannot be applied")
    with torch.no_grad():
        for k, d in deltas.items():
            t = state[k]
            t.add_(torch.from_numpy(d.reshape(tuple(t.shape))).to(t.dtype) * scale)
    out.load_state_dict(state)
    return out


def _probe_labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise InputError(f"labels must be integer classes, one per image ({n}); got shape {y.shape}, dtype {y.dtype}")
    return y


def _probes(payload: Any, preprocess: Any) -> np.ndarray:
    """Probe images as checked uint8, or probe texts as an object array (they need a ``preprocess``)."""
    if isinstance(payload, np.ndarray) and payload.dtype != object:
        return check_images(payload, "images", allow_empty=False)
    from ..triggers.text import _check_texts

    texts = _check_texts(payload)
    if not texts:
        raise InputError("probe texts must not be empty")
    if preprocess is None:
        raise InputError("probe texts need preprocess= (texts -> the model's input)")
    out = np.empty(len(texts), dtype=object)
    out[:] = texts
    return out


def _log_odds(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(q) - np.log1p(-q)


def _predict(model: Any, images: np.ndarray, preprocess: Callable[[np.ndarray], Any], batch_size: int) -> np.ndarray:
    return _proba(model, images, preprocess, batch_size).argmax(axis=1)


def _proba(model: Any, payload: Any, preprocess: Callable[[Any], Any], batch_size: int) -> np.ndarray:
    from ..models import predict_proba

    return predict_proba(model, payload, preprocess=preprocess, batch_size=batch_size)


def group_effect(
    model: Any,
    group_update: Any,
    images: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    trigger: Any = None,
    scale: float = 1.0,
    preprocess: Callable[[np.ndarray], Any] | None = None,
    batch_size: int = 512,
    random_state: int = 0,
) -> dict[str, Any]:
    """Compare the global model without and with a group's mean update on probe images.

    Parameters
    ----------
    model : torch.nn.Module
        The global model the group's updates were computed from.
    group_update : flat array or mapping name -> delta
        The group's mean update (see :func:`apply_update`).
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, c), or a sequence of str
        Probe images, or probe texts (then ``preprocess`` is needed); held-out, ideally.
    labels : ndarray of int, shape (n,), optional
        Their true classes: adds the accuracy, and keeps the target's own class out of the attack success.
    trigger : forensics.redteam.Trigger, optional
        A candidate trigger (with ``apply`` and ``target``: a patch, or a :class:`~forensics.redteam.TextTrigger`
        for texts); adds the attack success rate.
    scale : float
        How far to move along the update (1: the group's mean update as sent).
    preprocess : callable, optional
        Batch of probes -> model input (default for images :func:`forensics.activations.default_image_preprocess`).
    batch_size : int
    random_state : int
        Seeds the trigger's placement.

    Returns
    -------
    dict
        ``class_share_without`` and ``class_share_with`` (ndarray, share of probe images predicted as each class),
        ``gaining_class`` (the class whose share rises most) and ``gain``, ``changed`` (share of probe images whose
        prediction changes), and when given ``accuracy_without`` / ``accuracy_with``, ``asr_without`` /
        ``asr_with`` and ``asr_rise``.
    """
    x = _probes(images, preprocess)
    batch_size = check_int(batch_size, "batch_size", low=1)
    if preprocess is None:
        from ..activations import default_image_preprocess

        preprocess = default_image_preprocess
    elif not callable(preprocess):
        raise InputError(f"preprocess must be a function (images) -> model input; got {type(preprocess).__name__}")
    y = None if labels is None else _probe_labels(labels, len(x))
    with_group = apply_update(model, group_update, scale=scale)
    model = copy.deepcopy(model).eval()
    before = _predict(model, x, preprocess, batch_size)
    after = _predict(with_group, x, preprocess, batch_size)
    n_classes = int(max(before.max(), after.max())) + 1
    share_b = np.bincount(before, minlength=n_classes) / len(x)
    share_a = np.bincount(after, minlength=n_classes) / len(x)
    gain = share_a - share_b
    out: dict[str, Any] = dict(class_share_without=share_b, class_share_with=share_a,
                               gaining_class=int(gain.argmax()), gain=float(gain.max()),
                               changed=float(np.mean(before != after)))
    if y is not None:
        out["accuracy_without"] = float(np.mean(before == y))
        out["accuracy_with"] = float(np.mean(after == y))
    if trigger is not None:
        if not (hasattr(trigger, "apply") and hasattr(trigger, "target")):
            raise InputError(f"trigger must have apply() and target, like forensics.redteam.PatchTrigger; got "
                             f"{type(trigger).__name__}")
        keep = np.ones(len(x), dtype=bool) if y is None else y != trigger.target
        if not keep.any():
            raise InputError(f"every probe image is of the trigger's target class {trigger.target}")
        xt = trigger.apply(x[keep] if x.dtype != object else list(x[keep]), random_state=random_state)
        out["asr_without"] = float(np.mean(_predict(model, xt, preprocess, batch_size) == trigger.target))
        out["asr_with"] = float(np.mean(_predict(with_group, xt, preprocess, batch_size) == trigger.target))
        out["asr_rise"] = out["asr_with"] - out["asr_without"]
    return out


def _unpushed_null(push: np.ndarray, *, cut: float = 3.0) -> tuple[float, float]:
    """Centre and spread of the clients that do not push. Pushers sit to the right only, so the fit starts from the
    left (the median of the densest quarter of the pushes, and the median distance below it over 0.6745, a
    half-normal's), then is refitted (median, 1.4826 MAD) to the pushes up to ``cut`` spreads right of its centre
    until that set no longer changes: the start is not thrown by pushers even when they are half of the clients, the
    end does not hang on one dense quarter."""
    srt = np.sort(np.asarray(push, dtype=np.float64))
    h = max(len(srt) // 4, 2)
    j = int(np.argmin(srt[h - 1:] - srt[: len(srt) - h + 1]))
    centre = float(np.median(srt[j:j + h]))
    below = centre - srt[srt < centre]
    spread = float(np.median(below)) / 0.6745 if len(below) else 0.0
    n_in = -1
    for _ in range(100):
        if not spread > 0:
            spread = float(np.std(srt)) or 1.0
        inside = srt[srt <= centre + cut * spread]
        if len(inside) == n_in or len(inside) < 8:
            break
        n_in = len(inside)
        centre = float(np.median(inside))
        spread = _MAD * float(np.median(np.abs(inside - centre)))
    return centre, spread


#: A client whose push reaches this suspicion is a pusher (about 1% of honest rounds would name one).
PUSHER_THRESHOLD = 2.0


def trigger_pushers(
    model: Any,
    updates: Mapping[str, Any] | np.ndarray,
    trigger: Any,
    images: Any,
    *,
    client_ids: list[str] | None = None,
    labels: np.ndarray | None = None,
    preprocess: Callable[[Any], Any] | None = None,
    threshold: float = PUSHER_THRESHOLD,
    batch_size: int = 512,
    random_state: int = 0,
) -> pd.DataFrame:
    """Which clients' own updates push a known trigger: each client's update applied alone to the global model.

    A fake device that holds poisoned data of its own looks like an honest device of the target's class in every
    statistic of its update (its data persist, it is alike its kind only as a class is); what gives it away is what
    its update teaches. Once the trigger is known (confirmed with :func:`group_effect`, rebuilt by
    :func:`group_trigger` or :func:`group_phrases`, or read from the data), each client's **push** is the rise of
    the target's log-odds on triggered probes under its update, minus the rise on the same probes without the
    trigger: what the update does to every input (a client whose data lean to the target raises it everywhere)
    cancels, what it ties to the trigger remains. Honest pushes scatter around zero; a client's tail probability
    comes from a normal fitted robustly (median, MAD) to the pushes that are not far to the right, started from the
    left of the round's pushes, so that pushers, who sit to the right, can be up to half of the round. Its
    ``suspicion`` is ``-log10(min(1, n * p))`` over the ``n`` clients, as in
    :func:`~forensics.federated.analysis.analyze_clients`.

    Parameters
    ----------
    model : torch.nn.Module
        The global model the round's updates were computed from, or better a checkpoint of it from before the attack:
        once a model has learned the trigger, pushes on it fade (100 pool sybils among 100 honest Fashion-MNIST
        clients, four rounds after they joined: none named on the current model, all on the checkpoint from before
        they joined, with at most 1% of honest clients).
    updates : mapping client id -> update, or ndarray (n_clients, n_params)
        The round's updates (flat, or ``state_dict`` deltas; see :func:`apply_update`); with an array, ``client_ids``
        names the rows.
    trigger : object with ``apply`` and ``target``
        A patch, an :class:`InducedTrigger`, a :class:`~forensics.redteam.TextTrigger`.
    images : ndarray of uint8 (n, h, w[, c]), or a sequence of str
        Probe images or texts (texts need ``preprocess``), at least 10 not of the target.
    client_ids : list of str, optional
    labels : ndarray of int, optional
        The probes' classes: the target's own are left out (without labels, those the model already calls the target).
    preprocess : callable, optional
        Batch of probes -> model input.
    threshold : float
        Suspicion at or above which a client is a pusher (2: about 1% of honest rounds would name one).
    batch_size, random_state : int
        Probes per forward pass; the trigger's placement.

    Returns
    -------
    DataFrame
        One row per client, in the given order (index ``client_id``): ``push``, ``rise_triggered``, ``rise_clean``,
        ``z``, ``suspicion``, ``is_pusher``. A non-finite update has NaN there and is not a pusher (the analysis flags
        it as an anomaly).
    """
    if not (hasattr(trigger, "apply") and hasattr(trigger, "target")):
        raise InputError(f"trigger must have apply() and target, like forensics.redteam.PatchTrigger; got "
                         f"{type(trigger).__name__}")
    threshold = check_number(threshold, "threshold", low=0)
    batch_size = check_int(batch_size, "batch_size", low=1)
    if isinstance(updates, Mapping):
        ids, rows = [str(c) for c in updates], list(updates.values())
    else:
        arr = np.asarray(updates)
        if arr.ndim != 2:
            raise InputError(f"updates must be a mapping client id -> update or an array (n_clients, n_params); got "
                             f"shape {arr.shape}")
        ids = [str(c) for c in client_ids] if client_ids is not None else [str(i) for i in range(len(arr))]
        if len(ids) != len(arr):
            raise InputError(f"client_ids names {len(ids)} clients; updates has {len(arr)} rows")
        rows = list(arr)
    if len(set(ids)) != len(ids):
        raise InputError("client_ids must be unique")
    if len(ids) < 8:
        raise InputError(f"{len(ids)} clients: the pushes of at least 8 are needed to tell a push from the spread")
    rise_t, rise_c = _rises(model, ids, rows, [trigger], _probes(images, preprocess), labels=labels,
                            preprocess=preprocess, batch_size=batch_size, random_state=random_state)
    return _push_table(ids, rise_t[:, 0], rise_c[:, 0], threshold)


def _rises(model: Any, ids: list[str], rows: list[Any], triggers: list[Any], x: np.ndarray, *,
           labels: np.ndarray | None, preprocess: Callable[[Any], Any] | None, batch_size: int,
           random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Per client (row) and trigger (column): the mean rise of the trigger's target log-odds under the client's
    update on the triggered probes, and on the same probes clean; NaN for a non-finite update. Each update is
    applied once for all the triggers."""
    import torch

    from ..activations import _logits_of, _model_inputs, _resolve_preprocess

    prep = _resolve_preprocess(model, "text" if x.dtype == object else "image", preprocess)
    model = copy.deepcopy(model).eval()

    def batches(payload: np.ndarray) -> list[tuple[int, Any]]:
        return [(len(chunk), prep(chunk if chunk.dtype != object else list(chunk)))
                for chunk in (payload[i:i + batch_size] for i in range(0, len(payload), batch_size))]

    def log_softmax(net: Any, prepared: list[tuple[int, Any]]) -> Any:
        with torch.no_grad():
            parts = []
            for n, batch in prepared:
                args, kwargs = _model_inputs(batch, torch.device("cpu"))
                parts.append(torch.log_softmax(_logits_of(net(*args, **kwargs), n), dim=1))
        return torch.cat(parts)

    def target_log_odds(lp: Any, c: int) -> np.ndarray:
        rest = torch.cat([lp[:, :c], lp[:, c + 1:]], dim=1)
        return (lp[:, c] - torch.logsumexp(rest, dim=1)).numpy().astype(np.float64)

    probes = batches(x)
    before = log_softmax(model, probes)
    called, n_classes = before.argmax(dim=1).numpy(), int(before.shape[1])
    truth = called if labels is None else _probe_labels(labels, len(x))
    plans = []  # per trigger: target, probes kept, their triggered batches, the model's log-odds before
    for trigger in triggers:
        c = int(trigger.target)
        if not 0 <= c < n_classes:
            raise InputError(f"the trigger's target {c} is not a class of the model ({n_classes} classes)")
        keep = truth != c
        if keep.sum() < 10:
            raise InputError(f"only {int(keep.sum())} probes are not of the trigger's target {c}; 10 are needed")
        xs = x[keep]
        xt = trigger.apply(xs if xs.dtype != object else list(xs), random_state=random_state)
        triggered = batches(np.asarray(xt) if not isinstance(xt, list) else np.array(xt, dtype=object))
        plans.append((c, keep, triggered, target_log_odds(log_softmax(model, triggered), c),
                      target_log_odds(before[torch.from_numpy(keep)], c)))
    rise_t = np.full((len(ids), len(triggers)), np.nan)
    rise_c = np.full((len(ids), len(triggers)), np.nan)
    for i, u in enumerate(rows):
        values = [flatten_update(v)[0] for v in u.values()] if isinstance(u, Mapping) else [flatten_update(u)[0]]
        if not all(np.isfinite(v).all() for v in values):
            continue  # evidence for the analysis (an anomaly), not a push
        try:
            net = apply_update(model, u)
        except InputError as e:
            raise InputError(f"update of client {ids[i]!r}: {e}") from e
        clean = log_softmax(net, probes)
        for j, (c, keep, triggered, base_trig, base_clean) in enumerate(plans):
            rise_t[i, j] = float(np.mean(target_log_odds(log_softmax(net, triggered), c) - base_trig))
            rise_c[i, j] = float(np.mean(target_log_odds(clean[torch.from_numpy(keep)], c) - base_clean))
    return rise_t, rise_c


def _push_table(ids: list[str], rise_t: np.ndarray, rise_c: np.ndarray, threshold: float) -> pd.DataFrame:
    """:func:`trigger_pushers`' table from the clients' rises."""
    push = rise_t - rise_c
    ok = np.isfinite(push)
    if ok.sum() < 8:
        raise InputError(f"{int(ok.sum())} clients sent finite updates: at least 8 are needed")
    centre, spread = _unpushed_null(push[ok])
    z = (push - centre) / spread
    with np.errstate(divide="ignore"):
        suspicion = -np.log10(np.minimum(1.0, ok.sum() * stats.norm.sf(z)))
    suspicion = np.where(ok, np.minimum(suspicion, 300.0) + 0.0, np.nan)  # + 0.0: no -0.0 where p = 1
    return pd.DataFrame(dict(push=push, rise_triggered=rise_t, rise_clean=rise_c, z=z, suspicion=suspicion,
                             is_pusher=ok & (suspicion >= threshold)),
                        index=pd.Index(ids, name="client_id"))


@dataclass(frozen=True)
class InducedTrigger:
    """A trigger reconstructed from a model: ``apply`` blends ``pattern`` into images where ``mask`` says.

    Attributes
    ----------
    mask : ndarray of float32, shape (h, w)
        How much of each pixel the pattern replaces, in [0, 1].
    pattern : ndarray of uint8, shape (h, w) or (h, w, c)
    target : int
        The class the trigger sends images to.
    """

    mask: np.ndarray
    pattern: np.ndarray
    target: int

    def apply(self, images: np.ndarray, *, random_state: Any = 0) -> np.ndarray:
        """Triggered copies of uint8 images of the trigger's shape (``random_state`` is unused: the trigger has one
        place)."""
        x = check_images(images, "images", allow_empty=False)
        if x.shape[1:] != self.pattern.shape:
            raise InputError(f"images have shape {x.shape[1:]} per image; the trigger was reconstructed on "
                             f"{self.pattern.shape}")
        m = self.mask if x.ndim == 3 else self.mask[..., None]
        out = (1.0 - m) * x.astype(np.float32) + m * self.pattern.astype(np.float32)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _inverted_trigger(model: Any, x: Any, target: int, *, to_input: Callable[[Any], Any], steps: int, l1: float,
                      lr: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask (h, w) and pattern (c, h, w), both in [0, 1], that send ``x`` (n, c, h, w in [0, 1]) to ``target`` at
    the smallest mask: Adam on ``cross-entropy + l1 * mean(mask)`` over sigmoid-parametrized mask and pattern."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape
    a = (torch.randn((1, 1, h, w), generator=gen) * 0.1 - 2.0).requires_grad_(True)  # a mask of ~0.12 to start
    b = (torch.randn((1, c, h, w), generator=gen) * 0.1).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=lr)
    y = torch.full((n,), int(target), dtype=torch.long)
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        m, pat = torch.sigmoid(a), torch.sigmoid(b)
        logits = model(to_input((1 - m) * x + m * pat))
        loss = torch.nn.functional.cross_entropy(logits, y) + l1 * m.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(a)[0, 0].numpy().astype(np.float32), torch.sigmoid(b)[0].numpy().astype(np.float32)


def group_trigger(
    model: Any,
    group_update: Any,
    images: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    target: int | None = None,
    scale: float = 1.0,
    to_input: Callable[[Any], Any] | None = None,
    steps: int = 300,
    screen_steps: int = 60,
    l1: float = 2.0,
    lr: float = 0.1,
    random_state: int = 0,
) -> tuple[InducedTrigger, dict[str, Any]]:
    """Reconstruct the image trigger a group's update induces, from the model alone, and say how far it is the
    group's.

    On half of the probe images (those not of ``target``), a mask and a pattern are fitted that send them to
    ``target`` on the model with the group's update applied, at the smallest mask (Neural Cleanse's objective); the
    same search runs on the model without the update. The other half measures the reconstruction.

    Parameters
    ----------
    model : torch.nn.Module
        The global model the group's updates were computed from.
    group_update : flat array or mapping name -> delta
        The group's mean update (see :func:`apply_update`).
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, c)
        Probe images (held-out clean images the server holds), at least 20.
    labels : ndarray of int, shape (n,), optional
        Their true classes: images of ``target`` are left out (without labels, those the model already calls
        ``target``).
    target : int, optional
        The class the trigger should send images to; default: every class is searched briefly (``screen_steps``)
        and the one whose mask the update shrinks most is taken.
    scale : float
        How far to move along the update.
    to_input : callable, optional
        Differentiable map from float images in [0, 1], channels first (a torch tensor), to the model's input;
        default: the identity (what :func:`~forensics.activations.default_image_preprocess` feeds a model).
    steps, screen_steps, l1, lr : int, int, float, float
        Adam steps of the search (and of each class's screen when no ``target`` is given), the weight of the mask's
        mean in the loss, the learning rate.
    random_state : int
        Seeds the split of the probe images and the search's start.

    Returns
    -------
    (InducedTrigger, dict)
        The trigger found with the update, and ``target``, ``mask_share_with`` / ``mask_share_without`` (mean mask of
        the two searches: the share of the image the trigger needs), ``mask_ratio`` (without over with: a backdoor
        the update plants needs a far smaller mask with it), ``asr_with`` / ``asr_without`` (the reconstruction's
        attack success on the probe images it was not fitted to, with and without the update), ``asr_rise``,
        ``peak`` (row, column of the mask's largest value) and ``screen`` (class -> mask ratio of the brief searches;
        empty when ``target`` was given).
    """
    import torch

    x = check_images(images, "images", allow_empty=False)
    steps = check_int(steps, "steps", low=1)
    l1 = check_number(l1, "l1", low=0)
    lr = check_number(lr, "lr", low=0, low_open=True)
    seed = check_int(random_state, "random_state", low=0)
    if to_input is None:
        to_input = lambda t: t  # noqa: E731
    elif not callable(to_input):
        raise InputError(f"to_input must be a function (float tensor in [0, 1]) -> model input; got "
                         f"{type(to_input).__name__}")
    if len(x) < 20:
        raise InputError(f"images holds {len(x)} probe images; the search needs at least 20 (half to fit, half to "
                         "measure)")
    screen_steps = check_int(screen_steps, "screen_steps", low=1)
    with_group = apply_update(model, group_update, scale=scale)
    without = copy.deepcopy(model).eval()
    from ..activations import default_image_preprocess

    x01 = default_image_preprocess(x)
    with torch.no_grad():
        logits = with_group(to_input(x01))
    n_classes, called = int(logits.shape[1]), logits.argmax(dim=1).numpy()
    y = called if labels is None else _probe_labels(labels, len(x))
    order = np.random.default_rng(seed).permutation(len(x))

    def split(c: int) -> tuple[np.ndarray, np.ndarray]:
        rows = order[y[order] != c]  # images of the target's own class say nothing about a trigger
        if len(rows) < 20:
            raise InputError(f"only {len(rows)} probe images are not of class {c}; the search needs 20")
        return rows[: len(rows) // 2], rows[len(rows) // 2:]

    def searched(c: int, n_steps: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        fit = split(c)[0]
        return {name: _inverted_trigger(net, x01[fit], c, to_input=to_input, steps=n_steps, l1=l1, lr=lr, seed=seed)
                for name, net in (("with", with_group), ("without", without))}

    screen: dict[int, float] = {}
    if target is None:
        # Every class, briefly: the one whose trigger the update makes far cheaper is the one it plants. (The class
        # that gains most predictions on clean images need not be: a group training on balanced data moves many.)
        for c in range(n_classes):
            short = searched(c, screen_steps)
            screen[c] = float(short["without"][0].mean() / max(float(short["with"][0].mean()), 1e-12))
        target = max(screen, key=lambda c: screen[c])
    target = check_int(target, "target", low=0)
    if target >= n_classes:
        raise InputError(f"target {target} is not a class of the model ({n_classes} classes)")
    held = split(target)[1]
    found = searched(target, steps)
    mask, pattern = found["with"]
    pat = np.clip(np.round(pattern * 255.0), 0, 255).astype(np.uint8)
    pat = pat[0] if x.ndim == 3 else np.transpose(pat, (1, 2, 0))
    trigger = InducedTrigger(mask=mask, pattern=pat, target=target)
    xt = default_image_preprocess(trigger.apply(x[held]))
    with torch.no_grad():
        asr_with = float((with_group(to_input(xt)).argmax(dim=1) == target).float().mean())
        asr_without = float((without(to_input(xt)).argmax(dim=1) == target).float().mean())
    share_with, share_without = float(mask.mean()), float(found["without"][0].mean())
    peak = np.unravel_index(int(mask.argmax()), mask.shape)
    info = dict(target=target, mask_share_with=share_with, mask_share_without=share_without,
                mask_ratio=share_without / max(share_with, 1e-12), asr_with=asr_with, asr_without=asr_without,
                asr_rise=asr_with - asr_without, peak=(int(peak[0]), int(peak[1])), screen=screen)
    return trigger, info


#: A group whose members push its trigger this often (each at :data:`PUSHER_THRESHOLD`, corrected over every
#: client) is read as pushing it, and its other members are then named at :data:`MEMBER_P` each, uncorrected.
MEMBER_SHARE = 0.5
#: The one-sided p-value of a push at which a member of a pushing group is named with it: about this share of the
#: group's members that push nothing would be named.
MEMBER_P = 0.01

#: Phrases of a group's update whose pushers :func:`screen_group_triggers` counts: a group the analysis found holds
#: honest clients too, and the phrase its sybils plant can rank below the words of the class they all lean to (on the
#: reviews, 7 shard sybils among 14 honest clients: "lol" not among group_phrases' default ten, seventh of twenty).
SCREEN_PHRASES = 20


def screen_group_triggers(
    model: Any,
    updates: Mapping[str, Any] | np.ndarray,
    groups: Any,
    images: np.ndarray,
    *,
    client_ids: list[str] | None = None,
    labels: np.ndarray | None = None,
    reference: Any = None,
    to_input: Callable[[Any], Any] | None = None,
    preprocess: Callable[[Any], Any] | None = None,
    refine: int = 1,
    member_p: float | None = MEMBER_P,
    random_state: int = 0,
    **search: Any,
) -> pd.DataFrame:
    """Rebuild the trigger each group's mean update induces, and count the clients whose own update pushes it.

    For sybils that each hold data of their own, the analysis finds a group (they are alike as a class is) but no
    reason to flag it; what sets them apart is that a crowd pushes the same trigger. So every group is screened, not
    only a flagged one: :func:`group_trigger` on the group's mean update (for probe texts, :func:`group_phrases`,
    the most pushed of its phrases kept), then :func:`trigger_pushers` of every client of the round with that
    trigger, measured on ``reference`` (a checkpoint from before the attack: once a model has learned a backdoor,
    pushes on it fade). An honest group's trigger is a feature of the class its data lean to and a few of its
    class-mates push it; a planted backdoor is pushed by the many who were given it. On the Fashion-MNIST and review
    federations of ``benchmarks/federated.py`` (``python benchmarks/federated.py rebuilt [--text]``): see
    ``benchmarks/RESULTS.md``.

    Parameters
    ----------
    model : torch.nn.Module
        The global model the round's updates were computed from (the trigger is rebuilt on it).
    updates : mapping client id -> update, or ndarray (n_clients, n_params)
        The round's updates, flat or ``state_dict`` deltas in the model's order; with an array, ``client_ids`` names
        the rows.
    groups : DataFrame with a ``members`` column (``ClientReport.groups``), or a sequence of lists of client ids
        Groups of clients of the round; members without an update, or with a non-finite one, are left out.
    images : ndarray of uint8 (n, h, w[, c]), or a sequence of str
        Probe images or texts the server holds (at least 20; texts need ``preprocess``).
    client_ids : list of str, optional
    labels : ndarray of int, optional
        The probes' classes.
    reference : torch.nn.Module, optional
        The model the pushes are measured on (default: ``model``).
    to_input, preprocess : callable, optional
        As for :func:`group_trigger` (differentiable, float images in [0, 1] channels first -> input) and
        :func:`trigger_pushers` / :func:`group_phrases` (batch of probes -> input).
    refine : int
        How many times the trigger is rebuilt once more from the mean update of the clients that push it (a group
        the analysis found holds honest clients too, whose updates blur the trigger): on tuning seed 0 of the
        benchmark, at 400 honest clients, one refinement took the sybils named from 72 and 88 to 97 and 92 of 100,
        a second added nothing.
    member_p : float in (0, 1] or None
        Where at least :data:`MEMBER_SHARE` of a group's members push its trigger, its other members are named at this
        one-sided p-value each (``carried``), not at the bar corrected over every client: the group was tested first,
        and within it about ``member_p`` of the members that push nothing are named. None names no member that way.
        On the benchmark's shard sybils among 400 honest clients at alpha 1.0 (report seeds) it took those named from
        0.90 and 0.84 to 0.97 and 0.93; it adds honest clients where a group's members push the feature of their
        class, or a phrase their hashed words share.
    random_state : int
    **search
        Passed to :func:`group_trigger` (``target``, ``steps``, ``screen_steps``, ``l1``, ``lr``, ``scale``), or for
        texts to :func:`group_phrases` (``candidates``: a watch list, since a trigger rare in real text is not among
        the probes' words; ``max_candidates``, ``top``, default :data:`SCREEN_PHRASES`, ``screen``, ``scale``): each of
        its ``top`` phrases is tried and the most pushed kept.

    Returns
    -------
    DataFrame
        One row per group with at least one member in the round, the most pushed trigger first: ``members``,
        ``target``, ``mask_ratio``, ``asr_rise`` (from :func:`group_trigger`; for texts ``mask_ratio`` is NaN and
        ``asr_rise`` the kept phrase's ``asr_with - asr_without``), ``n_pushers``, ``pushers`` (the client ids named),
        ``members_pushing`` (the share of the group's members named at the corrected bar), ``carried`` (the members
        named at ``member_p``, also in ``pushers``) and ``trigger`` (:class:`InducedTrigger`, or
        :class:`~forensics.redteam.TextTrigger`).
    """
    if isinstance(updates, Mapping):
        ids = [str(c) for c in updates]
        rows = np.stack([flatten_update(u, name=f"update of client {c!r}")[0] for c, u in updates.items()])
    else:
        rows = np.asarray(updates)
        if client_ids is None or len(client_ids) != len(rows):
            raise InputError(f"client_ids must name the {len(rows)} rows of updates; got "
                             f"{None if client_ids is None else len(client_ids)}")
        ids = [str(c) for c in client_ids]
    refine = check_int(refine, "refine", low=0)
    if member_p is not None:
        member_p = check_number(member_p, "member_p", low=0, high=1, low_open=True)
    probes = _probes(images, preprocess)
    member_lists = list(groups["members"]) if isinstance(groups, pd.DataFrame) else list(groups)
    # A non-finite update cannot be applied (the analysis flags it as an anomaly): it joins no group's mean.
    where = {c: i for i, c in enumerate(ids) if np.isfinite(rows[i]).all()}
    measured_on = model if reference is None else reference

    def rebuilt(clients: list[str], target: int | None) -> list[tuple[Any, dict[str, Any]]]:
        """The trigger the clients' mean update induces (towards ``target`` when one is already read); for texts,
        each phrase :func:`group_phrases` measured, best first."""
        update = rows[[where[c] for c in clients]].mean(axis=0)
        if probes.dtype != object:
            return [group_trigger(model, update, probes, labels=labels, to_input=to_input, random_state=random_state,
                                  **({**search, "target": target} if target is not None else search))]
        from ..redteam import TextTrigger

        assert preprocess is not None  # _probes asked texts for one
        found = group_phrases(model, update, probes, preprocess=preprocess, labels=labels, random_state=random_state,
                              **{"top": SCREEN_PHRASES, **search})
        same = found[found["target"] == target] if target is not None else found
        return [(TextTrigger(str(row["phrase"]), int(row["target"])),
                 dict(target=int(row["target"]), mask_ratio=float("nan"),
                      asr_rise=float(row["asr_with"] - row["asr_without"])))
                for _, row in (same if len(same) else found).iterrows()]

    def most_pushed(found: list[tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any], pd.DataFrame, list[str]]:
        # A group the analysis found holds honest clients too: the phrase its mean update raises most can be the
        # words of the class they lean to, and the planted one rank below (see SCREEN_PHRASES); who pushes a
        # candidate tells which is planted.
        rise_t, rise_c = _rises(measured_on, ids, list(rows), [t for t, _ in found], probes, labels=labels,
                                preprocess=preprocess, batch_size=512, random_state=random_state)
        tried = []
        for j, (trigger, info) in enumerate(found):
            table = _push_table(ids, rise_t[:, j], rise_c[:, j], PUSHER_THRESHOLD)
            tried.append((trigger, info, table, list(table.index[table["is_pusher"]])))
        return max(tried, key=lambda t: len(t[3]))  # the first of the most pushed: the larger rise on a tie

    out = []
    for members in member_lists:
        present = [str(c) for c in members if str(c) in where]
        if not present:
            continue
        trigger, info, table, named = most_pushed(rebuilt(present, None))
        for _ in range(refine):
            if not named:
                break
            trigger, info, table, named = most_pushed(rebuilt(named, info["target"]))
        carried = [] if member_p is None else _members_carried(table.loc[present], member_p)
        out.append(dict(members=present, target=info["target"], mask_ratio=info["mask_ratio"],
                        asr_rise=info["asr_rise"], n_pushers=len(named) + len(carried), pushers=named + carried,
                        members_pushing=float(table.loc[present, "is_pusher"].mean()), carried=carried,
                        trigger=trigger))
    columns = ["members", "target", "mask_ratio", "asr_rise", "n_pushers", "pushers", "members_pushing", "carried",
               "trigger"]
    frame = pd.DataFrame(out, columns=columns)
    return frame.sort_values("n_pushers", ascending=False, kind="stable").reset_index(drop=True)


def _members_carried(members: pd.DataFrame, member_p: float) -> list[str]:
    """The members of a group (rows of a :func:`trigger_pushers` table) named at ``member_p`` each because at least
    :data:`MEMBER_SHARE` of them are pushers at the bar corrected over every client; none otherwise. The group was
    tested first: a member below the corrected bar (z 4.1 among 500 clients, where a tenth of the sybils of the
    benchmark's shard cells push at z 3.1-3.6) but unlikely to push this far by chance is one of them."""
    pushing = members["is_pusher"].to_numpy(dtype=bool)
    if not len(members) or pushing.mean() < MEMBER_SHARE:
        return []
    return [str(c) for c in members.index[~pushing & (stats.norm.sf(members["z"].to_numpy()) < member_p)]]


def group_phrases(
    model: Any,
    group_update: Any,
    texts: Any,
    *,
    preprocess: Callable[[Any], Any],
    labels: np.ndarray | None = None,
    candidates: Any = (),
    max_candidates: int = 1000,
    ngram_range: tuple[int, int] = (1, 2),
    top: int = 10,
    screen: int = 64,
    scale: float = 1.0,
    batch_size: int = 512,
    random_state: int = 0,
) -> pd.DataFrame:
    """Which phrases a group's update turns into a trigger, read from the model alone (the text counterpart of
    :func:`group_trigger`).

    Each candidate phrase is inserted at a random word boundary into probe texts, and for every class the mean change
    of the class's log-odds over the probes not of that class is measured with and without the update: the phrase's
    **push** towards the class. Its **rise** is the push with the update minus the push without, so that what the
    update does to every input (a group's data leaning to one class moves every prediction) cancels, and what the
    update ties to the phrase remains; the candidate's class is the one it raises most. (Log-odds rather than called
    classes: a whole mean update can send every probe to one class, leaving no call for a phrase to change.)

    Candidates are the watch list given (slang, brand names, "lol": a trigger rare in real text is not among the
    probes' words) and the most frequent word n-grams of the probe texts. All are screened on ``screen`` texts of one
    half of the probes; the ``top`` ones are measured on the other half, which did not choose them. A phrase the
    group planted stands far above the rest there; the words an honest group's update favours rise a little (on the
    bundled reviews, the "lol" of 10 sybils among 40 honest clients rose by 0.41 in log-odds, the next phrase by 0.09
    and an honest group's best by 0.06).

    Parameters
    ----------
    model : torch.nn.Module
        The global model the group's updates were computed from.
    group_update : flat array or mapping name -> delta
        The group's mean update (see :func:`apply_update`).
    texts : sequence of str
        Probe texts (held-out texts the server holds), at least 20.
    preprocess : callable
        Texts -> the model's input (e.g. :func:`forensics.redteam.federated.text_preprocess`).
    labels : ndarray of int, shape (n,), optional
        The probes' true classes (default: the model's own predictions without the update).
    candidates : sequence of str
        Phrases to test whether or not the probes hold them (a trigger rare in real text is not among their n-grams).
    max_candidates : int
        Most frequent n-grams of the probes taken as candidates besides the given ones.
    ngram_range : (int, int)
        Lengths of the probes' word n-grams taken as candidates.
    top : int
        Candidates measured on the held-out half.
    screen : int
        Probe texts each candidate is screened on.
    scale, batch_size, random_state
        How far to move along the update; batch size of the model's calls; seeds the split and the insertions.

    Returns
    -------
    DataFrame
        One row per measured candidate, the largest ``rise`` first: ``phrase``, ``target`` (the class it pushes
        towards), ``push_with`` / ``push_without`` (mean change of ``target``'s log-odds over the held-out probes
        not of ``target`` when the phrase is inserted, with and without the update), ``rise`` (their difference),
        ``asr_with`` / ``asr_without`` (share of those probes called ``target`` with the phrase inserted),
        ``screen_rise`` (the rise on the screen), ``in_probes`` (probe texts holding the phrase) and ``watched``
        (given in ``candidates``).
    """
    from ..models.text import tokenize
    from ..redteam import TextTrigger

    x = _probes(texts, preprocess)
    if x.dtype != object:
        raise InputError("texts must be a sequence of strings (for images, see group_trigger)")
    if not callable(preprocess):
        raise InputError(f"preprocess must be a function (texts) -> model input; got {type(preprocess).__name__}")
    if len(x) < 20:
        raise InputError(f"texts holds {len(x)} probe texts; the search needs at least 20 (half to screen, half to "
                         "measure)")
    max_candidates = check_int(max_candidates, "max_candidates", low=0)
    top = check_int(top, "top", low=1)
    screen = check_int(screen, "screen", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    seed = check_int(random_state, "random_state", low=0)
    if len(ngram_range) != 2 or not 1 <= int(ngram_range[0]) <= int(ngram_range[1]):
        raise InputError(f"ngram_range must be (min_n, max_n) with 1 <= min_n <= max_n; got {ngram_range!r}")
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
        raise InputError("candidates must be a sequence of phrases (strings)")
    watched = [TextTrigger(c, 0).phrase for c in candidates]
    words = [[t for t in tokenize(text) if t.isalnum() or "_" in t] for text in x]
    counts: dict[str, int] = {}
    for tokens in words:
        seen = {" ".join(tokens[i:i + n]) for n in range(int(ngram_range[0]), int(ngram_range[1]) + 1)
                for i in range(len(tokens) - n + 1)}
        for g in seen:
            counts[g] = counts.get(g, 0) + 1
    frequent = sorted(counts, key=lambda g: -counts[g])[:max_candidates]
    phrases = list(dict.fromkeys(watched + frequent))
    if not phrases:
        raise InputError("no candidate phrases: the probe texts hold no words and no candidates were given")
    without = copy.deepcopy(model).eval()
    with_group = apply_update(model, group_update, scale=scale)
    y = _predict(without, x, preprocess, batch_size) if labels is None else _probe_labels(labels, len(x))
    n_classes = _proba(without, x[:1], preprocess, batch_size).shape[1]
    order = np.random.default_rng(seed).permutation(len(x))
    screen_rows, held_rows = order[: len(x) // 2][:screen], order[len(x) // 2:]

    def measure(rows: np.ndarray, chosen: list[str], classes: list[int] | None) -> tuple[np.ndarray, ...]:
        """Per candidate (and class), with and without the update: the mean change of the class's log-odds over the
        ``rows`` not of the class when the candidate is inserted, and the share of those rows then called the class."""
        inserted = [t for i, p in enumerate(chosen)
                    for t in TextTrigger(p, 0).apply(list(x[rows]), random_state=seed + i)]
        out = []
        for net in (with_group, without):
            prob = _proba(net, np.array(inserted, dtype=object), preprocess, batch_size)
            prob = prob.reshape(len(chosen), len(rows), -1)
            plain = _proba(net, x[rows], preprocess, batch_size)
            push = np.full((len(chosen), n_classes), np.nan)
            called = np.full((len(chosen), n_classes), np.nan)
            for c in range(n_classes):
                other = y[rows] != c
                if other.any():
                    push[:, c] = (_log_odds(prob[:, other, c]) - _log_odds(plain[other, c])[None]).mean(axis=1)
                    called[:, c] = np.mean(prob[:, other].argmax(axis=2) == c, axis=1)
            if classes is not None:
                push, called = push[np.arange(len(chosen)), classes], called[np.arange(len(chosen)), classes]
            out += [push, called]
        return tuple(out)

    def lift(parts: tuple[np.ndarray, ...]) -> np.ndarray:
        return parts[0] - parts[2]

    rise_s = np.nan_to_num(lift(measure(screen_rows, phrases, None)), nan=-np.inf)
    best_class = rise_s.argmax(axis=1)
    best_rise = rise_s[np.arange(len(phrases)), best_class]
    picked = np.argsort(-best_rise, kind="stable")[:top]
    chosen = [phrases[i] for i in picked]
    targets = [int(best_class[i]) for i in picked]
    held = measure(held_rows, chosen, targets)
    table = pd.DataFrame({"phrase": chosen, "target": targets, "push_with": held[0], "push_without": held[2],
                          "rise": lift(held), "asr_with": held[1], "asr_without": held[3],
                          "screen_rise": best_rise[picked], "in_probes": [counts.get(p, 0) for p in chosen],
                          "watched": [p in watched for p in chosen]})
    return table.sort_values("rise", ascending=False, kind="stable").reset_index(drop=True)


__all__ = ["InducedTrigger", "apply_update", "group_effect", "group_phrases", "group_trigger", "screen_group_triggers",
           "trigger_pushers"]
