"""Run the PyTorch step graph behind the runtime's ``run(inputs, outputs)`` interface.

This is the ``backend="torch"`` execution strategy: the same :class:`~lto_runtime.StepEngine`
(layout, state, chunking) as the ONNX backend, with the step computed by :class:`StepGraph` on
whatever the buffers are: torch tensors on the parameters' device (the adapter's fast path) or
NumPy arrays, shared without copies. Besides ``run``, it steps in place
(:class:`~lto_runtime.engine.InPlaceStepFunction`): one compiled loop per call (on the CPU a
kernel compiled ahead of time, :class:`AheadOfTimeStep`) that writes the new moments over the
state and adds the update to the parameters, which the engine uses for
every ordinary step; and it computes the consolidated importance and refreshed coefficients of
the listed windows alone (``run_listed``), which the engine uses for the calls that only do that.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lto_core.step import StepGraph, adam_element_step, exporting_for_inductor, protected_element_step
from lto_runtime.format import INPUT_NAMES, OUTPUT_NAMES, TOKEN_STATE_NAMES

#: Logger ``"lto_core"``; says once, at INFO, when backend="torch" must run eagerly.
logger = logging.getLogger("lto_core")


def can_compile() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here: inductor needs a C++ compiler."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


@functools.cache
def compiled_element_steps() -> tuple[Callable, Callable]:
    """:func:`~lto_core.step.adam_element_step` and :func:`~lto_core.step.protected_element_step`
    through ``torch.compile``: each becomes one fused loop over the elements.

    Compiled once per process (they hold no weights, so every step graph shares them); shapes are
    dynamic, so chunks of any size reuse the kernels.
    """
    return tuple(torch.compile(f, dynamic=True, fullgraph=True) for f in (adam_element_step, protected_element_step))


_PULL = TOKEN_STATE_NAMES.index("pull")


def _detached(args: tuple) -> tuple:
    """``args`` with each tensor detached: the same memory and version counter, but not a view.
    torch.compile guards on the base of a view (its shape, strides), and bases differ from call to
    call (a parameter, a state block, a window buffer)."""
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


def _windows_dynamic(function: Callable) -> Callable:
    """``function`` through ``torch.compile``, its first compile valid for any number of windows
    and of tokens per window (the first two dimensions of every ``[B, W, ...]`` argument, the
    first of the scalars; the tokens so that one window can pass as two of half the tokens), the
    elements per token a constant in it.

    A further compile costs seconds, and tens of MB that the process keeps, so a model of a new
    size must not need one. Left to torch, the first compile fixes the window count (a second one
    makes it dynamic) and "duck sizing" equates it with any size equal to it in the first call
    (16 windows of 16 tokens). Marked dynamic on tensors made for the call, it is neither; marks
    on the caller's tensors would stay on them and reach other compiled functions. A call of one
    window still compiles apart (torch makes the count 1 a constant): callers avoid it.
    """
    compiled = torch.compile(function, fullgraph=True)

    @functools.wraps(function)
    def run(*args: Any) -> Any:
        args = _detached(args)
        for a in args:
            if isinstance(a, torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(a, 0)
                if a.dim() == 3:
                    torch._dynamo.maybe_mark_dynamic(a, 1)
        return compiled(*args)

    return run


def _any_window_count(function: Callable) -> Callable:
    """``function`` through ``torch.compile``, its first compile valid for any sizes (see
    :func:`_windows_dynamic`), chunks of one window included: ``dynamic=True``, and while torch
    compiles (inside the call) no duck sizing and no constant for a size of 0 or 1 (size-oblivious
    sizes). For the rare calls (boundaries, refreshes): setting them costs some 20 us a call.
    """
    compiled = torch.compile(function, dynamic=True, fullgraph=True)

    @functools.wraps(function)
    def run(*args: Any) -> Any:
        with torch.fx.experimental._config.patch(use_duck_shape=False, backed_size_oblivious=True):
            return compiled(*_detached(args))

    return run


# The element steps of TorchStepFunction.step_in_place: the results written where the engine keeps
# them, the new moments over the old, the update added to the parameter itself ("onto") or written
# into a buffer ("into"). Compiled, each is one loop that reads every input and writes every result
# once, with no temporaries and no copies after it, and adds weight decay whatever its value
# (``decay=True``: the loop reads theta anyway, and zero decay adds zero), so the graph's branch on
# it is not needed; eager, they branch (``decay=None``) to skip its two passes. The pull's branch is
# decided in Python (``pulls``). Tensors come first and positionally, so that a kernel compiled ahead
# of time takes the same arguments; four functions, not one with flags: torch.compile keeps the
# compiled versions of one function in one cache of bounded size.


def _store_moments(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, new_exp_avg: torch.Tensor, new_exp_avg_sq: torch.Tensor) -> None:
    """The new moments over the old (in the same loop that computes them, once compiled)."""
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


def _adam_onto(grad, param, exp_avg, exp_avg_sq, scalars, *, decay, pulls=None) -> None:
    update, new_exp_avg, new_exp_avg_sq = adam_element_step(grad, param, exp_avg, exp_avg_sq, None, None, None, scalars, decay=decay)
    _store_moments(exp_avg, exp_avg_sq, new_exp_avg, new_exp_avg_sq)
    param.add_(update)


def _adam_into(grad, param, exp_avg, exp_avg_sq, scalars, out, *, decay, pulls=None) -> None:
    update, new_exp_avg, new_exp_avg_sq = adam_element_step(grad, param, exp_avg, exp_avg_sq, None, None, None, scalars, decay=decay)
    _store_moments(exp_avg, exp_avg_sq, new_exp_avg, new_exp_avg_sq)
    out.copy_(update)


def _protected_onto(grad, param, exp_avg, exp_avg_sq, log_importance, anchor, coefficients, scalars, *, decay, pulls) -> None:
    update, new_exp_avg, new_exp_avg_sq = protected_element_step(
        grad, param, exp_avg, exp_avg_sq, log_importance, anchor, coefficients, scalars, decay=decay, pulls=pulls
    )
    _store_moments(exp_avg, exp_avg_sq, new_exp_avg, new_exp_avg_sq)
    param.add_(update)


def _protected_into(grad, param, exp_avg, exp_avg_sq, log_importance, anchor, coefficients, scalars, out, *, decay, pulls) -> None:
    update, new_exp_avg, new_exp_avg_sq = protected_element_step(
        grad, param, exp_avg, exp_avg_sq, log_importance, anchor, coefficients, scalars, decay=decay, pulls=pulls
    )
    _store_moments(exp_avg, exp_avg_sq, new_exp_avg, new_exp_avg_sq)
    out.copy_(update)


#: The in-place element steps by ``(protected, onto_param)``.
_IN_PLACE_STEPS = {(False, True): _adam_onto, (False, False): _adam_into, (True, True): _protected_onto, (True, False): _protected_into}


@functools.cache
def in_place_element_step(protected: bool, pulls: bool, onto_param: bool, compiled: bool) -> Callable[..., None]:
    """The element step of :meth:`TorchStepFunction.step_in_place` for one case, built on first use;
    it takes the call's tensors positionally.

    :func:`~lto_core.step.protected_element_step` where some coefficient is non-zero (``pulls``:
    and some pull), else :func:`~lto_core.step.adam_element_step`; the update added to the
    parameter (``onto_param``) or written into a buffer. ``compiled``: on the CPU a kernel compiled
    ahead of time (:class:`AheadOfTimeStep`), else through ``torch.compile``, one version for
    every window count (:func:`_windows_dynamic`); both are given one window as two
    (:meth:`TorchStepFunction.step_in_place`).
    """
    chosen = _IN_PLACE_STEPS[protected, onto_param]
    if not compiled:
        return functools.partial(chosen, decay=None, pulls=pulls)
    step = functools.partial(chosen, decay=True, pulls=pulls)
    return AheadOfTimeStep(step, fallback=_windows_dynamic(step))


class AheadOfTimeStep:
    """An in-place element step compiled ahead of time for the CPU (AOTInductor), called through its
    C++ loader: a few microseconds a call, several times less than ``torch.compile``'s guards and
    Python wrappers cost, which on a model of a million parameters stepped on two threads was a
    sixth of the step (README, Speed).

    One kernel per number of threads (inductor fixes the thread count of its loops when it
    compiles) and per trailing shape of the tensors (elements per token, coefficients per token,
    scalars per window), each valid for any number of windows (at least 2) and of tokens per
    window. Built on first use: ``torch.export`` (seconds), then, the first time on a machine, a
    C++ compile (tens of seconds; said at INFO on the ``lto_core`` logger) whose result is kept in
    a file under inductor's cache folder (:func:`_kernel_file`), which later processes load. Calls
    it cannot take (tensors not contiguous or not on the CPU, fewer than 2 windows or tokens) and
    every call after a build that failed go to ``fallback``, the same function through
    ``torch.compile``; a failed build is logged once at INFO on the ``lto_core`` logger.
    """

    def __init__(self, step: Callable[..., None], fallback: Callable[..., None]) -> None:
        self.step, self.fallback = step, fallback
        self.kernels: dict[tuple, Callable[[list[torch.Tensor]], Any] | None] = {}

    def __call__(self, *tensors: torch.Tensor) -> None:
        if len(tensors[0]) < 2 or tensors[0].shape[1] < 2 or not all(t.device.type == "cpu" and t.is_contiguous() for t in tensors):
            self.fallback(*tensors)
            return
        key = (torch.get_num_threads(), *(t.shape[2:] if t.dim() == 3 else t.shape[1:] for t in tensors))
        if key not in self.kernels:
            self.kernels[key] = self._build(tensors)
        kernel = self.kernels[key]
        if kernel is None:
            self.fallback(*tensors)
        else:
            kernel(list(tensors))

    def _build(self, tensors: tuple[torch.Tensor, ...]) -> Callable[[list[torch.Tensor]], Any] | None:
        """The kernel for tensors shaped like ``tensors``, from the cache folder or compiled now;
        ``None`` (and one INFO line) where export or compilation fails."""
        try:
            program = _export_windows_dynamic(self.step, tensors)
            path = _kernel_file(program)
            if not path.exists():
                # Tens of seconds inside a first step: said, so that it does not look like a hang.
                logger.info("lto: compiling backend='torch''s step for %d thread(s) (once on this machine; kept in %s)", torch.get_num_threads(), path.parent)
                path.parent.mkdir(parents=True, exist_ok=True)
                # Written under another name, then renamed: a process that loads it meanwhile (or
                # builds it at the same time) sees a whole file or none.
                partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.pt2")
                with warnings.catch_warnings():
                    # torch's own packaging uses an API that torch deprecates; nothing a user can act on.
                    warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
                    torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
                os.replace(partial, path)
            return torch._inductor.aoti_load_package(str(path)).loader.run
        except Exception as err:  # noqa: BLE001 - any failure leaves the torch.compile path, same numbers
            logger.info("lto: compiling backend='torch''s step ahead of time failed (%s: %s); it runs through torch.compile", type(err).__name__, err)
            return None


#: The example the in-place step is exported with: windows and tokens per window. Neither is 2 or
#: less (torch would make it a constant), and its size is a large call's: inductor reads the
#: example's sizes to decide whether a loop is worth splitting over threads, and a tiny one would
#: give a kernel that runs on one thread whatever the count.
_EXAMPLE_WINDOWS, _EXAMPLE_TOKENS = 64, 16


def _export_windows_dynamic(step: Callable[..., None], tensors: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """``step`` exported for tensors shaped like ``tensors``: ``[B, W, ...]`` windows and ``[B, M]``
    scalars, with ``B >= 2`` and ``W >= 2`` free, the trailing sizes fixed."""

    class Step(torch.nn.Module):
        def forward(self, *args: torch.Tensor) -> None:
            step(*args)

    windows, tokens = torch.export.Dim("windows", min=2), torch.export.Dim("tokens", min=2)
    b, w = _EXAMPLE_WINDOWS, _EXAMPLE_TOKENS
    examples = tuple(torch.zeros((b, w, *t.shape[2:]) if t.dim() == 3 else (b, *t.shape[1:])) for t in tensors)
    dynamic = tuple({0: windows, 1: tokens} if t.dim() == 3 else {0: windows} for t in tensors)
    with exporting_for_inductor():
        return torch.export.export(Step(), examples, dynamic_shapes=(dynamic,))  # forward(*args): one tuple


@functools.cache
def _cpu_identity() -> str:
    """What a kernel built for this CPU may depend on: the architecture, torch's vector level and,
    on Linux, the model and every instruction-set flag the kernel reports (read once a process).

    Inductor compiles for the host's own instructions, so two CPUs of the same vector level (say
    AVX512) can still differ in an extension the kernel uses; a cache folder shared between
    machines (a network home, a copied image) must not hand one CPU's kernel to the other."""
    parts = [platform.machine(), torch.backends.cpu.get_cpu_capability()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "flags", "Features"):
                    parts.append(value.strip())
                if not line.strip():  # the first processor's block says it for all
                    break
    except OSError:  # not Linux: the architecture and vector level above, and the processor's name
        parts.append(platform.processor())
    return "\n".join(parts)


def _kernel_file(program: torch.export.ExportedProgram) -> Path:
    """Where the kernel compiled from ``program`` is kept: a file in inductor's cache folder
    (``TORCHINDUCTOR_CACHE_DIR``, by default under the temporary folder), named by a hash of what
    the compiled code depends on: the exported graph, its shape ranges and example sizes, torch's
    version, the CPU (:func:`_cpu_identity`) and the number of threads."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    sizes = [tuple(t.shape) for t in program.example_inputs[0]]
    parts = (program.graph_module.code, str(program.range_constraints), str(sizes), torch.__version__, _cpu_identity(),
             str(torch.get_num_threads()))
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
    return Path(cache_dir()) / "lto" / f"element-step-{digest}.pt2"


def _consolidate_at(graph: StepGraph, at: torch.Tensor, param, mask, exp_avg_sq, log_importance, scalars) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`StepGraph.consolidate` of the windows ``at`` (gathered in the same compiled code)."""
    return graph.consolidate(*(x[at] for x in (param, mask, exp_avg_sq, log_importance, scalars)))


def _refresh_at(graph: StepGraph, at: torch.Tensor, grad, param, mask, exp_avg, exp_avg_sq, log_importance, anchor, scalars, ctx) -> torch.Tensor:
    """:meth:`StepGraph.refresh_after_step` of the windows ``at`` (gathered in the same compiled code)."""
    return graph.refresh_after_step(*(x[at] for x in (grad, param, mask, exp_avg, exp_avg_sq, log_importance, anchor, scalars, ctx)))


@functools.cache
def compiled_listed_steps() -> tuple[Callable, Callable]:
    """:func:`_consolidate_at` and :func:`_refresh_at` through ``torch.compile``: consolidation,
    and the token summaries, network and bounding of a refresh, as a few fused loops.

    Compiled once per process; the step graph is an argument, so every graph of the same
    configuration shares the code, its weights read as inputs. One version serves every number of
    windows and of listed windows (:func:`_any_window_count`).
    """
    return tuple(_any_window_count(f) for f in (_consolidate_at, _refresh_at))


class TorchStepFunction:
    """Computes the step with ``graph`` in PyTorch.

    Args:
        graph: the step graph.
        compile: run the step as compiled C++ loops (:func:`in_place_element_step`, the fast
            path of every ordinary step: on the CPU compiled ahead of time, once per machine,
            elsewhere through ``torch.compile``; :func:`compiled_element_steps` for the element
            step of :meth:`run`; :func:`compiled_listed_steps` for consolidation and the
            network's refresh);
            ``None`` compiles where a C++ compiler exists and otherwise runs eagerly, saying so
            once at INFO on the ``lto_core`` logger. Both compute the same function.
    """

    def __init__(self, graph: StepGraph, compile: bool | None = None) -> None:
        self.graph = graph.eval()
        self.window, self.chunk = graph.config.window, graph.config.chunk
        self.refresh_every = graph.config.refresh_every
        if compile is None:
            compile = can_compile()
            if not compile:
                logger.info("lto: no C++ compiler found, so backend='torch' runs the step eagerly (slower; same numbers)")
        self.compiled = bool(compile)
        #: What runs the step, as ``OptimizerSession.providers`` says for onnxruntime.
        self.providers: list[str] = ["PyTorch, torch.compile" if compile else "PyTorch, eager"]
        if compile:
            self.graph.element_steps = compiled_element_steps()

    def step_in_place(self, inputs: dict[str, Any], update: Any | None = None) -> None:
        """The step of a call that lists no window, written where it is kept: the new moments over
        ``inputs["exp_avg"]`` and ``inputs["exp_avg_sq"]``, the update added to ``inputs["param"]``
        itself (``update=None``) or written into ``update``.

        The same numbers as :meth:`run`, without its outputs: no buffer to fill and copy from, and
        with ``update=None`` no pass to add the update to the parameters. Every window of the call
        must be active (an inactive window's moments would be overwritten).
        """
        with torch.no_grad():
            coefficients = _as_tensor(inputs["coefficients"])
            protected, pulls = _branches(coefficients)
            step = in_place_element_step(protected, pulls, update is None, self.compiled)
            names = ("grad", "param", "exp_avg", "exp_avg_sq", *(("log_importance", "anchor", "coefficients") if protected else ()))
            windows = [_as_tensor(inputs[name]) for name in names]
            out = [] if update is None else [_as_tensor(update)]
            scalars = _as_tensor(inputs["scalars"])
            if self.compiled and len(scalars) == 1 and self.window % 2 == 0:
                # One window as two of half the tokens (views of the same memory; the same numbers,
                # since the element step is per element with per-window scalars): torch compiles a
                # call of one window apart from all others (the count 1 becomes a constant), and
                # a model with a one-window tensor would compile the step a second time; the kernel
                # compiled ahead of time takes two windows or more.
                windows, out = ([x.view(2, self.window // 2, *x.shape[2:]) for x in xs] for xs in (windows, out))
                scalars = scalars.repeat(2, 1)
            step(*windows, scalars, *out)

    def run_listed(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """What :meth:`run` writes into ``consolidated_log_importance``, ``consolidated_anchor`` and
        ``refreshed_coefficients`` (the windows listed in ``boundary_windows`` and
        ``refresh_windows``), without the step of every window: ``update`` and the new moments in
        ``outputs`` are left as they are. The refresh computes the new moments of its windows alone.
        Through ``torch.compile`` when the element step is (:func:`compiled_listed_steps`).
        """
        with torch.no_grad():
            given = {name: _as_tensor(inputs[name]) for name in INPUT_NAMES}
            consolidate, refresh = compiled_listed_steps() if self.compiled else (_consolidate_at, _refresh_at)
            at = given["boundary_windows"].long()
            if len(at):
                consolidated, anchors = consolidate(self.graph, self._listed(at), *(given[n] for n in ("param", "mask", "exp_avg_sq", "log_importance", "scalars")))
                _as_tensor(outputs["consolidated_log_importance"]).copy_(consolidated[: len(at)])
                _as_tensor(outputs["consolidated_anchor"]).copy_(anchors[: len(at)])
            at = given["refresh_windows"].long()
            if len(at):
                names = ("grad", "param", "mask", "exp_avg", "exp_avg_sq", "log_importance", "anchor", "scalars", "ctx")
                _as_tensor(outputs["refreshed_coefficients"]).copy_(refresh(self.graph, self._listed(at), *(given[n] for n in names))[: len(at)])

    def _listed(self, at: torch.Tensor) -> torch.Tensor:
        """The windows ``at`` as the compiled listed steps take them: one window listed twice (its
        result read once; windows are computed independently), since torch compiles a list of one
        window apart from all others."""
        return at.repeat(2) if self.compiled and len(at) == 1 else at

    def run(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Read ``inputs`` and write every output into ``outputs`` in place (tensors or NumPy arrays)."""
        with torch.no_grad():
            results = self.graph(*(_as_tensor(inputs[n]) for n in INPUT_NAMES))
            for name, value in zip(OUTPUT_NAMES, results):
                _as_tensor(outputs[name]).copy_(value)


def _branches(coefficients: torch.Tensor) -> tuple[bool, bool]:
    """Whether any coefficient is non-zero, and any pull: the branches the step graph takes.

    Each costs a pass over the coefficients and a read back to the host. They change only where
    the engine writes them (a refresh, a loaded state), which bumps the tensor's version counter,
    so the answer is kept on the tensor with the version it holds for.
    """
    known = getattr(coefficients, "_lto_branches", None)
    if known is not None and known[0] == coefficients._version:
        return known[1]
    protected = bool(coefficients.any())
    branches = protected, protected and bool(coefficients[..., _PULL].any())
    coefficients._lto_branches = (coefficients._version, branches)
    return branches


def _as_tensor(array: Any) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (a NumPy array or a tensor already)."""
    return torch.from_numpy(array) if isinstance(array, np.ndarray) else array
