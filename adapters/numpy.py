"""The NumPy front end: ``LTO(params).step(grads)`` updates a dict of arrays in place.

Imports NumPy and ``lto_runtime`` only, never torch.
"""

from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence

import numpy as np

from lto_runtime import MAX_BATCH_WINDOWS, OptimizerSession, StepEngine, hyper_row
from lto_runtime.state import check_boundaries, check_state_dict_keys


def _check_param(name: str, array: object) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"parameter {name!r} must be a numpy.ndarray, got {type(array).__name__}")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"parameter {name!r} has dtype {array.dtype}; lto optimizes real floating-point arrays (float16/32/64)")
    if not array.flags.writeable:
        raise ValueError(f"parameter {name!r} is read-only; pass a writeable array, it is updated in place")
    return array


class LTO:
    """The lto optimizer for a dict of NumPy arrays, updated in place.

    Args:
        params: name -> parameter array (float16, float32 or float64; any shape).
        lr: learning rate (the user's knob: the step scales with it, as in Adam).
        betas: Adam's decay rates of the first and second moment.
        eps: Adam's denominator term.
        weight_decay: L2 weight decay, added to the gradient as in ``torch.optim.Adam``.
        onnx_path: optimizer file; ``None`` for the packaged default.
        providers: onnxruntime providers (``None``: CPU; ``"auto"``: CUDA if available).
        max_batch_windows: windows per session call (bounds memory).
        threads: onnxruntime intra-op threads (default 1; 0: onnxruntime's choice, one per physical core).
        boundaries: ``"manual"`` (task boundaries where :meth:`task_boundary` is called) or
            ``"auto"`` (task-free: the optimizer also detects shifts in the gradients itself; see
            :class:`lto_adapters.torch.LTO`).

    Examples:
        >>> params = {"w": np.zeros((3, 2), np.float32)}
        >>> opt = LTO(params, lr=1e-2)
        >>> opt.step({"w": np.ones((3, 2), np.float32)})
        True
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        onnx_path: str | os.PathLike | None = None,
        providers: str | Sequence[str] | None = None,
        max_batch_windows: int = MAX_BATCH_WINDOWS,
        threads: int = 1,
        boundaries: str = "manual",
    ) -> None:
        if not isinstance(params, Mapping) or not params:
            raise ValueError("params must be a non-empty dict of name -> numpy array")
        self.params = {str(k): _check_param(str(k), v) for k, v in params.items()}
        hyper_row(lr, betas, eps, weight_decay)
        #: ``"manual"`` or ``"auto"``.
        self.boundaries = check_boundaries(boundaries)
        self.hyper = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        self.runtime = OptimizerSession(onnx_path, providers, threads)
        self.engine = StepEngine(
            self.runtime, [p.shape for p in self.params.values()], max_batch_windows=max_batch_windows, boundaries=boundaries
        )

    @property
    def lr(self) -> float:
        """The learning rate; assign to change it (e.g. from a schedule)."""
        return self.hyper["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        hyper_row(value, self.hyper["betas"], self.hyper["eps"], self.hyper["weight_decay"])
        self.hyper["lr"] = value

    def _gradients(self, grads: Mapping[str, np.ndarray]) -> list[np.ndarray | None]:
        unknown = [k for k in grads if k not in self.params]
        if unknown:
            raise KeyError(f"gradients for unknown parameters {unknown}; known: {list(self.params)}")
        out = []
        for name, param in self.params.items():
            grad = grads.get(name)
            if grad is not None:
                grad = np.asarray(grad)
                if np.iscomplexobj(grad):
                    raise TypeError(f"gradient {name!r} is complex; lto supports real gradients only")
                if grad.shape != param.shape:
                    raise ValueError(f"gradient {name!r} has shape {grad.shape}, its parameter has {param.shape}")
            out.append(grad)
        return out

    def step(self, grads: Mapping[str, np.ndarray]) -> bool:
        """Update the parameters in place from ``grads`` (name -> array; missing names are skipped).

        Returns:
            ``True`` if the step was taken; ``False`` if a gradient (or the parameter it steps)
            held NaN or Inf, in which case a warning names it and nothing changed.
        """
        gradients = self._gradients(grads)
        params = list(self.params.values())
        row = hyper_row(**self.hyper)

        def apply(index: int, start: int, stop: int, update: np.ndarray) -> None:
            param = params[index]
            if param.flags.c_contiguous:
                flat = param.reshape(-1)
                flat[start:stop] += update.astype(param.dtype, copy=False)
            else:
                param.flat[start:stop] = param.flat[start:stop] + update

        bad = self.engine.step(gradients, params, np.tile(row, (len(params), 1)), apply)
        if bad:
            names = [list(self.params)[i] for i in bad]
            warnings.warn(f"lto: non-finite gradient or parameter in {names}; step skipped, parameters and state unchanged", RuntimeWarning, stacklevel=2)
        return not bad

    def task_boundary(self) -> None:
        """Signal the end of a task: the next step consolidates importance and re-anchors."""
        self.engine.task_boundary()

    def state_dict(self) -> dict:
        """Hyper-parameters and per-parameter state (copies); round-trips with :meth:`load_state_dict`."""
        return {
            "hyper": dict(self.hyper),
            "state": {name: self.engine.tensor_state(i) for i, name in enumerate(self.params)},
        }

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: the dict is malformed, or its names, shapes or values do not fit this
                optimizer; everything is checked first, so nothing changes then.
            TypeError: a hyper-parameter is not a number.
        """
        check_state_dict_keys(state_dict, ("hyper", "state"))
        hyper, state = state_dict["hyper"], state_dict["state"]
        if not isinstance(hyper, Mapping) or set(hyper) != set(self.hyper):
            raise ValueError(f"state_dict['hyper'] must hold {sorted(self.hyper)}, got {hyper!r}")
        hyper_row(**hyper)
        if not isinstance(state, Mapping) or list(state) != list(self.params):
            names = list(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"state_dict holds parameters {names}, this optimizer has {list(self.params)}")
        checked = self.engine.check_states([state[n] for n in self.params], [f"state_dict['state'][{n!r}]" for n in self.params])
        self.hyper = {**dict(hyper), "betas": tuple(hyper["betas"])}
        self.engine.load_states(checked)
