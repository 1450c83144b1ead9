"""Did the remediation work? Retrain on the original and on the sanitized data and compare, side by side.

:func:`verify` trains a model on each (with the caller's ``train_fn(dataset) -> model``, by default the reference
model of :func:`forensics.models.train_reference_model`) and measures on held-out data:

- **clean accuracy**, overall and per class: what the sanitizing cost;
- the **attack success rate of every confirmed trigger** of the investigation: each trigger pasted into held-out
  samples of other classes that the model gets right without it, and the share it then sends to the trigger's
  target. A patch goes where it was found (a moving one at a random place), an image-wide difference is added, a
  phrase is inserted before a random word. What each image trigger adds is the one
  :meth:`~forensics.Investigation.find_triggers` stored (``inv.trigger_arrays``).

- with ``reinvestigate`` (default), the **suspicion profile of what remains**: each training set investigated again
  with the model trained on it, and the share of it that still reaches suspicion 2.

So the answer to "is the backdoor gone, and what did it cost?" is two rows of one table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._validate import check_random_state
from .data import Dataset
from .errors import InputError
from .remediation import Sanitized
from .signals.combine import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from .investigation import Investigation

#: Held-out samples each trigger is pasted into, at most.
MAX_TRIED = 500


@dataclass(frozen=True)
class Verification:
    """Side by side, ``original`` and ``sanitized``: the training set's size, clean accuracy, the share flagged when
    investigated again (``flagged``), and each confirmed trigger's attack success rate (``asr <trigger_id>``);
    ``per_class`` holds the accuracy of every class."""

    table: pd.DataFrame
    per_class: pd.DataFrame

    def rows(self) -> list[tuple[str, str, float, float]]:
        """What the comparison shows, one measure per row: (column, label, original, sanitized)."""
        labels = {"n_train": "training samples", "accuracy": "clean accuracy (held out)",
                  "flagged": f"share reaching suspicion {DEFAULT_THRESHOLD:g}, investigated again"}
        return [(c, labels.get(c, f"attack success of {c[4:]}" if c.startswith("asr ") else c),
                 float(self.table.loc["original", c]), float(self.table.loc["sanitized", c]))
                for c in self.table.columns]

    def worst_classes(self, k: int = 3) -> pd.Series:
        """The ``k`` classes whose accuracy changed least favourably, sanitized minus original, lowest first."""
        return (self.per_class["sanitized"] - self.per_class["original"]).sort_values().head(k)

    def summary(self) -> str:
        """The comparison in a few lines of text."""
        t = self.table
        lines = [f"trained on {int(t.loc['original', 'n_train'])} original and {int(t.loc['sanitized', 'n_train'])} "
                 f"sanitized samples; clean accuracy {t.loc['original', 'accuracy']:.3f} -> "
                 f"{t.loc['sanitized', 'accuracy']:.3f}"]
        if "flagged" in t:
            lines.append(f"share reaching suspicion {DEFAULT_THRESHOLD:g} when investigated again: "
                         f"{100 * t.loc['original', 'flagged']:.2f}% -> {100 * t.loc['sanitized', 'flagged']:.2f}%")
        for column in [c for c in t.columns if c.startswith("asr ")]:
            lines.append(f"attack success of {column[4:]}: {t.loc['original', column]:.3f} -> "
                         f"{t.loc['sanitized', column]:.3f}")
        for name, change in self.worst_classes(1).items():
            lines.append(f"largest loss of a class's accuracy: {name} {change:+.3f}")
        return "\n".join(lines)


def verify(
    inv: Investigation,
    sanitized: Sanitized | Dataset,
    *,
    holdout: Dataset,
    train_fn: Callable[[Dataset], Any] | None = None,
    preprocess: Any = None,
    reinvestigate: bool = True,
    random_state: int | None = None,
) -> Verification:
    """Train on ``inv.dataset`` and on ``sanitized``, and compare clean accuracy and the attack success rate of each
    confirmed trigger on ``holdout`` (see the module docstring).

    Parameters
    ----------
    inv : Investigation
        Its dataset is the original data; its confirmed triggers are measured.
    sanitized : Sanitized or Dataset
        :meth:`forensics.remediation.RemediationPlan.apply`'s result, or any dataset with the same classes.
    holdout : Dataset
        Held-out samples with the same classes (a test split).
    train_fn : callable, optional
        ``train_fn(dataset) -> model`` (a ``torch.nn.Module`` returning logits); default: the reference model
        (:func:`forensics.models.train_reference_model`, seeded with ``random_state``).
    preprocess : callable, optional
        Payload batch -> model input, as for :func:`forensics.models.predict_proba`.
    reinvestigate : bool
        Also investigate each training set again with the model trained on it (:func:`forensics.investigate`, the
        default signals) and report the share of it reaching suspicion 2 (``flagged``): the suspicion profile of
        what remains.
    random_state : int, optional
        Seeds the reference model and where triggers are pasted (default: the investigation's own seed).

    Returns
    -------
    Verification
    """
    from .models import predict_proba, train_reference_model

    original = inv.dataset
    data = sanitized.dataset if isinstance(sanitized, Sanitized) else sanitized
    for name, ds in (("sanitized", data), ("holdout", holdout)):
        if not isinstance(ds, Dataset):
            raise InputError(f"{name} must be a forensics.Dataset; got {type(ds).__name__}")
        if ds.kind != original.kind or tuple(ds.class_names) != tuple(original.class_names):
            raise InputError(f"{name} holds {ds.kind}s of classes {list(ds.class_names)}; the investigation holds "
                             f"{original.kind}s of classes {list(original.class_names)}")
    seed = check_random_state(inv.params.get("random_state", 0) if random_state is None else random_state)
    if train_fn is None:
        train_fn = functools.partial(train_reference_model, random_state=seed, progress=False)
    elif not callable(train_fn):
        raise InputError(f"train_fn must be a callable dataset -> model; got {type(train_fn).__name__}")
    triggers = inv.triggers[inv.triggers["verdict"] == "confirmed"] if len(inv.triggers) else inv.triggers
    payload = holdout.images if holdout.kind == "image" else list(holdout.texts)
    rows, per_class = {}, {}
    for name, ds in (("original", original), ("sanitized", data)):
        model = _train(train_fn, ds, name)
        predict = functools.partial(predict_proba, model, preprocess=preprocess)
        pred = _predict(predict, payload, name)
        right = pred == holdout.labels
        row: dict[str, Any] = {"n_train": len(ds), "accuracy": float(right.mean())}
        per_class[name] = pd.Series([right[holdout.labels == c].mean() if (holdout.labels == c).any() else np.nan
                                     for c in range(len(holdout.class_names))], index=list(holdout.class_names))
        if reinvestigate:
            from .analysis import investigate

            again = investigate(ds, model, preprocess=preprocess, random_state=seed, progress=False)
            row["flagged"] = float(np.mean(again.signals["suspicion"].to_numpy() >= DEFAULT_THRESHOLD))
        for _, trig in triggers.iterrows():
            row[f"asr {trig['trigger_id']}"] = _attack_success(predict, holdout, pred, trig, inv, seed)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    return Verification(table=table, per_class=pd.DataFrame(per_class))


def _train(train_fn: Callable[[Dataset], Any], ds: Dataset, name: str) -> Any:
    try:
        model = train_fn(ds)
    except Exception as e:  # the caller's code: say where it failed
        raise InputError(f"train_fn raised {type(e).__name__} on the {name} data: {e}") from e
    if not callable(model):
        raise InputError(f"train_fn returned {type(model).__name__} on the {name} data; it must return a model "
                         "(a torch.nn.Module returning logits)")
    return model


def _predict(predict: Callable[[Any], np.ndarray], payload: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(predict(payload)).argmax(axis=1)
    except Exception as e:
        raise InputError(f"the model trained on the {name} data cannot predict the held-out samples: "
                         f"{type(e).__name__}: {e}") from e


def _attack_success(predict: Callable[[Any], np.ndarray], holdout: Dataset, pred: np.ndarray, trig: pd.Series,
                    inv: Investigation, seed: int) -> float:
    """Share of held-out samples of other classes, right without the trigger, sent to its target with it."""
    target = int(trig["target"])
    rows = np.flatnonzero((holdout.labels != target) & (pred == holdout.labels))
    if not len(rows):
        return float("nan")
    rng = np.random.default_rng([seed, len(rows)])
    rows = np.sort(rng.choice(rows, size=min(len(rows), MAX_TRIED), replace=False))
    if trig["kind"] == "text":
        from .triggers.confirm import _insert

        phrase = " ".join(map(str, trig["tokens"]))
        stamped: Any = [_insert(str(holdout.texts[i]), phrase, rng) for i in rows]
    else:
        stamped = _stamp(holdout.images[rows], trig, inv.trigger_arrays.get(str(trig["trigger_id"])), rng)
    return float((np.asarray(predict(stamped)).argmax(axis=1) == target).mean())


def _stamp(images: np.ndarray, trig: pd.Series, array: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """The images with an image trigger added: its patch at its box (at a random place when it moves), its
    image-wide difference added, or its warp applied."""
    if array is None:
        raise InputError(f"the investigation holds no pattern for trigger {trig['trigger_id']!r}; run find_triggers "
                         "again (patterns are kept since this version)")
    a = np.asarray(array)
    if trig["kind"] == "warp":  # the reconstructed warp, applied as the attacker's would be
        from .redteam import WarpTrigger
        from .triggers import is_flow

        if not is_flow(a) or a.shape[:2] != images.shape[1:3]:
            raise InputError(f"trigger {trig['trigger_id']!r} has a flow of shape {a.shape} but the images are "
                             f"{images.shape[1:3]}")
        return WarpTrigger(a, int(trig["target"])).apply(images)
    if a.dtype != np.uint8:  # an image-wide difference, in grey levels
        if a.size != np.prod(images.shape[1:]):
            raise InputError(f"trigger {trig['trigger_id']!r} has a difference of shape {a.shape} but the images are "
                             f"{images.shape[1:]}")
        return np.clip(np.rint(images.astype(np.float32) + a.reshape(images.shape[1:])), 0, 255).astype(np.uint8)
    out = images.copy()
    ph, pw = a.shape[:2]
    h, w = images.shape[1:3]
    patch = a.reshape((ph, pw) + images.shape[3:])
    box, moves = trig.get("box"), trig.get("moves")
    fixed = box is not None and not (isinstance(box, float) and np.isnan(box)) \
        and not (isinstance(moves, (bool, np.bool_)) and moves)
    for j in range(len(out)):
        r, c = (int(box[0]), int(box[1])) if fixed else (int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1)))
        out[j, r:r + ph, c:c + pw] = patch
    return out

__all__ = ["MAX_TRIED", "Verification", "verify"]
