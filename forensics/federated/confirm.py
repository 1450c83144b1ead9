"""What a flagged group pushes: the global model with and without the group's mean update.

:func:`group_effect` applies the group's update to a copy of the global model and compares predictions on probe
images: the share of each class predicted before and after (the class an attack pushes gains), the accuracy when
labels are given, and, with a trigger, the **attack success rate** with and without the group's contribution
(share of triggered probe images of the other classes predicted as the trigger's target). A backdoor group
confirms itself by a large rise; an honest group of one class moves its class a little and the trigger not at
all. The model with the update applied (:func:`apply_update`) can also be handed to the image trigger search
(:func:`forensics.triggers.find_triggers`) when no trigger is known.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._validate import check_images, check_int, check_number
from ..errors import InputError
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


def _predict(model: Any, images: np.ndarray, preprocess: Callable[[np.ndarray], Any], batch_size: int) -> np.ndarray:
    from ..models import predict_proba

    return predict_proba(model, images, preprocess=preprocess, batch_size=batch_size).argmax(axis=1)


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
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, c)
        Probe images (held-out, ideally).
    labels : ndarray of int, shape (n,), optional
        Their true classes: adds the accuracy, and keeps the target's own class out of the attack success.
    trigger : forensics.redteam.Trigger, optional
        A candidate trigger (with ``apply`` and ``target``); adds the attack success rate.
    scale : float
        How far to move along the update (1: the group's mean update as sent).
    preprocess : callable, optional
        Images batch -> model input (default :func:`forensics.activations.default_image_preprocess`).
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
    x = check_images(images, "images", allow_empty=False)
    batch_size = check_int(batch_size, "batch_size", low=1)
    if preprocess is None:
        from ..activations import default_image_preprocess

        preprocess = default_image_preprocess
    elif not callable(preprocess):
        raise InputError(f"preprocess must be a function (images) -> model input; got {type(preprocess).__name__}")
    y = None
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (len(x),) or y.dtype.kind not in "iu":
            raise InputError(f"labels must be integer classes, one per image ({len(x)}); got shape {y.shape}, "
                             f"dtype {y.dtype}")
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
        xt = trigger.apply(x[keep], random_state=random_state)
        out["asr_without"] = float(np.mean(_predict(model, xt, preprocess, batch_size) == trigger.target))
        out["asr_with"] = float(np.mean(_predict(with_group, xt, preprocess, batch_size) == trigger.target))
        out["asr_rise"] = out["asr_with"] - out["asr_without"]
    return out


__all__ = ["apply_update", "group_effect"]
