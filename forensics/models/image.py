"""A small convolutional reference model for uint8 images (grayscale or RGB)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .._validate import check_int
from ..errors import InputError
from ._init import reset_affine


class ImageCNN(nn.Module):
    """Two convolution blocks and two fully connected layers, with named layers for forward hooks.

    Layers, in order: ``conv1`` -> ``bn1`` -> ``relu1`` -> ``pool1`` -> ``conv2`` -> ``bn2`` -> ``relu2`` ->
    ``pool2`` -> ``flatten`` -> ``fc1`` (the 128-d penultimate representation, before its ReLU) -> ``relu3`` ->
    ``head`` (the logits). Each pooling halves the height and width (rounding down). Batch normalisation
    makes a few epochs enough; in evaluation mode it uses the running statistics, so a sample's output does not
    depend on the rest of its batch.

    Parameters
    ----------
    in_channels : {1, 3}
        1 for grayscale images of shape (h, w), 3 for RGB images of shape (h, w, 3).
    n_classes : int
        Number of output classes (at least 2).
    image_size : (int, int)
        Height and width of the input images, each at least 4.
    channels : (int, int)
        Output channels of ``conv1`` and ``conv2``.
    hidden : int
        Width of ``fc1``.

    Attributes
    ----------
    config : dict
        JSON-serializable constructor arguments: ``ImageCNN(**model.config)`` rebuilds the architecture.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        image_size: tuple[int, int] | list[int] = (28, 28),
        *,
        channels: tuple[int, int] | list[int] = (32, 64),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise InputError(f"in_channels must be 1 (grayscale) or 3 (RGB); got {in_channels!r}")
        check_int(n_classes, "n_classes", low=2)
        if len(image_size) != 2:
            raise InputError(f"image_size must be (height, width); got {image_size!r}")
        h, w = (check_int(s, "image_size", low=4) for s in image_size)
        if len(channels) != 2:
            raise InputError(f"channels must be two integers (conv1, conv2); got {channels!r}")
        c1, c2 = (check_int(c, "channels", low=1) for c in channels)
        check_int(hidden, "hidden", low=1)
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "n_classes": int(n_classes),
            "image_size": [h, w],
            "channels": [c1, c2],
            "hidden": int(hidden),
        }
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * (h // 4) * (w // 4), hidden)
        self.relu3 = nn.ReLU()
        self.head = nn.Linear(hidden, n_classes)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw fresh weights (PyTorch's default scheme) from ``generator``, or from torch's global one."""
        for layer in (self.conv1, self.conv2, self.fc1, self.head):
            reset_affine(layer, generator)
        for bn in (self.bn1, self.bn2):
            bn.reset_parameters()  # ones, zeros and fresh running statistics: nothing random

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, n_classes) for images of shape (batch, channels, height, width) in [0, 1]."""
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.head(self.relu3(self.fc1(self.flatten(x))))

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """Model input from uint8 images.

        Parameters
        ----------
        images : ndarray of uint8, shape (batch, h, w) or (batch, h, w, c)
            Grayscale images may also come as (batch, h, w, 1).

        Returns
        -------
        Tensor of float32, shape (batch, c, h, w)
            Pixels scaled to [0, 1].
        """
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise InputError(f"images must be uint8 (0-255); got dtype {images.dtype}")
        given = images.shape
        if images.ndim == 3:
            images = images[..., None]
        h, w = self.config["image_size"]
        c = self.config["in_channels"]
        if images.ndim != 4 or images.shape[1:] != (h, w, c):
            want = f"(batch, {h}, {w})" if c == 1 else f"(batch, {h}, {w}, {c})"
            raise InputError(f"images must have shape {want} for this model; got {given}")
        # astype copies into a writable float array (dataset arrays are read-only) before the layout change.
        x = torch.from_numpy(images.astype(np.float32)).mul_(1.0 / 255.0)
        return x.permute(0, 3, 1, 2).contiguous()


