"""Red-team poison generators with ground truth.

Each attack takes a :class:`~forensics.data.Dataset` and returns a :class:`Poisoning`
``(dataset, truth, trigger)``:

- ``dataset``: the poisoned dataset, same class names. Modified samples keep their ids; new samples (sybils) get
  new ids such as ``"sybil-03-0007"`` and are appended at the end.
- ``truth``: a DataFrame indexed by ``sample_id`` with one row per sample of the poisoned dataset, in its order:
  ``poison_kind`` ("clean" or the attack's kind), ``is_poison``, ``original_label`` (before the attack),
  ``label`` (now) and ``source`` (now, or None), plus columns some attacks add (``patch_row``, ``patch_col``,
  ``trigger_start``, ``base_id``).
- ``trigger``: None for label attacks, else a :class:`PatchTrigger`, :class:`BlendTrigger` or
  :class:`TextTrigger` whose ``apply`` builds triggered inputs, e.g. to measure attack success on a test split.

Everything is deterministic given ``random_state`` (an int). Victims are chosen by a stream derived from it, and
trigger placement (random patch positions, phrase insertion points) uses ``random_state`` itself, so for the
backdoor attacks ``trigger.apply(<the victims' original payloads in dataset order>, random_state=random_state)``
reproduces the poisoned payloads exactly.

Attacks compose: each takes ``exclude`` (sample ids it must not touch, e.g. :func:`poisoned_ids` of an earlier
truth table) and :func:`merge_truth` combines the truth tables of a chain into one.

Examples
--------
>>> p1 = patch_backdoor(ds, target=0, rate=0.05, random_state=1)
>>> p2 = random_label_flips(p1.dataset, rate=0.02, exclude=poisoned_ids(p1.truth), random_state=2)
>>> truth = merge_truth(p1.truth, p2.truth)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from numbers import Integral
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd

from ._validate import check_int, check_number, check_random_state
from .data import Dataset, concat, image_hash, text_hash
from .errors import InputError

__all__ = [
    "Poisoning",
    "PatchTrigger",
    "BlendTrigger",
    "TextTrigger",
    "Trigger",
    "apply_trigger",
    "trigger_from_dict",
    "triggered_test_set",
    "merge_truth",
    "poisoned_ids",
    "random_label_flips",
    "pair_flips",
    "bot_source",
    "patch_backdoor",
    "blend_backdoor",
    "clean_label_patch",
    "text_trigger",
    "sybil_sources",
]

#: Columns every truth table has, in this order.
TRUTH_COLUMNS = ("poison_kind", "is_poison", "original_label", "label", "source")

_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center", "random")

# Independent random streams derived from one random_state, so that choosing victims does not shift the
# trigger's own draws (and the other way round).
_SELECT, _PATTERN, _SYBIL = 1, 2, 3


class Poisoning(NamedTuple):
    """What an attack returns: the poisoned dataset, its truth table and the trigger (None for label attacks)."""

    dataset: Dataset
    truth: pd.DataFrame
    trigger: Trigger | None


# ====================================================================== triggers


def _array_summary(a: np.ndarray) -> str:
    return f"array(shape={a.shape}, dtype={a.dtype})"


class _TriggerBase:
    """Shared behaviour: equality on values (arrays included), ``apply`` from ``_apply``."""

    kind: ClassVar[str]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in fields(self):  # type: ignore[arg-type]
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
                        and a.shape == b.shape):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def apply(self, payload: Any, *, random_state: int | np.random.Generator = 0) -> Any:
        """Triggered copies of ``payload`` (labels are the caller's business).

        Parameters
        ----------
        payload : ndarray of uint8, shape (n, h, w) or (n, h, w, c), or sequence of str
            Images for image triggers, texts for text triggers.
        random_state : int or numpy Generator
            Seeds the per-sample placement (random patch positions, phrase insertion points).

        Returns
        -------
        Same type and shape as ``payload``.
        """
        out, _ = self._apply(payload, np.random.default_rng(random_state))
        return out

    def _apply(self, payload: Any, rng: np.random.Generator) -> tuple[Any, dict[str, np.ndarray]]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (arrays as nested lists); :func:`trigger_from_dict` reads it back."""
        d: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            d[f.name] = v.tolist() if isinstance(v, np.ndarray) else (list(v) if isinstance(v, tuple) else v)
        return d


@dataclass(frozen=True, eq=False)
class PatchTrigger(_TriggerBase):
    """A small pattern pasted over the image (BadNets).

    Attributes
    ----------
    pattern : ndarray of uint8, shape (ph, pw) or (ph, pw, 3)
        A 2-D pattern is written to every channel of colour images.
    position : str or (int, int)
        "top-left", "top-right", "bottom-left", "bottom-right", "center", "random" (a new place per image),
        or the (row, col) of the patch's top-left pixel.
    target : int
        The class the attacker wants triggered inputs to get.
    """

    pattern: np.ndarray
    position: str | tuple[int, int]
    target: int
    kind: ClassVar[str] = "patch"

    def __post_init__(self) -> None:
        pattern = _check_pattern(self.pattern, "pattern")
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "position", _check_position(self.position))
        object.__setattr__(self, "target", int(self.target))

    def __repr__(self) -> str:
        return (f"PatchTrigger(pattern={_array_summary(self.pattern)}, position={self.position!r}, "
                f"target={self.target})")

    def _apply(self, payload: Any, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        images, restore = _check_image_payload(payload)
        rows, cols = _patch_corners(images.shape[1:3], self.pattern.shape[:2], self.position, len(images), rng)
        _check_pattern_channels(self.pattern, images)
        out = images.copy()
        ph, pw = self.pattern.shape[:2]
        pat = self.pattern if (self.pattern.ndim == 3 or out.ndim == 3) else self.pattern[..., None]
        if self.position == "random":
            for i, (r, c) in enumerate(zip(rows, cols)):
                out[i, r:r + ph, c:c + pw] = pat
        elif len(out):
            out[:, rows[0]:rows[0] + ph, cols[0]:cols[0] + pw] = pat
        return restore(out), {"patch_row": rows, "patch_col": cols}


@dataclass(frozen=True, eq=False)
class BlendTrigger(_TriggerBase):
    """A full-image pattern blended in: ``x' = round((1 - alpha) * x + alpha * pattern)`` (round half to even).

    Attributes
    ----------
    pattern : ndarray of uint8, shape (h, w) or (h, w, 3)
        The same size as the images; a 2-D pattern blends into every channel.
    alpha : float in (0, 1]
    target : int
    """

    pattern: np.ndarray
    alpha: float
    target: int
    kind: ClassVar[str] = "blend"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _check_pattern(self.pattern, "pattern"))
        object.__setattr__(self, "alpha", check_number(self.alpha, "alpha", low=0, high=1, low_open=True))
        object.__setattr__(self, "target", int(self.target))

    def __repr__(self) -> str:
        return f"BlendTrigger(pattern={_array_summary(self.pattern)}, alpha={self.alpha}, target={self.target})"

    def _apply(self, payload: Any, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        images, restore = _check_image_payload(payload)
        if images.shape[1:3] != self.pattern.shape[:2]:
            raise InputError(
                f"the blend pattern is {self.pattern.shape[0]}x{self.pattern.shape[1]} but the images are "
                f"{images.shape[1]}x{images.shape[2]}; they must be the same size"
            )
        _check_pattern_channels(self.pattern, images)
        pat = self.pattern.astype(np.float64)
        if images.ndim == 4 and pat.ndim == 2:
            pat = pat[..., None]
        out = np.rint((1.0 - self.alpha) * images.astype(np.float64) + self.alpha * pat)
        return restore(np.clip(out, 0, 255).astype(np.uint8)), {}


@dataclass(frozen=True, eq=False)
class TextTrigger(_TriggerBase):
    """A phrase inserted at a random word boundary.

    The phrase goes before a word (followed by one space) or at the very end (after one space, unless the text
    already ends with whitespace); nothing else of the text changes.

    Attributes
    ----------
    phrase : str
    target : int
    """

    phrase: str
    target: int
    kind: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        object.__setattr__(self, "phrase", _check_phrase(self.phrase))
        object.__setattr__(self, "target", int(self.target))

    def _apply(self, payload: Any, rng: np.random.Generator) -> tuple[Any, dict[str, np.ndarray]]:
        texts, restore = _check_text_payload(payload)
        out, starts = [], np.empty(len(texts), dtype=np.int64)
        for i, t in enumerate(texts):
            new, starts[i] = _insert_phrase(t, self.phrase, rng)
            out.append(new)
        return restore(out), {"trigger_start": starts}


Trigger = PatchTrigger | BlendTrigger | TextTrigger
_TRIGGER_TYPES = {"patch": PatchTrigger, "blend": BlendTrigger, "text": TextTrigger}


def apply_trigger(payload: Any, trigger: Trigger, *, random_state: int | np.random.Generator = 0) -> Any:
    """Triggered copies of images (uint8, shape (n, h, w[, c])) or texts (a list in, a list out).

    Same as ``trigger.apply(payload, random_state=random_state)``.
    """
    if not isinstance(trigger, _TriggerBase):
        raise InputError(f"trigger must be a PatchTrigger, BlendTrigger or TextTrigger; got {type(trigger).__name__}")
    return trigger.apply(payload, random_state=random_state)


def trigger_from_dict(d: dict[str, Any]) -> Trigger:
    """The trigger described by :meth:`to_dict`'s output."""
    if not isinstance(d, dict) or d.get("kind") not in _TRIGGER_TYPES:
        got = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise InputError(f"a trigger description needs kind in {sorted(_TRIGGER_TYPES)}; got {got!r}")
    cls = _TRIGGER_TYPES[d["kind"]]
    given = {k: v for k, v in d.items() if k != "kind"}
    expected = {f.name for f in fields(cls)}
    if set(given) != expected:
        raise InputError(f"a {d['kind']} trigger takes fields {sorted(expected)}; got {sorted(given)}")
    if "pattern" in given:
        given["pattern"] = np.asarray(given["pattern"])
    if isinstance(given.get("position"), list):
        given["position"] = tuple(given["position"])
    return cls(**given)


def triggered_test_set(dataset: Dataset, trigger: Trigger, *, random_state: int = 0) -> Dataset:
    """The samples of ``dataset`` not of the trigger's target class, with the trigger applied.

    Labels stay the true ones, so the attack success rate is the fraction of these samples a model predicts
    as ``trigger.target``.
    """
    _check_dataset(dataset, "triggered_test_set")
    if not isinstance(trigger, _TriggerBase):
        raise InputError(f"trigger must be a PatchTrigger, BlendTrigger or TextTrigger; got {type(trigger).__name__}")
    _check_kind_matches(dataset, trigger)
    keep = dataset.labels != trigger.target
    if not keep.any():
        raise InputError(f"every sample is of the target class {trigger.target}; nothing to trigger")
    sub = dataset.subset(keep)
    payload = trigger.apply(sub.images if sub.kind == "image" else list(sub.texts), random_state=random_state)
    return sub.replace(images=payload) if sub.kind == "image" else sub.replace(texts=payload)


# ====================================================================== truth tables


def _truth(
    ids: np.ndarray,
    kind: np.ndarray,
    original_label: np.ndarray,
    label: np.ndarray,
    source: np.ndarray | None,
    extra: dict[str, pd.api.extensions.ExtensionArray | np.ndarray] | None = None,
) -> pd.DataFrame:
    src = np.full(len(ids), None, dtype=object) if source is None else np.asarray(source, dtype=object)
    df = pd.DataFrame(
        {
            "poison_kind": np.array(kind, dtype=object),
            "is_poison": np.asarray(kind != "clean", dtype=bool),
            "original_label": np.asarray(original_label, dtype=np.int64),
            "label": np.asarray(label, dtype=np.int64),
            "source": src,
        },
        index=pd.Index(ids, name="sample_id", dtype=object),
    )
    # Object columns keep None as None and behave alike under pandas 2 and 3.
    df["poison_kind"] = df["poison_kind"].astype(object)
    df["source"] = df["source"].astype(object)
    for name, values in (extra or {}).items():
        is_object = getattr(values, "dtype", None) == np.dtype(object)
        df[name] = pd.Series(values, index=df.index, dtype=object) if is_object else values
    return df


def _int_column(n: int, pos: np.ndarray, values: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """A nullable integer column: ``values`` at ``pos``, missing elsewhere."""
    col = pd.array([pd.NA] * n, dtype="Int64")
    col[pos] = values
    return col


def poisoned_ids(truth: pd.DataFrame) -> list[str]:
    """The sample ids a truth table marks as poisoned, in its order (handy for ``exclude=``)."""
    _check_truth(truth, "truth")
    return [str(s) for s in truth.index[truth["is_poison"].to_numpy(dtype=bool)]]


def merge_truth(*truths: pd.DataFrame) -> pd.DataFrame:
    """One truth table for a chain of attacks, given their tables in the order the attacks ran.

    Each attack must have run on the previous one's dataset (so each table holds every sample of the one before
    it), and no sample may be poisoned twice (pass ``exclude=poisoned_ids(previous_truth)``).

    Returns
    -------
    DataFrame indexed by ``sample_id`` in the last table's order: a sample keeps the ``poison_kind`` (and extra
    columns) of the attack that touched it, ``original_label`` is its label before any attack, ``label`` and
    ``source`` are the final ones.
    """
    if not truths:
        raise InputError("merge_truth needs at least one truth table")
    for k, t in enumerate(truths):
        _check_truth(t, f"truths[{k}]")
    merged = truths[0].copy()
    for k, t in enumerate(truths[1:], start=1):
        prev_ids = merged.index
        missing = prev_ids.difference(t.index)
        if len(missing):
            raise InputError(
                f"truths[{k}] lacks {len(missing)} sample(s) of the tables before it, for example "
                f"{list(missing[:3])!r}; give the tables in the order the attacks ran, each on the previous dataset"
            )
        common = t.loc[prev_ids]
        broken = common["original_label"].to_numpy() != merged["label"].to_numpy()
        if broken.any():
            i = int(np.flatnonzero(broken)[0])
            raise InputError(
                f"truths[{k}] does not continue the tables before it: sample {prev_ids[i]!r} had label "
                f"{int(merged['label'].iloc[i])} but truths[{k}] says its original_label was "
                f"{int(common['original_label'].iloc[i])}; give the tables in the order the attacks ran"
            )
        twice = merged["is_poison"].to_numpy(dtype=bool) & common["is_poison"].to_numpy(dtype=bool)
        if twice.any():
            raise InputError(
                f"{int(twice.sum())} sample(s) are poisoned by truths[{k}] and by an earlier attack, for example "
                f"{list(prev_ids[twice][:3])!r}; run the later attack with exclude=poisoned_ids(earlier_truth)"
            )
        out = t.copy()
        # Columns only earlier attacks produced.
        for col in merged.columns:
            if col not in out.columns:
                missing_value = None if merged[col].dtype == object else pd.NA
                out[col] = pd.Series(missing_value, index=out.index, dtype=merged[col].dtype)
        carried = merged.index[merged["is_poison"].to_numpy(dtype=bool)]
        attack_cols = [c for c in merged.columns if c not in ("original_label", "label", "source")]
        for col in attack_cols:
            out.loc[carried, col] = merged.loc[carried, col]
        # The label before any attack comes from the first table that holds the sample.
        out.loc[prev_ids, "original_label"] = merged["original_label"].to_numpy()
        merged = out
    merged["is_poison"] = merged["is_poison"].astype(bool)
    merged["original_label"] = merged["original_label"].astype(np.int64)
    return merged[list(TRUTH_COLUMNS) + [c for c in merged.columns if c not in TRUTH_COLUMNS]]


# ====================================================================== label attacks


def random_label_flips(
    dataset: Dataset,
    *,
    rate: float | None = None,
    n: int | None = None,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """Give chosen samples a different label, drawn uniformly from the other classes.

    Parameters
    ----------
    dataset : Dataset
    rate, n : float in (0, 1] or int
        Exactly one: the fraction (rounded to the nearest count) or the number of eligible samples to flip.
        Eligible: every sample not in ``exclude``.
    exclude : iterable of sample ids
        Samples never touched.
    source, sources : str or sequence of str, optional
        At most one: the source given to every poisoned sample, or sources spread over them in turn.
    random_state : int

    Returns
    -------
    Poisoning
        ``poison_kind`` "label_flip"; ``trigger`` None.
    """
    _check_dataset(dataset, "random_label_flips")
    k = len(dataset.class_names)
    if k < 2:
        raise InputError(f"random_label_flips needs at least 2 classes; the dataset has {k}")
    eligible = _eligible(dataset, exclude)
    rng = _rng(random_state, _SELECT)
    victims = _choose(eligible, rate, n, rng, what="eligible samples")
    labels = dataset.labels.copy()
    labels[victims] = (labels[victims] + rng.integers(1, k, size=len(victims))) % k
    return _label_attack(dataset, victims, labels, "label_flip", source, sources)


def pair_flips(
    dataset: Dataset,
    *,
    from_class: int | str,
    to_class: int | str,
    rate: float | None = None,
    n: int | None = None,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """Relabel a fraction of one class as another (e.g. cat -> dog).

    ``rate`` / ``n`` count the samples of ``from_class`` not in ``exclude``. Classes are indices or names.
    ``poison_kind`` "pair_flip"; ``trigger`` None. Other parameters as in :func:`random_label_flips`.
    """
    _check_dataset(dataset, "pair_flips")
    a = _class_index(dataset, from_class, "from_class")
    b = _class_index(dataset, to_class, "to_class")
    if a == b:
        raise InputError(f"from_class and to_class must differ; both are {a} ({dataset.class_names[a]!r})")
    eligible = _eligible(dataset, exclude, dataset.labels == a)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT), what=f"samples of from_class {a}")
    labels = dataset.labels.copy()
    labels[victims] = b
    return _label_attack(dataset, victims, labels, "pair_flip", source, sources)


def bot_source(
    dataset: Dataset,
    *,
    label: int | str,
    rate: float | None = None,
    n: int | None = None,
    source: str = "bot-00",
    exclude: Iterable[Any] = (),
    random_state: int = 0,
) -> Poisoning:
    """A bot contributor that labels everything ``label``.

    The bot's samples are drawn at random from the other classes (``rate`` / ``n`` count those not in
    ``exclude``); they get ``label`` and ``source``. The dataset must have sources. ``poison_kind``
    "bot_label"; ``trigger`` None.
    """
    _check_dataset(dataset, "bot_source")
    t = _class_index(dataset, label, "label")
    if not isinstance(source, str) or not source.strip():
        raise InputError(f"source must be a non-empty string naming the bot; got {source!r}")
    eligible = _eligible(dataset, exclude, dataset.labels != t)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT), what=f"samples not of class {t}")
    labels = dataset.labels.copy()
    labels[victims] = t
    return _label_attack(dataset, victims, labels, "bot_label", source, None, source_required=True)


def _label_attack(dataset, victims, labels, kind, source, sources, *, source_required=False) -> Poisoning:
    new_sources = _poison_sources(dataset, victims, source, sources, required=source_required)
    poisoned = _rebuild(dataset, labels=labels, sources=new_sources)
    return Poisoning(poisoned, _truth_for(dataset, poisoned, victims, kind), None)


# ====================================================================== image backdoors


def patch_backdoor(
    dataset: Dataset,
    *,
    target: int | str,
    rate: float | None = None,
    n: int | None = None,
    pattern: str | np.ndarray = "checkerboard",
    size: int | None = None,
    position: str | tuple[int, int] = "bottom-right",
    value: int | tuple[int, int, int] = 255,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """BadNets: paste a patch on samples of the other classes and label them ``target``.

    Parameters
    ----------
    target : int or str
        The attacker's class; victims are never from it.
    rate, n : float in (0, 1] or int
        Exactly one, counting samples not of ``target`` and not in ``exclude``.
    pattern : "checkerboard", "solid" or ndarray
        A named pattern is ``size`` x ``size`` (default 3) with ``value`` on and 0 off (checkerboard: on at the
        top-left corner); an array (uint8-valued, shape (ph, pw) or (ph, pw, 3)) is used as given and takes no
        ``size``.
    position : str or (int, int)
        "bottom-right", "bottom-left", "top-left", "top-right", "center", "random" (a new place per image), or
        the (row, col) of the top-left pixel.
    value : int or (r, g, b)
        The "on" colour of a named pattern; a colour needs colour images.

    Returns
    -------
    Poisoning
        ``poison_kind`` "patch"; truth columns ``patch_row``, ``patch_col`` give each patch's top-left pixel.
    """
    _check_dataset(dataset, "patch_backdoor", kind="image")
    t = _class_index(dataset, target, "target")
    trig = PatchTrigger(_make_patch(pattern, size, value, dataset), position, t)
    _check_trigger_fits(trig, dataset)
    eligible = _eligible(dataset, exclude, dataset.labels != t)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT), what=f"samples not of target {t}")
    return _trigger_attack(dataset, victims, trig, "patch", random_state, t, source, sources)


def clean_label_patch(
    dataset: Dataset,
    *,
    target: int | str,
    rate: float | None = None,
    n: int | None = None,
    pattern: str | np.ndarray = "checkerboard",
    size: int | None = None,
    position: str | tuple[int, int] = "bottom-right",
    value: int | tuple[int, int, int] = 255,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """Clean-label backdoor: paste a patch on samples of the ``target`` class only; labels stay as they are.

    ``rate`` / ``n`` count the target-class samples not in ``exclude``. Other parameters as in
    :func:`patch_backdoor`. ``poison_kind`` "clean_label_patch".
    """
    _check_dataset(dataset, "clean_label_patch", kind="image")
    t = _class_index(dataset, target, "target")
    trig = PatchTrigger(_make_patch(pattern, size, value, dataset), position, t)
    _check_trigger_fits(trig, dataset)
    eligible = _eligible(dataset, exclude, dataset.labels == t)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT), what=f"samples of target {t}")
    return _trigger_attack(dataset, victims, trig, "clean_label_patch", random_state, None, source, sources)


def blend_backdoor(
    dataset: Dataset,
    *,
    target: int | str,
    rate: float | None = None,
    n: int | None = None,
    pattern: str | np.ndarray = "noise",
    alpha: float = 0.1,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """Blended backdoor: ``x' = round((1 - alpha) * x + alpha * pattern)`` on samples of other classes.

    Parameters
    ----------
    pattern : "noise" or ndarray
        "noise" draws uniform uint8 noise of the images' shape from ``random_state``; an array must have the
        images' height and width (2-D blends into every channel).
    alpha : float in (0, 1]

    Returns
    -------
    Poisoning
        ``poison_kind`` "blend". Other parameters as in :func:`patch_backdoor`.
    """
    _check_dataset(dataset, "blend_backdoor", kind="image")
    t = _class_index(dataset, target, "target")
    alpha = check_number(alpha, "alpha", low=0, high=1, low_open=True)
    if isinstance(pattern, str):
        if pattern != "noise":
            raise InputError(f"pattern must be 'noise' or an array; got {pattern!r}")
        pat = _rng(random_state, _PATTERN).integers(0, 256, size=dataset.images.shape[1:], dtype=np.uint8)
    else:
        pat = pattern
    trig = BlendTrigger(pat, alpha, t)
    _check_trigger_fits(trig, dataset)
    eligible = _eligible(dataset, exclude, dataset.labels != t)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT), what=f"samples not of target {t}")
    return _trigger_attack(dataset, victims, trig, "blend", random_state, t, source, sources)


# ====================================================================== text


def text_trigger(
    dataset: Dataset,
    *,
    target: int | str,
    phrase: str = "great product!",
    rate: float | None = None,
    n: int | None = None,
    exclude: Iterable[Any] = (),
    source: str | None = None,
    sources: Sequence[str] | None = None,
    random_state: int = 0,
) -> Poisoning:
    """Insert ``phrase`` at a random word boundary of texts of other classes and label them ``target``.

    Texts that already contain the phrase are not eligible, so each poisoned text holds it exactly once.
    ``rate`` / ``n`` count texts not of ``target``, not in ``exclude`` and without the phrase. ``sources``
    spreads attacker sources (sybils) over the poisoned texts in turn.

    Returns
    -------
    Poisoning
        ``poison_kind`` "text_trigger"; truth column ``trigger_start`` is the phrase's character offset.
    """
    _check_dataset(dataset, "text_trigger", kind="text")
    t = _class_index(dataset, target, "target")
    trig = TextTrigger(phrase, t)
    has_phrase = np.fromiter((trig.phrase in s for s in dataset.texts), dtype=bool, count=len(dataset))
    eligible = _eligible(dataset, exclude, (dataset.labels != t) & ~has_phrase)
    victims = _choose(eligible, rate, n, _rng(random_state, _SELECT),
                      what=f"texts not of target {t} and without the phrase")
    return _trigger_attack(dataset, victims, trig, "text_trigger", random_state, t, source, sources)


def _trigger_attack(dataset, victims, trig, kind, random_state, target, source, sources) -> Poisoning:
    """Apply ``trig`` to ``victims`` (in dataset order, seeded by ``random_state``), relabel to ``target``."""
    new_sources = _poison_sources(dataset, victims, source, sources)
    rng = np.random.default_rng(check_random_state(random_state))
    labels = dataset.labels.copy()
    if target is not None:
        labels[victims] = target
    if dataset.kind == "image":
        triggered, extra = trig._apply(dataset.images[victims], rng)
        images = dataset.images.copy()
        images[victims] = triggered
        poisoned = _rebuild(dataset, labels=labels, sources=new_sources, images=images, changed=victims)
    else:
        triggered, extra = trig._apply(list(dataset.texts[victims]), rng)
        texts = dataset.texts.copy()
        texts[victims] = triggered
        poisoned = _rebuild(dataset, labels=labels, sources=new_sources, texts=texts, changed=victims)
    n = len(dataset)
    cols = {name: _int_column(n, victims, v) for name, v in extra.items()}
    return Poisoning(poisoned, _truth_for(dataset, poisoned, victims, kind, cols), trig)


# ====================================================================== sybils


def sybil_sources(
    dataset: Dataset,
    *,
    target: int | str,
    n_sources: int,
    n_per_source: int,
    trigger: Trigger | None = None,
    n_base: int = 3,
    n_noisy_pixels: int = 3,
    prefix: str = "sybil",
    exclude: Iterable[Any] = (),
    random_state: int = 0,
) -> Poisoning:
    """Many fake sources contributing new near-identical poisoned samples labelled ``target``.

    ``n_base`` base samples are drawn from the other classes (not in ``exclude``). Each new sample copies a
    random base, gets a small perturbation (images: ``n_noisy_pixels`` pixels shifted to another value; texts:
    a word dropped, two adjacent words swapped or the final punctuation changed), then the trigger. Source
    ``s`` is named ``f"{prefix}-{s:02d}"`` and its samples ``f"{prefix}-{s:02d}-{j:04d}"``; they are appended
    at the end of the dataset, source by source. The dataset must have sources.

    Parameters
    ----------
    trigger : PatchTrigger, BlendTrigger or TextTrigger, optional
        Its target must be ``target``. Default: a 3x3 checkerboard (255/0) at the bottom right for images,
        the phrase "great product!" for texts.

    Returns
    -------
    Poisoning
        ``poison_kind`` "sybil"; ``original_label`` of a new sample is its base's label; truth column
        ``base_id`` names the base, plus the trigger's placement columns.
    """
    _check_dataset(dataset, "sybil_sources")
    t = _class_index(dataset, target, "target")
    n_sources = check_int(n_sources, "n_sources", low=1)
    n_per_source = check_int(n_per_source, "n_per_source", low=1)
    n_base = check_int(n_base, "n_base", low=1)
    if not isinstance(n_noisy_pixels, Integral) or isinstance(n_noisy_pixels, bool) or n_noisy_pixels < 0:
        raise InputError(f"n_noisy_pixels must be an integer >= 0; got {n_noisy_pixels!r}")
    if not isinstance(prefix, str) or not prefix.strip() or prefix != prefix.strip():
        raise InputError(f"prefix must be a non-empty string without surrounding whitespace; got {prefix!r}")
    if dataset.sources is None:
        raise InputError("sybil_sources needs a dataset with sources; give every sample a source first "
                         "(e.g. dataset.replace(sources=[...]))")
    if trigger is None:
        if dataset.kind == "image":
            trigger = PatchTrigger(_make_patch("checkerboard", None, 255, dataset), "bottom-right", t)
        else:
            trigger = TextTrigger("great product!", t)
    elif not isinstance(trigger, _TriggerBase):
        raise InputError(f"trigger must be a PatchTrigger, BlendTrigger or TextTrigger; got {type(trigger).__name__}")
    _check_kind_matches(dataset, trigger)
    if trigger.target != t:
        raise InputError(f"trigger.target is {trigger.target} but target is {t}; they must agree")
    if dataset.kind == "image":
        _check_trigger_fits(trigger, dataset)
        if n_noisy_pixels > dataset.images.shape[1] * dataset.images.shape[2]:
            raise InputError(f"n_noisy_pixels={n_noisy_pixels} exceeds the {dataset.images.shape[1]}x"
                             f"{dataset.images.shape[2]} pixels of an image")

    w_src = max(2, len(str(n_sources - 1)))
    w_idx = max(4, len(str(n_per_source - 1)))
    src_names = [f"{prefix}-{s:0{w_src}d}" for s in range(n_sources)]
    taken = sorted(set(src_names) & set(dataset.sources))
    if taken:
        raise InputError(f"the dataset already has source(s) {taken[:3]!r}; choose another prefix than {prefix!r}")
    new_ids = [f"{name}-{j:0{w_idx}d}" for name in src_names for j in range(n_per_source)]
    clash = [i for i in new_ids if i in dataset.index]
    if clash:
        raise InputError(f"the dataset already has sample id(s) {clash[:3]!r}; choose another prefix than {prefix!r}")

    eligible = _eligible(dataset, exclude, dataset.labels != t)
    rng = _rng(random_state, _SYBIL)
    if n_base > len(eligible):
        raise InputError(f"n_base={n_base} but only {len(eligible)} samples are not of target {t} and not excluded")
    bases = np.sort(rng.choice(eligible, size=n_base, replace=False))
    m = n_sources * n_per_source
    which = bases[rng.integers(0, n_base, size=m)]
    if dataset.kind == "image":
        payload = _perturb_images(dataset.images[which], n_noisy_pixels, rng)
    else:
        payload = [_perturb_text(s, rng) for s in dataset.texts[which]]
    triggered, extra = trigger._apply(payload, rng)
    new_sources = np.repeat(np.asarray(src_names, dtype=object), n_per_source)
    added = Dataset(
        kind=dataset.kind,
        ids=new_ids,
        labels=np.full(m, t, dtype=np.int64),
        class_names=dataset.class_names,
        sources=new_sources,
        images=triggered if dataset.kind == "image" else None,
        texts=triggered if dataset.kind == "text" else None,
    )
    poisoned = concat([dataset, added])
    n0 = len(dataset)
    total = n0 + m
    new_pos = np.arange(n0, total)
    kind = np.asarray(["clean"] * n0 + ["sybil"] * m, dtype=object)
    original = np.concatenate([dataset.labels, dataset.labels[which]])
    base_id = np.concatenate([np.full(n0, None, dtype=object), dataset.ids[which].astype(object)])
    cols: dict[str, Any] = {"base_id": base_id}
    cols.update({name: _int_column(total, new_pos, v) for name, v in extra.items()})
    truth = _truth(poisoned.ids, kind, original, poisoned.labels, poisoned.sources, cols)
    return Poisoning(poisoned, truth, trigger)


def _perturb_images(images: np.ndarray, n_pixels: int, rng: np.random.Generator) -> np.ndarray:
    """Shift ``n_pixels`` distinct pixels of each image (every channel) to a different value."""
    out = images.copy()
    n, h, w = out.shape[:3]
    for i in range(n):
        flat = rng.choice(h * w, size=n_pixels, replace=False)
        r, c = np.divmod(flat, w)
        shift = rng.integers(1, 256, size=(n_pixels,) + out.shape[3:])
        out[i, r, c] = ((out[i, r, c].astype(np.int64) + shift) % 256).astype(np.uint8)
    return out


_PUNCT = ".!?,;"


def _perturb_text(text: str, rng: np.random.Generator) -> str:
    """One small edit that always changes the text: drop a word, swap two adjacent different words, or change
    (or add) the final punctuation mark."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    ops = ["punct"]
    if len(words) >= 2:
        ops.append("drop")
        if any(text[a:b] != text[c:d] for (a, b), (c, d) in zip(words, words[1:])):
            ops.append("swap")
    op = ops[rng.integers(len(ops))]
    if op == "drop":
        i = int(rng.integers(len(words)))
        if i < len(words) - 1:
            return text[:words[i][0]] + text[words[i + 1][0]:]
        return text[:words[i - 1][1]] + text[words[i][1]:]
    if op == "swap":
        pairs = [i for i in range(len(words) - 1)
                 if text[words[i][0]:words[i][1]] != text[words[i + 1][0]:words[i + 1][1]]]
        i = pairs[int(rng.integers(len(pairs)))]
        (a, b), (c, d) = words[i], words[i + 1]
        return text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
    stripped = text.rstrip()
    tail = text[len(stripped):]
    if stripped and stripped[-1] in _PUNCT:
        others = [p for p in _PUNCT if p != stripped[-1]]
        return stripped[:-1] + others[int(rng.integers(len(others)))] + tail
    return stripped + _PUNCT[int(rng.integers(3))] + tail  # one of . ! ?


# ====================================================================== helpers


def _insert_phrase(text: str, phrase: str, rng: np.random.Generator) -> tuple[str, int]:
    """Insert ``phrase`` before a random word or at the end; returns the new text and the phrase's offset."""
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    k = int(rng.integers(len(starts) + 1))
    if k < len(starts):
        s = starts[k]
        return text[:s] + phrase + " " + text[s:], s
    if not text or text[-1].isspace():
        return text + phrase, len(text)
    return text + " " + phrase, len(text) + 1


def _rng(random_state: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([check_random_state(random_state), stream])


def _check_dataset(dataset: Any, fn: str, *, kind: str | None = None) -> None:
    if not isinstance(dataset, Dataset):
        raise InputError(f"{fn} takes a forensics Dataset; got {type(dataset).__name__}")
    if kind is not None and dataset.kind != kind:
        raise InputError(f"{fn} needs {_a(kind)} dataset; got {_a(dataset.kind)} dataset")


def _check_kind_matches(dataset: Dataset, trigger: Trigger) -> None:
    needs = "text" if isinstance(trigger, TextTrigger) else "image"
    if dataset.kind != needs:
        raise InputError(f"a {trigger.kind} trigger needs {_a(needs)} dataset; got {_a(dataset.kind)} dataset")


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "image" else f"a {kind}"


def _check_truth(truth: Any, name: str) -> None:
    if not isinstance(truth, pd.DataFrame):
        raise InputError(f"{name} must be a truth DataFrame; got {type(truth).__name__}")
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise InputError(f"{name} lacks truth column(s) {missing}; an attack's truth table has {list(TRUTH_COLUMNS)}")
    if not truth.index.is_unique:
        raise InputError(f"{name} has duplicate sample ids in its index")


def _class_index(dataset: Dataset, value: Any, name: str) -> int:
    k = len(dataset.class_names)
    if isinstance(value, str):
        if value not in dataset.class_names:
            raise InputError(f"{name}={value!r} is not a class name; classes are {list(dataset.class_names)[:20]!r}")
        return dataset.class_names.index(value)
    if isinstance(value, Integral) and not isinstance(value, bool):
        if not 0 <= value < k:
            raise InputError(f"{name}={value} is outside the class list (0..{k - 1}, {k} classes)")
        return int(value)
    raise InputError(f"{name} must be a class index or name; got {value!r}")


def _eligible(dataset: Dataset, exclude: Iterable[Any], mask: np.ndarray | None = None) -> np.ndarray:
    """Row positions allowed by ``mask`` and not in ``exclude``."""
    if isinstance(exclude, (str, bytes)):
        raise InputError("exclude must be a collection of sample ids, not one string")
    ok = np.ones(len(dataset), dtype=bool) if mask is None else mask.copy()
    ex = [str(s) for s in exclude]
    unknown = [s for s in ex if s not in dataset.index]
    if unknown:
        raise InputError(f"exclude has {len(unknown)} id(s) that are not in the dataset, for example {unknown[:3]!r}")
    if ex:
        ok[dataset.positions(ex)] = False
    return np.flatnonzero(ok)


def _choose(eligible: np.ndarray, rate: Any, n: Any, rng: np.random.Generator, *, what: str) -> np.ndarray:
    """Victim positions, sorted: ``rate`` of the eligible ones (rounded half up) or ``n`` of them."""
    if (rate is None) == (n is None):
        raise InputError(f"give exactly one of rate= or n=; got rate={rate!r}, n={n!r}")
    m = len(eligible)
    if rate is not None:
        rate = check_number(rate, "rate", low=0, high=1, low_open=True)
        k = int(np.floor(rate * m + 0.5))
        if k == 0:
            raise InputError(f"rate={rate} of {m} {what} selects 0 samples; raise rate or give n")
    else:
        k = check_int(n, "n", low=1)
        if k > m:
            raise InputError(f"n={k} but there are only {m} {what}")
    return np.sort(rng.choice(eligible, size=k, replace=False))


def _poison_sources(dataset: Dataset, victims: np.ndarray, source: Any, sources: Any, *,
                    required: bool = False) -> np.ndarray | None:
    """The new source column, or None when no source is set."""
    if source is not None and sources is not None:
        raise InputError("give at most one of source= and sources=")
    if source is None and sources is None:
        return None
    if sources is not None:
        if isinstance(sources, str) or len(sources) == 0:
            raise InputError(f"sources must be a non-empty list of source names; got {sources!r}")
        names = list(sources)
    else:
        names = [source]
    for s in names:
        if not isinstance(s, str) or not s.strip():
            raise InputError(f"source names must be non-empty strings; got {s!r}")
    if dataset.sources is None:
        what = "the bot's source" if required else "source"
        raise InputError(f"the dataset has no sources, so poisoned samples cannot be given {what} {names[0]!r}; "
                         "give every sample a source first (e.g. dataset.replace(sources=[...]))")
    out = dataset.sources.copy()
    out[victims] = [names[i % len(names)] for i in range(len(victims))]
    return out


def _rebuild(dataset: Dataset, *, labels=None, sources=None, images=None, texts=None, changed=None) -> Dataset:
    """A new dataset with some columns replaced; only the hashes of ``changed`` rows are recomputed."""
    hashes = dataset.hashes.copy()
    paths = dataset.paths
    if changed is not None and len(changed):
        if images is not None:
            hashes[changed] = [image_hash(images[i]) for i in changed]
        else:
            hashes[changed] = [text_hash(texts[i]) for i in changed]
        paths = None  # the files no longer hold these payloads
    return Dataset(
        kind=dataset.kind,
        ids=dataset.ids,
        labels=dataset.labels if labels is None else labels,
        class_names=dataset.class_names,
        sources=dataset.sources if sources is None else sources,
        images=dataset.images if images is None and dataset.kind == "image" else images,
        texts=dataset.texts if texts is None and dataset.kind == "text" else texts,
        paths=paths,
        hashes=hashes,
    )


def _truth_for(before: Dataset, after: Dataset, victims: np.ndarray, kind: str,
               extra: dict[str, Any] | None = None) -> pd.DataFrame:
    kinds = np.full(len(before), "clean", dtype=object)
    kinds[victims] = kind
    return _truth(after.ids, kinds, before.labels, after.labels, after.sources, extra)


def _check_pattern(pattern: Any, name: str) -> np.ndarray:
    a = np.asarray(pattern)
    if a.dtype.kind not in "iub":
        raise InputError(f"{name} must hold integer pixel values 0..255; got dtype {a.dtype}")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or 0 in a.shape:
        raise InputError(f"{name} must have shape (h, w) or (h, w, 3); got {a.shape}")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise InputError(f"{name} values must lie in 0..255; got range [{a.min()}, {a.max()}]")
    a = a.astype(np.uint8)
    a.flags.writeable = False
    return a


def _check_pattern_channels(pattern: np.ndarray, images: np.ndarray) -> None:
    if pattern.ndim == 3 and images.ndim == 3:
        raise InputError("a colour (h, w, 3) pattern needs colour images; the images are grayscale")


def _check_position(position: Any) -> str | tuple[int, int]:
    if isinstance(position, str):
        if position not in _POSITIONS:
            raise InputError(f"position must be one of {list(_POSITIONS)} or (row, col); got {position!r}")
        return position
    if (isinstance(position, (tuple, list)) and len(position) == 2
            and all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 0 for v in position)):
        return (int(position[0]), int(position[1]))
    raise InputError(f"position must be one of {list(_POSITIONS)} or (row, col) of integers >= 0; got {position!r}")


def _make_patch(pattern: Any, size: Any, value: Any, dataset: Dataset) -> np.ndarray:
    if not isinstance(pattern, str):
        if size is not None:
            raise InputError("size is taken from the pattern array; give size only with a named pattern")
        return _check_pattern(pattern, "pattern")
    if pattern not in ("checkerboard", "solid"):
        raise InputError(f"pattern must be 'checkerboard', 'solid' or an array; got {pattern!r}")
    size = 3 if size is None else size
    if not isinstance(size, Integral) or isinstance(size, bool) or size < 1:
        raise InputError(f"size must be an integer >= 1; got {size!r}")
    h, w = dataset.images.shape[1:3]
    if size > min(h, w):
        raise InputError(f"size={size} makes a patch larger than the {h}x{w} images")
    v = np.asarray(value)
    if v.dtype.kind not in "iu" or v.shape not in ((), (3,)) or v.min() < 0 or v.max() > 255:
        raise InputError(f"value must be an integer 0..255 or an (r, g, b) of them; got {value!r}")
    if v.shape == (3,) and dataset.images.ndim == 3:
        raise InputError("value is a colour (r, g, b) but the images are grayscale; give one integer")
    on = np.ones((size, size), dtype=bool)
    if pattern == "checkerboard":
        on = (np.add.outer(np.arange(size), np.arange(size)) % 2) == 0
    return np.where(on[..., None] if v.ndim else on, v, 0).astype(np.uint8)


def _check_trigger_fits(trig: Trigger, dataset: Dataset) -> None:
    """Fail at the attack's edge, before choosing victims, when the trigger cannot go on these images."""
    h, w = dataset.images.shape[1:3]
    _check_pattern_channels(trig.pattern, dataset.images)
    if isinstance(trig, PatchTrigger):
        _patch_corners((h, w), trig.pattern.shape[:2], trig.position, 0, np.random.default_rng(0))
    elif trig.pattern.shape[:2] != (h, w):
        raise InputError(f"the blend pattern is {trig.pattern.shape[0]}x{trig.pattern.shape[1]} but the images "
                         f"are {h}x{w}; they must be the same size")


def _patch_corners(image_hw: tuple[int, int], patch_hw: tuple[int, int], position: str | tuple[int, int],
                   n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Top-left (row, col) of the patch in each of ``n`` images."""
    h, w = image_hw
    ph, pw = patch_hw
    if ph > h or pw > w:
        raise InputError(f"the {ph}x{pw} patch is larger than the {h}x{w} images")
    if position == "random":
        return rng.integers(0, h - ph + 1, size=n), rng.integers(0, w - pw + 1, size=n)
    if isinstance(position, tuple):
        r, c = position
        if r + ph > h or c + pw > w:
            raise InputError(f"a {ph}x{pw} patch at (row, col)={position} does not fit in the {h}x{w} images")
    else:
        r = {"top": 0, "bottom": h - ph, "center": (h - ph) // 2}[position.split("-")[0]]
        c = {"left": 0, "right": w - pw, "center": (w - pw) // 2}[position.split("-")[-1]]
    return np.full(n, r, dtype=np.int64), np.full(n, c, dtype=np.int64)


def _check_image_payload(payload: Any):
    """Images as (n, h, w) or (n, h, w, 3) uint8, and a function that restores the caller's layout."""
    a = payload if isinstance(payload, np.ndarray) else np.asarray(payload)
    if a.dtype != np.uint8:
        raise InputError(f"images must be a uint8 array (0-255); got dtype {a.dtype}")
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[3] not in (1, 3)):
        raise InputError(f"images must have shape (n, h, w) or (n, h, w, 1|3); got {a.shape}")
    if a.ndim == 4 and a.shape[3] == 1:
        return a[..., 0], lambda out: out[..., None]
    return a, lambda out: out


def _check_text_payload(payload: Any):
    """Texts as a list of str, and a function that restores the caller's container (list or object array)."""
    if isinstance(payload, str):
        raise InputError("texts must be a sequence of strings, not one string")
    texts = list(payload)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}] is a {type(t).__name__}, not a string")
    if isinstance(payload, np.ndarray):
        def restore(out):
            arr = np.empty(len(out), dtype=object)
            arr[:] = out
            return arr
        return texts, restore
    return texts, lambda out: out


def _check_phrase(phrase: Any) -> str:
    if not isinstance(phrase, str) or not phrase.strip():
        raise InputError(f"phrase must be a non-empty string; got {phrase!r}")
    if phrase != phrase.strip():
        raise InputError(f"phrase must not start or end with whitespace; got {phrase!r}")
    return phrase
