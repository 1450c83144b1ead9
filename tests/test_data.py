"""Dataset: constructors, ids, hashes, subsetting and every loader error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from forensics.data import Dataset, concat, image_hash, text_hash
from forensics.errors import InputError


def _images(n=6, h=5, w=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


# ---------------------------------------------------------------- arrays and texts
def test_from_numpy_keeps_user_ids_labels_sources_and_hashes():
    x = _images()
    ds = Dataset.from_numpy(x, [0, 1, 2, 0, 1, 2], ids=[f"img-{i}" for i in range(6)],
                            class_names=["cat", "dog", "bird"], sources=list("aabbcc"))
    assert ds.kind == "image" and len(ds) == 6
    assert list(ds.ids) == [f"img-{i}" for i in range(6)]
    assert ds.class_names == ("cat", "dog", "bird")
    assert ds.hashes[3] == image_hash(x[3])
    frame = ds.to_frame()
    assert frame.index.name == "sample_id"
    assert frame.loc["img-4", "label_name"] == "dog" and frame.loc["img-4", "source"] == "c"
    np.testing.assert_array_equal(ds.payload("img-2"), x[2])


def test_integer_ids_become_strings_and_default_ids_are_positions_once():
    ds = Dataset.from_numpy(_images(3), [0, 1, 0], ids=[10, 20, 30])
    assert list(ds.ids) == ["10", "20", "30"]
    assert list(Dataset.from_numpy(_images(3), [0, 1, 0]).ids) == ["0", "1", "2"]


def test_string_labels_map_to_sorted_class_names_or_given_order():
    ds = Dataset.from_texts(["a", "b", "c"], ["pos", "neg", "pos"])
    assert ds.class_names == ("neg", "pos") and list(ds.labels) == [1, 0, 1]
    ds = Dataset.from_texts(["a", "b", "c"], ["pos", "neg", "pos"], class_names=["pos", "neg"])
    assert list(ds.labels) == [0, 1, 0]


def test_channels_last_rgb_and_single_channel_squeezed():
    rgb = np.zeros((2, 4, 4, 3), np.uint8)
    assert Dataset.from_numpy(rgb, [0, 0]).images.shape == (2, 4, 4, 3)
    one = np.zeros((2, 4, 4, 1), np.uint8)
    assert Dataset.from_numpy(one, [0, 0]).images.shape == (2, 4, 4)


def test_dataset_is_read_only():
    ds = Dataset.from_numpy(_images(3), [0, 1, 0])
    with pytest.raises(ValueError):
        ds.images[0, 0, 0] = 1
    with pytest.raises(ValueError):
        ds.labels[0] = 1


def test_content_hash_changes_with_any_label_payload_or_source_and_not_otherwise():
    x = _images()
    base = Dataset.from_numpy(x, [0, 1, 2, 0, 1, 2], sources=list("aabbcc"))
    same = Dataset.from_numpy(x.copy(), [0, 1, 2, 0, 1, 2], sources=list("aabbcc"))
    assert base.content_hash == same.content_hash
    x2 = x.copy()
    x2[5, 0, 0] ^= 1
    assert Dataset.from_numpy(x2, [0, 1, 2, 0, 1, 2], sources=list("aabbcc")).content_hash != base.content_hash
    assert base.replace(labels=[0, 1, 2, 0, 1, 1]).content_hash != base.content_hash
    assert base.replace(sources=list("aabbcd")).content_hash != base.content_hash


def test_subset_keeps_ids_order_and_hashes():
    ds = Dataset.from_texts(["x", "y", "z", "w"], [0, 1, 0, 1], ids=["a", "b", "c", "d"], sources=list("pqrs"))
    sub = ds.subset(["d", "a"])
    assert list(sub.ids) == ["d", "a"] and list(sub.texts) == ["w", "x"] and list(sub.sources) == ["s", "p"]
    assert sub.hashes[0] == text_hash("w")
    assert list(ds.subset(np.array([True, False, True, False])).ids) == ["a", "c"]
    assert sub.class_names == ds.class_names


def test_replace_recomputes_hashes_only_for_new_payload():
    ds = Dataset.from_texts(["x", "y"], [0, 1])
    new = ds.replace(texts=["x", "y!"])
    assert new.hashes[0] == ds.hashes[0] and new.hashes[1] == text_hash("y!")


def test_concat_joins_and_rejects_colliding_ids():
    a = Dataset.from_texts(["x"], [0], ids=["1"], class_names=["n", "p"])
    b = Dataset.from_texts(["y"], [1], ids=["2"], class_names=["n", "p"])
    assert list(concat([a, b]).ids) == ["1", "2"]
    with pytest.raises(InputError, match="unique"):
        concat([a, a])


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(labels=[0, 1]), "labels has 2 entries but there are 3 samples"),
        (dict(labels=[0, 1, 0], ids=["a", "b"]), "ids has 2 entries but there are 3 samples"),
        (dict(labels=[0, 1, 0], ids=["a", "b", "a"]), "ids must be unique.*'a'"),
        (dict(labels=[0, 1, 0], ids=["a", " ", "c"]), r"ids\[1\] is empty"),
        (dict(labels=[0, 1, 0], ids=["a", "b\u202ec", "c"]), r"ids\[1\].*U\+202E"),
        (dict(labels=[0, 1, 0], ids=["a", "b\nc", "c"]), r"ids\[1\].*control"),
        (dict(labels=[0, 3, 0], class_names=["x", "y"]), r"labels\[1\] = 3 is outside the class list"),
        (dict(labels=[0, -1, 0]), "labels must be >= 0"),
        (dict(labels=[0, 1, 0], sources=["a", "b"]), "sources has 2 entries but there are 3 samples"),
        (dict(labels=[0, 1, 0], sources=["a", None, "b"]), r"sources\[1\] is missing"),
        (dict(labels=[0.5, 1, 0]), "not whole numbers"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(InputError, match=message):
        Dataset.from_numpy(_images(3), **kwargs)


def test_string_label_outside_class_names():
    with pytest.raises(InputError, match=r"labels\[1\] = 'cow' is not in class_names"):
        Dataset.from_texts(["a", "b"], ["cat", "cow"], class_names=["cat", "dog"])


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((0, 4, 4), np.uint8), "empty"),
        (np.zeros((3, 4, 4), np.float32), "uint8"),
        (np.zeros((3, 4), np.uint8), "shape"),
        (np.zeros((3, 4, 4, 2), np.uint8), "1 or 3 channels"),
    ],
)
def test_bad_image_arrays(images, message):
    with pytest.raises(InputError, match=message):
        Dataset.from_numpy(images, [0] * len(images))


def test_empty_and_non_string_texts():
    with pytest.raises(InputError, match="empty"):
        Dataset.from_texts([], [])
    with pytest.raises(InputError, match=r"texts\[1\] is a int"):
        Dataset.from_texts(["a", 3], [0, 1])
    with pytest.raises(InputError, match="not one string"):
        Dataset.from_texts("abc", [0, 0, 0])
    with pytest.raises(InputError, match=r"texts\[0\] is not valid UTF-8"):
        Dataset.from_texts([b"\xff\xfe"], [0])


def test_unknown_id_in_subset():
    ds = Dataset.from_texts(["a"], [0], ids=["x"])
    with pytest.raises(InputError, match="'nope' is not in this dataset"):
        ds.subset(["nope"])


# ---------------------------------------------------------------- files
def _write_folder(root, sizes=None, modes=None):
    sizes = sizes or {}
    modes = modes or {}
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            name = f"{cls}/{i}.png"
            size = sizes.get(name, (6, 5))
            mode = modes.get(name, "L")
            arr = np.full((size[1], size[0]) + ((3,) if mode == "RGB" else ()), 40 * i, np.uint8)
            Image.fromarray(arr, mode=mode).save(root / name)
    return root


def test_image_folder_ids_are_relative_paths_and_classes_are_folders(tmp_path):
    ds = Dataset.from_image_folder(_write_folder(tmp_path), sources={f"{c}/{i}.png": c[0] for c in ("cat", "dog")
                                                                     for i in range(3)})
    assert ds.class_names == ("cat", "dog")
    assert list(ds.ids) == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    assert list(ds.labels) == [0, 0, 0, 1, 1, 1]
    assert ds.images.shape == (6, 5, 6) and ds.images[1].max() == 40
    assert list(ds.sources) == ["c", "c", "c", "d", "d", "d"]


def test_image_folder_names_the_unreadable_file(tmp_path):
    root = _write_folder(tmp_path)
    (root / "dog" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: not a readable image"):
        Dataset.from_image_folder(root)


def test_image_folder_truncated_and_empty_files(tmp_path):
    root = _write_folder(tmp_path)
    data = (root / "cat" / "1.png").read_bytes()
    (root / "cat" / "1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"1\.png: not a readable image"):
        Dataset.from_image_folder(root)
    (root / "cat" / "1.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"1\.png: not a readable image"):
        Dataset.from_image_folder(root)


def test_image_folder_mixed_sizes_name_both_files(tmp_path):
    root = _write_folder(tmp_path, sizes={"dog/1.png": (7, 5)})
    with pytest.raises(InputError, match=r"dog/1\.png: size 7x5 differs from cat/0\.png \(6x5\)"):
        Dataset.from_image_folder(root)


def test_image_folder_mixed_modes_error_or_convert(tmp_path):
    root = _write_folder(tmp_path, modes={"dog/2.png": "RGB"})
    with pytest.raises(InputError, match=r"dog/2\.png: colour mode 'RGB' differs"):
        Dataset.from_image_folder(root)
    ds = Dataset.from_image_folder(root, mode="RGB")
    assert ds.images.shape == (6, 5, 6, 3)


def test_image_folder_refuses_huge_declared_size_before_decoding(tmp_path):
    root = _write_folder(tmp_path)
    with pytest.raises(InputError, match="above max_pixels=20; refusing to decode"):
        Dataset.from_image_folder(root, max_pixels=20)


def test_image_folder_missing_or_without_classes(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Dataset.from_image_folder(tmp_path / "nope")
    with pytest.raises(InputError, match="no class sub-folders"):
        Dataset.from_image_folder(tmp_path)


def test_csv_and_jsonl_texts(tmp_path):
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("sample_id,text,label,who\nr1,\"good, really\",pos,alice\nr2,bad,neg,bob\n",
                        encoding="utf-8")
    ds = Dataset.from_csv(csv_path, source_column="who")
    assert list(ds.ids) == ["r1", "r2"] and ds.texts[0] == "good, really"
    assert ds.class_names == ("neg", "pos") and list(ds.sources) == ["alice", "bob"]

    jl = tmp_path / "r.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [{"text": "a", "label": 1}, {"text": "b", "label": 0}]) + "\n")
    ds = Dataset.from_jsonl(jl)
    assert list(ds.ids) == ["0", "1"] and list(ds.labels) == [1, 0]


def test_text_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\n\xff\xfe,1\n")
    with pytest.raises(InputError, match=r"bad\.csv: not valid UTF-8"):
        Dataset.from_csv(bad, id_column=None)
    cols = tmp_path / "cols.csv"
    cols.write_text("body,label\nx,1\n")
    with pytest.raises(InputError, match=r"cols\.csv: no column 'text'"):
        Dataset.from_csv(cols)
    jl = tmp_path / "r.jsonl"
    jl.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(InputError, match=r"r\.jsonl: line 2 is not valid JSON"):
        Dataset.from_jsonl(jl)
    with pytest.raises(InputError, match="no such file"):
        Dataset.from_csv(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="no rows"):
        Dataset.from_csv(empty)


# ---------------------------------------------------------------- torch-style datasets
class _TorchLike:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_from_torch_channels_first_floats_and_texts():
    torch = pytest.importorskip("torch")
    x = torch.rand(4, 1, 5, 5)
    ds = Dataset.from_torch(_TorchLike([(x[i], torch.tensor(i % 2)) for i in range(4)]), class_names=["a", "b"])
    assert ds.images.shape == (4, 5, 5) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[2], np.round(x[2, 0].numpy() * 255).astype(np.uint8))
    assert list(ds.labels) == [0, 1, 0, 1]
    texts = Dataset.from_torch(_TorchLike([("hi", 0), ("yo", 1)]))
    assert texts.kind == "text" and list(texts.texts) == ["hi", "yo"]
    with pytest.raises(InputError, match=r"item 1: float pixels must lie in \[0, 1\]"):
        Dataset.from_torch(_TorchLike([(x[0], 0), (x[1] * 3 + 2, 1)]))
