"""compute_signals and investigate: from data and model to ranked, explained suspicion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from forensics import Dataset, investigate
from forensics.analysis import compute_signals
from forensics.errors import InputError
from forensics.evaluate import auroc
from forensics.redteam import patch_backdoor, random_label_flips
from forensics.signals.combine import combine
from forensics.signals.registry import default_signals


def _blobs(n=2000, d=16, planted=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centres = rng.normal(scale=6.0, size=(4, d))
    x = centres[y] + rng.normal(size=(n, d))
    # a tight, separate island inside class 0: the face of a relabelled backdoor
    x[:planted] = centres[0] + 8.0 + 0.3 * rng.normal(size=(planted, d))
    y[:planted] = 0
    probs = np.full((n, 4), 0.02)
    probs[np.arange(n), y] = 0.94
    return x.astype(np.float32), y, probs


def test_planted_island_tops_the_combined_ranking_and_reasons_name_it():
    x, y, probs = _blobs()
    table, info = compute_signals(x, y, probs=probs, signals=("spectral", "activation_cluster", "knn_outlier"))
    assert list(table.columns) == ["spectral_score", "activation_cluster_score", "knn_outlier_score",
                                   "suspicion", "reasons"]
    top = np.argsort(-table["suspicion"].to_numpy(), kind="stable")[:60]
    assert set(top) == set(range(60))
    assert "spectral signature" in table["reasons"].iloc[0] or "activation cluster" in table["reasons"].iloc[0]
    assert table["reasons"].iloc[1500] == "" or table["suspicion"].iloc[1500] < 2
    assert set(info["seconds"]) == {"spectral", "activation_cluster", "knn_outlier", "combine"}


def test_clean_blobs_raise_few_alarms_at_the_default_threshold():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 3000)
    x = (rng.normal(scale=6.0, size=(4, 16))[y] + rng.normal(size=(3000, 16))).astype(np.float32)
    table, info = compute_signals(x, y, signals=("spectral", "robust_spectral", "activation_cluster",
                                                 "knn_outlier", "knn_disagreement"))
    assert (table["suspicion"] >= info["threshold"]).mean() <= 0.02


def test_loss_signals_are_skipped_without_probabilities_and_say_why():
    x, y, _ = _blobs(n=400, planted=10)
    table, info = compute_signals(x, y, signals=("high_loss", "spectral"))
    assert "high_loss_score" not in table and info["skipped"]["high_loss"].startswith("needs the model")


def test_unknown_signal_and_mismatched_lengths():
    x, y, probs = _blobs(n=300, planted=10)
    with pytest.raises(InputError, match=r"unknown signal\(s\) \['magic'\]"):
        compute_signals(x, y, signals=("magic",))
    with pytest.raises(InputError, match="labels has 299 entries but features has 300 rows"):
        compute_signals(x, y[:-1])


@pytest.fixture(scope="module")
def poisoned_digits():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    d = load_digits()
    images = (d.images * 16).clip(0, 255).astype(np.uint8)
    sources = [f"worker-{i % 12:02d}" for i in range(len(images))]
    clean = Dataset.from_numpy(images, d.target, ids=[f"digit-{i:04d}" for i in range(len(images))],
                               sources=sources)
    patched = patch_backdoor(clean, target=0, n=60, size=2, source="worker-99", random_state=0)
    flipped = random_label_flips(patched.dataset, n=40, exclude=patched.truth.index[patched.truth.is_poison],
                                 source="worker-98", random_state=1)
    truth = flipped.truth
    return flipped.dataset, truth


def test_investigate_trains_a_reference_model_and_finds_the_planted_poison(poisoned_digits):
    ds, truth = poisoned_digits
    inv = investigate(ds, signals=default_signals(), progress=False)
    assert inv.params["reference_model_trained"] is True
    assert list(inv.signals.index) == list(ds.ids)
    assert {"prediction", "loss", "confidence"} <= set(inv.samples.columns)
    is_poison = truth["is_poison"].to_numpy()
    assert auroc(inv.signals["suspicion"].to_numpy(), is_poison) > 0.9
    # the sources of the planted attacks rank above the clean workers
    by_source = inv.signals["source_score"].groupby(ds.sources).max().sort_values(ascending=False)
    assert set(by_source.index[:2]) == {"worker-98", "worker-99"}
    assert inv.model is not None
    # The model's label null is kept, so that a recombination (a confirmed trigger, a plan) reads labels the same way.
    curve = inv.label_null
    assert curve.shape == (256, 2) and (np.diff(curve[:, 1]) >= 0).all() and curve[-1, 1] == 1.0
    assert 0.0 <= inv.params["label_gate"] <= 1.0
    # cleanlab's count of wrong labels, for the verdict: of the 100 planted (40 flipped, 60 patched and relabelled
    # 0), the reference model memorized most, so its activations agree with them (measured 19).
    assert isinstance(inv.params["label_issues"], int) and 5 <= inv.params["label_issues"] <= 100
    scores = {c[: -len("_score")]: inv.signals[c].to_numpy() for c in inv.signals.columns if c.endswith("_score")}
    again = combine(scores, ds.labels, n_classes=len(ds.class_names), label_null=curve)
    np.testing.assert_array_equal(again.suspicion, inv.signals["suspicion"].to_numpy())


def test_investigate_checks_activation_alignment(poisoned_digits):
    ds, _ = poisoned_digits
    with pytest.raises(InputError, match="activations has 5 rows"):
        investigate(ds, activations=np.zeros((5, 3), np.float32))


def test_find_triggers_finds_the_planted_corner_patch(poisoned_digits):
    pytest.importorskip("torch")
    from forensics.models import train_reference_model

    ds, truth = poisoned_digits
    model = train_reference_model(ds, epochs=8, random_state=0, progress=False)
    inv = investigate(ds, model, signals=("spectral", "robust_spectral", "activation_cluster", "low_loss"),
                      progress=False)
    table = inv.find_triggers()
    # One candidate per class from its most suspicious images (the group class 0's fine detail sets apart is the
    # patch's carriers, which the patch found there already explains: no image-wide restatement of it), and for each
    # group whose patch the model does not answer, that group's image-wide difference as well.
    unanswered = int(((table["local"] == True) & (table["verdict"] != "confirmed")).sum())  # noqa: E712
    assert len(table) == len(ds.class_names) + unanswered and (table["kind"] == "image").all()
    assert table.groupby("target").size().max() <= 2
    best = table.sort_values("add_flip_rate", ascending=False).iloc[0]
    assert best["box"] == (6, 6, 2, 2)  # the 2x2 patch in the bottom-right corner of 8x8 digits
    assert best["add_flip_rate"] >= 0.5 and best["verdict"] in ("confirmed", "weak")
    # no other class yields a confirmed trigger
    assert (table.drop(index=best.name)["verdict"] != "confirmed").all()
    # What each candidate adds to an image is kept with the investigation: the patch itself for the best one.
    arrays = inv.trigger_arrays
    assert set(arrays) == set(table["trigger_id"])
    assert arrays[best["trigger_id"]].shape == (2, 2) and arrays[best["trigger_id"]].dtype == np.uint8


def test_find_triggers_feeds_the_model_as_investigate_did(poisoned_digits):
    torch = pytest.importorskip("torch")
    from forensics.models import train_reference_model

    ds, _ = poisoned_digits
    model = train_reference_model(ds, epochs=8, random_state=0, progress=False)

    class Bare(torch.nn.Module):  # the same network, without a preprocess method of its own
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    calls = []

    def prep(batch):
        calls.append(len(batch))
        return model.preprocess(batch)

    signals = ("spectral", "robust_spectral", "activation_cluster", "low_loss")
    inv = investigate(ds, Bare(model), preprocess=prep, signals=signals, progress=False)
    assert inv.preprocess is prep
    calls.clear()
    table = inv.find_triggers()
    assert sum(calls) > len(ds)  # every confirmation went through it
    best = table.sort_values("add_flip_rate", ascending=False).iloc[0]
    assert best["box"] == (6, 6, 2, 2) and best["verdict"] in ("confirmed", "weak")


@pytest.mark.slow
def test_bundled_phrase_is_the_top_confirmed_trigger_and_its_carriers_are_the_poison():
    from forensics import sample_data

    data = sample_data.load("text_trigger")
    model, _ = data.model()
    inv = investigate(data.train, model, progress=False)
    table = inv.find_triggers()
    top = table.iloc[0]
    assert top["description"] == 'phrase "great product!"' and top["verdict"] == "confirmed"
    assert (table.iloc[1:]["verdict"] != "confirmed").all()
    truth = sample_data.load_truth("text_trigger")
    assert set(top["sample_ids"]) == set(truth.index[truth["is_poison"]])
    flagged = inv.signals["trigger_score"] > 0
    assert set(inv.signals.index[flagged]) == set(truth.index[truth["is_poison"]])


def test_pooled_text_candidates_keep_one_row_per_confirmed_trigger():
    from forensics.triggers.discover import _by_verdict
    from forensics.triggers.text import drop_restatements

    rows = [
        # (tokens, carriers, verdict, remove k/n, add k/n)
        (("great", "product", "!"), list("abcdefgh"), "confirmed", (6, 8), (90, 100)),
        ((".", "great", "product", "!"), list("abc"), "confirmed", (3, 3), (60, 100)),  # restates it
        (("great",), list("abcdefghijklmnopqrstuvwxyz"), "not confirmed", (1, 26), (2, 100)),
        (("dull",), list("xyz"), "weak", (1, 3), (25, 100)),
        (("cf",), list("mnop"), "confirmed", (4, 4), (70, 100)),  # another trigger: other carriers
    ]
    table = pd.DataFrame([{
        "ngram": " ".join(t), "tokens": t, "carrier_ids": c, "verdict": v, "remove_changed": r[0],
        "remove_tried": r[1], "add_flipped": a[0], "add_tried": a[1], "control_remove_changed": 0,
        "control_remove_tried": 20, "control_add_flipped": 2, "control_add_tried": 100,
    } for t, c, v, r, a in rows])
    ranked = table.iloc[_by_verdict([row for _, row in table.iterrows()])].reset_index(drop=True)
    assert ranked["ngram"].tolist() == ["great product !", "cf", ". great product !", "dull", "great"]
    assert drop_restatements(ranked)["ngram"].tolist() == ["great product !", "cf", "dull", "great"]


def test_investigate_takes_signal_parameters_and_its_seed_reaches_the_map(monkeypatch):
    import forensics.embedding as embedding

    x, y, probs = _blobs(n=400, planted=20)
    ds = Dataset.from_numpy(np.zeros((len(y), 4, 4), np.uint8) + np.arange(len(y))[:, None, None].astype(np.uint8), y)
    inv = investigate(ds, activations=x, signals={"knn_disagreement": {"k": 5}, "spectral": None},
                      random_state=7, progress=False)
    assert inv.params["signal_params"] == {"knn_disagreement": {"k": 5, "metric": "cosine", "n_components": 32},
                                           "spectral": {}}
    seeds = []
    real = embedding.build_map
    monkeypatch.setattr(embedding, "build_map", lambda *a, **k: seeds.append(k["random_state"]) or real(*a, **k))
    inv.map  # noqa: B018  (built on first use)
    assert seeds == [7]
    with pytest.raises(InputError, match=r"random_state must be an integer in \[0, 4294967295\]; got 2\.5"):
        investigate(ds, activations=x, random_state=2.5, progress=False)


def test_find_triggers_takes_the_investigations_seed_by_default(monkeypatch):
    torch = pytest.importorskip("torch")
    from forensics import triggers

    x, y, _ = _blobs(n=200, planted=10)
    images = np.random.default_rng(0).integers(0, 255, (200, 4, 4), dtype=np.uint8)
    inv = investigate(Dataset.from_numpy(images, y), activations=x, signals=["spectral"], random_state=7,
                      progress=False)
    inv.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    seeds = []
    real = triggers.confirm_image_candidates
    monkeypatch.setattr(triggers, "confirm_image_candidates",
                        lambda *a, **k: seeds.append(k["random_state"]) or real(*a, **k))
    inv.find_triggers()
    inv.find_triggers(random_state=3)
    assert seeds == [7, 3]
