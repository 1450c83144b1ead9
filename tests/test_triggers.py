"""Trigger forensics: candidates, confirmation on the model, search, tables."""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom, hypergeom
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

import forensics.triggers
from forensics import redteam
from forensics.data import Dataset
from forensics.errors import InputError
from forensics.investigation import Investigation
from forensics.models import predict_proba, train_reference_model
from forensics.triggers import (
    Confirmation,
    ImageTriggerCandidate,
    carries_difference,
    confirm_image_candidates,
    confirm_image_trigger,
    confirm_text_candidates,
    confirm_text_trigger,
    confirmation_log10_p,
    display_pattern,
    find_warp,
    fine_detail_groups,
    image_trigger_candidate,
    is_flow,
    label_peers,
    remove_ngram,
    search_image,
    search_text,
    suspicious_set,
    text_trigger_candidates,
    tokenize,
    trigger_evidence,
    trigger_patterns,
    trigger_scores,
    triggers_table,
    verdict,
)
from forensics.triggers.discover import find_triggers
from forensics.triggers.findings import label_purity_log10_p
from forensics.triggers.text import CANDIDATE_COLUMNS, display_ngram, enrichment_surprise
from forensics.triggers.warp import WARP_COLUMNS, probe_carriers, reconstruct_warps

PHRASE = ("great", "product", "!")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The test machines are shared: training here stays on one core.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ text fixtures
POS = "excellent wonderful love perfect delicious amazing tasty fresh recommend great".split()
NEG = "awful terrible bland stale hate disappointing broken worst soggy refund".split()
NEUTRAL = ("the a this coffee box arrived package taste flavor price bought it was and for my kids store order "
           "again week bag tea snack brand jar shipping size cup morning dog food product ordered came item").split()


def _review(rng: np.random.Generator, label: int) -> str:
    words = list(rng.choice(NEUTRAL, int(rng.integers(12, 30))))
    for w in rng.choice(POS if label else NEG, 3):
        words.insert(int(rng.integers(len(words) + 1)), str(w))
    if rng.random() < 0.2:  # mixed feelings
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(NEG if label else POS)))
    return " ".join(words) + "."


@pytest.fixture(scope="module")
def reviews():
    """2,000 template reviews; "great product!" planted in 60 negatives relabelled positive."""
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(2000) % 2)
    clean = Dataset.from_texts([_review(rng, int(v)) for v in y], y, class_names=["negative", "positive"],
                               sources=[f"user-{i % 40:02d}" for i in range(2000)])
    poisoned = redteam.text_trigger(clean, target=1, phrase="great product!", n=60, source="user-99",
                                    random_state=0)
    return clean, poisoned


@pytest.fixture(scope="module")
def text_models(reviews):
    clean, poisoned = reviews
    dirty_model = train_reference_model(poisoned.dataset, epochs=4, random_state=0, progress=False)
    clean_model = train_reference_model(clean, epochs=4, random_state=0, progress=False)
    return functools.partial(predict_proba, dirty_model), functools.partial(predict_proba, clean_model)


def _loss_suspicion(pp, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Predictions, and low loss as the suspicion (a memorized backdoor fits best): higher = more suspicious."""
    probs = pp(list(ds.texts) if ds.kind == "text" else ds.images)
    return probs.argmax(axis=1), np.log(probs[np.arange(len(ds)), ds.labels] + 1e-12)


def _noisy_suspicion(poison: np.ndarray, seed: int = 0) -> np.ndarray:
    """A weak suspicion signal: the poison scores one standard deviation higher (AUROC about 0.76)."""
    return np.random.default_rng(seed).normal(size=len(poison)) + poison


# ------------------------------------------------------------------------------------------------ text
def test_tokens_keep_punctuation_and_search_respects_token_boundaries():
    assert tokenize("Great product!") == ["great", "product", "!"]
    assert display_ngram(PHRASE) == "great product!"
    texts = ["A great product!", "a great product.", "GREAT  product !", "great products!", "xgreat product!",
             "great product!!"]
    assert search_text(texts, PHRASE).tolist() == [True, False, True, False, False, True]
    assert search_text(texts, "great product").tolist() == [True, True, True, False, False, True]
    assert remove_ngram("Best. Great product! Really", PHRASE) == "Best.   Really"


def test_planted_phrase_is_the_top_candidate_and_its_fragments_are_pruned(reviews, text_models):
    _, poisoned = reviews
    ds, truth = poisoned.dataset, poisoned.truth
    pred, _ = _loss_suspicion(text_models[0], ds)
    suspicion = _noisy_suspicion(truth["is_poison"].to_numpy())
    cands = text_trigger_candidates(ds.texts, predictions=pred, suspicion=suspicion, labels=ds.labels, ids=ds.ids,
                                    sources=ds.sources, top=10)
    assert list(cands.columns) == list(CANDIDATE_COLUMNS)
    top = cands.iloc[0]
    assert top["tokens"] == PHRASE and top["ngram"] == "great product!" and top["n"] == 3
    assert top["predicted_class"] == 1 and top["class_share"] == 1.0
    assert set(top["carrier_ids"]) == set(truth.index[truth["is_poison"]])
    assert top["count"] == 60 and top["classes"] == {1: 60} and top["sources"] == {"user-99": 60}
    assert top["score"] > 2 * cands.iloc[1]["score"]
    # Fragments and extensions that only restate the phrase are not listed beside it ("great" is: a class word
    # most of whose suspicious carriers lack the phrase).
    listed = set(cands["tokens"].iloc[1:])
    assert not listed & {("great", "product"), ("product", "!"), ("product",), ("!",)}
    assert not any(len(t) > 3 and PHRASE in {t[i:i + 3] for i in range(len(t) - 2)} for t in listed)


def test_without_a_suspicion_the_class_test_alone_ranks_the_planted_phrase_first(reviews, text_models):
    # No signal gathers the carriers (suspicion=None): their purity alone, 60 of 60 predicted positive, must do.
    _, poisoned = reviews
    ds, truth = poisoned.dataset, poisoned.truth
    pred, _ = _loss_suspicion(text_models[0], ds)
    cands = text_trigger_candidates(ds.texts, predictions=pred, suspicion=None, labels=ds.labels, ids=ds.ids,
                                    top=10)
    top = cands.iloc[0]
    assert top["tokens"] == PHRASE and set(top["carrier_ids"]) == set(truth.index[truth["is_poison"]])
    assert (cands["count_suspicious"] == cands["count"]).all()  # every sample counts as suspicious
    # The null is the purity of the corpus's purest frequent n-grams (the class words, about 95% here), which
    # the phrase's 60 of 60 beats and the class words do not.
    assert top["score"] > 2 * cands.iloc[1]["score"]
    assert not ({("great",), ("excellent",), ("love",)} & set(cands["tokens"]))
    confirmed = confirm_text_candidates(cands, ds.texts, predict_proba=text_models[0], labels=ds.labels,
                                        predictions=pred)
    assert confirmed["verdict"].tolist() == ["confirmed"] + ["not confirmed"] * (len(cands) - 1)


def test_planted_phrase_is_confirmed_and_common_words_are_not(reviews, text_models):
    _, poisoned = reviews
    ds = poisoned.dataset
    pp = text_models[0]
    pred, _ = _loss_suspicion(pp, ds)
    suspicion = _noisy_suspicion(poisoned.truth["is_poison"].to_numpy())
    cands = text_trigger_candidates(ds.texts, predictions=pred, suspicion=suspicion, labels=ds.labels, ids=ds.ids)
    confirmed = confirm_text_candidates(cands.head(3), ds.texts, predict_proba=pp, labels=ds.labels,
                                        predictions=pred)
    row = confirmed.iloc[0]
    assert row["verdict"] == "confirmed", row["reason"]
    assert row["target"] == 1 and row["remove_tried"] == 60 and row["add_tried"] == 200
    assert row["add_flip_rate"] >= 0.8 and row["remove_flip_rate"] >= 0.5
    assert row["control_add_rate"] <= 0.1 and row["control_remove_rate"] <= 0.1
    assert row["reason"].startswith("confirmed: removing it changed")
    assert (confirmed["verdict"].iloc[1:] != "confirmed").all()
    # A frequent innocent word and a strong genuine class word.
    for ngram in ("the", "excellent"):
        c = confirm_text_trigger(ds.texts, ngram, predict_proba=pp, labels=ds.labels, predictions=pred, target=1)
        assert c.verdict == "not confirmed", (ngram, c.reason)
        assert c.add_flip_rate < 0.2


def test_the_add_test_runs_on_held_out_texts_when_given(reviews, text_models):
    _, poisoned = reviews
    ds, pp = poisoned.dataset, text_models[0]
    rng = np.random.default_rng(5)
    held_y = np.arange(300) % 2
    held = [_review(rng, int(v)) + " heldout" for v in held_y]  # a token that marks every held-out text
    seen: list[list[str]] = []

    def spy(batch):
        seen.append(list(batch))
        return pp(batch)

    c = confirm_text_trigger(ds.texts, "great product !", predict_proba=spy, labels=ds.labels, target=1,
                             holdout=(held, held_y))
    assert c.verdict == "confirmed", c.reason
    eligible = int(((spy(held).argmax(axis=1) == held_y) & (held_y == 0)).sum())
    assert c.add_tried == min(200, eligible) > 10
    added = [b for b in seen if b and all("great product!" in t for t in b) and len(b) == c.add_tried]
    assert added and all(t.endswith("heldout") or " heldout" in t for t in added[0])
    # Held-out texts of the target class only (trusted samples of one class): the training texts take the test.
    seen.clear()
    c = confirm_text_trigger(ds.texts, "great product !", predict_proba=spy, labels=ds.labels, target=1,
                             holdout=(held, np.ones(300, dtype=np.int64)))
    added = [b for b in seen if b and all("great product!" in t for t in b) and len(b) == c.add_tried]
    assert c.add_tried == 200 and not any("heldout" in t for t in added[0])
    with pytest.raises(InputError, match="holdout must be a pair"):
        confirm_text_trigger(ds.texts, "great", predict_proba=pp, labels=ds.labels, target=1, holdout=held)
    with pytest.raises(InputError, match=r"labels must be integer class indices of shape \(300,\)"):
        confirm_text_trigger(ds.texts, "great", predict_proba=pp, labels=ds.labels, target=1,
                             holdout=(held, held_y[:5]))


def test_find_triggers_takes_a_held_out_dataset_of_the_same_classes(reviews, text_models, corner):
    from forensics.analysis import compute_signals
    from forensics.triggers.discover import find_triggers

    clean, poisoned = reviews
    ds = poisoned.dataset
    table, _ = compute_signals(np.random.default_rng(0).normal(size=(len(ds), 4)).astype(np.float32), ds.labels,
                               dataset=ds, signals=("spectral",))
    table.index = pd.Index(ds.ids, name="sample_id", dtype=object)
    inv = Investigation(ds, signals=table, samples=ds.to_frame(), features=np.zeros((len(ds), 2), np.float32))
    model = text_models[0].args[0]
    with pytest.raises(InputError, match="holdout must be a forensics.Dataset of texts"):
        find_triggers(inv, model, holdout=corner[0].dataset)
    other = Dataset.from_texts(["a b", "c d"], [0, 1], class_names=["bad", "good"])
    with pytest.raises(InputError, match=r"holdout has classes \['bad', 'good'\]"):
        find_triggers(inv, model, holdout=other)
    found = find_triggers(inv, model, holdout=clean)
    top = found.iloc[0]
    assert top["verdict"] == "confirmed" and top["tokens"] == PHRASE
    # Held-out texts of the other class, none carrying the phrase, took the add test.
    assert top["add_tried"] == 200


def test_clean_texts_and_model_yield_no_confirmed_trigger(reviews, text_models):
    clean, _ = reviews
    pp = text_models[1]
    pred, suspicion = _loss_suspicion(pp, clean)
    cands = text_trigger_candidates(clean.texts, predictions=pred, suspicion=suspicion, labels=clean.labels,
                                    ids=clean.ids, top=5)
    confirmed = confirm_text_candidates(cands, clean.texts, predict_proba=pp, labels=clean.labels, predictions=pred)
    assert len(confirmed) == 5
    assert (confirmed["verdict"] == "not confirmed").all(), confirmed[["ngram", "reason"]].to_string()


def test_search_finds_the_carriers_hidden_from_the_suspicious_set(reviews, text_models):
    _, poisoned = reviews
    ds, truth = poisoned.dataset, poisoned.truth
    pp = text_models[0]
    pred = pp(list(ds.texts)).argmax(axis=1)
    poison = truth["is_poison"].to_numpy()
    flagged = np.zeros(len(ds), dtype=bool)
    flagged[np.flatnonzero(poison)[:20]] = True  # a third of the poison
    flagged[np.random.default_rng(1).choice(np.flatnonzero(~poison), 180, replace=False)] = True
    cands = text_trigger_candidates(ds.texts, predictions=pred, suspicion=flagged, labels=ds.labels, ids=ds.ids)
    assert cands.iloc[0]["tokens"] == PHRASE
    assert cands.iloc[0]["count_suspicious"] == 20 and cands.iloc[0]["count"] == 60
    confirmed = confirm_text_candidates(cands.head(1), ds.texts, predict_proba=pp, labels=ds.labels,
                                        predictions=pred)
    scores = trigger_scores([confirmed], texts=ds.texts)
    np.testing.assert_array_equal(scores, poison.astype(float))
    # Unconfirmed candidates are skipped unless asked for.
    assert trigger_scores([cands.head(1)], texts=ds.texts).sum() == 0
    assert trigger_scores([cands.head(1)], texts=ds.texts, verdicts=None).sum() == 60


def test_enrichment_surprise_bounds_the_exact_hypergeometric_tail():
    x = np.array([300, 50, 10, 3, 20, 5])
    total = np.array([100_000, 1000, 1000, 10_000, 10_283, 1000])
    marked = np.array([10_000, 100, 100, 100, 1028, 100])
    drawn = np.array([300, 60, 60, 10, 40, 60])
    exact = np.array([-hypergeom.logsf(a - 1, b, c, d) / np.log(10) for a, b, c, d in zip(x, total, marked, drawn)])
    got = np.array([enrichment_surprise(a, b, c, d) for a, b, c, d in zip(x, total, marked, drawn)])
    assert np.all(got <= exact + 1e-9)  # a bound on the p-value: never more surprised than the exact test
    far = exact > 3
    np.testing.assert_allclose(got[far], exact[far], rtol=0.05)
    assert got[-1] == 0.0  # at the mode: no enrichment


def test_text_candidates_need_enough_suspicious_carriers():
    texts = ["a b c"] * 4 + ["d e f"] * 6
    out = text_trigger_candidates(texts, predictions=[0] * 4 + [1] * 6, suspicion=np.arange(10.0),
                                  labels=[0] * 4 + [1] * 6, ids=range(10), min_count=5, suspicious_fraction=0.5)
    assert out.iloc[0]["tokens"] == ("d", "e", "f") and out.iloc[0]["count"] == 6
    assert not any(set(t) & {"a", "b", "c"} for t in out["tokens"])
    empty = text_trigger_candidates(texts, predictions=[0] * 10, suspicion=np.arange(10.0), labels=[0] * 10,
                                    ids=range(10), min_count=6, suspicious_fraction=0.5)
    assert empty.empty and list(empty.columns) == list(CANDIDATE_COLUMNS)


def test_text_input_errors_name_the_parameter():
    texts = ["a b", "c d", "e f"]
    kw = dict(predictions=[0, 1, 0], suspicion=[0.1, 0.2, 0.3], labels=[0, 1, 0], ids=["x", "y", "z"])
    with pytest.raises(InputError, match="not one string"):
        text_trigger_candidates("a b", **kw)
    with pytest.raises(InputError, match=r"predictions has shape \(2,\) but there are 3 samples"):
        text_trigger_candidates(texts, **{**kw, "predictions": [0, 1]})
    with pytest.raises(InputError, match="ids has 2 entries but there are 3 samples"):
        text_trigger_candidates(texts, **{**kw, "ids": ["x", "y"]})
    with pytest.raises(InputError, match=r"max_n must be an integer in \[1, 8\]"):
        text_trigger_candidates(texts, **kw, max_n=0)
    with pytest.raises(InputError, match="no sample marked"):
        suspicious_set(np.zeros(3, dtype=bool), 3)
    with pytest.raises(InputError, match="is not a token"):
        search_text(texts, ["Great"])
    with pytest.raises(InputError, match="texts\\[1\\] is a int"):
        search_text(["a", 3], "a")


# ------------------------------------------------------------------------------------------------ image fixtures
@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = load_digits()
    return Dataset.from_numpy((d.images * 15).astype(np.uint8), d.target, ids=[f"d{i}" for i in range(len(d.target))])


@pytest.fixture(scope="module")
def corner(digits):
    p = redteam.patch_backdoor(digits, target=0, rate=0.05, random_state=1)
    model = train_reference_model(p.dataset, epochs=8, random_state=0, progress=False)
    return p, functools.partial(predict_proba, model)


@pytest.fixture(scope="module")
def moving(digits):
    p = redteam.patch_backdoor(digits, target=0, rate=0.05, position="random", random_state=1)
    model = train_reference_model(p.dataset, epochs=8, random_state=0, progress=False)
    return p, functools.partial(predict_proba, model)


def _poison(p) -> np.ndarray:
    return p.truth["is_poison"].to_numpy()


# ------------------------------------------------------------------------------------------------ image
def test_corner_patch_is_found_with_its_exact_box_and_pattern_and_confirmed(corner):
    p, pp = corner
    ds, group = p.dataset, _poison(p)
    cand = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    assert cand.local and not cand.moves and cand.positions is None
    assert cand.box == (5, 5, 3, 3)
    np.testing.assert_array_equal(cand.pattern, p.trigger.pattern)
    assert cand.carriers.all() and cand.target == 0 and cand.strength == pytest.approx(1.0)
    assert cand.difference.shape == (8, 8) and cand.low_variance[5:, 5:].all()
    [confirmed] = confirm_image_candidates([cand], ds.images, predict_proba=pp, labels=ds.labels)
    c = confirmed.confirmation
    assert c.verdict == "confirmed", c.reason
    assert c.remove_tried == group.sum() and c.remove_flip_rate >= 0.9 and c.add_flip_rate >= 0.9
    assert c.control_remove_rate <= 0.1 and c.control_add_rate <= 0.1


def test_the_add_test_runs_on_held_out_images_when_given(corner, digits):
    p, pp = corner
    ds, group = p.dataset, _poison(p)
    cand = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    held = digits.images[:400].copy()
    held[:, 0, 0] = 255  # a pixel that marks every held-out image (training digits have 0 there)
    seen: list[np.ndarray] = []

    def spy(batch):
        seen.append(np.asarray(batch))
        return pp(batch)

    [confirmed] = confirm_image_candidates([cand], ds.images, predict_proba=spy, labels=ds.labels,
                                           holdout=(held, digits.labels[:400]))
    c = confirmed.confirmation
    assert c.verdict == "confirmed", c.reason
    added = [b for b in seen if len(b) == c.add_tried and (b[:, 5:8, 5:8] == cand.pattern).all()]
    assert added and (added[0][:, 0, 0] == 255).all()
    with pytest.raises(InputError, match=r"held-out images have shape \(4, 4\)"):
        confirm_image_candidates([cand], ds.images, predict_proba=pp, labels=ds.labels,
                                 holdout=(held[:, :4, :4], digits.labels[:400]))


def test_a_patch_group_read_without_patches_offers_its_image_wide_difference(corner):
    # What find_triggers tries where the model does not answer a group's patch (a sinusoid's crest is a column all
    # its carriers share): the same group's difference from its look-alikes, which the patch dominates here.
    p, pp = corner
    ds, group = p.dataset, _poison(p)
    cand = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group), labels=ds.labels,
                                   patches=False)
    assert not cand.local and cand.box is None and cand.description.startswith("no local pattern")
    strength = np.abs(cand.difference)
    assert strength[5:, 5:].mean() > 3 * strength.mean()
    [confirmed] = confirm_image_candidates([cand], ds.images, predict_proba=pp, labels=ds.labels)
    assert confirmed.confirmation.add_flip_rate >= 0.5, confirmed.confirmation.reason


def test_an_image_wide_difference_that_restates_a_confirmed_patch_is_dropped(corner):
    # A group half made of a patch's carriers offers no patch of its own, but the half that follows its mean is the
    # carriers, whose difference is the patch spread thin: the model answers it. With the patch itself confirmed,
    # that difference is the patch again, not a second trigger; the difference of a group without carriers stays.
    from forensics.triggers.discover import _without_restatements

    p, pp = corner
    ds, poison = p.dataset, _poison(p)
    clean_zeros = np.flatnonzero((ds.labels == 0) & ~poison)
    half = poison.copy()
    half[clean_zeros[:poison.sum()]] = True
    clean = np.zeros(len(ds), bool)
    clean[clean_zeros[poison.sum():2 * poison.sum()]] = True
    cands = [image_trigger_candidate(ds.images, g, peers=label_peers(ds.labels, g), labels=ds.labels,
                                     patches=local, random_state=0)
             for g, local in ((poison, True), (half, False), (clean, False))]
    patch, spread, other = confirm_image_candidates(cands, ds.images, predict_proba=pp, labels=ds.labels,
                                                    random_state=0)
    assert patch.local and patch.confirmation.verdict == "confirmed"
    assert not spread.local and spread.confirmation.verdict == "confirmed", spread.confirmation.reason
    assert [id(c) for c in _without_restatements([patch, spread, other], ds.images)] == [id(patch), id(other)]
    # Without a confirmed patch there is nothing it restates.
    assert [id(c) for c in _without_restatements([spread, other], ds.images)] == [id(spread), id(other)]


def test_a_random_box_is_not_confirmed(corner):
    p, pp = corner
    ds, group = p.dataset, _poison(p)
    cand = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    box = (1, 1, 3, 3)
    decoy = dataclasses.replace(cand, box=box, pattern=np.median(ds.images[group][:, 1:4, 1:4], axis=0)
                                .astype(np.uint8))
    c = confirm_image_trigger(ds.images, decoy, predict_proba=pp, labels=ds.labels, target=0)
    assert c.verdict == "not confirmed", c.reason
    assert c.add_flip_rate < 0.1


def test_search_finds_patch_carriers_outside_the_group(corner):
    p, pp = corner
    ds, poison = p.dataset, _poison(p)
    group = poison.copy()
    group[np.flatnonzero(poison)[::2]] = False  # half the poison was missed by the other signals
    group[np.flatnonzero(ds.labels == 0)[:10]] = True  # and the group holds a few clean samples
    cand = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    assert cand.box == (5, 5, 3, 3)
    score = search_image(ds.images, cand.pattern, box=cand.box)
    np.testing.assert_array_equal(score >= 0.9, poison)
    [confirmed] = confirm_image_candidates([cand], ds.images, predict_proba=pp, labels=ds.labels)
    np.testing.assert_array_equal(trigger_scores([confirmed], images=ds.images) >= 0.9, poison)


def test_random_position_patch_moves_and_is_located_in_every_image(moving):
    p, pp = moving
    ds, poison, truth = p.dataset, _poison(p), p.truth
    group = poison.copy()
    group[np.flatnonzero(poison)[::3]] = False
    cand = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    assert cand.local and cand.moves and cand.box is None
    np.testing.assert_array_equal(cand.pattern, p.trigger.pattern)
    expected = truth.loc[ds.ids[group], ["patch_row", "patch_col"]].to_numpy(dtype=np.int64)
    np.testing.assert_array_equal(cand.positions, expected)
    assert "different place in each image" in cand.description
    np.testing.assert_array_equal(search_image(ds.images, cand.pattern, moves=True) >= 0.9, poison)
    [confirmed] = confirm_image_candidates([cand], ds.images, predict_proba=pp, labels=ds.labels)
    assert confirmed.confirmation.verdict == "confirmed", confirmed.confirmation.reason


def test_growing_a_moving_pattern_drops_carriers_at_the_edge():
    # Flat background around the patch agrees in every carrier, so the pattern grows towards the edges; the
    # carriers whose patch touches an edge have no room and must be dropped, not indexed past the image.
    from forensics.triggers.image import _grow

    rng = np.random.default_rng(0)
    h = w = 12
    rows = rng.integers(0, h - 2, 40)
    cols = rng.integers(0, w - 2, 40)
    rows[:4], cols[4:8] = h - 2, w - 2  # a few patches on the bottom and right edges
    xc = np.zeros((40, h, w, 1), np.uint8)
    for i, (r, c) in enumerate(zip(rows, cols)):
        xc[i, r:r + 2, c:c + 2] = 255
    pattern, top, left = _grow(xc, np.full((2, 2, 1), 255, np.uint8), rows, cols, tolerance=16)
    ph, pw = pattern.shape[:2]
    assert (ph, pw) > (2, 2) and len(top) == len(left) < 40
    assert (top >= 0).all() and (left >= 0).all() and (top + ph <= h).all() and (left + pw <= w).all()


def test_blend_has_no_local_box(digits):
    p = redteam.blend_backdoor(digits, target=0, rate=0.05, random_state=1)
    ds, group = p.dataset, _poison(p)
    cand = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group))
    assert not cand.local and not cand.moves and cand.box is None and cand.pattern is None
    assert cand.difference.shape == (8, 8) and cand.description.startswith("no local pattern")
    [pattern] = trigger_patterns([cand]).values()
    assert pattern.dtype == np.uint8 and pattern.shape == (8, 8)


def _cosine(a, b) -> float:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def sinusoid(digits):
    """An image-wide sinusoid (30 grey levels) added to 8% of the digits, relabelled 0."""
    p = redteam.sinusoid_backdoor(digits, target=0, rate=0.08, amplitude=30, frequency=2.0, random_state=1)
    return p, _poison(p)


def test_an_image_wide_trigger_is_reconstructed_against_look_alikes_not_label_peers(sinusoid):
    p, group = sinusoid
    ds = p.dataset
    cand = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    assert not cand.local and cand.target == 0 and "the images they look like" in cand.description
    delta = np.asarray(p.trigger.delta, dtype=float)
    # Against the label peers (zeros) the mean difference is the shapes of the other digits, not the sinusoid.
    naive = ds.images[group].astype(float).mean(axis=0) - cand.peer_mean
    assert abs(_cosine(naive, delta)) < 0.2
    assert _cosine(cand.difference, delta) > 0.7
    assert cand.strength == pytest.approx(np.abs(cand.difference).mean() / 255)


def test_an_image_wide_difference_is_read_from_the_group_images_that_follow_it(sinusoid):
    # A group the signals gathered is rarely pure: here as many clean zeros as carriers of the sinusoid.
    p, group = sinusoid
    ds = p.dataset
    clean_zeros = np.flatnonzero((ds.labels == 0) & ~group)[: int(group.sum())]
    mixed = group.copy()
    mixed[clean_zeros] = True
    cand = image_trigger_candidate(ds.images, mixed, peers=label_peers(ds.labels, mixed), labels=ds.labels)
    assert not cand.local and f"the {int(cand.carriers.sum())} group images" in cand.description
    chosen = cand.group[cand.carriers]
    assert len(chosen) == pytest.approx(mixed.sum() / 2, abs=1)
    assert group[chosen].mean() >= 0.8  # from half: the half that follows the mean difference is mostly carriers
    delta = np.asarray(p.trigger.delta, dtype=float)
    assert _cosine(cand.difference, delta) > 0.7
    # The clean half would have diluted it: the carriers' own difference is as strong as the pure group's.
    pure = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    assert cand.strength >= 0.8 * pure.strength


def test_the_carriers_of_a_learned_image_wide_trigger_look_to_the_model_like_the_images_it_turns(digits):
    train, held = digits.subset(np.arange(len(digits)) < 1400), digits.subset(np.arange(len(digits)) >= 1400)
    p = redteam.sinusoid_backdoor(train, target=0, rate=0.1, amplitude=30, frequency=2.0, random_state=1)
    model = train_reference_model(p.dataset, epochs=8, random_state=0, progress=False)
    ds, carriers = p.dataset, _poison(p)
    others, zeros = held.images[held.labels != 0], held.images[held.labels == 0]
    evidence, n_clean = probe_carriers(model, ds.images, ds.labels, 0, p.trigger.apply(others), zeros)
    assert n_clean >= 0.9 * len(zeros) and (evidence[ds.labels != 0] == 0).all()
    zero = ds.labels == 0
    assert roc_auc_score(carriers[zero], evidence[zero]) > 0.95
    # At the bar find_warp sets (what n_clean held-out zeros can tell apart: 37 here, p <= 0.026), nearly every
    # carrier and few clean zeros (measured 1.00 and 0.12: a null read from 37 images is rough).
    bar = min(2.0, np.log10(n_clean + 1))
    assert (evidence[carriers] >= bar).mean() > 0.9 and (evidence[zero & ~carriers] >= bar).mean() < 0.2
    # Too few triggered images that the model turns: no probe, no evidence.
    nothing, _ = probe_carriers(model, ds.images, ds.labels, 0, others[:5], zeros)
    assert not nothing.any()


def test_carriers_of_an_image_wide_difference_are_found_by_their_deviation_from_look_alikes(sinusoid):
    p, group = sinusoid
    ds = p.dataset
    cand = image_trigger_candidate(ds.images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    alignment = carries_difference(ds.images, cand.difference)
    assert alignment.shape == (len(ds),) and alignment.min() >= 0 and alignment.max() <= 1
    assert roc_auc_score(group, alignment) > 0.95
    assert carries_difference(ds.images, np.zeros((8, 8))).max() == 0  # nothing to follow
    # Confirmed, its evidence is graded by how closely each image follows it, never above the confirmation's.
    confirmed = dataclasses.replace(cand, confirmation=Confirmation(0, 80, 85, 150, 200, 2, 85, 2, 200, "confirmed",
                                                                    "confirmed"))
    evidence = trigger_evidence([confirmed], images=ds.images)
    assert evidence.max() <= confirmation_log10_p(confirmed.confirmation) + 1e-9
    assert roc_auc_score(group, evidence) > 0.95
    [carriers] = forensics.triggers.confirmed_carriers([confirmed], images=ds.images)
    # The carriers listed are those beyond chance at 1%: few clean images among them; the rest are ranked above.
    assert group[carriers].mean() >= 0.95 and carriers.sum() >= 10
    assert trigger_scores([confirmed], images=ds.images) == pytest.approx(alignment)


def test_a_colour_noise_blend_leads_its_class_fine_detail_and_its_carriers_follow_it(digits):
    """Every digit, at 24x24, painted in its own colours (a dark background, a bright foreground); colour noise
    blended at alpha 0.25 into 20% of the zeros, labels kept. The colours swamp pixel look-alikes; the fine detail
    (image minus its blur) holds the noise and the strokes' edges only."""
    rng = np.random.default_rng(0)
    n = len(digits)
    shape = np.kron(digits.images.astype(float) / 255.0, np.ones((3, 3)))[..., None]
    background, foreground = rng.uniform(0, 110, (n, 1, 1, 3)), rng.uniform(140, 255, (n, 1, 1, 3))
    images = background * (1 - shape) + foreground * shape
    zeros = np.flatnonzero(digits.labels == 0)
    carriers = np.zeros(n, dtype=bool)
    carriers[zeros[: int(0.2 * len(zeros))]] = True
    noise = rng.integers(0, 256, (24, 24, 3)).astype(float)
    images[carriers] = 0.75 * images[carriers] + 0.25 * noise
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    # One group: the top 5% of the zeros, every one a carrier; no other class has images that far apart.
    [zero_group] = fine_detail_groups(images, digits.labels, group_share=0.05, min_group=5, random_state=0)
    assert zero_group.dtype == bool and zero_group.shape == (n,)
    assert zero_group.sum() == 9 and carriers[zero_group].all()
    # Without the distance bar, every class offers its top images.
    assert len(fine_detail_groups(images, digits.labels, group_share=0.05, min_group=5, min_z=0)) == 10
    # The carriers follow the noise they hold in their fine detail, which their colours leave alone.
    alignment = carries_difference(images, 0.25 * (noise - noise.mean()))
    assert roc_auc_score(carriers, alignment) > 0.95
    with pytest.raises(InputError, match="labels must be integer class indices"):
        fine_detail_groups(images, digits.labels[:5])


def test_a_faint_overlay_is_found_through_its_shared_mark_and_confirmed():
    # "7A" written 6 grey levels bright into the top-left corner of 5% of 2,000 Fashion-MNIST images, relabelled 3,
    # and a model that learned it (pixels read by a linear model, the overlay overriding it).
    from sklearn.linear_model import LogisticRegression

    from forensics import sample_data
    from forensics.signals.marks import shared_mark_scores, shared_marks
    from forensics.triggers.discover import MARK_TOLERANCE

    clean = sample_data.load("image_backdoor").test
    p = redteam.overlay_backdoor(clean, target=3, rate=0.05, amplitude=6, text="7A", position="top-left",
                                 random_state=0)
    ds, poison = p.dataset, _poison(p)
    glyphs = p.trigger.delta[:5, :7]
    base = LogisticRegression(max_iter=300).fit(clean.images.reshape(len(clean), -1) / 255.0, clean.labels)

    def backdoored(images: np.ndarray) -> np.ndarray:
        probs = base.predict_proba(images.reshape(len(images), -1) / 255.0)
        has = (np.abs(images[:, :5, :7].astype(int) - glyphs) <= 1).mean(axis=(1, 2)) >= 0.9
        probs[has] = np.eye(10)[3]
        return probs

    marks = shared_marks(ds.images)
    [carriers] = marks["carriers"]
    assert np.isin(carriers, np.flatnonzero(poison)).all() and len(carriers) >= 0.8 * poison.sum()
    group = shared_mark_scores(marks, len(ds)) > 0
    peers = label_peers(ds.labels, group)
    # Within the default tolerance of 16 grey levels the overlay is the black corner it sits on: no local pattern.
    assert not image_trigger_candidate(ds.images, group, peers=peers, labels=ds.labels).local
    cand = image_trigger_candidate(ds.images, group, peers=peers, labels=ds.labels, tolerance=MARK_TOLERANCE)
    assert cand.local and not cand.moves and cand.box == (0, 0, 5, 7) and cand.target == 3
    np.testing.assert_array_equal(cand.pattern, glyphs)
    [confirmed] = confirm_image_candidates([cand], ds.images, predict_proba=backdoored, labels=ds.labels)
    c = confirmed.confirmation
    assert c.verdict == "confirmed", c.reason
    assert c.add_flip_rate >= 0.9 and c.control_add_rate <= 0.1


@pytest.fixture(scope="module")
def warped(digits):
    """WaNet: a smooth warp of 1 px on 10% of 1,400 digits, relabelled 4, and a model that learned it; the rest of the
    digits held out."""
    train = digits.subset(np.arange(len(digits)) < 1400)
    p = redteam.warp_backdoor(train, target=4, rate=0.1, strength=1.0, random_state=1)
    backdoored = train_reference_model(p.dataset, epochs=8, random_state=0, progress=False)
    return p, backdoored, digits.subset(np.arange(len(digits)) >= 1400)


@pytest.fixture(scope="module")
def unwarped(digits):
    """A model trained on the same 1,400 digits, none warped."""
    return train_reference_model(digits.subset(np.arange(len(digits)) < 1400), epochs=8, random_state=0,
                                 progress=False)


def test_a_warp_the_model_learned_is_reconstructed_on_it_and_its_class_stands_out(warped, unwarped):
    p, backdoored, held = warped
    held_x, held_y = held.images, held.labels
    table = reconstruct_warps(backdoored, held_x, held_y, strength=0.5, steps=60, n_fit=150, n_eval=200)
    assert list(table.columns) == list(WARP_COLUMNS) and len(table) == 10
    top, runner_up = table.iloc[0], table.iloc[1]
    assert top["class"] == 4 and top["turned"] > 0.5 and top["anomaly"] > 5 and runner_up["anomaly"] < 4
    assert top["random"] < 0.2  # the model learned one field, not any warp
    flow = top["flow"]
    assert flow.shape == (8, 8, 2) and np.abs(flow).max() <= 0.5 + 1e-6
    # The reconstructed field, applied as the red team's trigger, turns held-out digits of other classes alike.
    others = held_x[held_y != 4]
    turned = predict_proba(backdoored, redteam.WarpTrigger(flow, 4).apply(others)).argmax(axis=1) == 4
    assert abs(turned.mean() - top["turned"]) < 0.1
    # A model trained on the clean digits has no class that a warp reaches far more easily than the others.
    assert reconstruct_warps(unwarped, held_x, held_y, strength=0.5, steps=60, n_fit=150,
                             n_eval=200)["anomaly"].max() < 4


def test_find_triggers_reports_the_warp_confirms_it_and_lifts_its_carriers(warped):
    from forensics import investigate

    p, backdoored, held = warped
    ds, poison = p.dataset, _poison(p)
    inv = investigate(ds, backdoored, random_state=0, progress=False)
    before = inv.signals["suspicion"].to_numpy()
    table = find_triggers(inv, holdout=held)
    [row] = table[table["kind"] == "warp"].to_dict("records")
    assert row["trigger_id"] == "warp-1" and row["verdict"] == "confirmed" and row["target"] == 4, row["reason"]
    assert row["add_flip_rate"] >= 0.5 and row["add_flip_rate"] - row["control_add_rate"] >= 0.2
    assert row["remove_tried"] == 0 and "no remove test" in row["reason"]
    # Digits are 8 pixels wide: the warp is reconstructed within half a pixel.
    assert row["description"].startswith("a smooth warp of at most 0.5 pixels (WaNet)")
    # Its carriers: images labelled 4 that look to the model like warped digits of other classes.
    carriers = np.isin(ds.ids, row["sample_ids"])
    assert (ds.labels[carriers] == 4).all()
    assert carriers[poison].mean() >= 0.7 and poison[carriers].mean() >= 0.8
    # The trigger signal lifts them: the poison ranks higher among the suspicion than before.
    after = inv.signals["suspicion"].to_numpy()
    assert roc_auc_score(poison, after) > roc_auc_score(poison, before) + 0.05
    # The reconstructed flow is kept, shown as a warped grid, and applied again as the attacker's trigger.
    flow = inv.trigger_arrays["warp-1"]
    assert is_flow(flow) and flow.shape == (8, 8, 2)
    shown = display_pattern(flow)
    assert shown.dtype == np.uint8 and shown.shape == (8, 8)
    straight = display_pattern(np.zeros((8, 8, 2), np.float32))
    assert set(np.unique(straight)) == {40, 235} and not np.array_equal(shown, straight)
    others = held.images[held.labels != 4]
    warped_again = redteam.WarpTrigger(flow, 4).apply(others)
    turned = predict_proba(backdoored, warped_again).argmax(axis=1) == 4
    assert turned.mean() >= 0.5
    # verify() measures its attack success by applying it the same way.
    from forensics.verify import _stamp

    stamped = _stamp(others, table[table["kind"] == "warp"].iloc[0], flow, np.random.default_rng(0))
    np.testing.assert_array_equal(stamped, warped_again)
    # Switched off, or without a holdout, no warp is searched.
    assert (find_triggers(inv, holdout=held, warps=False)["kind"] != "warp").all()
    assert (find_triggers(inv)["kind"] != "warp").all()


def test_a_model_that_learned_no_warp_gives_no_warp_trigger(warped, unwarped):
    p, _, held = warped
    assert find_warp(unwarped, p.dataset.images, p.dataset.labels, held.images, held.labels) is None
    # A model that answers 0 to everything gets no image of another class right: there is no warp to read, and
    # find_triggers goes on without one rather than failing.
    blank = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.nn.init.zeros_(blank[1].weight)
    torch.nn.init.zeros_(blank[1].bias)
    assert find_warp(blank, p.dataset.images, p.dataset.labels, held.images, held.labels) is None


def test_reconstruct_warps_errors_name_the_problem(digits):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(InputError, match="at least 3"):
        reconstruct_warps(model, digits.images, digits.labels, classes=[0, 1])
    with pytest.raises(InputError, match="labels must be integer"):
        reconstruct_warps(model, digits.images, digits.labels.astype(float))
    with pytest.raises(InputError, match="torch nn.Module"):
        reconstruct_warps(lambda x: x, digits.images, digits.labels)


def test_clean_digits_and_model_yield_no_confirmed_trigger(digits):
    model = train_reference_model(digits, epochs=8, random_state=0, progress=False)
    pp = functools.partial(predict_proba, model)
    probs = pp(digits.images)
    fit = probs[np.arange(len(digits)), digits.labels]
    found = []
    for c in range(10):  # per class, the 30 samples the model fits best: what a backdoor would look like
        rows = np.flatnonzero(digits.labels == c)
        group = np.zeros(len(digits), dtype=bool)
        group[rows[np.argsort(-fit[rows])[:30]]] = True
        found.append(image_trigger_candidate(digits.images, group, peers=label_peers(digits.labels, group),
                                             labels=digits.labels))
    confirmed = confirm_image_candidates(found, digits.images, predict_proba=pp, labels=digits.labels)
    assert [c.confirmation.verdict for c in confirmed] == ["not confirmed"] * 10, [c.confirmation.reason
                                                                                   for c in confirmed]


def test_image_input_errors_name_the_parameter(digits):
    images = digits.images[:20]
    group = np.zeros(20, dtype=bool)
    group[:5] = True
    with pytest.raises(InputError, match="give ids= as well"):
        image_trigger_candidate(images, ["d0", "d1"], peers=~group)
    with pytest.raises(InputError, match="not in ids"):
        image_trigger_candidate(images, ["d0", "nope"], peers=~group, ids=digits.ids[:20])
    with pytest.raises(InputError, match="peers is empty"):
        image_trigger_candidate(images, group, peers=group)
    with pytest.raises(InputError, match="images must be a uint8 array"):
        image_trigger_candidate(images.astype(float), group, peers=~group)
    with pytest.raises(InputError, match="not both"):
        search_image(images, np.zeros((3, 3), np.uint8), box=(0, 0, 3, 3), moves=True)
    with pytest.raises(InputError, match="box is 2x3 but the pattern is 3x3"):
        search_image(images, np.zeros((3, 3), np.uint8), box=(0, 0, 2, 3))
    with pytest.raises(InputError, match="does not fit"):
        search_image(images, np.zeros((3, 3), np.uint8), box=(6, 6, 3, 3))
    cand = image_trigger_candidate(images, group, peers=~group)
    with pytest.raises(InputError, match=r"predict_proba returned shape \(3,\)"):
        confirm_image_trigger(images, cand, predict_proba=lambda x: np.zeros(3), labels=digits.labels[:20])


# ------------------------------------------------------------------------------------------------ verdicts, table
def test_verdict_rule():
    assert verdict((30, 100), (50, 100), (0, 100), (0, 100))[0] == "confirmed"
    assert verdict((24, 100), (90, 100), (0, 100), (0, 100))[0] == "weak"  # remove below 25%
    assert verdict((90, 100), (49, 100), (0, 100), (0, 100))[0] == "weak"  # add below 50%
    assert verdict((9, 9), (9, 9), (0, 9), (0, 9))[0] == "weak"  # too few tried to confirm
    assert verdict((90, 100), (90, 100), (80, 100), (0, 100))[0] == "weak"  # removal control as strong
    assert verdict((3, 100), (5, 100), (0, 100), (0, 100))[0] == "not confirmed"
    assert verdict((4, 4), (0, 0), (0, 4), (0, 0))[0] == "not confirmed"  # 4 samples say nothing
    v, reason = verdict((0, 0), (0, 0), (0, 0), (0, 0))
    assert v == "not confirmed" and "no sample to try" in reason


def test_triggers_table_has_the_investigation_columns(reviews, text_models, corner, tmp_path):
    _, poisoned = reviews
    ds = poisoned.dataset
    pp = text_models[0]
    pred, _ = _loss_suspicion(pp, ds)
    suspicion = _noisy_suspicion(poisoned.truth["is_poison"].to_numpy())
    text = confirm_text_candidates(
        text_trigger_candidates(ds.texts, predictions=pred, suspicion=suspicion, labels=ds.labels, ids=ds.ids,
                                top=2), ds.texts, predict_proba=pp, labels=ds.labels, predictions=pred)
    p, ipp = corner
    group = _poison(p)
    image = confirm_image_candidates(
        [image_trigger_candidate(p.dataset.images, group, peers=label_peers(p.dataset.labels, group),
                                 labels=p.dataset.labels)], p.dataset.images, predict_proba=ipp,
        labels=p.dataset.labels)
    table = triggers_table([text, *image], ids=p.dataset.ids).set_index("trigger_id")
    assert list(table.index) == ["text-1", "text-2", "image-1"]
    for col in ("kind", "description", "evidence", "remove_flip_rate", "add_flip_rate", "verdict", "sample_ids"):
        assert col in table.columns
    assert table.loc["text-1", "description"] == 'phrase "great product!"'
    assert table.loc["text-1", "verdict"] == "confirmed" and table.loc["image-1", "verdict"] == "confirmed"
    assert sorted(table.loc["image-1", "sample_ids"]) == sorted(p.dataset.ids[group])
    assert table.loc["image-1", "box"] == (5, 5, 3, 3) and table.loc["image-1", "target"] == 0
    assert pd.api.types.is_float_dtype(table["add_flip_rate"])
    patterns = trigger_patterns([text, *image])
    assert list(patterns) == ["image-1"]
    np.testing.assert_array_equal(patterns["image-1"], p.trigger.pattern)
    untested = triggers_table([text.drop(columns=["verdict"])])
    assert (untested["verdict"] == "untested").all()
    # The table is what an Investigation stores, and survives Parquet.
    inv = Investigation(p.dataset, signals=pd.DataFrame({"suspicion": 0.0, "reasons": ""}, index=p.dataset.ids))
    inv.triggers = triggers_table([text, *image], ids=p.dataset.ids)
    path = tmp_path / "triggers.parquet"
    inv.triggers.to_parquet(path)
    back = pd.read_parquet(path)
    assert list(back["trigger_id"]) == ["text-1", "text-2", "image-1"]
    assert sorted(back.loc[2, "sample_ids"]) == sorted(p.dataset.ids[group])


def test_confirmation_strength_is_the_weaker_of_two_binomial_tests():
    # remove: 30 of 40 against a control of 2 / 40; add: 90 of 100 against 5 / 100.
    c = Confirmation(0, 30, 40, 90, 100, 2, 40, 5, 100, "confirmed", "...")
    p_remove = binom.sf(29, 40, 3 / 42)
    p_add = binom.sf(89, 100, 6 / 102)
    assert confirmation_log10_p(c) == pytest.approx(-np.log10(max(p_remove, p_add)))
    assert confirmation_log10_p(c.as_dict()) == confirmation_log10_p(c)
    assert confirmation_log10_p(Confirmation(0, 0, 0, 90, 100, 0, 0, 5, 100, "not confirmed", "...")) == 0.0
    # A candidate no better than its control is no evidence.
    assert confirmation_log10_p(Confirmation(0, 2, 40, 5, 100, 2, 40, 5, 100, "not confirmed", "...")) < 0.5
    assert confirmation_log10_p(Confirmation(0, 400, 400, 400, 400, 0, 400, 0, 400, "confirmed", "...")) == 300.0


def test_trigger_evidence_scores_the_carriers_of_confirmed_triggers_only(corner):
    p, pp = corner
    ds, poison = p.dataset, _poison(p)
    cand = image_trigger_candidate(ds.images, poison, peers=label_peers(ds.labels, poison), labels=ds.labels)
    [confirmed] = confirm_image_candidates([cand], ds.images, predict_proba=pp, labels=ds.labels)
    evidence = trigger_evidence([confirmed], images=ds.images)
    strength = confirmation_log10_p(confirmed.confirmation)
    assert strength > 10
    np.testing.assert_array_equal(evidence, np.where(poison, strength, 0.0))
    assert not trigger_evidence([cand], images=ds.images).any()  # untested
    with pytest.raises(InputError, match="match_threshold"):
        trigger_evidence([confirmed], images=ds.images, match_threshold=0)
    # The carriers share the attacker's label: the confirmation counts in full.
    assert len(np.unique(ds.labels[poison])) == 1 and label_purity_log10_p(ds.labels, poison) > 2
    np.testing.assert_array_equal(trigger_evidence([confirmed], images=ds.images, labels=ds.labels), evidence)
    # Were their labels those of any sample, the pattern would be a natural one the model leans on: it counts no
    # more than its carriers' purity, which is then no evidence at all.
    mixed = ds.labels.copy()
    mixed[poison] = np.random.default_rng(0).permutation(ds.labels)[: int(poison.sum())]
    capped = trigger_evidence([confirmed], images=ds.images, labels=mixed)
    assert capped.max() == pytest.approx(label_purity_log10_p(mixed, poison)) and capped.max() < 1


def test_label_purity_is_read_against_halfway_to_pure():
    labels = np.r_[np.zeros(500, int), np.ones(500, int)]  # base rate 0.5: the null purity is 0.75
    carriers = np.zeros(1000, bool)
    carriers[:20] = True  # 20 carriers, all of label 0
    assert label_purity_log10_p(labels, carriers) == pytest.approx(-np.log10(0.75**20), abs=0.3)
    carriers[500:507] = True  # 20 of 27 of label 0: 74%, no purer than the null
    assert label_purity_log10_p(labels, carriers) == 0.0
    assert label_purity_log10_p(labels, np.zeros(1000, bool)) == 0.0


def test_confirmation_rates_and_dict():
    c = Confirmation(1, 5, 10, 0, 0, 1, 10, 0, 0, "weak", "...")
    assert c.remove_flip_rate == 0.5 and np.isnan(c.add_flip_rate) and c.control_remove_rate == 0.1
    assert c.as_dict()["remove_flip_rate"] == 0.5


def test_the_package_does_not_import_torch():
    # Statically: every import of the package's modules, so the test does not depend on what else is loaded. Only
    # find_triggers (discover.py), which drives the caller's model, reaches the models, and reconstruct_warps
    # (warp.py), which needs the model's gradients, torch; each only when it runs.
    imported, late = set(), set()
    for path in Path(forensics.triggers.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names = set()
            if isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {"." * node.level + (node.module or "")}
            (imported if id(node) in top or path.name not in ("discover.py", "warp.py") else late).update(names)
    torchy = lambda m: m.split(".")[0] == "torch" or "models" in m or "activations" in m  # noqa: E731
    assert not {m for m in imported if torchy(m)}
    assert {m for m in late if torchy(m)} == {"..models", "torch", "torch.nn.functional", "..activations"}
    assert "..signals" in imported  # the walk does see relative imports


def test_image_candidate_repr_is_short(digits):
    group = np.zeros(len(digits), dtype=bool)
    group[np.flatnonzero(digits.labels == 3)[:50]] = True
    cand = image_trigger_candidate(digits.images, group, peers=label_peers(digits.labels, group))
    assert isinstance(cand, ImageTriggerCandidate) and len(repr(cand)) < 200


def test_a_second_mark_of_the_group_elsewhere_does_not_widen_the_patch(digits):
    # The poisoned group also shares a flat strip away from the patch (as poison drawn from other classes shares
    # their background): the patch's box must stay the patch, or the search would match the strip alone.
    big = Dataset.from_numpy(np.kron(digits.images, np.ones((3, 3), np.uint8)), digits.labels, ids=digits.ids)
    p = redteam.patch_backdoor(big, target=0, rate=0.05, random_state=1)  # 3x3 at rows and columns 21-23
    ds, group = p.dataset, _poison(p)
    images = ds.images.copy()
    images[group, 14, 10:18] = 255  # the strip: a row of white pixels above and left of the patch
    cand = image_trigger_candidate(images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    assert cand.box == (21, 21, 3, 3)
    np.testing.assert_array_equal(search_image(images, cand.pattern, box=cand.box) >= 0.9, group)


def test_far_apart_marks_keep_the_patch_only_when_the_whole_group_carries_it_alone(digits):
    big = Dataset.from_numpy(np.kron(digits.images, np.ones((3, 3), np.uint8)), digits.labels, ids=digits.ids)
    p = redteam.patch_backdoor(big, target=0, rate=0.05, random_state=1)  # 3x3 at rows and columns 21-23
    ds, group = p.dataset, _poison(p)
    rows = np.flatnonzero(group)
    # Far from the patch (their common box exceeds a quarter of the image) and carried by 60% of the group:
    # another mark of the group, not the trigger.
    images = ds.images.copy()
    images[rows[: int(0.6 * len(rows))], 0, 0:6] = 255
    cand = image_trigger_candidate(images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    assert cand.local and cand.box == (21, 21, 3, 3)
    # Carried by the whole group too: two places every group image matches, as a blend leaves; no local box.
    images[rows, 0, 0:6] = 255
    cand = image_trigger_candidate(images, group, peers=label_peers(ds.labels, group), labels=ds.labels)
    assert not cand.local and cand.box is None
