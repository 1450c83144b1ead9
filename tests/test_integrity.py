"""Integrity: manifests (round trip, tamper detection), diffs on planted changes, canary reports."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

import forensics
from forensics.data import Dataset, concat, text_hash
from forensics.errors import InputError, IntegrityError
from forensics.integrity import (
    MANIFEST_COLUMNS,
    Manifest,
    canary_report,
    diff,
    load_manifest,
    make_manifest,
    manifest_from_arrays,
    save_manifest,
)

T0 = pd.Timestamp("2024-01-01 00:00", tz="UTC")
T1 = pd.Timestamp("2024-02-01 00:00", tz="UTC")
CLASSES = ["cat", "dog", "bird"]


def _base() -> Dataset:
    """30 texts: s00..s14 from vendor-a, s15..s29 from vendor-b."""
    ids = [f"s{i:02d}" for i in range(30)]
    return Dataset.from_texts([f"text number {i}" for i in range(30)], [i % 3 for i in range(30)], ids=ids,
                              class_names=CLASSES, sources=["vendor-a"] * 15 + ["vendor-b"] * 15)


def _next_version(base: Dataset) -> Dataset:
    """Planted: 2 removed, 4 relabelled, 1 payload modified, 1 moved source, 3 added by new-vendor."""
    keep = ~np.isin(base.ids, ["s00", "s16"])
    kept = base.subset(keep)
    labels = kept.labels.copy()
    pos = kept.positions(["s01", "s02", "s03", "s17"])
    labels[pos] = (labels[pos] + 1) % 3
    texts = kept.texts.copy()
    texts[kept.positions(["s04"])[0]] = "text number 4, quietly edited"
    sources = kept.sources.copy()
    sources[kept.positions(["s18"])[0]] = "vendor-c"
    changed = kept.replace(labels=labels, texts=texts, sources=sources)
    extra = Dataset.from_texts(["fresh a", "fresh b", "fresh c"], [1, 1, 1], ids=["n1", "n2", "n3"],
                               class_names=CLASSES, sources=["new-vendor"] * 3)
    return concat([changed, extra])


@pytest.fixture(scope="module")
def versions() -> tuple[Manifest, Manifest]:
    old = make_manifest(_base(), time_added=T0)
    new = make_manifest(_next_version(_base()), time_added=T1, previous=old)
    return old, new


# ---------------------------------------------------------------- manifests
def test_manifest_records_every_sample_with_its_hash_label_source_and_time():
    ds = _base()
    m = make_manifest(ds, time_added=T0)
    assert m.n == 30 and m.class_names == tuple(CLASSES) and m.toolkit_version == forensics.__version__
    assert tuple(m.table.columns) == MANIFEST_COLUMNS and m.table.index.name == "sample_id"
    assert list(m.table.index) == list(ds.ids)
    row = m.table.loc["s17"]
    assert row["content_hash"] == text_hash("text number 17")
    assert (row["label"], row["label_name"], row["source"]) == (2, "bird", "vendor-b")
    assert (m.table["time_added"] == T0).all()
    assert str(m.table["time_added"].dtype) == "datetime64[us, UTC]"
    assert m.created.tzinfo is not None and m.created > T0


def test_time_added_is_kept_for_samples_already_recorded(versions):
    old, new = versions
    t = new.table["time_added"]
    assert (t.loc[["n1", "n2", "n3"]] == T1).all()
    # Unchanged, relabelled and modified samples all keep the time their id first appeared.
    assert (t.drop(["n1", "n2", "n3"]) == T0).all()
    assert len(t) == 31


@pytest.mark.parametrize("with_sources", [True, False])
def test_save_and_load_round_trip(tmp_path, with_sources):
    ds = _base() if with_sources else Dataset.from_texts(["a", "b", "c"], [0, 1, 0], ids=["x", "y", "z"])
    m = make_manifest(ds, time_added=T0)
    path = save_manifest(m, tmp_path / "v1.parquet")
    back = load_manifest(path)
    pd.testing.assert_frame_equal(back.table, m.table)
    assert (back.class_names, back.created, back.toolkit_version, back.n) == (
        m.class_names, m.created, m.toolkit_version, m.n)
    sidecar = json.loads((tmp_path / "v1.parquet.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["n"] == m.n and sidecar["class_names"] == list(m.class_names)
    assert sidecar["format"] == "forensics-manifest" and sidecar["format_version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1.parquet", "v1.parquet.json"]  # no temp files left


def _flip_byte(path, side):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path, side):
    path.write_bytes(path.read_bytes()[:-100])


def _delete_sidecar(path, side):
    side.unlink()


def _edit_sidecar_checksum(path, side):
    meta = json.loads(side.read_text())
    meta["sha256"] = "0" * 64
    side.write_text(json.dumps(meta))


def _edit_sidecar_classes(path, side):
    meta = json.loads(side.read_text())
    meta["class_names"] = ["cat", "dog", "wolf"]  # checksum still matches the Parquet bytes
    side.write_text(json.dumps(meta))


def _garble_sidecar(path, side):
    side.write_text("{not json")


@pytest.mark.parametrize("tamper", [_flip_byte, _truncate, _delete_sidecar, _edit_sidecar_checksum,
                                    _edit_sidecar_classes, _garble_sidecar])
def test_tampering_raises_integrity_error_naming_the_file(tmp_path, versions, tamper):
    path = save_manifest(versions[0], tmp_path / "v1.parquet")
    tamper(path, tmp_path / "v1.parquet.json")
    with pytest.raises(IntegrityError, match=re.escape(str(path))):
        load_manifest(path)


def test_checksum_mismatch_message_says_what_happened(tmp_path, versions):
    path = save_manifest(versions[0], tmp_path / "v1.parquet")
    _truncate(path, None)
    with pytest.raises(IntegrityError, match="checksum mismatch.*changed, replaced or truncated"):
        load_manifest(path)


def test_missing_manifest_or_folder_is_an_input_error(tmp_path, versions):
    with pytest.raises(InputError, match="no such manifest file"):
        load_manifest(tmp_path / "nothing.parquet")
    with pytest.raises(InputError, match="the folder .*absent does not exist"):
        save_manifest(versions[0], tmp_path / "absent" / "m.parquet")
    with pytest.raises(InputError, match="ends in .json; give the Parquet file's path"):
        save_manifest(versions[0], tmp_path / "m.json")


def test_saving_over_an_existing_manifest_replaces_both_files(tmp_path, versions):
    old, new = versions
    path = save_manifest(old, tmp_path / "m.parquet")
    save_manifest(new, path)
    assert load_manifest(path).n == 31


def test_manifest_input_errors():
    with pytest.raises(InputError, match="ids must be unique; 1 id"):
        manifest_from_arrays(["a", "a"], ["h1", "h2"], [0, 1], class_names=CLASSES)
    with pytest.raises(InputError, match=r"labels\[1\] = 3 is outside class_names \(0..2, 3 classes\)"):
        manifest_from_arrays(["a", "b"], ["h1", "h2"], [0, 3], class_names=CLASSES)
    with pytest.raises(InputError, match="hashes has 1 entries but ids has 2"):
        manifest_from_arrays(["a", "b"], ["h1"], [0, 1], class_names=CLASSES)
    with pytest.raises(InputError, match="hashes must be text.*got bytes"):
        manifest_from_arrays(["a", "b"], [b"h1", b"h2"], [0, 1], class_names=CLASSES)
    with pytest.raises(InputError, match=r"sources\[1\] is missing"):
        manifest_from_arrays(["a", "b"], ["h1", "h2"], [0, 1], class_names=CLASSES, sources=["v", None])
    with pytest.raises(InputError, match="time_added must carry a time zone"):
        manifest_from_arrays(["a"], ["h1"], [0], class_names=CLASSES, time_added="2024-01-01")
    with pytest.raises(InputError, match="labels must be integer indices into class_names; got dtype float64"):
        manifest_from_arrays(["a"], ["h1"], [0.5], class_names=CLASSES)
    with pytest.raises(InputError, match="previous must be a Manifest or None; got dict"):
        manifest_from_arrays(["a"], ["h1"], [0], class_names=CLASSES, previous={})
    with pytest.raises(InputError, match="dataset must be a forensics.data.Dataset; got list"):
        make_manifest([1, 2])


def test_integer_ids_become_text_and_time_zones_convert_to_utc():
    m = manifest_from_arrays(np.array([7, 8]), ["h1", "h2"], [0, 1], class_names=CLASSES,
                             time_added=pd.Timestamp("2024-01-01 02:00", tz="Europe/Paris"))
    assert list(m.table.index) == ["7", "8"]
    assert m.table["time_added"].iloc[0] == pd.Timestamp("2024-01-01 01:00", tz="UTC")


# ---------------------------------------------------------------- diff
def test_diff_finds_exactly_the_planted_changes(versions):
    d = diff(*versions)
    assert sorted(d.added.index) == ["n1", "n2", "n3"] and set(d.added["source"]) == {"new-vendor"}
    assert sorted(d.removed.index) == ["s00", "s16"]
    assert sorted(d.relabelled.index) == ["s01", "s02", "s03", "s17"]
    assert d.relabelled.loc["s01", ["old_label_name", "new_label_name"]].tolist() == ["dog", "bird"]
    assert d.relabelled.loc["s17", ["old_label", "new_label"]].tolist() == [2, 0]
    assert list(d.modified.index) == ["s04"]
    assert d.modified.loc["s04", "new_content_hash"] == text_hash("text number 4, quietly edited")
    assert list(d.moved_source.index) == ["s18"]
    assert d.moved_source.loc["s18", ["old_source", "new_source"]].tolist() == ["vendor-b", "vendor-c"]
    assert (d.n_old, d.n_new, d.n_unchanged, d.n_changed) == (30, 31, 22, 11)
    assert d.classes_added == () and d.classes_removed == ()


def test_diff_by_source_counts_are_exact(versions):
    by = diff(*versions).by_source
    expected = pd.DataFrame(
        {
            "n_old": [0, 0, 15, 15],
            "n_new": [3, 1, 14, 13],
            "added": [3, 0, 0, 0],
            "removed": [0, 0, 1, 1],
            "relabelled": [0, 0, 3, 1],
            "modified": [0, 0, 1, 0],
            "moved_in": [0, 1, 0, 0],
            "moved_out": [0, 0, 0, 1],
            "changed": [3, 1, 5, 3],
            "n_samples": [3, 1, 15, 15],
            "share_changed": [1.0, 1.0, 5 / 15, 3 / 15],
        },
        index=pd.Index(["new-vendor", "vendor-c", "vendor-a", "vendor-b"], name="source"),
    )
    pd.testing.assert_frame_equal(by, expected, check_index_type=False, check_dtype=False)


def test_diff_summary_and_tidy_table(versions):
    d = diff(*versions)
    text = d.summary()
    assert re.search(r"added\s+3\n", text) and re.search(r"relabelled\s+4\n", text)
    assert re.search(r"moved source\s+1\n", text) and re.search(r"unchanged\s+22", text)
    assert text.index("new-vendor") < text.index("vendor-a")
    frame = d.to_frame()
    assert frame["change"].value_counts().to_dict() == {
        "relabelled": 4, "added": 3, "removed": 2, "modified": 1, "moved_source": 1}
    assert frame.loc["n1", "new_source"] == "new-vendor" and frame.loc["s00", "old_source"] == "vendor-a"
    assert "No changes." in diff(versions[0], versions[0]).summary()


def test_diff_maps_labels_by_class_name_when_class_lists_differ():
    old = manifest_from_arrays(["a", "b", "c"], ["h1", "h2", "h3"], [0, 1, 2], class_names=["cat", "dog", "bird"])
    # Same names in another order, "bird" dropped and "fish" added; only "c" really changed class.
    new = manifest_from_arrays(["a", "b", "c"], ["h1", "h2", "h3"], [1, 0, 2], class_names=["dog", "cat", "fish"])
    d = diff(old, new)
    assert list(d.relabelled.index) == ["c"]
    assert d.relabelled.loc["c", ["old_label_name", "new_label_name"]].tolist() == ["bird", "fish"]
    assert d.classes_added == ("fish",) and d.classes_removed == ("bird",)
    assert "Classes added: fish" in d.summary() and "Classes removed: bird" in d.summary()


def test_diff_without_sources_counts_one_unnamed_source():
    old = manifest_from_arrays(["a", "b"], ["h1", "h2"], [0, 1], class_names=CLASSES)
    new = manifest_from_arrays(["a", "c"], ["h9", "h3"], [0, 1], class_names=CLASSES)
    d = diff(old, new)
    assert (len(d.added), len(d.removed), len(d.modified), len(d.moved_source)) == (1, 1, 1, 0)
    assert len(d.by_source) == 1 and d.by_source.iloc[0]["changed"] == 3
    with pytest.raises(InputError, match="new must be a Manifest; got str"):
        diff(old, "new.parquet")


# ---------------------------------------------------------------- canaries
def _canaries() -> Dataset:
    return Dataset.from_texts([f"trusted {i}" for i in range(6)], [0, 0, 1, 1, 2, 2],
                              ids=[f"c{i}" for i in range(6)], class_names=CLASSES)


def test_canary_accuracy_and_drift_on_a_hand_made_example():
    now = np.array([0, 1, 1, 1, 2, 0])  # c1 and c5 wrong
    baseline = np.array([0, 0, 1, 2, 2, 2])  # c1, c3, c5 differ from now
    rep = canary_report(now, _canaries(), baseline_predictions=baseline)
    assert rep.accuracy == pytest.approx(4 / 6) and rep.baseline_accuracy == pytest.approx(5 / 6)
    assert list(rep.changed.index) == ["c1", "c3", "c5"] and rep.n_changed == 3
    assert rep.changed[["expected", "baseline", "now"]].values.tolist() == [[0, 0, 1], [1, 2, 1], [2, 2, 0]]
    assert rep.table.loc["c3", "now_name"] == "dog" and rep.table.loc["c3", "baseline_name"] == "bird"
    assert rep.table["correct"].tolist() == [True, False, True, True, True, False]
    per = rep.per_class
    assert per["n"].tolist() == [2, 2, 2]
    assert per["accuracy"].tolist() == [0.5, 1.0, 0.5]
    assert per["baseline_accuracy"].tolist() == [1.0, 0.5, 1.0]
    assert per["n_changed"].tolist() == [1, 1, 1]
    assert "3 canaries changed prediction" in rep.summary()


def test_canary_inputs_probabilities_callables_names_and_mappings_agree():
    ds = _canaries()
    labels = np.array([0, 1, 1, 1, 2, 0])
    probs = np.eye(3)[labels] * 0.7 + 0.1
    base = {f"c{i}": name for i, name in enumerate(["cat", "cat", "dog", "bird", "bird", "bird"])}
    base["not-a-canary"] = "dog"  # ids outside the canaries are ignored
    by_labels = canary_report(labels, ds, baseline_predictions=np.array([0, 0, 1, 2, 2, 2]))
    seen = []
    by_callable = canary_report(lambda d: seen.append(d) or probs, ds, baseline_predictions=base)
    assert seen[0] is ds
    base_series = pd.Series({k: CLASSES.index(v) for k, v in base.items()})
    by_names = canary_report(np.array(["cat", "dog", "dog", "dog", "bird", "cat"]), ds,
                             baseline_predictions=base_series)
    assert base_series.index[-1] == "not-a-canary" and len(base_series) == 7  # the caller's Series is untouched
    for rep in (by_callable, by_names):
        pd.testing.assert_frame_equal(rep.table, by_labels.table)
        pd.testing.assert_frame_equal(rep.per_class, by_labels.per_class)


def test_canaries_without_baseline_report_no_drift():
    rep = canary_report(np.array([0, 0, 1, 1, 2, 2]), _canaries())
    assert rep.accuracy == 1.0 and rep.baseline_accuracy is None and rep.n_changed is None
    assert rep.changed.empty and rep.table["changed"].isna().all()
    assert "No baseline given" in rep.summary()


def test_canary_input_errors():
    ds = _canaries()
    with pytest.raises(InputError, match="predict_fn_or_probs has 5 rows but there are 6 canaries"):
        canary_report(np.zeros(5, dtype=int), ds)
    with pytest.raises(InputError, match="has 2 columns but the canaries have 3 classes"):
        canary_report(np.full((6, 2), 0.5), ds)
    with pytest.raises(InputError, match="rows sum to 1"):
        canary_report(np.full((6, 3), 0.5), ds)
    with pytest.raises(InputError, match=r"the result of predict_fn_or_probs\[2\] = 7 is outside the 3 classes"):
        canary_report(lambda d: np.array([0, 0, 7, 0, 0, 0]), ds)
    with pytest.raises(InputError, match=r"baseline_predictions has no prediction for 2 canary id\(s\)"):
        canary_report(np.zeros(6, dtype=int), ds, baseline_predictions={"c0": 0, "c1": 0, "c2": 1, "c3": 1})
    with pytest.raises(InputError, match="neither class indices nor class names, for example 'wolf'"):
        canary_report(np.array(["cat"] * 5 + ["wolf"]), ds)
    with pytest.raises(InputError, match="canaries must be a forensics.data.Dataset"):
        canary_report(np.zeros(6, dtype=int), np.zeros(6))


def test_poisoned_retrain_changes_mostly_class_one_canaries():
    """A model retrained on digits with 30% of class 1 relabelled 7 drifts on the class-1 canaries."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    y = digits.target
    rng = np.random.default_rng(0)
    # 50 trusted canaries held out of training: 14 of class 1 and 4 of each other class.
    canary_pos = np.concatenate([rng.choice(np.flatnonzero(y == c), 14 if c == 1 else 4, replace=False)
                                 for c in range(10)])
    train = np.setdiff1d(np.arange(len(y)), canary_pos)
    x_train, y_clean = images[train].reshape(len(train), -1) / 255, y[train]
    y_poisoned = y_clean.copy()
    ones = np.flatnonzero(y_clean == 1)
    y_poisoned[rng.choice(ones, int(round(0.3 * len(ones))), replace=False)] = 7

    names = [str(c) for c in range(10)]
    canaries = Dataset.from_numpy(images[canary_pos], y[canary_pos], ids=[f"digit-{i}" for i in canary_pos],
                                  class_names=names)
    with threadpool_limits(1):
        clean = LogisticRegression(max_iter=2000).fit(x_train, y_clean)
        poisoned = LogisticRegression(max_iter=2000).fit(x_train, y_poisoned)
        baseline = dict(zip(canaries.ids, clean.predict(canaries.images.reshape(50, -1) / 255)))
        rep = canary_report(lambda ds: poisoned.predict_proba(ds.images.reshape(len(ds), -1) / 255), canaries,
                            baseline_predictions=baseline)

    assert rep.baseline_accuracy >= 0.9
    changed = rep.changed
    assert len(changed) >= 2
    # Mostly class-1 canaries, mostly now read as the attacker's 7.
    assert (changed["expected_name"] == "1").sum() > len(changed) / 2
    assert (changed["now_name"] == "7").sum() > len(changed) / 2
    ones_row = rep.per_class.loc["1"]
    assert ones_row["accuracy"] < ones_row["baseline_accuracy"]
    assert rep.per_class["n_changed"].idxmax() == "1"
