"""Shared marks: a patch identical to the pixel at one place in many images, found without a model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats
from sklearn.datasets import load_digits

from forensics import redteam, sample_data
from forensics.analysis import compute_signals
from forensics.data import Dataset
from forensics.errors import InputError
from forensics.signals import get_signal
from forensics.signals.marks import MARK_COLUMNS, fall_off, shared_mark_scores, shared_marks


@pytest.fixture(scope="module")
def bundled():
    return sample_data.load("image_backdoor")


@pytest.fixture(scope="module")
def fashion(bundled) -> Dataset:
    """2,000 clean Fashion-MNIST test images, with contributors."""
    test = bundled.test
    return Dataset.from_numpy(test.images, test.labels, ids=test.ids, class_names=test.class_names,
                              sources=[f"c{i % 7}" for i in range(len(test))])


@pytest.fixture(scope="module")
def clean_label(fashion):
    """A 3x3 checkerboard pasted on 12% of the T-shirts, labels kept."""
    return redteam.clean_label_patch(fashion, target=0, rate=0.12, random_state=4)


@pytest.fixture(scope="module")
def clean_label_model(clean_label):
    torch = pytest.importorskip("torch")
    from forensics.models import train_reference_model

    torch.set_num_threads(1)
    return train_reference_model(clean_label.dataset, epochs=1, random_state=0, progress=False)


def _rows(p) -> np.ndarray:
    return np.flatnonzero(p.truth.loc[p.dataset.ids, "is_poison"].to_numpy())


def test_a_clean_label_patch_is_the_one_mark_with_exactly_its_carriers(fashion):
    p = redteam.clean_label_patch(fashion, target=0, rate=0.12, source="c3", random_state=4)
    planted = _rows(p)
    assert len(planted) >= 20
    marks = shared_marks(p.dataset.images)
    assert list(marks.columns) == list(MARK_COLUMNS)
    [mark] = marks.itertuples()
    np.testing.assert_array_equal(mark.carriers, planted)
    assert mark.n_carriers == len(planted)
    # The 3x3 patch sits at rows and columns 25-27; the mark's box holds it.
    assert mark.row <= 25 and mark.col <= 25 and mark.row + mark.height >= 28 and mark.col + mark.width >= 28
    assert mark.height <= 6 and mark.width <= 6
    assert mark.chance < 1e-3 and mark.log10_p == pytest.approx(-np.log10(mark.chance))
    scores = shared_mark_scores(marks, len(p.dataset))
    assert (scores > 0).sum() == len(planted) and (scores[planted] == mark.log10_p).all()


def test_counting_a_block_of_places_at_a_time_changes_nothing(clean_label, monkeypatch):
    from forensics.signals import marks as module

    p = clean_label
    whole = shared_marks(p.dataset.images)
    monkeypatch.setattr(module, "_BLOCK", 3 * 26 * len(p.dataset))  # three rows of places per block: 9 blocks
    assert len(module._row_blocks(len(p.dataset), 26, 26)) == 9
    pd.testing.assert_frame_equal(shared_marks(p.dataset.images), whole)


def test_clean_images_have_no_mark(fashion):
    assert shared_marks(fashion.images).empty
    digits = (load_digits().images * 15).astype(np.uint8)  # 17 grey levels: many natural repeats
    assert shared_marks(digits).empty
    assert (shared_mark_scores(shared_marks(digits), len(digits)) == 0).all()


def test_a_faint_overlay_is_a_mark(fashion):
    # Two glyphs 5 grey levels bright in a corner of 3% of the images: on a black corner they are the same to the pixel.
    p = redteam.overlay_backdoor(fashion, target=3, rate=0.03, amplitude=5, text="7A", position="bottom-right",
                                 random_state=2)
    poison = np.flatnonzero(p.truth.loc[p.dataset.ids, "is_poison"].to_numpy(dtype=bool))
    [mark] = shared_marks(p.dataset.images).itertuples()
    assert np.isin(mark.carriers, poison).all() and len(mark.carriers) >= 0.8 * len(poison)
    assert shared_marks(p.dataset.images, min_contrast=64).empty  # what a contrast of 64 grey levels missed


def test_the_bundled_patch_is_a_mark_and_the_bots_relabelled_images_are_not(bundled):
    truth = sample_data.load_truth("image_backdoor").loc[bundled.train.ids]
    marks = shared_marks(bundled.train.images)
    [carriers] = marks["carriers"]
    np.testing.assert_array_equal(carriers, np.flatnonzero(truth["poison_kind"].to_numpy() == "patch"))


def _blobs(n: int, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """Smooth grey images: a few Gaussian blobs each, no two alike."""
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size))
    for _ in range(3):
        cy, cx = rng.uniform(0, size, (2, n, 1, 1))
        out += rng.uniform(60, 120, (n, 1, 1)) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(8, 40))
    return np.clip(out, 0, 255).astype(np.uint8)


def test_content_that_also_turns_up_at_other_places_is_no_mark():
    # A white square on black, drawn at a random place in every image and at the same place in 60 of them: the
    # same windows recur at that place, but they are the square's own edges, found all over the data.
    rng = np.random.default_rng(0)
    x = _blobs(600, rng) // 4
    rows, cols = rng.integers(0, 18, (2, 600))
    rows[:60], cols[:60] = 9, 9
    for i, (r, c) in enumerate(zip(rows, cols)):
        x[i, r:r + 6, c:c + 6] = 255
    assert shared_marks(x).empty
    # Without the others, the square at that place is a mark only where its windows have contrast that is the
    # same in every carrier: over a black background, not over a varying one (every window with contrast
    # holds some of the background; the limit the module states). Over a faint one (0-30 grey levels), the corners
    # that fall on black in some carriers are faint marks of those carriers, and of no other image.
    x[60:] = _blobs(540, rng) // 4
    assert shared_marks(x, min_contrast=64).empty
    faint = shared_marks(x)
    assert len(faint) and all(np.all(c < 60) for c in faint["carriers"])
    x[:60, 6:18, 6:18] = 0
    x[:60, 9:15, 9:15] = 255
    [mark] = shared_marks(x).itertuples()
    np.testing.assert_array_equal(mark.carriers, np.arange(60))
    assert (mark.row, mark.col, mark.height, mark.width) == (7, 7, 10, 10)


def test_copies_count_once_and_near_copies_are_not_a_mark():
    rng = np.random.default_rng(1)
    x = _blobs(400, rng)
    x[:40] = x[0]  # 40 exact copies: one image
    assert shared_marks(x).empty
    x[:40] = np.clip(x[0].astype(int) + rng.integers(-1, 2, (40, 24, 24)) * (rng.random((40, 24, 24)) < 0.01),
                     0, 255)  # 40 near copies: a few pixels differ, so most windows are shared, all over the image
    assert shared_marks(x, min_contrast=8).empty


def test_a_colour_patch_is_found_and_its_colour_matters():
    rng = np.random.default_rng(2)
    x = np.stack([_blobs(500, rng), _blobs(500, rng), _blobs(500, rng)], axis=-1)
    patch = rng.choice(np.array([0, 255], dtype=np.uint8), size=(4, 4, 3))
    x[100:160, 2:6, 18:22] = patch
    [mark] = shared_marks(x).itertuples()
    np.testing.assert_array_equal(mark.carriers, np.arange(100, 160))
    # Half of them with the colours swapped: two marks of 30 carriers each, both weaker.
    x[130:160, 2:6, 18:22] = patch[..., ::-1]
    two = shared_marks(x)
    assert len(two) == 2 and sorted(len(c) for c in two["carriers"]) == [30, 30]
    assert (two["log10_p"] < mark.log10_p).all()


def test_the_null_is_a_power_law_fitted_below_min_count():
    rng = np.random.default_rng(3)
    counts = stats.zipf(4.0).rvs(200_000, random_state=rng)
    alpha, base = fall_off(counts, 10)
    assert alpha == pytest.approx(4.0, abs=0.1)
    # base * zeta(alpha, m) is the expected number of counts m or more: checked where it can be counted.
    for m in (3, 5, 8):
        assert base * special.zeta(alpha, m) == pytest.approx((counts >= m).sum(), rel=0.15)
    # Counts at or above min_count (a planted patch) do not shape the null.
    assert fall_off(np.concatenate([counts, np.full(500, 60)]), 10) == (alpha, base)
    # No repeats at all: a cautious prior, not certainty.
    alpha0, base0 = fall_off(np.ones(1000, dtype=int), 10)
    assert 1 < alpha0 < 60 and 1e-4 < base0 * special.zeta(alpha0, 30) < 1e-2


def test_shared_mark_is_a_signal_with_exact_evidence(clean_label):
    p = clean_label
    ds = p.dataset
    features = np.random.default_rng(0).normal(size=(len(ds), 8)).astype(np.float32)
    table, info = compute_signals(features, ds.labels, dataset=ds, signals=("spectral", "shared_mark"))
    planted = _rows(p)
    assert get_signal("shared_mark").null == "exact_p"
    assert (table["shared_mark_score"].to_numpy() > 0).sum() == len(planted)
    top = np.argsort(-table["suspicion"].to_numpy(), kind="stable")[:len(planted)]
    assert set(top) == set(planted)
    assert all("pixel for pixel" in r for r in table["reasons"].to_numpy()[planted])
    assert isinstance(info["shared_marks"], pd.DataFrame)
    # Texts have no pixels: the signal says why it did not run.
    texts = Dataset.from_texts(["a b", "c d", "e f", "g h"], [0, 1, 0, 1])
    _, info = compute_signals(np.eye(4, dtype=np.float32), texts.labels, dataset=texts,
                              signals=("spectral", "shared_mark"))
    assert "shared_mark" in info["skipped"] and "images" in info["skipped"]["shared_mark"]
    tiny = Dataset.from_numpy(np.arange(16, dtype=np.uint8).reshape(4, 2, 2) * 9, [0, 1, 0, 1])
    _, info = compute_signals(np.eye(4, dtype=np.float32), tiny.labels, dataset=tiny,
                              signals=("spectral", "shared_mark"))
    assert info["skipped"]["shared_mark"] == "images smaller than its 3x3 window"


def test_input_errors_name_the_parameter():
    x = np.zeros((5, 8, 8), dtype=np.uint8)
    with pytest.raises(InputError, match="uint8"):
        shared_marks(x.astype(np.float32))
    with pytest.raises(InputError, match=r"\(n, height, width\) or \(n, height, width, channels\) with 1 or 3 channels last; got \(5, 8, 8, 2\)"):
        shared_marks(np.zeros((5, 8, 8, 2), dtype=np.uint8))
    with pytest.raises(InputError, match="empty"):
        shared_marks(x[:0])
    with pytest.raises(InputError, match="window 9 is larger"):
        shared_marks(x, window=9)
    with pytest.raises(InputError, match="min_count"):
        shared_marks(x, min_count=2)
    with pytest.raises(InputError, match="max_chance"):
        shared_marks(x, max_chance=0)
    bad = pd.DataFrame({"carriers": [np.array([7])], "log10_p": [3.0]})
    with pytest.raises(InputError, match="row 7 but there are 5"):
        shared_mark_scores(bad, 5)


def test_find_triggers_describes_a_mark_the_other_signals_missed(clean_label, clean_label_model):
    from forensics.analysis import investigate

    p, model = clean_label, clean_label_model
    ds = p.dataset
    # Without the shared_mark signal nothing gathers the patched T-shirts; the trigger search still lists them.
    inv = investigate(ds, model, signals=("spectral", "knn_disagreement"), progress=False)
    assert "shared_mark" not in inv.samples  # the signal did not run: find_triggers scans for marks itself
    table = inv.find_triggers()
    rows = table[table["description"].str.contains("a shared mark: the same to the pixel in", regex=False)]
    [row] = rows.itertuples()
    assert row.box == (25, 25, 3, 3) and row.local and not row.moves
    assert set(row.sample_ids) == set(np.asarray(ds.ids)[_rows(p)])
    assert f"in {len(_rows(p))} images, which chance would give" in row.description


def test_investigate_keeps_each_samples_mark_for_find_triggers(clean_label, clean_label_model, monkeypatch):
    from forensics.analysis import investigate
    from forensics.triggers import discover

    p, model = clean_label, clean_label_model
    ds = p.dataset
    inv = investigate(ds, model, signals=("spectral", "shared_mark"), progress=False)
    mark = inv.samples["shared_mark"].to_numpy()
    np.testing.assert_array_equal(np.flatnonzero(mark >= 0), _rows(p))
    assert (mark[mark >= 0] == 0).all()
    # find_triggers reads the marks back instead of scanning the images again.
    monkeypatch.setattr(discover.marks, "shared_marks", lambda *a, **k: pytest.fail("scanned the images again"))
    [(group, chance)] = discover._mark_groups(inv)
    np.testing.assert_array_equal(np.flatnonzero(group), _rows(p))
    assert chance == pytest.approx(10.0 ** -inv.signals["shared_mark_score"].max())
    inv.find_triggers()
