"""Source attacks: sybil accounts pushing near copies of the same poison."""

from __future__ import annotations

import re
from collections.abc import Iterable
from numbers import Integral
from typing import Any

import numpy as np

from .._validate import check_int
from ..data import Dataset, concat
from ..errors import InputError
from ._common import _SYBIL, Poisoning, _check_dataset, _class_index, _eligible, _int_column, _rng, _truth
from .triggers import (
    _NOT_A_TRIGGER,
    PatchTrigger,
    TextTrigger,
    Trigger,
    _check_kind_matches,
    _check_trigger_fits,
    _make_patch,
    _TriggerBase,
)


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
    trigger : a Trigger (patch, blend, additive, warp or text), optional
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
        raise InputError(f"{_NOT_A_TRIGGER}; got {type(trigger).__name__}")
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
