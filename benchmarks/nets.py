"""Stand-ins for the networks users bring: a ResNet-18 with torchvision's module layout and a small vision
transformer with timm's, written out in plain torch.

torchvision and timm cannot be installed beside the CPU build of torch on the test machines (their compiled
operators do not load), so the benchmarks and tests build these twins instead: the same module names
(``layer4``, ``avgpool``, ``fc``; ``patch_embed.proj``, ``blocks.11``, ``norm``, ``head``), the same shapes and
the same forward, which is all the toolkit sees of a model. ``resnet18(num_classes=10)`` mirrors
``torchvision.models.resnet18(num_classes=10)``; ``vit(depth=12, dim=192, heads=3)`` mirrors timm's
``vit_tiny_patch16_224`` at a chosen image and patch size.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 1000,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 as ``torchvision.models.resnet18`` builds it (11.2M parameters at 1000 classes)."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


class PatchEmbed(nn.Module):
    def __init__(self, image_size: int, patch: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.num_patches = (image_size // patch) ** 2
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (batch, patches, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """timm's ``VisionTransformer`` with class-token pooling: ``head(norm(blocks(tokens))[:, 0])``."""

    def __init__(self, image_size: int = 32, patch: int = 4, in_channels: int = 3, num_classes: int = 10,
                 dim: int = 192, depth: int = 12, heads: int = 3) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(image_size, patch, in_channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(image_size: int = 32, patch: int = 4, num_classes: int = 10, dim: int = 192, depth: int = 12,
        heads: int = 3) -> VisionTransformer:
    return VisionTransformer(image_size, patch, 3, num_classes, dim, depth, heads)


def wordpiece_tokenizer(texts, vocab_size: int = 2000):
    """A BERT-style WordPiece tokenizer (lower-cased, [CLS] text [SEP]) whose vocabulary is made from ``texts``
    deterministically: the special tokens, every character alone and as a ``##`` continuation, then the most
    frequent words (ties in alphabetical order) up to ``vocab_size``. Words outside it split into pieces, as
    with a pretrained tokenizer. Needs ``transformers`` (the ``text`` extra)."""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    split = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for t in texts:
        words.update(w for w, _ in split.pre_tokenize_str(normalizer.normalize_str(t)))
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for w in words for c in w})
    vocab = special + chars + ["##" + c for c in chars]
    ranked = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    vocab += ranked[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = split
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def tiny_bert(vocab_size: int, num_labels: int = 2, *, hidden: int = 64, layers: int = 2, heads: int = 2,
              max_positions: int = 64, seed: int = 0):
    """A small ``BertForSequenceClassification`` built from a config (random weights, seeded)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, max_position_embeddings=max_positions, num_labels=num_labels))


def colour_images(gray, size: int = 32, *, random_state: int = 0):
    """Colour photographs' stand-in, derived from grayscale ones reproducibly: each image resized to
    ``size`` x ``size`` (bilinear) and painted with its own random foreground and background colours
    (``pixel = background * (1 - g) + foreground * g`` for the gray level ``g`` in [0, 1]), so that colour varies
    as in photographs but says nothing of the class.

    Parameters
    ----------
    gray : uint8 array (n, h, w)

    Returns
    -------
    uint8 array (n, size, size, 3)
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(random_state)
    n = len(gray)
    g = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in gray])
    g = g.astype(np.float32)[..., None] / 255.0
    background = rng.uniform(0, 110, size=(n, 1, 1, 3)).astype(np.float32)
    foreground = rng.uniform(140, 255, size=(n, 1, 1, 3)).astype(np.float32)
    return np.clip(np.rint(background * (1 - g) + foreground * g), 0, 255).astype(np.uint8)
