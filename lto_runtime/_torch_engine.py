"""The engine over torch tensors, for the front ends that hold them (``lto_adapters.torch``, the
Keras adapter on its torch backend, ``lto validate``).

Private, and the one module of ``lto_runtime`` that imports torch: importing ``lto_runtime`` does
not import it, only the front ends that already run on torch do.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import torch

from lto_runtime.engine import StepEngine, StepFunction
from lto_runtime.providers import CUDA
from lto_runtime.session import OptimizerSession


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds and steps: a DTensor's local shard (FSDP2's
    sharded parameters and their gradients; it shares the DTensor's storage), else ``tensor``."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # imported by whoever made a DTensor
    if dtensor is not None and isinstance(tensor, dtensor.DTensor):
        return tensor.to_local()
    return tensor


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float32 CPU NumPy view of ``tensor`` (a copy only when dtype or device differ)."""
    tensor = tensor.detach()
    if tensor.dtype != torch.float32:
        tensor = tensor.float()
    return tensor.cpu().numpy()


def _flat_alias(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s elements as a detached 1-D tensor that is not a view (a copy only where
    ``tensor`` is not contiguous); it shares ``tensor``'s memory and version counter.

    ``torch.compile`` guards on the base of a view passed to it: windows sliced from tensors of
    different ranks would each compile the step anew. Sliced from this, they share one base rank.
    """
    return tensor.reshape(-1).detach()


def _pair_check(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A float32 number that is finite only if every element of ``grad`` and ``param`` is (finite
    when they are, unless it overflows): ``sum(g * theta)`` in one pass for float32, else the sum of
    each's sum."""
    if grad.dtype == param.dtype == torch.float32:
        return torch.dot(grad.reshape(-1), param.reshape(-1))
    return grad.sum(dtype=torch.float32) + param.sum(dtype=torch.float32)


class TorchBuffers:
    """:class:`~lto_runtime.Buffers` as float32 torch tensors on ``device``: a device-resident engine.

    onnxruntime reads and writes these tensors in place through their ``data_ptr()``.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A new zero-filled float32 tensor on the device."""
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def upload(self, host: np.ndarray) -> torch.Tensor:
        """``host`` as a contiguous float32 tensor on the device (sharing ``host``'s memory on the
        CPU when it is one already, as :meth:`~lto_runtime.HostBuffers.upload` does)."""
        tensor = torch.from_numpy(np.ascontiguousarray(host, dtype=np.float32))
        return tensor if self.device.type == "cpu" else tensor.to(self.device)

    def download(self, array: torch.Tensor) -> np.ndarray:
        """``array`` copied to a host NumPy array."""
        return array.detach().cpu().numpy()

    def nonfinite(self, grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> list[int]:
        """Indices ``i`` (``grads[i] is None`` skipped) where ``grads[i]`` or ``params[i]`` holds NaN or
        Inf; one device-to-host read of flags (more only for a pair whose check fails).

        A finite ``sum(g * theta)`` proves both finite in one read-only pass over the pair (as
        :meth:`~lto_runtime.HostBuffers.nonfinite`); pairs of other dtypes are checked by a sum of each.
        """
        present = [(i, g, p) for i, (g, p) in enumerate(zip(grads, params)) if g is not None]
        if not present:
            return []
        finite = torch.stack([_pair_check(g, p) for _, g, p in present]).isfinite().tolist()
        return [i for (i, g, p), ok in zip(present, finite) if not ok and not (bool(torch.isfinite(g).all()) and bool(torch.isfinite(p).all()))]

    def synchronize(self) -> None:
        """Wait for torch's CUDA stream: onnxruntime reads the buffers on a stream of its own."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


def resident_device(step_function: StepFunction, params: Sequence[torch.Tensor]) -> torch.device | None:
    """The device to keep the engine's buffers and state on, or ``None`` for host NumPy memory.

    The parameters' device when they share one and the step runs there: always for the PyTorch
    step (``backend="torch"``), and on CUDA for an onnxruntime session on CUDA. Otherwise gradients
    and parameters are read through host NumPy views.
    """
    devices = {p.device for p in params}
    if len(devices) != 1:
        return None
    device = next(iter(devices))
    if not isinstance(step_function, OptimizerSession):
        return device
    return device if device.type == "cuda" and CUDA in step_function.providers else None


def build_engine(
    step_function: StepFunction, params: Sequence[torch.Tensor], *, max_batch_windows: int, boundaries: str = "manual"
) -> StepEngine:
    """A :class:`~lto_runtime.StepEngine` for ``params`` (``boundaries``: see the engine), on their
    device when :func:`resident_device` allows it, else in host memory."""
    device = resident_device(step_function, params)
    shapes = [tuple(local_shard(p).shape) for p in params]
    if device is None:
        return StepEngine(step_function, shapes, max_batch_windows=max_batch_windows, boundaries=boundaries)
    if isinstance(step_function, OptimizerSession):
        step_function = step_function.on_device("cuda", device.index or 0)
    return StepEngine(step_function, shapes, max_batch_windows=max_batch_windows, buffers=TorchBuffers(device), boundaries=boundaries)


@torch.no_grad()
def step_tensors(engine: StepEngine, grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor], hyper: np.ndarray) -> list[int]:
    """One engine step over torch tensors, adding the updates to ``params`` in place.

    With host buffers the engine reads float32 NumPy views of the tensors (copies only for other
    dtypes or devices); with :class:`TorchBuffers` it reads the tensors themselves, and a step
    function that writes in place (the PyTorch step) adds the update of a contiguous float32
    parameter's whole windows to it in the pass that computes it.

    Returns:
        Indices of tensors whose gradient (or stepped parameter) holds NaN or Inf; nothing changed then.
    """
    resident = isinstance(engine.buffers, TorchBuffers)
    view = _flat_alias if resident else _as_numpy
    grads = [None if g is None else local_shard(g) for g in grads]
    params = [local_shard(p) for p in params]
    in_place = [resident and p.dtype == torch.float32 and p.is_contiguous() for p in params]
    pending: dict[int, torch.Tensor] = {}

    def apply(index: int, start: int, stop: int, update) -> None:
        param = params[index]
        values = update if resident else torch.as_tensor(update, device=param.device)
        if param.is_contiguous():
            param.view(-1)[start:stop].add_(values)
        else:
            # A strided parameter has no flat view to add into: gather its update, add it whole.
            pending.setdefault(index, torch.zeros(param.numel(), device=param.device))[start:stop] = values

    bad = engine.step([None if g is None else view(g) for g in grads], [view(p) for p in params], hyper, apply, in_place)
    for index, update in pending.items():
        params[index].add_(update.view(params[index].shape))
    return bad
