"""backend="torch"'s in-place element step compiled ahead of time (AOTInductor) on the CPU: the path
taken where a compiler exists, the same numbers as the eager step for any number of windows, kept
in a file that a later build loads instead of compiling, and the torch.compile path where the
build fails or a call does not fit the kernel."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from lto_core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from lto_core.executor import AheadOfTimeStep, can_compile, in_place_element_step
from lto_export.onnx_export import example_inputs
from lto_runtime.format import INPUT_NAMES, SCALAR_NAMES

pytestmark = pytest.mark.skipif(not can_compile(), reason="AOTInductor needs a C++ compiler")

#: (protected, pulls): Adam's branch, the gate alone, the gate and the pull.
CASES = [(False, False), (True, False), (True, True)]


def _tensors(windows: int, protected: bool, onto_param: bool, seed: int) -> list[torch.Tensor]:
    """The in-place step's arguments for ``windows`` windows of the packaged layout, in its order,
    weight decay on."""
    graph, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    given = dict(zip(INPUT_NAMES, example_inputs(graph, windows, seed)))
    given["scalars"][:, SCALAR_NAMES.index("weight_decay")] = 0.01
    names = ("grad", "param", "exp_avg", "exp_avg_sq", *(("log_importance", "anchor", "coefficients") if protected else ()), "scalars")
    return [given[n].clone() for n in names] + ([] if onto_param else [torch.full_like(given["grad"], float("nan"))])


def _eager_result(protected: bool, pulls: bool, onto_param: bool, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    written = [t.clone() for t in tensors]
    in_place_element_step(protected, pulls, onto_param, False)(*written)
    return written


@pytest.mark.parametrize("onto_param", [True, False])
@pytest.mark.parametrize("protected,pulls", CASES)
def test_kernel_is_the_path_taken_and_steps_as_eager_for_any_window_count(one_torch_thread, protected, pulls, onto_param):
    assert isinstance(in_place_element_step(protected, pulls, onto_param, True), AheadOfTimeStep)
    # A fresh instance (the cached one holds kernels of other tests' thread counts), whose
    # fallback refuses: every call below runs the kernel.
    step = AheadOfTimeStep(in_place_element_step(protected, pulls, onto_param, True).step, fallback=_refuse)
    for windows in (3, 2, 6):
        tensors = _tensors(windows, protected, onto_param, seed=windows)
        expected = _eager_result(protected, pulls, onto_param, tensors)
        step(*tensors)
        for got, want in zip(tensors, expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert not torch.equal(tensors[2], _tensors(windows, protected, onto_param, seed=windows)[2])  # moments moved
    assert len(step.kernels) == 1 and None not in step.kernels.values()  # one kernel, every window count


def test_a_built_kernel_is_loaded_from_its_file_without_compiling(one_torch_thread, monkeypatch):
    tensors = _tensors(3, False, True, seed=0)
    in_place_element_step(False, False, True, True)(*[t.clone() for t in tensors])  # built (or loaded) once
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", _refuse)
    fresh = AheadOfTimeStep(in_place_element_step(False, False, True, True).step, fallback=_refuse)
    expected = _eager_result(False, False, True, tensors)
    fresh(*tensors)
    assert None not in fresh.kernels.values()
    for got, want in zip(tensors, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_failed_build_and_calls_the_kernel_cannot_take_go_to_the_fallback(one_torch_thread, monkeypatch, caplog):
    eager = in_place_element_step(True, True, True, False)
    fallback_calls = []

    def fallback(*tensors):
        fallback_calls.append(len(tensors[0]))
        eager(*tensors)

    step = AheadOfTimeStep(in_place_element_step(True, True, True, True).step, fallback=fallback)
    one_window = _tensors(1, True, True, seed=1)
    expected = _eager_result(True, True, True, one_window)
    step(*one_window)  # one window: below the kernel's two, never built for
    assert fallback_calls == [1] and not step.kernels
    for got, want in zip(one_window, expected):
        torch.testing.assert_close(got, want)

    monkeypatch.setattr(torch.export, "export", _refuse)
    with caplog.at_level(logging.INFO, logger="lto_core"):
        for _ in range(2):
            tensors = _tensors(4, True, True, seed=2)
            expected = _eager_result(True, True, True, tensors)
            step(*tensors)
            for got, want in zip(tensors, expected):
                torch.testing.assert_close(got, want)
    assert fallback_calls == [1, 4, 4] and list(step.kernels.values()) == [None]
    said = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(said) == 1 and "RuntimeError: no compiler in this test" in said[0] and "torch.compile" in said[0]


def _refuse(*args, **kwargs):
    raise RuntimeError("no compiler in this test")


def test_export_for_the_kernel_stacks_the_per_window_factors():
    """The per-window factors (powers, a root, a division) reach the compiled loop as one stacked
    buffer, as under torch.compile; inline, the loop recomputes them for every vector of elements
    (the ONNX export leaves them inline: tests/test_runtime_files.py)."""
    from lto_core.executor import _export_windows_dynamic

    step = in_place_element_step(False, False, True, True).step
    program = _export_windows_dynamic(step, tuple(_tensors(2, False, True, seed=0)))
    assert "aten.stack" in program.graph_module.code


def test_kernel_file_is_named_by_the_cpu_it_was_built_for(monkeypatch):
    """A cache folder shared by two machines of the same vector level but different instruction
    extensions (a network home) gives each its own kernel file: the name hashes the CPU's flags."""
    from lto_core import executor

    step = in_place_element_step(False, False, True, True).step
    program = executor._export_windows_dynamic(step, tuple(_tensors(3, False, True, seed=0)))
    here = executor._kernel_file(program)
    assert here == executor._kernel_file(program)
    identity = executor._cpu_identity()
    assert torch.backends.cpu.get_cpu_capability() in identity
    if os.path.exists("/proc/cpuinfo"):
        assert any(flag in identity for flag in ("sse2", "avx", "neon", "asimd", "fp"))
    monkeypatch.setattr(executor, "_cpu_identity", lambda: identity + " avx512_fp16")  # one more extension
    assert executor._kernel_file(program) != here


def test_a_process_leaves_no_extracted_kernel_behind(tmp_path):
    """torch extracts each loaded kernel into the temporary folder and removes the copy when its
    loader is released: a process that stepped with ``backend="torch"`` leaves none behind when it
    exits (nothing may keep a loader past the interpreter's teardown)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    script = (
        "import torch\n"
        "from lto_adapters.torch import LTO\n"
        "torch.set_num_threads(1)\n"
        "w = torch.nn.Parameter(torch.randn(4096))\n"
        "opt = LTO([w], backend='torch')\n"
        "w.grad = torch.randn(4096)\n"
        "opt.step()\n"
        "from lto_core.executor import in_place_element_step\n"
        "assert None not in in_place_element_step(False, False, True, True).kernels.values()\n"
        "import glob, os\n"
        "assert glob.glob(os.path.join(os.environ['TMPDIR'], 'aotinductor_*'))\n"  # extracted while running
    )
    # The kernel cache stays where it is (it would follow TMPDIR), so nothing is compiled here.
    env = {**os.environ, "TMPDIR": str(temporary), "TORCHINDUCTOR_CACHE_DIR": cache_dir(), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    assert not list(temporary.glob("aotinductor_*"))
