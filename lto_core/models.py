"""Small classifiers for streams: an MLP, a CNN and a tiny transformer, for images or vectors."""

from __future__ import annotations

import math

import torch
from torch import nn

#: Names :func:`make_model` accepts.
ARCHITECTURES = ("mlp", "cnn", "transformer")


class MLP(nn.Module):
    """Flatten, then ``depth`` hidden ReLU layers of ``width`` units, then a linear head."""

    def __init__(self, input_shape: tuple[int, ...], outputs: int, width: int = 64, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N, *input_shape]`` -> logits ``[N, outputs]``."""
        return self.net(x)


class CNN(nn.Module):
    """Two 3x3 convolutions (1-D for vector inputs) with ReLU and pooling, then a linear head."""

    def __init__(self, input_shape: tuple[int, ...], outputs: int, channels: int = 16) -> None:
        super().__init__()
        two_d = len(input_shape) == 2
        conv, pool = (nn.Conv2d, nn.AdaptiveAvgPool2d) if two_d else (nn.Conv1d, nn.AdaptiveAvgPool1d)
        self.image = two_d
        self.features = nn.Sequential(
            conv(1, channels, 3, padding=1), nn.ReLU(), conv(channels, channels, 3, padding=1), nn.ReLU(), pool(4)
        )
        self.head = nn.Linear(channels * (16 if two_d else 4), outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N, H, W]`` or ``[N, D]`` -> logits."""
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


class TinyTransformer(nn.Module):
    """Rows of an image (or 8-sample pieces of a vector) as tokens; one encoder layer; mean-pool."""

    def __init__(self, input_shape: tuple[int, ...], outputs: int, dim: int = 32, piece: int = 8) -> None:
        super().__init__()
        self.token_size = input_shape[-1] if len(input_shape) == 2 else piece
        tokens = math.prod(input_shape) // self.token_size
        if tokens * self.token_size != math.prod(input_shape):
            raise ValueError(f"input of shape {input_shape} does not cut into tokens of {self.token_size}")
        self.embed = nn.Linear(self.token_size, dim)
        self.position = nn.Parameter(torch.zeros(tokens, dim))
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N, *input_shape]`` -> logits."""
        tokens = self.embed(x.reshape(len(x), -1, self.token_size)) + self.position
        return self.head(self.norm(self.encoder(tokens)).mean(dim=1))


def make_model(arch: str, input_shape: tuple[int, ...], outputs: int, seed: int, **sizes) -> nn.Module:
    """A freshly initialized classifier; the same ``seed`` gives the same weights."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    torch.manual_seed(seed)
    cls = {"mlp": MLP, "cnn": CNN, "transformer": TinyTransformer}[arch]
    return cls(tuple(input_shape), outputs, **sizes)
