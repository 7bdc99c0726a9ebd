"""Small real training problems shared by the tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lto_core.data import load_digits


def digits_mlp(seed: int = 0) -> torch.nn.Module:
    """A 64-32-10 MLP with fixed initial weights."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))


def digits_batches(steps: int, batch: int = 32, seed: int = 0):
    """``steps`` minibatches of real scikit-learn digits, in a fixed order."""
    data = load_digits()
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(data.x_train), batch)
        yield torch.from_numpy(data.x_train[idx]), torch.from_numpy(data.y_train[idx])


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> list[float]:
    """Plain cross-entropy training; returns the loss of every step."""
    losses = []
    for x, y in digits_batches(steps, seed=seed):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """All parameters as one vector (a copy)."""
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def outputs_like(inputs: dict, fill: float = np.nan) -> dict[str, np.ndarray]:
    """Output buffers of the step graph for ``inputs`` (a dict by input name), filled with ``fill``."""
    grad, coefficients = inputs["grad"], inputs["coefficients"]
    boundary, refresh = len(inputs["boundary_windows"]), len(inputs["refresh_windows"])
    shapes = {
        "update": grad.shape,
        "new_exp_avg": grad.shape,
        "new_exp_avg_sq": grad.shape,
        "consolidated_log_importance": (boundary, *grad.shape[1:]),
        "consolidated_anchor": (boundary, *grad.shape[1:]),
        "refreshed_coefficients": (refresh, *coefficients.shape[1:]),
    }
    return {name: np.full(shape, fill, np.float32) for name, shape in shapes.items()}


def frozen(value: Any) -> Any:
    """``value`` as nested tuples of plain values; tensors and arrays as (dtype, shape, bytes).

    Two values freeze equal exactly when they are byte-identical, keys and types included.
    """
    if torch.is_tensor(value):
        flat = torch.empty(value.numel(), dtype=value.dtype).copy_(value.detach().cpu().reshape(-1))
        return ("tensor", str(value.dtype), tuple(value.shape), flat.view(torch.uint8).numpy().tobytes())
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, np.ascontiguousarray(value).tobytes())
    if isinstance(value, dict):
        return ("dict", tuple((repr(k), frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(frozen(v) for v in value))
    return (type(value).__name__, repr(value))


def keras_numpy(value: Any) -> np.ndarray:
    """A Keras variable or array (torch backend) as a NumPy copy (``keras.ops.convert_to_numpy``
    warns about NumPy 2's ``copy`` keyword on every call)."""
    value = getattr(value, "value", value)
    return value.detach().cpu().numpy().copy() if torch.is_tensor(value) else np.array(value)
