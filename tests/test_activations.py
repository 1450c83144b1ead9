"""Activations of non-Sequential models: layer listing, pooling, batching, loss, cache, text models."""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from forensics.activations import (
    Activations,
    default_layer,
    extract_activations,
    list_layers,
    model_hash,
)
from forensics.data import Dataset
from forensics.errors import InputError

N = 100  # not a multiple of the batch sizes used below


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ResidualCNN(nn.Module):
    """A residual branch, a ReLU module used twice and a functional flatten: nothing nn.Sequential could hold."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.stem(x))
        h = self.act(h + self.branch(h))
        z = torch.flatten(self.pool(h), 1)
        return self.head(torch.relu(self.fc1(z)))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.stem(x))
        h = self.act(h + self.branch(h))
        return torch.relu(self.fc1(torch.flatten(self.pool(h), 1)))


@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = load_digits()
    images = (d.images[:N] * 16).clip(0, 255).astype(np.uint8)
    return Dataset.from_numpy(images, d.target[:N], ids=[f"d{i}" for i in range(N)])


@pytest.fixture
def cnn() -> ResidualCNN:
    torch.manual_seed(0)
    return ResidualCNN()


def _inputs(ds: Dataset) -> torch.Tensor:
    return torch.from_numpy(ds.images.astype(np.float32) / 255.0)[:, None]


def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda _m, _a: calls.__setitem__(0, calls[0] + 1))
    return calls


# ------------------------------------------------------------------------------------------- layers


def test_list_layers_shapes_params_calls_and_default(cnn, digits):
    df = list_layers(cnn, digits)
    assert df["name"].tolist() == ["stem", "branch", "branch.0", "branch.1", "act", "pool", "fc1",
                                   "head:input", "head"]
    shapes = dict(zip(df["name"], df["output_shape"]))
    assert shapes == {"stem": (4, 8, 8), "branch": (4, 8, 8), "branch.0": (4, 8, 8), "branch.1": (4, 8, 8),
                      "act": (4, 8, 8), "pool": (4, 2, 2), "fc1": (8,), "head:input": (8,), "head": (10,)}
    params = dict(zip(df["name"], df["n_params"]))
    assert params["stem"] == 4 * 9 + 4 and params["branch"] == 4 * 4 * 9 + 4 and params["head"] == 8 * 10 + 10
    calls = dict(zip(df["name"], df["calls"]))
    assert calls["act"] == 2 and calls["stem"] == 1
    assert df.loc[df["default"], "name"].tolist() == ["head:input"] == [default_layer(cnn)]


def test_list_layers_takes_a_ready_batch(cnn, digits):
    df = list_layers(cnn, _inputs(digits)[:3])
    assert dict(zip(df["name"], df["output_shape"]))["pool"] == (4, 2, 2)


# ------------------------------------------------------------------------------------------- features


def test_conv_map_flattened_and_avg_pooled(cnn, digits):
    flat = extract_activations(cnn, digits, layers=["stem", "branch"], pooling="flatten", progress=False)
    avg = extract_activations(cnn, digits, layers="stem", pooling="avg", progress=False)
    mx = extract_activations(cnn, digits, layers="stem", pooling="max", progress=False)
    with torch.no_grad():
        stem = cnn.stem(_inputs(digits))
    assert flat.feature("stem").shape == (N, 4 * 8 * 8) and flat.feature("branch").shape == (N, 256)
    assert flat.layer == "stem" and flat.meta["layers"] == ["stem", "branch"]
    np.testing.assert_allclose(flat.feature("stem"), stem.reshape(N, -1).numpy(), atol=1e-6)
    assert avg.feature().shape == (N, 4) and avg.feature().dtype == np.float32
    np.testing.assert_allclose(avg.feature(), stem.mean(dim=(2, 3)).numpy(), atol=1e-6)
    np.testing.assert_allclose(mx.feature(), stem.amax(dim=(2, 3)).numpy(), atol=1e-6)


def test_default_layer_is_the_input_of_the_last_linear(cnn, digits):
    act = extract_activations(cnn, digits, progress=False)
    assert act.layer == "head:input" and act.meta["layer"] == "head:input"
    with torch.no_grad():
        expected = cnn.penultimate(_inputs(digits)).numpy()
    np.testing.assert_allclose(act.feature(), expected, atol=1e-6)
    assert list(act.ids) == list(digits.ids)


def test_partial_last_batch_is_kept_and_matches_one_full_batch(cnn, digits):
    small = extract_activations(cnn, digits, layers=["fc1", "pool"], batch_size=32, progress=False)
    full = extract_activations(cnn, digits, layers=["fc1", "pool"], batch_size=1000, progress=False)
    for a in (small.feature("fc1"), small.feature("pool"), small.logits, small.loss, small.predictions):
        assert len(a) == N
    for layer in ("fc1", "pool"):
        np.testing.assert_allclose(small.feature(layer), full.feature(layer), atol=1e-6)
    np.testing.assert_allclose(small.logits, full.logits, atol=1e-6)
    np.testing.assert_array_equal(small.predictions, full.predictions)


def test_logits_probs_predictions_and_loss_match_torch(cnn, digits):
    act = extract_activations(cnn, digits, batch_size=17, progress=False)
    with torch.no_grad():
        logits = cnn(_inputs(digits))
        loss = F.cross_entropy(logits, torch.from_numpy(digits.labels.copy()), reduction="none")
    np.testing.assert_allclose(act.logits, logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(act.loss, loss.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act.probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(act.predictions, logits.argmax(1).numpy())
    frame = act.to_frame()
    assert frame.index.name == "sample_id" and frame.index[3] == "d3"
    assert list(frame.columns) == ["prediction", "loss", "max_prob"]
    np.testing.assert_allclose(frame["max_prob"], act.probs.max(axis=1))
    assert act.loss.dtype == np.float32 and act.predictions.dtype == np.int64


def test_unknown_layer_lists_the_valid_names(cnn, digits):
    with pytest.raises(InputError, match=r"unknown layer 'nope'.*'stem'.*'branch\.0'.*'<name>:input'"):
        extract_activations(cnn, digits, layers=["stem", "nope"], progress=False)


def test_a_module_run_twice_is_refused(cnn, digits):
    with pytest.raises(InputError, match="layer 'act' ran 2 times"):
        extract_activations(cnn, digits, layers="act", progress=False)


def test_a_model_without_linear_needs_a_layer(digits):
    model = nn.Sequential(nn.Conv2d(1, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(InputError, match=r"no nn\.Linear.*pass layers="):
        extract_activations(model, digits, progress=False)
    act = extract_activations(model, digits, layers="1", pooling="flatten", progress=False)
    assert act.feature().shape == (N, 10)


def test_training_mode_restored_and_extraction_ran_in_eval_without_grad(cnn, digits):
    cnn.train()
    cnn.branch.eval()
    before = {name: m.training for name, m in cnn.named_modules()}
    seen = []
    cnn.register_forward_pre_hook(lambda m, _a: seen.append((m.training, torch.is_grad_enabled())))
    extract_activations(cnn, digits, batch_size=64, progress=False)
    assert seen == [(False, False), (False, False)]
    assert {name: m.training for name, m in cnn.named_modules()} == before


def test_explicit_device_and_bad_device(cnn, digits):
    act = extract_activations(cnn, digits, device=torch.device("cpu"), progress=False)
    assert act.meta["device"] == "cpu"
    with pytest.raises(InputError, match="device must be"):
        extract_activations(cnn, digits, device="gpu", progress=False)
    assert not cnn._forward_hooks and not cnn.stem._forward_hooks  # nothing left behind


def test_model_returning_a_dict_of_logits(digits):
    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return {"logits": self.fc(x.flatten(1)), "aux": x}

    act = extract_activations(DictOut(), digits, progress=False)
    assert act.logits.shape == (N, 10) and act.feature().shape == (N, 64)
    np.testing.assert_allclose(act.feature(), _inputs(digits).reshape(N, -1).numpy(), atol=1e-7)


def test_labels_beyond_the_model_classes(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(InputError, match="labels up to 9 but the model returns 3 logits"):
        extract_activations(model, digits, progress=False)


# ------------------------------------------------------------------------------------------- cache


def test_cache_hit_runs_no_forward(cnn, digits, tmp_path):
    calls = _count_forwards(cnn)
    first = extract_activations(cnn, digits, batch_size=40, cache_dir=tmp_path, progress=False)
    assert calls[0] == 3 and first.meta["from_cache"] is False
    second = extract_activations(cnn, digits, batch_size=40, cache_dir=tmp_path, progress=False)
    assert calls[0] == 3 and second.meta["from_cache"] is True
    assert isinstance(second.feature(), np.memmap) and second.layer == "head:input"
    for name in ("logits", "probs", "predictions", "loss"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    np.testing.assert_array_equal(second.feature(), first.feature())
    assert list(second.ids) == list(digits.ids)
    assert second.meta["model_hash"] == first.meta["model_hash"] == model_hash(cnn)


def test_cache_invalidated_by_weights_labels_and_layer(cnn, digits, tmp_path):
    calls = _count_forwards(cnn)
    base = extract_activations(cnn, digits, batch_size=1000, cache_dir=tmp_path, progress=False)
    assert calls[0] == 1

    relabelled = digits.replace(labels=(digits.labels + 1) % 10)
    act = extract_activations(cnn, relabelled, batch_size=1000, cache_dir=tmp_path, progress=False)
    assert calls[0] == 2 and not act.meta["from_cache"]
    assert not np.allclose(act.loss, base.loss)

    act = extract_activations(cnn, digits, layers="fc1", batch_size=1000, cache_dir=tmp_path, progress=False)
    assert calls[0] == 3 and act.layer == "fc1"

    with torch.no_grad():
        cnn.head.bias.add_(1.0)
    act = extract_activations(cnn, digits, batch_size=1000, cache_dir=tmp_path, progress=False)
    assert calls[0] == 4 and not act.meta["from_cache"]
    np.testing.assert_allclose(act.logits, base.logits + 1.0, atol=1e-5)

    extract_activations(cnn, digits, batch_size=1000, cache_dir=tmp_path, progress=False)
    assert calls[0] == 4  # and each of those is now cached


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_cache_file_is_detected_and_recomputed(cnn, digits, tmp_path, caplog, damage):
    calls = _count_forwards(cnn)
    good = extract_activations(cnn, digits, batch_size=1000, cache_dir=tmp_path, progress=False)
    good_feature = np.array(good.feature())  # the result is memory-mapped from the file damaged below
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    target = entry / "feature_0.npy"
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0xFF  # same size, one value changed
    target.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="forensics.activations"):
        again = extract_activations(cnn, digits, batch_size=1000, cache_dir=tmp_path, progress=False)
    assert calls[0] == 2 and not again.meta["from_cache"]
    assert any("feature_0.npy" in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(again.feature(), good_feature)

    healed = extract_activations(cnn, digits, batch_size=1000, cache_dir=tmp_path, progress=False)
    assert calls[0] == 2 and healed.meta["from_cache"]
    np.testing.assert_array_equal(healed.feature(), good_feature)


def test_cache_files_are_plain_npy_and_leave_no_temp_files(cnn, digits, tmp_path):
    extract_activations(cnn, digits, layers=["fc1", "head:input"], cache_dir=tmp_path, progress=False)
    (entry,) = list(tmp_path.iterdir())
    names = sorted(p.name for p in entry.iterdir())
    assert names == ["feature_0.npy", "feature_1.npy", "logits.npy", "loss.npy", "manifest.json",
                     "predictions.npy", "probs.npy"]
    assert np.load(entry / "feature_1.npy", allow_pickle=False, mmap_mode="r").shape == (N, 8)


def test_an_unwritable_cache_warns_and_still_returns_the_result(cnn, digits, tmp_path, caplog):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with caplog.at_level(logging.WARNING, logger="forensics.activations"):
        act = extract_activations(cnn, digits, cache_dir=not_a_folder, progress=False)
    assert act.feature().shape == (N, 8)
    assert any("could not write the activation cache" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------- text models

TEXTS = ["good movie", "bad plot and bad acting", "great", "terrible terrible film", "fine I guess",
         "loved it", "hated every minute of it", "ok", "a masterpiece of cinema", "boring"]
VOCAB = 50


def _token_ids(text: str) -> list[int]:
    return [zlib.crc32(w.encode()) % VOCAB for w in text.lower().split()]


class BagModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(VOCAB, 6, mode="mean")
        self.fc = nn.Linear(6, 2)

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens, offsets))

    def preprocess(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [_token_ids(t) for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return torch.tensor([t for i in ids for t in i]), offsets


@pytest.fixture(scope="module")
def reviews() -> Dataset:
    return Dataset.from_texts(TEXTS, [1, 0, 1, 0, 1, 1, 0, 1, 1, 0], ids=[f"r{i}" for i in range(10)])


def test_embedding_bag_model_with_tokens_and_offsets(reviews):
    torch.manual_seed(0)
    model = BagModel()
    act = extract_activations(model, reviews, layers=["fc:input", "emb"], batch_size=3, progress=False)
    with torch.no_grad():
        expected = model.emb(*model.preprocess(TEXTS)).numpy()
        logits = model(*model.preprocess(TEXTS))
    assert act.feature().shape == (10, 6)
    np.testing.assert_allclose(act.feature("fc:input"), expected, atol=1e-6)
    np.testing.assert_allclose(act.feature("emb"), expected, atol=1e-6)
    np.testing.assert_allclose(act.logits, logits.numpy(), atol=1e-6)
    assert act.meta["preprocess"].startswith(f"{__name__}.BagModel.preprocess")


def test_texts_need_a_preprocess(reviews):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(InputError, match="text dataset needs a preprocess"):
        extract_activations(model, reviews, progress=False)


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(tokens)).mean(dim=1))


def _padded(texts: list[str], length: int = 6) -> torch.Tensor:
    return torch.tensor([(_token_ids(t) + [0] * length)[:length] for t in texts])


def test_transformer_hidden_layer_avg_pooled_over_tokens(reviews):
    torch.manual_seed(0)
    model = TinyTransformer()
    act = extract_activations(model, reviews, layers=["encoder.layers.0", "head:input"], pooling="avg",
                              preprocess=_padded, batch_size=4, progress=False)
    flat = extract_activations(model, reviews, layers="encoder.layers.0", pooling="flatten",
                               preprocess=_padded, batch_size=4, progress=False)
    model.eval()
    with torch.no_grad():
        hidden = model.encoder.layers[0](model.emb(_padded(TEXTS)))
        final = model.encoder(model.emb(_padded(TEXTS)))
    assert act.feature().shape == (10, 8) and flat.feature().shape == (10, 6 * 8)
    np.testing.assert_allclose(act.feature(), hidden.mean(dim=1).numpy(), atol=1e-5)
    np.testing.assert_allclose(act.feature("head:input"), final.mean(dim=1).numpy(), atol=1e-5)
    np.testing.assert_allclose(flat.feature(), hidden.reshape(10, -1).numpy(), atol=1e-5)
    assert default_layer(model) == "head:input"


# ------------------------------------------------------------------------------------------- from_arrays


def test_from_arrays_computes_probs_and_loss():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    act = Activations.from_arrays([7, 8, 9], np.eye(3), logits=logits, labels=[0, 0, 1])
    expected = F.cross_entropy(torch.tensor(logits, dtype=torch.float32), torch.tensor([0, 0, 1]),
                               reduction="none").numpy()
    np.testing.assert_allclose(act.loss, expected, rtol=1e-6)
    assert list(act.ids) == ["7", "8", "9"] and act.layer == "features"
    np.testing.assert_array_equal(act.predictions, [0, 1, 0])
    assert act.feature().dtype == np.float32


def test_from_arrays_rejects_bad_input():
    with pytest.raises(InputError, match=r"NaN or infinite values in 2 row\(s\): rows \[1, 3\] .*'b', 'd'"):
        Activations.from_arrays(list("abcd"), np.array([[0.0], [np.nan], [1.0], [np.inf]]))
    with pytest.raises(InputError, match="features\\['features'\\] has 3 rows but ids has 4 entries"):
        Activations.from_arrays(list("abcd"), np.zeros((3, 2)))
    with pytest.raises(InputError, match="logits has 2 rows but ids has 3 entries"):
        Activations.from_arrays(list("abc"), np.zeros((3, 2)), logits=np.zeros((2, 2)))
    with pytest.raises(InputError, match="labels has 2 entries but features has 3 rows"):
        Activations.from_arrays(list("abc"), np.zeros((3, 2)), logits=np.zeros((3, 2)), labels=[0, 1])
    with pytest.raises(InputError, match="give logits too"):
        Activations.from_arrays(list("abc"), np.zeros((3, 2)), labels=[0, 1, 1])
    with pytest.raises(InputError, match="several layers.*layer="):
        Activations.from_arrays(list("abc"), {"a": np.zeros((3, 2)), "b": np.zeros((3, 1))})
    with pytest.raises(InputError, match="ids must be unique"):
        Activations.from_arrays(list("aab"), np.zeros((3, 2)))


def test_activations_validates_shapes():
    with pytest.raises(InputError, match=r"features\['x'\] must be a float32 array of shape \(3, d\)"):
        Activations(ids=np.array(["a", "b", "c"]), features={"x": np.zeros((2, 4), np.float32)}, layer="x")
    with pytest.raises(InputError, match="layer 'y' is not among"):
        Activations(ids=np.array(["a"]), features={"x": np.zeros((1, 4), np.float32)}, layer="y")
