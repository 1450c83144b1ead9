"""Colour images and the networks users bring: a ResNet-18 and a vision transformer laid out as torchvision and
timm lay them out, extraction options (precision, channels-last, compile, out-of-memory), colour triggers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import forensics
from forensics import Dataset, InputError
from forensics.activations import IMAGENET_MEAN, IMAGENET_STD, extract_activations, image_preprocess, list_layers
from forensics.models import ImageCNN, predict_proba, train_model
from forensics.redteam.image import blend_backdoor, patch_backdoor


@pytest.fixture(scope="module")
def nets(matrix):  # the matrix fixture puts benchmarks/ on sys.path
    import nets

    return nets


@pytest.fixture(scope="module")
def colour(nets):
    """The 1,797 scikit-learn digits as 32x32 colour images, each with its own colours."""
    d = load_digits()
    images = nets.colour_images((d.images * 255 / 16).astype(np.uint8), 32, random_state=0)
    return Dataset.from_numpy(images, d.target)


@pytest.fixture(scope="module")
def resnet(nets):
    torch.manual_seed(0)
    return nets.resnet18(num_classes=10)


@pytest.fixture(scope="module")
def vit(nets):
    torch.manual_seed(0)
    return nets.vit(image_size=32, patch=4, num_classes=10, dim=48, depth=4, heads=3)


PREP = image_preprocess(IMAGENET_MEAN, IMAGENET_STD)


def test_colour_derivation_keeps_shape_and_varies_colour(colour):
    assert colour.images.shape == (1797, 32, 32, 3) and colour.images.dtype == np.uint8
    corners = colour.images[:, 0, 0].astype(int)  # background colour of each image
    assert corners.std(axis=0).min() > 20  # colours differ between images, on every channel


def test_resnet_layers_are_listed_by_their_nested_names(resnet, colour):
    table = list_layers(resnet, colour, preprocess=PREP).set_index("name")
    assert table.loc["layer4", "output_shape"] == (512, 1, 1)
    assert table.loc["layer3.1.conv2", "output_shape"] == (256, 2, 2)
    assert table.loc["avgpool", "output_shape"] == (512, 1, 1)
    assert table.loc["fc:input", "default"] and table.loc["fc:input", "output_shape"] == (512,)
    assert table.loc["layer1.0.relu", "calls"] == 2  # used twice in a block: listed, not extractable


def test_resnet_pooled_maps_equal_the_penultimate_layer(resnet, colour):
    small = colour.subset(colour.ids[:40])
    act = extract_activations(resnet, small, layers=["layer4", "layer3", "fc:input"], pooling="avg",
                              preprocess=PREP, batch_size=16, progress=False)
    assert act.features["layer3"].shape == (40, 256)
    # avgpool + flatten is the mean over the map: the pooled layer4 is the fc layer's input.
    assert np.allclose(act.features["layer4"], act.features["fc:input"], atol=1e-5)
    flat = extract_activations(resnet, small, layers="layer3", preprocess=PREP, progress=False)
    assert flat.feature().shape == (40, 256 * 2 * 2)


def test_vit_class_token_and_blocks(vit, colour):
    small = colour.subset(colour.ids[:24])
    table = list_layers(vit, small, preprocess=PREP).set_index("name")
    assert table.loc["blocks.3", "output_shape"] == (65, 48)  # 64 patches and the class token
    act = extract_activations(vit, small, layers=["norm", "head:input", "blocks.3"], pooling="cls",
                              preprocess=PREP, progress=False)
    assert np.allclose(act.features["norm"], act.features["head:input"], atol=1e-6)
    mean = extract_activations(vit, small, layers="blocks.3", pooling="avg", preprocess=PREP, progress=False)
    assert not np.allclose(mean.feature(), act.features["blocks.3"])
    with pytest.raises(InputError, match="pooling='cls' takes the first token .* gave shape \\(24, 48, 8, 8\\)"):
        extract_activations(vit, small, layers="patch_embed.proj", pooling="cls", preprocess=PREP, progress=False)


def test_extraction_options_agree_with_the_plain_path(resnet, colour):
    small = colour.subset(colour.ids[:32])
    plain = extract_activations(resnet, small, preprocess=PREP, progress=False)
    last = extract_activations(resnet, small, preprocess=PREP, channels_last=True, progress=False)
    assert np.allclose(plain.feature(), last.feature(), atol=1e-4)
    assert all(p.is_contiguous() for p in resnet.parameters())  # converted back
    half = extract_activations(resnet, small, preprocess=PREP, precision="bf16", progress=False)
    assert half.feature().dtype == np.float32 and half.meta["precision"] == "bf16"
    rel = np.linalg.norm(half.feature() - plain.feature()) / np.linalg.norm(plain.feature())
    assert rel < 0.05 and (half.predictions == plain.predictions).mean() >= 0.9
    compiled = extract_activations(resnet, small, preprocess=PREP, compile="eager", progress=False)
    assert np.allclose(plain.feature(), compiled.feature(), atol=1e-5)
    with pytest.raises(InputError, match="precision must be one of \\['fp32', 'bf16', 'fp16'\\]; got 'int8'"):
        extract_activations(resnet, small, preprocess=PREP, precision="int8", progress=False)
    with pytest.raises(InputError, match="precision='fp16' needs a GPU"):
        extract_activations(resnet, small, preprocess=PREP, precision="fp16", progress=False)
    with pytest.raises(InputError, match="torch.compile\\(backend='no-such-backend'\\) failed"):
        extract_activations(resnet, small, preprocess=PREP, compile="no-such-backend", progress=False)


def test_a_batch_that_runs_out_of_memory_is_halved(colour):
    small = colour.subset(colour.ids[:50])
    model = ImageCNN(3, 10, (32, 32))

    class Tight(torch.nn.Module):  # a device that holds 12 images at a time
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            if len(x) > 12:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.net(x)

    direct = extract_activations(model, small, layers="fc1", progress=False)
    halved = extract_activations(Tight(), small, layers="net.fc1", batch_size=64, progress=False)
    assert halved.meta["batch_size"] == 8  # 64 -> 32 -> 16 -> 8
    assert np.allclose(direct.feature(), halved.feature(), atol=1e-6)
    assert np.array_equal(direct.predictions, halved.predictions)

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):  # not mistaken for a lack of memory
        extract_activations(torch.nn.Sequential(Broken(), torch.nn.Linear(2, 2)), small, progress=False)


def test_normalization_and_channel_mismatch(resnet, colour):
    x = PREP(colour.images[:2])
    expected = (colour.images[:2, 0, 0, 0] / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert np.allclose(x[:, 0, 0, 0].numpy(), expected, atol=1e-6)
    assert "mean=[0.485" in PREP.cache_key and image_preprocess().cache_key == "image_preprocess"
    gray = Dataset.from_numpy(colour.images[:8].mean(axis=3).astype(np.uint8), colour.labels[:8])
    with pytest.raises(InputError, match="the images have 1 channel\\(s\\) but the model takes 3"):
        extract_activations(resnet, gray, progress=False)
    with pytest.raises(InputError, match="the images have 1 channel\\(s\\) but the model takes 3"):
        list_layers(resnet, gray)
    with pytest.raises(InputError, match="the images have 1 channel\\(s\\) but mean and std give 3"):
        extract_activations(ImageCNN(1, 10, (32, 32)), gray, preprocess=PREP, progress=False)
    with pytest.raises(InputError, match="give both mean and std"):
        image_preprocess(IMAGENET_MEAN)
    with pytest.raises(InputError, match="std positive"):
        image_preprocess((0.5,), (0.0,))


@pytest.mark.slow
def test_torchvision_and_timm_layouts_train_and_investigate(resnet, vit, colour, nets):
    """A few training steps each, then a whole investigation with the default layer, on colour images."""
    part = colour.subset(colour.ids[:400])
    for model, options in ((nets.resnet18(num_classes=10), {"precision": "bf16", "channels_last": True}),
                           (vit, {"layer": "blocks.3", "pooling": "cls"})):
        history = train_model(model, part, epochs=1, batch_size=50, lr=1e-3, preprocess=PREP, progress=False)
        assert np.isfinite(history["loss"]).all()
        inv = forensics.investigate(part, model, preprocess=PREP, progress=False, **options)
        assert inv.signals["suspicion"].notna().all() and len(inv.signals) == 400
        meta = inv.params["activation_meta"]
        assert meta.get("precision", "fp32") == options.get("precision", "fp32")
        assert meta["layers"] == str([options.get("layer", "fc:input")]) and meta["pooling"] == options.get(
            "pooling", "flatten")


@pytest.mark.slow
def test_colour_patch_backdoor_is_shown_and_confirmed(colour):
    """A magenta 4x4 checkerboard on 5% of the colour images, labelled 0: the trigger is reconstructed in colour,
    confirmed on the model, and its carriers ranked first."""
    attack = patch_backdoor(colour, target=0, rate=0.05, pattern="checkerboard", size=4, value=(255, 0, 255),
                            random_state=0)
    ds, poison = attack.dataset, attack.truth.index[attack.truth["is_poison"]]
    model = ImageCNN(3, 10, (32, 32))
    torch.manual_seed(0)
    train_model(model, ds, epochs=6, batch_size=64, lr=1e-3, random_state=0, progress=False)
    others = colour.images[colour.labels != 0][:300]
    assert (predict_proba(model, attack.trigger.apply(others)).argmax(1) == 0).mean() >= 0.9
    inv = forensics.investigate(ds, model, progress=False)
    found = inv.find_triggers()
    best = found.iloc[0]
    assert best["verdict"] == "confirmed" and best["box"] == (28, 28, 4, 4)
    pattern = inv.trigger_arrays[best["trigger_id"]]
    assert pattern.shape == (4, 4, 3)
    assert (pattern[0, 0] == (255, 0, 255)).all() and (pattern[0, 1] == (0, 0, 0)).all()  # magenta, checkered
    top = inv.signals["suspicion"].sort_values(ascending=False).index[: 2 * len(poison)]
    assert np.isin(poison, top).mean() >= 0.95


def test_colour_blend_is_planted_on_every_channel(colour):
    attack = blend_backdoor(colour, target=0, rate=0.05, alpha=0.1, random_state=0)
    poisoned = attack.truth.index[attack.truth["is_poison"]]
    i = colour.positions(poisoned[:1])[0]
    diff = attack.dataset.images[i].astype(int) - colour.images[i].astype(int)
    assert diff.shape == (32, 32, 3) and (np.abs(diff).reshape(-1, 3).max(axis=0) > 10).all()


def test_from_torch_reads_a_dataloader_in_order_and_refuses_a_shuffled_one(colour):
    from PIL import Image
    from torch.utils.data import DataLoader, TensorDataset

    images = colour.images[:10]
    chw = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 255  # what ToTensor() gives
    loader = DataLoader(TensorDataset(chw, torch.from_numpy(colour.labels[:10].copy())), batch_size=4)
    ds = Dataset.from_torch(loader, ids=[f"img-{i}" for i in range(10)])
    assert ds.images.shape == (10, 32, 32, 3) and np.array_equal(ds.images, images)
    assert ds.labels.tolist() == colour.labels[:10].tolist()
    shuffled = DataLoader(TensorDataset(chw, torch.from_numpy(colour.labels[:10].copy())), batch_size=4, shuffle=True)
    with pytest.raises(InputError, match="random order \\(RandomSampler\\).*shuffle=False"):
        Dataset.from_torch(shuffled)

    class Photos(torch.utils.data.Dataset):  # a torchvision dataset without a transform: PIL images
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return Image.fromarray(images[i]), int(colour.labels[i])

    assert np.array_equal(Dataset.from_torch(Photos()).images, images[:3])
    normalized = DataLoader(TensorDataset((chw - 0.5) / 0.25, torch.zeros(10, dtype=torch.long)), batch_size=5)
    with pytest.raises(InputError, match="float pixels must lie in \\[0, 1\\]"):
        Dataset.from_torch(normalized)


def test_image_folder_of_mixed_sizes_is_centre_cropped(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = (255, 0, 0)  # a red centre between black sides
    Image.fromarray(wide).save(tmp_path / "cat" / "wide.png")
    Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(tmp_path / "dog" / "square.png")
    ds = Dataset.from_image_folder(tmp_path, size=(10, 10), fit="crop")
    assert ds.images.shape == (2, 10, 10, 3)
    cropped = ds.images[list(ds.ids).index("cat/wide.png")]
    assert (cropped[..., 0] > 200).all() and (cropped[..., 1] < 50).all()  # only the red centre is left
    stretched = Dataset.from_image_folder(tmp_path, size=(10, 10))
    assert (stretched.images[list(stretched.ids).index("cat/wide.png")][:, 0] == 0).all()  # the black side stays
    with pytest.raises(InputError, match="fit must be 'stretch' or 'crop'; got 'pad'"):
        Dataset.from_image_folder(tmp_path, size=(10, 10), fit="pad")
