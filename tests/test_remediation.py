"""Remediation plans: which rule decides each sample, the dry run's costs, and applying a plan to the right data."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from forensics.data import Dataset
from forensics.errors import InputError, IntegrityError
from forensics.investigation import Investigation
from forensics.remediation import ACTIONS, PLAN_COLUMNS, plan_remediation
from forensics.versions import VersionStore

N = 40


class _Map:
    """A map builder with fixed clusters: samples 15 and 16 form cluster 7."""

    def __call__(self, features, labels, *, ids, sources, suspicion, class_names):
        from forensics.embedding import cluster_table

        clusters = np.zeros(len(labels), dtype=np.int64)
        clusters[[15, 16]] = 7
        coords = np.c_[np.arange(len(labels), dtype=float), np.zeros(len(labels))]
        return SimpleNamespace(coords=coords, clusters=clusters,
                               table=cluster_table(clusters, labels, ids=ids, sources=sources, suspicion=suspicion,
                                                   space=coords, class_names=class_names))


def _investigation(params: dict | None = None) -> Investigation:
    """40 images of "cat" (even) and "dog" (odd). Planted: 0-4 flipped labels (the model gives their label 1e-6 and
    predicts the other class), 5-7 off the spectral direction, 8-9 carry a confirmed trigger, 12-14 come from a bot,
    15-16 form cluster 7; the analyst confirms 10, suspects 11 and clears 0."""
    rng = np.random.default_rng(0)
    labels = np.arange(N) % 2
    images = rng.integers(0, 200, (N, 8, 8), dtype=np.uint8)
    sources = np.where(np.arange(N) % 3 == 0, "alice", "bob").astype(object)
    sources[12:15] = "bot"
    ids = [f"s{i:02d}" for i in range(N)]
    ds = Dataset.from_numpy(images, labels, ids=ids, class_names=["cat", "dog"], sources=sources)
    loss = rng.uniform(0.01, 0.3, N)
    loss[:5] = -np.log(1e-6)
    spectral = rng.exponential(1.0, N)
    spectral[5:8] = 1e3
    suspicion = np.zeros(N)
    suspicion[:8] = 5.0
    signals = pd.DataFrame({"high_loss_score": loss, "spectral_score": spectral, "suspicion": suspicion,
                            "reasons": ["high loss"] * 5 + ["spectral signature"] * 3 + [""] * (N - 8)},
                           index=pd.Index(ids))
    samples = ds.to_frame()
    samples["prediction"] = np.where(np.arange(N) < 5, 1 - labels, labels)
    inv = Investigation(ds, signals=signals, samples=samples, features=rng.random((N, 4)).astype(np.float32),
                        map_builder=_Map(), params=params)
    inv.triggers = pd.DataFrame({
        "trigger_id": ["image-1", "image-2"], "kind": ["image", "image"], "description": ["a patch", "weak one"],
        "evidence": ["", ""], "remove_flip_rate": [0.9, 0.3], "add_flip_rate": [0.9, 0.1],
        "verdict": ["confirmed", "weak"], "sample_ids": [["s08", "s09"], ["s20", "s21"]],
    })
    inv.confirm("s10", note="poison", who="ana")
    inv.flag("s11", who="ana")
    inv.clear("s00", who="ben")
    return inv


@pytest.fixture()
def inv() -> Investigation:
    return _investigation()


def test_each_sample_takes_the_first_rule_that_applies(inv):
    plan = plan_remediation(inv, sources=["bot"], clusters=[7])
    t = plan.table
    assert list(t.columns) == list(PLAN_COLUMNS) and t.index.name == "sample_id"
    expected = {"s01": "relabel", "s02": "relabel", "s03": "relabel", "s04": "relabel",
                "s05": "remove", "s06": "remove", "s07": "remove", "s08": "remove", "s09": "remove",
                "s10": "remove", "s11": "quarantine", "s12": "remove", "s13": "remove", "s14": "remove",
                "s15": "remove", "s16": "remove"}
    assert t["action"].to_dict() == expected  # s00 was cleared by a person: never touched; weak triggers ignored
    assert t.loc["s01", "new_label"] == "cat" and t.loc["s01", "label"] == "dog"
    assert t.loc["s02", "new_label"] == "dog" and pd.isna(t.loc["s05", "new_label"])
    assert t.loc["s10", "decided_by"] == "review by ana" and t.loc["s10", "rule"] == "review: confirmed poison"
    assert t.loc["s11", "decided_by"] == "review by ana"
    assert t.loc["s08", "rule"] == "trigger: carries the confirmed trigger image-1"
    assert t.loc["s12", "rule"] == "source: every sample of bot" and t.loc["s15", "rule"].startswith("cluster")
    assert t.loc["s05", "rule"] == "suspicion: >= 2" and t.loc["s05", "decided_by"] == "rule"
    assert t.loc["s03", "reasons"] == "high loss"


def test_a_one_way_relabelling_is_relabelled_back_as_a_whole():
    """The investigation found "dog" holding cats relabelled one way, and the dogs not yet decided are cats with
    probabilities summing to 3.2: the 3 most cat-like are relabelled cat, whatever their suspicion; the review still
    comes first. The pair test's excess (an undercount) does not set how many."""
    pair = {"label": 1, "looks_like": 0, "count": 9, "mirror": 6, "excess": 3, "p_value": 1e-4, "label_name": "dog",
            "looks_like_name": "cat"}
    inv = _investigation({"relabelled_pairs": [pair]})  # as investigate() records what it found
    scores = np.zeros(N)
    scores[[21, 23, 25, 27, 29]] = [0.9, 0.8, 0.7, 0.6, 0.2]  # dogs (odd), by how surely they were cats
    scores[11] = 0.95  # a dog the analyst suspects: the review decides it
    inv.signals["targeted_flip_score"] = scores
    assert "pair" not in set(plan_remediation(inv).table["rule"].str.split(":").str[0])  # off by default
    plan = plan_remediation(inv, pairs=True)
    pair = plan.table[plan.table["rule"].str.startswith("pair:")]
    assert list(pair.index) == ["s21", "s23", "s25"] and set(pair["new_label"]) == {"cat"}
    assert set(pair["action"]) == {"relabel"} and plan.table.loc["s11", "action"] == "quarantine"
    assert pair["rule"].iloc[0] == "pair: dog holds about 3 relabelled cat; among the most cat-like"
    assert plan.policy["pairs"] is True
    inv.params["relabelled_pairs"] = [{**pair_row, "excess": 1} for pair_row in inv.params["relabelled_pairs"]]
    assert list(plan_remediation(inv, pairs=True).table.query("rule.str.startswith('pair:')").index) == \
        ["s21", "s23", "s25"]
    del inv.signals["targeted_flip_score"]
    with pytest.raises(InputError, match="pairs=True needs the targeted_flip signal"):
        plan_remediation(inv, pairs=True)


def test_a_many_to_one_relabelling_is_removed_not_relabelled():
    """"dog" holds a few lookalikes of two classes at once (the label test's rows, which share one p-value and a
    purity): the 2 most likely of the dogs whose probabilities sum to 2.4 are removed, as one entry, since which class
    each came from is not known; the report's verdict and facts name it once."""
    rows = [{"label": 1, "looks_like": b, "count": 5, "mirror": 1, "excess": 4, "p_value": 1e-6, "test": "label",
             "purity": 0.8, "label_name": "dog", "looks_like_name": name} for b, name in ((0, "cat"), (2, "bird"))]
    inv = _investigation({"relabelled_pairs": rows})
    scores = np.zeros(N)
    scores[[21, 23, 25]] = [0.8, 0.8, 0.8]
    inv.signals["targeted_flip_score"] = scores
    plan = plan_remediation(inv, pairs=True, review=False, triggers=False, threshold=None)
    assert list(plan.table.index) == ["s21", "s23"] and set(plan.table["action"]) == {"remove"}
    assert plan.table["rule"].iloc[0] == ("pair: dog holds about 2 relabelled lookalikes of other classes "
                                          "(many-to-one); the most likely")
    from forensics.report import scan_verdict

    assert "relabelled one way: about 8 of 2 classes as dog" in scan_verdict(inv).text


def test_policies_switch_off_and_removal_replaces_relabelling(inv):
    plan = plan_remediation(inv, relabel=False, review=False, triggers=False, threshold=None)
    assert len(plan.table) == 0 and plan.counts().to_dict() == dict.fromkeys(ACTIONS, 0)
    plan = plan_remediation(inv, relabel=False, review=False, triggers=False)
    assert set(plan.table.index) == {f"s{i:02d}" for i in range(8)}  # the cleared s00 is back: review is off
    assert (plan.table["action"] == "remove").all()


def test_the_dry_run_says_what_the_plan_costs(inv):
    plan = plan_remediation(inv, sources=["bot"], clusters=[7])
    d = plan.dry_run()
    assert d["n"] == N and d["counts"] == {"remove": 11, "relabel": 4, "quarantine": 1}
    assert d["kept"] == N - 12
    assert d["by_rule"].to_dict() == {"suspicion": 7, "source": 3, "trigger": 2, "cluster": 2, "review": 2}
    assert d["unreviewed"] == 14
    assert d["estimated_clean_sacrificed"] == pytest.approx(N * 0.01)  # 1% of 40 at threshold 2
    by_class = d["by_class"]
    assert by_class.loc["dog", "n"] == 20 and by_class.loc["dog", "relabel"] == 2
    assert by_class[list(ACTIONS)].to_numpy().sum() == 16
    assert d["by_source"].index[0] == "bot" and d["by_source"].loc["bot", "share_affected"] == 1.0
    text = plan.summary()
    assert "remove 11, relabel 4, quarantine 1; 28 kept for training" in text and "rows no person reviewed: 14" in text


def test_applying_a_plan_relabels_removes_and_sets_aside(inv):
    plan = plan_remediation(inv, sources=["bot"], clusters=[7])
    out = plan.apply(inv.dataset)
    assert len(out.dataset) == N - 12 and out.quarantine is not None and list(out.quarantine.ids) == ["s11"]
    kept = dict(zip(out.dataset.ids, out.dataset.labels))
    assert kept["s01"] == 0 and kept["s02"] == 1 and kept["s00"] == 0  # relabelled; the cleared one as it was
    assert "s05" not in kept and "s12" not in kept and "s11" not in kept
    assert inv.dataset.labels[1] == 1  # the original data is untouched
    frame = plan.to_frame()
    assert '"sources": ["bot"]' in frame["policy"].iloc[0]


def test_a_plan_refuses_data_that_changed_since_the_investigation(inv):
    plan = plan_remediation(inv)
    ds = inv.dataset
    changed = ds.replace(labels=np.where(np.arange(N) == 3, 0, ds.labels))
    with pytest.raises(InputError, match=r"1 changed \(content or label\) \('s03'\)"):
        plan.apply(changed)
    with pytest.raises(InputError, match=r"2 missing \('s38', 's39'\)"):
        plan.apply(ds.subset(np.arange(N) < N - 2))
    with pytest.raises(InputError, match="must be a forensics.Dataset"):
        plan.apply(ds.images)


def test_bad_policies_are_named(inv):
    with pytest.raises(InputError, match=r"sources \['eve'\] are not in the data"):
        plan_remediation(inv, sources=["eve"])
    with pytest.raises(InputError, match="cluster 99 is not on the map"):
        plan_remediation(inv, clusters=[99])
    with pytest.raises(InputError, match="threshold must be a finite number or None"):
        plan_remediation(inv, threshold=float("nan"))
    with pytest.raises(InputError, match="column must be 'label' or 'source'"):
        plan_remediation(inv).by("cluster")
    with pytest.raises(InputError, match="threshold must be a finite number or None; got '2'"):
        plan_remediation(inv, threshold="2")
    with pytest.raises(InputError, match="clusters must be cluster numbers of the map"):
        plan_remediation(inv, clusters=["7"])
    # A single source or cluster may be given bare.
    assert plan_remediation(inv, sources="bot").policy["sources"] == ["bot"]
    assert (plan_remediation(inv, clusters=7).table.loc[["s15", "s16"], "action"] == "remove").all()


# ------------------------------------------------------------------------------------------------ versions
def test_versions_keep_the_lineage_and_a_rollback_restores_a_version_exactly(inv, tmp_path):
    store = VersionStore(tmp_path / "versions")
    assert store.current is None and store.list().empty
    v1 = store.commit(inv.dataset, note="as received", who="ana")
    plan = plan_remediation(inv, sources=["bot"], clusters=[7])
    v2 = store.commit(plan.apply(store.load(v1)), note="sanitized", who="ana")
    assert (v1, v2, store.current) == ("v0001", "v0002", "v0002")
    table = store.list()
    assert table.loc["v0002", "parent"] == "v0001" and table.loc["v0002", "n"] == N - 12
    assert table["current"].tolist() == [False, True]
    assert store.info(v2)["counts"] == {"remove": 11, "relabel": 4, "quarantine": 1}
    assert store.plan(v2).set_index("sample_id")["action"].to_dict() == plan.table["action"].to_dict()
    assert store.plan(v1) is None
    d = store.diff(v1, v2)
    assert len(d.removed) == 12 and len(d.relabelled) == 4
    restored = store.restore(v1, note="the plan removed too much", who="ben")
    assert store.current == "v0001" and restored.content_hash == inv.dataset.content_hash
    assert [e["action"] for e in store.audit] == ["version", "version", "restore"]
    assert store.audit[2]["who"] == "ben" and store.audit[2]["payload"] == {"version": "v0001", "previous": "v0002"}
    # Reopened, the store reads the same history and its log verifies.
    again = VersionStore(tmp_path / "versions")
    assert again.current == "v0001" and len(again.audit) == 3


def test_an_altered_version_is_refused_by_name(inv, tmp_path):
    store = VersionStore(tmp_path / "versions")
    v1 = store.commit(inv.dataset)
    images = tmp_path / "versions" / v1 / "images.npy"
    data = bytearray(images.read_bytes())
    data[-1] ^= 0xFF
    images.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"version v0001 was altered after it was written: images\.npy"):
        store.restore(v1)
    with pytest.raises(IntegrityError, match="images.npy"):
        store.load(v1)
    with pytest.raises(InputError, match=r"no version 'v0009'"):
        store.restore("v0009")
    with pytest.raises(InputError, match="must be a forensics.Dataset or a plan applied to one"):
        store.commit(inv.dataset.images)
    (tmp_path / "versions" / "audit.jsonl").unlink()
    with pytest.raises(IntegrityError, match=r"holds versions \['v0001'\] but its audit log audit.jsonl is missing"):
        VersionStore(tmp_path / "versions")


_COMMIT_AND_DIE = """
import os, sys, numpy as np
from forensics.data import Dataset
from forensics import _io
from forensics.versions import VersionStore
store = VersionStore(sys.argv[1])
ds = Dataset.from_numpy(np.zeros((5, 4, 4), np.uint8) + np.arange(5)[:, None, None].astype(np.uint8), [0, 1, 0, 1, 0])
real_rename = os.rename
def die(src, dst):  # killed after the version is written, before it is renamed into place
    os.kill(os.getpid(), 9)
os.rename = die
store.commit(ds)
"""


def test_a_commit_killed_midway_leaves_the_previous_version_intact_and_current(inv, tmp_path):
    root = tmp_path / "versions"
    store = VersionStore(root)
    v1 = store.commit(inv.dataset)
    done = subprocess.run([sys.executable, "-c", _COMMIT_AND_DIE, str(root)], capture_output=True)
    assert done.returncode == -9, done.stderr.decode()
    store = VersionStore(root)
    assert store.current == v1 and store.ids() == [v1] and len(store.audit) == 1
    assert store.load().content_hash == inv.dataset.content_hash
    assert any(p.name.startswith(".incoming-") for p in root.iterdir())  # the torn write, under no version name
    assert store.commit(inv.dataset) == "v0002"
    assert not any(p.name.startswith(".incoming-") for p in root.iterdir())


def test_the_versions_command_lists_diffs_and_restores(inv, tmp_path, capsys):
    from forensics.cli import main

    root = tmp_path / "versions"
    store = VersionStore(root)
    v1 = store.commit(inv.dataset, note="as received", who="ana")
    store.commit(plan_remediation(inv).apply(inv.dataset), note="sanitized", who="ana")
    assert main(["versions", str(root)]) == 0
    listing = capsys.readouterr().out
    assert "v0001" in listing and "sanitized" in listing and "True" in listing
    assert main(["versions", str(root), "diff", v1, "v0002"]) == 0
    assert "removed" in capsys.readouterr().out
    assert main(["versions", str(root), "readmit", "s11", "--note", "clean after all"]) == 0
    assert "v0003 written and made current" in capsys.readouterr().out
    assert "s11" in set(VersionStore(root).load().ids) and VersionStore(root).audit[-1]["action"] == "readmit"
    assert main(["versions", str(root), "readmit"]) == 2
    assert "takes the ids of the quarantined samples" in capsys.readouterr().err
    assert main(["versions", str(root), "restore", v1, "--note", "rollback"]) == 0
    assert "v0001 is current again" in capsys.readouterr().out and VersionStore(root).current == v1
    assert VersionStore(root).audit[-1]["note"] == "rollback"
    assert main(["versions", str(root), "restore"]) == 2
    assert "versions restore takes 1 version id(s); got 0" in capsys.readouterr().err
    assert main(["versions", str(tmp_path / "nowhere")]) == 2


def test_an_investigation_plans_with_the_same_policy(inv):
    plan = inv.plan(sources=["bot"], relabel=False)
    assert plan.table.equals(plan_remediation(inv, sources=["bot"], relabel=False).table)
    assert plan.policy["sources"] == ["bot"] and plan.policy["investigation"] == inv.id


# ------------------------------------------------------------------------------------------------ verify
@pytest.fixture(scope="module")
def backdoored_digits():
    """1,400 digits with a 2x2 corner patch on 60 of them relabelled 0, and 397 held-out digits."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from sklearn.datasets import load_digits

    from forensics.redteam import patch_backdoor

    d = load_digits()
    images = (d.images * 16).clip(0, 255).astype(np.uint8)
    ids = [f"digit-{i:04d}" for i in range(len(images))]
    full = Dataset.from_numpy(images, d.target, ids=ids, sources=[f"worker-{i % 12:02d}" for i in range(len(images))])
    train, holdout = full.subset(np.arange(len(full)) < 1400), full.subset(np.arange(len(full)) >= 1400)
    return patch_backdoor(train, target=0, n=60, size=2, source="worker-99", random_state=0), holdout


def test_verify_retrains_and_shows_the_backdoor_gone_at_little_cost(backdoored_digits):
    import functools

    from forensics import investigate
    from forensics.models import train_reference_model

    poisoning, holdout = backdoored_digits
    ds = poisoning.dataset
    train = functools.partial(train_reference_model, epochs=8, random_state=0, progress=False)
    inv = investigate(ds, train(ds), signals=("spectral", "robust_spectral", "activation_cluster", "low_loss",
                                              "high_loss"), progress=False)
    inv.find_triggers(holdout=holdout)
    confirmed = inv.triggers[inv.triggers["verdict"] == "confirmed"]
    assert len(confirmed) == 1 and confirmed.iloc[0]["box"] == (6, 6, 2, 2)
    plan = inv.plan()
    poison = poisoning.truth.loc[ds.ids, "is_poison"].to_numpy(bool)
    assert np.isin(ds.ids[poison], plan.table.index).all()
    result = inv.verify(plan.apply(ds), holdout=holdout, train_fn=train)
    t = result.table
    asr = f"asr {confirmed.iloc[0]['trigger_id']}"
    assert list(t.index) == ["original", "sanitized"] and t.loc["original", "n_train"] == 1400
    assert t.loc["original", asr] >= 0.5 and t.loc["sanitized", asr] <= 0.05
    assert t.loc["sanitized", "accuracy"] >= t.loc["original", "accuracy"] - 0.03
    assert 0 <= t.loc["sanitized", "flagged"] < t.loc["original", "flagged"]  # the patched group is gone
    assert result.per_class.shape == (10, 2)
    assert "attack success of image-" in result.summary()


def test_verify_names_a_bad_train_fn(backdoored_digits):
    from forensics.verify import verify

    poisoning, holdout = backdoored_digits
    ds = poisoning.dataset
    inv = Investigation(ds, signals=pd.DataFrame({"suspicion": np.zeros(len(ds)), "reasons": ""},
                                                 index=pd.Index(ds.ids)), samples=ds.to_frame())

    def broken(_):
        raise RuntimeError("out of memory")

    with pytest.raises(InputError, match="train_fn raised RuntimeError on the original data: out of memory"):
        verify(inv, ds, holdout=holdout, train_fn=broken)
    with pytest.raises(InputError, match="train_fn returned int on the original data"):
        verify(inv, ds, holdout=holdout, train_fn=lambda _: 3)
    with pytest.raises(InputError, match="holdout holds texts"):
        verify(inv, ds, holdout=Dataset.from_texts(["a"], [0]), train_fn=broken)


def test_the_sanitize_command_writes_the_plan_and_a_new_version(inv, tmp_path, capsys):
    from forensics.cli import main

    inv.save(tmp_path / "inv")
    store = tmp_path / "versions"
    assert main(["sanitize", str(tmp_path / "inv"), "--dry-run", "--source", "bot"]) == 0
    assert "remove 9, relabel 4, quarantine 1; 30 kept" in capsys.readouterr().out and not store.exists()
    assert main(["sanitize", str(tmp_path / "inv"), "--versions", str(store), "--source", "bot",
                 "--plan-out", str(tmp_path / "plan.csv"), "--note", "first pass"]) == 0
    out = capsys.readouterr().out
    assert "v0002 written to" in out and "(30 samples)" in out
    versions = VersionStore(store)
    assert versions.list()["note"].tolist() == ["as investigated", "first pass"]
    assert versions.load("v0001").content_hash == inv.dataset.content_hash
    plan = pd.read_csv(tmp_path / "plan.csv")
    assert len(plan) == 14 and set(plan["action"]) == {"remove", "relabel", "quarantine"}
    # The store's current version is now the sanitized data, not the one investigated: refused.
    assert main(["sanitize", str(tmp_path / "inv"), "--versions", str(store)]) == 2
    assert "is not the investigated data" in capsys.readouterr().err
    assert main(["sanitize", str(tmp_path / "inv")]) == 2
    assert "needs --versions STORE" in capsys.readouterr().err
    assert main(["sanitize", str(tmp_path / "inv"), "--dry-run", "--source", "eve"]) == 2
    assert "sources ['eve'] are not in the data" in capsys.readouterr().err


def test_the_verify_command_passes_a_sanitized_version_and_fails_the_original(backdoored_digits, tmp_path, capsys):
    import functools

    from forensics import investigate
    from forensics.cli import main
    from forensics.models import train_reference_model

    poisoning, holdout = backdoored_digits
    ds = poisoning.dataset
    model = functools.partial(train_reference_model, epochs=8, random_state=0, progress=False)(ds)
    inv = investigate(ds, model, signals=("spectral", "activation_cluster", "low_loss"), progress=False)
    inv.find_triggers(holdout=holdout)
    inv.save(tmp_path / "inv")
    store = VersionStore(tmp_path / "versions")
    v1 = store.commit(ds, note="as received")
    store.commit(inv.plan().apply(ds), note="sanitized")
    np.savez(tmp_path / "holdout.npz", images=holdout.images, labels=holdout.labels, ids=holdout.ids.astype(str),
             class_names=np.asarray(holdout.class_names, dtype=str))
    common = ["verify", str(tmp_path / "inv"), "--versions", str(tmp_path / "versions"), "--holdout",
              str(tmp_path / "holdout.npz"), "--max-accuracy-drop", "0.03"]
    assert main([*common, "--table-out", str(tmp_path / "verify.csv"), "--report", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "attack success of image-" in out
    assert "Retrained: before and after" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert pd.read_csv(tmp_path / "verify.csv")["model"].tolist() == ["original", "sanitized"]
    assert main([*common, "--version", v1]) == 1  # the unsanitized data: the patch still works
    assert "still works" in capsys.readouterr().out
    assert main([*common[:-2], "--version", "v0009"]) == 2
    assert "no version 'v0009'" in capsys.readouterr().err


def test_a_quarantined_sample_readmitted_after_review_is_a_recorded_version(inv, tmp_path):
    store = VersionStore(tmp_path / "versions")
    v1 = store.commit(inv.dataset)
    v2 = store.commit(plan_remediation(inv).apply(store.load(v1)), note="sanitized")
    held = store.quarantine()
    assert held is not None and list(held.ids) == ["s11"] and store.quarantine(v1) is None
    with pytest.raises(InputError, match=r"1 sample\(s\) are not in the quarantine of v0002: 's05'"):
        store.readmit(["s05"])
    v3 = store.readmit("s11", note="reviewed: a clean cat", who="ben")
    assert store.current == v3 and store.info(v3)["parent"] == v2
    back = store.load(v3)
    assert len(back) == len(store.load(v2)) + 1 and "s11" in set(back.ids)
    assert back.labels[list(back.ids).index("s11")] == inv.dataset.labels[11]  # its own label, as received
    entry = store.audit[-1]
    assert entry["action"] == "readmit" and entry["ids"] == ["s11"] and entry["who"] == "ben"
    assert store.quarantine(v3) is None
    with pytest.raises(InputError, match="not in the quarantine of v0003"):
        store.readmit(["s11"])
