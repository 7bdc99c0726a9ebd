"""Token layout: any shapes (0-d, empty, non-contiguous), chunked streaming equals one big call."""

from __future__ import annotations

import numpy as np
import pytest

from lto_adapters.numpy import LTO
from lto_runtime import TokenLayout


def test_windows_cover_each_tensor_and_never_mix():
    layout = TokenLayout(((), (0,), (3, 5), (2000,)), window=4, chunk=8)
    assert layout.numels == (1, 0, 15, 2000)
    assert list(layout.window_counts) == [1, 0, 1, 63]
    assert layout.total_windows == 65
    owners = layout.window_tensor()
    assert list(owners[:2]) == [0, 2] and (owners[2:] == 3).all()
    for size in (1, 7, 65, 1000):
        chunks = layout.chunks(size)
        assert sum(c.windows for c in chunks) == 65
        covered = {t: 0 for t in range(4)}
        for c in chunks:
            for piece in c.pieces:
                covered[piece.tensor] += piece.stop - piece.start
            elements = sum(p.stop - p.start for p in c.pieces) + sum(n for _, n in c.padding)
            assert elements == c.windows * 32
        assert covered == {0: 1, 1: 0, 2: 15, 3: 2000}


def _run(params, grads, **kwargs):
    params = {k: v.copy() for k, v in params.items()}
    opt = LTO(params, lr=1e-2, **kwargs)
    for g in grads:
        opt.step(g)
    opt.task_boundary()
    for g in grads[:3]:  # the boundary's step, then the network's first refresh and one more
        opt.step(g)
    return params, opt.state_dict()["state"]


def test_chunked_streaming_gives_the_same_numbers():
    rng = np.random.default_rng(0)
    shapes = {"scalar": (), "empty": (0, 3), "vec": (7,), "big": (70, 40), "conv": (4, 3, 5, 5)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(6)]
    one_call, state_one = _run(params, grads, max_batch_windows=10_000)
    streamed, state_streamed = _run(params, grads, max_batch_windows=1)
    for k in shapes:
        np.testing.assert_array_equal(one_call[k], streamed[k])
        for key in state_one[k]:
            np.testing.assert_array_equal(state_one[k][key], state_streamed[k][key])
    assert np.abs(state_one["big"]["coefficients"]).max() > 0
    assert not np.array_equal(one_call["big"], params["big"])
    assert one_call["empty"].shape == (0, 3)


def test_non_contiguous_parameters_and_gradients():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(6, 8)).astype(np.float32)
    grads = [rng.normal(size=(8, 6)).astype(np.float32) for _ in range(4)]
    contiguous = {"w": np.ascontiguousarray(base.T)}
    strided = {"w": base.copy().T}
    assert not strided["w"].flags.c_contiguous
    for params in (contiguous, strided):
        opt = LTO(params, lr=1e-2)
        for g in grads:
            opt.step({"w": np.asfortranarray(g)})
    np.testing.assert_array_equal(contiguous["w"], strided["w"])


def test_read_only_parameter_is_refused():
    w = np.ones(3)
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        LTO({"w": w})
