"""Trigger discovery over an investigation: :func:`find_triggers` gathers candidates (text n-grams, image groups
and shared marks), confirms them on the model and adds the confirmed ones to the suspicion as the ``trigger``
signal."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._validate import check_random_state
from ..data import Dataset
from ..errors import InputError
from ..signals import combine as _combine
from ..signals import marks
from ..signals.registry import score_column, score_columns, signals_tagged

if TYPE_CHECKING:
    from ..investigation import Investigation


def backdoor_suspicion(signals: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """The combined suspicion of the signals tagged ``backdoor`` present in a signals table (else its ``suspicion``):
    the signals a backdoor shows (confident, clustered, off the class's main direction, a shared mark). Text
    trigger discovery also looks among the samples these rank highest, where label noise in the overall suspicion
    cannot hide them."""
    present = {name: values for name, values in score_columns(signals).items() if name in signals_tagged("backdoor")}
    if not present:
        return signals["suspicion"].to_numpy()
    return _combine.combine(present, labels).suspicion


_VERDICT_RANK = {"confirmed": 0, "weak": 1}
#: Grey levels within which a shared mark's pixels count as the same, where the default tolerance finds no local
#: pattern: a mark is the same to the pixel, and an overlay of a few grey levels is within 16 of its background.
MARK_TOLERANCE = 1


def _is_torch_module(model: Any) -> bool:
    """Whether ``model`` is a torch module (a warp is optimized through it), without importing torch."""
    return any(f"{c.__module__}.{c.__qualname__}" == "torch.nn.modules.module.Module" for c in type(model).__mro__)


def _by_verdict(confirmations: list[Any]) -> list[int]:
    """Positions of the candidates, confirmed first, then weak, then the rest; each by the strength of its
    confirmation (:func:`forensics.triggers.confirmation_log10_p`), ties kept in discovery order."""
    from .findings import confirmation_log10_p

    def key(i: int) -> tuple[int, float, int]:
        c = confirmations[i]
        if c is None:
            return (3, 0.0, i)
        v = c["verdict"] if isinstance(c, pd.Series) else c.verdict
        return (_VERDICT_RANK.get(v, 2), -confirmation_log10_p(c), i)

    return sorted(range(len(confirmations)), key=key)


def _restates(candidate: Any, group: np.ndarray) -> bool:
    """Whether a local image candidate's carriers make up at least half of a group, or the group half of them."""
    if not candidate.local:
        return False
    carried = candidate.group[candidate.carriers]
    shared = int(group[carried].sum())
    return shared >= 0.5 * min(len(carried), int(group.sum()))


def _holds_pattern(candidate: Any, images: np.ndarray, rows: np.ndarray) -> bool:
    """Whether most of ``images[rows]`` carry a local image candidate's patch (where it sits, or anywhere for a
    moving one): a group of images a patch already explains."""
    from .image import search_image

    if not candidate.local:
        return False
    match = search_image(images[rows], candidate.pattern, box=None if candidate.moves else candidate.box,
                         moves=candidate.moves, tolerance=candidate.tolerance)
    return bool(np.mean(match >= 0.9) >= 0.5)


def _without_restatements(candidates: list[Any], images: np.ndarray) -> list[Any]:
    """The image candidates without the image-wide differences that restate a confirmed patch: a difference whose
    carriers mostly hold the patch is that patch seen through a group it only half explains (the half of the group
    that follows its mean is the patch's carriers, and their difference is the patch spread thin, which the model
    answers; on the bundled images it was confirmed beside the patch with 642 carriers)."""
    patches = [c for c in candidates if c.local and c.confirmation.verdict == "confirmed"]
    return [c for c in candidates if c.local or not any(
        _holds_pattern(patch, images, c.group[c.carriers]) for patch in patches)]


def _mark_groups(inv: Investigation) -> list[tuple[np.ndarray, float]]:
    """The shared marks of an investigation's images as (carrier mask, chance): read back from what
    :func:`investigate` kept (``samples["shared_mark"]`` and the signal's scores), else found anew."""
    ds = inv.dataset
    if "shared_mark" in inv.samples and score_column("shared_mark") in inv.signals:
        mark = inv.samples["shared_mark"].to_numpy()
        score = inv.signals[score_column("shared_mark")].to_numpy()
        return [(mark == m, float(10.0 ** -score[mark == m].max())) for m in np.unique(mark[mark >= 0])]
    if min(ds.images.shape[1:3]) < marks.WINDOW:
        return []
    found = marks.shared_marks(ds.images)
    mark = marks.mark_of(found, len(ds))
    return [(mark == m, float(c)) for m, c in enumerate(found["chance"])]


def find_triggers(
    inv: Investigation,
    model: Any = None,
    *,
    group_share: float = 0.05,
    min_group: int = 10,
    top_text: int = 10,
    holdout: Dataset | None = None,
    preprocess: Any = None,
    warps: bool = True,
    random_state: int | None = None,
) -> pd.DataFrame:
    """Discover trigger candidates in an investigation, confirm them on the model, and search for carriers.

    Text: n-grams over-represented among the most suspicious texts and tied to one predicted class. Images: for
    each class, the pattern its most suspicious members (the top ``group_share`` of the class by suspicion, at
    least ``min_group``) share and the rest of the class lacks (a fixed or moving patch), else, or also where the
    model does not answer the patch (a sinusoid's crest is a column every carrier shares), their image-wide difference
    from the images they look like (a blend, a sinusoid); the same for the images each class's fine detail
    sets apart (:func:`forensics.triggers.image.fine_detail_groups`: a blended pattern no signal sees, as in colour
    images) where no patch found already explains them; and every shared mark
    (:func:`forensics.signals.marks.shared_marks`) those groups do not already hold. An image-wide difference is read
    from the half of its group that follows the group's mean (a group is rarely pure), and one whose carriers mostly
    hold a confirmed patch is dropped: it is that patch again. Texts are searched three
    times, up to ``top_text`` candidates each: among the most suspicious samples overall, among those that look
    backdoored (:func:`backdoor_suspicion`, so that label noise cannot hide them), and by the class test alone (a
    trigger too rare for the signals to gather); the candidates are pooled. Every candidate is confirmed on ``model``
    (default ``inv.model``): removed from its carriers and added to clean samples of other classes, beside a
    random control. The table lists confirmed candidates first, strongest first, then weak ones, then the rest.
    ``holdout`` (a :class:`~forensics.Dataset` of held-out samples with the same classes, such as a validation
    split) is where the add test pastes candidates: the model has not memorized those samples' labels, so the
    rate says how well the trigger works on new inputs. ``preprocess`` turns a payload batch into the model's
    input (default: the one :func:`investigate` was given, else ``model.preprocess``, else for images
    :func:`~forensics.activations.default_image_preprocess`). With images, a torch model and a ``holdout``, and
    ``warps`` (the default), the smooth warp (WaNet) the model answers one class to is also searched
    (:func:`forensics.triggers.warp.find_warp`: a warp leaves nothing in the pixels to find; it is reconstructed on the
    model, per class, on the held-out images, and its carriers are the images of its class that look to the model like
    warped images of other classes); it costs a short optimization per class (30-50 s for ten classes and a small
    network on one CPU core). With such a model and holdout, a confirmed image-wide difference's carriers are also read
    in the model's features, not only in their pixels (:func:`forensics.triggers.probe_carriers`: the images of its
    class that look to the model like held-out images of other classes the difference turns). ``random_state`` seeds
    the controls and the sampling (default: the investigation's own seed, ``inv.params["random_state"]``).

    Sets ``inv.triggers`` (one row per candidate, with verdicts and carrier ids) and, when a candidate is
    confirmed, adds a ``trigger_score`` signal and recombines the suspicion: a sample that carries a confirmed
    trigger scores the strength of its confirmation (``-log10`` p, :func:`forensics.triggers.trigger_evidence`),
    every other sample 0. Returns the triggers table.
    """
    from .. import triggers as tr
    from ..models import predict_proba

    model = inv.model if model is None else model
    if model is None:
        raise InputError("find_triggers needs the model: pass model=, or set inv.model")
    random_state = check_random_state(inv.params.get("random_state", 0) if random_state is None else random_state)
    ds = inv.dataset
    preprocess = getattr(inv, "preprocess", None) if preprocess is None else preprocess
    predict = functools.partial(predict_proba, model, preprocess=preprocess)
    suspicion = inv.signals["suspicion"].to_numpy()
    if "prediction" in inv.samples:
        pred = inv.samples["prediction"].to_numpy()
    else:
        pred = predict(ds.images if ds.kind == "image" else list(ds.texts)).argmax(axis=1)
    found: list[Any] = []
    held = None
    probe_kw: dict[str, Any] = {}
    if holdout is not None:
        if not isinstance(holdout, Dataset) or holdout.kind != ds.kind:
            raise InputError(f"holdout must be a forensics.Dataset of {ds.kind}s (held-out samples); "
                             f"got {type(holdout).__name__}")
        if list(holdout.class_names) != list(ds.class_names):
            raise InputError(f"holdout has classes {list(holdout.class_names)} but the investigation has "
                             f"{list(ds.class_names)}")
        held = tr.holdout_set((holdout.images if ds.kind == "image" else list(holdout.texts), holdout.labels),
                              predict, kind=ds.kind, like=ds.images if ds.kind == "image" else None)
    if ds.kind == "text":
        texts = list(ds.texts)
        kw = dict(predictions=pred, labels=ds.labels, ids=ds.ids, sources=ds.sources, top=top_text)
        searched = [tr.text_trigger_candidates(texts, suspicion=s, **kw)
                    for s in (backdoor_suspicion(inv.signals, ds.labels), suspicion)]
        # A trigger on 1% of the texts may be too rare for any signal to gather; it still shows as an n-gram whose
        # carriers are all predicted as one class, and confirmation tells it from a genuine class phrase. Its
        # carriers are also all *labelled* as one class (the attacker's target, dirty or clean label), which
        # tells it apart where a weak model leaves a few of them unlearned while natural class words are
        # predicted purely: labels are noisier than predictions for every phrase but a planted one.
        top = tr.suspicious_set(suspicion, len(ds))
        by_class = [tr.text_trigger_candidates(texts, suspicion=None, **{**kw, "predictions": p})
                    for p in (pred, ds.labels)]
        for c in by_class:
            c["count_suspicious"] = [int(top[np.isin(ds.ids, ids)].sum()) for ids in c["carrier_ids"]]
            c["suspicious_share"] = c["count_suspicious"] / c["count"]
        # The first search that found an n-gram describes it (its suspicious counts are the telling ones).
        cands = pd.concat([*searched, *by_class]).drop_duplicates("ngram").reset_index(drop=True)
        if len(cands):
            confirmed = tr.confirm_text_candidates(cands, texts, predict_proba=predict, labels=ds.labels,
                                                   predictions=pred, holdout=held, random_state=random_state)
            ranked = confirmed.iloc[_by_verdict([row for _, row in confirmed.iterrows()])].reset_index(drop=True)
            found.append(tr.text.drop_restatements(ranked))
        search_kw = {"texts": texts}
    else:
        groups = []
        for c in range(len(ds.class_names)):
            rows = np.flatnonzero(ds.labels == c)
            k = max(min_group, int(round(group_share * len(rows))))
            if len(rows) < 2 * k:
                continue
            top = rows[np.argsort(-suspicion[rows], kind="stable")[:k]]
            group = np.zeros(len(ds), bool)
            group[top] = True
            groups.append(tr.image_trigger_candidate(ds.images, group, peers=tr.label_peers(ds.labels, group),
                                                     ids=ds.ids, labels=ds.labels, random_state=random_state))
        # A pattern blended into a share of a class is the main direction of its images' fine detail, even where
        # no signal sets the carriers apart (colour images, whose activations are ordered by colour first).
        chosen = [c.group for c in groups]
        for group in tr.fine_detail_groups(ds.images, ds.labels, group_share=group_share, min_group=min_group,
                                           random_state=random_state):
            rows = np.flatnonzero(group)
            if not any(np.isin(rows, g).mean() >= 0.5 for g in chosen) and not any(
                    _holds_pattern(c, ds.images, rows) for c in groups):
                chosen.append(rows)
                groups.append(tr.image_trigger_candidate(ds.images, group, peers=tr.label_peers(ds.labels, group),
                                                         ids=ds.ids, labels=ds.labels, random_state=random_state))
        # A patch the model does not answer may be the visible part of an image-wide trigger (a sinusoid's crest
        # is the same column in every carrier): such a group's image-wide difference is tried as well.
        searched = len(groups)
        # A patch pasted pixel for pixel into many images is a candidate even when the model barely learned it
        # (a clean-label patch): its carriers need not stand out to any other signal.
        for group, chance in _mark_groups(inv):
            if not any(_restates(c, group) for c in groups):
                cand = tr.image_trigger_candidate(ds.images, group, peers=tr.label_peers(ds.labels, group),
                                                  ids=ds.ids, labels=ds.labels, random_state=random_state)
                if not cand.local:
                    # A faint mark (an overlay a few grey levels bright) is within the default tolerance of the
                    # background it sits on; a mark is the same to the pixel, so its own tolerance is exact.
                    cand = tr.image_trigger_candidate(ds.images, group, peers=tr.label_peers(ds.labels, group),
                                                      ids=ds.ids, labels=ds.labels, tolerance=MARK_TOLERANCE,
                                                      random_state=random_state)
                groups.append(dataclasses.replace(cand, description=(
                    f"{cand.description}; a shared mark: the same to the pixel in {int(group.sum())} images, "
                    f"which chance would give {chance:.0e} times")))
        confirmed: list[Any] = tr.confirm_image_candidates(groups, ds.images, predict_proba=predict, labels=ds.labels,
                                                           predictions=pred, holdout=held, random_state=random_state)
        wide = []
        for c in confirmed[:searched]:
            if c.local and c.confirmation.verdict != "confirmed":
                group = np.zeros(len(ds), bool)
                group[c.group] = True
                wide.append(tr.image_trigger_candidate(ds.images, group, peers=tr.label_peers(ds.labels, group),
                                                       ids=ds.ids, labels=ds.labels, patches=False,
                                                       random_state=random_state))
        if wide:
            confirmed += tr.confirm_image_candidates(wide, ds.images, predict_proba=predict, labels=ds.labels,
                                                     predictions=pred, holdout=held,
                                                     random_state=random_state + len(confirmed))
        confirmed = _without_restatements(confirmed, ds.images)
        if holdout is not None and _is_torch_module(model):
            # The probes read the layer the investigation read, unless its features were given from elsewhere.
            layer, pooling = inv.params.get("layer"), inv.params.get("pooling")
            known = isinstance(layer, str) and layer != "given" and pooling in ("flatten", "avg", "max", "cls")
            probe_kw = dict(preprocess=preprocess, layer=layer if known else None,
                            pooling=pooling if known else "flatten", random_state=random_state)
        if warps and probe_kw and len(np.unique(holdout.labels)) >= 3:
            warp = tr.find_warp(model, ds.images, ds.labels, holdout.images, holdout.labels, **probe_kw)
            if warp is not None:
                confirmed.append(warp)
        found.extend(confirmed[i] for i in _by_verdict([c.confirmation for c in confirmed]))
        search_kw = {"images": ds.images}
    table = tr.triggers_table(found, ids=ds.ids)
    # A confirmed trigger's carriers are every sample that holds it, not only the group it was found in; searched
    # once, for the table and the trigger signal.
    evidence = tr.carrier_evidence(found, **search_kw) if (table["verdict"] == "confirmed").any() else []
    for i, item in enumerate(found if probe_kw and evidence else []):
        if evidence[i] is not None and isinstance(item, tr.ImageTriggerCandidate) and not item.local:
            # An image-wide difference is also read in the model's features, as a warp is: a carrier looks to the
            # model like held-out images of other classes that the difference turns (a low-frequency sinusoid
            # that the look-alikes' own shading half hides: 41% of its carriers at p <= 0.01 by their pixels).
            target = item.confirmation.target
            shifted = np.clip(np.rint(holdout.images[holdout.labels != target].astype(np.float32) + item.difference),
                              0, 255).astype(np.uint8)
            by_model, _ = tr.probe_carriers(model, ds.images, ds.labels, target, shifted,
                                            holdout.images[holdout.labels == target], **probe_kw)
            evidence[i] = np.maximum(evidence[i], by_model)
    carriers = tr.confirmed_carriers(found, evidence=evidence, **search_kw) if evidence else []
    for row, mask in zip(table.index, carriers):
        if mask is not None:
            table.at[row, "sample_ids"] = ds.ids[mask].tolist()
            table.at[row, "n_carriers"] = int(mask.sum())
    inv.triggers = table
    inv.trigger_arrays = tr.trigger_arrays(found)
    if carriers:
        scores = tr.trigger_evidence(found, evidence=evidence, labels=ds.labels, **search_kw)
        column = score_column("trigger")
        signals = inv.signals.drop(columns=["suspicion", "reasons"] + ([column] if column in inv.signals else []))
        signals[column] = scores
        present = score_columns(signals)
        combined = _combine.combine(present, ds.labels, n_classes=len(ds.class_names),
                                    null_scores={k: v for k, v in inv.null_scores.items() if k in present},
                                    label_null=inv.label_null)
        signals["suspicion"] = combined.suspicion
        signals["reasons"] = combined.reasons
        inv.replace_signals(signals)
    return table


__all__ = ["backdoor_suspicion", "find_triggers"]
