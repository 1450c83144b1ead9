"""The signal registry: every signal declared in one place, and the shared context its scoring function reads.

A signal is a :class:`Signal`: its name, the words the reasons use for it, how the combination models its null
(``"fitted"``: a tail fitted to the bulk of its scores; ``"by_class"``: the same, never rarer than under the other
classes' own tails, for a signal that sees an attack in the one class it targets; ``"log_p"``: its scores are
-log10 p-values whose tail is exponential; ``"exact_p"``: -log10 p-values of an exact test, taken as they are;
``"label_loss"`` and ``"label_doubt"``: ``-ln q`` and ``1 - q`` for ``q`` the probability a model gives the sample's
label, read as ``p = min(1, k q)`` for ``k`` classes), the group of signals that read the same evidence (counted
once), whether it only gives context (shown, never summed into the suspicion), its tags (``backdoor``, ``label``,
``source``), what it needs (``probs``, ``images``, ``texts``, ``sources``, ``trusted``), its parameters with their
defaults, and its scoring function ``score(ctx, **params) -> ndarray (n,)``, **higher = more suspicious**.

:func:`register` adds one (the built-in ones are in :mod:`forensics.signals.builtin`); a user's own signal,
registered in a notebook, runs in :func:`forensics.compute_signals` and :func:`forensics.investigate` and shows in
the suspicion, the reasons, the panels and the report like a built-in one::

    @register("brightness", reason="unusually bright", params={"power": 1.0})
    def brightness(ctx, *, power):
        return ctx.dataset.images.mean(axis=(1, 2)) ** power

The :class:`SignalContext` computes each intermediate that several signals read once, on first use (the
predictions and losses, the out-of-fold probabilities, the duplicate groups, the shared marks, the reduced
features and their kNN graph), so that no result depends on which signal asked first and nothing is computed twice.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import check_choice, check_features, check_labels, check_probs, check_random_state
from ..errors import ForensicsError, InputError

if TYPE_CHECKING:
    import pandas as pd

    from ..data import Dataset
    from .neighbors import Metric

#: How the combination models a signal's null (see :mod:`forensics.signals.combine`).
NULL_KINDS = ("fitted", "by_class", "log_p", "exact_p", "label_loss", "label_doubt", "posterior")
#: What a signal may need beyond the features and labels; a signal whose needs are not met is skipped with a reason.
NEEDS = {
    "probs": "needs the model's predicted probabilities",
    "images": "needs the images (a dataset of kind image)",
    "texts": "needs the texts (a dataset of kind text)",
    "sources": "needs at least two sources",
    "trusted": "needs a trusted set (investigate(..., trusted=dataset))",
}
#: A signal's column in a signals table is its name with this suffix.
SCORE_SUFFIX = "_score"

ScoreFn = Callable[..., np.ndarray]


class SignalSkipped(ForensicsError):
    """Raised by a scoring function that cannot run on this input; the message says why (e.g. images too small)."""


@dataclass(frozen=True)
class Signal:
    """One signal's declaration. ``score`` is None for a signal computed by a later step (``trigger``)."""

    name: str
    reason: str
    score: ScoreFn | None
    null: str = "fitted"
    context_only: bool = False
    group: str | None = None
    tags: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()
    params: Mapping[str, Any] = field(default_factory=dict)
    default: bool = False

    @property
    def summary(self) -> str:
        """The first line of the scoring function's docstring: what the signal sees."""
        doc = inspect.getdoc(self.score) if self.score is not None else None
        return doc.splitlines()[0] if doc else self.reason


_REGISTRY: dict[str, Signal] = {}


def register(
    name: str,
    *,
    reason: str,
    null: str = "fitted",
    context_only: bool = False,
    group: str | None = None,
    tags: Iterable[str] = (),
    needs: Iterable[str] = (),
    params: Mapping[str, Any] | None = None,
    default: bool = False,
    replace: bool = False,
) -> Callable[[ScoreFn], ScoreFn]:
    """Register a scoring function ``score(ctx, **params)`` as the signal ``name`` (a decorator).

    Parameters
    ----------
    name : str
        Letters, digits and underscores; the table column is ``<name>_score``.
    reason : str
        How a sample's reasons name the signal ("its neighbours carry other labels").
    null : {"fitted", "by_class", "log_p", "exact_p", "label_loss", "label_doubt", "posterior"}
        How the combination turns its scores into tail probabilities (see :mod:`forensics.signals.combine`).
    context_only : bool
        Shown beside the suspicion, never summed into it.
    group : str, optional
        Signals that read the same evidence (two estimates of one spectral direction) share a group; the
        combination counts a group once, as its smallest tail probability times its size.
    tags : iterable of str
        Families the signal speaks for (``backdoor``: used by text trigger discovery; ``label``; ``source``).
    needs : iterable of str
        Keys of :data:`NEEDS`; the signal is skipped, with the reason, when one is missing.
    params : mapping of str to a JSON value
        The parameters with their defaults; ``compute_signals(signals={name: {...}})`` overrides them, and
        the effective values are recorded with the investigation.
    default : bool
        Whether it runs when no signals are named.
    replace : bool
        Allow replacing a signal of the same name (a notebook re-run); otherwise a second registration is an error.
    """
    if not isinstance(name, str) or not name.isidentifier() or name in ("suspicion", "reasons"):
        raise InputError(f"name must be an identifier other than 'suspicion' and 'reasons'; got {name!r}")
    if name in _REGISTRY and not replace:
        raise InputError(f"a signal named {name!r} is registered already; pass replace=True to replace it")
    check_choice(null, "null", NULL_KINDS)
    unknown = sorted(set(needs) - set(NEEDS))
    if unknown:
        raise InputError(f"needs has {unknown}; choose from {sorted(NEEDS)}")
    defaults = dict(params or {})

    def add(fn: ScoreFn | None) -> ScoreFn | None:
        if fn is not None:
            accepted = inspect.signature(fn).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
            missing = [] if takes_any else [p for p in defaults if p not in accepted]
            if missing:
                raise InputError(f"signal {name!r} declares parameters {missing} that its function does not take")
        _REGISTRY[name] = Signal(name=name, reason=str(reason), score=fn, null=null, context_only=bool(context_only),
                                 group=None if group is None else str(group), tags=frozenset(tags),
                                 needs=frozenset(needs), params=MappingProxyType(defaults), default=bool(default))
        return fn

    return add  # type: ignore[return-value]


def unregister(name: str) -> None:
    """Remove a registered signal, typically a user's own (a built-in one stays removed until Python restarts)."""
    get_signal(name)
    del _REGISTRY[name]


def get_signal(name: str) -> Signal:
    """The declaration of a registered signal, or an error that lists them."""
    if name not in _REGISTRY:
        raise InputError(f"unknown signal {name!r}; choose from {list(_REGISTRY)}")
    return _REGISTRY[name]


def registered_signals() -> tuple[Signal, ...]:
    """Every registered signal, in registration order."""
    return tuple(_REGISTRY.values())


def default_signals() -> tuple[str, ...]:
    """The signals that run when none are named, in the order of the signals table."""
    return tuple(s.name for s in _REGISTRY.values() if s.default)


def signals_tagged(tag: str) -> tuple[str, ...]:
    """The registered signals that carry ``tag``."""
    return tuple(s.name for s in _REGISTRY.values() if tag in s.tags)


def reason_text(name: str) -> str:
    """How the reasons name a signal (its own name when it is not registered)."""
    spec = _REGISTRY.get(name)
    return spec.reason if spec is not None else name


def null_kind(name: str) -> str:
    """How the combination models a signal's null (``"fitted"`` when it is not registered)."""
    spec = _REGISTRY.get(name)
    return spec.null if spec is not None else "fitted"


def evidence_group(name: str) -> str:
    """The group a signal's evidence is counted in (its own name when it shares none, or is not registered)."""
    spec = _REGISTRY.get(name)
    return spec.group if spec is not None and spec.group is not None else name


def score_column(name: str) -> str:
    """The column that holds a signal's scores in a signals table."""
    return f"{name}{SCORE_SUFFIX}"


def score_columns(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The signal scores of a signals table, by signal name (``<name>_score`` columns, in table order)."""
    return {str(c)[: -len(SCORE_SUFFIX)]: table[c].to_numpy(dtype=np.float64, na_value=np.nan)
            for c in table.columns if str(c).endswith(SCORE_SUFFIX)}


def resolve(signals: Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None) -> dict[str, dict[str, Any]]:
    """The signals to run with their effective parameters: defaults overridden by the caller's.

    ``signals`` is None (the default set), a sequence of names (their default parameters), or a mapping of name to
    parameters (``{"knn_disagreement": {"k": 20}, "spectral": {}}``).
    """
    if signals is None:
        signals = default_signals()
    if isinstance(signals, str):
        raise InputError(f"signals must be a sequence of names or a mapping of name to parameters; got {signals!r}")
    given = dict(signals) if isinstance(signals, Mapping) else {name: None for name in signals}
    if isinstance(signals, Sequence) and len(given) != len(signals):
        raise InputError(f"signals names a signal twice: {list(signals)}")
    unknown = [name for name in given if name not in _REGISTRY]
    if unknown:
        raise InputError(f"unknown signal(s) {unknown}; choose from {list(_REGISTRY)}")
    out: dict[str, dict[str, Any]] = {}
    for name, params in given.items():
        spec = _REGISTRY[name]
        if spec.score is None:
            raise InputError(f"signal {name!r} is not computed from activations (it is added by a later step)")
        if params is not None and not isinstance(params, Mapping):
            raise InputError(f"signals[{name!r}] must be a mapping of parameter to value; got {params!r}")
        extra = sorted(set(params or {}) - set(spec.params))
        if extra:
            raise InputError(f"signal {name!r} has no parameter(s) {extra}; its parameters are {dict(spec.params)}")
        out[name] = {**spec.params, **(params or {})}
    return out


class SignalContext:
    """What signals read: the validated inputs, and intermediates computed once, on first use.

    Parameters
    ----------
    features : array, shape (n, d)
    labels : array of int, shape (n,)
    probs : array, shape (n, n_classes), optional
        The model's predicted probabilities.
    dataset : Dataset, optional
        The payload (images or texts) and content hashes.
    sources : sequence of str, optional
        Each sample's source; defaults to ``dataset.sources``.
    trusted : (array (m, d), array of int (m,)), optional
        Activations and labels of a trusted set, from the same layer (:mod:`forensics.signals.trusted`).
    random_state : int
        The seed of every step.

    Attributes
    ----------
    outputs : dict
        Intermediates an investigation keeps beside the scores (``duplicate_groups``, ``shared_marks``,
        ``relabelled_pairs``, ``label_issues``), filled as they are computed.
    seconds : dict
        Seconds spent on each shared intermediate (included in the time of the signal that first asked for it).
    """

    def __init__(self, features: Any, labels: Any, *, probs: Any = None, dataset: Dataset | None = None,
                 sources: Sequence[Any] | None = None, trusted: tuple[Any, Any] | None = None,
                 random_state: int = 0) -> None:
        self.features = check_features(features)
        self.n = n = len(self.features)
        self.labels = check_labels(labels, n)
        self.random_state = check_random_state(random_state)
        n_classes = int(self.labels.max()) + 1 if n else 0
        if n_classes > max(n, 1 << 16):
            # Signals keep per-class arrays (n x classes, sources x classes): an index far beyond the samples is an
            # id or a hash, not a class number.
            raise InputError(
                f"labels has class index {n_classes - 1} for {n} samples; labels must be class numbers "
                "0..n_classes-1 (renumber them with np.unique(labels, return_inverse=True)[1])"
            )
        self.probs = None if probs is None else check_probs(probs, n)
        if self.probs is not None:
            n_classes = max(n_classes, self.probs.shape[1])
        self.n_classes = n_classes
        if dataset is not None and len(dataset) != n:
            raise InputError(f"dataset has {len(dataset)} samples but features has {n} rows")
        self.dataset = dataset
        given = dataset.sources if sources is None and dataset is not None else sources
        if given is not None and len(given) != n:
            raise InputError(f"sources has {len(given)} entries but labels has {n} entries")
        self.sources = None if given is None else np.asarray(given, dtype=object)
        if trusted is not None and (not isinstance(trusted, tuple) or len(trusted) != 2):
            raise InputError("trusted must be a pair (activations of the trusted samples, their labels)")
        self.trusted = trusted
        self.outputs: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self._cache: dict[Any, Any] = {}

    def missing(self, needs: Iterable[str]) -> str | None:
        """Why a signal with these needs cannot run here, or None."""
        have = {
            "probs": self.probs is not None,
            "images": self.dataset is not None and self.dataset.kind == "image",
            "texts": self.dataset is not None and self.dataset.kind == "text",
            "sources": self.sources is not None and len(set(self.sources.tolist())) >= 2,
            "trusted": self.trusted is not None,
        }
        lacking = [NEEDS[k] for k in sorted(needs) if not have[k]]
        return "; ".join(lacking) or None

    def shared(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for, the kept value afterwards (timed in :attr:`seconds`)."""
        if key not in self._cache:
            t = time.perf_counter()
            self._cache[key] = compute()
            self.seconds[key if isinstance(key, str) else "/".join(map(str, key))] = round(time.perf_counter() - t, 3)
        return self._cache[key]

    # -- inputs a signal may need ---------------------------------------------------------------------------------
    @property
    def images(self) -> np.ndarray:
        """The images, shape (n, H, W) or (n, H, W, C); a signal without them is skipped (``needs=("images",)``)."""
        images = None if self.dataset is None else self.dataset.images
        if images is None:
            raise SignalSkipped(NEEDS["images"])
        return images

    @property
    def texts(self) -> list[str]:
        """The texts; a signal without them is skipped (``needs=("texts",)``)."""
        texts = None if self.dataset is None else self.dataset.texts
        if texts is None:
            raise SignalSkipped(NEEDS["texts"])
        return list(texts)

    # -- intermediates -------------------------------------------------------------------------------------------
    @property
    def predictions(self) -> np.ndarray | None:
        """The model's predicted class per sample (None without probabilities)."""
        probs = self.probs
        return None if probs is None else self.shared("predictions", lambda: probs.argmax(axis=1))

    @property
    def loss(self) -> np.ndarray:
        """Cross-entropy of each sample's given label under the model's probabilities."""
        from .loss import high_loss

        probs = self.probs
        if probs is None:
            raise SignalSkipped(NEEDS["probs"])
        return self.shared("loss", lambda: high_loss(probs, self.labels))

    def out_of_fold(self) -> np.ndarray:
        """Out-of-fold probabilities of a linear model on the features (:func:`~.label_quality.out_of_fold_probs`)."""
        from .label_quality import out_of_fold_probs

        return self.shared("out_of_fold", lambda: out_of_fold_probs(self.features, self.labels,
                                                                    random_state=self.random_state))

    def duplicate_groups(self) -> np.ndarray:
        """Duplicate groups (-1 for none): exact content first, then near duplicates of the payload (or features)."""
        groups = self.shared("duplicate_groups", self._duplicate_groups)
        self.outputs["duplicate_groups"] = groups
        return groups

    def _duplicate_groups(self) -> np.ndarray:
        from . import duplicates

        ds = self.dataset
        if ds is None:
            return duplicates.near_duplicate_groups_features(self.features, radius=1e-3,
                                                             random_state=self.random_state)
        exact = duplicates.exact_duplicate_groups(ds.hashes)
        if ds.kind == "image":
            near = duplicates.near_duplicate_groups_images(self.images)
        else:
            near = duplicates.near_duplicate_groups_texts(self.texts, random_state=self.random_state)
        # A sample joins the near-duplicate group when it has one, else its exact group; both number from 0.
        out = np.where(near >= 0, near, -1)
        lone = (out < 0) & (exact >= 0)
        if lone.any():
            out[lone] = exact[lone] + (out.max() + 1)
        return out

    def reduced(self, *, metric: Metric = "cosine", n_components: int | None = 32) -> np.ndarray:
        """The features as the neighbour signals search them (:func:`~.neighbors.reduce_features`), once per setting."""
        from .neighbors import reduce_features

        return self.shared(("reduced", metric, n_components), lambda: reduce_features(
            self.features, metric=metric, n_components=n_components, random_state=self.random_state))

    def knn(self, k: int, *, metric: Metric = "cosine", n_components: int | None = 32
            ) -> tuple[np.ndarray, np.ndarray]:
        """Distances and positions of each sample's ``k`` nearest others among :meth:`reduced`: one graph per
        setting, computed for the largest ``k`` asked so far and sliced for smaller ones."""
        from .neighbors import nearest_neighbors

        key = ("knn", metric, n_components)
        graph = self._cache.get(key)
        if graph is None or graph[0].shape[1] < k:
            self._cache.pop(key, None)
            x = self.reduced(metric=metric, n_components=n_components)
            graph = self.shared(key, lambda: nearest_neighbors(x, k, random_state=self.random_state))
        return graph[0][:, :k], graph[1][:, :k]

    def shared_marks(self, **params: Any) -> pd.DataFrame:
        """Patches repeated pixel for pixel across the images (:func:`~.marks.shared_marks`), once per setting."""
        from .marks import shared_marks

        found = self.shared(("shared_marks", *sorted(params.items())),
                            lambda: shared_marks(self.images, **params))
        self.outputs["shared_marks"] = found
        return found


__all__ = ["NEEDS", "NULL_KINDS", "SCORE_SUFFIX", "Signal", "SignalContext", "SignalSkipped", "default_signals",
           "evidence_group", "get_signal", "null_kind", "reason_text", "register", "registered_signals", "resolve",
           "score_column", "score_columns", "signals_tagged", "unregister"]
