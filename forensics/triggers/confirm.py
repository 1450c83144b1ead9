"""Confirming trigger candidates on the model, and the per-sample trigger signal and the findings table.

A candidate is only a pattern until the model says it matters. Two ablations ask it:

- **remove**: take the samples that carry the candidate and that the model predicts as the suspected target,
  delete the candidate (the n-gram; for an image patch, fill its region with the peers' mean image), and count
  the predictions that move away from the target;
- **add**: take clean samples of other classes that the model classifies correctly, add the candidate (insert
  the phrase at a random word boundary; paste the patch), and count the predictions that flip to the target.

Each test runs beside a **control** of the same size: deleting a random span of as many tokens (a random box of
the same size) from the same carriers, and inserting a random n-gram of the same length taken from the corpus
(a random window of the same size cut from another image) into the same clean samples. A frequent word or an
arbitrary region fails to beat its control; a trigger beats it by far.

Verdict rule (:func:`verdict`), with ``min_tried = 10``:

- ``"confirmed"``: both tests tried on at least 10 samples; adding flips at least 50% and removing changes at
  least 25%; each rate at least 0.2 above its control's rate;
- ``"weak"``: not confirmed, but one test tried on at least 5 samples has a rate of at least 0.2 and at least
  0.1 above its control's rate;
- ``"not confirmed"``: anything else, including too few samples to try.

With ``holdout`` (held-out samples and their labels, such as a validation split), the add test and its control
run on held-out samples instead of training samples: a model keeps the labels of training samples it memorized
even with a trigger pasted in, so on training samples the add rate understates how well the trigger works on new
inputs, most for a trigger the model learned only in part. When fewer than ``min_tried`` held-out samples qualify
(of another class, classified correctly, not carrying the candidate), the training samples take the test.

The remove bar is lower because the carriers are training samples: a model that memorized them may keep their
(wrong) label once the trigger is gone, while the add test runs on samples whose new form it never saw. On the
bundled Rotten Tomatoes data a clean model gives class words ("powerful", "dull", "terrific") remove and add
rates below 0.1, and frequent words ("the", ",") below 0.01.

The model is reached only through ``predict_proba``: a callable taking a batch of payloads (a uint8 image array,
or a list of texts) and returning class probabilities of shape (n, n_classes), for example
``functools.partial(forensics.models.predict_proba, model)``. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .._validate import check_images, check_int, check_random_state
from ..errors import InputError
from .image import ImageTriggerCandidate, _check_box, _check_pattern, locate_pattern, search_image
from .text import _TOKEN, _check_texts, _check_tokens, display_ngram, ngram_regex, search_text, tokenize

PredictProba = Callable[[Any], np.ndarray]

#: The verdict rule in words, repeated in every verdict's reason.
VERDICT_RULE = ("confirmed when, on at least 10 samples each, adding it flips at least 50% and removing it "
                "changes at least 25% of the predictions, each 20 points above its control; weak when one test "
                "changes at least 20% of at least 5 samples, 10 points above its control")

MIN_TRIED = 10


@dataclass(frozen=True)
class Confirmation:
    """The outcome of the remove and add tests of one candidate, with their controls.

    Counts are ``changed / tried``. ``remove_*``: carriers predicted as ``target`` whose prediction left the
    target once the candidate was removed. ``add_*``: correctly classified samples of other classes predicted as
    ``target`` once the candidate was added. ``control_*``: the same tests with a random span or region of the
    same size.
    """

    target: int
    remove_changed: int
    remove_tried: int
    add_flipped: int
    add_tried: int
    control_remove_changed: int
    control_remove_tried: int
    control_add_flipped: int
    control_add_tried: int
    verdict: str
    reason: str

    @property
    def remove_flip_rate(self) -> float:
        return _rate(self.remove_changed, self.remove_tried)

    @property
    def add_flip_rate(self) -> float:
        return _rate(self.add_flipped, self.add_tried)

    @property
    def control_remove_rate(self) -> float:
        return _rate(self.control_remove_changed, self.control_remove_tried)

    @property
    def control_add_rate(self) -> float:
        return _rate(self.control_add_flipped, self.control_add_tried)

    def as_dict(self) -> dict[str, Any]:
        """Flat columns: every field plus the four rates."""
        d = dataclasses.asdict(self)
        d.update(remove_flip_rate=self.remove_flip_rate, add_flip_rate=self.add_flip_rate,
                 control_remove_rate=self.control_remove_rate, control_add_rate=self.control_add_rate)
        return d


CONFIRMATION_COLUMNS = (
    "target", "remove_changed", "remove_tried", "remove_flip_rate", "add_flipped", "add_tried", "add_flip_rate",
    "control_remove_changed", "control_remove_tried", "control_remove_rate", "control_add_flipped",
    "control_add_tried", "control_add_rate", "verdict", "reason",
)


def _rate(k: int, n: int) -> float:
    return k / n if n else float("nan")


def verdict(
    remove: tuple[int, int],
    add: tuple[int, int],
    control_remove: tuple[int, int],
    control_add: tuple[int, int],
    *,
    min_tried: int = MIN_TRIED,
) -> tuple[str, str]:
    """The verdict of the module docstring's rule and a sentence giving the numbers behind it.

    Parameters
    ----------
    remove, add, control_remove, control_add : (changed, tried)

    Returns
    -------
    verdict : {"confirmed", "weak", "not confirmed"}
    reason : str
    """
    rates = {}
    for name, (k, n) in (("remove", remove), ("add", add), ("control_remove", control_remove),
                         ("control_add", control_add)):
        rates[name] = _rate(k, n)

    def beats(test: str, rate: float, margin: float, tried: int) -> bool:
        control = rates[f"control_{test}"]
        control = 0.0 if np.isnan(control) else control
        n = remove[1] if test == "remove" else add[1]
        return n >= tried and rates[test] >= rate and rates[test] - control >= margin

    if beats("remove", 0.25, 0.2, min_tried) and beats("add", 0.5, 0.2, min_tried):
        v = "confirmed"
    elif beats("remove", 0.2, 0.1, max(1, min_tried // 2)) or beats("add", 0.2, 0.1, max(1, min_tried // 2)):
        v = "weak"
    else:
        v = "not confirmed"

    def part(what: str, kn: tuple[int, int], ctrl: tuple[int, int]) -> str:
        if not kn[1]:
            return f"{what}: no sample to try"
        c = f"{ctrl[0]}/{ctrl[1]}" if ctrl[1] else "n/a"
        return f"{what} {kn[0]}/{kn[1]} ({100 * kn[0] / kn[1]:.0f}%, control {c})"

    reason = (f"{v}: {part('removing it changed', remove, control_remove)}; "
              f"{part('adding it flipped', add, control_add)}. Rule: {VERDICT_RULE}.")
    return v, reason


# ---------------------------------------------------------------------------------------------------- shared
def _predict(predict_proba: PredictProba, payload: Any) -> np.ndarray:
    """Predicted classes of a payload batch, checking what the callable returned."""
    if not callable(predict_proba):
        raise InputError(f"predict_proba must be a callable (payload batch -> probabilities); "
                         f"got {type(predict_proba).__name__}")
    n = len(payload)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    p = np.asarray(predict_proba(payload))
    if p.ndim != 2 or p.shape[0] != n:
        raise InputError(f"predict_proba returned shape {p.shape} for {n} samples; expected (n, n_classes)")
    return p.argmax(axis=1).astype(np.int64)


def _check_labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise InputError(f"labels must be integer class indices of shape ({n},); got dtype {y.dtype}, "
                         f"shape {y.shape}")
    return y.astype(np.int64)


def _check_predictions(predictions: Any, predict_proba: PredictProba, payload: Any, n: int) -> np.ndarray:
    if predictions is None:
        return _predict(predict_proba, payload)
    p = np.asarray(predictions)
    if p.shape != (n,) or p.dtype.kind not in "iu":
        raise InputError(f"predictions must be integer classes of shape ({n},); got dtype {p.dtype}, "
                         f"shape {p.shape}")
    return p.astype(np.int64)


def _target(target: Any, carriers: np.ndarray, pred: np.ndarray) -> int:
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 0:
            raise InputError(f"target must be a class index; got {target!r}")
        return int(target)
    if not carriers.any():
        raise InputError("no sample carries the candidate, so its target cannot be inferred; give target=")
    return int(np.bincount(pred[carriers]).argmax())


def _sample(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(rows, size=k, replace=False)) if len(rows) > k else rows


@dataclass(frozen=True)
class Holdout:
    """Held-out samples for the add test, with the model's predictions of them (computed once)."""

    payload: Any  # uint8 images (m, h, w[, 3]) or a list of texts
    labels: np.ndarray
    predictions: np.ndarray


def holdout_set(holdout: Any, predict_proba: PredictProba, *, kind: str, like: np.ndarray | None = None
                ) -> Holdout | None:
    """``(payload, labels)`` (or a :class:`Holdout`, or None) checked, with the model's predictions; held-out
    images must have the shape of the images ``like``."""
    if holdout is None:
        return None
    if isinstance(holdout, Holdout):
        payload, labels = holdout.payload, holdout.labels
    else:
        try:
            payload, labels = holdout
        except (TypeError, ValueError):
            raise InputError("holdout must be a pair (held-out images or texts, their labels)") from None
    payload = check_images(payload, allow_empty=False) if kind == "image" else _check_texts(payload)
    if like is not None and payload.shape[1:] != like.shape[1:]:
        raise InputError(f"the held-out images have shape {payload.shape[1:]} but the images are {like.shape[1:]}")
    if isinstance(holdout, Holdout):
        return holdout
    y = _check_labels(labels, len(payload))
    return Holdout(payload, y, _predict(predict_proba, payload))


# ---------------------------------------------------------------------------------------------------- text
def _insert(text: str, phrase: str, rng: np.random.Generator) -> str:
    """``phrase`` before a random word, or at the end."""
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    k = int(rng.integers(len(starts) + 1))
    if k < len(starts):
        return text[:starts[k]] + phrase + " " + text[starts[k]:]
    return text + ("" if not text or text[-1].isspace() else " ") + phrase


def _delete_random_span(text: str, n: int, avoid: re.Pattern[str], rng: np.random.Generator) -> str | None:
    """``text`` without a random run of ``n`` tokens that overlaps no match of ``avoid``; None if none fits."""
    spans = [m.span() for m in _TOKEN.finditer(text)]
    blocked = [m.span() for m in avoid.finditer(text)]
    options = [i for i in range(len(spans) - n + 1)
               if not any(spans[i][0] < b1 and a0 < spans[i + n - 1][1] for a0, b1 in blocked)]
    if not options:
        return None
    i = options[int(rng.integers(len(options)))]
    return text[:spans[i][0]] + " " + text[spans[i + n - 1][1]:]


def confirm_text_trigger(
    texts: Sequence[str],
    ngram_tokens: Sequence[str] | str,
    *,
    predict_proba: PredictProba,
    labels: Sequence[int] | np.ndarray,
    target: int | None = None,
    predictions: Sequence[int] | np.ndarray | None = None,
    max_samples: int = 200,
    min_tried: int = MIN_TRIED,
    holdout: Any = None,
    random_state: int = 0,
) -> Confirmation:
    """Remove and add tests of one n-gram (see the module docstring), with their controls.

    Parameters
    ----------
    texts : sequence of str, length n
        The training texts (carriers are searched here; clean samples are drawn from here).
    ngram_tokens : sequence of str, or str
        The candidate (a string is tokenized).
    predict_proba : callable
        List of texts -> probabilities (m, n_classes).
    labels : array of int, shape (n,)
    target : int, optional
        The suspected target class; by default the most common prediction among the carriers.
    predictions : array of int, shape (n,), optional
        The model's predictions of ``texts``, if already known (saves one pass over the data).
    max_samples : int
        At most this many samples per test (drawn with ``random_state``).
    min_tried : int
        Fewest samples per test for a "confirmed" verdict.
    holdout : (texts, labels), optional
        Held-out texts for the add test (see the module docstring); default: the training texts.

    Returns
    -------
    Confirmation
    """
    texts = _check_texts(texts)
    tokens = tokenize(ngram_tokens) if isinstance(ngram_tokens, str) else _check_tokens(ngram_tokens)
    n = len(texts)
    y = _check_labels(labels, n)
    pred = _check_predictions(predictions, predict_proba, texts, n)
    max_samples = check_int(max_samples, "max_samples", low=1)
    min_tried = check_int(min_tried, "min_tried", low=1)
    rng = np.random.default_rng(check_random_state(random_state))
    carriers = search_text(texts, tokens)
    target = _target(target, carriers, pred)
    pattern = re.compile(ngram_regex(tokens).pattern, re.IGNORECASE)
    phrase = display_ngram(tokens)

    # remove: delete the n-gram from carriers predicted as the target; control: delete n other tokens.
    tried = _sample(np.flatnonzero(carriers & (pred == target)), max_samples, rng)
    removed = [pattern.sub(" ", texts[i]) for i in tried]
    remove_changed = int((_predict(predict_proba, removed) != target).sum())
    control = [_delete_random_span(texts[i], len(tokens), pattern, rng) for i in tried]
    control = [t for t in control if t is not None]
    control_remove_changed = int((_predict(predict_proba, control) != target).sum())

    # add: insert the phrase into correctly classified clean samples of other classes; control: a random
    # n-gram of the same length cut from a text that does not carry the candidate.
    held = holdout_set(holdout, predict_proba, kind="text")
    into, eligible = texts, (y != target) & (pred == y) & ~carriers
    if held is not None:
        ok = (held.labels != target) & (held.predictions == held.labels) & ~search_text(held.payload, tokens)
        if ok.sum() >= min_tried:
            into, eligible = held.payload, ok
    pool = _sample(np.flatnonzero(eligible), max_samples, rng)
    added = [_insert(into[i], phrase, rng) for i in pool]
    add_flipped = int((_predict(predict_proba, added) == target).sum())
    donors = np.flatnonzero(~carriers)
    control_added = []
    for i in pool:
        span = _random_span(texts[int(rng.choice(donors))], len(tokens), rng) if len(donors) else None
        if span is not None:
            control_added.append(_insert(into[i], span, rng))
    control_add_flipped = int((_predict(predict_proba, control_added) == target).sum())

    v, reason = verdict((remove_changed, len(tried)), (add_flipped, len(pool)),
                        (control_remove_changed, len(control)), (control_add_flipped, len(control_added)),
                        min_tried=min_tried)
    return Confirmation(target, remove_changed, len(tried), add_flipped, len(pool), control_remove_changed,
                        len(control), control_add_flipped, len(control_added), v, reason)


def _random_span(text: str, n: int, rng: np.random.Generator) -> str | None:
    """The original text of a random run of ``n`` tokens of ``text``, or None if it has fewer."""
    spans = [m.span() for m in _TOKEN.finditer(text)]
    if len(spans) < n:
        return None
    i = int(rng.integers(len(spans) - n + 1))
    return text[spans[i][0]:spans[i + n - 1][1]]


def confirm_text_candidates(
    candidates: pd.DataFrame,
    texts: Sequence[str],
    *,
    predict_proba: PredictProba,
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray | None = None,
    max_samples: int = 200,
    min_tried: int = MIN_TRIED,
    holdout: Any = None,
    random_state: int = 0,
) -> pd.DataFrame:
    """:func:`confirm_text_trigger` for every row of a :func:`text_trigger_candidates` table.

    Each row is tested against its own ``predicted_class`` as the target. Returns a copy of ``candidates``
    with the :data:`CONFIRMATION_COLUMNS` added (``verdict`` and ``reason`` among them).
    """
    if not isinstance(candidates, pd.DataFrame) or not {"tokens", "predicted_class"} <= set(candidates.columns):
        raise InputError("candidates must be the DataFrame text_trigger_candidates returns (with 'tokens' and "
                         "'predicted_class' columns)")
    texts = _check_texts(texts)
    pred = _check_predictions(predictions, predict_proba, texts, len(texts))
    held = holdout_set(holdout, predict_proba, kind="text")
    rows = []
    for k, (tokens, target) in enumerate(zip(candidates["tokens"], candidates["predicted_class"])):
        conf = confirm_text_trigger(texts, tuple(tokens), predict_proba=predict_proba, labels=labels,
                                    target=int(target), predictions=pred, max_samples=max_samples,
                                    min_tried=min_tried, holdout=held, random_state=random_state + k)
        rows.append(conf.as_dict())
    extra = pd.DataFrame(rows, columns=list(CONFIRMATION_COLUMNS), index=candidates.index)
    out = candidates.drop(columns=[c for c in CONFIRMATION_COLUMNS if c in candidates.columns])
    return pd.concat([out, extra], axis=1)


# ---------------------------------------------------------------------------------------------------- image
def confirm_image_trigger(
    images: np.ndarray,
    candidate: ImageTriggerCandidate,
    *,
    predict_proba: PredictProba,
    labels: Sequence[int] | np.ndarray,
    target: int | None = None,
    predictions: Sequence[int] | np.ndarray | None = None,
    match_threshold: float = 0.9,
    max_samples: int = 200,
    min_tried: int = MIN_TRIED,
    holdout: Any = None,
    random_state: int = 0,
) -> Confirmation:
    """Remove and add tests of one image candidate (see the module docstring), with their controls.

    - fixed patch: carriers match the pattern at ``box``; removing fills the box with the peers' mean image;
      adding pastes the pattern at ``box``; the controls fill a random box of the same size elsewhere and
      paste a window of the same size cut at a random place of a random non-carrier image.
    - moving patch: the same at the place found in each carrier (remove) or at a random place (add).
    - no local pattern: carriers are the candidate's carriers (the group images its difference is the mean of);
      removing subtracts the mean difference image, adding adds it (clipped to 0..255); the controls use the mean
      difference of as many random other images from their look-alikes, at the same strength.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, 3)
        The images the candidate was found in (its ``group`` indexes them).
    candidate : ImageTriggerCandidate
    predict_proba : callable
        uint8 image batch -> probabilities (m, n_classes).
    labels : array of int, shape (n,)
    target : int, optional
        Default: the candidate's ``target``, else the most common prediction among the carriers.
    predictions : array of int, shape (n,), optional
        The model's predictions of ``images``, if already known.
    match_threshold : float
        Share of the pattern's pixels that must match for an image to carry it.
    holdout : (images, labels), optional
        Held-out images for the add test (see the module docstring); default: the training images.
    """
    x = check_images(images, allow_empty=False)
    if not isinstance(candidate, ImageTriggerCandidate):
        raise InputError(f"candidate must be an ImageTriggerCandidate; got {type(candidate).__name__}")
    n = len(x)
    if len(candidate.group) and candidate.group.max() >= n:
        raise InputError(f"the candidate's group indexes row {int(candidate.group.max())} but there are {n} "
                         "images: give the images it was found in")
    y = _check_labels(labels, n)
    pred = _check_predictions(predictions, predict_proba, x, n)
    max_samples = check_int(max_samples, "max_samples", low=1)
    min_tried = check_int(min_tried, "min_tried", low=1)
    rng = np.random.default_rng(check_random_state(random_state))
    h, w = x.shape[1:3]
    fill = np.clip(np.rint(candidate.peer_mean), 0, 255).astype(np.uint8)

    if candidate.local:
        pattern = _check_pattern(candidate.pattern, x)
        ph, pw = pattern.shape[:2]
        if candidate.moves:
            match, rows, cols = locate_pattern(x, pattern, tolerance=candidate.tolerance)
        else:
            r0, c0, _, _ = _check_box(candidate.box, (h, w))
            match = search_image(x, pattern, box=candidate.box, tolerance=candidate.tolerance)
            rows, cols = np.full(n, r0), np.full(n, c0)
        carriers = match >= match_threshold
    else:
        carriers = np.zeros(n, dtype=bool)
        carriers[candidate.group[candidate.carriers]] = True
    target = _target(target if target is not None else candidate.target, carriers, pred)

    held = holdout_set(holdout, predict_proba, kind="image", like=x)
    into, eligible = x, (y != target) & (pred == y) & ~carriers
    if held is not None:
        ok = (held.labels != target) & (held.predictions == held.labels)
        if candidate.local:
            found = (locate_pattern(held.payload, pattern, tolerance=candidate.tolerance)[0] if candidate.moves else
                     search_image(held.payload, pattern, box=candidate.box, tolerance=candidate.tolerance))
            ok &= found < match_threshold
        if ok.sum() >= min_tried:
            into, eligible = held.payload, ok
    tried = _sample(np.flatnonzero(carriers & (pred == target)), max_samples, rng)
    pool = _sample(np.flatnonzero(eligible), max_samples, rng)
    donors = np.flatnonzero(~carriers)

    if candidate.local:
        removed = x[tried].copy()
        control_removed = x[tried].copy()
        kept = []
        for j, i in enumerate(tried):
            r, c = rows[i], cols[i]
            removed[j, r:r + ph, c:c + pw] = fill[r:r + ph, c:c + pw]
            spot = _random_box_elsewhere((h, w), (ph, pw), (r, c), rng)
            if spot is not None:
                cr, cc = spot
                control_removed[j, cr:cr + ph, cc:cc + pw] = fill[cr:cr + ph, cc:cc + pw]
                kept.append(j)
        control_removed = control_removed[kept]
        added = into[pool].copy()
        control_added = into[pool].copy()
        for j in range(len(pool)):
            if candidate.moves:
                r, c = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
            else:
                r, c = rows[0], cols[0]
            added[j, r:r + ph, c:c + pw] = pattern
            if len(donors):
                d = int(rng.choice(donors))
                dr, dc = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
                control_added[j, r:r + ph, c:c + pw] = x[d, dr:dr + ph, dc:dc + pw]
        if not len(donors):
            control_added = control_added[:0]
    else:
        diff = np.asarray(candidate.difference, dtype=np.float32)
        if diff.shape != x.shape[1:]:
            raise InputError(f"the candidate's difference image has shape {diff.shape} but the images are "
                             f"{x.shape[1:]}")
        control = _control_difference(x, candidate.group, diff, rng)

        def shift(batch: np.ndarray, d: np.ndarray) -> np.ndarray:
            return np.clip(np.rint(batch.astype(np.float32) + d), 0, 255).astype(np.uint8)

        removed, control_removed = shift(x[tried], -diff), shift(x[tried], -control)
        added, control_added = shift(into[pool], diff), shift(into[pool], control)

    remove_changed = int((_predict(predict_proba, removed) != target).sum())
    control_remove_changed = int((_predict(predict_proba, control_removed) != target).sum())
    add_flipped = int((_predict(predict_proba, added) == target).sum())
    control_add_flipped = int((_predict(predict_proba, control_added) == target).sum())
    v, reason = verdict((remove_changed, len(tried)), (add_flipped, len(pool)),
                        (control_remove_changed, len(control_removed)), (control_add_flipped, len(control_added)),
                        min_tried=min_tried)
    return Confirmation(target, remove_changed, len(tried), add_flipped, len(pool), control_remove_changed,
                        len(control_removed), control_add_flipped, len(control_added), v, reason)


def _control_difference(x: np.ndarray, group: np.ndarray, diff: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the same measurement gives a group without a trigger: the mean difference from their look-alikes of as
    many random images from outside ``group``, scaled to ``diff``'s mean absolute strength. (A pixel-shuffled
    ``diff`` is no control for a noise pattern: it is noise of the same strength, which a model that learned the
    noise answers in the same way.)"""
    from .image import _LOOKALIKE_REFS, _channels_last, _lookalike_difference, _restore

    others = np.setdiff1d(np.arange(len(x)), group)
    if not len(others):
        return np.zeros_like(diff)
    rows = np.sort(rng.choice(others, size=min(len(group), 500, len(others)), replace=False))
    refs = np.sort(rng.choice(others, size=min(len(others), _LOOKALIKE_REFS), replace=False))
    control = _restore(_lookalike_difference(_channels_last(x), rows, refs), x).astype(np.float32)
    strength = float(np.abs(control).mean())
    return control * (float(np.abs(diff).mean()) / strength) if strength > 0 else control


def _random_box_elsewhere(hw: tuple[int, int], size: tuple[int, int], avoid: tuple[int, int],
                          rng: np.random.Generator) -> tuple[int, int] | None:
    """Top-left of a random box of ``size`` that does not overlap the box of the same size at ``avoid``."""
    (h, w), (ph, pw), (ar, ac) = hw, size, avoid
    rr, cc = np.meshgrid(np.arange(h - ph + 1), np.arange(w - pw + 1), indexing="ij")
    ok = (np.abs(rr - ar) >= ph) | (np.abs(cc - ac) >= pw)
    options = np.flatnonzero(ok.ravel())
    if not len(options):
        return None
    k = int(rng.choice(options))
    return int(rr.ravel()[k]), int(cc.ravel()[k])


def confirm_image_candidates(
    candidates: Iterable[ImageTriggerCandidate],
    images: np.ndarray,
    *,
    predict_proba: PredictProba,
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray | None = None,
    max_samples: int = 200,
    min_tried: int = MIN_TRIED,
    holdout: Any = None,
    random_state: int = 0,
) -> list[ImageTriggerCandidate]:
    """:func:`confirm_image_trigger` for each candidate; returns copies with ``confirmation`` set."""
    x = check_images(images, allow_empty=False)
    cands = list(candidates)
    pred = _check_predictions(predictions, predict_proba, x, len(x))
    held = holdout_set(holdout, predict_proba, kind="image", like=x)
    return [dataclasses.replace(c, confirmation=confirm_image_trigger(
        x, c, predict_proba=predict_proba, labels=labels, predictions=pred, max_samples=max_samples,
        min_tried=min_tried, holdout=held, random_state=random_state + k)) for k, c in enumerate(cands)]
