"""torch.optim behaviour: state_dict round trips, param groups, schedulers, closures, skipped params."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from helpers import digits_batches, digits_mlp, flat_params, train
from lto_adapters.torch import LTO


def test_resumed_run_continues_identically(random_head_files, tmp_path):
    _, onnx_path = random_head_files
    model = digits_mlp()
    opt = LTO(model.parameters(), lr=3e-3, onnx_path=onnx_path)
    train(model, opt, 25)
    opt.task_boundary()
    train(model, opt, 5)
    opt.task_boundary()  # pending at save time: must survive the round trip
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")

    train(model, opt, 30, seed=1)
    expected = flat_params(model)

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed_model = digits_mlp(seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed_opt = LTO(resumed_model.parameters(), lr=1.0, onnx_path=onnx_path)
    resumed_opt.load_state_dict(saved["opt"])
    assert resumed_opt.param_groups[0]["lr"] == 3e-3
    train(resumed_model, resumed_opt, 30, seed=1)
    assert torch.equal(flat_params(resumed_model), expected)


def test_state_dict_is_a_snapshot_with_adam_like_keys():
    model = digits_mlp()
    opt = LTO(model.parameters())
    train(model, opt, 3)
    sd = opt.state_dict()
    state = sd["state"][0]
    assert set(state) >= {"exp_avg", "exp_avg_sq", "log_importance", "anchor", "coefficients", "step"}
    assert state["step"] == 3 and state["exp_avg"].shape == model[1].weight.shape
    before = state["exp_avg"].clone()
    train(model, opt, 2)
    assert torch.equal(sd["state"][0]["exp_avg"], before)


def test_load_state_dict_rejects_mismatched_shapes_without_changes():
    model = digits_mlp()
    opt = LTO(model.parameters())
    train(model, opt, 2)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg"] = torch.zeros(3, 3)
    good = opt.state_dict()
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert torch.equal(after["state"][0]["exp_avg"], good["state"][0]["exp_avg"])


def test_param_groups_use_their_own_lr(zero_head_files):
    _, onnx_path = zero_head_files
    ref, lto = digits_mlp(), digits_mlp()
    groups = lambda m: [{"params": m[1].parameters(), "lr": 1e-2}, {"params": m[3].parameters()}]  # noqa: E731
    train(ref, torch.optim.Adam(groups(ref), lr=1e-3), 30)
    train(lto, LTO(groups(lto), lr=1e-3, onnx_path=onnx_path), 30)
    assert torch.allclose(flat_params(ref), flat_params(lto), atol=1e-6)


def test_lr_scheduler_and_closure(zero_head_files):
    _, onnx_path = zero_head_files
    results = []
    for make in (lambda p: torch.optim.Adam(p, lr=1e-2), lambda p: LTO(p, lr=1e-2, onnx_path=onnx_path)):
        model = digits_mlp()
        opt = make(model.parameters())
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        for x, y in digits_batches(40):
            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            loss = opt.step(closure)
            assert torch.is_tensor(loss)
            sched.step()
        results.append(flat_params(model))
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_parameters_without_grad_are_skipped(zero_head_files):
    _, onnx_path = zero_head_files
    model = digits_mlp()
    opt = LTO(model.parameters(), lr=1e-2, onnx_path=onnx_path)
    frozen = model[1].weight.detach().clone()
    model[1].weight.requires_grad_(False)
    train(model, opt, 5)
    assert torch.equal(model[1].weight, frozen)
    assert opt.state_dict()["state"].get(0) is None
    model[1].weight.requires_grad_(True)
    train(model, opt, 5)
    steps = {i: s["step"] for i, s in opt.state_dict()["state"].items()}
    assert steps[0] == 5 and steps[1] == 10


def test_add_param_group_keeps_existing_state(zero_head_files):
    _, onnx_path = zero_head_files
    model = digits_mlp()
    opt = LTO(model[1].parameters(), lr=1e-2, onnx_path=onnx_path)
    train(model, opt, 4)
    before = opt.state_dict()["state"][0]["exp_avg"].clone()
    opt.add_param_group({"params": model[3].parameters(), "lr": 1e-3})
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], before)
    train(model, opt, 2)
    assert opt.state_dict()["state"][2]["step"] == 2


@pytest.mark.parametrize("bad, message", [(dict(lr=-1.0), "learning rate"), (dict(betas=(0.9, 1.0)), "beta"),
                                          (dict(eps=-1.0), "epsilon"), (dict(weight_decay=-1), "weight_decay"),
                                          (dict(backend="jax"), "backend")])
def test_invalid_arguments_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        LTO(digits_mlp().parameters(), **bad)


def test_state_dict_survives_a_bytes_round_trip():
    model = digits_mlp()
    opt = LTO(model.parameters())
    train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    other = LTO(model.parameters())
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.state_dict()["state"][1]["step"] == 3
