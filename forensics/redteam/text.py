"""Text backdoor: a trigger phrase inserted into texts of other classes, relabelled."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..data import Dataset
from ._common import _SELECT, Poisoning, _check_dataset, _choose, _class_index, _eligible, _rng
from .triggers import TextTrigger, _trigger_attack


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
