"""Group-level signals: duplicates, sources, ensemble disagreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from sklearn.datasets import load_digits

from forensics.data import Dataset
from forensics.errors import InputError
from forensics.signals.duplicates import (
    REDUNDANCY_WEIGHT,
    duplicate_group_table,
    duplicate_scores,
    exact_duplicate_groups,
    image_phash,
    near_duplicate_groups_features,
    near_duplicate_groups_hashes,
    near_duplicate_groups_images,
    near_duplicate_groups_texts,
    normalize_text,
)
from forensics.signals.ensemble import ensemble_disagreement, ensemble_table
from forensics.signals.sources import SOURCE_EVIDENCE_MIN, source_scores, source_table


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images * 255 / 16).round().astype(np.uint8), d.target.astype(np.int64)


@pytest.fixture(scope="module")
def digits32(digits) -> tuple[np.ndarray, np.ndarray]:
    """Digits blown up to 32 x 32 (each pixel a 4 x 4 block), so that one pixel is a small edit."""
    images, labels = digits
    return np.kron(images, np.ones((1, 4, 4), np.uint8)), labels


# ---------------------------------------------------------------------------------------------- exact duplicates
def test_exact_groups_numbered_by_first_member():
    groups = exact_duplicate_groups(["b", "a", "b", "c", "a", "b", "d"])
    assert groups.tolist() == [0, 1, 0, -1, 1, 0, -1]
    assert groups.dtype == np.int64


def test_exact_groups_from_dataset_hashes(digits):
    images, labels = digits
    ds = Dataset.from_numpy(images[[0, 1, 2, 0, 2]], labels[[0, 1, 2, 0, 2]])
    assert exact_duplicate_groups(ds.hashes).tolist() == [0, -1, 1, 0, 1]


def test_exact_groups_empty_and_errors():
    assert exact_duplicate_groups([]).tolist() == []
    with pytest.raises(InputError, match="hashes has 1 missing value"):
        exact_duplicate_groups(np.array(["a", None], dtype=object))
    with pytest.raises(InputError, match="hashes must be 1-D"):
        exact_duplicate_groups(np.zeros((2, 2)))


# ---------------------------------------------------------------------------------------------- images
def _edit_two_pixels(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[3, 5] = 255 - out[3, 5]
    out[20, 17] = 255 - out[20, 17]
    return out


def test_image_phash_close_for_small_edit_far_for_other_image(digits32):
    images, labels = digits32
    h = image_phash(images[:50])
    assert h.dtype == np.uint64 and h.shape == (50,)
    edited = image_phash(_edit_two_pixels(images[4])[None])[0]
    assert np.bitwise_count(edited ^ h[4]) <= 4
    other = int(np.flatnonzero(labels[:50] != labels[4])[0])
    assert np.bitwise_count(h[other] ^ h[4]) > 10
    # Colour images hash through their grey version; a single channel axis is dropped.
    rgb = np.repeat(images[:3, :, :, None], 3, axis=3)
    assert np.array_equal(image_phash(rgb), h[:3])
    assert np.array_equal(image_phash(images[:3, :, :, None]), h[:3])


def test_near_duplicate_images_planted(digits32):
    images, _ = digits32
    base = images[:200]
    planted = np.concatenate([base, _edit_two_pixels(base[5])[None], base[9][None], base[30][None] // 2 + 60])
    groups = near_duplicate_groups_images(planted)
    # The edited copy joins its original; the exact copy joins its own; the re-toned image does not.
    assert groups[5] == groups[200] == 0
    assert groups[9] == groups[201] == 1
    assert (groups >= 0).sum() == 4
    assert groups[202] == -1 and groups[30] == -1


def test_near_duplicate_images_brightness_and_noise(digits32):
    images, _ = digits32
    rng = np.random.default_rng(0)
    base = images[:100]
    brighter = np.clip(base[7].astype(int) + 20, 0, 255).astype(np.uint8)
    noisy = np.clip(base[8] + rng.normal(0, 6, base[8].shape), 0, 255).astype(np.uint8)
    groups = near_duplicate_groups_images(np.concatenate([base, brighter[None], noisy[None]]))
    assert groups[7] == groups[100] >= 0
    assert groups[8] == groups[101] >= 0
    assert (groups >= 0).sum() == 4


def test_near_duplicate_images_many_copies_in_small_batches_give_the_same_groups(digits32, monkeypatch):
    from forensics.signals import duplicates

    images, _ = digits32
    rng = np.random.default_rng(2)
    pick = rng.integers(0, 60, 1500)  # about 25 noisy copies of each of 60 images: thousands of candidate pairs
    copies = np.clip(images[pick].astype(int) + rng.integers(-8, 9, images[pick].shape), 0, 255).astype(np.uint8)
    checked = []
    real = duplicates._changed_share
    monkeypatch.setattr(duplicates, "_changed_share", lambda a, b, t: checked.append(len(a)) or real(a, b, t))
    whole = near_duplicate_groups_images(copies)  # every candidate in one batch: each distinct pair checked
    in_one = sum(checked)
    checked.clear()
    monkeypatch.setattr(duplicates, "_CANDIDATE_BATCH", 300)
    batched = near_duplicate_groups_images(copies)
    np.testing.assert_array_equal(batched, whole)
    # Copies of one image form one group, whatever the batches; a pair proposed again by a later band in a later
    # batch is not checked again once its images are joined, so small batches check no more pairs than one.
    for g in np.unique(pick):
        assert len(np.unique(whole[pick == g])) == 1
    assert sum(checked) <= in_one


def test_copies_joined_with_few_checks_and_alike_images_kept_apart(digits32, monkeypatch):
    from forensics.signals import duplicates

    images, _ = digits32
    x = images[0].astype(int)
    y = x.copy()
    # A fine checkerboard over 6% of the pixels: the hash barely moves (low frequencies), the pixels do.
    y[11:21, 11:21] += 70 * ((np.indices((10, 10)).sum(axis=0) % 2) * 2 - 1)
    rng = np.random.default_rng(4)
    pick = np.repeat([0, 1, 2], 30)
    base = np.stack([x, np.clip(y, 0, 255), images[5]])[pick]
    copies = np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
    codes = image_phash(copies)
    assert np.bitwise_count(codes[0] ^ codes[30]) <= 6  # x and y are candidates for each other
    checked, failed = [], []
    real = duplicates._changed_share

    def counting(a, b, t):
        share = real(a, b, t)
        checked.append(len(a))
        failed.append(int((share > 0.02).sum()))
        return share

    monkeypatch.setattr(duplicates, "_changed_share", counting)
    groups = near_duplicate_groups_images(copies)
    # Three groups, exactly the three images.
    assert [len(np.unique(groups[pick == g])) for g in range(3)] == [1, 1, 1]
    assert len(np.unique(groups)) == 3 and (groups >= 0).all()
    # Far fewer checks than candidate pairs (3 x 435 among copies, 900 between x and y): copies are joined
    # through their buckets' first members, and x and y are told apart after a bounded number of failures.
    candidates = {tuple(sorted(p)) for a, b in duplicates._hamming_candidates(codes, 6) for p in zip(a, b)}
    assert len(candidates) > 1000
    assert sum(checked) < len(candidates) / 4
    assert sum(failed) <= 4 * 30 + duplicates._MAX_FAILED_CHECKS


def test_hamming_candidates_are_exactly_the_close_pairs_across_groups(monkeypatch):
    from forensics.signals import duplicates

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, 200, dtype=np.uint64)[rng.integers(0, 200, 1500)]
    for _ in range(3):  # up to three flipped bits per code: many close pairs, buckets of all sizes
        bit = np.uint64(1) << rng.integers(0, 64, 1500).astype(np.uint64)
        codes = codes ^ np.where(rng.random(1500) < 0.7, bit, np.uint64(0))
    groups = rng.integers(0, 40, 1500)
    dist = np.bitwise_count(codes[:, None] ^ codes[None, :])
    iu = np.triu_indices(len(codes), 1)
    for chunk in (duplicates._PAIR_CHUNK, 7):
        monkeypatch.setattr(duplicates, "_PAIR_CHUNK", chunk)
        for m in (0, 3, 6):
            close = {(i, j) for i, j in zip(*iu) if dist[i, j] <= m}
            for g in (None, groups):
                found = {tuple(sorted(p)) for a, b in duplicates._hamming_candidates(codes, m, g) for p in zip(a, b)}
                assert found == (close if g is None else {(i, j) for i, j in close if groups[i] != groups[j]})


def test_near_duplicate_images_errors(digits32):
    images, _ = digits32
    with pytest.raises(InputError, match="images must be a uint8 array"):
        near_duplicate_groups_images(images.astype(np.float32))
    with pytest.raises(InputError, match=r"max_hamming must be an integer in \[0, 16\]"):
        near_duplicate_groups_images(images[:5], max_hamming=20)
    with pytest.raises(InputError, match=r"max_changed_share must be a finite number in \[0.0, 1.0\]"):
        near_duplicate_groups_images(images[:5], max_changed_share=2)


def test_hash_groups_are_exact_within_radius():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2**63, size=300, dtype=np.uint64) * np.uint64(2)
    # Plant hashes 6 and 7 bits away from code 0: radius 6 takes the first, not the second.
    six = codes[0] ^ np.uint64(0b111111 << 20)
    seven = codes[0] ^ np.uint64(0b1111111 << 40)
    groups = near_duplicate_groups_hashes(np.r_[codes, six, seven], max_hamming=6)
    assert groups[0] == groups[300] >= 0
    assert groups[301] == -1
    # Brute force over all pairs agrees on which hashes have a neighbour.
    allc = np.r_[codes, six, seven]
    close = (np.bitwise_count(allc[:, None] ^ allc[None, :]) <= 6).sum(axis=1) > 1
    assert np.array_equal(groups >= 0, close)


def test_small_pair_chunks_give_the_same_groups(monkeypatch):
    # Tiny chunks drive every chunking path (many buckets, one huge bucket, partner runs) on small inputs.
    from forensics.signals import duplicates

    rng = np.random.default_rng(2)
    base = rng.integers(0, 2**63, size=20, dtype=np.uint64)
    codes = np.concatenate([base, np.repeat(base[:2], 12), base[:6] ^ np.uint64(1 << 3)])
    texts = [" ".join(rng.choice(["aa", "bb", "cc", "dd", "ee"], 40)) for _ in range(30)]
    texts += [t + " ff" for t in texts[:5]]
    expected_hashes = near_duplicate_groups_hashes(codes, max_hamming=3)
    expected_texts = near_duplicate_groups_texts(texts, threshold=0.9)
    monkeypatch.setattr(duplicates, "_PAIR_CHUNK", 5)
    assert np.array_equal(near_duplicate_groups_hashes(codes, max_hamming=3), expected_hashes)
    assert np.array_equal(near_duplicate_groups_texts(texts, threshold=0.9), expected_texts)
    close = (np.bitwise_count(codes[:, None] ^ codes[None, :]) <= 3).sum(axis=1) > 1
    assert np.array_equal(expected_hashes >= 0, close)
    assert (expected_texts[30:] == expected_texts[:5]).all() and (expected_texts[:5] >= 0).all()


def test_feature_groups_euclidean_and_cosine():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 24)).astype(np.float32)
    x = np.vstack([x, x[3] + 1e-3, x[10] * 3.0])
    groups = near_duplicate_groups_features(x, radius=0.05)
    assert groups[3] == groups[400] == 0
    assert (groups >= 0).sum() == 2
    cos = near_duplicate_groups_features(x, radius=1e-4, metric="cosine")
    assert cos[3] == cos[400] >= 0 and cos[10] == cos[401] >= 0
    assert (cos >= 0).sum() == 4


def test_feature_groups_errors():
    with pytest.raises(InputError, match="radius must be a finite number >= 0"):
        near_duplicate_groups_features(np.zeros((3, 2)), radius=-1)
    with pytest.raises(InputError, match="metric must be 'euclidean' or 'cosine'"):
        near_duplicate_groups_features(np.zeros((3, 2)), radius=1.0, metric="manhattan")
    with pytest.raises(InputError, match="all-zero row"):
        near_duplicate_groups_features(np.zeros((3, 2)), radius=0.1, metric="cosine")


# ---------------------------------------------------------------------------------------------- texts
_REVIEW = ("the film was a slow and thoughtful portrait of a family coming apart, with strong performances from "
           "the whole cast and a quiet ending that stays with you")


def test_normalize_text():
    assert normalize_text("  Héllo,\tWORLD!! it's ２０２４ -- café_au_lait ") == "héllo world it s 2024 café au lait"
    assert normalize_text("Order #123 arrived", keep_digits=False) == "order arrived"
    with pytest.raises(InputError, match="normalize_text expects a str"):
        normalize_text(3)


def test_near_duplicate_texts_planted():
    texts = [
        _REVIEW,
        "a noisy action movie with terrible dialogue and far too many explosions for its own good",
        _REVIEW.replace("quiet", "loud"),                     # one word changed
        _REVIEW.upper() + "!!!",                               # same after normalisation
        "great movie",
        "great film",
        "",
        "?!",
        "...",
    ]
    groups = near_duplicate_groups_texts(texts)
    assert groups.tolist() == [0, -1, 0, 0, -1, -1, -1, -1, -1]


def test_near_duplicate_texts_threshold_is_checked_exactly():
    texts = [_REVIEW, _REVIEW.replace("quiet", "loud")]
    # Their exact shingle Jaccard similarity lies between 0.8 and 0.95.
    assert near_duplicate_groups_texts(texts, threshold=0.8).tolist() == [0, 0]
    assert near_duplicate_groups_texts(texts, threshold=0.95).tolist() == [-1, -1]


def test_near_duplicate_texts_many():
    rng = np.random.default_rng(0)
    words = np.array(("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega red blue green "
                      "yellow violet orange black white grey").split())
    texts = [" ".join(rng.choice(words, 30)) for _ in range(300)]
    copies = [t.replace(t.split()[5], "zzz", 1) for t in texts[:20]]
    groups = near_duplicate_groups_texts(texts + copies)
    assert np.array_equal(groups[:20], groups[300:])
    assert (groups[:20] >= 0).all() and (groups[20:300] == -1).all()


def test_near_duplicate_texts_errors():
    with pytest.raises(InputError, match=r"texts\[1\] is int"):
        near_duplicate_groups_texts(["a", 3])
    with pytest.raises(InputError, match="threshold must be > 0"):
        near_duplicate_groups_texts(["a"], threshold=0)
    with pytest.raises(InputError, match=r"threshold must be a finite number in \[0.0, 1.0\]"):
        near_duplicate_groups_texts(["a"], threshold=1.5)


# ---------------------------------------------------------------------------------------------- scores and table
def test_duplicate_scores_exact_values():
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, -1])
    labels = np.array([0, 0, 1, 4, 4, 5, 5, 5, 5, 5, 6])
    sources = np.array(["a", "a", "a", "b", "b", "s1", "s2", "s3", "s4", "s5", "a"])
    scores = duplicate_scores(groups, labels, sources)
    r3, r2, r5 = (REDUNDANCY_WEIGHT * (1 - 1 / k) for k in (3, 2, 5))
    assert scores[2] == pytest.approx(1.0)                       # minority label in its group
    assert scores[0] == pytest.approx(1 - 0.5 * (1 - r3))        # majority member of a conflicting group
    assert scores[3] == pytest.approx(r2)                        # same-source consistent pair: only redundancy
    assert scores[5] == pytest.approx(1 - (1 - 0.8) * (1 - r5))  # sybil group over 5 sources
    assert scores[10] == 0.0
    assert scores[5] > scores[3]
    # Without sources the spread evidence is absent.
    assert duplicate_scores(groups, labels)[5] == pytest.approx(r5)


def test_duplicate_group_table():
    groups = np.array([1, 0, 1, -1, 0, 1])
    labels = np.array([2, 0, 3, 1, 0, 2])
    sources = ["x", "y", "z", "x", "y", "x"]
    table = duplicate_group_table(groups, labels, sources, ids=["a", "b", "c", "d", "e", "f"])
    assert list(table.columns) == ["group", "size", "n_labels", "labels", "n_sources", "sources", "sample_ids"]
    first = table.iloc[0]
    assert (first["group"], first["size"], first["n_labels"], first["n_sources"]) == (1, 3, 2, 2)
    assert first["labels"] == [2, 3] and first["sources"] == ["x", "z"] and first["sample_ids"] == ["a", "c", "f"]
    assert table.iloc[1]["sample_ids"] == ["b", "e"]
    empty = duplicate_group_table(np.full(3, -1), np.zeros(3, int))
    assert len(empty) == 0 and "sources" not in empty.columns


def test_duplicate_scores_errors():
    with pytest.raises(InputError, match="groups has 2 entries but labels has 3 entries"):
        duplicate_scores(np.array([0, 0]), np.array([0, 1, 1]))
    with pytest.raises(InputError, match="group with a single member"):
        duplicate_scores(np.array([0, 1, 1]), np.array([0, 1, 1]))
    with pytest.raises(InputError, match="sources has 2 entries but labels has 3 entries"):
        duplicate_scores(np.array([0, 0, -1]), np.array([0, 1, 1]), ["a", "b"])
    with pytest.raises(InputError, match="groups must be integer group ids"):
        duplicate_scores(np.array([0.0, 0.0]), np.array([0, 1]))


# ---------------------------------------------------------------------------------------------- sources
@pytest.fixture(scope="module")
def contributors():
    """Eight clean sources, a bot, a label flipper, a backdoor source, five sybils and a 3-sample source."""
    rng = np.random.default_rng(0)
    n_classes = 10
    cols = {"source": [], "label": [], "pred": [], "score": [], "group": []}

    def add(name, labels, preds, scores, groups=None):
        cols["source"] += [name] * len(labels)
        cols["label"] += list(labels)
        cols["pred"] += list(preds)
        cols["score"] += list(scores)
        cols["group"] += list(groups) if groups is not None else [-1] * len(labels)

    for c in range(8):
        true = rng.integers(0, n_classes, 300)
        add(f"clean{c}", true, np.where(rng.random(300) < 0.1, rng.integers(0, n_classes, 300), true),
            rng.normal(0, 1, 300))
    true = rng.integers(0, n_classes, 300)
    add("bot", np.full(300, 3), true, rng.normal(0, 1, 300))
    true = rng.integers(0, n_classes, 300)
    add("flipper", np.where(rng.random(300) < 0.5, (true + 1) % n_classes, true), true, rng.normal(0, 1, 300))
    true = rng.integers(0, n_classes, 300)
    poisoned = rng.random(300) < 0.3
    label = np.where(poisoned, 7, true)
    add("backdoor", label, label, np.where(poisoned, rng.normal(3, 1, 300), rng.normal(0, 1, 300)))
    for s in range(5):
        true = rng.integers(0, n_classes, 40)
        add(f"sybil{s}", true, true, rng.normal(0, 1, 40), np.r_[np.arange(30), np.full(10, -1)])
    add("tiny", [0, 4, 8], [0, 4, 8], [0.5, 0.7, 0.9])
    return {k: np.array(v) for k, v in cols.items()}, n_classes


def test_source_table_ranks_planted_sources(contributors):
    d, n_classes = contributors
    table = source_table(d["source"], d["label"], n_classes=n_classes, predictions=d["pred"], scores=d["score"],
                         groups=d["group"])
    assert table.index.name == "source" and len(table) == 17
    assert table.index[0] == "bot" and table.loc["bot", "evidence"] == "label"
    assert table.loc["bot", "dominant_label"] == 3 and table.loc["bot", "dominant_share"] == 1.0
    assert table.loc["flipper", "evidence"] == "disagreement"
    assert table.loc["backdoor", "evidence"] in ("score", "label")
    assert all(table.loc[f"sybil{s}", "evidence"] == "shared" for s in range(5))
    assert all(table.loc[f"sybil{s}", "n_shared_groups"] == 30 for s in range(5))
    planted = ["bot", "flipper", "backdoor"] + [f"sybil{s}" for s in range(5)]
    assert set(table.index[:8]) == set(planted)
    assert (table.loc[planted, "source_suspicion"] > 10).all()
    clean = [f"clean{c}" for c in range(8)] + ["tiny"]
    assert (table.loc[clean, "source_suspicion"] < 2).all()
    assert (table.loc[clean, "q_value"] > 0.05).all()
    assert table.index.get_loc("tiny") >= 8


def test_source_table_tiny_source_cannot_top_by_chance():
    # A 3-sample source whose labels all disagree with the model, among sources that disagree 10% of the time.
    rng = np.random.default_rng(3)
    sources = np.repeat(["a", "b", "c", "tiny"], [200, 200, 200, 3])
    labels = rng.integers(0, 4, len(sources))
    preds = np.where(rng.random(len(sources)) < 0.1, (labels + 1) % 4, labels)
    preds[-3:] = (labels[-3:] + 1) % 4
    table = source_table(sources, labels, n_classes=4, predictions=preds)
    assert table.loc["tiny", "disagreement"] == 1.0
    assert table.loc["tiny", "source_suspicion"] < 3.0
    assert table.loc["tiny", "q_value"] > 0.01


def test_source_table_hand_computed_statistics():
    sources = np.array(["a"] * 6 + ["b"] * 4)
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0])
    preds = np.array([0, 0, 0, 1, 1, 0, 0, 1, 1, 1])
    flagged = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 0], dtype=bool)
    table = source_table(sources, labels, n_classes=2, predictions=preds, flagged=flagged)
    # Consensus: per class, the sample-weighted median share (a holds the larger half: its shares win).
    q = (np.array([0.5, 0.5]) * 10 + 0.5) / (10 + 1.0)
    assert table.loc["b", "label_js"] == pytest.approx(jensenshannon([1.0, 0.0], q, base=2) ** 2)
    g_b = 2 * 4 * np.log(1 / q[0])
    assert table.loc["b", "label_p"] == pytest.approx(stats.chi2.sf(g_b, 1))
    # Disagreement: b 3/4, all of class 0. Class 0's typical rate is the weighted median of a's 0/3 and b's 3/4
    # (b holds the larger half), with the half-count pseudo-count over the class's 7 samples; b's expectation is
    # that rate, since all its labels are 0.
    p0 = (0.75 * 7 + 0.5) / 8
    assert table.loc["b", "disagreement"] == 0.75
    assert table.loc["b", "disagreement_typical"] == pytest.approx(p0)
    assert table.loc["b", "disagreement_p"] == pytest.approx(stats.binom.sf(2, 4, p0))
    # a: class 0 at that rate, class 1 at its own 1/3 (pseudo-counted over 3 samples), weighed by a's labels.
    assert table.loc["a", "disagreement_typical"] == pytest.approx((3 * p0 + 3 * (1 / 3 * 3 + 0.5) / 4) / 6)
    assert table.loc["b", "flagged_share"] == 0.75
    m = 3
    best = min(table.loc["b", ["label_p", "disagreement_p", "flagged_p"]])
    assert table.loc["b", "source_suspicion"] == pytest.approx(-np.log10(min(1.0, m * best)))


def test_source_scores_carry_each_source_on_the_samples_that_make_it_unusual(contributors):
    d, n_classes = contributors
    table = source_table(d["source"], d["label"], n_classes=n_classes, predictions=d["pred"])
    among = table["suspicion_among_sources"]
    per_sample = source_scores(d["source"], d["label"], n_classes=n_classes, predictions=d["pred"])
    assert per_sample.shape == d["label"].shape
    own = {name: d["source"] == name for name in ("bot", "flipper", "backdoor", "clean0")}
    # The bot's excess is its one label: every sample carries it.
    assert table.loc["bot", ["evidence_among_sources", "excess_label"]].tolist() == ["label", 3]
    assert np.all(per_sample[own["bot"]] == among["bot"]) and per_sample.argmax() == np.flatnonzero(own["bot"])[0]
    # The flipper disagrees with the model: the samples the model disagrees with carry it, the half it left alone not.
    assert table.loc["flipper", "evidence_among_sources"] == "disagreement"
    wrong = d["label"] != d["pred"]
    np.testing.assert_array_equal(per_sample[own["flipper"]], np.where(wrong[own["flipper"]], among["flipper"], 0.0))
    # The backdoor source's excess is label 7 (its poison): its samples of other classes are clean and carry nothing.
    assert table.loc["backdoor", ["evidence_among_sources", "excess_label"]].tolist() == ["label", 7]
    sevens = d["label"][own["backdoor"]] == 7
    np.testing.assert_array_equal(per_sample[own["backdoor"]], np.where(sevens, among["backdoor"], 0.0))
    assert 0 < sevens.mean() < 0.5
    assert among["clean0"] < SOURCE_EVIDENCE_MIN and np.all(per_sample[own["clean0"]] == 0.0)
    # The attackers stand out; a clean source, and the sybils whose only mark is their shared copies (not given
    # here), do not. Never above a source's own corrected test.
    assert among["bot"] > 50 and among["flipper"] > 10 and among["backdoor"] > 2
    assert among[[f"clean{c}" for c in range(8)]].max() < SOURCE_EVIDENCE_MIN
    assert (among <= table["source_suspicion"] + 1e-9).all()


def test_a_contributor_of_hard_classes_is_not_read_as_disagreeing():
    # The model errs on 40% of class 0 and 2% of the others. "hard" holds mostly class 0; "flipper" flips 15% of
    # an ordinary mix. Against one typical rate "hard" would disagree far more than the others; against the rate
    # its class mix leads one to expect it does not.
    rng = np.random.default_rng(5)
    sources, labels, preds = [], [], []
    for name, size, p0, flip in [*[(f"c{i}", 300, 0.1, 0.0) for i in range(10)], ("hard", 300, 0.8, 0.0),
                                 ("flipper", 300, 0.1, 0.15)]:
        y = np.where(rng.random(size) < p0, 0, rng.integers(1, 5, size))
        wrong = rng.random(size) < np.where(y == 0, 0.4, 0.02)
        pred = np.where(wrong | (rng.random(size) < flip), (y + 1) % 5, y)
        sources += [name] * size
        labels += list(y)
        preds += list(pred)
    table = source_table(np.array(sources), np.array(labels), n_classes=5, predictions=np.array(preds))
    assert table.loc["hard", "disagreement"] > 2 * table.loc["c0", "disagreement"]
    assert table.loc["hard", "disagreement_p"] > 0.01
    assert table.loc["flipper", "disagreement_p"] < 1e-6


def test_a_large_honest_source_with_a_class_preference_is_not_read_as_an_attacker():
    rng = np.random.default_rng(3)
    labels, sources = [], []
    # 30 honest contributors, each with a mild class preference of its own; one of them holds 3,000 samples.
    for s, size in enumerate([3000] + [200] * 29):
        labels += list(rng.choice(10, size, p=rng.dirichlet(np.full(10, 3.0))))
        sources += [f"honest{s}"] * size
    labels += [5] * 150  # a bot labelling 150 samples of any class "5"
    sources += ["bot"] * 150
    y, src = np.array(labels), np.array(sources)
    table = source_table(src, y, n_classes=10)
    assert table.loc["honest0", "source_suspicion"] > 50  # its raw test: far beyond any threshold
    honest = [f"honest{s}" for s in range(30)]
    assert (table.loc[honest, "suspicion_among_sources"] < 2).mean() >= 0.9
    assert table.loc["honest0", "suspicion_among_sources"] < 2 < table.loc["bot", "suspicion_among_sources"]
    per_sample = pd.Series(source_scores(src, y, n_classes=10), index=src)
    assert per_sample["honest0"].iloc[0] == 0.0 and per_sample["bot"].iloc[0] > 10


def test_few_sources_keep_their_own_test():
    rng = np.random.default_rng(1)
    sources = np.repeat(["a", "b", "c"], 200)
    labels = np.where(np.repeat([False, False, True], 200), 1, rng.integers(0, 3, 600))
    table = source_table(sources, labels, n_classes=3)
    assert table.loc["c", "source_suspicion"] > 50
    assert table["suspicion_among_sources"].equals(table["source_suspicion"])


def test_source_table_errors():
    with pytest.raises(InputError, match="at least 2 are needed"):
        source_table(["a", "a"], [0, 1], n_classes=2)
    with pytest.raises(InputError, match="predictions has 1 entries but labels has 2 entries"):
        source_table(["a", "b"], [0, 1], n_classes=2, predictions=[0])
    with pytest.raises(InputError, match="flagged must be a boolean mask"):
        source_table(["a", "b"], [0, 1], n_classes=2, flagged=[0, 1])
    with pytest.raises(InputError, match="labels has class 2 but only 2 classes are known"):
        source_table(["a", "b"], [0, 2], n_classes=2)
    with pytest.raises(InputError, match="sources has 1 missing value"):
        source_table(["a", None], [0, 1], n_classes=2)
    with pytest.raises(InputError, match="n_classes must be a positive integer"):
        source_table(["a", "b"], [0, 1], n_classes=0)


# ---------------------------------------------------------------------------------------------- ensemble
def _ensemble_fixture():
    # 3 models, 4 samples, 2 classes; p[m, i] is the probability of class 1.
    p1 = np.array([[0.8, 0.5, 0.9, 0.2],
                   [0.6, 0.5, 0.9, 0.2],
                   [0.3, 0.1, 0.9, 0.2]])
    probs = np.stack([1 - p1, p1], axis=2)
    labels = np.array([1, 0, 1, 1])
    in_train = np.array([[False, True, True, False],
                         [False, True, True, False],
                         [True, False, True, False]])
    return probs, labels, in_train


def test_ensemble_disagreement_exact_values():
    probs, labels, in_train = _ensemble_fixture()
    scores = ensemble_disagreement(probs, labels, in_train)
    # Sample 0: held out by models 0 and 1: p(label) 0.8, 0.6 -> 1 - 0.7 + 0.1.
    # Sample 1: held out by model 2 only: p(label 0) = 0.9 -> 0.1 + 0.
    # Sample 2: trained on by every model -> NaN. Sample 3: all three give 0.2 -> 0.8 + 0.
    np.testing.assert_allclose(scores, [0.4, 0.1, np.nan, 0.8], atol=1e-12)
    table = ensemble_table(probs, labels, in_train)
    assert table["n_held_out"].tolist() == [2, 1, 0, 3]
    np.testing.assert_allclose(table["std_p_label"], [0.1, 0.0, np.nan, 0.0], atol=1e-12)
    strict = ensemble_disagreement(probs, labels, in_train, min_held_out=2)
    np.testing.assert_allclose(strict, [0.4, np.nan, np.nan, 0.8], atol=1e-12)


def test_ensemble_errors():
    probs, labels, in_train = _ensemble_fixture()
    with pytest.raises(InputError, match=r"in_train must have shape \(n_models, n_samples\) = \(3, 4\)"):
        ensemble_disagreement(probs, labels, in_train[:2])
    with pytest.raises(InputError, match="in_train must be a boolean array"):
        ensemble_disagreement(probs, labels, in_train.astype(int))
    with pytest.raises(InputError, match="probs must be 3-D"):
        ensemble_disagreement(probs[0], labels, in_train)
    with pytest.raises(InputError, match="rows sum to 1"):
        ensemble_disagreement(probs * 2, labels, in_train)
    with pytest.raises(InputError, match="labels has class 2 but only 2 classes are known"):
        ensemble_disagreement(probs, np.array([0, 1, 2, 0]), in_train)
    with pytest.raises(InputError, match="min_held_out must be an integer >= 1"):
        ensemble_disagreement(probs, labels, in_train, min_held_out=0)


def test_sources_that_share_copies_are_carried_by_their_shared_samples_only():
    # Twenty honest contributors; five sybils that each hold 40 samples of their own and 20 copies shared among them.
    rng = np.random.default_rng(7)
    sources, labels, groups = [], [], []
    for s in range(20):
        sources += [f"honest{s}"] * 200
        labels += list(np.arange(200) % 10)
        groups += [-1] * 200
    for s in range(5):
        sources += [f"sybil{s}"] * 60
        labels += list(rng.integers(0, 10, 60))
        groups += list(range(20)) + [-1] * 40
    src, y, g = np.array(sources), np.array(labels), np.array(groups)
    table = source_table(src, y, n_classes=10, groups=g)
    sybils = [f"sybil{s}" for s in range(5)]
    assert (table.loc[sybils, "evidence_among_sources"] == "shared").all()
    assert (table.loc[sybils, "suspicion_among_sources"] >= SOURCE_EVIDENCE_MIN).all()
    per_sample = source_scores(src, y, n_classes=10, groups=g)
    shared = g >= 0
    sybil = np.isin(src, sybils)
    assert np.all(per_sample[sybil & shared] > SOURCE_EVIDENCE_MIN)
    assert np.all(per_sample[sybil & ~shared] == 0.0) and np.all(per_sample[~sybil] == 0.0)
