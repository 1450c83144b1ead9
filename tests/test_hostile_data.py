"""Hostile input data: every sample, text, id, label, class name, source and file may be written by an attacker.

Each case asserts either a toolkit error whose message names the problem, or safe handling (the value survives
as data and comes out escaped or neutralized).
"""

from __future__ import annotations

import csv
import json
import os
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from forensics import compute_signals
from forensics.data import Dataset, concat
from forensics.errors import ForensicsError, InputError
from forensics.export import export_table, restore_cell
from forensics.html import escape_html, highlight
from forensics.signals import duplicates

SCRIPT = '<script>alert("x")</script><img src=x onerror=alert(1)>'
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", " =1", "\uff1d1"]


def _features(n_per_class=(20, 20, 20), d=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(n_per_class)), n_per_class)
    x = rng.normal(size=(len(y), d)).astype(np.float32) + y[:, None]
    return x, y


# ---------------------------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_activations_are_refused_with_their_row(bad):
    x, y = _features()
    x[7, 2] = bad
    with pytest.raises(InputError, match=r"features has 1 NaN or infinite value\(s\) in 1 row\(s\), first at row 7"):
        compute_signals(x, y)


@pytest.mark.parametrize("shape, match", [
    ((60,), r"features must be 2-D"),
    ((1, 60, 6), r"features must be 2-D"),
    ((60, 0), r"features has no columns"),
    ((0, 6), r"features has 0 rows"),
])
def test_wrong_feature_shapes_are_named(shape, match):
    with pytest.raises(InputError, match=match):
        compute_signals(np.zeros(shape, np.float32), np.zeros(shape[0] if shape else 0, int))


def test_non_numeric_features_are_refused():
    x, y = _features()
    with pytest.raises(InputError, match=r"features must be numeric; got dtype complex"):
        compute_signals(x.astype(complex), y)
    with pytest.raises(InputError, match=r"features must be numeric; got dtype object"):
        compute_signals(x.astype(object), y)


def test_labels_and_features_of_different_lengths():
    x, y = _features()
    with pytest.raises(InputError, match=r"labels has 50 entries but features has 60 rows"):
        compute_signals(x, y[:50])


def test_probs_and_features_of_different_lengths():
    x, y = _features()
    with pytest.raises(InputError, match=r"probs has 59 rows but labels has 60 entries"):
        compute_signals(x, y, probs=np.full((59, 3), 1 / 3))


def test_sources_and_features_of_different_lengths():
    x, y = _features()
    with pytest.raises(InputError, match=r"sources has 40 entries but labels has 60 entries"):
        compute_signals(x, y, source_ids=["a", "b"] * 20)


def test_dataset_and_features_of_different_lengths():
    x, y = _features()
    ds = Dataset.from_texts([f"t{i}" for i in range(10)], [0, 1] * 5)
    with pytest.raises(InputError, match=r"dataset has 10 samples but features has 60 rows"):
        compute_signals(x, y, dataset=ds)


def test_negative_float_and_string_labels_are_refused():
    x, y = _features()
    with pytest.raises(InputError, match=r"labels must be >= 0; found -2"):
        compute_signals(x, -y)
    with pytest.raises(InputError, match=r"labels must be integer class indices; got dtype float64"):
        compute_signals(x, np.full(60, np.nan))
    with pytest.raises(InputError, match=r"labels must be integer class indices; got dtype <U"):
        compute_signals(x, y.astype(str))


def test_a_label_that_is_an_id_not_a_class_number_is_refused_before_allocating():
    x, y = _features()
    y = np.where(y == 2, 10**9, y)
    with pytest.raises(InputError, match=r"class index 1000000000 for 60 samples.*renumber"):
        compute_signals(x, y)
    from forensics.signals.label_quality import out_of_fold_probs

    with pytest.raises(InputError, match=r"class index 1000000000"):
        out_of_fold_probs(x, y)


def test_signals_run_when_one_class_has_a_single_member():
    x, y = _features((20, 20, 20))
    y[-1] = 3  # class 3: one sample
    table, info = compute_signals(x, y, probs=np.full((60, 4), 0.25))
    assert len(table) == 60
    assert np.isfinite(table["suspicion"]).all()
    for name in ("label_quality", "activation_cluster", "spectral", "robust_spectral", "knn_disagreement",
                 "knn_outlier", "duplicates", "high_loss", "low_loss"):
        assert f"{name}_score" in table, name
        assert not np.isinf(table[f"{name}_score"]).any()
    assert set(info["skipped"]) == {"source", "shared_mark"}


def test_a_single_class_dataset_says_why_the_label_signal_cannot_run():
    x, _ = _features()
    with pytest.raises(InputError, match=r"at least two classes with two or more samples each; got class sizes"):
        compute_signals(x, np.zeros(60, int))
    # Without the label signal the others run on one class.
    table, _ = compute_signals(x, np.zeros(60, int), signals=["spectral", "robust_spectral", "activation_cluster"])
    assert np.isfinite(table["suspicion"]).all()


def test_an_empty_dataset_is_refused_everywhere():
    with pytest.raises(InputError, match=r"features has 0 rows"):
        compute_signals(np.zeros((0, 4), np.float32), np.zeros(0, int))
    with pytest.raises(InputError, match=r"the dataset is empty"):
        Dataset.from_numpy(np.zeros((0, 8, 8), np.uint8), [])
    with pytest.raises(InputError, match=r"the dataset is empty"):
        Dataset.from_texts([], [])


def test_no_signal_able_to_run_says_why():
    x, y = _features()
    with pytest.raises(InputError, match=r"no signal could run: high_loss needs the model's predicted probabilities"):
        compute_signals(x, y, signals=["high_loss"])


@pytest.mark.parametrize("scale", [1e30, 1e20, 1e-30])
def test_huge_and_tiny_features_run_every_signal(scale):
    x, y = _features()
    table, info = compute_signals(x * np.float32(scale), y, probs=np.full((60, 3), 1 / 3),
                                  source_ids=["a", "b", "c"] * 20)
    assert set(info["skipped"]) == {"shared_mark"}  # no images: every signal over arrays runs
    assert len(info["signals"]) == 11
    assert np.isfinite(table["suspicion"]).all()


def test_huge_features_keep_exact_near_duplicates():
    x, _ = _features()
    x = x * np.float32(1e30)
    x[5] = x[3]
    groups = duplicates.near_duplicate_groups_features(x, radius=1.0)
    assert groups[3] == groups[5] >= 0
    assert (groups >= 0).sum() == 2


def test_zero_variance_features_run_and_score_zero():
    _, y = _features()
    table, info = compute_signals(np.zeros((60, 6), np.float32), y, probs=np.full((60, 3), 1 / 3))
    assert np.isfinite(table["suspicion"]).all()
    for col in ("spectral_score", "robust_spectral_score", "activation_cluster_score"):
        assert np.all(table[col] == 0), col


# ---------------------------------------------------------------------------------------------- ids, labels


def test_duplicate_ids_are_refused_with_an_example():
    with pytest.raises(InputError, match=r"ids must be unique; 1 id\(s\) occur more than once.*'a'"):
        Dataset.from_texts(["x", "y", "z"], [0, 1, 0], ids=["a", "a", "b"])
    # 1 and 1.0 and "1" are the same id once written down.
    with pytest.raises(InputError, match=r"ids must be unique"):
        Dataset.from_texts(["x", "y", "z"], [0, 1, 0], ids=[1, 1.0, "b"])


@pytest.mark.parametrize("bad, match", [
    ("", r"ids\[1\] is empty"),
    ("   ", r"ids\[1\] is empty"),
    (float("nan"), r"ids\[1\] is the float nan"),
    (float("inf"), r"ids\[1\] is the float inf"),
    (b"raw", r"ids\[1\] is bytes"),
])
def test_empty_and_non_text_ids_are_refused(bad, match):
    with pytest.raises(InputError, match=match):
        Dataset.from_texts(["x", "y", "z"], [0, 1, 0], ids=["a", bad, "c"])


@pytest.mark.parametrize("bad", ["b\u202egnp.exe", "b\u2066x", "b\x00", "b\x1b[31m", "b\r\n=1", "b\x7f"])
def test_control_and_bidi_characters_in_ids_are_refused(bad):
    with pytest.raises(InputError, match=r"ids\[1\] = .* contains control or bidirectional characters \['U\+"):
        Dataset.from_texts(["x", "y", "z"], [0, 1, 0], ids=["a", bad, "c"])


def test_length_mismatches_in_a_dataset_are_named():
    im = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(InputError, match=r"ids has 1 entries but there are 4 samples"):
        Dataset.from_numpy(im, [0, 1, 0, 1], ids=["a"])
    with pytest.raises(InputError, match=r"labels has 3 entries but there are 4 samples"):
        Dataset.from_numpy(im, [0, 1, 0])
    with pytest.raises(InputError, match=r"sources has 1 entries but there are 4 samples"):
        Dataset.from_numpy(im, [0, 1, 0, 1], sources=["a"])


def test_labels_outside_the_class_list_are_refused():
    im = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(InputError, match=r"labels\[3\] = 5 is outside the class list \(0..1, 2 classes\)"):
        Dataset.from_numpy(im, [0, 1, 0, 5], class_names=["a", "b"])
    with pytest.raises(InputError, match=r"labels\[3\] = 'zz' is not in class_names"):
        Dataset.from_numpy(im, ["a", "b", "a", "zz"], class_names=["a", "b"])
    with pytest.raises(InputError, match=r"labels must be >= 0"):
        Dataset.from_numpy(im, [0, 1, 0, -1])
    with pytest.raises(InputError, match=r"class_names has duplicates"):
        Dataset.from_numpy(im, [0, 1, 0, 1], class_names=["a", "a"])


def test_a_missing_label_is_refused():
    with pytest.raises(InputError, match=r"labels\[1\]"):
        Dataset.from_numpy(np.zeros((4, 8, 8), np.uint8), [0, None, 0, 1])


def test_a_missing_id_is_refused():
    with pytest.raises(InputError, match=r"ids\[1\]"):
        Dataset.from_texts(["x", "y", "z"], [0, 1, 0], ids=["a", None, "c"])


def test_ids_with_path_separators_stay_data_and_never_become_paths(tmp_path):
    ids = ["../../escape", "/abs/path", "a\\..\\b", "c/../../d"]
    ds = Dataset.from_texts(["w", "x", "y", "z"], [0, 1, 0, 1], ids=ids)
    assert list(ds.ids) == ids
    # The folders that hold files the toolkit writes keyed by data: the activation cache is keyed by a hash, a
    # saved investigation by fixed managed names. An export writes exactly the path it was given.
    out = tmp_path / "out"
    out.mkdir()
    export_table(pd.DataFrame({"x": [1, 2, 3, 4]}, index=pd.Index(ids, name="sample_id")), out / "e.csv")
    assert sorted(p.name for p in out.iterdir()) == ["e.csv", "e.csv.meta.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------------------------- texts


def test_non_utf8_texts_are_refused_with_the_position():
    with pytest.raises(InputError, match=r"texts\[1\] is not valid UTF-8 \(invalid start byte at byte 0\)"):
        Dataset.from_texts(["ok", b"\xff\xfe"], [0, 1])
    with pytest.raises(InputError, match=r"texts\[0\] is a NoneType, not a string"):
        Dataset.from_texts([None, "a"], [0, 1])
    with pytest.raises(InputError, match=r"texts must be a sequence of strings, not one string"):
        Dataset.from_texts("abc", [0, 1, 0])


def test_non_utf8_csv_and_jsonl_are_refused_with_the_file(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"sample_id,text,label\n1,\xff\xfe,0\n")
    with pytest.raises(InputError, match=r"a\.csv: not valid UTF-8 \(invalid start byte at byte 23\)"):
        Dataset.from_csv(tmp_path / "a.csv")
    (tmp_path / "a.jsonl").write_bytes(b'{"sample_id": 1, "text": "\xff", "label": 0}\n')
    with pytest.raises(InputError, match=r"a\.jsonl: not valid UTF-8"):
        Dataset.from_jsonl(tmp_path / "a.jsonl")


def test_empty_files_and_broken_rows_are_named(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.csv: no rows; the dataset is empty"):
        Dataset.from_csv(tmp_path / "empty.csv")
    (tmp_path / "short.csv").write_text("sample_id,text,label\n1,hello\n")
    with pytest.raises(InputError, match=r"short\.csv: row at line 2 has no value for 'label'"):
        Dataset.from_csv(tmp_path / "short.csv")
    (tmp_path / "bad.jsonl").write_text('{"sample_id": 1, "text": "a", "label": 0}\n{"text": \n')
    with pytest.raises(InputError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        Dataset.from_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "arr.jsonl").write_text("[1, 2]\n")
    with pytest.raises(InputError, match=r"arr\.jsonl: line 1 is not a JSON object"):
        Dataset.from_jsonl(tmp_path / "arr.jsonl")


def test_a_deeply_nested_jsonl_line_is_refused(tmp_path):
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "\n")
    with pytest.raises(InputError, match=r"deep\.jsonl: line 1"):
        Dataset.from_jsonl(tmp_path / "deep.jsonl")


@pytest.mark.slow
def test_empty_and_megabyte_texts_load_and_run(tmp_path):
    big = "word " * 220_000  # 1.1 MB
    texts = ["", big, "short text", "", "another one", big, "third", "fourth", "fifth", "x"] * 2
    texts[11] = texts[15] = "small"  # two megabyte texts in all: near-duplicate search costs ~3 s per MB
    labels = [0, 1] * 10
    rows = [{"sample_id": f"s{i}", "text": t, "label": labels[i]} for i, t in enumerate(texts)]
    with open(tmp_path / "t.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    ds = Dataset.from_jsonl(tmp_path / "t.jsonl")
    assert ds.texts[0] == "" and ds.texts[1] == big
    x, y = _features((10, 10))
    table, info = compute_signals(x, ds.labels, dataset=ds)
    assert np.isfinite(table["suspicion"]).all()
    groups = info["duplicate_groups"]
    assert groups[1] == groups[5] >= 0 and groups[0] == groups[3] >= 0  # the copies are found
    # The same texts through from_texts.
    assert Dataset.from_texts(texts, labels).content_hash != ds.content_hash  # ids differ ("0".. vs "s0"..)


def test_megabyte_csv_field_is_refused_or_read_but_never_crashes(tmp_path):
    with open(tmp_path / "big.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "text", "label"])
        w.writerow(["a", "x" * 2_000_000, 0])
        w.writerow(["b", "y", 1])
    try:
        ds = Dataset.from_csv(tmp_path / "big.csv")
    except InputError as e:
        assert "big.csv" in str(e) and "field" in str(e)
    else:
        assert len(ds.texts[0]) == 2_000_000


def test_control_characters_and_rtl_overrides_in_texts_are_kept_and_displayed_escaped():
    text = "good\u202eevil\x00\x1b[31m" + SCRIPT
    ds = Dataset.from_texts([text, "plain"], [0, 1])
    assert ds.texts[0] == text  # kept exactly: they may be the trigger
    shown = highlight(ds.texts[0], None)
    assert "<script>" not in shown and "<img" not in shown
    assert "&lt;script&gt;" in shown
    import re

    shown = highlight(ds.texts[0], re.compile("evil"))
    assert "<mark>evil</mark>" in shown and "<script>" not in shown


def test_html_in_texts_labels_class_names_and_sources_survives_as_data_and_is_escaped():
    ds = Dataset.from_texts([SCRIPT, "b"], [SCRIPT, "ok"], sources=[SCRIPT, "=1+1"])
    assert SCRIPT in ds.class_names
    assert ds.sources[0] == SCRIPT and ds.texts[0] == SCRIPT
    frame = ds.to_frame()
    assert frame.loc["0", "label_name"] == SCRIPT
    for value in (ds.texts[0], ds.class_names[ds.labels[0]], ds.sources[0]):
        out = escape_html(value)
        assert "<" not in out and ">" not in out and '"' not in out
        assert out == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"


def test_lone_surrogates_in_texts_are_refused_with_their_position():
    with pytest.raises(InputError, match=r"texts\[1\] holds a lone surrogate \(U\+D800 at character 0\)"):
        Dataset.from_texts(["fine", "\ud800 lone"], [0, 1])


# ---------------------------------------------------------------------------------------------- image files


def _png_header(width: int, height: int) -> bytes:
    """A real PNG whose header declares width x height (grey, 8 bit) and whose data is tiny."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _image_folder(tmp_path, extra: dict[str, bytes] | None = None, *, mode="L", size=(8, 8)):
    root = tmp_path / "imgs"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new(mode, size, color=(i * 40) if mode == "L" else (i * 40, 0, 0)).save(root / c / f"{i}.png")
    for rel, data in (extra or {}).items():
        (root / rel).write_bytes(data)
    return root


def test_a_clean_image_folder_loads(tmp_path):
    ds = Dataset.from_image_folder(_image_folder(tmp_path))
    assert ds.images.shape == (6, 8, 8) and ds.class_names == ("cat", "dog")
    assert ds.ids[0] == "cat/0.png"


@pytest.mark.parametrize("name, data, match", [
    ("cat/empty.png", b"", r"cat/empty\.png: not a readable image"),
    ("cat/notes.txt", b"just some text", r"cat/notes\.txt: not a readable image"),
    ("dog/fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, r"dog/fake\.png: not a readable image"),
])
def test_zero_byte_corrupt_and_non_image_files_are_named(tmp_path, name, data, match):
    root = _image_folder(tmp_path, {name: data})
    with pytest.raises(InputError, match=match):
        Dataset.from_image_folder(root)


def test_a_truncated_image_is_named(tmp_path):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
    root = _image_folder(tmp_path, {"dog/cut.png": buf.getvalue()[:60]})
    with pytest.raises(InputError, match=r"dog/cut\.png: not a readable image"):
        Dataset.from_image_folder(root)


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path):
    root = _image_folder(tmp_path, {"cat/bomb.png": _png_header(5000, 5000)})
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"bomb\.png: declares 5000x5000 = 25000000 pixels, above max_pixels"):
        Dataset.from_image_folder(root)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 2.0
    assert peak < 5_000_000  # the 25 MB image was never allocated


def test_an_image_declaring_100000_by_100000_is_refused_quickly_without_allocating(tmp_path):
    root = _image_folder(tmp_path, {"cat/bomb.png": _png_header(100_000, 100_000)})
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"bomb\.png: declares .*refusing to decode"):
        Dataset.from_image_folder(root)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0 and peak < 5_000_000


def test_mixed_image_modes_and_sizes(tmp_path):
    root = _image_folder(tmp_path)
    Image.new("RGBA", (8, 8)).save(root / "cat" / "rgba.png")
    with pytest.raises(InputError, match=r"rgba\.png: colour mode 'RGBA'; pass mode='L' or mode='RGB'"):
        Dataset.from_image_folder(root)
    ds = Dataset.from_image_folder(root, mode="RGB")
    assert ds.images.shape == (7, 8, 8, 3)
    (root / "cat" / "rgba.png").unlink()
    Image.new("RGB", (8, 8)).save(root / "dog" / "rgb.png")
    with pytest.raises(InputError, match=r"rgb\.png: colour mode 'RGB' differs from cat/0\.png"):
        Dataset.from_image_folder(root)
    (root / "dog" / "rgb.png").unlink()
    Image.new("L", (9, 8)).save(root / "dog" / "wide.png")
    with pytest.raises(InputError, match=r"wide\.png: size 9x8 differs from cat/0\.png \(8x8\)"):
        Dataset.from_image_folder(root)


@pytest.mark.parametrize("images, match", [
    (np.zeros((4, 8, 8)), r"images must be a uint8 array"),
    (np.full((4, 8, 8), np.nan), r"images must be a uint8 array"),
    (np.zeros((4, 8), np.uint8), r"images must have shape"),
    (np.zeros((4, 8, 8, 4), np.uint8), r"1 or 3 channels last"),
    (np.zeros((4, 0, 8), np.uint8), r"images have an empty side"),
])
def test_wrong_image_arrays_are_refused(images, match):
    with pytest.raises(InputError, match=match):
        Dataset.from_numpy(images, [0, 1, 0, 1])


def test_concatenating_datasets_that_share_ids_is_refused():
    a = Dataset.from_texts(["x", "y"], [0, 1])
    with pytest.raises(InputError, match=r"ids must be unique; 2 id\(s\)"):
        concat([a, a])


# ---------------------------------------------------------------------------------------------- exports


def test_formulas_in_every_exported_field_are_neutralized_in_csv(tmp_path):
    n = len(FORMULAS)
    df = pd.DataFrame({
        "source": FORMULAS, "label": FORMULAS[::-1], "note": FORMULAS, "reasons": FORMULAS[::-1],
        "suspicion": np.linspace(0, 1, n), FORMULAS[0]: ["v"] * n,
    }, index=pd.Index(FORMULAS, name="sample_id"))
    path = export_table(df, tmp_path / "out.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    assert header[-1] == "'" + FORMULAS[0]
    for row in body:
        for cell in row[:5]:
            assert cell.startswith("'"), row
            assert restore_cell(cell) in FORMULAS
    assert [restore_cell(r[0]) for r in body] == FORMULAS
    # Parquet and JSON keep the exact values.
    back = pd.read_parquet(export_table(df, tmp_path / "out.parquet"))
    assert back["sample_id"].tolist() == FORMULAS


def test_html_exported_as_csv_stays_one_cell(tmp_path):
    df = pd.DataFrame({"note": [SCRIPT + '",=1,"', "a\r\nb"]}, index=pd.Index(["a", "b"], name="sample_id"))
    with open(export_table(df, tmp_path / "o.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[1] == ["a", SCRIPT + '",=1,"'] and rows[2] == ["b", "a\r\nb"]


def test_toolkit_errors_are_one_family():
    # Callers can catch one type for everything the toolkit refuses on purpose.
    with pytest.raises(ForensicsError):
        Dataset.from_texts([], [])


def test_a_lone_surrogate_in_an_exported_cell_is_named(tmp_path):
    df = pd.DataFrame({"note": pd.Series(["fine", "\ud800"], dtype=object)})
    for ext in ("csv", "json"):
        with pytest.raises(InputError, match=r"cannot write the export .*'\\ud800'.*lone surrogate"):
            export_table(df, tmp_path / f"o.{ext}")
    assert not list(tmp_path.iterdir())


def test_a_lone_surrogate_in_an_id_is_refused_at_the_edge():
    # Not valid Unicode: it could not be written to Parquet, JSON or UTF-8 CSV later, so the loaders refuse it.
    with pytest.raises(InputError, match=r"ids\[0\] holds a lone surrogate \(U\+D800 at character 0\)"):
        Dataset.from_texts(["a", "b"], [0, 1], ids=["\ud800", "x"])
    with pytest.raises(InputError, match=r"ids\[1\] holds a lone surrogate \(U\+DFFF at character 1\)"):
        Dataset.from_numpy(np.zeros((2, 4, 4), np.uint8), [0, 1], ids=["a", "b\udfff"])


def test_a_csv_saved_with_a_byte_order_mark_keeps_its_ids(tmp_path):
    # "CSV UTF-8" from a spreadsheet starts with a BOM; the id column must not turn into '\ufeffsample_id'.
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffsample_id,text,label\nr-9,good film,pos\nr-7,bad film,neg\n".encode())
    ds = Dataset.from_csv(path)
    assert ds.ids.tolist() == ["r-9", "r-7"]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes('\ufeff{"sample_id": "r-9", "text": "good", "label": "pos"}\n'.encode())
    assert Dataset.from_jsonl(jsonl).ids.tolist() == ["r-9"]


def test_jsonl_ids_are_found_on_any_line_and_a_row_without_one_is_refused(tmp_path):
    path = tmp_path / "late.jsonl"
    path.write_text('{"text": "good", "label": "pos"}\n{"sample_id": "r-2", "text": "bad", "label": "neg"}\n')
    with pytest.raises(InputError, match=r"late\.jsonl: the row at line 1 has no 'sample_id' while other rows "
                                         r"have one; give every row an id, or none"):
        Dataset.from_jsonl(path)
    path.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg", "source": "w1"}\n')
    with pytest.raises(InputError, match=r"row at line 1 has no value for 'source'"):
        Dataset.from_jsonl(path, source_column="source")
    path.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    assert Dataset.from_jsonl(path).ids.tolist() == ["0", "1"]  # no row has an id: numbered, as documented


def test_a_csv_column_named_twice_is_refused(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("sample_id,text,label,label\na,good,pos,neg\n")
    with pytest.raises(InputError, match=r"twice\.csv: the header names column\(s\) \['label'\] more than once"):
        Dataset.from_csv(path)


def test_a_link_out_of_an_image_folder_is_refused(tmp_path):
    for c in "ab":
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "outside").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "outside" / "secret.png")
    (tmp_path / "imgs" / "a" / "inner.png").symlink_to(tmp_path / "imgs" / "b" / "0.png")  # inside: followed
    assert "a/inner.png" in Dataset.from_image_folder(tmp_path / "imgs").ids.tolist()
    (tmp_path / "imgs" / "a" / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    with pytest.raises(InputError, match=r"link\.png: a link to .*outside/secret\.png, outside the image folder"):
        Dataset.from_image_folder(tmp_path / "imgs")


@pytest.mark.parametrize("line, shown", [('"label": NaN', "nan"), ('"label": 1.5', "1.5"), ('"label": true', "True")])
def test_a_json_label_that_is_not_a_class_is_refused(tmp_path, line, shown):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", ' + line + "}\n")
    with pytest.raises(InputError, match=rf"labels\.jsonl: line 2: label {shown} is not a class; labels must be "
                                         r"class names \(text\) or whole numbers"):
        Dataset.from_jsonl(path)
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1.0}\n')
    assert Dataset.from_jsonl(path).labels.tolist() == [0, 1]  # a whole number written as a float is a number


def test_npz_byte_ids_are_text_and_a_missing_array_is_named(tmp_path):
    from forensics.cli import load_dataset

    images = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "bytes.npz", images=images, labels=np.array([0, 1, 0, 1]),
             ids=np.array([b"a", b"b", b"c", b"d"]), sources=np.array([b"w1", b"w1", b"w2", b"w2"]))
    ds = load_dataset(tmp_path / "bytes.npz")
    assert ds.ids.tolist() == ["a", "b", "c", "d"] and ds.sources.tolist() == ["w1", "w1", "w2", "w2"]
    np.savez(tmp_path / "bad.npz", images=images, labels=np.array([0, 1, 0, 1]), ids=np.array([b"\xff", b"b", b"c", b"d"]))
    with pytest.raises(InputError, match=r"ids\[0\] is bytes that are not UTF-8 text"):
        load_dataset(tmp_path / "bad.npz")
    np.savez(tmp_path / "noimages.npz", labels=np.array([0, 1]))
    with pytest.raises(InputError, match=r"noimages\.npz: no array 'images'; a \.npz dataset holds") as e:
        load_dataset(tmp_path / "noimages.npz")
    assert "pickle" not in str(e.value)


def test_a_fifo_named_like_a_csv_is_refused_without_blocking(tmp_path):
    from forensics.cli import load_dataset

    os.mkfifo(tmp_path / "x.csv")
    with pytest.raises(InputError, match=r"x\.csv: not a regular file or folder"):
        load_dataset(tmp_path / "x.csv")


@pytest.mark.parametrize("protocol", [0, 1])
def test_an_old_protocol_pickle_is_refused_as_unsafe(tmp_path, protocol):
    import pickle

    from forensics.errors import UnsafeFileError
    from forensics.models.io import load_state_dict_file

    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=protocol))
    with pytest.raises(UnsafeFileError, match=r"weights\.pt: this file is a protocol 0 or 1 pickle, which the safe "
                                              r"loader cannot read.*NOT loaded"):
        load_state_dict_file(path)
    path.write_bytes(b"just some text, not a pickle\n")
    with pytest.raises(InputError, match="not a readable torch weights file"):
        load_state_dict_file(path)


def test_digit_like_labels_that_are_not_class_numbers_are_names(tmp_path):
    path = tmp_path / "weird.csv"
    path.write_text("sample_id,text,label\na,good,12345678901234567890\nb,bad,\u00b2\nc,fine,12345678901234567890\n",
                    encoding="utf-8")
    ds = Dataset.from_csv(path)
    assert sorted(ds.class_names) == ["12345678901234567890", "\u00b2"]
    path.write_text("sample_id,text,label\na,good,1\nb,bad,0\n")
    assert Dataset.from_csv(path).labels.tolist() == [1, 0]  # plain class numbers stay numbers


def test_a_scan_of_three_texts_per_class_completes_and_says_what_it_skipped(tmp_path, capsys):
    from forensics import Investigation
    from forensics.cli import main

    path = tmp_path / "tiny.csv"
    path.write_text("sample_id,text,label\n" + "".join(f"s{i},text {i} {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}\n"
                                                       for i in range(6)))
    status = main(["scan", str(path), "--out", str(tmp_path / "out"), "--no-map"])
    err = capsys.readouterr().err
    assert status in (0, 1) and "Traceback" not in err, err  # a verdict, not an internal error (3)
    inv = Investigation.load(tmp_path / "out" / "investigation")
    assert inv.params["skipped_signals"]["knn_disagreement"] == "needs more than k = 10 samples; the data has 6"


def test_ids_that_look_the_same_and_names_with_terminal_escapes_are_refused():
    images = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(InputError, match=r"ids\[0\] = 'a' and ids\[1\] = 'a\\u200b' look the same to a reader"):
        Dataset.from_numpy(images, [0, 1], ids=["a", "a\u200b"])
    with pytest.raises(InputError, match=r"ids\[0\] = '\uff41' and ids\[1\] = 'a' look the same"):
        Dataset.from_numpy(images, [0, 1], ids=["\uff41", "a"])  # a full-width a
    with pytest.raises(InputError, match=r"sources\[1\] = 'w\\x1b\[31mred' contains control or bidirectional "
                                         r"characters \['U\+001B'\]"):
        Dataset.from_numpy(images, [0, 1], sources=["w1", "w\x1b[31mred"])
    with pytest.raises(InputError, match=r"class_names\[0\] = 'cat\\u202e' contains control or bidirectional"):
        Dataset.from_numpy(images, [0, 1], class_names=["cat\u202e", "dog"])
    with pytest.raises(InputError, match=r"a label = 'pos\\x07' contains control"):
        Dataset.from_texts(["x", "y"], ["pos\x07", "neg"])


def test_an_image_folder_of_mixed_sizes_is_resized_when_asked_and_takes_a_sources_file(tmp_path):
    from forensics.cli import load_dataset, main

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i, side in enumerate((8, 12, 16)):
            Image.fromarray(np.full((side, side), 60 * i, np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    with pytest.raises(InputError, match=r"all images must share one size: pass size=\(height, width\)"):
        Dataset.from_image_folder(tmp_path / "imgs")
    ds = Dataset.from_image_folder(tmp_path / "imgs", size=(10, 10))
    assert ds.images.shape == (6, 10, 10)
    assert ds.images[ds.positions(["cat/1.png"])[0]].tolist() == np.full((10, 10), 60).tolist()
    sources = tmp_path / "sources.csv"
    sources.write_text("sample_id,source\n" + "".join(f"{c}/{i}.png,worker-{i}\n" for c in ("cat", "dog")
                                                      for i in range(3)))
    ds = load_dataset(tmp_path / "imgs", size=(10, 10), sources_file=sources)
    assert ds.sources.tolist() == ["worker-0", "worker-1", "worker-2"] * 2
    sources.write_text("sample_id,source\ncat/0.png,w\n")
    with pytest.raises(InputError, match=r"sources has no entry for 5 image\(s\)"):
        load_dataset(tmp_path / "imgs", size=(10, 10), sources_file=sources)
    assert main(["scan", str(tmp_path / "imgs"), "--image-size", "ten", "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("value", ["[1, 2]", '{"x": 1}'])
def test_a_json_label_that_is_a_list_or_an_object_is_refused(tmp_path, value):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": ' + value + "}\n")
    with pytest.raises(InputError, match=r"labels\.jsonl: line 2: label .* is not a class"):
        Dataset.from_jsonl(path)


@pytest.mark.parametrize("content, message", [
    ("sample_id,source\ncat/0.png,w1\ncat/0.png,w2\n", r"line 3 names 'cat/0\.png' a second time"),
    ("id,who\ncat/0.png,w1\n", r"a sources file needs the columns sample_id and source"),
    ("sample_id,source\n,w1\n", r"line 2 has no sample_id or no source"),
])
def test_a_bad_sources_file_is_named(tmp_path, content, message):
    from forensics.cli import load_dataset

    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "cat" / "0.png")
    (tmp_path / "s.csv").write_text(content)
    with pytest.raises(InputError, match=message):
        load_dataset(tmp_path / "imgs", sources_file=tmp_path / "s.csv")


def test_a_sources_file_for_a_text_file_and_a_bad_image_size_are_refused(tmp_path, capsys):
    from forensics.cli import load_dataset, main

    (tmp_path / "t.csv").write_text("sample_id,text,label\na,good,pos\n")
    (tmp_path / "s.csv").write_text("sample_id,source\na,w\n")
    with pytest.raises(InputError, match=r"--sources names each image's source for an image folder"):
        load_dataset(tmp_path / "t.csv", sources_file=tmp_path / "s.csv")
    assert main(["scan", str(tmp_path / "t.csv"), "--image-size", "0x5"]) == 2
    assert "give the size as HEIGHTxWIDTH, e.g. 32x32; got '0x5'" in capsys.readouterr().err


def test_a_class_folder_named_with_a_terminal_escape_is_refused(tmp_path):
    (tmp_path / "imgs" / "cat\x1b[2J").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "cat\x1b[2J" / "0.png")
    with pytest.raises(InputError, match=r"ids\[0\] = 'cat\\x1b\[2J/0\.png' contains control"):
        Dataset.from_image_folder(tmp_path / "imgs")


@pytest.mark.parametrize("name, content", [("header.csv", "sample_id,text,label\n"), ("blank.jsonl", "\n  \n\n"),
                                           ("bom_only.csv", "\ufeff")])
def test_a_text_file_without_rows_is_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    reader = Dataset.from_csv if name.endswith(".csv") else Dataset.from_jsonl
    with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')}: no rows; the dataset is empty"):
        reader(path)
