"""What every attack shares: the ``Poisoning`` result, its ground-truth table, victim choice and dataset rebuilding."""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from .._validate import check_int, check_number, check_random_state
from ..data import Dataset, image_hash, text_hash
from ..errors import InputError

if TYPE_CHECKING:
    from .triggers import Trigger


#: Columns every truth table has, in this order.
TRUTH_COLUMNS = ("poison_kind", "is_poison", "original_label", "label", "source")


# Independent random streams derived from one random_state, so that choosing victims does not shift the
# trigger's own draws (and the other way round).
_SELECT, _PATTERN, _SYBIL = 1, 2, 3


class Poisoning(NamedTuple):
    """What an attack returns: the poisoned dataset, its truth table and the trigger (None for label attacks)."""

    dataset: Dataset
    truth: pd.DataFrame
    trigger: Trigger | None


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


def _rng(random_state: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([check_random_state(random_state), stream])


def _check_dataset(dataset: Any, fn: str, *, kind: str | None = None) -> None:
    if not isinstance(dataset, Dataset):
        raise InputError(f"{fn} takes a forensics Dataset; got {type(dataset).__name__}")
    if kind is not None and dataset.kind != kind:
        raise InputError(f"{fn} needs {_a(kind)} dataset; got {_a(dataset.kind)} dataset")


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
