"""With the output head at zero, the step is exactly torch.optim.Adam (both backends)."""

from __future__ import annotations

import pytest
import torch

from helpers import digits_mlp, flat_params, train
from lto_adapters.torch import LTO


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("kwargs", [dict(lr=1e-2), dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)])
def test_zero_head_matches_adam_for_100_steps(zero_head_files, backend, kwargs):
    checkpoint, onnx_path = zero_head_files
    ref_model, lto_model = digits_mlp(), digits_mlp()
    ref_losses = train(ref_model, torch.optim.Adam(ref_model.parameters(), **kwargs), 100)
    files = dict(onnx_path=onnx_path) if backend == "onnx" else dict(checkpoint=checkpoint)
    lto_losses = train(lto_model, LTO(lto_model.parameters(), backend=backend, **kwargs, **files), 100)
    assert ref_losses[-1] < ref_losses[0] * 0.5
    assert torch.allclose(flat_params(ref_model), flat_params(lto_model), rtol=0.0, atol=1e-6)


def test_zero_head_matches_adam_across_task_boundaries(zero_head_files):
    """Consolidation changes importance and anchor only; with a zero head, steps stay Adam's."""
    _, onnx_path = zero_head_files
    ref_model, lto_model = digits_mlp(), digits_mlp()
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
    lto_opt = LTO(lto_model.parameters(), lr=1e-2, onnx_path=onnx_path)
    for _ in range(3):
        train(ref_model, ref_opt, 20)
        train(lto_model, lto_opt, 20)
        lto_opt.task_boundary()
    assert torch.allclose(flat_params(ref_model), flat_params(lto_model), rtol=0.0, atol=1e-6)


def _adam_and_lto_across_a_boundary(checkpoint, steps_after: int):
    """Adam and LTO (``checkpoint``, torch backend) from the same start through 40 steps (asserted
    equal: the memory gate), a task boundary, then ``steps_after`` more steps on other batches:
    ``(adam_model, lto_model, parameters at the boundary)``."""
    ref_model, lto_model = digits_mlp(), digits_mlp()
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
    lto_opt = LTO(lto_model.parameters(), lr=1e-2, backend="torch", checkpoint=checkpoint)
    train(ref_model, ref_opt, 40)
    train(lto_model, lto_opt, 40)
    assert torch.allclose(flat_params(ref_model), flat_params(lto_model), rtol=0.0, atol=1e-6)
    lto_opt.task_boundary()
    start = flat_params(lto_model)
    train(ref_model, ref_opt, steps_after, seed=1)
    train(lto_model, lto_opt, steps_after, seed=1)
    return ref_model, lto_model, start


@pytest.mark.parametrize("gate_init, pull_init", [(2.0, 0.0), (0.0, 1.0)])
def test_hand_set_network_is_adam_until_the_first_boundary_then_holds_back(tmp_path, gate_init, pull_init):
    """``gate_init`` / ``pull_init`` networks (meta-training's starting points) differ from Adam
    only after a boundary, where the gate shrinks the steps of important weights and the pull
    draws them back toward the anchor: either way they move less far from it than Adam's."""
    from lto_export.onnx_export import initial_checkpoint

    checkpoint = initial_checkpoint(gate_init, tmp_path / "hand-set.safetensors", pull_init)
    ref_model, lto_model, start = _adam_and_lto_across_a_boundary(checkpoint, 40)
    moved_lto = (flat_params(lto_model) - start).abs().sum()
    assert moved_lto < (flat_params(ref_model) - start).abs().sum() * 0.9


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_any_network_is_adam_until_the_first_boundary(random_head_files, backend):
    """The memory gate: windows without consolidated importance take Adam's step, whatever the
    network's weights, so plain training is Adam; after a boundary the network acts."""
    checkpoint, onnx_path = random_head_files
    files = dict(onnx_path=onnx_path) if backend == "onnx" else dict(checkpoint=checkpoint)
    ref_model, lto_model = digits_mlp(), digits_mlp()
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
    lto_opt = LTO(lto_model.parameters(), lr=1e-2, backend=backend, **files)
    train(ref_model, ref_opt, 60)
    train(lto_model, lto_opt, 60)
    assert torch.allclose(flat_params(ref_model), flat_params(lto_model), rtol=0.0, atol=1e-6)
    lto_opt.task_boundary()
    train(ref_model, ref_opt, 10, seed=1)
    train(lto_model, lto_opt, 10, seed=1)
    assert (flat_params(ref_model) - flat_params(lto_model)).abs().max() > 1e-3


def test_gate_offset_alone_scales_adams_step_after_a_boundary(tmp_path):
    """``hand_set_graph(..., 0, 0, offset=a)``: until the first boundary Adam's step, after it the
    same step times ``2 sigmoid(a)`` (no importance gate, no pull)."""
    from lto_core.checkpoint import save_checkpoint
    from lto_core.evaluation import hand_set_graph
    from lto_core.meta_train import MetaTrainConfig

    offset = 1.0
    checkpoint = save_checkpoint(hand_set_graph(MetaTrainConfig().network, 0.0, 0.0, offset=offset), tmp_path / "offset1", {"meta_trained": False})
    ref_model, lto_model, start = _adam_and_lto_across_a_boundary(checkpoint, 1)
    # Per element (differences of float32 parameters carry rounding of about 1% of a step).
    ratio = (flat_params(lto_model) - start) / (flat_params(ref_model) - start)
    scale = 2.0 * torch.sigmoid(torch.tensor(offset)).item()
    assert ratio.median().item() == pytest.approx(scale, rel=1e-3)
    assert (ratio - scale).abs().max().item() < 0.03 * scale
