"""Investigation: review decisions that are never lost, crash-safe saves, replay from the audit log, exports."""

from __future__ import annotations

import csv
import json
import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import forensics
from forensics import _io, audit
from forensics.audit import AuditLog
from forensics.data import Dataset
from forensics.errors import ForensicsError, InputError, IntegrityError
from forensics.export import meta_path, restore_cell
from forensics.investigation import EXPORT_COLUMNS, MANIFEST, TRIGGER_COLUMNS, Investigation

IDS = ['=HYPERLINK("http://evil.example","x")', "+1", "@SUM(A1)", "-2+3", " =1", "s5", "s6", "s7"]
SOURCES = ["\t=1", "@bot", "-2+3", "alice", "alice", "bob", "=cmd|' /C calc'!A0", "bob"]
REASONS = ["=HYPERLINK(\"x\")", "+1", "high loss", "@SUM", "\t=1", "", "-2+3", ""]
SUSPICION = [0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.05]
CLUSTERS = [0, 0, 1, 1, 1, 2, 2, -1]


class FakeMap:
    """A map builder with a fixed result that counts its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, features, labels, *, ids, sources, suspicion, class_names):
        self.calls.append({"n": len(features), "ids": list(ids), "suspicion": np.asarray(suspicion),
                           "class_names": class_names})
        n = len(ids)
        table = pd.DataFrame({"size": [2, 3, 2, 1], "dominant_label": ["neg", "neg", "@pos", "@pos"]},
                             index=pd.Index([-1, 0, 1, 2], name="cluster"))
        return SimpleNamespace(coords=np.arange(2 * n, dtype=np.float32).reshape(n, 2),
                               clusters=np.asarray(CLUSTERS), table=table)


@pytest.fixture
def ds():
    texts = [f"review {i} =1+1 <b>" for i in range(8)]
    return Dataset.from_texts(texts, [0, 0, 0, 0, 1, 1, 1, 1], ids=IDS, sources=SOURCES,
                              class_names=["neg", "@pos"])


@pytest.fixture
def signals(ds):
    return pd.DataFrame({"loss_score": np.linspace(0, 1, 8), "suspicion": SUSPICION, "reasons": REASONS},
                        index=ds.ids)


@pytest.fixture
def fake_map():
    return FakeMap()


@pytest.fixture
def inv(ds, signals, fake_map):
    features = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    samples = ds.to_frame().assign(prediction=[0, 0, 1, 1, 1, 1, 1, 0], loss=np.linspace(0.1, 2, 8))
    return Investigation(ds, signals=signals, samples=samples, features=features,
                         params={"layer": "fc1", "seed": np.int64(3), "k": (5, 10)}, map_builder=fake_map)


def status(inv):
    return inv.review["status"].tolist()


def assert_same_state(a, b):
    for name in ("samples", "signals", "triggers", "review"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    assert a.params == b.params and a.id == b.id
    assert (a.features is None) == (b.features is None)
    if a.features is not None:
        np.testing.assert_array_equal(a.features, b.features)


# ------------------------------------------------------------------------------------------------ construction

def test_defaults_and_tables(ds, signals):
    inv = Investigation(ds, signals=signals)
    assert inv.samples.columns.tolist() == ["label", "label_name", "source", "content_hash"]
    assert inv.samples.index.tolist() == IDS and inv.samples.index.name == "sample_id"
    assert inv.signals["suspicion"].tolist() == SUSPICION
    assert inv.triggers.columns.tolist() == list(TRIGGER_COLUMNS) and len(inv.triggers) == 0
    assert status(inv) == ["unreviewed"] * 8
    assert inv.counts().to_dict() == {"unreviewed": 8, "suspected": 0, "confirmed": 0, "cleared": 0}
    assert inv.params == {} and inv.features is None and inv.folder is None
    assert inv.audit[0]["action"] == "start" and inv.audit[0]["payload"]["dataset_hash"] == ds.content_hash
    assert repr(inv) == "Investigation(text, 8 samples, 0 suspected, 0 confirmed, 0 cleared, not saved)"


def test_params_are_kept_as_json(inv):
    assert inv.params == {"layer": "fc1", "seed": 3, "k": [5, 10]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.iloc[::-1], r"signals's index must equal dataset.ids in order; row 0 .*use signals.reindex"),
        (lambda s: s.reset_index(drop=True), "signals is indexed by row number; index it by sample_id"),
        (lambda s: s.iloc[:5], "signals has 5 rows but the dataset has 8 samples"),
        (lambda s: s.drop(columns="suspicion"), "signals has no 'suspicion' column"),
        (lambda s: s.assign(reasons=[None] + REASONS[1:]), r"signals\['reasons'\] must hold one string per sample"),
        (lambda s: s.assign(suspicion=["high"] * 8), r"signals\['suspicion'\] must be numeric"),
        (lambda s: s.assign(loss_score=np.inf), r"signals\['loss_score'\] has infinite values"),
    ],
)
def test_signals_are_checked(ds, signals, change, message):
    with pytest.raises(InputError, match=message):
        Investigation(ds, signals=change(signals))


def test_other_inputs_are_checked(ds, signals):
    with pytest.raises(InputError, match="features has 3 rows but the dataset has 8 samples"):
        Investigation(ds, signals=signals, features=np.zeros((3, 2)))
    with pytest.raises(InputError, match="params must hold only JSON values"):
        Investigation(ds, signals=signals, params={"model": object()})
    with pytest.raises(InputError, match="samples has 2 rows but the dataset has 8 samples"):
        Investigation(ds, signals=signals, samples=ds.to_frame().iloc[:2])
    with pytest.raises(InputError, match="dataset must be a forensics.data.Dataset; got list"):
        Investigation([1, 2], signals=signals)
    # A saved investigation's label null is read, not trusted: a ragged or wrong one is named where it is used.
    assert Investigation(ds, signals=signals).label_null is None
    with pytest.raises(InputError, match=r"params\['label_null'\] must be a list of \[probability, share\] pairs"):
        _ = Investigation(ds, signals=signals, params={"label_null": [[0.5, 0.1], [1.0]]}).label_null
    from forensics.signals.combine import combine

    bent = Investigation(ds, signals=signals, params={"label_null": [[0.5, 0.9], [1.0, 0.2]]}).label_null
    with pytest.raises(InputError, match="label_null must be label_null"):
        combine({"high_loss": np.ones(8)}, np.zeros(8, dtype=np.int64), label_null=bent)
    inv = Investigation(ds, signals=signals)
    with pytest.raises(InputError, match=r"triggers has no column\(s\) \['verdict', 'sample_ids'\]"):
        inv.triggers = pd.DataFrame({c: [] for c in TRIGGER_COLUMNS[:-2]})


def test_map_is_built_once_on_first_access(inv, fake_map):
    assert not inv.has_map and fake_map.calls == []
    m = inv.map
    assert m.columns.tolist() == ["x", "y", "cluster"] and m.index.tolist() == IDS
    assert m["cluster"].tolist() == CLUSTERS and m["y"].iloc[1] == 3.0
    assert inv.clusters["size"].tolist() == [2, 3, 2, 1]
    assert len(fake_map.calls) == 1
    call = fake_map.calls[0]
    assert call["n"] == 8 and call["ids"] == IDS and call["class_names"] == ("neg", "@pos")
    assert call["suspicion"].tolist() == SUSPICION


def test_map_needs_features(ds, signals):
    with pytest.raises(InputError, match="this investigation has no features; pass features="):
        _ = Investigation(ds, signals=signals, map_builder=FakeMap()).map


def test_a_wrong_map_builder_result_is_named(ds, signals):
    bad = lambda *a, **k: SimpleNamespace(coords=np.zeros((8, 3)), clusters=np.zeros(8, int),  # noqa: E731
                                          table=pd.DataFrame())
    inv = Investigation(ds, signals=signals, features=np.zeros((8, 2)), map_builder=bad)
    with pytest.raises(InputError, match=r"map_builder returned coords of shape \(8, 3\).*expected numbers of "
                                         r"shape \(8, 2\)"):
        _ = inv.map


# ------------------------------------------------------------------------------------------------ review

def test_flag_confirm_clear_unflag(inv):
    assert inv.flag([IDS[0], IDS[3]], note="patch", who="alice").tolist() == [IDS[0], IDS[3]]
    inv.confirm(IDS[3], note="=confirmed", who="bob")
    inv.clear(np.array([IDS[5]]), who="bob")
    inv.flag(pd.Index([IDS[6]]), who="carol")
    inv.unflag([IDS[6]], who="carol")
    r = inv.review
    assert r.columns.tolist() == ["status", "note", "who", "when"]
    assert status(inv) == ["suspected", "unreviewed", "unreviewed", "confirmed", "unreviewed", "cleared",
                           "unreviewed", "unreviewed"]
    assert r.loc[IDS[0], "note"] == "patch" and r.loc[IDS[3], "note"] == "=confirmed"
    assert r.loc[IDS[3], "who"] == "bob" and r.loc[IDS[0], "who"] == "alice"
    assert str(r["when"].dt.tz) == "UTC" and pd.isna(r.loc[IDS[1], "when"])
    assert r.loc[IDS[3], "when"] >= r.loc[IDS[0], "when"]
    assert inv.counts().to_dict() == {"unreviewed": 5, "suspected": 1, "confirmed": 1, "cleared": 1}
    assert [e["action"] for e in inv.audit][1:] == ["flag", "confirm", "clear", "flag", "unflag"]
    assert inv.audit[1]["ids"] == [IDS[0], IDS[3]] and inv.audit[2]["note"] == "=confirmed"


def test_who_defaults_to_the_os_user(inv):
    inv.flag([IDS[1]])
    assert inv.review.loc[IDS[1], "who"] == audit.default_who() and inv.audit[1]["who"] == audit.default_who()


def test_selection_by_mask_series_and_cluster(inv):
    inv.flag(np.array(SUSPICION) > 0.6)
    assert inv.review.index[inv.review["status"] == "suspected"].tolist() == [IDS[0], IDS[3], IDS[6]]
    inv.clear(inv.signals["suspicion"] < 0.15)
    assert inv.review.loc[[IDS[1], IDS[7]], "status"].tolist() == ["cleared", "cleared"]
    picked = inv.confirm(cluster=1, note="cluster 1")
    assert picked.tolist() == [IDS[2], IDS[3], IDS[4]]
    assert inv.audit[-1]["payload"] == {"cluster": [1]} and inv.audit[-1]["ids"] == picked.tolist()
    inv.flag(cluster=[2, -1])
    assert status(inv)[5:] == ["suspected"] * 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selection": ["nope"]}, "sample id 'nope' is not in this dataset"),
        ({"selection": []}, "the selection is empty"),
        ({"selection": np.zeros(8, bool)}, "the selection is empty"),
        ({"selection": np.ones(3, bool)}, r"a boolean mask must have shape \(8,\)"),
        ({}, "give either a selection .* or cluster=..., not both or neither"),
        ({"selection": [IDS[0]], "cluster": 1}, "not both or neither"),
        ({"cluster": 7}, r"cluster 7 is not on the map; clusters are \[-1, 0, 1, 2\]"),
        ({"cluster": "1"}, "cluster must be an integer or a list of integers"),
        ({"selection": 3.5}, "selection must be sample ids or a boolean mask; got float"),
    ],
)
def test_bad_selections_change_nothing(inv, kwargs, message):
    selection = kwargs.pop("selection", None)
    with pytest.raises(InputError, match=message):
        inv.flag(selection, **kwargs)
    assert len(inv.audit) == 1 and status(inv) == ["unreviewed"] * 8


def test_undo_walks_back_and_is_audited(inv):
    inv.flag([IDS[0], IDS[1]], note="first", who="a")
    inv.confirm([IDS[1], IDS[2]], note="second", who="b")
    assert inv.undo(who="c").tolist() == [IDS[1], IDS[2]]
    r = inv.review
    assert r["status"].tolist()[:3] == ["suspected", "suspected", "unreviewed"]
    assert r.loc[IDS[1], "note"] == "first" and r.loc[IDS[1], "who"] == "a" and pd.isna(r.loc[IDS[2], "when"])
    inv.undo()
    assert status(inv) == ["unreviewed"] * 8
    with pytest.raises(InputError, match="nothing to undo"):
        inv.undo()
    entries = inv.audit.entries
    assert [e["action"] for e in entries] == ["start", "flag", "confirm", "undo", "undo"]
    assert entries[3]["payload"] == {"undoes": 2} and entries[4]["payload"] == {"undoes": 1}
    assert entries[3]["who"] == "c"


# ------------------------------------------------------------------------------------------------ export

def test_export_flagged_rows_and_columns(inv, tmp_path):
    inv.flag([IDS[2], IDS[7]], note="@note", who="alice")
    inv.confirm([IDS[0]], note="\t=1", who="bob")
    inv.clear([IDS[3]], who="bob")
    path = inv.export(tmp_path / "flagged.parquet")
    df = pd.read_parquet(path)
    assert df.columns.tolist() == list(EXPORT_COLUMNS)
    assert df["sample_id"].tolist() == [IDS[0], IDS[2], IDS[7]]  # by decreasing suspicion
    assert df["status"].tolist() == ["confirmed", "suspected", "suspected"]
    assert df["label"].tolist() == ["neg", "neg", "@pos"] and df["source"].tolist() == [SOURCES[0], SOURCES[2],
                                                                                        SOURCES[7]]
    assert df["suspicion"].tolist() == [0.9, 0.5, 0.05] and df["reasons"].tolist() == [REASONS[0], REASONS[2], ""]
    assert df["note"].tolist() == ["\t=1", "@note", "@note"] and df["who"].tolist() == ["bob", "alice", "alice"]
    assert df["when"].str.endswith("+00:00").all()
    side = json.loads(meta_path(path).read_text())
    assert side["rows"] == 3 and side["version"] == forensics.__version__
    assert side["meta"]["layer"] == "fc1" and side["meta"]["parameters"] == inv.params
    assert side["meta"]["include"] == "marked" and side["meta"]["review_counts"]["confirmed"] == 1
    with pytest.warns(DeprecationWarning, match="include='flagged'"):
        old = inv.export(tmp_path / "old.json", include="flagged")
    assert [r["sample_id"] for r in json.loads(old.read_text())] == [IDS[0], IDS[2], IDS[7]]

    everything = json.loads(inv.export(tmp_path / "all.json", include="all").read_text())
    assert len(everything) == 8 and [r["sample_id"] for r in everything][:3] == [IDS[0], IDS[6], IDS[3]]
    row = next(r for r in everything if r["sample_id"] == IDS[1])
    assert row["status"] == "unreviewed" and row["when"] is None and row["note"] == "" and row["source"] == "@bot"
    with pytest.raises(InputError, match="include must be 'marked' or 'all'; got 'some'"):
        inv.export(tmp_path / "x.csv", include="some")


def test_export_csv_is_neutralized_everywhere(inv, tmp_path):
    inv.flag(IDS, note="=HYPERLINK(\"http://evil.example\")", who="alice")
    inv.confirm([IDS[4]], note="+1", who="bob")
    inv.confirm([IDS[5]], note="@SUM(A1)", who="bob")
    inv.confirm([IDS[6]], note="-2+3", who="bob")
    inv.confirm([IDS[7]], note="\t=1", who="bob")
    path = inv.export(tmp_path / "flagged.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(EXPORT_COLUMNS)
    body = {restore_cell(r[0]): dict(zip(EXPORT_COLUMNS, r)) for r in rows[1:]}
    assert list(body) == [IDS[i] for i in np.argsort(-np.array(SUSPICION), kind="stable")]
    for i, sid in enumerate(IDS):
        row = body[sid]
        assert row["sample_id"] == ("'" + sid if i < 5 else sid)  # the first five start like a formula
        assert row["source"] == ("'" + SOURCES[i] if SOURCES[i][0] in "\t=+-@" else SOURCES[i])
        assert restore_cell(row["reasons"]) == REASONS[i]
        assert row["reasons"] == ("'" + REASONS[i] if REASONS[i][:1] in ("\t", "=", "+", "-", "@") else REASONS[i])
        assert row["note"].startswith("'") and restore_cell(row["note"]) == inv.review.loc[sid, "note"]
        assert float(row["suspicion"]) == SUSPICION[i]
    assert body[IDS[1]]["label"] == "neg" and body[IDS[7]]["label"] == "'@pos"
    with open(path, newline="", encoding="utf-8") as f:
        typed = list(csv.reader(f, quoting=csv.QUOTE_NONNUMERIC))[1:]
    assert all(isinstance(r[3], float) for r in typed)  # suspicion stays a number


def test_export_to_an_unwritable_place(inv, tmp_path):
    inv.flag([IDS[0]])
    with pytest.raises(InputError, match=r"cannot write the export .*nowhere/flagged\.csv: its folder"):
        inv.export(tmp_path / "nowhere" / "flagged.csv")


# ------------------------------------------------------------------------------------------------ save / load

def test_round_trip(inv, tmp_path, fake_map):
    inv.map  # noqa: B018 (computed so that it is saved)
    inv.flag([IDS[0], IDS[3]], note="patch", who="alice")
    inv.confirm(cluster=2, note="=sybil", who="bob")
    inv.undo(who="bob")
    inv.clear([IDS[1]], who="carol")
    inv.triggers = pd.DataFrame({"kind": ["text"], "description": ["'cf' phrase"], "evidence": ["=ngram"],
                                 "remove_flip_rate": [0.9], "add_flip_rate": [0.8], "verdict": ["confirmed"],
                                 "sample_ids": [[IDS[0], IDS[3]]]})
    folder = inv.save(tmp_path / "inv")
    assert inv.folder == folder
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["toolkit_version"] == forensics.__version__ and manifest["format_version"] == 1
    assert manifest["dataset"]["hash"] == inv.dataset.content_hash and manifest["params"] == inv.params
    assert set(manifest["files"]) == {"dataset", "samples", "signals", "triggers", "map", "clusters", "features"}

    back = Investigation.load(folder)
    assert_same_state(inv, back)
    assert back.triggers["sample_ids"].tolist() == [[IDS[0], IDS[3]]]
    assert back.has_map and len(fake_map.calls) == 1  # the saved map is used, not rebuilt
    pd.testing.assert_frame_equal(inv.map, back.map)
    pd.testing.assert_frame_equal(inv.clusters, back.clusters)
    assert back.dataset.content_hash == inv.dataset.content_hash
    assert back.dataset.texts.tolist() == inv.dataset.texts.tolist()
    assert back.dataset.sources.tolist() == SOURCES and back.dataset.class_names == ("neg", "@pos")
    assert [e["hash"] for e in back.audit] == [e["hash"] for e in inv.audit]
    assert back.counts().to_dict() == {"unreviewed": 5, "suspected": 2, "confirmed": 0, "cleared": 1}
    # The undo stack survives the reload: undoing in the loaded copy reverts the last decision.
    back.undo()
    assert back.review.loc[IDS[1], "status"] == "unreviewed"


def test_image_dataset_round_trip(tmp_path, fake_map):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)
    ds = Dataset.from_numpy(images, [0, 1, 0, 1, 0, 1], sources=list("aabbcc"))
    sig = pd.DataFrame({"suspicion": np.arange(6.0), "reasons": [""] * 6}, index=ds.ids)
    inv = Investigation(ds, signals=sig)
    inv.flag(["4", "5"])
    back = Investigation.load(inv.save(tmp_path / "img"))
    np.testing.assert_array_equal(back.dataset.images, images)
    assert back.dataset.content_hash == ds.content_hash and back.dataset.kind == "image"
    assert_same_state(inv, back)
    assert not back.has_map and back.features is None


def test_decisions_after_save_survive_without_another_save(inv, tmp_path):
    folder = inv.save(tmp_path / "inv")
    inv.flag([IDS[2]], note="after save", who="alice")
    log_file = folder / json.loads((folder / MANIFEST).read_text())["audit"]["file"]
    assert b"after save" in log_file.read_bytes()  # on disk as soon as flag() returned
    inv.confirm([IDS[2]], who="bob")
    back = Investigation.load(folder)  # no second save: the log is replayed
    assert back.review.loc[IDS[2], "status"] == "confirmed"
    pd.testing.assert_frame_equal(back.review, inv.review)
    # The loaded copy is attached too: its decisions reach the same log.
    back.clear([IDS[2]], who="carol")
    assert Investigation.load(folder).review.loc[IDS[2], "status"] == "cleared"


def test_dataset_kept_outside_the_folder(inv, ds, signals, tmp_path):
    folder = inv.save(tmp_path / "inv", include_dataset=False)
    assert "dataset" not in json.loads((folder / MANIFEST).read_text())["files"]
    with pytest.raises(InputError, match=r"was saved without its dataset; pass it"):
        Investigation.load(folder)
    assert_same_state(inv, Investigation.load(folder, dataset=ds))
    other = ds.replace(labels=[1, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(IntegrityError, match=rf"content hash {other.content_hash} but .* was saved with dataset "
                                             rf"{ds.content_hash}"):
        Investigation.load(folder, dataset=other)


def test_stored_dataset_checked_against_a_given_one(inv, ds, tmp_path):
    folder = inv.save(tmp_path / "inv")
    other = ds.replace(sources=["x"] * 8)
    with pytest.raises(IntegrityError, match=rf"{other.content_hash}.*{ds.content_hash}"):
        Investigation.load(folder, dataset=other)


def _fail_at(monkeypatch, k):
    """Make the k-th atomic write of the next save write half a file and raise, as a crash would."""
    calls = {"n": 0}
    real_with, real_text = _io.atomic_write_with, _io.atomic_write_text

    def tick(path):
        calls["n"] += 1
        if calls["n"] == k:
            raise OSError(28, f"No space left on device (simulated, writing {path.name})")

    def failing_with(path, writer):
        def half(tmp):
            writer(tmp)
            tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
            tick(path)
        return real_with(path, half)

    def failing_text(path, text, **kw):
        tick(path)
        return real_text(path, text, **kw)

    monkeypatch.setattr(_io, "atomic_write_with", failing_with)
    monkeypatch.setattr(_io, "atomic_write_text", failing_text)
    return calls


@pytest.mark.parametrize("k", [1, 3, 5, 6])  # samples, triggers, clusters, the manifest itself
def test_a_save_that_stops_midway_keeps_the_previous_save(inv, tmp_path, monkeypatch, k):
    folder = inv.save(tmp_path / "inv")
    first = Investigation.load(folder)
    inv.map  # noqa: B018
    inv.triggers = pd.DataFrame({c: [] for c in TRIGGER_COLUMNS})
    inv.triggers = pd.DataFrame({"kind": ["text"], "description": ["x"], "evidence": [""], "remove_flip_rate": [1.0],
                                 "add_flip_rate": [1.0], "verdict": ["confirmed"], "sample_ids": [[IDS[1]]]})
    inv.flag([IDS[1]], note="decided between saves", who="alice")
    calls = _fail_at(monkeypatch, k)
    with pytest.raises(OSError, match=r"simulated"):
        inv.save(folder)
    # samples, signals, triggers, map, clusters (dataset and features unchanged, kept), then the manifest.
    assert calls["n"] == k
    monkeypatch.undo()
    back = Investigation.load(folder)
    for name in ("samples", "signals", "triggers"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(first, name))
    assert not back.has_map and len(back.triggers) == 0  # the tables of the first save
    assert back.review.loc[IDS[1], "note"] == "decided between saves"  # the log was written ahead
    # The next save completes and removes what the interrupted one left behind.
    inv.save(folder)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".lock", "audit.1.jsonl", "audit.1.jsonl.seal", "clusters.2.parquet", "dataset.1.parquet",
                     "features.1.npy", MANIFEST, "map.2.parquet", "samples.2.parquet", "signals.2.parquet",
                     "triggers.2.parquet"]
    assert_same_state(inv, Investigation.load(folder))


def test_save_keeps_other_files_and_removes_old_generations(inv, tmp_path):
    folder = inv.save(tmp_path / "inv")
    (folder / "notes.txt").write_text("mine")
    inv.save(folder)
    names = {p.name for p in folder.iterdir()}
    assert "notes.txt" in names and "samples.1.parquet" not in names and "samples.2.parquet" in names


def test_tampered_log_in_a_folder_is_named(inv, tmp_path):
    folder = inv.save(tmp_path / "inv")
    inv.flag([IDS[0]], note="patch", who="alice")
    seal = folder / "audit.1.jsonl.seal"
    sealed_before_bob = seal.read_bytes()
    inv.confirm([IDS[0]], who="bob")
    log_file = folder / "audit.1.jsonl"
    good = log_file.read_bytes()

    log_file.write_bytes(good.replace(b"patch", b"clean"))
    with pytest.raises(IntegrityError, match=r"line 2 \(seq 1\): its hash does not match its content"):
        Investigation.load(folder)

    lines = good.split(b"\n")
    log_file.write_bytes(b"\n".join([lines[0], lines[2], lines[1], b""]))
    with pytest.raises(IntegrityError, match=r"line 2 \(seq 2\): seq 2 where 1 was expected"):
        Investigation.load(folder)

    # A decision cut off in the middle: the program stopped before its line was complete, so before its seal.
    log_file.write_bytes(good[: len(good) - 20])
    seal.write_bytes(sealed_before_bob)
    with pytest.raises(IntegrityError, match=r"the last entry \(line 3\) is incomplete"):
        Investigation.load(folder)
    repaired = Investigation.load(folder, repair=True)
    assert repaired.review.loc[IDS[0], "status"] == "suspected"
    assert repaired.audit[-1]["action"] == "repair"


def test_deleting_decisions_made_after_the_last_save_is_caught(inv, tmp_path):
    # The manifest anchors the log at the save; the seal, at the last decision.
    folder = inv.save(tmp_path / "inv")
    inv.flag([IDS[0]], who="alice")
    inv.confirm([IDS[1]], who="bob")
    log_file = folder / "audit.1.jsonl"
    lines = log_file.read_bytes().split(b"\n")
    log_file.write_bytes(b"\n".join(lines[:-2]) + b"\n")  # bob's decision is gone
    with pytest.raises(IntegrityError, match=r"ends at seq 1 but entry seq 2 is known to exist \(sealed after the "
                                             r"last decision\): entries were deleted from its end"):
        Investigation.load(folder)
    (folder / "audit.1.jsonl.seal").unlink()  # and the seal with it
    with pytest.raises(IntegrityError, match=r"its seal audit\.1\.jsonl\.seal is missing"):
        Investigation.load(folder)


def test_a_signed_seal_cannot_be_forged_without_the_key(inv, tmp_path, monkeypatch):
    monkeypatch.setenv("FORENSICS_AUDIT_KEY", "s3cret")
    folder = inv.save(tmp_path / "inv")
    inv.flag([IDS[0]], who="alice")
    inv.confirm([IDS[1]], who="bob")
    assert Investigation.load(folder).review.loc[IDS[1], "status"] == "confirmed"
    log_file, seal = folder / "audit.1.jsonl", folder / "audit.1.jsonl.seal"
    lines = log_file.read_bytes().split(b"\n")
    log_file.write_bytes(b"\n".join(lines[:-2]) + b"\n")
    entry = json.loads(lines[-3])  # a forger rewrites the seal to the shortened log's head
    seal.write_text(json.dumps({"seq": entry["seq"], "hash": entry["hash"], "size": log_file.stat().st_size}))
    with pytest.raises(IntegrityError, match=r"seal .* carries no signature although FORENSICS_AUDIT_KEY is set: the seal was forged"):
        Investigation.load(folder)
    seal.write_text(json.dumps({"seq": entry["seq"], "hash": entry["hash"], "size": log_file.stat().st_size,
                                "hmac": "0" * 64}))
    with pytest.raises(IntegrityError, match=r"is not signed with the key in FORENSICS_AUDIT_KEY"):
        Investigation.load(folder)


def test_deleting_saved_entries_from_the_end_is_caught(inv, tmp_path):
    inv.flag([IDS[0]], who="alice")
    folder = inv.save(tmp_path / "inv")
    log_file = folder / "audit.1.jsonl"
    log_file.write_bytes(log_file.read_bytes().split(b"\n", 1)[0] + b"\n")
    with pytest.raises(IntegrityError, match=r"ends at seq 0 but entry seq 1 is known to exist"):
        Investigation.load(folder)


def test_tampered_files_are_named(inv, tmp_path):
    folder = inv.save(tmp_path / "inv")
    signals_file = folder / "signals.1.parquet"
    signals_file.write_bytes(signals_file.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match=r"signals\.1\.parquet does not match its checksum"):
        Investigation.load(folder)


def test_a_hostile_manifest_cannot_point_outside(inv, tmp_path):
    folder = inv.save(tmp_path / "inv")
    m = json.loads((folder / MANIFEST).read_text())
    m["files"]["samples"]["file"] = "../../etc/passwd"
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match=r"the entry for 'samples' does not name a file of this folder"):
        Investigation.load(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(IntegrityError, match=r"investigation\.json is not valid JSON"):
        Investigation.load(folder)
    with pytest.raises(InputError, match=r"holds no saved investigation \(investigation\.json is missing\)"):
        Investigation.load(tmp_path)


def test_a_folder_of_another_investigation_is_not_overwritten(inv, ds, signals, tmp_path):
    folder = inv.save(tmp_path / "inv")
    other = Investigation(ds, signals=signals)
    other.flag([IDS[7]])
    with pytest.raises(InputError, match=r"holds another investigation .* pass overwrite=True"):
        other.save(folder)
    assert Investigation.load(folder).id == inv.id
    other.save(folder, overwrite=True)
    assert Investigation.load(folder).id == other.id


def test_two_writers_of_one_folder_never_lose_decisions(inv, tmp_path):
    folder = inv.save(tmp_path / "inv")
    a, b = Investigation.load(folder), Investigation.load(folder)
    a.flag([IDS[0]], note="from a", who="a")
    with pytest.raises(IntegrityError, match=r"changed by another writer.*not recorded"):
        b.flag([IDS[1]], who="b")
    assert status(b) == ["unreviewed"] * 8  # the refused decision did not reach b's review either
    with pytest.raises(IntegrityError, match="changed by another writer"):
        b.save(folder)
    # A stale copy saving elsewhere, then back into the folder, would drop a's decision: refused.
    b.save(tmp_path / "copy")
    with pytest.raises(IntegrityError, match=r"holds decisions this session does not have"):
        b.save(folder)
    assert Investigation.load(folder).review.loc[IDS[0], "note"] == "from a"


def test_saves_racing_on_one_folder_wait_then_fail_clearly(inv, tmp_path, monkeypatch):
    folder = inv.save(tmp_path / "inv")
    monkeypatch.setattr(audit, "LOCK_TIMEOUT_S", 0.2)
    inv.flag([IDS[0]], who="a")
    before = (folder / MANIFEST).read_bytes()
    held, release = threading.Event(), threading.Event()

    def other_save():
        with _io.file_lock(folder / ".lock"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=other_save)
    t.start()
    try:
        held.wait(10)
        with pytest.raises(ForensicsError, match=r"the investigation folder .* is locked by another save"):
            inv.save(folder)
    finally:
        release.set()
        t.join()
    assert (folder / MANIFEST).read_bytes() == before
    inv.save(folder)
    assert json.loads((folder / MANIFEST).read_text())["generation"] == 2


def test_save_to_an_unusable_place(inv, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"cannot save the investigation to .*file: it is a file, not a folder"):
        inv.save(tmp_path / "file")
    with pytest.raises(InputError, match=r"cannot create the investigation folder .*file/sub"):
        inv.save(tmp_path / "file" / "sub")


def test_log_of_a_saved_folder_is_a_plain_audit_log(inv, tmp_path):
    inv.flag([IDS[0]], who="alice")
    folder = inv.save(tmp_path / "inv")
    log = AuditLog.load(folder / "audit.1.jsonl")
    assert [e["action"] for e in log] == ["start", "flag"] and log.head == inv.audit.head


def test_trigger_arrays_are_saved_and_checked(inv, tmp_path):
    patch = np.full((2, 2), 255, np.uint8)
    difference = np.linspace(-10, 10, 16, dtype=np.float64).reshape(4, 4)
    inv.trigger_arrays = {"image-1": patch, "image-2": difference}
    assert inv.trigger_arrays["image-2"].dtype == np.float32
    inv.save(tmp_path / "inv")
    back = Investigation.load(tmp_path / "inv")
    assert set(back.trigger_arrays) == {"image-1", "image-2"}
    np.testing.assert_array_equal(back.trigger_arrays["image-1"], patch)
    np.testing.assert_allclose(back.trigger_arrays["image-2"], difference, rtol=1e-6)
    assert back.trigger_arrays["image-1"].dtype == np.uint8
    with pytest.raises(InputError, match="trigger_arrays maps trigger ids to 2-D or 3-D numeric images"):
        inv.trigger_arrays = {"image-1": np.zeros(5)}
    with pytest.raises(InputError, match="trigger_arrays maps trigger ids"):
        inv.trigger_arrays = {"image-1": np.array([["a"]])}
    files = json.loads((tmp_path / "inv" / MANIFEST).read_text())["files"]
    patterns = tmp_path / "inv" / files["patterns"]["file"]
    data = bytearray(patterns.read_bytes())
    data[len(data) // 2] ^= 0xFF
    patterns.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        Investigation.load(tmp_path / "inv")


# ------------------------------------------------------------------------------------------------ large folders

def _mapped_file(a):
    """The file a memory-mapped array reads (through views), or None when it is in memory."""
    while a is not None:
        if isinstance(a, np.memmap):
            return str(a.filename)
        a = a.base
    return None


def test_features_of_a_saved_or_loaded_investigation_are_a_read_only_map_of_its_file(inv, tmp_path):
    features = np.array(inv.features)
    assert _mapped_file(inv.features) is None  # in memory until the first save
    folder = inv.save(tmp_path / "inv")
    back = Investigation.load(folder)
    for x in (inv.features, back.features):
        assert isinstance(x, np.memmap) and _mapped_file(x) == str(folder / "features.1.npy")
        assert not x.flags.writeable and x.dtype == np.float32
        np.testing.assert_array_equal(x, features)
        with pytest.raises(ValueError, match="read-only"):
            x[0, 0] = 1.0


def test_a_save_after_a_flag_keeps_the_features_file(inv, tmp_path):
    folder = inv.save(tmp_path / "inv")
    path = folder / "features.1.npy"
    before = path.stat()
    for saver in (lambda: inv, lambda: Investigation.load(folder)):  # the object that saved it, one that loads it
        obj = saver()
        obj.flag([IDS[1]], who="alice")
        obj.save(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["generation"] == 3 and manifest["files"]["features"]["file"] == "features.1.npy"
    assert manifest["files"]["samples"]["file"] == "samples.3.parquet"  # the tables are written again
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert _io.file_digest(path) == manifest["files"]["features"]["blake2b"]  # the manifest still verifies
    assert sorted(p.name for p in folder.glob("features.*")) == ["features.1.npy"]
    back = Investigation.load(folder)
    np.testing.assert_array_equal(back.features, inv.features)
    assert back.review.loc[IDS[1], "status"] == "suspected"


def test_features_saved_to_another_folder_are_written_there_and_read_from_there(inv, tmp_path):
    first = inv.save(tmp_path / "a")
    second = inv.save(tmp_path / "b")
    assert _mapped_file(inv.features) == str(second / "features.1.npy")
    manifests = [json.loads((f / MANIFEST).read_text())["files"]["features"] for f in (first, second)]
    assert manifests[0]["blake2b"] == manifests[1]["blake2b"]
    # A loaded copy saved elsewhere writes its own file too, and reads that one from then on.
    back = Investigation.load(first)
    third = back.save(tmp_path / "c")
    assert _mapped_file(back.features) == str(third / "features.1.npy")
    np.testing.assert_array_equal(Investigation.load(third).features, inv.features)


def test_an_export_of_a_loaded_investigation_equals_the_one_before_saving(inv, tmp_path):
    inv.flag([IDS[2], IDS[7]], note="=note", who="alice")
    inv.confirm([IDS[0]], note="\t=1", who="bob")
    before = {fmt: inv.export(tmp_path / f"before.{fmt}") for fmt in ("csv", "json", "parquet")}
    back = Investigation.load(inv.save(tmp_path / "inv"))
    for fmt, old in before.items():
        new = back.export(tmp_path / f"after.{fmt}")
        if fmt == "parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(new), pd.read_parquet(old), check_exact=True)
        else:
            assert new.read_bytes() == old.read_bytes()


def test_read_review_equals_the_loaded_review_and_reads_no_table_and_no_feature(inv, ds, tmp_path, monkeypatch):
    inv.flag([IDS[2], IDS[7]], note="@note", who="alice")
    inv.confirm([IDS[0]], who="bob")
    inv.undo(who="bob")
    folder = inv.save(tmp_path / "inv")
    inv.clear([IDS[3]], who="carol")  # after the save: in the log only
    expected = Investigation.load(folder).review
    read = []
    real_read_parquet = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda path, **kw: read.append((path.name, kw)) or real_read_parquet(
        path, **kw))
    monkeypatch.setattr(np, "load", lambda *a, **kw: pytest.fail("read_review read an array"))
    review = Investigation.read_review(folder)
    pd.testing.assert_frame_equal(review, expected, check_exact=True)
    assert read == [("dataset.1.parquet", {"columns": ["sample_id", "label", "content_hash", "source"]})]
    monkeypatch.undo()
    # Saved without the dataset: the dataset is passed, as to load.
    folder = inv.save(tmp_path / "bare", include_dataset=False)
    with pytest.raises(InputError, match=r"was saved without its dataset; pass it: Investigation\.read_review"):
        Investigation.read_review(folder)
    pd.testing.assert_frame_equal(Investigation.read_review(folder, dataset=ds), inv.review, check_exact=True)
    with pytest.raises(IntegrityError, match=r"the dataset given has content hash"):
        Investigation.read_review(folder, dataset=ds.replace(labels=[1, 0, 0, 0, 1, 1, 1, 1]))


def test_image_datasets_are_loaded_memory_mapped_read_only(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)
    ds = Dataset.from_numpy(images, [0, 1, 0, 1, 0, 1])
    inv = Investigation(ds, signals=pd.DataFrame({"suspicion": np.arange(6.0), "reasons": [""] * 6}, index=ds.ids))
    folder = inv.save(tmp_path / "img")
    back = Investigation.load(folder).dataset.images
    assert _mapped_file(back) == str(folder / "images.1.npy") and not back.flags.writeable
    np.testing.assert_array_equal(back, images)


def test_statuses_are_the_review_tables_status_column():
    ds = Dataset.from_texts([f"text {i}" for i in range(6)], [0, 1] * 3, ids=list("abcdef"))
    signals = pd.DataFrame({"x_score": np.arange(6.0), "suspicion": np.arange(6.0), "reasons": [""] * 6},
                           index=pd.Index(ds.ids, name="sample_id"))
    inv = Investigation(ds, signals=signals)
    inv.flag(["b", "e"])
    inv.clear(["c"])
    np.testing.assert_array_equal(inv.statuses(), inv.review["status"].to_numpy(dtype=object))
    assert inv.statuses(np.array([4, 2, 0])).tolist() == ["suspected", "cleared", "unreviewed"]
