"""Poison generators: exact counts, exact pixels and texts, ground truth, determinism and chaining."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from forensics.data import Dataset
from forensics.errors import InputError
from forensics.redteam import (
    AdditiveTrigger,
    BlendTrigger,
    PatchTrigger,
    TextTrigger,
    WarpTrigger,
    apply_trigger,
    blend_backdoor,
    bot_source,
    clean_label_patch,
    merge_truth,
    overlay_backdoor,
    pair_flips,
    patch_backdoor,
    poisoned_ids,
    random_label_flips,
    sinusoid_backdoor,
    sybil_sources,
    text_mask,
    text_trigger,
    trigger_from_dict,
    triggered_test_set,
    warp_backdoor,
    warp_field,
)

CHECKER3 = np.array([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=np.uint8)
# Class sizes of sklearn's digits, 0..9.
DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = load_digits()
    images = np.rint(d.images * 255 / 16).astype(np.uint8)
    return Dataset.from_numpy(images, d.target, ids=[f"d{i:04d}" for i in range(len(images))],
                              sources=[f"ann-{i % 4}" for i in range(len(images))])


@pytest.fixture(scope="module")
def reviews() -> Dataset:
    # 300 single-spaced texts in 3 classes (neg, neutral, pos); 10 neg texts already hold the phrase.
    subjects = ["the battery", "this charger", "the screen", "my order", "the case", "this cable"]
    neg = ["broke after a week", "stopped working fast", "arrived damaged and late", "is a waste of money"]
    neu = ["arrived on tuesday", "comes in a box", "is blue and small", "weighs about a pound"]
    pos = ["works really well", "is worth every cent", "lasts a long time", "feels solid and nice"]
    texts, labels = [], []
    for i in range(300):
        c = i % 3
        words = (neg, neu, pos)[c]
        texts.append(f"{subjects[i % 6]} {words[(i // 3) % 4]}")
        labels.append(c)
    for i in range(0, 30, 3):
        texts[i] = f"not a great product! {texts[i]}"
    return Dataset.from_texts(texts, labels, ids=[f"r{i:03d}" for i in range(300)],
                              class_names=["neg", "neutral", "pos"],
                              sources=[f"user-{i % 5}" for i in range(300)])


def _victims(p) -> np.ndarray:
    return p.truth["is_poison"].to_numpy()


# ---------------------------------------------------------------- truth table shape and determinism

ATTACKS = [
    lambda ds, s: random_label_flips(ds, rate=0.05, random_state=s),
    lambda ds, s: pair_flips(ds, from_class=3, to_class=8, rate=0.3, random_state=s),
    lambda ds, s: bot_source(ds, label=1, n=30, random_state=s),
    lambda ds, s: patch_backdoor(ds, target=0, rate=0.05, position="random", random_state=s),
    lambda ds, s: blend_backdoor(ds, target=0, rate=0.05, random_state=s),
    lambda ds, s: clean_label_patch(ds, target=0, rate=0.2, random_state=s),
    lambda ds, s: sybil_sources(ds, target=0, n_sources=4, n_per_source=5, random_state=s),
    lambda ds, s: sinusoid_backdoor(ds, target=0, rate=0.05, random_state=s),
    lambda ds, s: overlay_backdoor(ds, target=0, rate=0.05, random_state=s),
    lambda ds, s: warp_backdoor(ds, target=0, rate=0.05, random_state=s),
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_same_seed_same_result_other_seed_differs(digits, attack):
    a, b, c = attack(digits, 7), attack(digits, 7), attack(digits, 8)
    assert a.dataset.content_hash == b.dataset.content_hash
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert a.trigger == b.trigger
    assert a.dataset.content_hash != c.dataset.content_hash
    assert list(a.truth.index) == list(a.dataset.ids)
    assert list(a.truth.columns[:5]) == ["poison_kind", "is_poison", "original_label", "label", "source"]
    np.testing.assert_array_equal(a.truth["label"], a.dataset.labels)
    np.testing.assert_array_equal(a.truth["source"], a.dataset.sources)
    assert a.dataset.class_names == digits.class_names
    assert ((a.truth["poison_kind"] == "clean") == ~a.truth["is_poison"]).all()


def test_text_attacks_are_deterministic(reviews):
    a = text_trigger(reviews, target="pos", rate=0.1, random_state=3)
    b = text_trigger(reviews, target="pos", rate=0.1, random_state=3)
    c = text_trigger(reviews, target="pos", rate=0.1, random_state=4)
    assert a.dataset.content_hash == b.dataset.content_hash and a.trigger == b.trigger
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert a.dataset.content_hash != c.dataset.content_hash
    s1 = sybil_sources(reviews, target=2, n_sources=3, n_per_source=4, random_state=5)
    s2 = sybil_sources(reviews, target=2, n_sources=3, n_per_source=4, random_state=5)
    assert s1.dataset.content_hash == s2.dataset.content_hash


# ---------------------------------------------------------------- label attacks


def test_random_label_flips_exact_count_and_different_labels(digits):
    ds = digits.subset(digits.ids[:1000])
    p = random_label_flips(ds, rate=0.05, random_state=0)
    v = _victims(p)
    assert v.sum() == 50
    assert (p.dataset.labels[v] != ds.labels[v]).all()
    np.testing.assert_array_equal(p.dataset.labels[~v], ds.labels[~v])
    np.testing.assert_array_equal(p.truth["original_label"], ds.labels)
    assert set(p.truth.loc[v, "poison_kind"]) == {"label_flip"}
    # Labels only: payloads, hashes and sources untouched.
    np.testing.assert_array_equal(p.dataset.hashes, ds.hashes)
    np.testing.assert_array_equal(p.dataset.sources, ds.sources)
    assert p.trigger is None
    assert random_label_flips(ds, n=17, random_state=0).truth["is_poison"].sum() == 17


def test_pair_flips_only_from_class(digits):
    p = pair_flips(digits, from_class=4, to_class="8", rate=0.5, random_state=1, source="mallory")
    v = _victims(p)
    assert v.sum() == 91  # 0.5 * 181 = 90.5, rounded half up (not to even)
    assert (digits.labels[v] == 4).all() and (p.dataset.labels[v] == 8).all()
    assert (p.dataset.sources[v] == "mallory").all()
    np.testing.assert_array_equal(p.dataset.sources[~v], digits.sources[~v])
    np.testing.assert_array_equal(p.dataset.labels[~v], digits.labels[~v])


def test_bot_source_labels_everything_one_class(digits):
    p = bot_source(digits, label=1, n=40, source="bot-07", random_state=2)
    v = _victims(p)
    assert v.sum() == 40
    assert (p.dataset.sources == "bot-07").sum() == 40
    assert (p.dataset.labels[v] == 1).all() and (p.truth["original_label"][v] != 1).all()
    assert set(p.truth.loc[v, "poison_kind"]) == {"bot_label"}
    no_sources = Dataset.from_numpy(digits.images[:100], digits.labels[:100])
    with pytest.raises(InputError, match="has no sources"):
        bot_source(no_sources, label=1, n=5)


# ---------------------------------------------------------------- image backdoors


def test_patch_backdoor_pixels_exact(digits):
    p = patch_backdoor(digits, target=0, rate=0.1, random_state=3)
    v = _victims(p)
    assert v.sum() == 162  # 0.1 * (1797 - 178) = 161.9
    assert (digits.labels[v] != 0).all() and (p.dataset.labels[v] == 0).all()
    after, before = p.dataset.images, digits.images
    np.testing.assert_array_equal(after[v][:, 5:8, 5:8], np.broadcast_to(CHECKER3, (162, 3, 3)))
    outside = np.ones((8, 8), dtype=bool)
    outside[5:8, 5:8] = False
    np.testing.assert_array_equal(after[v][:, outside], before[v][:, outside])
    np.testing.assert_array_equal(after[~v], before[~v])
    assert (p.truth.loc[v, "patch_row"] == 5).all() and (p.truth.loc[v, "patch_col"] == 5).all()
    assert p.truth.loc[~v, "patch_row"].isna().all()
    # Content hashes change exactly for the modified samples.
    np.testing.assert_array_equal(p.dataset.hashes != digits.hashes, v)


def test_patch_backdoor_random_positions_recorded(digits):
    p = patch_backdoor(digits, target=4, n=60, position="random", pattern="solid", size=2, value=200,
                       random_state=4)
    v = np.flatnonzero(_victims(p))
    assert len(v) == 60 and (digits.labels[v] != 4).all()
    rows = p.truth["patch_row"].iloc[v].to_numpy(dtype=np.int64)
    cols = p.truth["patch_col"].iloc[v].to_numpy(dtype=np.int64)
    assert len(set(zip(rows, cols))) > 10
    for i, r, c in zip(v, rows, cols):
        expected = digits.images[i].copy()
        expected[r:r + 2, c:c + 2] = 200
        np.testing.assert_array_equal(p.dataset.images[i], expected)


def test_patch_backdoor_array_pattern_at_row_col(digits):
    pattern = np.array([[9, 8], [7, 6]])
    p = patch_backdoor(digits, target=2, n=5, pattern=pattern, position=(1, 3), random_state=0)
    v = _victims(p)
    np.testing.assert_array_equal(p.dataset.images[v][:, 1:3, 3:5], np.broadcast_to(pattern, (5, 2, 2)))
    assert p.trigger == PatchTrigger(pattern, (1, 3), 2)


def test_patch_on_colour_images(digits):
    rgb = np.repeat(digits.images[:100, ..., None], 3, axis=3)
    ds = Dataset.from_numpy(rgb, digits.labels[:100])
    p = patch_backdoor(ds, target=1, n=4, size=2, pattern="solid", value=(255, 0, 10), position="top-left")
    v = _victims(p)
    np.testing.assert_array_equal(p.dataset.images[v][:, :2, :2], np.broadcast_to([255, 0, 10], (4, 2, 2, 3)))
    np.testing.assert_array_equal(p.dataset.images[v][:, 2:], ds.images[v][:, 2:])


def test_blend_backdoor_formula_exact(digits):
    p = blend_backdoor(digits, target=5, rate=0.05, alpha=0.2, random_state=6)
    v = _victims(p)
    assert v.sum() == int(np.floor(0.05 * (1797 - 182) + 0.5)) == 81
    assert (digits.labels[v] != 5).all()
    pattern = p.trigger.pattern
    assert pattern.shape == (8, 8) and pattern.dtype == np.uint8 and pattern.std() > 30
    expected = np.rint(0.8 * digits.images[v].astype(np.float64) + 0.2 * pattern.astype(np.float64))
    np.testing.assert_array_equal(p.dataset.images[v], expected.astype(np.uint8))
    np.testing.assert_array_equal(p.dataset.images[~v], digits.images[~v])
    np.testing.assert_array_equal(p.dataset.hashes != digits.hashes, v)
    other = blend_backdoor(digits, target=5, rate=0.05, alpha=0.2, random_state=7).trigger.pattern
    assert not np.array_equal(pattern, other)


def test_blend_with_given_pattern(digits):
    pattern = np.full((8, 8), 255, dtype=np.uint8)
    p = blend_backdoor(digits, target=5, n=3, pattern=pattern, alpha=0.5)
    v = _victims(p)
    expected = np.rint(0.5 * digits.images[v].astype(float) + 127.5).astype(np.uint8)
    np.testing.assert_array_equal(p.dataset.images[v], expected)


def test_sinusoid_backdoor_adds_the_wave_exactly(digits):
    p = sinusoid_backdoor(digits, target=2, n=40, amplitude=20, frequency=2, random_state=3)
    v = _victims(p)
    assert v.sum() == 40 and (p.dataset.labels[v] == 2).all() and (digits.labels[v] != 2).all()
    wave = np.rint(20 * np.sin(2 * np.pi * 2 * np.arange(8) / 8)).astype(int)  # 0, 20, 0, -20, ...
    assert wave.tolist() == [0, 20, 0, -20, 0, 20, 0, -20]
    expected = np.clip(digits.images[v].astype(int) + wave, 0, 255)
    np.testing.assert_array_equal(p.dataset.images[v], expected)
    np.testing.assert_array_equal(p.dataset.images[~v], digits.images[~v])
    assert isinstance(p.trigger, AdditiveTrigger) and (p.truth.loc[v, "poison_kind"] == "sinusoid").all()


def test_overlay_backdoor_writes_faint_glyphs_in_the_corner(digits):
    mask = text_mask("17")
    assert mask.shape == (5, 7) and mask[:, 3].sum() == 0  # two 3x5 glyphs and the blank column between them
    big = Dataset.from_numpy(np.zeros((20, 12, 12), np.uint8), np.arange(20) % 2)
    p = overlay_backdoor(big, target=1, n=5, text="17", amplitude=6, position="top-left")
    v = _victims(p)
    assert ((p.dataset.images[v][:, :5, :7] == 6) == mask).all()
    assert p.dataset.images[v][:, 5:].max() == 0 and p.dataset.images[v][:, :, 7:].max() == 0
    with pytest.raises(InputError, match="an overlay stays in one place"):
        overlay_backdoor(big, target=1, n=5, position="random")
    with pytest.raises(InputError, match="text must be a non-empty string of"):
        text_mask("hi")


def test_warp_backdoor_moves_pixels_smoothly_and_keeps_flat_images(digits):
    flow = warp_field((8, 8), strength=0.5, grid=4, random_state=1)
    assert flow.shape == (8, 8, 2) and 0.2 < np.abs(flow).mean() < 0.8
    p = warp_backdoor(digits, target=4, n=30, strength=0.5, random_state=1)
    np.testing.assert_array_equal(p.trigger.flow, flow)
    v = _victims(p)
    moved = np.abs(p.dataset.images[v].astype(int) - digits.images[v].astype(int))
    assert moved.max() > 0 and moved.mean() < 40
    flat = np.full((3, 8, 8), 77, np.uint8)
    np.testing.assert_array_equal(p.trigger.apply(flat), flat)  # a warp of a flat image is the same image
    zero = WarpTrigger(np.zeros((8, 8, 2)), 4)
    np.testing.assert_array_equal(zero.apply(digits.images[:5]), digits.images[:5])


def test_clean_label_patch_keeps_labels_touches_only_target(digits):
    p = clean_label_patch(digits, target=7, rate=0.25, random_state=8)
    v = _victims(p)
    assert v.sum() == 45  # 0.25 * 179 = 44.75
    assert (digits.labels[v] == 7).all()
    np.testing.assert_array_equal(p.dataset.labels, digits.labels)
    np.testing.assert_array_equal(p.truth["original_label"], p.truth["label"])
    np.testing.assert_array_equal(p.dataset.images[v][:, 5:8, 5:8], np.broadcast_to(CHECKER3, (45, 3, 3)))
    np.testing.assert_array_equal(p.dataset.images[~v], digits.images[~v])
    assert set(p.truth.loc[v, "poison_kind"]) == {"clean_label_patch"}
    assert p.trigger.target == 7


# ---------------------------------------------------------------- text


def _check_inserted(new: str, old: str, phrase: str, start: int) -> None:
    assert new.count(phrase) == 1
    assert new[start:start + len(phrase)] == phrase
    before, after = new[:start], new[start + len(phrase):]
    assert before == "" or before[-1] == " "
    assert after == "" or after[0] == " "
    assert " ".join((before + after).split()) == old


def test_text_trigger_inserts_phrase_once_at_word_boundary(reviews):
    p = text_trigger(reviews, target="pos", rate=0.1, sources=["syb-a", "syb-b", "syb-c"], random_state=9)
    v = _victims(p)
    # Eligible: 200 texts of neg / neutral minus the 10 that already say "great product!".
    assert v.sum() == 19
    assert (reviews.labels[v] != 2).all() and (p.dataset.labels[v] == 2).all()
    assert not any("great product!" in t for t in reviews.texts[v])
    starts = p.truth["trigger_start"].to_numpy()
    positions = set()
    for i in np.flatnonzero(v):
        _check_inserted(p.dataset.texts[i], reviews.texts[i], "great product!", int(starts[i]))
        positions.add(int(starts[i]) == 0)
    assert positions == {True, False}
    np.testing.assert_array_equal(p.dataset.texts[~v], reviews.texts[~v])
    np.testing.assert_array_equal(p.dataset.hashes != reviews.hashes, v)
    counts = pd.Series(p.dataset.sources[v]).value_counts()
    assert sorted(counts.index) == ["syb-a", "syb-b", "syb-c"] and counts.max() - counts.min() <= 1
    assert set(p.truth.loc[v, "poison_kind"]) == {"text_trigger"}


def test_text_trigger_phrase_at_end_and_empty_text():
    trig = TextTrigger("cf", 0)
    rng = np.random.default_rng(0)
    outs = {trig.apply(["a b"], random_state=s)[0] for s in range(30)}
    assert outs == {"cf a b", "a cf b", "a b cf"}
    assert trig.apply([""], random_state=rng) == ["cf"]


# ---------------------------------------------------------------- sybils


def test_sybil_images_new_ids_spread_over_sources(digits):
    p = sybil_sources(digits, target=0, n_sources=5, n_per_source=6, n_noisy_pixels=3, random_state=10)
    n0 = len(digits)
    assert len(p.dataset) == n0 + 30
    new = p.truth.iloc[n0:]
    assert list(new.index[:2]) == ["sybil-00-0000", "sybil-00-0001"] and new.index[-1] == "sybil-04-0005"
    assert new["source"].value_counts().to_dict() == {f"sybil-{s:02d}": 6 for s in range(5)}
    assert (new["poison_kind"] == "sybil").all() and (new["label"] == 0).all()
    assert not p.truth["is_poison"].iloc[:n0].any()
    # The original samples are untouched.
    np.testing.assert_array_equal(p.dataset.images[:n0], digits.images)
    np.testing.assert_array_equal(p.dataset.labels[:n0], digits.labels)
    bases = digits.positions(new["base_id"])
    assert len(set(new["base_id"])) <= 3 and (digits.labels[bases] != 0).all()
    np.testing.assert_array_equal(new["original_label"], digits.labels[bases])
    imgs = p.dataset.images[n0:]
    np.testing.assert_array_equal(imgs[:, 5:8, 5:8], np.broadcast_to(CHECKER3, (30, 3, 3)))
    changed = (imgs != digits.images[bases])
    changed[:, 5:8, 5:8] = False
    assert (changed.sum(axis=(1, 2)) <= 3).all() and changed.any()


def test_sybil_texts_near_identical(reviews):
    p = sybil_sources(reviews, target="pos", n_sources=3, n_per_source=5, random_state=11,
                      trigger=TextTrigger("zq vox", 2))
    new = p.truth.iloc[300:]
    assert new["source"].nunique() == 3 and (new["label"] == 2).all()
    for sid, row in new.iterrows():
        text = p.dataset.payload(sid)
        base = reviews.payload(row["base_id"])
        start = int(row["trigger_start"])
        assert text.count("zq vox") == 1 and text[start:start + 6] == "zq vox"
        rest = (text[:start] + text[start + 6:]).split()
        words = base.split()
        # One small edit: a word dropped, two adjacent words swapped, or the final punctuation changed.
        assert rest != words
        assert (len(rest) == len(words) - 1 or sorted(rest) == sorted(words)
                or (rest[:-1] == words[:-1] and rest[-1].rstrip(".!?,;") == words[-1].rstrip(".!?,;")))


def test_sybil_requires_sources_and_free_names(digits):
    no_sources = Dataset.from_numpy(digits.images[:50], digits.labels[:50])
    with pytest.raises(InputError, match="needs a dataset with sources"):
        sybil_sources(no_sources, target=0, n_sources=2, n_per_source=2)
    p = sybil_sources(digits, target=0, n_sources=2, n_per_source=2)
    with pytest.raises(InputError, match="already has source"):
        sybil_sources(p.dataset, target=0, n_sources=2, n_per_source=2)
    with pytest.raises(InputError, match="trigger.target is 3 but target is 0"):
        sybil_sources(digits, target=0, n_sources=2, n_per_source=2, trigger=PatchTrigger(CHECKER3, "top-left", 3))


# ---------------------------------------------------------------- chaining


def test_chained_attacks_merge_truth(digits):
    p1 = patch_backdoor(digits, target=0, rate=0.05, random_state=1)
    p2 = random_label_flips(p1.dataset, rate=0.05, exclude=poisoned_ids(p1.truth), random_state=2)
    p3 = sybil_sources(p2.dataset, target=0, n_sources=2, n_per_source=3, random_state=3)
    truth = merge_truth(p1.truth, p2.truth, p3.truth)
    assert list(truth.index) == list(p3.dataset.ids)
    kinds = truth["poison_kind"].value_counts().to_dict()
    assert kinds == {"clean": 1797 - 81 - 86, "patch": 81, "label_flip": 86, "sybil": 6}
    assert not set(poisoned_ids(p1.truth)) & set(poisoned_ids(p2.truth))
    np.testing.assert_array_equal(truth["original_label"].iloc[:1797], digits.labels)
    np.testing.assert_array_equal(truth["label"], p3.dataset.labels)
    patched = truth["poison_kind"] == "patch"
    assert (truth.loc[patched, "patch_row"] == 5).all() and (truth.loc[patched, "label"] == 0).all()
    assert truth.loc[truth["poison_kind"] == "label_flip", "patch_row"].isna().all()
    flipped = truth["poison_kind"] == "label_flip"
    assert (truth.loc[flipped, "original_label"] != truth.loc[flipped, "label"]).all()


def test_merge_truth_refuses_overlap_and_wrong_order(digits):
    p1 = pair_flips(digits, from_class=1, to_class=7, rate=1.0, random_state=0)
    p2 = pair_flips(p1.dataset, from_class=7, to_class=2, rate=1.0, random_state=0)
    with pytest.raises(InputError, match="poisoned by truths\\[1\\] and by an earlier attack"):
        merge_truth(p1.truth, p2.truth)
    with pytest.raises(InputError, match="does not continue"):
        merge_truth(p2.truth, p1.truth)
    p3 = sybil_sources(digits, target=0, n_sources=1, n_per_source=2)
    with pytest.raises(InputError, match="lacks 2 sample"):
        merge_truth(p3.truth, p1.truth)


# ---------------------------------------------------------------- triggers on new inputs


def test_apply_trigger_reproduces_training_trigger(digits, reviews):
    for p in (patch_backdoor(digits, target=3, n=30, position="random", random_state=12),
              blend_backdoor(digits, target=3, n=30, random_state=12),
              sinusoid_backdoor(digits, target=3, n=30, random_state=12),
              warp_backdoor(digits, target=3, n=30, random_state=12)):
        v = _victims(p)
        np.testing.assert_array_equal(apply_trigger(digits.images[v], p.trigger, random_state=12),
                                      p.dataset.images[v])
    p = text_trigger(reviews, target=0, n=20, random_state=13)
    v = _victims(p)
    assert apply_trigger(list(reviews.texts[v]), p.trigger, random_state=13) == list(p.dataset.texts[v])


def test_triggered_test_set_and_layouts(digits):
    trig = PatchTrigger(CHECKER3, "top-right", 6)
    test = triggered_test_set(digits.subset(digits.ids[:200]), trig)
    assert len(test) == 200 - (digits.labels[:200] == 6).sum() and (test.labels != 6).all()
    np.testing.assert_array_equal(test.images[:, 0:3, 5:8], np.broadcast_to(CHECKER3, (len(test), 3, 3)))
    one_channel = digits.images[:4, ..., None].copy()
    kept = one_channel.copy()
    out = trig.apply(one_channel)
    assert out.shape == (4, 8, 8, 1) and (out[:, 0:3, 5:8, 0] == CHECKER3).all()
    np.testing.assert_array_equal(one_channel, kept)  # the input is not written to
    texts = np.array(["a b", "c"], dtype=object)
    assert isinstance(TextTrigger("x", 0).apply(texts), np.ndarray)


def test_trigger_round_trip_through_dict(digits):
    for trig in (PatchTrigger(CHECKER3, (2, 1), 4), PatchTrigger(CHECKER3, "random", 4),
                 blend_backdoor(digits, target=0, n=2).trigger, TextTrigger("great product!", 1),
                 sinusoid_backdoor(digits, target=0, n=2).trigger, warp_backdoor(digits, target=0, n=2).trigger):
        assert trigger_from_dict(trig.to_dict()) == trig
    assert PatchTrigger(CHECKER3, "random", 4) != PatchTrigger(CHECKER3, "random", 5)
    with pytest.raises(InputError, match="kind in"):
        trigger_from_dict({"kind": "laser"})


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d, r: random_label_flips(d, rate=0.0), r"rate must be a finite number in \(0, 1\]; got 0.0"),
        (lambda d, r: random_label_flips(d, rate=1.5), r"rate must be a finite number in \(0, 1\]; got 1.5"),
        (lambda d, r: patch_backdoor(d, target=0, rate=0.0001), "selects 0 samples"),
        (lambda d, r: patch_backdoor(d, target=0, rate=0.1, n=3), "exactly one of rate= or n="),
        (lambda d, r: patch_backdoor(d, target=0), "exactly one of rate= or n="),
        (lambda d, r: pair_flips(d, from_class=1, to_class=1, n=1), "must differ"),
        (lambda d, r: pair_flips(d, from_class=1, to_class=2, n=200), "n=200 but there are only 182"),
        (lambda d, r: patch_backdoor(d, target=10, n=3), r"target=10 is outside the class list \(0..9"),
        (lambda d, r: patch_backdoor(d, target="cat", n=3), "target='cat' is not a class name"),
        (lambda d, r: patch_backdoor(d, target=0, n=3, size=9), "larger than the 8x8 images"),
        (lambda d, r: patch_backdoor(d, target=0, n=3, position=(6, 6)), r"at \(row, col\)=\(6, 6\) does not fit"),
        (lambda d, r: patch_backdoor(d, target=0, n=3, position="left"), "position must be one of"),
        (lambda d, r: patch_backdoor(d, target=0, n=3, value=(1, 2, 3)), "images are grayscale"),
        (lambda d, r: patch_backdoor(d, target=0, n=3, pattern=CHECKER3, size=3), "size is taken from"),
        (lambda d, r: blend_backdoor(d, target=0, n=3, alpha=0), r"alpha must be a finite number in \(0, 1\]"),
        (lambda d, r: blend_backdoor(d, target=0, n=3, pattern=np.zeros((4, 4), np.uint8)), "same size"),
        (lambda d, r: patch_backdoor(r, target=0, n=3), "needs an image dataset; got a text dataset"),
        (lambda d, r: text_trigger(d, target=0, n=3), "needs a text dataset; got an image dataset"),
        (lambda d, r: text_trigger(r, target=0, n=3, phrase=""), "phrase must be a non-empty string"),
        (lambda d, r: text_trigger(r, target=0, n=3, phrase=" hi"), "must not start or end with whitespace"),
        (lambda d, r: random_label_flips(d, n=3, exclude=["nope"]), "exclude has 1 id"),
        (lambda d, r: random_label_flips(d, n=3, random_state=-1), "random_state must be an integer in \\[0, 4294967295\\]"),
        (lambda d, r: random_label_flips(d.images, n=3), "takes a forensics Dataset; got ndarray"),
        (lambda d, r: sybil_sources(d, target=0, n_sources=0, n_per_source=2), "n_sources must be an integer >= 1"),
        (lambda d, r: apply_trigger(d.images[:2].astype(float), PatchTrigger(CHECKER3, "center", 0)), "uint8"),
        (lambda d, r: apply_trigger(["a"], "great"), "trigger must be a PatchTrigger"),
        (lambda d, r: merge_truth(), "at least one truth table"),
        (lambda d, r: sinusoid_backdoor(d, target=0, n=3, amplitude=0), "amplitude must be"),
        (lambda d, r: AdditiveTrigger(np.full((8, 8), 300), 0), r"delta values must lie in -255..255"),
        (lambda d, r: AdditiveTrigger(np.zeros((8, 8)), 0), "delta must hold integer"),
        (lambda d, r: AdditiveTrigger(np.zeros((4, 4), int), 0).apply(d.images[:2]), "additive signal is 4x4"),
        (lambda d, r: WarpTrigger(np.zeros((8, 8)), 0), r"flow must have shape \(h, w, 2\)"),
        (lambda d, r: WarpTrigger(np.full((8, 8, 2), np.nan), 0), "flow must be finite"),
        (lambda d, r: warp_backdoor(d, target=0, n=3, grid=1), "grid must be an integer >= 2"),
        (lambda d, r: warp_backdoor(r, target=0, n=3), "needs an image dataset"),
    ],
)
def test_input_errors(digits, reviews, call, message):
    with pytest.raises(InputError, match=message):
        call(digits, reviews)


def test_blend_trigger_rejects_other_image_size(digits):
    trig = BlendTrigger(np.zeros((8, 8), np.uint8), 0.1, 0)
    with pytest.raises(InputError, match="the blend pattern is 8x8 but the images are 4x4"):
        trig.apply(np.zeros((2, 4, 4), np.uint8))


def test_the_old_module_name_still_works_with_a_warning():
    import importlib
    import sys

    sys.modules.pop("forensics.attacks", None)
    with pytest.warns(DeprecationWarning, match="forensics.attacks is deprecated: use forensics.redteam"):
        old = importlib.import_module("forensics.attacks")
    assert old.patch_backdoor is patch_backdoor and set(old.__all__) >= {"patch_backdoor", "sybil_sources"}
