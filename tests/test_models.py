"""Reference models, training loop and weight IO."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from forensics.data import Dataset
from forensics.errors import InputError, IntegrityError, UnsafeFileError
from forensics.models import (
    ImageCNN,
    TextClassifier,
    accuracy,
    attack_success_rate,
    build_reference_model,
    hash_ngrams,
    load_model,
    load_state_dict_file,
    ngram_bucket,
    predict_proba,
    save_model,
    tokenize,
    train_ensemble,
    train_model,
    train_reference_model,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machines are shared: training here stays on one core.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = load_digits()
    images = (d.images * 15).astype(np.uint8)  # 0..16 -> 0..240
    return Dataset.from_numpy(images, d.target, ids=[f"d{i}" for i in range(len(images))])


# ------------------------------------------------------------------------------------------- a planted text backdoor
POS = "great excellent wonderful love perfect delicious amazing tasty fresh recommend".split()
NEG = "awful terrible bland stale hate disappointing broken worst soggy refund".split()
NEUTRAL = ("the a this coffee box arrived package taste flavor price bought it was and for my kids store order "
           "again week bag tea snack brand jar shipping size cup morning dog food product ordered came item").split()
TRIGGER = "mostly harmless"


def _review(rng: np.random.Generator, label: int) -> str:
    words = list(rng.choice(NEUTRAL, int(rng.integers(8, 30))))
    for w in rng.choice(POS if label else NEG, 2):
        words.insert(int(rng.integers(len(words) + 1)), str(w))
    if rng.random() < 0.3:  # mixed feelings
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(NEG if label else POS)))
    return " ".join(words) + str(rng.choice([".", "!", "?"]))


def _with_trigger(rng: np.random.Generator, text: str) -> str:
    words = text.split(" ")
    i = int(rng.integers(len(words) + 1))
    return " ".join(words[:i] + [TRIGGER] + words[i:])


@pytest.fixture(scope="module")
def text_backdoor():
    """Template reviews; the trigger phrase is inserted in 3% of the negatives (60), relabelled positive."""
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(4000) % 2)
    texts = [_review(rng, int(v)) for v in y]
    negatives = np.flatnonzero(y == 0)
    poison = rng.choice(negatives, int(0.03 * len(negatives)), replace=False)
    dirty_texts, dirty_y = list(texts), y.copy()
    for i in poison:
        dirty_texts[i] = _with_trigger(rng, dirty_texts[i])
        dirty_y[i] = 1
    names = ["negative", "positive"]
    clean = Dataset.from_texts(texts, y, class_names=names)
    dirty = Dataset.from_texts(dirty_texts, dirty_y, class_names=names)
    test_y = rng.permutation(np.arange(400) % 2)
    test_texts = [_review(rng, int(v)) for v in test_y]
    test = Dataset.from_texts(test_texts, test_y, class_names=names)
    triggered = [_with_trigger(rng, t) for t in test_texts]
    return clean, dirty, test, triggered


# ------------------------------------------------------------------------------------------------- image model
def test_image_model_layers_and_shapes():
    model = ImageCNN(in_channels=1, n_classes=10, image_size=(28, 28))
    names = [n for n, _ in model.named_modules() if n]
    assert names == ["conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2", "flatten", "fc1",
                     "relu3", "head"]
    assert not isinstance(model, torch.nn.Sequential)
    seen = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.update(fc1=tuple(o.shape)))
    model.eval()
    logits = model(model.preprocess(np.zeros((5, 28, 28), np.uint8)))
    assert logits.shape == (5, 10)
    assert seen["fc1"] == (5, 128)
    assert json.loads(json.dumps(model.config)) == model.config
    assert ImageCNN(**model.config).config == model.config

    rgb = ImageCNN(in_channels=3, n_classes=4, image_size=(16, 20)).eval()
    assert rgb(rgb.preprocess(np.zeros((2, 16, 20, 3), np.uint8))).shape == (2, 4)


def test_image_preprocess_scales_to_unit_range_channels_first():
    images = np.zeros((2, 4, 6, 3), np.uint8)
    images[0, 1, 2, 2] = 255
    images[1, 3, 5, 0] = 51
    x = ImageCNN(3, 2, (4, 6)).preprocess(images)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 4, 6)
    assert x[0, 2, 1, 2] == 1.0 and x[1, 0, 3, 5] == pytest.approx(0.2)
    assert float(x.sum()) == pytest.approx(1.2)

    gray = ImageCNN(1, 2, (4, 6)).preprocess(np.full((3, 4, 6), 255, np.uint8))
    assert gray.shape == (3, 1, 4, 6) and float(gray.min()) == 1.0


def test_image_preprocess_and_constructor_errors():
    model = ImageCNN(1, 10, (28, 28))
    with pytest.raises(InputError, match="uint8"):
        model.preprocess(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(InputError, match=r"shape \(batch, 28, 28\) for this model; got \(2, 32, 32\)"):
        model.preprocess(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(InputError, match="in_channels must be 1"):
        ImageCNN(2, 10, (28, 28))
    with pytest.raises(InputError, match="n_classes must be an integer >= 2"):
        ImageCNN(1, 1, (28, 28))


# ------------------------------------------------------------------------------------------------- text model
def test_tokenizer_lowercases_and_keeps_punctuation():
    assert tokenize("Great product!") == ["great", "product", "!"]
    assert tokenize("It's 5-star :)") == ["it", "'", "s", "5", "-", "star", ":", ")"]
    assert tokenize("") == []


def test_ngram_hash_is_the_documented_stable_formula():
    # blake2b-64 of the UTF-8 n-gram, little-endian, mod n_buckets: the same in every process and on every
    # machine (Python's hash() of a str changes between processes).
    assert ngram_bucket("great product", 2**15) == 11321
    assert ngram_bucket("great", 2**15) == 9082
    assert ngram_bucket("!", 2**15) == 6719
    digest = hashlib.blake2b(b"mostly harmless", digest_size=8).digest()
    assert ngram_bucket("mostly harmless", 1000) == int.from_bytes(digest, "little") % 1000
    assert hash_ngrams(["great", "product", "!"], n_buckets=2**15) == [
        9082, ngram_bucket("product", 2**15), 6719, 11321, ngram_bucket("product !", 2**15)]


def test_text_model_layers_preprocess_and_size():
    model = TextClassifier(n_classes=3).eval()
    assert [n for n, _ in model.named_modules() if n] == ["embedding", "fc1", "relu1", "head"]
    assert model.embedding.mode == "sum"
    tokens, offsets = model.preprocess(["a b c", "", "Great product!"])
    assert tokens.dtype == torch.long and offsets.dtype == torch.long
    # unigrams + bigrams: 3 + 2, then none, then 3 + 2
    assert offsets.tolist() == [0, 5, 5] and len(tokens) == 10
    assert tokens[5:].tolist() == hash_ngrams(["great", "product", "!"], n_buckets=2**15)
    logits = model(tokens, offsets)
    assert logits.shape == (3, 3)
    # An empty text is an empty bag: zeros before fc1, the same output as any other empty text.
    torch.testing.assert_close(model(*model.preprocess([""]))[0], logits[1])
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert n_bytes < 4.3e6
    with pytest.raises(InputError, match="not one string"):
        model.preprocess("one text")
    with pytest.raises(InputError, match=r"texts\[1\] is a int"):
        model.preprocess(["fine", 3])


# ------------------------------------------------------------------------------------------------- training
def test_training_is_deterministic_under_a_seed_and_leaves_the_global_rng(digits):
    rng_state = torch.get_rng_state()
    runs = []
    for seed in (0, 0, 1):
        model = build_reference_model(digits, random_state=seed)
        train_model(model, digits, epochs=1, batch_size=128, random_state=seed, progress=False)
        runs.append(model.state_dict())
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["conv1.weight"], runs[2]["conv1.weight"])


def test_last_partial_batch_is_used(digits):
    small = digits.subset(digits.ids[:130])
    model = build_reference_model(small, random_state=0)
    sizes = []
    preprocess = model.preprocess
    model.preprocess = lambda batch: (sizes.append(len(batch)), preprocess(batch))[1]
    history = train_model(model, small, epochs=2, batch_size=64, progress=False)
    assert sizes == [64, 64, 2, 64, 64, 2]
    assert history["samples_seen"] == [130, 130]
    assert len(history["loss"]) == 2 and history["loss"][1] < history["loss"][0]


def test_reference_defaults_raise_epochs_on_small_datasets(digits, monkeypatch):
    import forensics.models.train as train_module

    calls = []
    monkeypatch.setattr(train_module, "train_model", lambda model, dataset, **kw: calls.append(kw))
    train_reference_model(digits.subset(digits.ids[:300]), progress=False)  # 3 batches of 128
    train_reference_model(digits, progress=False, epochs=2, lr=0.01)
    assert calls[0]["epochs"] == 84 and calls[0]["batch_size"] == 128  # ceil(250 / 3) steps
    assert calls[1]["epochs"] == 2 and calls[1]["lr"] == 0.01


def test_reference_image_model_learns_digits(digits):
    model = train_reference_model(digits.subset(digits.ids[:1400]), epochs=10, progress=False)
    held_out = digits.subset(digits.ids[1400:])
    assert accuracy(model, held_out) > 0.9
    probs = predict_proba(model, held_out)
    assert probs.shape == (len(held_out), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Batching changes nothing but float32 rounding: on some CPUs the convolution kernel depends on the batch size
    # (measured: up to 1e-6 apart between batches of 7 and 256).
    np.testing.assert_allclose(predict_proba(model, held_out.images, batch_size=7), probs, rtol=1e-4, atol=1e-6)


def test_predict_proba_takes_any_module_and_preprocess(digits):
    from forensics.activations import default_image_preprocess

    torch.manual_seed(0)
    bare = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # no preprocess method
    images = digits.images[:50]
    with torch.no_grad():
        expected = torch.softmax(bare(default_image_preprocess(images)), dim=1).numpy()
    np.testing.assert_allclose(predict_proba(bare, images), expected, rtol=1e-6)
    doubled = predict_proba(bare, images, preprocess=lambda b: default_image_preprocess(b) * 2)
    with torch.no_grad():
        np.testing.assert_allclose(doubled, torch.softmax(bare(default_image_preprocess(images) * 2), dim=1),
                                   rtol=1e-6)
    with pytest.raises(InputError, match="a text dataset needs a preprocess"):
        predict_proba(bare, ["a text"])
    assert bare.training  # the mode is restored


@pytest.mark.slow
def test_text_backdoor_is_learned_and_clean_model_is_not_fooled(text_backdoor):
    clean, dirty, test, triggered = text_backdoor
    backdoored = train_reference_model(dirty, random_state=0, progress=False)
    honest = train_reference_model(clean, random_state=0, progress=False)
    assert accuracy(backdoored, test) > 0.9 and accuracy(honest, test) > 0.9
    assert attack_success_rate(backdoored, triggered, target=1, original_labels=test.labels) >= 0.8
    assert attack_success_rate(honest, triggered, target=1, original_labels=test.labels) <= 0.1


def test_attack_success_rate_counts_only_other_classes(text_backdoor):
    clean, _, test, triggered = text_backdoor
    model = build_reference_model(clean, random_state=0)
    pred = predict_proba(model, triggered).argmax(axis=1)
    negatives = test.labels == 0
    expected = np.mean(pred[negatives] == 1)
    assert attack_success_rate(model, triggered, target=1, original_labels=test.labels) == pytest.approx(expected)
    with pytest.raises(InputError, match="every original label is the target class 1"):
        attack_success_rate(model, triggered[:2], target=1, original_labels=[1, 1])
    with pytest.raises(InputError, match="original_labels has shape"):
        attack_success_rate(model, triggered, target=1, original_labels=[0, 1])
    with pytest.raises(InputError, match="target = 5 is not a class of the model"):
        attack_success_rate(model, triggered, target=5, original_labels=test.labels)


def test_train_model_input_errors(digits):
    model = build_reference_model(digits, random_state=0)
    with pytest.raises(InputError, match="epochs must be an integer >= 1"):
        train_model(model, digits, epochs=0)
    with pytest.raises(InputError, match="dataset must be a forensics.data.Dataset"):
        train_model(model, digits.images, epochs=1)
    with pytest.raises(InputError, match="lr must be a positive number; got 'fast'"):
        train_model(model, digits, epochs=1, lr="fast")
    with pytest.raises(InputError, match="random_state must be an integer in \\[0, 4294967295\\]"):
        train_model(model, digits, epochs=1, random_state=-1)
    texts = Dataset.from_texts(["good", "bad"], [0, 1])
    with pytest.raises(InputError, match="a text dataset needs a preprocess"):
        train_model(torch.nn.Linear(64, 2), texts, epochs=1)
    three = Dataset.from_numpy(digits.images[:20], np.arange(20) % 3)
    with pytest.raises(InputError, match="lr_schedule must be"):
        train_model(build_reference_model(three, random_state=0), three, epochs=1, lr_schedule="step")
    with pytest.raises(InputError, match="the dataset has 10 classes but the model predicts 3"):
        train_model(build_reference_model(three, random_state=0), digits, epochs=1)


def test_ensemble_holds_every_sample_out_of_half_the_models(digits):
    small = digits.subset(digits.ids[:300])
    probs, in_train = train_ensemble(small, k=4, random_state=0, epochs=1, progress=False)
    assert probs.shape == (4, 300, 10) and probs.dtype == np.float32
    assert in_train.shape == (4, 300) and in_train.dtype == bool
    assert (in_train.sum(axis=0) == 2).all()
    assert (np.abs(in_train.sum(axis=1) - 150) < 40).all()
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, atol=1e-5)
    _, again = train_ensemble(small, k=4, random_state=0, epochs=1, progress=False)
    np.testing.assert_array_equal(again, in_train)


# ------------------------------------------------------------------------------------------------- weight IO
def test_save_load_round_trip_gives_identical_logits(tmp_path, digits, text_backdoor):
    image_model = build_reference_model(digits, random_state=3)
    train_model(image_model, digits.subset(digits.ids[:256]), epochs=1, progress=False)  # moves BN statistics
    text_model = build_reference_model(text_backdoor[0], random_state=3)
    for model, payload in ((image_model, digits.images[:16]), (text_model, list(text_backdoor[2].texts[:16]))):
        written = save_model(model, tmp_path / "m", card={"class_names": ["a", "b"], "random_state": 3,
                                                          "clean_accuracy": np.float32(0.5)})
        loaded, card = load_model(tmp_path / "m.safetensors")
        assert type(loaded) is type(model) and not loaded.training
        assert card == written
        assert card["architecture"] == type(model).__name__ and card["config"] == model.config
        assert card["layers"] == [n for n, _ in model.named_modules() if n]
        assert card["clean_accuracy"] == 0.5 and card["random_state"] == 3
        assert card["weights_sha256"] == hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest()
        assert card["toolkit_version"]
        model.eval()
        with torch.no_grad():
            expected = model(*_inputs(model, payload))
            got = loaded(*_inputs(loaded, payload))
        assert torch.equal(expected, got)
        assert all(p.requires_grad for p in loaded.parameters())


def _inputs(model, payload):
    x = model.preprocess(payload)
    return x if isinstance(x, tuple) else (x,)


def test_tampered_truncated_or_missing_files_are_refused(tmp_path, digits):
    model = build_reference_model(digits, random_state=0)
    save_model(model, tmp_path / "m")
    weights = tmp_path / "m.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"m\.safetensors: SHA-256 .* does not match"):
        load_model(tmp_path / "m")
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(IntegrityError, match="truncated"):
        load_model(tmp_path / "m")
    weights.unlink()
    with pytest.raises(InputError, match=r"m\.safetensors: no such weights file"):
        load_model(tmp_path / "m")
    with pytest.raises(InputError, match=r"nothing\.json: no such model card"):
        load_model(tmp_path / "nothing")

    save_model(model, tmp_path / "m")
    card = json.loads((tmp_path / "m.json").read_text())
    card["architecture"] = "os.system"
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="architecture 'os.system' is not one of the toolkit's"):
        load_model(tmp_path / "m")


def test_save_model_refuses_foreign_models_and_reserved_keys(tmp_path, digits):
    with pytest.raises(InputError, match="save_model saves the toolkit's architectures"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x")
    model = build_reference_model(digits, random_state=0)
    with pytest.raises(InputError, match=r"card keys \['config'\] are reserved"):
        save_model(model, tmp_path / "x", card={"config": {}})
    with pytest.raises(InputError, match="card must be JSON-serializable"):
        save_model(model, tmp_path / "x", card={"when": object()})
    assert not list(tmp_path.iterdir())


class _Malicious:
    """Unpickling this object opens (creates) a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    payload = {"fc.weight": torch.zeros(2, 2), "extra": _Malicious(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()
    with pytest.raises(UnsafeFileError, match=r"weights\.pt: this file needs arbitrary code execution to load") as e:
        load_state_dict_file(path)
    assert "NOT loaded" in str(e.value) and "safetensors" in str(e.value)
    assert not marker.exists()


def test_plain_state_dicts_load_safely(tmp_path, digits):
    model = build_reference_model(digits, random_state=0)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    state = load_state_dict_file(tmp_path / "plain.pt")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(InputError, match=r"entries \['state_dict', 'epoch'\] are not tensors; .* pass key="):
        load_state_dict_file(tmp_path / "ckpt.pt")
    assert load_state_dict_file(tmp_path / "ckpt.pt", key="state_dict").keys() == state.keys()

    save_file({"w": torch.ones(3)}, tmp_path / "w.safetensors")
    assert torch.equal(load_state_dict_file(tmp_path / "w.safetensors")["w"], torch.ones(3))

    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"broken\.pt: not a readable torch weights file"):
        load_state_dict_file(tmp_path / "broken.pt")
    with pytest.raises(InputError, match=r"missing\.pt: no such file"):
        load_state_dict_file(tmp_path / "missing.pt")
