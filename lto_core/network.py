"""The update network: per-token summaries -> transformer over a window's tokens -> coefficients.

Shapes: token features ``[B, W, F]`` (scale-free summaries of each token's ``C`` elements, see
:func:`lto_core.step.token_features`) are embedded and added to a projection of the window's
context, mixed across the ``W`` tokens of a window by a small pre-LN transformer encoder (no
positional table, so any tensor size works), and a head emits three raw outputs per token, which
the step turns into the coefficients of its closed form. The head starts at zero, which makes the
whole step exactly Adam. Nothing here touches single elements: the network's cost grows with the
number of tokens, ``C`` times fewer than elements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

#: Per-token input features (see :func:`lto_core.step.token_features`).
TOKEN_FEATURES: tuple[str, ...] = ("grad_rms", "adam_rms", "adam_coherence", "importance", "drift", "overlap", "curvature")
#: Per-window inputs besides the static descriptors (see :func:`lto_core.step.window_context`).
STEP_FEATURES: tuple[str, ...] = ("step_fraction", "since_boundary_fraction", "boundaries_fraction", "window_importance")
#: Raw outputs per token, in the order of :data:`lto_runtime.format.TOKEN_STATE_NAMES`.
OUTPUTS = 3


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the update network and of its token layout.

    Args:
        chunk: elements per token ``C``.
        window: tokens per window ``W``.
        model_dim: token width inside the transformer.
        heads: attention heads.
        layers: transformer encoder layers.
        ff: feed-forward width of each layer.
        ctx: number of static per-window descriptors.
        refresh_every: the network runs every this many steps of a tensor (and at each task
            boundary); the coefficients are kept per token in between.
    """

    chunk: int = 64
    window: int = 16
    model_dim: int = 16
    heads: int = 2
    layers: int = 1
    ff: int = 32
    ctx: int = 5
    refresh_every: int = 10

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


class TokenNetwork(nn.Module):
    """Maps token features and window context to raw outputs ``[B, W, 3]`` per token."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or NetworkConfig()
        self.token_proj = nn.Linear(len(TOKEN_FEATURES), config.model_dim)
        self.ctx_proj = nn.Linear(config.ctx + len(STEP_FEATURES), config.model_dim)
        self.encoder = nn.ModuleList(
            _EncoderLayer(config.model_dim, config.heads, config.ff) for _ in range(config.layers)
        )
        self.out = nn.Linear(config.model_dim, OUTPUTS)
        self.zero_head()

    def zero_head(self) -> None:
        """Zero the output layer: the step then computes exactly Adam."""
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @torch.no_grad()
    def init_importance_gate(self, strength: float, pull: float = 0.0, offset: float = 0.0) -> None:
        """Start from importance-gated Adam, optionally with EWC's pull, instead of plain Adam.

        Sets the gate slope to ``beta = strength``, the pull to ``rho = pull`` and the gate's
        offset to ``alpha = offset`` for every token (the output bias), so each element steps
        ``2 d / (1 + e^-offset (1 + Omega)^strength) + pull P (theta - theta*) / rms_window(theta)``
        (see :func:`lto_core.step.protected_update`); ``strength = 1, offset = 0`` is
        ``d / (1 + Omega/2)``, and ``strength = 0`` scales Adam's step by ``2 sigmoid(offset)``.
        Where nothing was consolidated (e.g. plain single-task training) this is still exactly
        Adam, whatever the settings. Meta-training starts here.
        """
        self.zero_head()
        self.out.bias[0] = offset
        self.out.bias[1] = strength
        self.out.bias[2] = pull

    def forward(self, tokens: torch.Tensor, count: torch.Tensor, window_ctx: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B,W,F], ``count`` [B,W] (real elements per token), ``window_ctx`` [B,K+4] -> [B,W,3]."""
        x = self.token_proj(tokens) + self.ctx_proj(window_ctx).unsqueeze(1)
        key_bias = ((count > 0).to(x.dtype) - 1.0)[:, None, None, :] * 1e9
        for layer in self.encoder:
            x = layer(x, key_bias)
        return self.out(x)
