"""Small classifiers for streams (an MLP, a CNN and a tiny transformer, for images or vectors) and
a GPT-style decoder-only language model for the knowledge benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    cls = {"mlp": MLP, "cnn": CNN, "transformer": TinyTransformer}[arch]
    # Seeded on a fork of the CPU generator, so the caller's random stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return cls(tuple(input_shape), outputs, **sizes)


@dataclass(frozen=True)
class GPTSize:
    """Width, depth and attention heads of a :class:`GPT` (``dim`` divisible by ``heads``)."""

    dim: int
    layers: int
    heads: int


#: ``lto bench knowledge --size``: about 0.03M, 0.1M, 3.2M and 101M parameters without the
#: embedding (``12 * layers * dim^2``); ``large`` is for a GPU.
GPT_SIZES = {
    "tiny": GPTSize(dim=32, layers=2, heads=2),
    "small": GPTSize(dim=64, layers=2, heads=4),
    "medium": GPTSize(dim=256, layers=4, heads=8),
    "large": GPTSize(dim=1024, layers=8, heads=16),
}


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` attends to positions ``<= t`` only:
    ``softmax(Q K^T / sqrt(d_head) + M) V`` per head, ``M`` zero on and below the diagonal and
    ``-inf`` above it (Vaswani et al., 2017)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N, L, dim]`` -> ``[N, L, dim]``."""
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(attended.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` with a 4x GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N, L, dim]`` -> ``[N, L, dim]``."""
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """A decoder-only transformer language model in the GPT-2 layout (Radford et al., 2019): token
    plus learned position embeddings, pre-norm blocks of causal self-attention and MLP, a final
    LayerNorm, and next-token logits through the token embedding (tied weights, Press & Wolf, 2017).

    Args:
        vocab: vocabulary size.
        context: the longest sequence it reads (learned positions).
        dim: width.
        layers: transformer blocks.
        heads: attention heads (``dim`` must be divisible by it).
    """

    def __init__(self, vocab: int, context: int, dim: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}; pick heads that divide it")
        self.context = context
        self.token = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        # GPT-2's initialization: N(0, 0.02) weights, zero biases.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[N, L]`` (int64, ``L <= context``) -> next-token logits ``[N, L, vocab]``."""
        length = tokens.shape[1]
        if length > self.context:
            raise ValueError(f"sequence of {length} tokens is longer than the model's context of {self.context}")
        x = self.token(tokens) + self.position(torch.arange(length, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.token.weight.T


def make_gpt(size: str, vocab: int, context: int, seed: int, device: str | torch.device = "cpu") -> GPT:
    """A freshly initialized :class:`GPT` of a named ``size`` (:data:`GPT_SIZES`) on ``device``;
    the same ``seed`` gives the same weights."""
    if size not in GPT_SIZES:
        raise ValueError(f"unknown GPT size {size!r}; choose one of {tuple(GPT_SIZES)}")
    shape = GPT_SIZES[size]
    with torch.random.fork_rng(devices=[]):  # as make_model: the caller's random stream is left as it was
        torch.default_generator.manual_seed(seed)
        model = GPT(vocab, context, shape.dim, shape.layers, shape.heads)
    return model.to(device)
