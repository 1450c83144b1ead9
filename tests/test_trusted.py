"""A trusted set: its labels around each sample, and how far each sample lies from it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from forensics import investigate
from forensics.data import Dataset
from forensics.errors import InputError
from forensics.redteam import patch_backdoor, random_label_flips
from forensics.signals.trusted import trusted_disagreement, trusted_distance


def test_trusted_neighbours_outvote_a_relabelled_cluster():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 8))
    labels = np.repeat([0, 1, 2], 100)
    x = centres[labels] + rng.normal(0, 1, (300, 8))
    flipped = np.arange(0, 40)  # 40 of class 0 relabelled 1: enough to fill their own neighbourhood
    given = labels.copy()
    given[flipped] = 1
    t_labels = np.repeat([0, 1, 2], 10)
    t = centres[t_labels] + rng.normal(0, 1, (30, 8))
    score = trusted_disagreement(x, given, t, t_labels, k=5)
    assert score.shape == (300,) and score[flipped].min() >= 0.8
    assert np.delete(score, flipped).mean() < 0.05
    far = trusted_distance(x, given, t, t_labels)
    assert roc_auc_score(np.isin(np.arange(300), flipped), far) > 0.95  # far from every trusted "1"
    with pytest.raises(InputError, match="trusted activations have 4 dimensions but the data's have 8"):
        trusted_disagreement(x, given, t[:, :4], t_labels)
    with pytest.raises(InputError, match="the trusted set has 1 sample"):
        trusted_distance(x, given, t[:1], t_labels[:1])
    assert np.isnan(trusted_distance(x, given, t[t_labels != 2], t_labels[t_labels != 2])[labels == 2]).all()


@pytest.fixture(scope="module")
def digits_split():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    d = load_digits()
    images = (d.images * 16).clip(0, 255).astype(np.uint8)
    full = Dataset.from_numpy(images, d.target, ids=[f"digit-{i:04d}" for i in range(len(images))])
    held = np.zeros(len(full), dtype=bool)
    held[np.random.default_rng(0).permutation(len(full))[:200]] = True
    return full.subset(~held), full.subset(held)


def test_investigate_with_a_trusted_set_finds_flips_through_it(digits_split):
    from forensics.models import train_reference_model

    data, trusted = digits_split
    flips = random_label_flips(data, rate=0.1, random_state=0)
    ds = flips.dataset
    poison = flips.truth.loc[ds.ids, "is_poison"].to_numpy(bool)
    model = train_reference_model(ds, epochs=8, random_state=0, progress=False)
    inv = investigate(ds, model, signals=("trusted_disagreement", "trusted_distance", "spectral"), trusted=trusted,
                      progress=False)
    scores = inv.signals
    assert roc_auc_score(poison, scores["trusted_disagreement_score"]) > 0.9
    assert "trusted_disagreement" in inv.params["signals"]
    without = investigate(ds, model, signals=("trusted_disagreement", "spectral"), progress=False)
    assert without.params["skipped_signals"] == {
        "trusted_disagreement": "needs a trusted set (investigate(..., trusted=dataset))"}
    with pytest.raises(InputError, match="trusted sample\\(s\\) are also in the dataset"):
        investigate(ds, model, signals=("spectral",), trusted=ds.subset(np.arange(len(ds)) < 5), progress=False)
    other = Dataset.from_numpy(trusted.images, trusted.labels % 2, class_names=["a", "b"])
    with pytest.raises(InputError, match="trusted holds images of classes \\['a', 'b'\\]"):
        investigate(ds, model, signals=("spectral",), trusted=other, progress=False)
    with pytest.raises(InputError, match="trusted needs the model"):
        investigate(ds, activations=inv.features, signals=("spectral",), trusted=trusted, progress=False)


def test_a_trusted_set_sees_a_patch_the_model_learned(digits_split):
    from forensics.models import train_reference_model

    data, trusted = digits_split
    p = patch_backdoor(data, target=0, n=60, size=2, random_state=0)
    ds = p.dataset
    poison = p.truth.loc[ds.ids, "is_poison"].to_numpy(bool)
    model = train_reference_model(ds, epochs=8, random_state=0, progress=False)
    inv = investigate(ds, model, signals=("trusted_distance",), trusted=trusted, progress=False)
    assert roc_auc_score(poison, inv.signals["trusted_distance_score"]) > 0.9


def test_the_trusted_signals_join_the_default_set_only_when_a_trusted_set_is_given():
    from forensics.analysis import compute_signals

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 5)), np.repeat([0, 1, 2], 20)
    _, info = compute_signals(x, y)
    assert not any(name.startswith("trusted") for name in [*info["signals"], *info["skipped"]])
    _, info = compute_signals(x, y, trusted=(rng.normal(size=(9, 5)), np.repeat([0, 1, 2], 3)))
    assert {"trusted_disagreement", "trusted_distance"} <= set(info["signals"])


def test_clean_scores_anchor_a_fitted_null_that_the_poison_inflates():
    from forensics.signals.combine import combine, tail_probability

    rng = np.random.default_rng(0)
    # A poisoned fifth lies beyond the bulk's 87.5th percentile: the tail fitted to the bulk is partly the poison's.
    clean, poison = rng.normal(size=1600), rng.normal(3.0, 0.3, 400)
    s, labels = np.r_[clean, poison], np.zeros(2000, dtype=int)
    reference = rng.normal(size=600)  # the same signal on samples known to be clean
    bulk = combine({"spectral": s}, labels).tail_p["spectral"].to_numpy()
    anchored = combine({"spectral": s}, labels, null_scores={"spectral": reference}).tail_p["spectral"].to_numpy()
    np.testing.assert_allclose(anchored, tail_probability(s, reference=reference, max_gain=len(s)))
    assert np.median(anchored[1600:]) < np.median(bulk[1600:]) / 5
    assert np.mean(anchored[:1600] < 0.01) <= 0.01  # the clean samples are not the price
    for bad, message in (({"high_loss": reference}, "only a combined signal with a fitted null"),
                         ({"robust_spectral": reference}, "only a combined signal with a fitted null"),
                         ({"spectral": [np.nan, 1.0]}, "fewer than 2 finite scores")):
        with pytest.raises(InputError, match=message):
            combine({"spectral": s, "high_loss": np.abs(s)}, labels, null_scores=bad)


def test_a_large_trusted_set_is_scored_with_the_data_and_anchors_the_nulls():
    from forensics.analysis import compute_signals
    from forensics.signals.combine import combine

    rng = np.random.default_rng(2)
    centres = rng.normal(scale=4, size=(3, 8))
    y, ty = np.repeat([0, 1, 2], 400), np.repeat([0, 1, 2], 200)
    x = centres[y] + rng.normal(size=(1200, 8))
    x[:60] += 3.0  # a shifted group in class 0
    tx = centres[ty] + rng.normal(size=(600, 8))
    probs = np.full((1200, 3), 0.1)
    probs[np.arange(1200), y] = 0.8
    tprobs = np.full((600, 3), 0.1)
    tprobs[np.arange(600), ty] = 0.8
    chosen = ("spectral", "knn_disagreement", "low_loss", "trusted_distance")
    table, info = compute_signals(x, y, probs=probs, trusted=(tx, ty, tprobs), signals=chosen)
    assert info["anchored"] == ["knn_disagreement", "low_loss", "spectral"]
    _, flip_info = compute_signals(x, y, probs=probs, trusted=(tx, ty, tprobs), signals=("targeted_flip",))
    assert flip_info["anchored"] == ["targeted_flip"] and "relabelled_pairs" in flip_info  # kept from the union
    assert list(table.columns[:4]) == [f"{name}_score" for name in chosen]  # the order asked for
    # Each anchored signal scored the data and the trusted samples together; the trusted rows are its null.
    union, _ = compute_signals(np.vstack([x, tx]), np.r_[y, ty], probs=np.vstack([probs, tprobs]),
                               signals=chosen[:3])
    for name in chosen[:3]:
        np.testing.assert_allclose(table[f"{name}_score"], union[f"{name}_score"][:1200])
    scores = {name: table[f"{name}_score"].to_numpy() for name in chosen}
    nulls = {name: union[f"{name}_score"].to_numpy()[1200:] for name in chosen[:3]}
    np.testing.assert_allclose(table["suspicion"], combine(scores, y, null_scores=nulls).suspicion)
    # Without the trusted probabilities, a signal that reads them keeps the bulk's null; below 500 trusted
    # samples, none is anchored.
    assert compute_signals(x, y, probs=probs, trusted=(tx, ty), signals=chosen)[1]["anchored"] == [
        "knn_disagreement", "spectral"]
    assert compute_signals(x, y, probs=probs, trusted=(tx[:499], ty[:499], tprobs[:499]),
                           signals=chosen)[1]["anchored"] == []
    for n in (600, 100):  # checked whether or not the set is large enough to anchor
        with pytest.raises(InputError, match=rf"the trusted probabilities have shape \({n}, 2\); expected \({n}, 3\)"):
            compute_signals(x, y, probs=probs, trusted=(tx[:n], ty[:n], tprobs[:n, :2]), signals=chosen)
    with pytest.raises(InputError, match="the trusted activations have 4 dimensions but the data's have 8"):
        compute_signals(x, y, trusted=(tx[:, :4], ty), signals=chosen[:2])


def test_investigate_keeps_the_trusted_null_for_every_later_recombination(tmp_path):
    from forensics.investigation import Investigation
    from forensics.models import train_reference_model
    from forensics.signals.combine import combine
    from forensics.signals.registry import score_columns

    d = load_digits()
    images = (d.images * 16).clip(0, 255).astype(np.uint8)
    full = Dataset.from_numpy(images, d.target, ids=[f"digit-{i:04d}" for i in range(len(images))])
    held = np.zeros(len(full), dtype=bool)
    held[np.random.default_rng(1).permutation(len(full))[:520]] = True
    flips = random_label_flips(full.subset(~held), rate=0.1, random_state=0)
    model = train_reference_model(flips.dataset, epochs=4, random_state=0, progress=False)
    inv = investigate(flips.dataset, model, signals=("spectral", "knn_disagreement", "high_loss", "trusted_distance"),
                      trusted=full.subset(held), progress=False)
    assert inv.params["anchored_signals"] == ["knn_disagreement", "spectral"]
    assert {k: len(v) for k, v in inv.null_scores.items()} == {"knn_disagreement": 520, "spectral": 520}
    scores = score_columns(inv.signals)
    np.testing.assert_allclose(inv.signals["suspicion"],
                               combine(scores, inv.dataset.labels, null_scores=inv.null_scores).suspicion)
    inv.save(tmp_path / "inv")
    loaded = Investigation.load(tmp_path / "inv")
    for name, values in inv.null_scores.items():
        np.testing.assert_array_equal(loaded.null_scores[name], values)
    assert len(loaded.plan().table) == len(inv.plan().table)
