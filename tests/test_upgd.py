"""UPGD (lto_core.baselines.UPGD): utility-gated, perturbed SGD for streams without task boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lto_core.baselines import UPGD
from lto_core.continual import run_stream
from lto_core.data import load_dataset
from lto_core.models import make_model
from lto_core.streams import make_stream

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_one_step_is_the_papers_update_with_the_utility_scaled_by_the_global_max():
    # Two param groups: the largest utility is in the second, so it scales the first group's gate.
    a = torch.tensor([1.0, -2.0], requires_grad=True)
    b = torch.tensor([3.0], requires_grad=True)
    beta, sigma, lam, seed = 0.9, 0.5, 0.1, 7
    optimizer = UPGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.2}], beta_utility=beta, sigma=sigma, weight_decay=lam, seed=seed)
    a.grad = torch.tensor([0.5, 0.25])
    b.grad = torch.tensor([-1.0])
    optimizer.step()

    # u = -g * theta: a -> (-0.5, 0.5), b -> 3.0; U = (1 - beta) u; eta = max U = 0.1 * 3.0 = 0.3
    # U_hat = U / (1 - beta^1) = u; s = sigmoid(U_hat / eta)
    eta = (1 - beta) * 3.0
    # the noise: the optimizer's own generator, seeded with `seed`, drawn parameter by parameter in order
    generator = torch.Generator().manual_seed(seed)
    xi_a, xi_b = torch.randn(2, generator=generator).tolist(), torch.randn(1, generator=generator).tolist()
    expected_a = [
        (1 - 0.1 * lam) * 1.0 - 2 * 0.1 * (0.5 + sigma * xi_a[0]) * (1 - _sigmoid(-0.5 / eta)),
        (1 - 0.1 * lam) * -2.0 - 2 * 0.1 * (0.25 + sigma * xi_a[1]) * (1 - _sigmoid(0.5 / eta)),
    ]
    expected_b = [(1 - 0.2 * lam) * 3.0 - 2 * 0.2 * (-1.0 + sigma * xi_b[0]) * (1 - _sigmoid(3.0 / eta))]
    assert a.detach().tolist() == pytest.approx(expected_a, rel=1e-6)
    assert b.detach().tolist() == pytest.approx(expected_b, rel=1e-6)

    # Step 2: the running average and its bias correction (1 - beta^2); eta is max U, before correction.
    U_a = [(1 - beta) * -0.5, (1 - beta) * 0.5]
    U_b = (1 - beta) * 3.0
    theta_a, theta_b = a.detach().tolist(), b.detach().tolist()
    a.grad = torch.tensor([0.0, 0.0])
    b.grad = torch.tensor([0.0])
    optimizer.step()
    U_a = [beta * u for u in U_a]
    U_b = beta * U_b
    eta = max(*U_a, U_b)
    xi_a, xi_b = torch.randn(2, generator=generator).tolist(), torch.randn(1, generator=generator).tolist()
    correction = 1 - beta**2
    expected_a = [(1 - 0.1 * lam) * t - 2 * 0.1 * sigma * x * (1 - _sigmoid(u / correction / eta)) for t, x, u in zip(theta_a, xi_a, U_a)]
    expected_b = [(1 - 0.2 * lam) * theta_b[0] - 2 * 0.2 * sigma * xi_b[0] * (1 - _sigmoid(U_b / correction / eta))]
    assert a.detach().tolist() == pytest.approx(expected_a, rel=1e-6)
    assert b.detach().tolist() == pytest.approx(expected_b, rel=1e-6)
    assert optimizer.state[a]["step"] == 2


def test_the_most_useful_weight_moves_least():
    w = torch.tensor([2.0, 0.0, -2.0], requires_grad=True)
    optimizer = UPGD([w], lr=0.1, sigma=0.0, weight_decay=0.0)
    w.grad = torch.tensor([-1.0, -1.0, -1.0])  # utilities -g*w: 2 (useful), 0, -2 (harmful to keep)
    optimizer.step()
    moved = (w.detach() - torch.tensor([2.0, 0.0, -2.0])).abs()
    assert moved[0] < moved[1] < moved[2]
    assert moved[1].item() == pytest.approx(2 * 0.1 * 0.5)  # zero utility: s = 1/2, so 2 lr (1 - s) = lr


def _train(seed: int, steps: int = 20) -> tuple[list[torch.Tensor], list[float]]:
    stream = make_stream(load_dataset("digits", 0), "split", "task", 2, seed=0)
    model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=0)
    result = run_stream(model, UPGD(model.parameters(), seed=seed), stream, steps, seed=0)
    return [p.detach().clone() for p in model.parameters()], result.losses


def test_a_run_is_reproduced_by_its_seed_and_the_loss_falls():
    first, losses = _train(seed=3)
    again, _ = _train(seed=3)
    other, _ = _train(seed=4)
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert not all(torch.equal(p, q) for p, q in zip(first, other))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_state_dict_round_trips_the_utility_and_the_noise():
    def model_and_optimizer():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, UPGD(model.parameters(), seed=1)

    def step(model, optimizer):
        optimizer.zero_grad()
        model(torch.ones(4, 3)).square().sum().backward()
        optimizer.step()

    model, optimizer = model_and_optimizer()
    step(model, optimizer)
    saved_model, saved = {k: v.clone() for k, v in model.state_dict().items()}, optimizer.state_dict()
    step(model, optimizer)
    resumed_model, resumed = model_and_optimizer()
    resumed_model.load_state_dict(saved_model)
    resumed.load_state_dict(saved)
    step(resumed_model, resumed)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"beta_utility": 1.0}, ValueError, "Invalid beta_utility value: 1.0"),
        ({"sigma": -0.1}, ValueError, "Invalid sigma value: -0.1"),
        ({"weight_decay": -1.0}, ValueError, "Invalid weight_decay value: -1.0"),
        ({"seed": "a"}, TypeError, "Invalid seed: 'a'"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        UPGD([torch.zeros(2, requires_grad=True)], **kwargs)
