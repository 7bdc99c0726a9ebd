"""Continual-learning metrics (Lopez-Paz & Ranzato, "Gradient Episodic Memory", NeurIPS 2017).

``R[i][j]`` is the test accuracy on task ``j`` after training task ``i`` (``T x T``), ``b[j]`` the
accuracy on task ``j`` at initialization.
"""

from __future__ import annotations

import numpy as np


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise ValueError(f"accuracy matrix must be square T x T, got shape {R.shape}")
    return R


def average_accuracy(R) -> float:
    """ACC = (1/T) * sum_j R[T][j]: mean accuracy over all tasks after the last one."""
    return float(_matrix(R)[-1].mean())


def backward_transfer(R) -> float:
    """BWT = 1/(T-1) * sum_{j<T} (R[T][j] - R[j][j]): negative means forgetting. 0 for T = 1."""
    R = _matrix(R)
    t = len(R)
    return float(np.mean([R[-1, j] - R[j, j] for j in range(t - 1)])) if t > 1 else 0.0


def forward_transfer(R, b) -> float:
    """FWT = 1/(T-1) * sum_{j>1} (R[j-1][j] - b[j]): accuracy on a task before training on it,
    above its accuracy at initialization. 0 for T = 1."""
    R = _matrix(R)
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (len(R),):
        raise ValueError(f"b must have one entry per task ({len(R)}), got shape {b.shape}")
    t = len(R)
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, t)])) if t > 1 else 0.0
