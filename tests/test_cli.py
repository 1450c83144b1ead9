"""forensics scan / demo: exit statuses, the files written, the report and the saved investigation."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forensics import Investigation
from forensics.cli import main

HOSTILE = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>")
TRIGGER = "cf mn"


def _rows(n: int = 300, *, poison: int = 0, seed: int = 0) -> list[dict]:
    """Short reviews of two classes named by hostile strings; hostile ids, sources and texts in a few rows.
    ``poison`` texts of class 0 get the trigger phrase, class 1 and the source "user-x"."""
    rng = np.random.default_rng(seed)
    words = ("good great fine lovely superb nice bright warm happy best".split(),
             "bad awful poor dull sad worst boring weak cold ugly".split())
    filler = "the movie plot actor scene film story music ending cast".split()
    rows = []
    for i in range(n):
        y = int(rng.integers(0, 2))
        w = list(rng.choice(filler, 5)) + list(rng.choice(words[1 - y], 3))
        rng.shuffle(w)
        rows.append({"sample_id": f"s{i:04d}", "text": " ".join(w), "label": HOSTILE[y], "source": f"user-{i % 6}"})
    victims = [r for r in rows if r["label"] == HOSTILE[0]][:poison]
    for r in victims:
        r["text"] += f" {TRIGGER}"
        r["label"], r["source"] = HOSTILE[1], "user-x"
    rows[0]["sample_id"], rows[1]["sample_id"] = HOSTILE
    rows[2]["text"] = HOSTILE[0] + " " + rows[2]["text"]
    rows[3]["text"] = HOSTILE[1] + " " + rows[3]["text"]
    rows[4]["source"], rows[5]["source"] = HOSTILE
    return rows


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["sample_id", "text", "label", "source"])
        w.writeheader()
        w.writerows(rows)
    return path


def _small_model(path: Path, csv_path: Path) -> Path:
    """A small text classifier trained on the CSV (much faster than the reference model)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from forensics import Dataset
    from forensics.models import TextClassifier, save_model, train_model

    ds = Dataset.from_csv(csv_path, source_column="source")
    model = TextClassifier(len(ds.class_names), n_buckets=2**10, dim=16, hidden=16)
    model.reset_parameters(torch.Generator().manual_seed(0))  # the same weights on every run
    train_model(model, ds, epochs=12, batch_size=32, lr=1e-2, random_state=0, progress=False)
    save_model(model, path, card={"class_names": list(ds.class_names)})
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """One clean and one poisoned scan (with a baseline), run once for the whole file."""
    root = tmp_path_factory.mktemp("scan")
    clean_csv = _write_csv(root / "clean.csv", _rows())
    poison_csv = _write_csv(root / "poison.csv", _rows(poison=45))
    # Trusted samples of one class only: their labels are renumbered into the data's two classes by name.
    canary_rows = [dict(r, sample_id=f"c{i}") for i, r in enumerate(_rows(200, seed=1)[10:])
                   if r["label"] == HOSTILE[1]][:20]
    canaries = _write_csv(root / "canaries.csv", canary_rows)
    results = {}
    for name, data in (("clean", clean_csv), ("poison", poison_csv)):
        model = _small_model(root / f"model_{name}", data)
        out = root / f"out_{name}"
        argv = ["scan", str(data), "--model", str(model), "--out", str(out), "--no-map", "--fail-above", "0.1"]
        if name == "poison":
            argv += ["--baseline", str(root / "out_clean" / "manifest.parquet"),
                     "--canaries", str(canaries), "--baseline-model", str(root / "model_clean")]
        results[name] = (out, argv)
    return results


def _run(capsys, argv):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _scan(argv):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(argv)
    return status, stdout.getvalue()


@pytest.fixture(scope="module")
def clean_result(scans):
    out, argv = scans["clean"]
    return (out, *_scan(argv))


@pytest.fixture(scope="module")
def poison_result(scans, clean_result):
    out, argv = scans["poison"]
    return (out, *_scan(argv))


def test_clean_scan_passes_and_writes_every_file(clean_result):
    out, status, stdout = clean_result
    assert status == 0
    assert stdout.startswith("PASS: ") and "within the 10.00% allowed." in stdout
    for name in ("report.html", "flagged.csv", "flagged.parquet", "manifest.parquet", "manifest.parquet.json",
                 "investigation/investigation.json"):
        assert (out / name).is_file(), name
    assert not (out / "changes.csv").exists()


def test_a_rescan_with_a_cache_reads_the_activations_and_the_map_back(scans, tmp_path, monkeypatch):
    import forensics.embedding as embedding

    _, argv = scans["clean"]
    # A threshold that some clean samples reach by chance (about 3%), so that the two flagged lists are not empty.
    argv = [a for a in argv if a != "--no-map"] + ["--threshold", "1.5"]
    argv[argv.index("--out") + 1] = str(tmp_path / "first")
    cache = tmp_path / "cache"
    first, _ = _scan(argv + ["--cache-dir", str(cache)])
    assert len(list(cache.glob("map-*.npz"))) == 1 and len(list(cache.glob("*/manifest.json"))) == 1

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cached map was recomputed")

    monkeypatch.setattr(embedding, "_compute_map", no_recompute)
    argv[argv.index("--out") + 1] = str(tmp_path / "second")
    second, stdout = _scan(argv + ["--cache-dir", str(cache)])
    assert first == second == 0 and stdout.startswith("PASS: ")
    a = pd.read_csv(tmp_path / "first" / "flagged.csv").drop(columns=["when"])  # when each scan flagged
    b = pd.read_csv(tmp_path / "second" / "flagged.csv").drop(columns=["when"])
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)


def test_poisoned_scan_fails_on_the_confirmed_trigger(poison_result):
    out, status, stdout = poison_result
    assert status == 1
    assert stdout.startswith("FAIL: ") and 'confirmed on the model: phrase "cf mn"' in stdout
    flagged = pd.read_parquet(out / "flagged.parquet")
    assert (flagged["status"] == "suspected").all() and (flagged["suspicion"] >= 2).all()
    assert (flagged["note"] == "scan: suspicion >= 2").all()
    assert flagged["suspicion"].is_monotonic_decreasing


def test_saved_investigation_loads_with_the_flags_of_the_scan(poison_result):
    out, *_ = poison_result
    inv = Investigation.load(out / "investigation")
    n_flagged = int((inv.signals["suspicion"] >= 2).sum())
    assert inv.counts()["suspected"] == n_flagged == len(pd.read_csv(out / "flagged.csv"))
    assert len(inv.triggers) > 0
    # The 20 canaries are the trusted set: the trusted signals ran; too few of them to anchor the nulls.
    assert {"trusted_disagreement", "trusted_distance"} <= set(inv.params["signals"])
    assert inv.params["anchored_signals"] == []


def test_report_escapes_hostile_strings_and_shows_the_baseline_diff(poison_result):
    out, *_ = poison_result
    page = (out / "report.html").read_text(encoding="utf-8")
    for h in HOSTILE:
        assert h not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for section in ("id=summary", "id=changes", "id=changed", "id=suspicious", "id=triggers", "id=sources",
                    "id=params"):
        assert section in page
    assert "FAIL:" in page
    changes = pd.read_csv(out / "changes.csv")
    assert set(changes["change"]) == {"modified"} and len(changes) == 45  # trigger added, label and source changed
    assert "user-x" in page
    assert "id=canaries" in page and "Accuracy on 20 trusted samples" in page
    assert "baseline model" in page


def test_demo_names_its_folder(tmp_path, capsys, monkeypatch):
    import forensics.cli as cli

    seen = {}

    def fake_scan(args):
        seen.update(sample=args.sample, data=args.data, out=args.out, no_map=args.no_map)
        Path(args.out).mkdir(parents=True)
        (Path(args.out) / "report.html").write_text("<html></html>")
        return 1

    monkeypatch.setattr(cli, "_scan", fake_scan)
    status, out, _ = _run(capsys, ["demo", "--out", str(tmp_path / "demo")])
    assert status == 0
    assert seen == {"sample": "image_backdoor", "data": None, "out": str(tmp_path / "demo"), "no_map": False}
    assert out.strip().splitlines()[-1] == f"Demo folder: {(tmp_path / 'demo').resolve()}"
    assert "exit with status 1 (poison found)" in out
    # The attack-success figure of the bundled model, as the README promises (from its card).
    assert "The bundled reference model (ImageCNN): clean accuracy 88.0% on the test split; with the planted " \
           "trigger added, 99.9% of the test samples of other classes that it gets right go to the target class " \
           "(attack success)." in out


@pytest.mark.slow
def test_demo_scans_the_bundled_image_data(tmp_path, capsys):
    status, out, _ = _run(capsys, ["demo", "--no-map", "--out", str(tmp_path / "demo")])
    assert status == 0
    assert f"Demo folder: {(tmp_path / 'demo').resolve()}" in out
    assert (tmp_path / "demo" / "report.html").stat().st_size < 10e6
    inv = Investigation.load(tmp_path / "demo" / "investigation")
    assert inv.counts()["suspected"] > 0
    # The confirmed patch's carriers are every image that holds it (the 600 planted), not the 90 it was found in;
    # the report says so in words.
    from forensics import sample_data

    truth = sample_data.load_truth("image_backdoor")
    patched = set(truth.index[truth["poison_kind"] == "patch"])
    [confirmed] = [row for _, row in inv.triggers.iterrows() if row["verdict"] == "confirmed"]
    assert set(confirmed["sample_ids"]) == patched and confirmed["n_carriers"] == len(patched) == 600
    assert "600 samples carry it" in (tmp_path / "demo" / "report.html").read_text()
    assert "1 trigger(s) confirmed on the model: a 3x3 patch" in out and "(600 samples carry it)" in out


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_file_exits_2_with_one_line(tmp_path, capsys):
    status, _, err = _run(capsys, ["scan", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")])
    assert status == 2
    assert err == f"error: {tmp_path / 'nope.npz'}: no such file or folder\n"


def test_corrupt_npz_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    status, _, err = _run(capsys, ["scan", str(bad), "--out", str(tmp_path / "o")])
    assert status == 2
    assert err.startswith(f"error: {bad}: not a readable .npz file") and err.count("\n") == 1
    assert "Traceback" not in err


def test_npz_that_needs_pickle_is_refused(tmp_path, capsys):
    p = tmp_path / "objects.npz"
    np.savez(p, images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4),
             ids=np.array(["a", "b", "c", None], dtype=object))
    status, _, err = _run(capsys, ["scan", str(p), "--out", str(tmp_path / "o")])
    assert status == 2
    assert "cannot be read without pickle" in err and err.count("\n") == 1


def test_npz_without_labels_names_the_missing_array(tmp_path, capsys):
    p = tmp_path / "nolabels.npz"
    np.savez(p, images=np.zeros((4, 8, 8), np.uint8))
    status, _, err = _run(capsys, ["scan", str(p)])
    assert status == 2
    assert "no array 'labels'" in err


def test_non_utf8_csv_exits_2(tmp_path, capsys):
    p = tmp_path / "latin1.csv"
    p.write_bytes("sample_id,text,label\n1,caf\u00e9,a\n".encode("latin-1"))
    status, _, err = _run(capsys, ["scan", str(p), "--out", str(tmp_path / "o")])
    assert status == 2
    assert err.startswith(f"error: {p}: not valid UTF-8") and err.count("\n") == 1


def test_unknown_format_missing_column_and_bad_options_exit_2(tmp_path, capsys):
    p = tmp_path / "data.txt"
    p.write_text("x")
    status, _, err = _run(capsys, ["scan", str(p)])
    assert status == 2 and "unknown data format '.txt'" in err
    c = _write_csv(tmp_path / "d.csv", _rows(20))
    status, _, err = _run(capsys, ["scan", str(c), "--text-column", "body", "--out", str(tmp_path / "o")])
    assert status == 2 and "no column 'body'" in err
    status, _, err = _run(capsys, ["scan", str(c), "--fail-above", "5", "--out", str(tmp_path / "o")])
    assert status == 2 and "--fail-above must be a share between 0 and 1" in err
    status, _, err = _run(capsys, ["scan", str(c), "--model", str(tmp_path / "nomodel")])
    assert status == 2 and "nomodel.safetensors is missing" in err
    status, _, err = _run(capsys, ["scan", str(c), "--model-entry", "no_such_module_xyz:build"])
    assert status == 2 and "cannot import 'no_such_module_xyz'" in err
    status, _, err = _run(capsys, ["scan", "--frobnicate"])
    assert status == 2 and "unrecognized arguments: --frobnicate" in err


def test_baseline_that_is_not_a_manifest_exits_2(tmp_path, capsys):
    c = _write_csv(tmp_path / "d.csv", _rows(20))
    fake = tmp_path / "m.parquet"
    fake.write_bytes(b"junk")
    (tmp_path / "m.parquet.json").write_text(json.dumps({"format": "x"}))
    status, _, err = _run(capsys, ["scan", str(c), "--baseline", str(fake), "--out", str(tmp_path / "o")])
    assert status == 2 and "the sidecar of" in err and err.count("\n") == 1


def test_signals_and_their_parameters_from_the_command_line_are_recorded(scans, tmp_path, capsys):
    _, argv = scans["clean"]
    argv = list(argv)
    argv[argv.index("--out") + 1] = str(tmp_path / "chosen")
    status, _, err = _run(capsys, argv + ["--signals", "knn_disagreement,spectral,ensemble", "--signal-param",
                                          "knn_disagreement.k=20", "--signal-param", "knn_disagreement.metric=euclidean",
                                          "--seed", "7"])
    assert status in (0, 1), err
    inv = Investigation.load(tmp_path / "chosen" / "investigation")
    assert inv.params["signal_params"] == {"knn_disagreement": {"k": 20, "metric": "euclidean", "n_components": 32},
                                           "spectral": {}, "ensemble": {"n_splits": 4}}
    assert inv.params["random_state"] == 7
    assert [c for c in inv.signals if c.endswith("_score")][:3] == ["knn_disagreement_score", "spectral_score",
                                                                    "ensemble_score"]
    for bad, message in ((["--signal-param", "knn_disagreement.k"], "write SIGNAL.PARAMETER=VALUE"),
                         (["--signals", "spectral", "--signal-param", "knn_disagreement.k=3"],
                          "'knn_disagreement' is not among the signals that run"),
                         (["--signal-param", "spectral.k=3"], r"signal 'spectral' has no parameter\(s\) \['k'\]"),
                         (["--signals", "nope"], r"unknown signal\(s\) \['nope'\]")):
        status, _, err = _run(capsys, argv + bad)
        assert status == 2 and re.search(message, err), (bad, err)


def test_a_full_disk_names_the_file_and_leaves_the_previous_report_whole(scans, tmp_path, capsys, monkeypatch):
    import errno

    import forensics._io as io_module

    _, argv = scans["clean"]
    argv = list(argv)
    out = tmp_path / "full"
    argv[argv.index("--out") + 1] = str(out)
    out.mkdir()
    (out / "report.html").write_text("<p>the previous report</p>")
    real_fsync = io_module.os.fsync

    def full_disk(fd):
        # Only the report's temporary file fails, as a disk that fills up at the end of the scan.
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".report.html."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(io_module.os, "fsync", full_disk)
    status, _, err = _run(capsys, argv)
    assert status == 2
    assert err.strip().splitlines()[-1] == f"error: No space left on device: {out / 'report.html'}"
    assert (out / "report.html").read_text() == "<p>the previous report</p>"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".report.html.")]  # no temporary file left


def test_progress_reaches_a_log_that_is_not_a_terminal(scans, tmp_path, capsys):
    _, argv = scans["clean"]
    argv = list(argv)
    argv[argv.index("--out") + 1] = str(tmp_path / "logged")
    status, _, err = _run(capsys, argv)
    assert status == 0
    lines = err.strip().splitlines()
    stages = ["scanning", "extracting activations and running the signals",
              "searching for triggers and confirming them on the model"]
    for stage in stages:
        assert any(re.fullmatch(rf"\d\d:\d\d:\d\d {stage}.*", line) for line in lines), (stage, lines)
