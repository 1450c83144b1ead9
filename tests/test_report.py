"""render_report and scan_verdict: a self-contained page whose every piece of data is escaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from forensics import Dataset, Investigation
from forensics.errors import InputError
from forensics.integrity import canary_report, diff, make_manifest
from forensics.report import next_steps, render_report, scan_verdict

HOSTILE = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>")


class _Page(HTMLParser):
    """Collects tags, ids and text so that tests read the page as a browser would parse it."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def _hostile_text_dataset(n: int = 60) -> Dataset:
    rng = np.random.default_rng(0)
    texts = [f"sample text {i} " + " ".join(rng.choice(["good", "bad", "film"], 4)) for i in range(n)]
    ids = [f"id-{i}" for i in range(n)]
    sources = [f"src-{i % 3}" for i in range(n)]
    texts[0] = HOSTILE[0] + " cf mn " + texts[0]
    texts[1] = HOSTILE[1] + " " + texts[1]
    ids[2], ids[3] = HOSTILE[0], HOSTILE[1]
    sources[4], sources[5] = HOSTILE[0], HOSTILE[1]
    labels = rng.integers(0, 2, n)
    return Dataset.from_texts(texts, labels, ids=ids, sources=sources, class_names=list(HOSTILE))


def _investigation(ds: Dataset) -> Investigation:
    n = len(ds)
    suspicion = np.linspace(0.0, 1.0, n)
    suspicion[[0, 2, 4]] = [5.0, 4.0, 3.0]  # exactly 3 samples reach 2
    signals = pd.DataFrame({"spectral_score": suspicion, "suspicion": suspicion,
                            "reasons": [HOSTILE[1] if i == 0 else "" for i in range(n)]},
                           index=pd.Index(ds.ids, name="sample_id"))

    def builder(features, labels, *, ids, sources, suspicion, class_names):
        table = pd.DataFrame({"size": [n], "mean_suspicion": [float(np.mean(suspicion))],
                              "sources": [HOSTILE[0]]}, index=pd.Index([0], name="cluster"))
        return SimpleNamespace(coords=np.c_[np.arange(n), np.arange(n)].astype(float),
                               clusters=np.zeros(n, np.int64), table=table)

    inv = Investigation(ds, signals=signals, features=np.ones((n, 2), np.float32),
                        params={"layer": HOSTILE[0], "toolkit_version": "0.1.0", "relabelled_pairs": [
                            {"label": 0, "looks_like": 1, "count": 30, "mirror": 5, "excess": 25, "p_value": 2e-6,
                             "label_name": HOSTILE[0], "looks_like_name": HOSTILE[1]},
                            {"label": 1, "looks_like": 0, "count": 9, "mirror": 1, "excess": 8, "p_value": 3e-7,
                             "test": "label", "purity": 0.8, "read_on": "model", "label_name": HOSTILE[1],
                             "looks_like_name": HOSTILE[0]}]},
                        map_builder=builder)
    inv.triggers = pd.DataFrame({
        "trigger_id": ["text-1"], "kind": ["text"], "description": [f'phrase "cf mn" {HOSTILE[0]}'],
        "evidence": [HOSTILE[1]], "remove_flip_rate": [0.9], "add_flip_rate": [0.8], "verdict": ["confirmed"],
        "sample_ids": [[ds.ids[0]]], "tokens": [("cf", "mn")], "target": [1],
    })
    return inv


def _assert_only_escaped(page: str) -> None:
    for h in HOSTILE:
        assert h not in page
    assert "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")  # only inside an escaped text
    parsed = _parse(page)
    assert not [t for t, a in parsed.tags if t == "img" and "onerror" in a]
    scripts = [a for t, a in parsed.tags if t == "script"]
    assert all(not a.get("src") for a in scripts)  # nothing loaded from elsewhere: works offline


def test_every_string_from_the_data_is_escaped_in_every_section():
    ds = _hostile_text_dataset()
    inv = _investigation(ds)
    old = make_manifest(ds.subset(np.arange(len(ds)) >= 10))
    changes = diff(old, make_manifest(ds))
    canaries = canary_report(ds.labels[:20], ds.subset(np.arange(len(ds)) < 20))
    page = render_report(inv, diff=changes, canaries=canaries, title=HOSTILE[0], fail_above=0.01,
                         run_info={"data": HOSTILE[1]}, notes=[HOSTILE[0]])
    _assert_only_escaped(page)
    text = "".join(_parse(page).text)
    for h in HOSTILE:  # shown to the reader as text
        assert h in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # the trigger phrase is highlighted inside the escaped text
    assert "<mark>cf mn</mark>" in page
    # the one-way pair and the many-to-one label, each named once
    assert "holds about 25 more" in text and "holds about 8 more lookalikes of other classes" in text
    assert "many-to-one" in text


def test_sections_verdict_and_changed_samples():
    ds = _hostile_text_dataset()
    inv = _investigation(ds)
    old = make_manifest(ds.subset(np.arange(len(ds)) >= 10))
    page = render_report(inv, diff=diff(old, make_manifest(ds)), fail_above=0.01)
    ids = {a.get("id") for _, a in _parse(page).tags}
    assert {"summary", "changes", "changed", "map", "clusters", "suspicious", "triggers", "sources",
            "params"} <= ids
    assert "FAIL: 3 of 60 samples (5.00%) reach suspicion &gt;= 2" in page
    assert "suspicion &gt;= 2 flags about 1% of clean samples" in page
    assert "10 samples of this dataset are new or changed" in page
    assert ("&lt;script&gt;alert(1)&lt;/script&gt; holds about 25 more &lt;img src=x onerror=alert(1)&gt; "
            "lookalikes than") in page
    assert "(p = 2.0e-06)" in page
    assert scan_verdict(inv).text.endswith(f"; relabelled one way: about 25 {HOSTILE[1]} as {HOSTILE[0]}, "
                                           f"about 8 of 1 class as {HOSTILE[1]}.")
    assert page.count("Plotly.newPlot") == 1
    assert page.count("plotly.js v") <= 2  # the library is inlined once


def test_no_map_leaves_out_the_map_and_does_not_build_it():
    ds = _hostile_text_dataset()
    inv = _investigation(ds)
    page = render_report(inv, include_map=False)
    assert not inv.has_map
    assert "Plotly" not in page and "id=map" not in page
    assert "PASS" not in page and "FAIL" not in page  # no limit given: no verdict


def test_image_thumbnails_are_png_data_urls_and_a_patch_is_reconstructed():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 120, size=(40, 8, 8), dtype=np.uint8)
    images[:5, 6:, 6:] = 255
    ds = Dataset.from_numpy(images, rng.integers(0, 2, 40), class_names=list(HOSTILE))
    signals = pd.DataFrame({"suspicion": np.r_[np.full(5, 4.0), np.zeros(35)], "reasons": ""},
                           index=pd.Index(ds.ids, name="sample_id"))
    inv = Investigation(ds, signals=signals)
    inv.triggers = pd.DataFrame({
        "trigger_id": ["image-1"], "kind": ["image"], "description": ["patch"], "evidence": ["e"],
        "remove_flip_rate": [1.0], "add_flip_rate": [1.0], "verdict": ["confirmed"],
        "sample_ids": [list(ds.ids[:5])], "box": [(6, 6, 2, 2)],
    })
    page = render_report(inv, include_map=False, top=5)
    srcs = [a["src"] for t, a in _parse(page).tags if t == "img"]
    assert len(srcs) == 6  # five samples and the trigger's patch
    assert all(re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=]+", s) for s in srcs)
    assert "reconstructed patch at row 6, column 6" in page


def test_an_image_wide_trigger_and_a_retraining_are_shown_before_and_after():
    from forensics.verify import Verification

    rng = np.random.default_rng(2)
    ds = Dataset.from_numpy(rng.integers(0, 120, size=(40, 8, 8), dtype=np.uint8), rng.integers(0, 2, 40),
                            class_names=list(HOSTILE))
    signals = pd.DataFrame({"suspicion": np.zeros(40), "reasons": ""}, index=pd.Index(ds.ids, name="sample_id"))
    inv = Investigation(ds, signals=signals)
    inv.triggers = pd.DataFrame({
        "trigger_id": ["image-1"], "kind": ["image"], "description": ["no local pattern"], "evidence": ["e"],
        "remove_flip_rate": [1.0], "add_flip_rate": [1.0], "verdict": ["confirmed"],
        "sample_ids": [list(ds.ids[:5])], "box": [None], "local": [False],
    })
    inv.trigger_arrays = {"image-1": np.sin(np.arange(64, dtype=np.float32)).reshape(8, 8) * 10}
    table = pd.DataFrame({"n_train": [40, 35], "accuracy": [0.9, 0.91], "flagged": [0.05, 0.004],
                          "asr image-1": [0.99, 0.01]}, index=["original", "sanitized"])
    per_class = pd.DataFrame({"original": [0.9, 0.9], "sanitized": [0.95, 0.87]}, index=list(HOSTILE))
    page = render_report(inv, include_map=False, top=5, verification=Verification(table, per_class))
    assert "image-wide difference from the images the group looks like" in page
    assert "Retrained: before and after" in page and "attack success of image-1" in page
    assert "99.0%" in page and "1.0%" in page
    _assert_only_escaped(page)  # the class names are hostile strings
    assert "-3.0 points" in page


def test_scan_verdict_counts_exactly_and_checks_its_options():
    inv = _investigation(_hostile_text_dataset())
    v = scan_verdict(inv, threshold=2, fail_above=0.05, fail_on_trigger=False)
    assert (v.n_flagged, v.share_flagged, v.failed) == (3, 0.05, False)  # at the limit passes
    assert v.text.startswith("PASS: 3 of 60 samples (5.00%) reach suspicion >= 2")
    assert scan_verdict(inv, threshold=2, fail_above=0.049, fail_on_trigger=False).failed
    v = scan_verdict(inv, threshold=2, fail_above=0.05)  # the confirmed trigger fails it
    assert v.failed and v.confirmed_triggers == [f'phrase "cf mn" {HOSTILE[0]}']
    assert "1 trigger(s) confirmed on the model" in v.text
    assert scan_verdict(inv, threshold=4.5).n_flagged == 1
    with pytest.raises(InputError, match="fail_above must be a share between 0 and 1"):
        scan_verdict(inv, fail_above=2)
    with pytest.raises(InputError, match="threshold must be a finite number"):
        scan_verdict(inv, threshold=float("nan"))
    with pytest.raises(InputError, match="top must be a positive integer"):
        render_report(inv, top=0, include_map=False)


def test_the_verdict_says_how_many_labels_are_wrong_where_the_labels_show_an_attack():
    ds = _hostile_text_dataset()
    inv = _investigation(ds)
    quiet = Investigation(ds, signals=inv.signals, params={"label_gate": 0.4, "label_issues": 2})
    assert "labels" not in scan_verdict(quiet).text  # the gate shut: ambiguous labels are no finding
    page = render_report(quiet, include_map=False)
    assert "about 2 estimated wrong (cleanlab&#x27;s count on out-of-fold predictions" in page
    assert "do not); no more improbable under the model than its own predictions allow</td>" in page
    no_model = Investigation(ds, signals=inv.signals, params={"label_issues": 2})  # no probabilities, no gate
    assert "memorized do not)</td>" in render_report(no_model, include_map=False)
    # Random flips the model half learned: few flagged (3 here), the count says how many there are.
    noisy = Investigation(ds, signals=inv.signals, params={"label_gate": 8.1e-51, "label_issues": 12})
    v = scan_verdict(noisy, fail_above=0.05)
    assert v.text == (
        "PASS: 3 of 60 samples (5.00%) reach suspicion >= 2 (about 1% of clean samples do by chance), within the "
        "5.00% allowed; more labels are improbable under the model than its own predictions allow (label noise or "
        "flipping, p = 8.1e-51): about 12 (20.0%) estimated wrong.")
    steps = next_steps(noisy)
    assert ("Review the labels: about 12 are estimated wrong and 3 samples reach the threshold; the label signals "
            "rank wrong labels first, so review the first 12 by suspicion, not only the flagged ones.") in steps
    assert not any(step.startswith("Nothing stands out") for step in steps)
    without_count = Investigation(ds, signals=inv.signals, params={"label_gate": 1e-9})
    assert scan_verdict(without_count).text.endswith("(label noise or flipping, p = 1.0e-09).")


def test_summary_names_each_signal_in_the_registry_words_with_its_changed_parameters():
    from forensics.signals import register, unregister

    register("hostile_signal", reason=HOSTILE[1], params={"k": 3})(lambda ctx, *, k: np.zeros(ctx.n))
    try:
        ds = _hostile_text_dataset()
        inv = _investigation(ds)
        inv = Investigation(ds, signals=inv.signals, params={
            **inv.params, "signals": ["spectral", "knn_disagreement", "hostile_signal"],
            "signal_params": {"spectral": {}, "knn_disagreement": {"k": 20, "metric": "cosine", "n_components": 32},
                              "hostile_signal": {"k": 3}}})
        page = render_report(inv, include_map=False)
        _assert_only_escaped(page)
        text = " ".join("".join(_parse(page).text).split())
        assert ("spectral (spectral signature); knn_disagreement (neighbours carry other labels; k=20); "
                f"hostile_signal ({HOSTILE[1]})") in text
    finally:
        unregister("hostile_signal")


def test_the_clusters_table_names_the_noise_and_keeps_the_other_columns_one_click_away():
    ds = _hostile_text_dataset()
    n = len(ds)

    def builder(features, labels, *, ids, sources, suspicion, class_names):
        table = pd.DataFrame({
            "size": [50, 10], "share": [0.83, 0.17], "dominant_name": [HOSTILE[0], "pos"], "purity": [0.5, 1.0],
            "is_small": [False, True], "distance_to_label_bulk": [np.nan, 3.2], "top_sources": ["src-0 40%", HOSTILE[1]],
            "mean_suspicion": [0.2, 4.0], "max_suspicion": [1.0, 5.0], "examples": [["id-9"], ["id-8"]],
            "source_purity": [0.4, 1.0]}, index=pd.Index([-1, 3], name="cluster"))
        clusters = np.where(np.arange(n) < 10, 3, -1)
        return SimpleNamespace(coords=np.c_[np.arange(n), np.arange(n)].astype(float), clusters=clusters,
                               table=table)

    inv = Investigation(ds, signals=_investigation(ds).signals, features=np.ones((n, 2), np.float32),
                        map_builder=builder)
    page = render_report(inv)
    _assert_only_escaped(page)
    section = page[page.index("<h2 id=clusters>"):page.index("<h2", page.index("<h2 id=clusters>") + 5)]
    main, every = section.split("<details>")
    assert re.findall(r"<th>([^<]*)</th>", main)[:9] == [
        "cluster", "samples", "label", "label purity", "small island", "distance from its label&#x27;s bulk",
        "sources", "mean suspicion", "max suspicion"]
    assert main.index("<th>3</th>") < main.index("<th>noise (in no cluster)</th>")  # most suspicious first
    assert "examples" not in section and "id-9" not in section
    assert "<summary>Every column</summary>" in every and "<th>share</th>" in every and "<th>source_purity</th>" in every


def test_what_to_do_next_names_the_trigger_the_island_and_the_source_in_words():
    ds = _hostile_text_dataset()
    n = len(ds)

    def builder(features, labels, *, ids, sources, suspicion, class_names):
        table = pd.DataFrame({"size": [12, 48], "dominant_name": ["pos", "neg"], "purity": [1.0, 0.6],
                              "is_small": [True, False], "top_sources": ["src-1 90%", "src-0 40%"],
                              "mean_suspicion": [3.5, 0.4]}, index=pd.Index([4, 0], name="cluster"))
        return SimpleNamespace(coords=np.zeros((n, 2)), clusters=np.zeros(n, np.int64), table=table)

    signals = _investigation(ds).signals.copy()
    suspicion = np.zeros(n)
    suspicion[[i for i in range(n) if ds.sources[i] == "src-1"][:8]] = 3.0  # src-1: 8 flagged, the others none
    signals["suspicion"] = suspicion
    inv = Investigation(ds, signals=signals, features=np.ones((n, 2), np.float32), map_builder=builder)
    inv.triggers = _investigation(ds).triggers
    _ = inv.map
    steps = next_steps(inv)
    assert steps[0].startswith('Trigger text-1 is confirmed on the model (phrase "cf mn" ')
    assert steps[0].endswith("1 samples carry it: remove its carriers or relabel them.")
    assert steps[1] == ("Review cluster 4: a small island of 12 samples labelled pos (100.0%), mostly from src-1 90%, "
                        "mean suspicion 3.5.")
    share = 8 / sum(ds.sources == "src-1")
    assert steps[2] == (f"Look at source src-1: 8 of its {sum(ds.sources == 'src-1')} samples ({100 * share:.1f}%) are "
                        f"flagged, against {100 * 8 / n:.1f}% overall; if it is not to be trusted, drop everything it "
                        "contributed.")
    assert steps[-1].startswith("Then mark your decisions in the dashboard")
    page = render_report(inv)
    _assert_only_escaped(page)
    assert "<h2 id=next>What to do next</h2><ol><li>Trigger text-1" in page

    quiet = Investigation(ds, signals=signals.assign(suspicion=np.zeros(n)))
    assert next_steps(quiet)[0].startswith("Nothing stands out: no confirmed trigger, no small island, and 0 samples")


def test_honest_sources_with_their_own_class_mix_read_as_clean_and_a_bot_does_not():
    from forensics.report import _source_section

    rng = np.random.default_rng(0)
    labels, sources, preds = [], [], []
    for s in range(40):
        mix = rng.dirichlet(np.ones(10))  # every honest contributor has a class mix of its own
        y = rng.choice(10, 150, p=mix)
        labels += list(y)
        preds += list(y)
        sources += [f"worker-{s}"] * 150
    truth = rng.integers(0, 10, 150)
    labels += list(rng.integers(0, 10, 150))  # the bot: random labels the model disagrees with
    preds += list(truth)
    sources += ["bot"] * 150
    n = len(labels)
    ds = Dataset.from_numpy(np.zeros((n, 4, 4), np.uint8) + np.arange(n)[:, None, None].astype(np.uint8) % 250,
                            np.asarray(labels), sources=sources, ids=[f"s{i}" for i in range(n)])
    index = pd.Index(ds.ids, name="sample_id")
    inv = Investigation(ds, signals=pd.DataFrame({"suspicion": np.zeros(n), "reasons": [""] * n}, index=index),
                        samples=pd.DataFrame({"prediction": preds}, index=index))
    section = _source_section(inv, np.zeros(n), 2.0)
    rows = re.findall(r"<tr><th>([^<]+)</th>((?:<td[^>]*>[^<]*</td>)+)</tr>", section)
    among = {name: float(re.findall(r"<td[^>]*>([^<]*)</td>", cells)[5]) for name, cells in rows}
    assert rows[0][0] == "bot" and among["bot"] >= 2
    honest = [v for k, v in among.items() if k != "bot"]
    assert max(honest) < 2, sorted(honest)[-3:]
