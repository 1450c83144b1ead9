"""Backdoor triggers (a patch, a blend, an additive signal, a warp, a phrase): how each is applied, checked, stored."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from numbers import Integral
from typing import Any, ClassVar

import numpy as np

from .._validate import check_number, check_random_state
from ..data import Dataset
from ..errors import InputError
from ._common import Poisoning, _a, _check_dataset, _int_column, _poison_sources, _rebuild, _truth_for

_NOT_A_TRIGGER = "trigger must be a PatchTrigger, BlendTrigger, AdditiveTrigger, WarpTrigger or TextTrigger"
_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center", "random")


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
class AdditiveTrigger(_TriggerBase):
    """A signed full-image signal added to the pixels: ``x' = clip(x + delta, 0, 255)``.

    A sinusoid (SIG) and a faint overlay of a few grey levels (text written into a corner) are both additive.

    Attributes
    ----------
    delta : ndarray of int, shape (h, w) or (h, w, 3), values in -255..255
        The same size as the images; a 2-D signal goes into every channel.
    target : int
    """

    delta: np.ndarray
    target: int
    kind: ClassVar[str] = "additive"

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta", _check_delta(self.delta))
        object.__setattr__(self, "target", int(self.target))

    @property
    def pattern(self) -> np.ndarray:
        """The signal (signed), under the name the shape checks read."""
        return self.delta

    def __repr__(self) -> str:
        return f"AdditiveTrigger(delta={_array_summary(self.delta)}, target={self.target})"

    def _apply(self, payload: Any, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        images, restore = _check_image_payload(payload)
        _check_full_image(self.delta, images.shape[1:3], "additive signal")
        _check_pattern_channels(self.delta, images)
        d = self.delta.astype(np.int16)
        if images.ndim == 4 and d.ndim == 2:
            d = d[..., None]
        return restore(np.clip(images.astype(np.int16) + d, 0, 255).astype(np.uint8)), {}


@dataclass(frozen=True, eq=False)
class WarpTrigger(_TriggerBase):
    """A smooth warp of the image (WaNet): each output pixel samples the input at its position plus ``flow``.

    Attributes
    ----------
    flow : ndarray of float, shape (h, w, 2)
        Per pixel, the (row, col) offset in pixels read from (bilinear; the border is repeated).
    target : int
    """

    flow: np.ndarray
    target: int
    kind: ClassVar[str] = "warp"

    def __post_init__(self) -> None:
        f = np.asarray(self.flow, dtype=np.float64)
        if f.ndim != 3 or f.shape[2] != 2 or 0 in f.shape[:2]:
            raise InputError(f"flow must have shape (h, w, 2); got {f.shape}")
        if not np.isfinite(f).all():
            raise InputError("flow must be finite")
        f = f.astype(np.float32)
        f.flags.writeable = False
        object.__setattr__(self, "flow", f)
        object.__setattr__(self, "target", int(self.target))

    @property
    def pattern(self) -> np.ndarray:
        """The flow field, under the name the shape checks read."""
        return self.flow

    def __repr__(self) -> str:
        return f"WarpTrigger(flow={_array_summary(self.flow)}, target={self.target})"

    def _apply(self, payload: Any, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        from scipy import ndimage

        images, restore = _check_image_payload(payload)
        _check_full_image(self.flow, images.shape[1:3], "warp flow")
        h, w = images.shape[1:3]
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        coords = [rows + self.flow[..., 0], cols + self.flow[..., 1]]
        out = np.empty_like(images)
        for i, img in enumerate(images):
            channels = [img] if img.ndim == 2 else [img[..., k] for k in range(img.shape[2])]
            warped = [ndimage.map_coordinates(ch.astype(np.float64), coords, order=1, mode="nearest")
                      for ch in channels]
            out[i] = np.clip(np.rint(warped[0] if img.ndim == 2 else np.stack(warped, axis=-1)), 0, 255)
        return restore(out), {}


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


Trigger = PatchTrigger | BlendTrigger | AdditiveTrigger | WarpTrigger | TextTrigger


_TRIGGER_TYPES = {"patch": PatchTrigger, "blend": BlendTrigger, "additive": AdditiveTrigger, "warp": WarpTrigger,
                  "text": TextTrigger}


def apply_trigger(payload: Any, trigger: Trigger, *, random_state: int | np.random.Generator = 0) -> Any:
    """Triggered copies of images (uint8, shape (n, h, w[, c])) or texts (a list in, a list out).

    Same as ``trigger.apply(payload, random_state=random_state)``.
    """
    if not isinstance(trigger, _TriggerBase):
        raise InputError(f"{_NOT_A_TRIGGER}; got {type(trigger).__name__}")
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
    for name in ("pattern", "delta", "flow"):
        if name in given:
            given[name] = np.asarray(given[name])
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
        raise InputError(f"{_NOT_A_TRIGGER}; got {type(trigger).__name__}")
    _check_kind_matches(dataset, trigger)
    keep = dataset.labels != trigger.target
    if not keep.any():
        raise InputError(f"every sample is of the target class {trigger.target}; nothing to trigger")
    sub = dataset.subset(keep)
    payload = trigger.apply(sub.images if sub.kind == "image" else list(sub.texts), random_state=random_state)
    return sub.replace(images=payload) if sub.kind == "image" else sub.replace(texts=payload)


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


def _check_kind_matches(dataset: Dataset, trigger: Trigger) -> None:
    needs = "text" if isinstance(trigger, TextTrigger) else "image"
    if dataset.kind != needs:
        raise InputError(f"a {trigger.kind} trigger needs {_a(needs)} dataset; got {_a(dataset.kind)} dataset")


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


def _check_delta(delta: Any) -> np.ndarray:
    a = np.asarray(delta)
    if a.dtype.kind not in "iub":
        raise InputError(f"delta must hold integer grey-level changes -255..255; got dtype {a.dtype}")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or 0 in a.shape:
        raise InputError(f"delta must have shape (h, w) or (h, w, 3); got {a.shape}")
    if a.min() < -255 or a.max() > 255:
        raise InputError(f"delta values must lie in -255..255; got range [{a.min()}, {a.max()}]")
    a = a.astype(np.int16)
    a.flags.writeable = False
    return a


def _check_full_image(a: np.ndarray, image_hw: tuple[int, int], what: str) -> None:
    if a.shape[:2] != tuple(image_hw):
        raise InputError(f"the {what} is {a.shape[0]}x{a.shape[1]} but the images are {image_hw[0]}x{image_hw[1]}; "
                         "they must be the same size")


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
    if not isinstance(trig, WarpTrigger):
        _check_pattern_channels(trig.pattern, dataset.images)
    if isinstance(trig, PatchTrigger):
        _patch_corners((h, w), trig.pattern.shape[:2], trig.position, 0, np.random.default_rng(0))
    else:
        what = {"blend": "blend pattern", "additive": "additive signal", "warp": "warp flow"}[trig.kind]
        _check_full_image(trig.pattern, (h, w), what)


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
