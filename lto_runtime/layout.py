"""Token layout: how a list of tensors becomes ``[B, W, C]`` windows and back.

Each tensor is flattened (C order) and zero-padded to a multiple of ``W*C`` elements, then cut
into windows of ``W`` tokens of ``C`` elements. Windows never mix tensors. The windows of all
tensors are numbered consecutively, tensor by tensor; a *chunk* is a set of at most
``max_batch_windows`` windows, the unit of one session call, so memory stays bounded whatever the
model size (see :meth:`TokenLayout.chunks`).

This module is pure NumPy and is shared by the runtime and by meta-training, so the network
sees the same tokens, masks and descriptors in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Static per-window descriptors of the window's tensor, computed once from its shape.
CTX_NAMES: tuple[str, ...] = ("log_numel", "ndim", "is_vector", "is_matrix", "is_conv")

#: ``log(numel)`` is divided by this so that a 1e8-element tensor gives about 1.
_LOG_NUMEL_SCALE = math.log(1e8)


def tensor_context(shape: tuple[int, ...]) -> np.ndarray:
    """Descriptors of one tensor from its shape alone.

    ``[log(numel)/log(1e8), ndim/4, ndim<=1, ndim==2, ndim>=3]``: size, rank and role (a bias or
    norm vector, a dense matrix, a convolution kernel). Nothing here depends on the values.
    """
    numel = max(int(np.prod(shape, dtype=np.int64)), 1)
    ndim = len(shape)
    return np.array(
        [
            math.log(numel) / _LOG_NUMEL_SCALE,
            ndim / 4.0,
            float(ndim <= 1),
            float(ndim == 2),
            float(ndim >= 3),
        ],
        dtype=np.float32,
    )


@dataclass(frozen=True)
class Piece:
    """A contiguous run of one tensor's flat elements inside a chunk.

    Elements ``[start, stop)`` of tensor ``tensor`` sit at flat offset ``offset`` of the chunk
    buffer (the chunk viewed as one flat array of ``windows*W*C`` elements).
    """

    tensor: int
    start: int
    stop: int
    offset: int


@dataclass(frozen=True)
class Chunk:
    """A set of windows stepped by one session call.

    Either the whole windows of one tensor (a single piece, no padding: the tensor's memory can be
    handed to the step as it is, see :attr:`direct`) or the last, partly padded windows of several
    tensors gathered into one call.
    """

    windows: int
    pieces: tuple[Piece, ...]
    #: ``(offset, length)`` runs of padding inside the chunk's flat buffer.
    padding: tuple[tuple[int, int], ...]
    #: Index of the tensor that owns each window of the chunk.
    window_tensor: np.ndarray = field(repr=False)
    #: Position of each of the chunk's windows in the layout's window sequence (for its descriptors).
    window_ids: np.ndarray = field(repr=False)

    @property
    def direct(self) -> bool:
        """Whole windows of one tensor: its flat elements ``[start, stop)`` are the chunk's buffer."""
        return len(self.pieces) == 1 and not self.padding


@dataclass(frozen=True)
class TokenLayout:
    """Where each tensor's elements sit in the window sequence.

    Args:
        shapes: shape of each tensor (0-d and empty tensors allowed).
        window: tokens per window ``W``.
        chunk: elements per token ``C``.
    """

    shapes: tuple[tuple[int, ...], ...]
    window: int
    chunk: int

    def __post_init__(self) -> None:
        if self.window < 1 or self.chunk < 1:
            raise ValueError(f"window and chunk must be >= 1, got window={self.window}, chunk={self.chunk}")
        object.__setattr__(self, "shapes", tuple(tuple(int(d) for d in s) for s in self.shapes))

    @property
    def window_elements(self) -> int:
        """Elements per window, ``W*C``."""
        return self.window * self.chunk

    @property
    def numels(self) -> tuple[int, ...]:
        """Element count of each tensor (1 for a 0-d tensor, 0 for an empty one)."""
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def window_counts(self) -> np.ndarray:
        """Windows of each tensor: ``ceil(numel / (W*C))``; an empty tensor has none."""
        per = self.window_elements
        return np.array([-(-n // per) for n in self.numels], dtype=np.int64)

    @property
    def window_offsets(self) -> np.ndarray:
        """Index of each tensor's first window in the global window sequence."""
        counts = self.window_counts
        return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else counts

    @property
    def total_windows(self) -> int:
        """Windows of all tensors together."""
        return int(self.window_counts.sum())

    def window_tensor(self) -> np.ndarray:
        """Owning tensor index of every window, ``[total_windows]``."""
        return np.repeat(np.arange(len(self.shapes)), self.window_counts)

    def context(self) -> np.ndarray:
        """Per-window descriptors ``[total_windows, len(CTX_NAMES)]`` (see :func:`tensor_context`)."""
        rows = np.stack([tensor_context(s) for s in self.shapes]) if self.shapes else np.zeros((0, len(CTX_NAMES)), np.float32)
        return np.repeat(rows, self.window_counts, axis=0).astype(np.float32)

    def chunks(self, max_batch_windows: int) -> tuple[Chunk, ...]:
        """Group the windows into calls of at most ``max_batch_windows`` windows.

        Each tensor's whole windows go in calls of their own (:attr:`Chunk.direct`), so the step can
        read the tensor's memory without copying it into window buffers; the last, partly padded
        window of each tensor (and tensors smaller than one window) are gathered into shared calls.
        """
        if max_batch_windows < 1:
            raise ValueError(f"max_batch_windows must be >= 1, got {max_batch_windows}")
        per = self.window_elements
        offsets, numels = self.window_offsets, self.numels
        out = []
        tails = []
        for t, numel in enumerate(numels):
            whole = numel // per
            for first in range(0, whole, max_batch_windows):
                count = min(max_batch_windows, whole - first)
                ids = np.arange(offsets[t] + first, offsets[t] + first + count)
                piece = Piece(t, first * per, (first + count) * per, 0)
                out.append(Chunk(count, (piece,), (), np.full(count, t), ids))
            if numel % per:
                tails.append(t)
        for first in range(0, len(tails), max_batch_windows):
            group = tails[first : first + max_batch_windows]
            pieces, padding = [], []
            for slot, t in enumerate(group):
                start = numels[t] // per * per
                pieces.append(Piece(t, start, numels[t], slot * per))
                padding.append((slot * per + numels[t] - start, per - (numels[t] - start)))
            ids = np.array([offsets[t] + numels[t] // per for t in group])
            out.append(Chunk(len(group), tuple(pieces), tuple(padding), np.array(group), ids))
        return tuple(out)
