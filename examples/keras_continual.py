"""Continual learning in Keras 3: ``LTO`` with ``model.fit`` and the ``TaskBoundary`` callback, against Adam.

scikit-learn's digits are cut into tasks of two classes each. A small Keras MLP learns them one
after the other with one ``model.fit`` per task, never seeing an earlier task's data again, once with
``keras.optimizers.Adam`` and once with ``lto_adapters.keras.LTO`` (same initial weights, same
batches). The ``TaskBoundary`` callback tells LTO when each task ends. After each task the script
tests on every task, which fills the accuracy matrix ``R[i][j]`` (accuracy on task j after training
task i), and reports ACC, BWT and FWT (GEM metrics).

    python examples/keras_continual.py            # 5 tasks, 10 epochs each
    python examples/keras_continual.py --quick    # 5 tasks, 1 epoch each (what CI runs)

Keras runs on the backend named by ``KERAS_BACKEND`` (this script defaults it to ``torch``).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lto_adapters.keras import LTO, TaskBoundary  # noqa: E402
from lto_core.data import load_digits  # noqa: E402
from lto_core.metrics import average_accuracy, backward_transfer, forward_transfer  # noqa: E402
from lto_core.streams import SCENARIOS, Stream, Task, make_stream  # noqa: E402


def build_model(stream: Stream, seed: int) -> keras.Model:
    """A 64-64-outputs MLP with the same initial weights for every call with the same ``seed``."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(stream.input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(stream.num_outputs),
        ]
    )


def logit_mask(task: Task, outputs: int) -> np.ndarray:
    """Task-incremental masking: 0 on the task's classes, a large negative elsewhere (all 0 otherwise)."""
    mask = np.zeros(outputs, np.float32)
    if task.classes is not None:
        mask[:] = -1e9
        mask[list(task.classes)] = 0.0
    return mask


def task_loss(mask: np.ndarray):
    """Cross-entropy on the masked logits (only the task's output units compete)."""
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    offset = keras.ops.convert_to_tensor(mask)

    def loss(y_true, logits):
        return cross_entropy(y_true, logits + offset)

    return loss


def accuracy(model: keras.Model, task: Task, outputs: int) -> float:
    """Test accuracy on ``task`` (with the task's output mask, if any)."""
    logits = keras.ops.convert_to_numpy(model(task.x_test, training=False)) + logit_mask(task, outputs)
    return float((logits.argmax(axis=-1) == task.y_test).mean())


def run(name: str, stream: Stream, epochs: int, lr: float, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, LTO | None]:
    """Train through ``stream``; return ``R``, the accuracies at init ``b``, and the LTO optimizer (if used)."""
    model = build_model(stream, seed)
    optimizer = keras.optimizers.Adam(learning_rate=lr, epsilon=1e-8) if name == "Adam" else LTO(learning_rate=lr)
    callbacks = [TaskBoundary()] if isinstance(optimizer, LTO) else []
    tasks, outputs = stream.tasks, stream.num_outputs
    b = np.array([accuracy(model, task, outputs) for task in tasks])
    R = np.zeros((len(tasks), len(tasks)))
    keras.utils.set_random_seed(seed)  # the same batch order for both optimizers
    for i, task in enumerate(tasks):
        # One compile per task sets the task's output mask; the optimizer (and its state) carries over.
        model.compile(optimizer=optimizer, loss=task_loss(logit_mask(task, outputs)))
        model.fit(task.x_train, task.y_train, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=callbacks)
        R[i] = [accuracy(model, t, outputs) for t in tasks]
    return R, b, optimizer if isinstance(optimizer, LTO) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch per task instead of --epochs (for CI)")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per task")
    parser.add_argument("--scenario", choices=SCENARIOS, default="class")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    epochs = 1 if args.quick else args.epochs

    stream = make_stream(load_digits(args.seed), "split", args.scenario, args.tasks, seed=args.seed)
    print(f"Keras {keras.__version__} on {keras.backend.backend()}; {stream.name}, {args.scenario}-incremental, "
          f"{args.tasks} tasks, {epochs} epoch(s) per task, lr {args.lr}")
    results = {}
    for name in ("Adam", "LTO"):
        R, b, lto = run(name, stream, epochs, args.lr, args.batch_size, args.seed)
        results[name] = (R, b)
        where = ""
        if lto is not None:
            spec = lto.runtime.spec
            trained = "meta-trained" if spec.meta_trained else f"NOT meta-trained: {spec.meta_train.get('note', 'no provenance note')}"
            where = f" ({lto.runtime.spec.path.name}, {trained}; onnxruntime on {lto.runtime.providers[0]})"
        print(f"\n{name}{where}: accuracy matrix R[i][j] (row i: after training task i; column j: tested on task j)")
        for i, row in enumerate(R):
            print(f"  after task {i}: " + " ".join(f"{a:.3f}" for a in row))
    print(f"\n{'optimizer':<10}{'ACC':>7}{'BWT':>8}{'FWT':>8}")
    for name, (R, b) in results.items():
        print(f"{name:<10}{average_accuracy(R):7.3f}{backward_transfer(R):+8.3f}{forward_transfer(R, b):+8.3f}")
    print("ACC: mean accuracy over all tasks at the end; BWT < 0 means forgetting.")


if __name__ == "__main__":
    main()
