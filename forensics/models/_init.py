"""Parameter initialisation from an explicit generator, shared by the reference models."""

from __future__ import annotations

import math

import torch
from torch import nn


def reset_affine(layer: nn.Conv2d | nn.Linear, generator: torch.Generator | None) -> None:
    """PyTorch's default initialisation of a convolution or linear layer, drawn from ``generator``."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if layer.bias is not None:
        fan_in = layer.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
