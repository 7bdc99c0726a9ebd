"""NaN/Inf gradients skip the step without touching anything; odd gradients get clear errors;
low- and high-precision parameters work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import digits_mlp, flat_params, train
from lto_adapters.numpy import LTO as NumpyLTO
from lto_adapters.torch import LTO


def _state_tensors(opt):
    return {(i, k): v.clone() for i, s in opt.state_dict()["state"].items() for k, v in s.items() if torch.is_tensor(v)}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gradient_skips_whole_step(random_head_files, bad):
    _, onnx_path = random_head_files
    model = digits_mlp()
    opt = LTO(model.parameters(), lr=1e-2, onnx_path=onnx_path)
    train(model, opt, 5)
    params, state = flat_params(model), _state_tensors(opt)
    steps = {i: s["step"] for i, s in opt.state_dict()["state"].items()}
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    model[3].bias.grad[2] = bad
    with pytest.warns(RuntimeWarning, match=r"non-finite gradient or parameter in param_groups\[0\]\['params'\]\[3\] \(shape \(10,\)\)"):
        opt.step()
    assert torch.equal(flat_params(model), params)
    after = _state_tensors(opt)
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert {i: s["step"] for i, s in opt.state_dict()["state"].items()} == steps


def test_numpy_nonfinite_gradient_skips_and_names_it():
    params = {"w": np.ones(3, np.float32), "b": np.ones(2, np.float32)}
    opt = NumpyLTO(params, lr=0.1)
    with pytest.warns(RuntimeWarning, match=r"\['b'\]"):
        assert not opt.step({"w": np.ones(3, np.float32), "b": np.array([1.0, np.nan], np.float32)})
    assert (params["w"] == 1).all() and opt.state_dict()["state"]["w"]["step"] == 0


def test_sparse_gradient_is_refused():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = LTO(emb.parameters())
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight, before)


@pytest.mark.parametrize("threads", [-1, 1.5, True, "2"])
def test_bad_threads_are_named(threads):
    with pytest.raises(ValueError, match=r"Invalid threads: .*whole number"):
        LTO(torch.nn.Linear(2, 2).parameters(), threads=threads)
    with pytest.raises(ValueError, match=r"Invalid threads"):
        NumpyLTO({"w": np.zeros(3, np.float32)}, threads=threads)


def test_threads_set_the_session_and_belong_to_the_onnx_backend():
    for front in (LTO(torch.nn.Linear(2, 2).parameters(), threads=1), NumpyLTO({"w": np.zeros(3, np.float32)}, threads=1)):
        assert front.runtime.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match=r"threads= apply to backend='onnx'"):
        LTO(torch.nn.Linear(2, 2).parameters(), backend="torch", threads=2)


def test_complex_parameter_is_refused():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    opt = LTO([p])
    p.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_one_step_is_float32_math_cast_back(zero_head_files, dtype):
    _, onnx_path = zero_head_files
    torch.manual_seed(0)
    low = torch.nn.Parameter(torch.randn(20, 5).to(dtype))
    grad = torch.randn(20, 5).to(dtype)
    ref = torch.nn.Parameter(low.detach().float().clone())
    ref.grad, low.grad = grad.float(), grad
    torch.optim.Adam([ref], lr=1e-2).step()
    LTO([low], lr=1e-2, onnx_path=onnx_path).step()
    assert low.dtype == dtype
    if dtype == torch.float64:  # the float32 update is added in float64
        assert torch.allclose(low.detach(), ref.detach().double(), rtol=0, atol=1e-7)
    else:  # 16-bit: exactly the float32 result rounded once
        assert torch.equal(low.detach(), ref.detach().to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_train(zero_head_files, dtype):
    _, onnx_path = zero_head_files
    torch.manual_seed(0)
    w, target = torch.randn(20, 5), torch.randn(5)
    ref = torch.nn.Parameter(w.clone())
    low = torch.nn.Parameter(w.clone().to(dtype))
    ref_opt, low_opt = torch.optim.Adam([ref], lr=1e-2), LTO([low], lr=1e-2, onnx_path=onnx_path)
    for _ in range(30):
        for p, opt in ((ref, ref_opt), (low, low_opt)):
            opt.zero_grad()
            ((p.float() - target) ** 2).sum().backward()
            opt.step()
    assert low.dtype == dtype
    assert ((low.float() - target) ** 2).sum() < ((w - target) ** 2).sum() * 0.9
    if dtype == torch.float64:
        assert torch.allclose(low.float(), ref.detach(), atol=1e-6)


def test_numpy_float16_and_float64(zero_head_files):
    _, onnx_path = zero_head_files
    for dtype in (np.float16, np.float64):
        params = {"w": np.ones(7, dtype)}
        NumpyLTO(params, lr=0.1, onnx_path=onnx_path).step({"w": np.ones(7, dtype)})
        assert params["w"].dtype == dtype
        np.testing.assert_allclose(params["w"], 0.9, rtol=1e-3)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_runtime_providers_answer_for_both_backends(backend):
    opt = LTO(torch.nn.Linear(2, 2).parameters(), backend=backend)
    assert opt.runtime.providers and all(isinstance(p, str) for p in opt.runtime.providers)
    assert opt.runtime.providers[0] == ("CPUExecutionProvider" if backend == "onnx" else "PyTorch, torch.compile" if opt.runtime.compiled else "PyTorch, eager")


@pytest.mark.parametrize("kwargs", [dict(lr="1e-3"), dict(eps="1e-8"), dict(weight_decay=None), dict(betas=("0.9", 0.999)), dict(lr=True)])
def test_hyper_parameters_of_the_wrong_type_raise_type_error_like_torch(kwargs):
    """As torch.optim.Adam: a string (or None, or a bool) where a number belongs is a TypeError that names it."""
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=name):
        LTO(torch.nn.Linear(2, 2).parameters(), **kwargs)
    with pytest.raises(TypeError, match=name):
        NumpyLTO({"w": np.zeros(3, np.float32)}, **kwargs)


@pytest.mark.parametrize("buffers", ["host", "torch"])
def test_nonfinite_check_finds_every_kind_of_bad_pair(buffers):
    """The one-pass check ``sum(g * theta)`` cannot be fooled: an infinity times zero, opposite
    infinities, overflow of finite values and non-float32 pairs are all judged element by element."""
    from lto_runtime import HostBuffers
    from lto_runtime._torch_engine import TorchBuffers

    n = 1000
    ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)
    inf_at_zero = zeros.copy(); inf_at_zero[7] = np.inf
    opposite = ones.copy(); opposite[1], opposite[2] = np.inf, -np.inf
    huge = np.full(n, 1e30, np.float32)  # finite, but sum(g * theta) overflows
    half = np.ones(n, np.float16); half_nan = half.copy(); half_nan[3] = np.nan
    pairs = [
        (ones, ones),  # 0 fine
        (inf_at_zero, zeros),  # 1 Inf in the gradient where theta is 0
        (zeros, inf_at_zero),  # 2 Inf in the parameter where g is 0
        (opposite, ones),  # 3 +Inf and -Inf
        (huge, huge),  # 4 fine: overflow alone is not a bad value
        (ones, np.full(n, np.nan, np.float32)),  # 5 NaN parameter
        (half, half),  # 6 fine, float16
        (half_nan, half),  # 7 NaN in float16
    ]
    grads, params = [g for g, _ in pairs] + [None], [p for _, p in pairs] + [np.full(n, np.nan, np.float32)]
    if buffers == "torch":
        grads = [None if g is None else torch.from_numpy(g) for g in grads]
        params = [torch.from_numpy(p) for p in params]
        check = TorchBuffers(torch.device("cpu"))
    else:
        check = HostBuffers()
    assert check.nonfinite(grads, params) == [1, 2, 3, 5, 7]  # a tensor without a gradient is not checked
