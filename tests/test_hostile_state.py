"""Hostile stored state: damaged saves, caches, logs and model files, unwritable targets, racing and killed saves.

Whatever fails, the analyst's decisions survive: after each failed operation the saved investigation still loads
with every decision made before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forensics.audit import AuditLog
from forensics.data import Dataset
from forensics.errors import ForensicsError, InputError, IntegrityError, UnsafeFileError
from forensics.investigation import MANIFEST, Investigation

REPO = Path(__file__).resolve().parents[1]
HOSTILE = ['=HYPERLINK("http://evil.example")', "<script>x</script>", "../../etc/passwd", "+1", "s4", "s5"]


def _investigation(n: int = 6, *, features: bool = False) -> Investigation:
    ids = HOSTILE if n == len(HOSTILE) else [f"s{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    ds = Dataset.from_texts([f"text {i} <b>" for i in range(n)], [i % 2 for i in range(n)], ids=ids,
                            sources=["=1+1", "<i>src</i>"] * (n // 2), class_names=["=neg", "<pos>"])
    signals = pd.DataFrame({"loss_score": rng.random(n), "suspicion": rng.random(n),
                            "reasons": ["@SUM(A1)"] * n}, index=ds.ids)
    return Investigation(ds, signals=signals,
                         features=rng.normal(size=(n, 32)).astype(np.float32) if features else None)


def _decided(folder) -> dict[str, str]:
    inv = Investigation.load(folder)
    st = inv.review["status"]
    return st[st != "unreviewed"].to_dict()


@pytest.fixture
def saved(tmp_path):
    inv = _investigation()
    folder = inv.save(tmp_path / "inv")
    inv.flag([HOSTILE[0], HOSTILE[1]], note="=cmd|' /C calc'!A0", who="alice")
    inv.confirm(HOSTILE[2], note="<img src=x onerror=alert(1)>", who="bob")
    expected = {HOSTILE[0]: "suspected", HOSTILE[1]: "suspected", HOSTILE[2]: "confirmed"}
    assert _decided(folder) == expected
    return inv, folder, expected


# ---------------------------------------------------------------------------------------------- saved folders


def test_a_truncated_table_in_a_saved_investigation_is_named(saved):
    inv, folder, expected = saved
    inv.save(folder)
    table = folder / json.loads((folder / MANIFEST).read_text())["files"]["signals"]["file"]
    data = table.read_bytes()
    table.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match=rf"{table.name} does not match its checksum in {MANIFEST}"):
        Investigation.load(folder)
    table.write_bytes(data)  # restored: every decision is still there
    assert _decided(folder) == expected


def test_an_edited_dataset_in_a_saved_investigation_is_named(saved):
    inv, folder, expected = saved
    name = json.loads((folder / MANIFEST).read_text())["files"]["dataset"]["file"]
    df = pd.read_parquet(folder / name)
    df.loc[0, "label"] = 1  # an attacker relabels a sample
    df.to_parquet(folder / name)
    with pytest.raises(IntegrityError, match=rf"{name} does not match its checksum"):
        Investigation.load(folder)


def test_a_changed_features_file_is_named_on_first_use_and_never_saved_under_a_new_checksum(tmp_path):
    inv = _investigation(features=True)
    folder = inv.save(tmp_path / "inv")
    inv.flag([HOSTILE[0]], who="alice")
    name = json.loads((folder / MANIFEST).read_text())["files"]["features"]["file"]
    path = folder / name
    original = path.read_bytes()
    path.write_bytes(original[:-4] + np.float32(1e3).tobytes())  # one value of the last row, same size
    changed = rf"{name} does not match its checksum in {MANIFEST} \(.*\): it was changed, truncated or replaced"
    back = Investigation.load(folder)  # the features are mapped, not read: the review and exports work
    assert back.review.loc[HOSTILE[0], "status"] == "suspected"
    assert len(pd.read_csv(back.export(tmp_path / "flagged.csv"))) == 1
    with pytest.raises(IntegrityError, match=changed):
        back.features  # noqa: B018 (first use)
    with pytest.raises(IntegrityError, match=changed):
        back.map  # noqa: B018 (built from the features)
    with pytest.raises(IntegrityError, match=changed):
        back.save(tmp_path / "elsewhere")  # never copied under a checksum of its own
    back.save(folder)  # the same folder keeps the file and its recorded checksum: still caught
    with pytest.raises(IntegrityError, match=changed):
        Investigation.load(folder).features  # noqa: B018
    path.write_bytes(original)  # restored: every decision is still there
    back = Investigation.load(folder)
    np.testing.assert_array_equal(back.features, np.load(path))
    assert _decided(folder) == {HOSTILE[0]: "suspected"}


def _replace_features(folder, array) -> str:
    """Write ``array`` as the features file and its checksum in the manifest, as an attacker with both would."""
    from forensics import _io

    manifest = json.loads((folder / MANIFEST).read_text())
    path = folder / manifest["files"]["features"]["file"]
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
    manifest["files"]["features"]["blake2b"] = _io.file_digest(path)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return path.name


def test_a_features_file_that_cannot_be_the_saved_one_is_named(tmp_path):
    inv = _investigation(features=True)
    folder = inv.save(tmp_path / "inv")
    name = json.loads((folder / MANIFEST).read_text())["files"]["features"]["file"]
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[:-100])  # truncated: the header no longer describes the file, found at load
    with pytest.raises(IntegrityError, match=rf"{name} does not match its checksum in {MANIFEST}: it holds "
                                             rf"{len(data) - 100:,} bytes where its header describes {len(data):,}"):
        Investigation.load(folder)
    (folder / name).unlink()
    with pytest.raises(IntegrityError, match=rf"{name} is missing; the folder is incomplete"):
        Investigation.load(folder)
    features = np.array(inv.features)
    _replace_features(folder, features[:-1])  # and its checksum: one row short
    with pytest.raises(IntegrityError, match=rf"{name} holds a float32 array of shape \(5, 32\); the features of "
                                             r"this investigation are float32 of shape \(6, d\)"):
        Investigation.load(folder)
    features[2, 3] = np.nan
    _replace_features(folder, features)
    with pytest.raises(IntegrityError, match=rf"{name} holds NaN or infinite values"):
        Investigation.load(folder).features  # noqa: B018


def test_read_review_checks_what_it_reads(saved):
    from forensics import _io

    inv, folder, expected = saved
    manifest = json.loads((folder / MANIFEST).read_text())
    name = manifest["files"]["dataset"]["file"]
    original = (folder / name).read_bytes()
    df = pd.read_parquet(folder / name)
    df.loc[3, "sample_id"] = "s3-renamed"  # an attacker renames a sample...
    df.to_parquet(folder / name)
    with pytest.raises(IntegrityError, match=rf"{name} does not match its checksum"):
        Investigation.read_review(folder)
    manifest["files"]["dataset"]["blake2b"] = _io.file_digest(folder / name)  # ...and forges its checksum
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=r"the dataset stored in .* has content hash \w+ but the manifest records"):
        Investigation.read_review(folder)
    df.loc[3, "sample_id"] = "s3\u202e"  # a reversed-text id, checked as a loaded dataset's ids are
    df.to_parquet(folder / name)
    manifest["files"]["dataset"]["blake2b"] = _io.file_digest(folder / name)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=r"is not valid: ids\[3\] = .* contains control or bidirectional"):
        Investigation.read_review(folder)
    (folder / name).write_bytes(original)
    manifest["files"]["dataset"]["blake2b"] = _io.file_digest(folder / name)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    review = Investigation.read_review(folder)
    assert review["status"][review["status"] != "unreviewed"].to_dict() == expected


def test_a_manifest_pointing_outside_the_folder_is_refused(saved):
    _, folder, _ = saved
    m = json.loads((folder / MANIFEST).read_text())
    m["files"]["signals"]["file"] = "../../../etc/passwd"
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match=r"the entry for 'signals' does not name a file of this folder"):
        Investigation.load(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(IntegrityError, match=rf"{MANIFEST} is not valid JSON"):
        Investigation.load(folder)


def test_a_broken_hash_chain_names_the_entry(saved):
    _, folder, expected = saved
    log = folder / json.loads((folder / MANIFEST).read_text())["audit"]["file"]
    original = log.read_bytes()
    lines = original.splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"alice"', b'"mallory"')  # rewrite who decided
    log.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match=r"line 2 \(seq 1\): its hash does not match its content"):
        Investigation.load(folder)
    log.write_bytes(b"".join([lines[0], lines[2], lines[1]]))  # reordered
    with pytest.raises(IntegrityError, match=r"line 2 \(seq 2\).*seq 2 where 1 was expected"):
        Investigation.load(folder)
    log.write_bytes(b"".join(original.splitlines(keepends=True)[:2]))  # the last decision deleted
    with pytest.raises(IntegrityError, match=r"entries were deleted from its end|ends at seq 1"):
        AuditLog.load(log, anchor=(2, json.loads(original.splitlines()[2])["hash"]))
    log.write_bytes(original)
    assert _decided(folder) == expected


def test_a_torn_last_audit_line_is_reported_and_repaired_without_losing_decisions(saved):
    _, folder, expected = saved
    log = folder / json.loads((folder / MANIFEST).read_text())["audit"]["file"]
    with open(log, "ab") as f:
        f.write(b'{"action": "flag", "ids": ["s4"')
    with pytest.raises(IntegrityError, match=r"the last entry \(line 4\) is incomplete"):
        Investigation.load(folder)
    inv = Investigation.load(folder, repair=True)
    assert inv.audit[-1]["action"] == "repair"
    assert _decided(folder) == expected


# ---------------------------------------------------------------------------------------------- exports


@pytest.mark.parametrize("where", ["under_a_file", "a_folder", "missing_folder"])
def test_an_unwritable_export_path_is_named_and_changes_nothing(saved, tmp_path, where):
    inv, folder, expected = saved
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "adir.csv").mkdir()
    target = {"under_a_file": tmp_path / "plain.txt" / "out.csv", "a_folder": tmp_path / "adir.csv",
              "missing_folder": tmp_path / "nope" / "out.csv"}[where]
    before = (inv.review.copy(), len(inv.audit), inv.audit.head)
    with pytest.raises(InputError, match=rf"cannot write the export {target}"):
        inv.export(target)
    pd.testing.assert_frame_equal(inv.review, before[0])
    assert (len(inv.audit), inv.audit.head) == before[1:]
    assert _decided(folder) == expected
    assert (tmp_path / "plain.txt").read_text() == "x"


def test_a_save_to_a_file_is_named_and_changes_nothing(saved, tmp_path):
    inv, folder, expected = saved
    (tmp_path / "plain").write_text("x")
    with pytest.raises(InputError, match=r"it is a file, not a folder"):
        inv.save(tmp_path / "plain")
    with pytest.raises(InputError, match=r"cannot create the investigation folder"):
        inv.save(tmp_path / "plain" / "sub")
    assert inv.folder == folder
    inv.clear("s4", who="alice")  # still attached to its folder: the decision is durable there
    assert _decided(folder) == {**expected, "s4": "cleared"}


def test_the_review_export_neutralizes_every_hostile_field(saved, tmp_path):
    inv, _, _ = saved
    import csv

    path = inv.export(tmp_path / "review.csv", include="all")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cells = [v for r in rows for k, v in r.items() if k in ("sample_id", "label", "source", "reasons", "note")]
    for v in cells:
        assert not v or v[0] not in "=+-@\t\r" or v.startswith("'"), v
    by_id = {r["sample_id"]: r for r in rows}
    assert "'" + HOSTILE[0] in by_id and "'+1" in by_id
    assert by_id["'" + HOSTILE[0]]["note"] == "'=cmd|' /C calc'!A0"
    assert by_id["'" + HOSTILE[0]]["label"] == "'=neg"
    assert by_id["<script>x</script>"]["source"] == "<i>src</i>"  # kept as data in CSV; escaped only in HTML


# ---------------------------------------------------------------------------------------------- processes


_DECIDE_AND_SAVE = textwrap.dedent("""
    import sys
    from forensics.investigation import Investigation
    folder, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    inv = Investigation.load(folder)
    for i in range(start, start + count):
        inv.flag(f"s{i}", note=f"decision {i}", who="worker")
        print("decided", i, flush=True)
    print("saving", flush=True)
    while True:
        inv.save(folder)
""")

_RACE = textwrap.dedent("""
    import sys
    from forensics.errors import ForensicsError
    from forensics.investigation import Investigation
    folder, sid = sys.argv[1], sys.argv[2]
    try:
        inv = Investigation.load(folder)
        inv.flag(sid, who="racer")
        for _ in range(3):
            inv.save(folder)
        print("saved", flush=True)
    except ForensicsError as e:
        print("refused", type(e).__name__, e, flush=True)
""")


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_two_saves_racing_on_one_folder_never_lose_a_decision(tmp_path):
    folder = _investigation(20).save(tmp_path / "inv")
    procs = [_python(_RACE, str(folder), f"s{i}") for i in (3, 7)]
    outs = [p.communicate(timeout=120) for p in procs]
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err
        assert out.startswith("saved") or out.startswith("refused"), (out, err)
    decided = _decided(folder)
    # Every decision reached the log before its call returned: both are kept, whichever save won.
    assert decided == {"s3": "suspected", "s7": "suspected"}


@pytest.mark.slow
def test_a_save_killed_midway_loses_no_decision(tmp_path):
    rng = np.random.default_rng(0)
    folder = _investigation(40_000, features=True).save(tmp_path / "inv")
    made: dict[str, str] = {}
    for round_ in range(3):
        proc = _python(_DECIDE_AND_SAVE, str(folder), str(round_ * 5), "5")
        for line in proc.stdout:
            if line.startswith("decided"):
                made[f"s{line.split()[1]}"] = "suspected"
            if line.startswith("saving"):
                break
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert _decided(folder) == made
    assert len(made) == 15


# ---------------------------------------------------------------------------------------------- model files

torch = pytest.importorskip("torch")


class _Payload:
    """Unpickling this object creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_with_payload(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": torch.zeros(2, 2), "x": _Payload(marker)}, f)


def test_a_pickle_with_a_payload_is_refused_by_load_state_dict_file(tmp_path):
    from forensics.models import load_state_dict_file

    marker = tmp_path / "pwned"
    _pickle_with_payload(tmp_path / "w.pt", marker)
    with pytest.raises(UnsafeFileError, match=r"w\.pt: this file needs arbitrary code execution.*NOT loaded.*"
                                              r"safetensors"):
        load_state_dict_file(tmp_path / "w.pt")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_model_card_pointing_at_a_pickle_is_refused_by_load_model(tmp_path, suffix):
    from forensics.models import load_model

    marker = tmp_path / "pwned"
    weights = tmp_path / f"m{suffix}"
    _pickle_with_payload(weights, marker)
    card = {"format": "forensics-model/1", "architecture": "ImageCNN", "config": {}, "weights_file": weights.name,
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(UnsafeFileError, match=rf"m{suffix}: this is a pickle.*NOT loaded.*safetensors"):
        load_model(tmp_path / "m")
    assert not marker.exists()


def test_a_model_card_naming_a_file_elsewhere_stays_in_its_folder(tmp_path):
    from forensics.models import load_model

    (tmp_path / "sub").mkdir()
    card = {"format": "forensics-model/1", "architecture": "ImageCNN", "config": {},
            "weights_file": "../../../../etc/passwd", "weights_sha256": "0" * 64}
    (tmp_path / "sub" / "m.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"sub/passwd: no such weights file"):
        load_model(tmp_path / "sub" / "m")
    card["architecture"] = "os.system"
    (tmp_path / "sub" / "m.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"architecture 'os\.system' is not one of the toolkit's"):
        load_model(tmp_path / "sub" / "m")


# ---------------------------------------------------------------------------------------------- activation cache


def test_a_truncated_or_edited_activation_cache_is_recomputed(tmp_path, caplog):
    from forensics.activations import extract_activations

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 2))
    images = np.random.default_rng(0).integers(0, 255, (12, 8, 8), dtype=np.uint8)
    ds = Dataset.from_numpy(images, [0, 1] * 6, ids=[f"../x{i}" for i in range(12)])
    first = extract_activations(model, ds, cache_dir=tmp_path, progress=False)
    first_feature = np.array(first.feature())  # the result is memory-mapped from the file damaged below
    entries = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(entries) == 1 and ".." not in entries[0].name  # keyed by a hash, never by an id
    features = entries[0] / "feature_0.npy"

    data = features.read_bytes()
    features.write_bytes(data[: len(data) - 16])  # truncated
    again = extract_activations(model, ds, cache_dir=tmp_path, progress=False)
    assert again.meta["from_cache"] is False
    np.testing.assert_array_equal(again.feature(), first_feature)
    assert "does not match its checksum" in caplog.text

    edited = bytearray(features.read_bytes())
    edited[-4:] = b"\x00\x00\x80\x7f"  # the last float becomes +inf
    features.write_bytes(bytes(edited))
    again = extract_activations(model, ds, cache_dir=tmp_path, progress=False)
    assert again.meta["from_cache"] is False and np.isfinite(again.feature()).all()
    np.testing.assert_array_equal(again.feature(), first_feature)

    (entries[0] / "manifest.json").write_text("{broken")
    again = extract_activations(model, ds, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.feature(), first_feature)
    hit = extract_activations(model, ds, cache_dir=tmp_path, progress=False)
    assert hit.meta["from_cache"] is True
    np.testing.assert_array_equal(hit.feature(), first_feature)


def test_every_refusal_here_is_a_toolkit_error():
    assert issubclass(UnsafeFileError, ForensicsError) and issubclass(IntegrityError, ForensicsError)


def test_an_image_changed_with_its_file_checksum_is_caught_by_its_content_hash(tmp_path):
    from forensics import _io

    images = np.random.default_rng(0).integers(0, 255, (12, 8, 8), dtype=np.uint8)
    ds = Dataset.from_numpy(images, np.arange(12) % 2, ids=[f"img-{i}" for i in range(12)])
    inv = Investigation(ds, signals=pd.DataFrame({"suspicion": np.zeros(12), "reasons": [""] * 12},
                                                 index=pd.Index(ds.ids, name="sample_id")))
    folder = inv.save(tmp_path / "inv")
    manifest = json.loads((folder / MANIFEST).read_text())
    images_file = folder / manifest["files"]["images"]["file"]
    edited = np.load(images_file)
    edited[5, 0, 0] ^= 0xFF  # one pixel of one image
    with open(images_file, "wb") as f:
        np.save(f, edited, allow_pickle=False)
    manifest["files"]["images"]["blake2b"] = _io.file_digest(images_file)  # and its checksum, to match
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=r"sample 'img-5' \(row 5\) no longer matches its stored content hash "
                                             r"\(1 such sample\(s\)\): its image was changed after saving"):
        Investigation.load(folder)


@pytest.mark.parametrize("seal", ["not json at all", '{"seq": "2", "hash": "ab", "size": 10}'])
def test_a_damaged_seal_is_named(tmp_path, seal):
    images = np.zeros((4, 4, 4), np.uint8) + np.arange(4)[:, None, None].astype(np.uint8)
    ds = Dataset.from_numpy(images, [0, 1, 0, 1])
    inv = Investigation(ds, signals=pd.DataFrame({"suspicion": np.zeros(4), "reasons": [""] * 4},
                                                 index=pd.Index(ds.ids, name="sample_id")))
    folder = inv.save(tmp_path / "inv")
    inv.flag([ds.ids[0]], who="alice")
    (folder / "audit.1.jsonl.seal").write_text(seal)
    with pytest.raises(IntegrityError, match=r"audit log seal .*audit\.1\.jsonl\.seal is not a valid seal"):
        Investigation.load(folder)
