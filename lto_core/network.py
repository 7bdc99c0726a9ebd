"""The update network: per-element features -> per-token transformer -> per-element head.

Shapes: elements ``[B, F, W, C]`` (features first) are embedded one by one, mean-pooled over the ``C`` elements of
each token, mixed across the ``W`` tokens of a window by a small pre-LN transformer encoder (no
positional table, so any tensor size works and cost stays linear in the parameter count), then
broadcast back to the elements, where a per-element head emits three raw outputs ``(s, g, d)``.
The head's output layer starts at zero, which makes the whole step exactly Adam.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

#: Per-element input features (see :func:`lto_core.step.element_features`).
ELEMENT_FEATURES: tuple[str, ...] = ("grad", "adam_dir", "importance", "drift", "param", "curvature")
#: Per-window inputs besides the static descriptors (see :func:`lto_core.step.window_context`).
STEP_FEATURES: tuple[str, ...] = ("step_fraction", "since_boundary_fraction")


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the update network and of its token layout.

    Args:
        chunk: elements per token ``C``.
        window: tokens per window ``W``.
        embed: per-element embedding width.
        hidden: per-element head width.
        model_dim: token width inside the transformer.
        heads: attention heads.
        layers: transformer encoder layers.
        ff: feed-forward width of each layer.
        ctx: number of static per-window descriptors.
        scale_a: ``a`` in ``exp(a*tanh(s))``, the largest log-factor of the step size.
        direction_b: ``b`` in ``b*tanh(d)``, the largest additive direction, in units of Adam's step.
    """

    chunk: int = 64
    window: int = 16
    embed: int = 8
    hidden: int = 8
    model_dim: int = 16
    heads: int = 2
    layers: int = 1
    ff: int = 32
    ctx: int = 5
    scale_a: float = 1.0
    direction_b: float = 0.1

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


class _EncoderLayer(nn.Module):
    """Pre-LN transformer encoder layer written with plain ops, so it exports cleanly to ONNX."""

    def __init__(self, dim: int, heads: int, ff: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model_dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ff)
        self.ff2 = nn.Linear(ff, dim)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """``x`` [B, W, D]; ``key_bias`` [B, 1, 1, W] (0 for real tokens, -1e9 for padding)."""
        b, w, d = x.shape
        dh = d // self.heads
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q = q.reshape(b, w, self.heads, dh).transpose(1, 2)
        k = k.reshape(b, w, self.heads, dh).transpose(1, 2)
        v = v.reshape(b, w, self.heads, dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + key_bias
        mixed = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, w, d)
        x = x + self.proj(mixed)
        return x + self.ff2(torch.relu(self.ff1(self.norm2(x))))


class UpdateNetwork(nn.Module):
    """Maps per-element features and per-window context to raw ``(s, g, d)`` per element."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or NetworkConfig()
        nf = len(ELEMENT_FEATURES)
        self.embed = nn.Linear(nf, config.embed)
        self.pool_proj = nn.Linear(config.embed, config.model_dim)
        self.ctx_proj = nn.Linear(config.ctx + len(STEP_FEATURES), config.model_dim)
        self.encoder = nn.ModuleList(
            _EncoderLayer(config.model_dim, config.heads, config.ff) for _ in range(config.layers)
        )
        self.token_to_head = nn.Linear(config.model_dim, config.hidden)
        self.element_to_head = nn.Linear(config.embed, config.hidden, bias=False)
        self.out = nn.Linear(config.hidden, 3)
        self.zero_head()

    def zero_head(self) -> None:
        """Zero the output layer: the step then computes exactly Adam."""
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @torch.no_grad()
    def init_importance_gate(self, strength: float) -> None:
        """Start from importance-gated Adam instead of plain Adam.

        Routes the ``log(1 + Omega)`` feature through one embedding unit and one head unit to the
        gate output, ``g = -strength * log(1 + Omega)``, so the step becomes
        ``adam_dir * 2*sigmoid(g) = adam_dir * 2 / (1 + (1 + Omega)^strength)``; ``strength = 1``
        is ``adam_dir / (1 + Omega/2)``. Where nothing was consolidated (``Omega = 0``, e.g. plain
        single-task training) this is still exactly Adam. Meta-training starts from here.
        """
        self.zero_head()
        source = ELEMENT_FEATURES.index("importance")
        self.embed.weight[0].zero_()
        self.embed.weight[0, source] = 1.0
        self.embed.bias[0] = 0.0
        self.element_to_head.weight[0].zero_()
        self.element_to_head.weight[0, 0] = 1.0
        self.token_to_head.weight[0].zero_()
        self.token_to_head.bias[0] = 0.0
        self.out.weight[1, 0] = -strength

    def forward(self, features: torch.Tensor, mask: torch.Tensor, window_ctx: torch.Tensor) -> torch.Tensor:
        """``features`` [B,F,W,C], ``mask`` [B,W,C], ``window_ctx`` [B,K+2] -> raw outputs [B,3,W,C].

        Per-element layers are applied channel-first, ``y = W x + b`` on ``[B, channels, W*C]``,
        so every broadcast runs along the long element axis: in onnxruntime's CPU kernels,
        channel-last ``[..., C, 8] + [8]`` broadcasts cost several times the same arithmetic.
        """
        b, f, w, c = features.shape
        flat_mask = mask.reshape(b, 1, w * c)
        elem = _channel_linear(self.embed, features.reshape(b, f, w * c)).relu() * flat_mask
        count = mask.sum(dim=-1)
        pooled = elem.reshape(b, -1, w, c).sum(dim=-1).transpose(1, 2) / count.clamp(min=1.0).unsqueeze(-1)
        tokens = self.pool_proj(pooled) + self.ctx_proj(window_ctx).unsqueeze(1)
        key_bias = ((count > 0).to(tokens.dtype) - 1.0) * 1e9
        key_bias = key_bias[:, None, None, :]
        for layer in self.encoder:
            tokens = layer(tokens, key_bias)
        token_bias = self.token_to_head(tokens).transpose(1, 2).unsqueeze(-1)
        hidden = (_channel_linear(self.element_to_head, elem).reshape(b, -1, w, c) + token_bias).relu()
        return _channel_linear(self.out, hidden.reshape(b, -1, w * c)).reshape(b, -1, w, c)


def _channel_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer`` applied to the channel axis of ``x`` ``[B, in, L] -> [B, out, L]``: ``W x + b``
    (a width-1 convolution, which both torch and onnxruntime run as one fused kernel)."""
    return nn.functional.conv1d(x, layer.weight.unsqueeze(-1), layer.bias)
