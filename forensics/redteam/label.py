"""Label attacks: random flips, one-way pair flips, a bot source with random labels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..data import Dataset
from ..errors import InputError
from ._common import (
    _SELECT,
    Poisoning,
    _check_dataset,
    _choose,
    _class_index,
    _eligible,
    _poison_sources,
    _rebuild,
    _rng,
    _truth_for,
)


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
