"""Continual learning in JAX: ``lto_adapters.optax.lto`` in a jitted training step, with task boundaries.

scikit-learn's digits are cut into tasks of two classes each. A plain-JAX MLP learns them one after
the other, never seeing an earlier task's data again, once with ``optax.adam`` and once with
``lto``; between tasks ``task_boundary(opt_state)`` marks the boundary. The same stream then runs
through the PyTorch adapter (``lto_adapters.torch.LTO``) from the same initial weights with the
same batches, so the two front ends can be compared. After each task the script tests on every
task, which fills the accuracy matrix ``R[i][j]`` (accuracy on task j after training task i), and
reports ACC, BWT and FWT.

    python examples/optax_digits.py            # 5 tasks, 300 steps each
    python examples/optax_digits.py --quick    # 5 tasks, 30 steps each (what CI runs)
"""

from __future__ import annotations

import argparse
import os

# JAX would otherwise take a GPU if it finds one; the step runs in onnxruntime on the host anyway.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lto_adapters import optax as lto_optax  # noqa: E402
from lto_adapters.torch import LTO  # noqa: E402
from lto_core import continual  # noqa: E402
from lto_core.data import load_digits  # noqa: E402
from lto_core.metrics import average_accuracy, backward_transfer, forward_transfer  # noqa: E402
from lto_core.streams import SCENARIOS, Stream, Task, make_stream  # noqa: E402


# --8<-- [start:model]
def init_mlp(key: jax.Array, sizes: list[int]) -> list[dict[str, jax.Array]]:
    """Dense layers ``{"w": [out, in], "b": [out]}``, each drawn from ``U(-1/sqrt(in), 1/sqrt(in))``
    (PyTorch's default for ``nn.Linear``, so the PyTorch run can start from the same weights)."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / np.sqrt(fan_in)
        layers.append({
            "w": jax.random.uniform(kw, (fan_out, fan_in), minval=-bound, maxval=bound),
            "b": jax.random.uniform(kb, (fan_out,), minval=-bound, maxval=bound),
        })
    return layers


def mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Logits of ``x`` ``[N, ...]``: ``h = relu(h @ w.T + b)`` through every layer but the last."""
    h = x.reshape(len(x), -1)
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"].T + layer["b"])
    return h @ params[-1]["w"].T + params[-1]["b"]


def logit_offset(task: Task, outputs: int) -> np.ndarray:
    """Task-incremental masking: 0 on the task's classes, a large negative elsewhere (all 0 otherwise)."""
    offset = np.zeros(outputs, np.float32)
    if task.classes is not None:
        offset[:] = -1e9
        offset[list(task.classes)] = 0.0
    return offset


def loss_fn(params, x, y, offset):
    """Mean cross-entropy of the masked logits against labels ``y``."""
    return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x) + offset, y).mean()
# --8<-- [end:model]


# --8<-- [start:step]
def make_train_step(tx: optax.GradientTransformation):
    """One jitted training step: gradients, ``tx.update`` and ``optax.apply_updates``."""

    @jax.jit
    def train_step(params, opt_state, x, y, offset):
        grads = jax.grad(loss_fn)(params, x, y, offset)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return train_step
# --8<-- [end:step]


def accuracy(params, task: Task, outputs: int) -> float:
    """Test accuracy on ``task`` (with the task's output mask, if any)."""
    logits = np.asarray(mlp(params, jnp.asarray(task.x_test))) + logit_offset(task, outputs)
    return float((logits.argmax(axis=-1) == task.y_test).mean())


def run_optax(
    tx: optax.GradientTransformation, boundaries: bool, stream: Stream, params, steps: int, batch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train through ``stream`` with ``tx`` (marking task boundaries if ``boundaries``); return the
    accuracy matrix ``R`` and the accuracies at init ``b``."""
    tasks, outputs = stream.tasks, stream.num_outputs
    b = np.array([accuracy(params, task, outputs) for task in tasks])
    R = np.zeros((len(tasks), len(tasks)))
    batches = np.random.default_rng(seed)
    # --8<-- [start:loop]
    train_step = make_train_step(tx)
    opt_state = tx.init(params)
    for i, task in enumerate(tasks):
        offset = logit_offset(task, outputs)
        for _ in range(steps):
            index = batches.integers(0, len(task.x_train), size=batch_size)
            params, opt_state = train_step(params, opt_state, task.x_train[index], task.y_train[index], offset)
        R[i] = [accuracy(params, t, outputs) for t in tasks]
        if boundaries:
            opt_state = lto_optax.task_boundary(opt_state)  # this task is over: consolidate what it needed
    # --8<-- [end:loop]
    return R, b


def torch_model(params) -> nn.Module:
    """The same MLP in PyTorch, holding a copy of ``params``."""
    layers: list[nn.Module] = [nn.Flatten()]
    for layer in params:
        linear = nn.Linear(layer["w"].shape[1], layer["w"].shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(layer["w"])))
            linear.bias.copy_(torch.from_numpy(np.array(layer["b"])))
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def run_torch(stream: Stream, params, steps: int, lr: float, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same run with the PyTorch adapter: same initial weights, same batches, same boundaries."""
    model = torch_model(params)
    optimizer = LTO(model.parameters(), lr=lr)
    tasks = stream.tasks
    b = np.array([continual.accuracy(model, task) for task in tasks])
    R = np.zeros((len(tasks), len(tasks)))
    batches = np.random.default_rng(seed)
    for i, task in enumerate(tasks):
        for _ in range(steps):
            index = batches.integers(0, len(task.x_train), size=batch_size)
            optimizer.zero_grad()
            continual.task_loss(model, task, index).backward()
            optimizer.step()
        R[i] = [continual.accuracy(model, t) for t in tasks]
        optimizer.task_boundary()
    return R, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 steps per task instead of --steps (for CI)")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300, help="training steps per task")
    parser.add_argument("--scenario", choices=SCENARIOS, default="class")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = 30 if args.quick else args.steps

    stream = make_stream(load_digits(args.seed), "split", args.scenario, args.tasks, seed=args.seed)
    print(f"jax {jax.__version__} on {jax.default_backend()}, optax {optax.__version__}; {stream.name}, "
          f"{args.scenario}-incremental, {args.tasks} tasks, {steps} steps per task, lr {args.lr}")
    sizes = [int(np.prod(stream.input_shape)), 64, 64, stream.num_outputs]
    params = init_mlp(jax.random.key(args.seed), sizes)
    results = {
        "optax.adam": run_optax(optax.adam(args.lr), False, stream, params, steps, args.batch_size, args.seed),
        "lto (optax)": run_optax(lto_optax.lto(args.lr), True, stream, params, steps, args.batch_size, args.seed),
        "lto (torch)": run_torch(stream, params, steps, args.lr, args.batch_size, args.seed),
    }
    for name, (R, _) in results.items():
        print(f"\n{name}: accuracy matrix R[i][j] (row i: after training task i; column j: tested on task j)")
        for i, row in enumerate(R):
            print(f"  after task {i}: " + " ".join(f"{a:.3f}" for a in row))
    print(f"\n{'optimizer':<13}{'ACC':>7}{'BWT':>8}{'FWT':>8}")
    for name, (R, b) in results.items():
        print(f"{name:<13}{average_accuracy(R):7.3f}{backward_transfer(R):+8.3f}{forward_transfer(R, b):+8.3f}")
    (optax_R, _), (torch_R, _) = results["lto (optax)"], results["lto (torch)"]
    print(f"ACC, lto (optax) - lto (torch): {average_accuracy(optax_R) - average_accuracy(torch_R):+.3f} "
          f"(largest |R difference| {np.abs(optax_R - torch_R).max():.3f})")


if __name__ == "__main__":
    main()
