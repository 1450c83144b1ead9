"""The findings of trigger discovery as tables and scores: one row per candidate (:func:`triggers_table`), the
reconstructed patterns, the strength of each confirmation, and each sample's trigger evidence."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._validate import check_images
from ..errors import InputError
from .confirm import CONFIRMATION_COLUMNS, Confirmation
from .image import ImageTriggerCandidate, carries_difference, search_image
from .text import _check_texts, search_text
from .warp import WarpTriggerCandidate

#: An image carries a confirmed image-wide difference when its alignment with it (:func:`carries_difference`)
#: would be reached by at most this share of the images by chance (a tail fitted to the bulk of the alignments).
DIFFERENCE_P = 0.01


def _items(found: Iterable[Any]) -> list[tuple[str, Any]]:
    """(kind, item) pairs: rows of confirmed text tables, image candidates, and warps."""
    if isinstance(found, (pd.DataFrame, ImageTriggerCandidate, WarpTriggerCandidate)):
        found = [found]
    out: list[tuple[str, Any]] = []
    for f in found:
        if isinstance(f, pd.DataFrame):
            if "tokens" not in f.columns:
                raise InputError("a text candidate table needs a 'tokens' column (from text_trigger_candidates)")
            out.extend(("text", row) for _, row in f.iterrows())
        elif isinstance(f, ImageTriggerCandidate):
            out.append(("image", f))
        elif isinstance(f, WarpTriggerCandidate):
            out.append(("warp", f))
        else:
            raise InputError(f"expected text candidate tables (DataFrame), ImageTriggerCandidate or "
                             f"WarpTriggerCandidate objects; got {type(f).__name__}")
    return out


def _ids(kind_items: list[tuple[str, Any]]) -> list[str]:
    counts = {"text": 0, "image": 0, "warp": 0}
    out = []
    for kind, _ in kind_items:
        counts[kind] += 1
        out.append(f"{kind}-{counts[kind]}")
    return out


TABLE_COLUMNS = (
    "trigger_id", "kind", "description", "evidence", "remove_flip_rate", "add_flip_rate", "verdict", "sample_ids",
    "target", "n_carriers", "remove_changed", "remove_tried", "add_flipped", "add_tried", "control_remove_rate",
    "control_add_rate", "reason", "tokens", "box", "moves", "local",
)


def triggers_table(found: Iterable[Any], *, ids: Sequence[Any] | np.ndarray | None = None) -> pd.DataFrame:
    """One row per trigger candidate, with its evidence and its confirmation.

    Parameters
    ----------
    found : iterable of DataFrame, ImageTriggerCandidate and WarpTriggerCandidate
        Text tables from :func:`confirm_text_candidates` (or unconfirmed ones from
        :func:`text_trigger_candidates`), image candidates (confirmed by :func:`confirm_image_candidates`
        or not) and warps (:func:`find_warp`).
    ids : sequence, optional
        Sample ids of the images the image candidates were found in, to report their carriers by id
        (without them, image carriers are row positions as strings).

    Returns
    -------
    DataFrame, one row per candidate in the order given, with columns
        ``trigger_id`` ("text-1", "image-1", "warp-1", ...: the keys of :func:`trigger_patterns`), ``kind``
        ("text"/"image"/"warp"), ``description``, ``evidence``, ``remove_flip_rate``, ``add_flip_rate``,
        ``verdict`` ("confirmed", "weak", "not confirmed", or "untested"), ``sample_ids`` (the carriers' ids),
        ``target``, ``n_carriers``, the counts behind the rates and the control rates, ``reason``, and
        ``tokens`` (text), ``box``, ``moves``, ``local`` (image). Patterns are in :func:`trigger_patterns`.
    """
    items = _items(found)
    id_arr = None if ids is None else np.asarray(ids, dtype=object).astype(str)
    rows = []
    for (kind, item), tid in zip(items, _ids(items)):
        if kind == "text":
            conf = {c: item.get(c) for c in CONFIRMATION_COLUMNS} if "verdict" in item.index else {}
            carriers = list(item["carrier_ids"])
            row = {
                "trigger_id": tid, "kind": "text",
                "description": f'phrase "{item["ngram"]}"',
                "evidence": (f'{item["count"]} texts carry it, {item["count_suspicious"]} of them among the most '
                             f'suspicious ({100 * item["suspicious_share"]:.0f}%); '
                             f'{100 * item["class_share"]:.0f}% predicted as class {item["predicted_class"]}'
                             + (f'; top sources {item["sources"]}' if item["sources"] else "")),
                "sample_ids": carriers, "n_carriers": len(carriers), "tokens": tuple(item["tokens"]),
                "box": None, "moves": None, "local": None, "target": item["predicted_class"],
            }
        elif kind == "warp":
            conf = item.confirmation.as_dict()
            carriers = (list(id_arr[item.carriers]) if id_arr is not None
                        else [str(g) for g in np.flatnonzero(item.carriers)])
            row = {
                "trigger_id": tid, "kind": "warp", "description": item.description,
                "evidence": (f"{len(carriers)} images labelled {item.target} look, to the model, like warped images "
                             f"of other classes rather than like its clean held-out images of the class "
                             f"(p <= {10 ** -item.threshold:.2g})"),
                "sample_ids": carriers, "n_carriers": len(carriers), "tokens": None, "box": None, "moves": None,
                "local": False, "target": item.target,
            }
        else:
            c = item.confirmation
            conf = c.as_dict() if c is not None else {}
            group = item.group[item.carriers]
            carriers = list(id_arr[group]) if id_arr is not None else [str(g) for g in group]
            row = {
                "trigger_id": tid, "kind": "image", "description": item.description,
                "evidence": (f"{int(item.carriers.sum())} of {len(item.group)} group images carry it; "
                             f"strength {item.strength:.2f} (group share minus reference share)" if item.local
                             else f"image-wide difference, mean {255 * item.strength:.1f} grey levels"),
                "sample_ids": carriers, "n_carriers": len(carriers), "tokens": None, "box": item.box,
                "moves": item.moves, "local": item.local, "target": item.target,
            }
        row.update({k: conf.get(k) for k in ("remove_flip_rate", "add_flip_rate", "remove_changed", "remove_tried",
                                             "add_flipped", "add_tried", "control_remove_rate",
                                             "control_add_rate", "reason")})
        if conf.get("target") is not None:
            row["target"] = conf["target"]
        row["verdict"] = conf.get("verdict") or "untested"
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for c in ("remove_flip_rate", "add_flip_rate", "control_remove_rate", "control_add_rate"):
        table[c] = pd.to_numeric(table[c]).astype(float)
    return table


def trigger_arrays(found: Iterable[Any]) -> dict[str, np.ndarray]:
    """What each image candidate does to an image, keyed by the ``trigger_id`` of :func:`triggers_table` (same order
    of ``found``): the reconstructed patch (uint8) of a local candidate, the signed image-wide difference (float32,
    grey levels) of one that is not local, the flow (float32, shape (h, w, 2), pixels) of a warp. Text candidates have
    none. What an investigation stores (``inv.trigger_arrays``), to show and to apply the triggers again."""
    items = _items(found)
    out = {}
    for (kind, item), tid in zip(items, _ids(items)):
        if kind == "image":
            out[tid] = np.asarray(item.pattern) if item.local else np.asarray(item.difference, dtype=np.float32)
        elif kind == "warp":
            out[tid] = np.asarray(item.flow, dtype=np.float32)
    return out


#: Pixels between the lines of the grid a warp is shown on, and the largest offset it is magnified to.
_GRID_STEP, _SHOWN_OFFSET = 4, 2.0


def is_flow(array: np.ndarray) -> bool:
    """Whether a trigger array is a warp's flow (float, shape (h, w, 2)) rather than a patch or a difference."""
    a = np.asarray(array)
    return a.dtype != np.uint8 and a.ndim == 3 and a.shape[2] == 2


def display_pattern(array: np.ndarray) -> np.ndarray:
    """A trigger array as a uint8 image: a patch as it is; a signed difference mapped to 0..255, 128 = none; a warp's
    flow as a grid of dark lines every 4 pixels warped by it, its offsets magnified to at most 2 pixels (a warp of
    less than a pixel would not show)."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if is_flow(a):
        from scipy import ndimage

        h, w = a.shape[:2]
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grid = np.where((rows % _GRID_STEP == _GRID_STEP // 2) | (cols % _GRID_STEP == _GRID_STEP // 2), 40.0, 235.0)
        flow = a.astype(np.float64) * (_SHOWN_OFFSET / max(float(np.abs(a).max()), 1e-6))
        warped = ndimage.map_coordinates(grid, [rows + flow[..., 0], cols + flow[..., 1]], order=1, mode="nearest")
        return np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    d = a.astype(np.float32)
    scale = max(float(np.abs(d).max()), 1e-6)
    return np.clip(np.rint(128 + 127 * d / scale), 0, 255).astype(np.uint8)


def trigger_patterns(found: Iterable[Any]) -> dict[str, np.ndarray]:
    """Small uint8 images keyed by the ``trigger_id`` of :func:`triggers_table` (same order of ``found``):
    the reconstructed patch of a local image candidate, or its mean difference image mapped to 0..255
    (128 = no difference) when it is not local (:func:`display_pattern` of :func:`trigger_arrays`). Text candidates
    have none."""
    return {tid: display_pattern(a) for tid, a in trigger_arrays(found).items()}


def confirmation_log10_p(confirmation: Confirmation | Mapping[str, Any]) -> float:
    """Strength of a confirmation: ``-log10`` of the p-value that the candidate is no more than its control.

    Each test is a one-sided binomial test of its count against its control's rate (Laplace-smoothed,
    ``(k + 1) / (n + 2)``, so that a control that changed nothing is not taken as impossible); a trigger must pass
    both, so the p-value is the larger of the two (an intersection-union test). Capped at 300 (``1e-300``).

    Parameters
    ----------
    confirmation : Confirmation, or a mapping with its count fields (a row of a confirmed candidates table)

    Returns
    -------
    float >= 0; 0 when a test was not tried.
    """
    c = confirmation.as_dict() if isinstance(confirmation, Confirmation) else confirmation
    if int(c["remove_tried"]) == 0 or int(c["add_tried"]) == 0:
        return 0.0
    return min(binomial_log10_p(int(c["remove_changed"]), int(c["remove_tried"]), int(c["control_remove_changed"]),
                                int(c["control_remove_tried"])),
               binomial_log10_p(int(c["add_flipped"]), int(c["add_tried"]), int(c["control_add_flipped"]),
                                int(c["control_add_tried"])))


def binomial_log10_p(changed: int, tried: int, control_changed: int, control_tried: int) -> float:
    """``-log10`` of the one-sided binomial p-value of ``changed / tried`` against the control's Laplace-smoothed
    rate ``(control_changed + 1) / (control_tried + 2)``, capped at 300; 0 when nothing was tried."""
    if tried == 0:
        return 0.0
    rate = (control_changed + 1) / (control_tried + 2)
    return float(min(300.0, -np.log10(max(float(stats.binom.sf(changed - 1, tried, rate)), 1e-300))))


def carrier_evidence(
    found: Iterable[Any],
    *,
    texts: Sequence[str] | None = None,
    images: np.ndarray | None = None,
    match_threshold: float = 0.9,
) -> list[np.ndarray | None]:
    """For each candidate, in order: when it is confirmed, how surely each sample of the whole dataset carries it,
    as ``-log10`` of a p-value (shape (n,)); else None. A phrase, or a patch matched on at least ``match_threshold``
    of its pixels (at its place, or anywhere for a moving one), is carried for sure (+inf) or not at all (0); an
    image-wide difference is carried by degree: how rarely an image's deviation from its look-alikes follows it this
    closely among all the images (:func:`~forensics.triggers.image.carries_difference`). Computed once and shared by
    :func:`confirmed_carriers` and :func:`trigger_evidence` (``evidence=``)."""
    if not 0 < match_threshold <= 1:
        raise InputError(f"match_threshold must be in (0, 1]; got {match_threshold!r}")
    out: list[np.ndarray | None] = []
    for kind, item in _items(found):
        if _verdict(kind, item) != "confirmed":
            out.append(None)
        elif kind == "warp":  # read on the model when it was found
            out.append(np.asarray(item.evidence, dtype=np.float64))
        elif kind == "image" and not item.local:
            out.append(_alignment_log10_p(_carries(kind, item, texts, images)))
        else:
            out.append(np.where(_carries(kind, item, texts, images) >= match_threshold, np.inf, 0.0))
    return out


def trigger_evidence(
    found: Iterable[Any],
    *,
    texts: Sequence[str] | None = None,
    images: np.ndarray | None = None,
    match_threshold: float = 0.9,
    evidence: list[np.ndarray | None] | None = None,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Per-sample evidence of carrying a **confirmed** trigger: **higher = more suspicious**.

    A sample that carries a confirmed candidate (the n-gram, or at least ``match_threshold`` of the patch's pixels
    at its place) scores the candidate's :func:`confirmation_log10_p`, the strongest when it carries several;
    every other sample scores 0. An image-wide difference is carried by degree, by every image: the weaker of the
    two pieces of evidence (the trigger is real, this image follows it). The score is a ``-log10`` p-value from the
    model's own ablation tests, not a rank among the data, which is how
    :func:`forensics.signals.combine.combine` reads its ``trigger`` signal.

    Parameters
    ----------
    found, texts, images
        As for :func:`trigger_scores`.
    match_threshold : float in (0, 1]
        Share of an image patch's pixels a sample must match to carry it.
    evidence : list, optional
        :func:`carrier_evidence` of ``found`` when the caller has it already (the search is not run again).
    labels : array of int, shape (n,), optional
        The training labels. A planted trigger's carriers share one label (the attacker's target, relabelled or
        not); a natural phrase the model leans on ("still", "entertaining" in reviews) is confirmed by a weak
        model as readily, but its carriers keep both labels. With labels, a phrase or a patch whose carriers' labels
        are not purer than halfway between their main label's base rate and one at the ``PURITY_P`` level
        (:func:`label_purity_log10_p`, the test the phrase search uses) counts no more than that purity's own
        evidence; one whose carriers are that pure counts its confirmation in full.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    items = _items(found)
    out = np.zeros(_n_scored(texts, images))
    carried = evidence if evidence is not None else carrier_evidence(found, texts=texts, images=images,
                                                                     match_threshold=match_threshold)
    if len(carried) != len(items):
        raise InputError(f"evidence has {len(carried)} entries but there are {len(items)} candidates")
    for (kind, item), e in zip(items, carried):
        if e is not None:
            strength = candidate_log10_p(kind, item)
            if labels is not None and (kind == "text" or kind == "image" and item.local):
                purity = label_purity_log10_p(labels, e > 0)
                if purity < -np.log10(PURITY_P):
                    strength = min(strength, purity)
            out = np.maximum(out, np.minimum(strength, e))
    return out


#: The label-purity test a confirmed phrase's or patch's carriers must pass for its confirmation to count in full.
PURITY_P = 0.01


def label_purity_log10_p(labels: np.ndarray, carriers: np.ndarray) -> float:
    """``-log10`` of how rarely ``carriers`` (a mask) would hold this many of their main label if each were that
    label only halfway between its base rate and always (:data:`~forensics.triggers.text.CLASS_PURITY_FLOOR`);
    0 for no carrier."""
    from .text import CLASS_PURITY_FLOOR, enrichment_surprise

    labels = np.asarray(labels)
    drawn = int(carriers.sum())
    if not drawn:
        return 0.0
    counts = np.bincount(labels[carriers])
    main = int(counts.argmax())
    n = len(labels)
    size = int((labels == main).sum())
    halfway = np.ceil(size + CLASS_PURITY_FLOOR * (n - size))
    return float(enrichment_surprise(counts[main], n, halfway, drawn))


def confirmed_carriers(
    found: Iterable[Any],
    *,
    texts: Sequence[str] | None = None,
    images: np.ndarray | None = None,
    match_threshold: float = 0.9,
    evidence: list[np.ndarray | None] | None = None,
) -> list[np.ndarray | None]:
    """For each candidate, in order: which samples of the whole dataset carry it when it is confirmed (a boolean
    mask of shape (n,)), else None. A confirmed patch found from a group of the most suspicious images is searched
    in every image, so its carriers are all that hold it, not only the group's; an image-wide difference is carried
    by the images whose deviation from their look-alikes follows it more closely than chance would make all but
    ``DIFFERENCE_P`` of the images (:func:`carrier_evidence`, which ``evidence=`` passes when already computed); a
    warp by the images of its class whose evidence reaches its ``threshold``."""
    carried = evidence if evidence is not None else carrier_evidence(found, texts=texts, images=images,
                                                                     match_threshold=match_threshold)
    return [None if e is None else item.carriers if kind == "warp" else e >= -np.log10(DIFFERENCE_P)
            for (kind, item), e in zip(_items(found), carried)]


def _alignment_log10_p(alignment: np.ndarray) -> np.ndarray:
    """-log10 of how rarely an image aligns this well with an image-wide difference by chance: the tail of the
    alignments over all images, fitted to their bulk (most images carry nothing), as the combination fits a
    signal's null (:func:`forensics.signals.combine.tail_probability`)."""
    from ..signals.combine import tail_probability

    return np.clip(-np.log10(tail_probability(alignment, max_gain=float(len(alignment)))), 0.0, 300.0)


def trigger_scores(
    found: Iterable[Any],
    *,
    texts: Sequence[str] | None = None,
    images: np.ndarray | None = None,
    verdicts: Sequence[str] = ("confirmed",),
) -> np.ndarray:
    """Per-sample trigger signal: **higher = more suspicious**.

    For each candidate whose verdict is in ``verdicts`` (all candidates with ``verdicts=None``), a sample scores
    1.0 when it carries the n-gram (text), or the share of the patch's pixels it matches (image, in [0, 1]);
    the signal is the maximum over the candidates, 0.0 where none applies. For an image candidate without a local
    pattern (a blend, a sinusoid) the score is how closely the image's deviation from its look-alikes follows the
    candidate's image-wide difference (:func:`~forensics.triggers.image.carries_difference`, in [0, 1]); for a warp,
    one minus the p-value of the image's carrier evidence (:class:`~forensics.triggers.warp.WarpTriggerCandidate`).

    Parameters
    ----------
    found : iterable of DataFrame and ImageTriggerCandidate
        As for :func:`triggers_table`.
    texts : sequence of str, optional
        Needed when text candidates are given; the samples to score.
    images : ndarray of uint8, optional
        Needed when image candidates are given; the samples to score.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    items = _items(found)
    out = np.zeros(_n_scored(texts, images))
    for kind, item in items:
        if verdicts is None or _verdict(kind, item) in verdicts:
            out = np.maximum(out, _carries(kind, item, texts, images))
    return out


def _n_scored(texts: Sequence[str] | None, images: np.ndarray | None) -> int:
    if texts is None and images is None:
        raise InputError("give texts= or images= (the samples to score)")
    if texts is not None and images is not None:
        raise InputError("give texts= or images=, not both: one dataset is scored at a time")
    return len(_check_texts(texts)) if texts is not None else len(check_images(images, allow_empty=False))


def candidate_log10_p(kind: str, item: Any) -> float:
    """The strength of a candidate's confirmation: :func:`confirmation_log10_p`, or a warp's add test alone."""
    if kind == "warp":
        return float(item.add_log10_p)
    return confirmation_log10_p(item if kind == "text" else item.confirmation)


def _verdict(kind: str, item: Any) -> str:
    if kind == "text":
        return item.get("verdict", "untested")
    return item.confirmation.verdict if item.confirmation is not None else "untested"


def _carries(kind: str, item: Any, texts: Sequence[str] | None, images: np.ndarray | None) -> np.ndarray:
    """How much each sample carries one candidate: 1/0 for an n-gram, the matched share of a patch's pixels."""
    if kind == "text":
        if texts is None:
            raise InputError("a text candidate needs texts= to be searched")
        return search_text(texts, tuple(item["tokens"])).astype(float)
    if images is None:
        raise InputError("an image candidate needs images= to be searched")
    if kind == "warp":  # one minus the p-value of its carrier evidence, read on the model when it was found
        return 1.0 - 10.0 ** -np.asarray(item.evidence, dtype=np.float64)
    if not item.local:  # an image-wide difference: how closely each image's deviation from its look-alikes follows it
        return carries_difference(images, item.difference)
    return search_image(images, item.pattern, box=None if item.moves else item.box, moves=item.moves,
                        tolerance=item.tolerance)
