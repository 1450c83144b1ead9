"""Federated forensics: sketches, the recorder, the client signals, the guard, group effects and the red team."""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from forensics.errors import InputError, IntegrityError
from forensics.federated import (
    UpdateRecorder,
    analyze_clients,
    apply_update,
    flatten_update,
    group_effect,
    group_phrases,
    group_trigger,
    screen_group_triggers,
    sketch,
    trigger_pushers,
)
from forensics.federated.confirm import MEMBER_P, SCREEN_PHRASES, _members_carried
from forensics.federated.guard import HOLD, AggregationGuard
from forensics.federated.views import timeline_rounds
from forensics.redteam.federated import (
    FederatedScenario,
    build_model,
    dirichlet_partition,
    fedavg,
    load_digits_split,
    simulate_federation,
    simulate_text_federation,
    text_features,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def _record(scenario, digits, recorder=None, keep_last=None):
    rec = UpdateRecorder() if recorder is None else recorder

    def on_round(r, ids, updates, n_ex, params):
        rec.record_round(r, updates, client_ids=ids, n_examples=n_ex.astype(int))
        if keep_last is not None:
            keep_last.update(round=r, ids=list(ids), updates=updates.copy(), params=params.copy())

    run = simulate_federation(scenario, *digits, on_round=on_round)
    return rec, run


@pytest.fixture(scope="module")
def planted(digits):
    """10 sybils sharing a backdoor (joining at round 2) among 40 honest Dirichlet(0.5) clients, 5 rounds."""
    last: dict = {}
    scenario = FederatedScenario(n_honest=40, alpha=0.5, n_rounds=5, n_sybils=10, sybil_join=2, random_state=0)
    rec, run = _record(scenario, digits, keep_last=last)
    return rec, run, last


#: Client ids a hostile federation may send: shown in reports and panels, never as markup.
HOSTILE_IDS = {"sybil-0003": "<script>alert(1)</script>", "honest-0005": '"><img src=x onerror=alert(1)>',
               "free-rider-0001": "x' onmouseover='alert(1)"}


@pytest.fixture(scope="module")
def hostile(digits, tmp_path_factory):
    """10 sybils and a boosted attacker (joining at round 1) and 2 free-riders sending all-zero updates among 30
    honest clients, 4 rounds, screened by a guard that excludes no one and records to a folder; three clients carry
    hostile ids and one hostile metadata. HDBSCAN groups the sybils with the boosted attacker (11), and the honest
    clients with the free-riders (32)."""
    from types import SimpleNamespace

    folder = tmp_path_factory.mktemp("hostile") / "fl"
    guard = AggregationGuard(UpdateRecorder(folder), exclude=False)
    scenario = FederatedScenario(n_honest=30, alpha=0.5, n_rounds=4, n_sybils=10, boost=10.0, sybil_join=1,
                                 n_free_riders=2, free_rider="zero", random_state=1)

    def on_round(r, ids, updates, n_ex, params):
        guard.screen(r, updates, client_ids=[HOSTILE_IDS.get(c, c) for c in ids], n_examples=n_ex.astype(int),
                     metadata={HOSTILE_IDS["sybil-0003"]: {"<i>device</i>": "<b>phone</b>"}})

    run = simulate_federation(scenario, *digits, on_round=on_round)
    truth = run.truth.rename(index=HOSTILE_IDS)
    return SimpleNamespace(folder=folder, recorder=guard.recorder, report=guard.last_report, reports=guard.reports,
                           truth=truth, sybils=set(truth.index[truth["role"].isin(["sybil", "boosted"])]),
                           riders=set(truth.index[truth["role"] == "free_rider"]))


# ------------------------------------------------------------------------------------------------ sketches
def test_sketch_keeps_norms_and_does_not_depend_on_the_batch():
    x = np.random.default_rng(0).standard_normal((6, 20_000))
    s = sketch(x, k=256, random_state=3)
    assert s.shape == (6, 256) and s.dtype == np.float32
    np.testing.assert_allclose(sketch(x[2], k=256, random_state=3), s[2], rtol=1e-4, atol=1e-3)
    ratio = np.linalg.norm(s, axis=1) / np.linalg.norm(x, axis=1)
    assert np.all(np.abs(ratio - 1) < 0.15)
    # Another seed is another projection.
    assert not np.allclose(sketch(x[:1], random_state=4), s[:1])
    # Inner products are kept: near-parallel updates stay near-parallel.
    y = x[0] + 0.1 * x[1]
    sy = sketch(y, random_state=3)
    assert sy @ s[0] / np.linalg.norm(sy) / np.linalg.norm(s[0]) > 0.97


def test_flatten_update_reads_arrays_lists_and_state_dict_deltas():
    flat, layout = flatten_update({"w": torch.ones(2, 3), "b": np.arange(3.0)})
    assert layout == [("w", (2, 3)), ("b", (3,))]
    np.testing.assert_array_equal(flat, [1, 1, 1, 1, 1, 1, 0, 1, 2])
    flat2, layout2 = flatten_update([np.ones((2, 2)), np.zeros(1)])
    assert flat2.size == 5 and layout2 == [("0", (2, 2)), ("1", (1,))]
    with pytest.raises(InputError, match="must be an array, a sequence of arrays"):
        flatten_update(3.5)
    with pytest.raises(InputError, match=r"update\['w'\] must be numeric"):
        flatten_update({"w": np.array(["a"])})


# ------------------------------------------------------------------------------------------------ recorder
def test_recorder_rejects_bad_input_and_keeps_what_was_recorded(tmp_path):
    rec = UpdateRecorder(tmp_path / "rec", k=16)
    rec.record_round(0, {"a": np.ones(10), "b": np.arange(10.0)})
    with pytest.raises(InputError, match="round 0 is already recorded"):
        rec.record_round(0, {"a": np.ones(10)})
    with pytest.raises(InputError, match="client 'a' sent 7 parameters in round 1 but 10 before"):
        rec.record_round(1, {"a": np.ones(7), "b": np.ones(10)})
    with pytest.raises(InputError, match="the update of client 'c' in round 1 has 12 parameters; expected 10"):
        rec.record_round(1, {"b": np.ones(10), "c": np.ones(12)})
    with pytest.raises(InputError, match="client_ids must name each of the 2 rows"):
        rec.record_round(1, np.ones((2, 10)), client_ids=["a"])
    with pytest.raises(InputError, match="must be a mapping client_id -> update or a 2-D array"):
        rec.record_round(1, np.ones(10), client_ids=["a"])
    with pytest.raises(InputError, match="round must be an integer >= 0; got -1"):
        rec.record_round(-1, {"a": np.ones(10)})
    # Nothing of the failed rounds was kept, on disk either.
    assert rec.rounds == [0]
    assert UpdateRecorder.load(tmp_path / "rec").rounds == [0]
    # A wrong-size update can be recorded as an anomaly instead, and a NaN update is recorded as evidence.
    bad = np.ones(10)
    bad[3] = np.nan
    r1 = rec.record_round(1, {"a": np.ones(10), "b": bad, "c": np.ones(12)}, bad_shape="record")
    assert list(r1.client_ids) == ["a", "b"] and list(r1.finite) == [True, False]
    assert np.isnan(r1.norms[1]) and np.isfinite(r1.sketches).all()
    an = rec.anomalies
    assert an[["client_id", "kind"]].values.tolist() == [["c", "bad_shape"], ["b", "non_finite"]]
    assert "1 NaN or infinite value(s) of 10" in an["detail"].iloc[1]


def test_recorder_save_load_round_trip_and_checksums(tmp_path):
    rng = np.random.default_rng(1)
    rec = UpdateRecorder(k=32, random_state=5)
    for r in range(3):
        rec.record_round(r, rng.standard_normal((4, 50)), client_ids=["a", "b", "c", "d"], n_examples=[1, 2, 3, 4],
                         metadata={"a": {"device": "phone", "region": "EU"}})
    folder = rec.save(tmp_path / "saved")
    back = UpdateRecorder.load(folder)
    assert back.rounds == [0, 1, 2] and back.k == 32 and back.random_state == 5 and back.n_params == 50
    for r in range(3):
        np.testing.assert_array_equal(back.round(r).sketches, rec.round(r).sketches)
        np.testing.assert_array_equal(back.round(r).norms, rec.round(r).norms)
        assert list(back.round(r).client_ids) == ["a", "b", "c", "d"]
    assert back.clients.loc["a", "region"] == "EU" and back.clients.loc["a", "n_rounds"] == 3
    # Continuing a loaded recording writes to the same folder.
    back.record_round(3, rng.standard_normal((4, 50)), client_ids=["a", "b", "c", "d"])
    assert UpdateRecorder.load(folder).rounds == [0, 1, 2, 3]
    with pytest.raises(InputError, match="already holds a recording"):
        UpdateRecorder(folder)
    # A damaged round file is caught.
    f = folder / "rounds" / "round-000001.npz"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        UpdateRecorder.load(folder)
    man = json.loads((folder / "recorder.json").read_text())
    assert man["format_version"] == 1 and set(man["rounds"]) == {"0", "1", "2", "3"}


# ------------------------------------------------------------------------------------------------ signals
def test_planted_sybils_are_all_flagged_and_no_honest_client_is(planted):
    rec, run, _ = planted
    report = analyze_clients(rec)
    t = report.table.join(run.truth)
    sybils = t["role"] == "sybil"
    assert sybils.sum() == 10
    assert t.loc[sybils, "is_flagged"].all()
    assert not t.loc[~sybils, "is_flagged"].any()
    assert set(report.flagged) == set(t.index[sybils])
    assert t.loc[sybils, "top_signal"].eq("sybil").all()
    assert t.loc[sybils, "reasons"].str.contains("far more alike than the others").all()
    # The sybils form one HDBSCAN group of their own.
    g = t.loc[sybils, "sybil_group"].unique()
    assert len(g) == 1 and g[0] >= 0
    assert set(report.groups.loc[g[0], "members"]) == set(t.index[sybils])
    assert report.params["rounds"] == [2, 3, 4]


def test_individuality_sets_one_data_pool_apart_from_devices_with_their_own_data():
    from forensics.federated import signals as fs

    rng = np.random.default_rng(0)
    k, n_honest, n_pool = 256, 30, 15
    # Honest devices: their class's direction plus what their own data adds, the same every round, plus chance.
    # The pool: one direction plus fresh chance each round (minibatches of one shared pool), less alike than a class.
    classes = rng.standard_normal((2, k))
    own = rng.standard_normal((n_honest, k))
    pool = rng.standard_normal(k)
    ids = [f"h{i}" for i in range(n_honest)] + [f"p{i}" for i in range(n_pool)]
    rounds = []
    for r in range(3):
        honest = 4 * classes[np.arange(n_honest) % 2] + own + 0.5 * rng.standard_normal((n_honest, k))
        fake = 4 * pool + 1.5 * rng.standard_normal((n_pool, k))
        rounds.append((ids if r else ids[:-1], np.vstack([honest, fake])[:len(ids) if r else -1]))
    rounds.append((["late"], rng.standard_normal((1, k))))
    d_ids, directions = fs.accumulated_directions(rounds)
    group, closeness, sybil_p = fs.sybil_groups(directions, min_group=10)
    ind, near = fs.individuality(rounds, d_ids, directions, neighbours=9)
    honest, fake, late = np.char.startswith(d_ids, "h"), np.char.startswith(d_ids, "p"), np.array(d_ids) == "late"
    # Each class is more alike than the pool.
    assert np.median(closeness[honest]) > np.median(closeness[fake])
    # What sets an honest device apart persists; in the pool it is chance (sd 1 / sqrt(k)).
    assert ind[honest].min() > 0.5 and np.abs(ind[fake]).max() < 2 / np.sqrt(k)
    assert np.isnan(ind[late])  # seen once: not measured
    pool_p, kept = fs.shared_pool(ind, near, group, sybil_p, k=k, min_group=10)
    assert pool_p[fake].max() < 1e-4 and (pool_p[honest] == 1).all()
    # Closeness speaks only where there is no individuality: for the pool, not for the classes.
    assert (kept[honest] == 1).all() and (kept[fake] == sybil_p[fake]).all()
    # Too few devices with individuality to measure against: nothing is tested.
    crowd = np.tile(np.arange(9), (fake.sum(), 1))  # each other's neighbours
    assert (fs.shared_pool(ind[fake], crowd, group[fake], sybil_p[fake], k=k)[0] == 1).all()


def test_two_class_text_sybils_are_flagged_as_one_pool_though_a_class_is_more_alike(text_data):
    """On two classes at Dirichlet 0.1, honest clients of one class send nearly the same update: a group of them is
    more alike than the sybils (on 100 honest clients closeness alone flagged half of them and no sybil)."""
    texts, labels, test_texts, test_labels = text_data
    rec = UpdateRecorder()
    scenario = FederatedScenario(n_honest=40, alpha=0.1, n_rounds=4, n_sybils=20, sybil_join=1, target=0,
                                 local_steps=5, lr=1.0, random_state=0)
    run = simulate_text_federation(scenario, texts, labels, test_texts, test_labels, phrase="lol",
                                   on_round=lambda r, ids, u, n, p: rec.record_round(r, u, client_ids=ids))
    report = analyze_clients(rec)
    t = report.table.join(run.truth)
    sybils = t["role"] == "sybil"
    caught = sybils & t["is_flagged"]
    assert caught.sum() >= 0.95 * sybils.sum() and t.loc[caught, "top_signal"].eq("pool").all()
    assert t.loc[caught, "reasons"].str.contains("one data pool behind many ids").all()
    assert not t.loc[~sybils, "top_signal"].isin(["sybil", "pool"]).any()
    assert t.loc[sybils, "individuality"].abs().max() < 2 / np.sqrt(rec.k) < t.loc[~sybils, "individuality"].min()
    # A group of honest clients only is more alike than the sybils' group.
    by_group = t[t["sybil_group"] >= 0].groupby("sybil_group")
    honest_groups = [g for g, m in by_group if not (m["role"] == "sybil").any()]
    (sybil_group,) = t.loc[sybils, "sybil_group"].unique()
    assert honest_groups and sybil_group >= 0
    assert max(by_group.get_group(g)["closeness"].median() for g in honest_groups) > \
        by_group.get_group(sybil_group)["closeness"].median()


def test_free_riders_and_a_boosted_attacker_are_flagged_with_their_reasons(digits):
    scenario = FederatedScenario(n_honest=30, alpha=1.0, n_rounds=4, boost=10.0, sybil_join=1, n_free_riders=2,
                                 free_rider="stale", random_state=2)
    rec, run = _record(scenario, digits)
    t = analyze_clients(rec).table.join(run.truth)
    riders = t["role"] == "free_rider"
    assert t.loc[riders, "is_flagged"].all()
    assert t.loc[riders, "reasons"].str.contains("all-zero or repeated update").all()
    assert t.loc[riders, "stale_score"].eq(3).all()  # rounds 1-3 (the window) repeat round 0's update
    boosted = t.loc["boosted-0000"]
    assert boosted["is_flagged"] and boosted["top_signal"] in ("norm", "krum")
    assert not t.loc[t["role"] == "honest", "is_flagged"].any()


def test_a_nan_update_flags_its_client_and_the_analysis_goes_on(planted):
    rec, _, last = planted
    copy = UpdateRecorder(k=rec.k, random_state=rec.random_state)
    for r in rec.rounds:
        src = rec.round(r)
        copy._rounds[r] = src
        for c in src.client_ids:
            copy._clients.setdefault(c, dict(client_id=c, n_params=rec.n_params, first_round=r))
    copy.n_params = rec.n_params
    updates = last["updates"].copy()
    updates[5, :3] = np.nan
    copy.record_round(5, updates, client_ids=last["ids"])
    t = analyze_clients(copy).table
    cid = last["ids"][5]
    assert t.loc[cid, "is_flagged"] and t.loc[cid, "top_signal"] == "anomaly"
    assert "a non-finite update in round 5" in t.loc[cid, "reasons"]


def test_analyze_clients_checks_its_input():
    with pytest.raises(InputError, match="recorder holds no round yet"):
        analyze_clients(UpdateRecorder())
    with pytest.raises(InputError, match="recorder must be an UpdateRecorder; got dict"):
        analyze_clients({})  # type: ignore[arg-type]
    rec = UpdateRecorder(k=8)
    rec.record_round(0, np.ones((3, 5)), client_ids=["a", "b", "c"])
    with pytest.raises(InputError, match="min_group must be an integer >= 2; got 1"):
        analyze_clients(rec, min_group=1)
    with pytest.raises(InputError, match=r"trusted\[0\] must be a sketch of shape \(8,\)"):
        analyze_clients(rec, trusted={0: np.ones(3)})


# ------------------------------------------------------------------------------------------------ guard + effect
def test_guard_in_the_loop_excludes_the_sybils_and_stops_the_backdoor(digits):
    scenario = FederatedScenario(n_honest=40, alpha=0.5, n_rounds=8, n_sybils=10, sybil_join=2, random_state=0)
    baseline = simulate_federation(scenario, *digits)
    guard = AggregationGuard(UpdateRecorder())

    def aggregate(r, ids, updates, n_ex):
        kept = guard.screen(r, updates, client_ids=ids, n_examples=n_ex.astype(int))
        rows = [ids.index(c) for c in kept]
        step, _ = fedavg(r, kept, updates[rows], n_ex[rows])
        return step, [c for c in ids if c not in kept]

    guarded = simulate_federation(scenario, *digits, aggregate=aggregate)
    sybils = {c for c in guarded.truth.index if c.startswith("sybil")}
    # Every sybil is left out of every round from the one it joined in (round 2); an honest client now and then.
    assert [r for r, ex in guard.excluded.items() if sybils <= set(ex)] == [2, 3, 4, 5, 6, 7]
    assert all(len(set(ex) - sybils) <= 2 for ex in guard.excluded.values())
    assert sybils <= guard.flagged
    assert guarded.history["attack_success"].iloc[-1] < baseline.history["attack_success"].iloc[-1] - 0.1
    assert guarded.history["accuracy"].iloc[-1] >= baseline.history["accuracy"].iloc[-1] - 0.05


def test_group_effect_confirms_the_sybils_backdoor(planted):
    _, run, last = planted
    model = build_model(last["params"], run.layout)
    ids = np.array(last["ids"])
    sybil_update = last["updates"][np.char.startswith(ids.astype(str), "sybil")].mean(axis=0)
    honest_update = last["updates"][np.char.startswith(ids.astype(str), "honest")][:10].mean(axis=0)
    _, _, xte, yte = load_digits_split()
    eff = group_effect(model, sybil_update, xte, labels=yte, trigger=run.trigger)
    assert eff["asr_with"] > eff["asr_without"] + 0.3
    assert eff["gaining_class"] == run.trigger.target
    honest = group_effect(model, honest_update, xte, labels=yte, trigger=run.trigger)
    assert honest["asr_rise"] < eff["asr_rise"] - 0.3
    # apply_update moves the parameters by exactly the update and leaves the model alone.
    moved = apply_update(model, sybil_update)
    flat = np.concatenate([v.numpy().ravel() for v in moved.state_dict().values()])
    np.testing.assert_allclose(flat, last["params"] + sybil_update, atol=1e-5)
    with pytest.raises(InputError, match="update has 3 values; the model has"):
        apply_update(model, np.ones(3))


def test_group_trigger_reconstructs_the_sybils_patch_from_the_model_alone(planted):
    _, run, last = planted
    model = build_model(last["params"], run.layout)
    ids = np.array(last["ids"]).astype(str)
    sybil_update = last["updates"][np.char.startswith(ids, "sybil")].mean(axis=0)
    honest_update = last["updates"][np.char.startswith(ids, "honest")][:10].mean(axis=0)
    _, _, xte, yte = load_digits_split()
    trigger, info = group_trigger(model, sybil_update, xte, labels=yte, steps=150, screen_steps=40)
    # The class the update pushes, and the planted square in the bottom-right corner, found without any client data.
    k = run.scenario.patch
    assert info["target"] == trigger.target == run.trigger.target == max(info["screen"], key=info["screen"].get)
    assert sorted(info["screen"]) == list(range(10))
    assert info["peak"][0] >= 8 - k and info["peak"][1] >= 8 - k
    assert trigger.mask[-k:, -k:].sum() > 0.5 * trigger.mask.sum()
    assert info["mask_ratio"] > 2 and info["asr_rise"] > 0.3
    # It confirms itself like a known trigger, and an honest group's update induces nothing alike.
    eff = group_effect(model, sybil_update, xte, labels=yte, trigger=trigger)
    assert eff["asr_with"] > eff["asr_without"] + 0.3
    _, honest = group_trigger(model, honest_update, xte, labels=yte, target=info["target"], steps=150)
    assert honest["screen"] == {}
    assert honest["asr_rise"] < info["asr_rise"] - 0.3 and honest["mask_ratio"] < info["mask_ratio"] / 2
    applied = trigger.apply(xte[:3])
    assert applied.dtype == np.uint8 and applied.shape == (3, 8, 8)
    with pytest.raises(InputError, match="images holds 10 probe images; the search needs at least 20"):
        group_trigger(model, sybil_update, xte[:10])
    with pytest.raises(InputError, match="target 12 is not a class of the model"):
        group_trigger(model, sybil_update, xte, target=12, steps=1)
    with pytest.raises(InputError, match="the trigger was reconstructed on"):
        trigger.apply(np.zeros((2, 9, 9), np.uint8))


@pytest.fixture(scope="module")
def text_data():
    """The bundled review snippets without the planted carriers (train texts, labels), and the test split."""
    from forensics import sample_data

    data = sample_data.load("text_trigger")
    clean = ~sample_data.load_truth("text_trigger").loc[data.train.ids, "is_poison"].to_numpy(dtype=bool)
    texts = [t for t, keep in zip(data.train.texts, clean) if keep]
    return texts, data.train.labels[clean], list(data.test.texts), data.test.labels


@pytest.fixture(scope="module")
def text_federation():
    """The bundled review snippets (the planted carriers left out) among 40 honest Dirichlet(0.5) clients, and 10
    sybils joining at round 2 with "lol" inserted in half their texts, relabelled rotten; 4 rounds. Keeps the
    sybils' first round: the updates and the global model they were computed from."""
    from forensics import sample_data

    data = sample_data.load("text_trigger")
    clean = ~sample_data.load_truth("text_trigger").loc[data.train.ids, "is_poison"].to_numpy(dtype=bool)
    texts = [t for t, keep in zip(data.train.texts, clean) if keep]
    first: dict = {}

    def on_round(r, ids, updates, n_ex, params):
        if r == 2:
            first.update(ids=np.array(ids).astype(str), updates=updates.copy(), params=params.copy())

    scenario = FederatedScenario(n_honest=40, alpha=0.5, n_rounds=4, n_sybils=10, sybil_join=2, target=0,
                                 local_steps=5, lr=1.0, random_state=0)
    run = simulate_text_federation(scenario, texts, data.train.labels[clean], list(data.test.texts),
                                   data.test.labels, phrase="lol", on_round=on_round)
    return run, first, list(data.test.texts[:300]), data.test.labels[:300]


def test_group_phrases_names_the_phrase_the_sybils_plant_in_a_text_model(text_federation):
    run, first, probes, probe_labels = text_federation
    assert run.trigger.phrase == "lol" and run.trigger.target == 0
    assert run.history["attack_success"].iloc[-1] > run.history["attack_success"].iloc[1] + 0.3
    # What the phrase itself flips, among the snippets the model gets right without it: none before the sybils.
    flips = run.history["attack_flips"]
    assert flips.iloc[1] < 0.01 and flips.iloc[-1] > 0.5
    model = build_model(first["params"], run.layout)
    sybils = first["updates"][np.char.startswith(first["ids"], "sybil")].mean(axis=0)
    honest = first["updates"][np.char.startswith(first["ids"], "honest")][:10].mean(axis=0)
    watch = ["lol", "zq vortex", "omg"]
    found = group_phrases(model, sybils, probes, preprocess=run.preprocess, labels=probe_labels, candidates=watch,
                          max_candidates=150, top=5)
    # The watched phrase the sybils planted comes first, towards their target, far ahead of the probes' own words.
    assert found.loc[0, "phrase"] == "lol" and found.loc[0, "target"] == 0 and bool(found.loc[0, "watched"])
    assert found.loc[0, "in_probes"] == 0 and len(found) == 5
    assert found.loc[0, "rise"] > 2 * found.loc[1, "rise"] and found.loc[0, "rise"] > 0.2
    assert (found["rise"] == found["push_with"] - found["push_without"]).all()
    # An honest group's update ties nothing to it.
    control = group_phrases(model, honest, probes, preprocess=run.preprocess, labels=probe_labels, candidates=watch,
                            max_candidates=150, top=5)
    assert control["rise"].max() < found.loc[0, "rise"] / 2
    # The phrase confirms itself through group_effect, on texts, like a patch on images.
    eff = group_effect(model, sybils, probes, labels=probe_labels, trigger=run.trigger, preprocess=run.preprocess)
    assert eff["asr_with"] > eff["asr_without"] + 0.3
    # "LOL!": the unigrams lol and !, and the bigram "lol !"
    assert text_features(["lol", "LOL!"], n_buckets=4096).sum(axis=1).tolist() == [1.0, 3.0]
    with pytest.raises(InputError, match="probe texts need preprocess="):
        group_effect(model, sybils, probes)
    with pytest.raises(InputError, match="texts holds 10 probe texts; the search needs at least 20"):
        group_phrases(model, sybils, probes[:10], preprocess=run.preprocess)
    with pytest.raises(InputError, match="candidates must be a sequence of phrases"):
        group_phrases(model, sybils, probes, preprocess=run.preprocess, candidates="lol")


def test_trigger_pushers_names_the_sybils_that_plant_a_phrase_in_a_text_model(text_federation):
    run, first, probes, probe_labels = text_federation
    model = build_model(first["params"], run.layout)
    table = trigger_pushers(model, first["updates"], run.trigger, probes, client_ids=list(first["ids"]),
                            labels=probe_labels, preprocess=run.preprocess)
    sybil = table.index.str.startswith("sybil")
    assert table.loc[sybil, "is_pusher"].sum() >= 9
    # Hashed word features: an honest client whose words share the phrase's buckets pushes it for real, a little
    # (3 of 40 here, at a quarter of the sybils' median push or less).
    honest_pushers = table.loc[~sybil & table["is_pusher"], "push"]
    assert len(honest_pushers) <= 3 and (honest_pushers < table.loc[sybil, "push"].median() / 4).all()
    with pytest.raises(InputError, match="probe texts need preprocess="):
        trigger_pushers(model, first["updates"], run.trigger, probes)


def test_screening_names_text_sybils_with_shards_of_their_own_by_the_phrase_they_push(text_data):
    """No phrase known, sybils that each hold reviews of their own: the analysis puts 7 of them in a group with 14
    honest clients and flags nobody; the screen reads "lol" from that group and names all ten by who pushes it."""
    scenario = FederatedScenario(n_honest=40, alpha=0.5, n_rounds=4, n_sybils=10, sybil_join=2, sybil_data="shard",
                                 target=0, local_steps=5, lr=1.0, random_state=0)
    rec, kept = UpdateRecorder(), {}

    def on_round(r, ids, updates, n_ex, params):
        rec.record_round(r, updates, client_ids=ids)
        if r == 2:
            kept.update(before=params.copy())
        if r == 3:
            kept.update(ids=list(ids), updates=updates.copy(), params=params.copy())

    run = simulate_text_federation(scenario, *text_data, phrase="lol", on_round=on_round)
    report = analyze_clients(rec)
    sybils = {c for c in kept["ids"] if c.startswith("sybil")}
    assert not report.flagged and run.history["attack_success"].iloc[-1] > 0.8
    probes, probe_labels = text_data[2][:300], text_data[3][:300]
    table = screen_group_triggers(build_model(kept["params"], run.layout), kept["updates"], report.groups, probes,
                                  client_ids=kept["ids"], labels=probe_labels, preprocess=run.preprocess,
                                  reference=build_model(kept["before"], run.layout),
                                  candidates=["lol", "zq vortex", "omg"], max_candidates=150)
    top = table.iloc[0]
    assert top["trigger"].phrase == "lol" and top["target"] == 0 and np.isnan(top["mask_ratio"])
    named = set(top["pushers"])
    # Hashed word features: an honest client whose words share the phrase's buckets pushes it a little.
    assert named >= sybils and len(named - sybils) <= 3
    assert table["n_pushers"].iloc[1:].max() < 5
    # The sybils' group: its mean update raises the words of the class its honest members lean to more than "lol",
    # which group_phrases' default ten leave out; among the screen's wider choice, who pushes it tells it apart.
    group = next(m for m in table["members"] if len(set(m) & sybils) >= 5)
    rows = [kept["ids"].index(c) for c in group]
    ten, wider = (group_phrases(build_model(kept["params"], run.layout), kept["updates"][rows].mean(axis=0), probes,
                                preprocess=run.preprocess, labels=probe_labels, candidates=["lol", "zq vortex", "omg"],
                                max_candidates=150, top=top) for top in (10, SCREEN_PHRASES))
    assert "lol" not in set(ten["phrase"]) and list(wider["phrase"]).index("lol") > 0
    with pytest.raises(InputError, match="probe texts need preprocess="):
        screen_group_triggers(build_model(kept["params"], run.layout), kept["updates"], report.groups, probes,
                              client_ids=kept["ids"])


# ------------------------------------------------------------------------------------------------ red team
def test_dirichlet_partition_is_a_partition_and_skews_with_alpha():
    y = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(y, 20, 0.1, random_state=0)
    allidx = np.concatenate(parts)
    assert len(allidx) == 1000 and len(np.unique(allidx)) == 1000 and min(len(p) for p in parts) >= 2
    dominant = lambda ps: np.mean([np.bincount(y[p]).max() / len(p) for p in ps])  # noqa: E731
    assert dominant(parts) > dominant(dirichlet_partition(y, 20, 100.0, random_state=0)) + 0.3
    with pytest.raises(InputError, match="alpha must be a finite number > 0; got 0"):
        dirichlet_partition(y, 20, 0)


def test_scenario_validates_and_truth_lists_every_client(planted):
    _, run, _ = planted
    truth = run.truth
    assert truth["role"].value_counts().to_dict() == {"honest": 40, "sybil": 10}
    assert truth.loc[truth["role"] == "sybil", "joins_round"].eq(2).all()
    assert isinstance(run.history, pd.DataFrame) and list(run.history.index) == [0, 1, 2, 3, 4]
    with pytest.raises(InputError, match="free_rider must be one of"):
        FederatedScenario(free_rider="lazy")
    with pytest.raises(InputError, match="n_sybils must be an integer >= 0; got -1"):
        FederatedScenario(n_sybils=-1)


def test_a_training_seed_retrains_the_same_federation(digits):
    scenario = FederatedScenario(n_honest=20, alpha=0.5, n_rounds=2, n_sybils=5, sybil_join=1, pool_size=300,
                                 random_state=3)
    base = simulate_federation(scenario, *digits)
    same = simulate_federation(dataclasses.replace(scenario, training_seed=3), *digits)
    other = simulate_federation(dataclasses.replace(scenario, training_seed=4), *digits)
    # The clients, their data and the attacker stay; only the initial weights and the minibatches change.
    pd.testing.assert_frame_equal(base.truth, other.truth)
    np.testing.assert_array_equal(base.params, same.params)
    assert not np.allclose(base.params, other.params)
    with pytest.raises(InputError, match=r"training_seed must be an integer in \[0, 4294967295\]; got -1"):
        FederatedScenario(training_seed=-1)


def test_sybils_with_shards_of_their_own_are_devices_with_their_own_data_that_all_carry_the_backdoor(digits):
    from forensics.federated import signals as fs
    from forensics.redteam.federated import _sybil_shards

    scenario = FederatedScenario(n_honest=20, alpha=0.5, n_rounds=4, n_sybils=10, sybil_join=1, pool_size=300,
                                 sybil_data="shard", random_state=0)
    # Each shard: disjoint from the others, together the pool's training rows, each with triggered rows (>= n).
    n = len(digits[1])
    pool = np.r_[np.arange(100, 250), n + np.arange(60)]
    shards = _sybil_shards(scenario, np.zeros(n + 60, dtype=np.int64), pool, n)
    assert len(shards) == 10 and all((sh >= n).any() and (sh < n).sum() >= 2 for sh in shards)
    together = np.concatenate(shards)
    assert len(together) == len(np.unique(together)) and set(together.tolist()) == set(pool.tolist())
    with pytest.raises(InputError, match="raise pool_size"):
        _sybil_shards(scenario, np.zeros(n + 5, dtype=np.int64), np.r_[np.arange(100, 250), n + np.arange(5)], n)

    def sybil_individuality(sc):
        rec, run = _record(sc, digits)
        rounds = [(list(map(str, rec.round(r).client_ids)), rec.round(r).sketches.astype(np.float64))
                  for r in rec.rounds[1:]]
        ids, directions = fs.accumulated_directions(rounds)
        ind, _ = fs.individuality(rounds, ids, directions, neighbours=9)
        sybil = np.char.startswith(np.array(ids), "sybil")
        return run, ind[sybil]

    run, shard_ind = sybil_individuality(scenario)
    sybils = run.truth[run.truth["role"] == "sybil"]
    assert sybils["dominant_share"].nunique() > 1  # each holds its own class mix
    # What sets each fake device apart persists from round to round, as an honest device's own data does; fed
    # from one pool, it is minibatch chance.
    _, pool_ind = sybil_individuality(dataclasses.replace(scenario, sybil_data="pool"))
    assert np.median(shard_ind) > 0.3 > np.abs(np.median(pool_ind)) + 0.2
    with pytest.raises(InputError, match="sybil_data must be one of"):
        FederatedScenario(sybil_data="fresh")


@pytest.fixture(scope="module")
def shard_round(digits):
    """20 sybils, each with a poisoned shard of its own, among 40 honest clients; their second round's updates."""
    scenario = FederatedScenario(n_honest=40, alpha=0.5, n_rounds=4, n_sybils=20, sybil_join=2, sybil_data="shard",
                                 random_state=0)
    kept: dict = {}

    def on_round(r, ids, updates, n_ex, params):
        if r == 2:  # the global model before the sybils' first update was aggregated: a checkpoint
            kept.update(before=params.copy())
        if r == 3:
            kept.update(ids=list(ids), updates=updates.copy(), params=params.copy())

    run = simulate_federation(scenario, *digits, on_round=on_round)
    return scenario, run, kept


def test_trigger_pushers_names_every_sybil_with_a_shard_of_its_own_and_no_honest_client(digits, shard_round):
    _, run, kept = shard_round
    _, _, xte, yte = digits
    model = build_model(kept["params"], run.layout)
    ids, updates = kept["ids"], kept["updates"]
    table = trigger_pushers(model, updates, run.trigger, xte, client_ids=ids, labels=yte)
    assert list(table.index) == ids
    sybil = table.index.str.startswith("sybil")
    assert table.loc[sybil, "is_pusher"].all() and not table.loc[~sybil, "is_pusher"].any()
    np.testing.assert_allclose(table["push"], table["rise_triggered"] - table["rise_clean"])
    assert table.loc[sybil, "push"].min() > table.loc[~sybil, "push"].max()
    # The same patch sending images to another class is pushed by nobody.
    other = dataclasses.replace(run.trigger, target=(run.trigger.target + 1) % 10)
    assert not trigger_pushers(model, updates, other, xte, client_ids=ids, labels=yte)["is_pusher"].any()
    # A mapping of client -> update reads the same; a NaN update is no push (the analysis flags it).
    bad = dict(zip(ids, updates))
    bad["honest-0001"] = np.full(updates.shape[1], np.nan, dtype=np.float32)
    nan_table = trigger_pushers(model, bad, run.trigger, xte, labels=yte)
    assert np.isnan(nan_table.loc["honest-0001", "push"]) and not nan_table.loc["honest-0001", "is_pusher"]
    assert nan_table.loc[[c for c in ids if c.startswith("sybil")], "is_pusher"].all()
    with pytest.raises(InputError, match="at least 8 are needed"):
        trigger_pushers(model, updates[:5], run.trigger, xte, labels=yte)
    with pytest.raises(InputError, match="client_ids names 3 clients"):
        trigger_pushers(model, updates, run.trigger, xte, client_ids=ids[:3])
    with pytest.raises(InputError, match="trigger must have apply"):
        trigger_pushers(model, updates, "lol", xte)
    with pytest.raises(InputError, match="update of client 'c0'"):
        trigger_pushers(model, np.ones((8, 3)), run.trigger, xte, client_ids=[f"c{i}" for i in range(8)])


def test_screening_every_group_rebuilds_the_shard_sybils_trigger_and_names_them_by_who_pushes_it(digits, shard_round):
    """No trigger known: the sybils' group's rebuilt trigger is pushed by the crowd that was given it, an honest
    group's by few."""
    _, run, kept = shard_round
    _, _, xte, yte = digits
    ids, updates = kept["ids"], kept["updates"]
    sybils = [c for c in ids if c.startswith("sybil")]
    honest = [c for c in ids if c.startswith("honest")][:20]
    model, before = build_model(kept["params"], run.layout), build_model(kept["before"], run.layout)
    table = screen_group_triggers(model, updates, [honest, sybils + ["gone"], ["gone"]], xte, client_ids=ids,
                                  labels=yte, reference=before, steps=150, screen_steps=30)
    assert len(table) == 2 and table.loc[0, "members"] == sybils  # a group with no member in the round is skipped
    top = table.iloc[0]
    assert top["target"] == run.trigger.target
    named = set(top["pushers"])
    assert len(named & set(sybils)) >= 0.9 * len(sybils) and len(named - set(sybils)) <= 1
    assert top["members_pushing"] >= 0.9 and top["n_pushers"] == len(named)
    assert table.loc[1, "n_pushers"] < len(sybils) / 2
    # Members named at the group's own bar are members, among the pushers once; an honest group carries none.
    assert set(top["carried"]) <= set(sybils) and len(named) == len(top["pushers"])
    assert table.loc[1, "members_pushing"] < 0.5 and table.loc[1, "carried"] == []
    plain = screen_group_triggers(model, updates, [sybils], xte, client_ids=ids, labels=yte, reference=before,
                                  steps=150, screen_steps=30, member_p=None)
    assert plain.loc[0, "carried"] == [] and set(plain.loc[0, "pushers"]) == named - set(top["carried"])
    # A mapping of client -> update reads the same; a NaN update joins no group's mean and pushes nothing.
    mapped = dict(zip(ids, updates))
    mapped["honest-0000"] = np.full(updates.shape[1], np.nan, dtype=np.float32)
    screened = screen_group_triggers(model, mapped, [sybils + ["honest-0000"], ["honest-0000"]], xte, labels=yte,
                                     reference=before, steps=150, screen_steps=30)
    assert len(screened) == 1 and screened.loc[0, "members"] == sybils
    assert set(screened.loc[0, "pushers"]) == named - {"honest-0000"}
    with pytest.raises(InputError, match="client_ids must name the"):
        screen_group_triggers(model, updates, [sybils], xte, client_ids=ids[:3])
    with pytest.raises(InputError, match="refine"):
        screen_group_triggers(model, updates, [sybils], xte, client_ids=ids, refine=-1)
    with pytest.raises(InputError, match="member_p"):
        screen_group_triggers(model, updates, [sybils], xte, client_ids=ids, member_p=0)


def test_a_pushing_group_names_its_members_at_its_own_bar_and_a_group_that_does_not_push_names_none():
    """Half of a group pushing at the bar corrected over every client: its other members are named at ``MEMBER_P``
    each, uncorrected; below half, nobody is named that way."""
    z = np.array([9.0, 8.0, 7.0, 3.0, 2.5, 2.0, 0.0, -1.0, np.nan])
    members = pd.DataFrame(dict(z=z, is_pusher=z >= 4.1), index=[f"c{i}" for i in range(len(z))])
    # Three of nine push: not the group's trigger, nobody carried.
    assert _members_carried(members, MEMBER_P) == []
    group = pd.concat([members, members.iloc[:3].rename(index=lambda c: c + "b")])
    # Six of twelve push: p(3.0) = 0.0013 and p(2.5) = 0.006 are named at 0.01; p(2.0) = 0.023, NaN and the rest not.
    assert _members_carried(group, MEMBER_P) == ["c3", "c4"]
    assert _members_carried(group, 0.05) == ["c3", "c4", "c5"]
    assert _members_carried(group.iloc[:0], MEMBER_P) == []


def test_a_guard_that_watches_the_trigger_leaves_out_sybils_the_analysis_reads_as_devices(digits, shard_round):
    scenario, run, _ = shard_round
    _, _, xte, yte = digits
    guard = AggregationGuard(UpdateRecorder())
    state: dict = {}

    def on_round(r, ids, updates, n_ex, params):
        state["model"] = build_model(params, run.layout)
        if r == scenario.sybil_join:
            guard.watch(run.trigger, xte, labels=yte)

    def aggregate(r, ids, updates, n_ex):
        kept = guard.screen(r, updates, client_ids=ids, n_examples=n_ex.astype(int), model=state["model"])
        rows = [ids.index(c) for c in kept]
        return fedavg(r, kept, updates[rows], n_ex[rows])[0], [c for c in ids if c not in kept]

    watched = simulate_federation(scenario, *digits, aggregate=aggregate, on_round=on_round)
    sybils = {c for c in watched.truth.index if c.startswith("sybil")}
    for r in (2, 3):
        assert sybils <= set(guard.excluded[r]) and len(set(guard.excluded[r]) - sybils) <= 1
        assert set(guard.pushes[r].index[guard.pushes[r]["is_pusher"]]) == sybils
    # The round's report names them too, the push first among their reasons: the verdict, panel and page show it.
    from forensics.federated.report import client_verdict

    report = guard.reports[3]
    assert sybils <= set(report.flagged)
    assert report.table.loc["sybil-0000", "reasons"].startswith("its own update ties the watched trigger")
    assert "20 pushing the watched trigger" in client_verdict(report)
    assert "pushing the watched trigger" not in client_verdict(guard.reports[1])
    assert watched.history["attack_success"].iloc[-1] < run.history["attack_success"].iloc[-1] - 0.2
    with pytest.raises(InputError, match="screen\\(..., model=\\) needs the global model"):
        guard.screen(9, np.zeros((8, len(run.params)), np.float32), client_ids=[f"c{i}" for i in range(8)])
    assert 9 in guard.recorder.rounds  # recorded before the error: nothing is lost
    with pytest.raises(InputError, match="trigger must have apply"):
        guard.watch("lol", xte)
    # With a checkpoint from before the attack as the reference, screen needs no model.
    _, _, kept = shard_round
    checkpoint = AggregationGuard(UpdateRecorder())
    checkpoint.watch(run.trigger, xte, labels=yte, reference=build_model(kept["before"], run.layout))
    aggregated = checkpoint.screen(3, kept["updates"], client_ids=kept["ids"])
    assert not sybils & set(aggregated) and len(aggregated) >= 39


@pytest.fixture(scope="module")
def replayed(planted):
    """The planted federation's real updates of rounds 0-4, (client ids, updates, global weights) per round, to replay
    through a Flower strategy, and the flat weights cut into the model's arrays."""
    _, run, _ = planted
    scenario = FederatedScenario(n_honest=40, alpha=0.5, n_rounds=5, n_sybils=10, sybil_join=2, random_state=0)
    rounds: list[tuple[list[str], np.ndarray, np.ndarray]] = []
    simulate_federation(scenario, *load_digits_split(),
                        on_round=lambda r, ids, u, n, p: rounds.append((list(ids), u.copy(), p.copy())))
    shapes = [s for _, s in run.layout]

    def to_arrays(flat):
        cuts = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
        return [a.reshape(s) for a, s in zip(np.split(flat.astype(np.float32), cuts), shapes)]

    return rounds, to_arrays


def test_flower_strategy_records_and_excludes_by_driving_aggregate_fit(planted, replayed):
    from types import SimpleNamespace

    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    from forensics.federated.flower import ForensicStrategy

    rec, run, _ = planted
    # Replay the recorded federation's real updates of rounds 0-4 through the strategy, from one global model.
    rounds, to_arrays = replayed

    strategy = ForensicStrategy(UpdateRecorder(), initial_parameters=ndarrays_to_parameters(to_arrays(rounds[0][2])))
    for r, (ids, updates, params) in enumerate(rounds):
        strategy.set_global_parameters(to_arrays(params))
        results = [(SimpleNamespace(cid=c), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(to_arrays(params + u)),
                                                   20, {})) for c, u in zip(ids, updates)]
        new, metrics = strategy.aggregate_fit(r, results, [])
        assert new is not None and metrics["forensics_excluded"] == len(strategy.guard.excluded[r])
    sybils = {c for c in run.truth.index if c.startswith("sybil")}
    assert strategy.guard.flagged == sybils
    assert set(strategy.guard.excluded[4]) == sybils
    # The aggregate of the last round is the mean of the honest clients' weights only.
    ids, updates, params = rounds[4]
    honest_rows = [i for i, c in enumerate(ids) if c not in sybils]
    expected = params + updates[honest_rows].mean(axis=0)
    got = np.concatenate([a.ravel() for a in parameters_to_ndarrays(new)])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Watching the trigger needs the model's architecture; with it, the strategy names the pushers.
    watching = ForensicStrategy(UpdateRecorder(), initial_parameters=ndarrays_to_parameters(to_arrays(params)))
    _, _, xte, yte = load_digits_split()
    watching.guard.watch(run.trigger, xte, labels=yte)
    results = [(SimpleNamespace(cid=c), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(to_arrays(params + u)),
                                               20, {})) for c, u in zip(ids, updates)]
    with pytest.raises(InputError, match="model=\\) needs the global model"):
        watching.aggregate_fit(4, results, [])
    watching = ForensicStrategy(UpdateRecorder(), initial_parameters=ndarrays_to_parameters(to_arrays(params)),
                                model=build_model(np.zeros_like(params), run.layout))
    watching.guard.watch(run.trigger, xte, labels=yte)
    watching.aggregate_fit(4, results, [])
    pushes = watching.guard.pushes[4]
    assert set(pushes.index[pushes["is_pusher"]]) == sybils


def test_message_api_strategy_records_and_excludes_by_driving_aggregate_train(planted, replayed):
    from types import SimpleNamespace

    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    from forensics.federated.flower import ForensicFedAvg

    _, run, _ = planted
    rounds, to_arrays = replayed

    def reply(node, weights, **records):
        content = RecordDict(records or {"arrays": ArrayRecord(to_arrays(weights)),
                                         "metrics": MetricRecord({"num-examples": 20})})
        return SimpleNamespace(has_error=lambda: False, content=content, metadata=SimpleNamespace(src_node_id=node))

    strategy = ForensicFedAvg(UpdateRecorder())
    with pytest.raises(InputError, match="set_global_arrays first"):
        strategy.aggregate_train(0, [reply(1, rounds[0][2])])
    node = {}  # Flower names a client by its node id (an int); here one per client of the recorded federation
    for r, (ids, updates, params) in enumerate(rounds):
        strategy.set_global_arrays(ArrayRecord(to_arrays(params)))
        replies = [reply(node.setdefault(c, 1000 + len(node)), params + u) for c, u in zip(ids, updates)]
        arrays, metrics = strategy.aggregate_train(r, replies)
        assert arrays is not None and metrics["forensics-excluded"] == len(strategy.guard.excluded[r])
    sybils = {str(node[c]) for c in run.truth.index if c.startswith("sybil")}
    assert strategy.guard.flagged == sybils and set(strategy.guard.excluded[4]) == sybils
    ids, updates, params = rounds[4]
    honest_rows = [i for i, c in enumerate(ids) if str(node[c]) not in sybils]
    got = np.concatenate([a.ravel() for a in arrays.to_numpy_ndarrays()])
    np.testing.assert_allclose(got, params + updates[honest_rows].mean(axis=0), atol=1e-5)
    # Bad replies: a client twice in one round, a reply without its metrics.
    strategy.set_global_arrays(to_arrays(params))
    with pytest.raises(InputError, match="two replies of round 5 come from client '7'"):
        strategy.aggregate_train(5, [reply(7, params), reply(7, params)])
    with pytest.raises(InputError, match="client '8' in round 6 must hold one ArrayRecord and one MetricRecord "
                                         "with 'num-examples'; it holds 1 and 0"):
        strategy.aggregate_train(6, [reply(8, params, arrays=ArrayRecord(to_arrays(params)))])


def test_timeline_rounds_are_evenly_spaced_with_the_first_and_the_last():
    assert timeline_rounds([3, 1, 2], 5) == [1, 2, 3]
    assert timeline_rounds(range(10), 2) == [0, 9]
    assert timeline_rounds(range(10), 4) == [0, 3, 6, 9]
    picked = timeline_rounds(range(1000), 100)
    assert len(picked) == 100 and picked[0] == 0 and picked[-1] == 999 and set(np.diff(picked)) <= {10, 11}
    with pytest.raises(InputError, match="limit must be an integer >= 2; got 1"):
        timeline_rounds(range(10), 1)


def test_a_newcomer_on_probation_is_analysed_but_not_aggregated_at_first():
    rng = np.random.default_rng(0)

    def run(**kw):
        # A threshold no one reaches: what is left out here is left out for probation alone.
        guard = AggregationGuard(UpdateRecorder(k=16), analysis={"window": 1, "threshold": 1e6}, **kw)
        for r in range(5):
            # 20 founders from round 0; n0 joins in round 2, n1 in round 3 and skips round 4.
            ids = [f"c{i}" for i in range(20)] + ["n0"] * (r >= 2) + ["n1"] * (r == 3)
            guard.screen(r, {c: rng.standard_normal(40) for c in ids})
        return {r: sorted(ex) for r, ex in guard.excluded.items() if ex}, guard

    assert run()[0] == {}
    excluded, guard = run(probation=2)
    assert excluded == {2: ["n0"], 3: ["n0", "n1"]} and guard.on_probation == {"n1": 1}
    assert "n0" in guard.recorder.round(2).client_ids  # recorded and analysed all the same
    assert run(probation=2, exclude=False)[0] == {}
    with pytest.raises(InputError, match="probation must be an integer >= 0; got -1"):
        AggregationGuard(UpdateRecorder(), probation=-1)


def test_a_flagged_client_is_held_out_until_it_sends_hold_unflagged_updates():
    # c0 and c1 send outsized updates in round 1 only; the analysis looks at one round, so it flags them then alone.
    # c1 sends nothing in rounds 2 and 3: absent rounds do not count towards its hold.
    def run(**kw):
        rng = np.random.default_rng(0)  # a draw in which the analysis flags no one else by chance
        guard = AggregationGuard(UpdateRecorder(k=16), analysis={"window": 1}, **kw)
        for r in range(9):
            updates = {f"c{i}": rng.standard_normal(40) for i in range(30) if not (i == 1 and r in (2, 3))}
            if r == 1:
                updates["c0"] = updates["c0"] * 50
                updates["c1"] = updates["c1"] * 50
            guard.screen(r, updates)
            assert {c for c in guard.reports[r].flagged} == ({"c0", "c1"} if r == 1 else set())
        return {c: [r for r, ex in guard.excluded.items() if c in ex] for c in ("c0", "c1", "c2")}, guard

    held, guard = run()
    assert held == {"c0": [1, 2, 3, 4], "c1": [1, 4, 5, 6], "c2": []} and guard.hold == HOLD == 3
    assert guard.held == {}
    assert run(hold=0)[0] == {"c0": [1], "c1": [1], "c2": []}
    assert run(hold=1)[0] == {"c0": [1, 2], "c1": [1, 4], "c2": []}
    assert run(sticky=True)[0] == {"c0": [1, 2, 3, 4, 5, 6, 7, 8], "c1": [1, 4, 5, 6, 7, 8], "c2": []}
    with pytest.raises(InputError, match="hold must be an integer >= 0; got -1"):
        AggregationGuard(UpdateRecorder(), hold=-1)


def test_guard_leaves_out_non_finite_and_wrong_size_updates_and_keeps_recording(tmp_path):
    rng = np.random.default_rng(3)
    guard = AggregationGuard(UpdateRecorder(tmp_path / "rec", k=16), analysis={"min_group": 3})
    ids = [f"c{i}" for i in range(12)]
    for r in range(3):
        updates = {c: rng.standard_normal(40) for c in ids}
        if r == 1:
            updates["c3"] = np.full(40, np.nan)
            updates["c5"] = rng.standard_normal(41)
        kept = guard.screen(r, updates)
        if r == 1:
            assert "c3" not in kept and "c5" not in kept
            assert set(guard.excluded[1]) >= {"c3", "c5"}
    # Once sent, a non-finite update keeps its client out; the recording has every round on disk.
    assert "c3" in guard.excluded[2] and "c3" in guard.flagged
    back = UpdateRecorder.load(tmp_path / "rec")
    assert back.rounds == [0, 1, 2]
    assert back.anomalies["kind"].tolist() == ["bad_shape", "non_finite"]


def test_the_clients_command_reads_a_recording_and_fails_on_flagged_clients(digits, tmp_path, capsys):
    from forensics.cli import main

    scenario = FederatedScenario(n_honest=40, alpha=0.5, n_rounds=5, n_sybils=10, sybil_join=2, random_state=0)
    _, run = _record(scenario, digits, recorder=UpdateRecorder(tmp_path / "fl"))
    out = tmp_path / "clients.csv"
    assert main(["clients", str(tmp_path / "fl"), "--table-out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "50 clients over round(s) 2, 3, 4: 10 flagged at suspicion >= 2" in printed
    assert "sybil group" in printed and "10 clients since round 2" in printed
    table = pd.read_csv(out, index_col=0)
    sybils = set(run.truth.index[run.truth["role"] == "sybil"])
    assert set(table.index[table["is_flagged"]]) == sybils
    assert main(["clients", str(tmp_path / "nothing")]) == 2
    assert "holds no recording" in capsys.readouterr().err


def test_a_recording_until_a_round_is_what_a_guard_saw_then(digits):
    scenario = FederatedScenario(n_honest=20, alpha=0.5, n_rounds=4, n_sybils=10, sybil_join=2, random_state=0)
    rec = UpdateRecorder()
    guard_saw = {}

    def on_round(r, ids, updates, n_ex, params):  # analysed as each round arrives, as a guard does
        rec.record_round(r, updates, client_ids=ids, n_examples=n_ex.astype(int))
        guard_saw[r] = analyze_clients(rec).table["suspicion"].sort_index()

    simulate_federation(scenario, *digits, on_round=on_round)
    for r in rec.rounds:
        then = rec.until(r)
        assert then.rounds == [q for q in rec.rounds if q <= r]
        pd.testing.assert_series_equal(analyze_clients(then).table["suspicion"].sort_index(), guard_saw[r])
    assert len(rec.until(1).clients) == 20 and len(rec.until(2).clients) == 30  # the sybils join at round 2
    assert len(rec.clients) == 30 and rec.rounds == [0, 1, 2, 3]  # the recording itself is untouched
    with pytest.raises(InputError, match=r"no round up to 0 is recorded"):
        UpdateRecorder(k=8).until(0)


def test_only_groups_flagged_for_being_alike_are_sybil_groups(hostile, capsys):
    from forensics.cli import main

    report = hostile.report
    t = report.table
    assert set(report.flagged) == hostile.sybils | hostile.riders
    (g_syb,) = t.loc[sorted(hostile.sybils), "sybil_group"].unique()
    (g_honest,) = t.loc[sorted(hostile.riders), "sybil_group"].unique()
    # The honest group holds the free-riders, flagged for their all-zero updates: a group with flagged members
    # that is not a sybil group.
    assert g_honest >= 0 and report.groups.loc[g_honest, "n_flagged"] == 2 and report.groups.loc[g_honest, "size"] == 32
    assert list(report.sybil_groups.index) == [g_syb]
    assert set(report.sybil_groups.loc[g_syb, "members"]) == hostile.sybils
    assert main(["clients", str(hostile.folder)]) == 1
    printed = capsys.readouterr().out
    assert printed.count("sybil group") == 1 and f"sybil group {g_syb}: 11 clients since round 1" in printed


def test_client_panel_maps_the_clients_and_draws_their_suspicion_round_by_round(planted):
    from forensics.panels import ClientPanel
    from forensics.panels.clients import suspicion_timeline

    rec, run, _ = planted
    report = analyze_clients(rec)
    sybils = set(run.truth.index[run.truth["role"] == "sybil"])
    panel = ClientPanel(report, rec, reports={r: analyze_clients(rec) for r in (3, 4)})
    points = panel.points
    assert len(points) == 50 and set(points.index[points["is_flagged"]]) == sybils
    assert set(points.loc[sorted(sybils), "group"]) == {points.loc[sorted(sybils)[0], "group"]} != {"none"}
    assert set(points.drop(index=sorted(sybils))["group"]) == {"none"}
    # The sybils sit together on the map: far closer to one another than the honest clients are.
    xy = points[["x", "y"]].to_numpy()
    is_sybil = points.index.isin(sybils)
    spread = lambda m: np.linalg.norm(xy[m] - xy[m].mean(axis=0), axis=1).mean()  # noqa: E731
    assert spread(is_sybil) < 0.5 * spread(~is_sybil)
    assert panel.timeline.shape == (2, 50) and list(panel.timeline.index) == [3, 4]
    assert "10 client(s)" in panel.table.value
    panel.select(["honest-0001"])
    assert "honest-0001" in panel.table.value and "1 client(s)" in panel.table.value
    with pytest.raises(InputError, match=r"unknown client\(s\) \['nobody'\]"):
        panel.select(["nobody"])
    with pytest.raises(InputError, match="reports is empty"):
        suspicion_timeline({})
    with pytest.raises(InputError, match="ClientPanel takes a ClientReport"):
        ClientPanel(report.table, rec)


def test_client_panel_lasso_and_click_on_the_map_follow_the_clients_in_the_table_and_timeline(planted):
    """The message plotly's browser code sends on a lasso across two traces, then on a click: the table lists the
    picked clients and the timeline draws exactly their lines thick and blue (private plotly API, as in
    test_panels)."""
    from forensics.panels import ClientPanel

    rec, run, _ = planted
    report = analyze_clients(rec)
    panel = ClientPanel(report, rec, reports={r: analyze_clients(rec) for r in (3, 4)})
    fig = panel.map
    assert len(fig.data) == 2  # the sybil group and the rest
    sybil = list(fig.data[0].customdata[:2])
    honest = [str(fig.data[1].customdata[3])]
    fig._js2py_pointsCallback = {
        "event_type": "plotly_selected", "selector": None, "device_state": None,
        "points": {"trace_indexes": [0, 0, 1], "point_indexes": [0, 1, 3], "xs": [0] * 3, "ys": [0] * 3}}
    assert panel.selected == [*sybil, *honest] and "3 client(s)" in panel.table.value
    lines = {str(c): t for c, t in zip(panel.timeline.columns, panel.timeline_figure.data)}
    thick = {c for c, t in lines.items() if t.line.width == 3}
    assert thick == {*sybil, *honest} and all(lines[c].line.color == "#2166ac" for c in thick)
    assert {t.opacity for c, t in lines.items() if c not in thick} == {0.35}
    # A click on one honest client: only it is followed; a click that picks nothing keeps the view.
    click = {"event_type": "plotly_click", "selector": None, "device_state": None,
             "points": {"trace_indexes": [1], "point_indexes": [5], "xs": [0], "ys": [0]}}
    fig._js2py_pointsCallback = click
    clicked = str(fig.data[1].customdata[5])
    assert panel.selected == [clicked] and "1 client(s)" in panel.table.value
    assert {c for c, t in lines.items() if t.line.width == 3} == {clicked}
    fig._js2py_pointsCallback = {"event_type": "plotly_deselect", "selector": None, "device_state": None,
                                 "points": {"trace_indexes": [], "point_indexes": [], "xs": [], "ys": []}}
    assert panel.selected == [clicked]
    # Clearing the selection in code restores the flagged view: every line thin, flagged ones red.
    panel.select([])
    assert {t.line.width for t in lines.values()} == {1} and "10 client(s)" in panel.table.value
    flagged = set(panel.points.index[panel.points["is_flagged"]])
    assert {c for c, t in lines.items() if t.line.color == "#b2182b"} == flagged


# ------------------------------------------------------------------------------------------------ report
class _Page(HTMLParser):
    """The tags of a page as a browser parses them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def _section(page: str, name: str) -> str:
    start = page.index(f"<h2 id={name}>")
    end = page.find("<h2 ", start + 5)
    return page[start:end if end >= 0 else len(page)]


def _outside_scripts(page: str) -> str:
    return re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S)


def _full_disk(src, dst):
    """os.replace on a full disk."""
    raise OSError(28, "No space left on device")


def _synthetic_report(groups: dict[int, int], others: dict[str, int], *, n: int = 200, first_round: int = 3,
                      rounds: tuple[int, ...] = (5, 6, 7)):
    """A ClientReport of ``n`` clients: per group id, that many flagged members alike (sybil_p tiny); per signal,
    that many flagged clients outside any group; the rest honest in group 0 (not flagged)."""
    from forensics.federated.analysis import ClientReport

    rows = []
    for g, size in groups.items():
        rows += [dict(top_signal="sybil", sybil_group=g, sybil_p=1e-12, suspicion=11.0) for _ in range(size)]
    for signal, count in others.items():
        rows += [dict(top_signal=signal, sybil_group=-1, sybil_p=1.0, suspicion=4.0) for _ in range(count)]
    n_flagged = len(rows)
    rows += [dict(top_signal="", sybil_group=0, sybil_p=0.5, suspicion=0.5) for _ in range(n - n_flagged)]
    table = pd.DataFrame(rows, index=pd.Index([f"c{i:03d}" for i in range(n)], name="client_id"))
    table["is_flagged"] = table["suspicion"] >= 2
    table["first_round"] = [first_round] * n_flagged + [0] * (n - n_flagged)
    table["n_rounds"] = len(rounds)
    table["reasons"] = np.where(table["is_flagged"], "a reason", "")
    table["anomaly_score"] = (table["top_signal"] == "anomaly").astype(int)
    grouped = table[table["sybil_group"] >= 0].groupby("sybil_group")
    frame = pd.DataFrame([dict(group=g, size=len(m), n_flagged=int(m["is_flagged"].sum()), median_closeness=1.0,
                               median_p=float(m["sybil_p"].median()), first_round=int(m["first_round"].min()),
                               members=list(m.index)) for g, m in grouped]).set_index("group")
    params = dict(window=3, rounds=list(rounds), min_group=10, threshold=2.0, signals=["anomaly", "sybil", "norm"])
    return ClientReport(table=table, groups=frame, params=params)


def test_client_verdict_says_how_many_as_what_and_what_to_do():
    from forensics.federated.report import client_verdict

    assert client_verdict(_synthetic_report({2: 30}, {"norm": 3, "stale": 1})) == (
        "34 of 200 clients flagged over rounds 5-7: one coordinated group of 30 (sybils), 3 with outsized updates "
        "and 1 with all-zero or repeated updates (free-riders); exclude them from the aggregation and re-aggregate "
        "from round 3, the first round any of them sent an update.")
    assert client_verdict(_synthetic_report({2: 30, 5: 12}, {})).startswith(
        "42 of 200 clients flagged over rounds 5-7: 2 coordinated groups of 30 and 12 (sybils); exclude them")
    assert client_verdict(_synthetic_report({}, {"anomaly": 1}, first_round=0, rounds=(7,))) == (
        "1 of 200 clients flagged over round 7: 1 with non-finite or wrong-size updates; exclude it from the "
        "aggregation and re-aggregate from round 0, the first round it sent an update.")
    assert client_verdict(_synthetic_report({}, {}, rounds=(1, 4))) == (
        "No client of 200 reaches suspicion >= 2 over rounds 1, 4: nothing to exclude.")


def test_client_report_names_every_planted_sybil_and_its_group(hostile):
    from forensics.federated import client_report_html
    from forensics.federated.report import client_verdict

    page = client_report_html(hostile.report, hostile.recorder, reports=hostile.reports)
    verdict = client_verdict(hostile.report)
    assert verdict == (
        "13 of 43 clients flagged over rounds 1-3: one coordinated group of 11 (sybils) and 2 with all-zero or "
        "repeated updates (free-riders); exclude them from the aggregation and re-aggregate from round 0, the first "
        "round any of them sent an update.")
    assert f"<p class='verdict fail'>{html.escape(verdict)}</p>" in page
    # The flagged table lists exactly the sybils, the boosted attacker (in their group) and the free-riders, with
    # the round the guard first flagged each: the sybils from round 1, when they joined.
    flagged = _section(page, "flagged")
    rows = {html.unescape(c): cells for c, cells in re.findall(r"<tr><th>([^<]*)</th>(<td.*?)</tr>", flagged)}
    assert set(rows) == hostile.sybils | hostile.riders
    head = [html.unescape(h) for h in re.findall(r"<th>([^<]*)</th>", flagged.split("</tr>")[0])]
    assert head == ["client", "suspicion", "strongest signal", "sybil group", "first recorded in round",
                    "rounds analysed", "guard flagged it from round", "<i>device</i>", "reasons"]
    (g,) = hostile.report.sybil_groups.index
    for c in hostile.sybils:
        cells = [html.unescape(v) for v in re.findall(r"<td[^>]*>([^<]*)</td>", rows[c])]
        assert cells[2] == str(g) and cells[5] == "1" and "far more alike than the others" in cells[7]
    # One sybil group, listing its 11 members; the honest group holding the free-riders is only counted.
    groups = _section(page, "groups")
    assert groups.count("<h3 ") == 1 and f"Sybil group {g}: 11 clients, 11 flagged" in groups
    assert {html.unescape(m) for m in re.findall(r"<li>([^<]*)</li>", groups)} == hostile.sybils
    assert "1 group(s) of 32 clients whose members are not flagged for being alike" in page
    ids = {a.get("id") for _, a in _parse(page).tags}
    assert {"summary", "next", "flagged", "groups", "map", "timeline", "signals", "params"} <= ids
    assert page.count("Plotly.newPlot") == 2 and page.count("plotly.js v") <= 2  # map and timeline, library once
    for signal in hostile.report.params["signals"]:
        assert f"<li><b>{signal}</b>: " in _section(page, "signals")


def test_client_report_shows_hostile_ids_and_metadata_only_escaped(hostile):
    from forensics.federated import client_report_html

    title = "<script>alert(1)</script>"
    page = client_report_html(hostile.report, hostile.recorder, reports=hostile.reports, title=title)
    for raw in (*HOSTILE_IDS.values(), "<i>device</i>", "<b>phone</b>"):
        assert raw not in _outside_scripts(page)
    for raw in ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "<i>device</i>", "<b>phone</b>"):
        assert raw not in page  # nor in the charts' data
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>" in page
    assert "<th>&lt;script&gt;alert(1)&lt;/script&gt;</th>" in _section(page, "flagged")
    assert "<li>&lt;script&gt;alert(1)&lt;/script&gt;</li>" in _section(page, "groups")
    assert "<th>x&#x27; onmouseover=&#x27;alert(1)</th>" in _section(page, "flagged")
    assert "<td>&lt;b&gt;phone&lt;/b&gt;</td>" in _section(page, "flagged")
    # The honest client with a hostile id is in the map's hover text, escaped for plotly.
    assert '\\"&gt;&lt;img src=x onerror=alert(1)&gt;' in page
    parsed = _parse(page)
    assert not [t for t, a in parsed.tags if t == "img" or "onerror" in a or "onmouseover" in a]
    assert all(not a.get("src") for t, a in parsed.tags if t == "script")  # nothing loaded: works offline
    assert not [t for t, a in parsed.tags if t == "link"]


def test_client_report_without_the_recording_or_a_flag_and_its_input_checks(hostile):
    from forensics.federated import client_report_html

    quiet = _synthetic_report({}, {})
    page = client_report_html(quiet)
    assert "Plotly" not in page  # no recording, no reports: no chart and no library
    assert "give the recorder to see it" in page and "No sybil group" in page
    assert "No client reaches suspicion 2. The 10 most suspicious, for the record:" in page
    assert "<p class='verdict pass'>No client of 200 reaches suspicion &gt;= 2 over rounds 5-7" in page
    # Fake devices that each keep data of their own are not flagged: the page points to the trigger screen.
    assert "<li>Screen the group of look-alike clients that no signal flags for a planted trigger: " in page
    with pytest.raises(InputError, match="report must be a ClientReport .*; got DataFrame"):
        client_report_html(hostile.report.table)
    with pytest.raises(InputError, match="recorder must be an UpdateRecorder .*; got str"):
        client_report_html(hostile.report, str(hostile.folder))
    with pytest.raises(InputError, match=r"recorder does not hold round\(s\) \[1, 2, 3\] that report analysed"):
        client_report_html(hostile.report, UpdateRecorder())
    with pytest.raises(InputError, match="reports is empty"):
        client_report_html(hostile.report, reports={})
    with pytest.raises(InputError, match=r"reports must map rounds \(integers\) to ClientReports .*; got str"):
        client_report_html(hostile.report, reports={"3": hostile.report})
    with pytest.raises(InputError, match="title must be a string; got int"):
        client_report_html(hostile.report, title=3)  # type: ignore[arg-type]


def test_write_client_report_is_atomic(hostile, tmp_path, monkeypatch):
    from forensics.federated import write_client_report

    out = tmp_path / "clients.html"
    assert write_client_report(out, hostile.report, hostile.recorder) == out
    assert os.listdir(tmp_path) == ["clients.html"] and out.read_text().startswith("<!DOCTYPE html>")
    out.write_text("previous")
    # A page that cannot be rendered leaves the previous file, and so does a write that fails at the rename.
    with pytest.raises(InputError, match="recorder must be an UpdateRecorder"):
        write_client_report(out, hostile.report, "not a recorder")  # type: ignore[arg-type]
    monkeypatch.setattr(os, "replace", _full_disk)
    with pytest.raises(OSError, match="No space left on device") as e:
        write_client_report(out, hostile.report, hostile.recorder)
    assert e.value.filename == str(out)
    monkeypatch.undo()
    assert out.read_text() == "previous" and os.listdir(tmp_path) == ["clients.html"]
    write_client_report(out, hostile.report)
    assert "13 of 43 clients flagged" in out.read_text() and os.listdir(tmp_path) == ["clients.html"]
    with pytest.raises(InputError, match=f"path {tmp_path} is a folder; give the report's file name"):
        write_client_report(tmp_path, hostile.report)
    with pytest.raises(InputError, match=f"path {tmp_path / 'nowhere' / 'r.html'}: {tmp_path / 'nowhere'} is not an "
                                         "existing folder"):
        write_client_report(tmp_path / "nowhere" / "r.html", hostile.report)


def test_the_clients_command_writes_the_report_and_keeps_its_output_and_exit_code(hostile, tmp_path, capsys,
                                                                                  monkeypatch):
    from forensics.cli import main

    out = tmp_path / "clients.html"
    assert main(["clients", str(hostile.folder), "--report", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "43 clients over round(s) 1, 2, 3: 13 flagged at suspicion >= 2" in printed
    assert printed.count("sybil group") == 1 and printed.endswith(f"report written to {out}\n")
    page = out.read_text()
    assert os.listdir(tmp_path) == ["clients.html"]
    assert f"<title>Federated clients: {html.escape(str(hostile.folder))}</title>" in page
    assert "13 of 43 clients flagged over rounds 1-3: one coordinated group of 11 (sybils)" in page
    assert "<li>&lt;script&gt;alert(1)&lt;/script&gt;</li>" in page and "<script>alert(1)</script>" not in page
    # Round by round: every recorded round scored on the recording as it stood then.
    rounds = UpdateRecorder.load(hostile.folder, attach=False).rounds
    assert "<h2 id=timeline>Suspicion round by round</h2>" in page
    assert f"as the guard analysed each of the {len(rounds)} round(s) given" in page
    assert "guard flagged it from round</th>" in page
    # A long recording: the timeline analyses evenly spaced rounds, the first and the last, and says so.
    few = tmp_path / "few.html"
    assert main(["clients", str(hostile.folder), "--report", str(few), "--timeline-rounds", "2"]) == 1
    capsys.readouterr()
    sparse = few.read_text()
    assert f"as the guard analysed 2 of the {len(rounds)} recorded rounds (evenly spaced; one analysis each)" in sparse
    assert "guard flagged it from round (of the rounds analysed)</th>" in sparse
    few.unlink()
    assert main(["clients", str(hostile.folder), "--report", str(few), "--timeline-rounds", "1"]) == 2
    assert "error: --timeline-rounds must be an integer >= 2; got 1" in capsys.readouterr().err and not few.exists()
    # Bad arguments: each named, exit 2, nothing analysed or written.
    assert main(["clients", str(tmp_path / "nothing"), "--report", str(tmp_path / "r.html")]) == 2
    captured = capsys.readouterr()
    assert f"error: folder {tmp_path / 'nothing'} holds no recording" in captured.err and not captured.out
    assert main(["clients", str(hostile.folder), "--report", str(tmp_path / "nowhere" / "r.html")]) == 2
    captured = capsys.readouterr()
    assert f"error: --report {tmp_path / 'nowhere' / 'r.html'}: {tmp_path / 'nowhere'} is not an existing folder" \
        in captured.err and not captured.out
    assert main(["clients", str(hostile.folder), "--report", str(tmp_path)]) == 2
    assert f"error: --report {tmp_path} is a folder" in capsys.readouterr().err
    # A write that fails (a full disk) is named and leaves the previous report whole.
    monkeypatch.setattr(os, "replace", _full_disk)
    assert main(["clients", str(hostile.folder), "--report", str(out)]) == 2
    assert f"error: No space left on device: {out}" in capsys.readouterr().err
    monkeypatch.undo()
    assert out.read_text() == page and os.listdir(tmp_path) == ["clients.html"]
