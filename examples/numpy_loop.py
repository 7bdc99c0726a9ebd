"""A plain NumPy training loop with lto: softmax regression with hand-written gradients.

No deep-learning framework: the model is a weight matrix and a bias in a dict of NumPy arrays, the
gradients are written out by hand, and ``lto_adapters.numpy.LTO`` updates the arrays in place
(through onnxruntime; torch is never imported).

    python examples/numpy_loop.py            # 600 steps
    python examples/numpy_loop.py --quick    # 100 steps (what CI runs)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lto_adapters.numpy import LTO


# --8<-- [start:grad]
def softmax_regression(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy of ``softmax(x @ W + b)`` against labels ``y``, and its gradients.

    With ``p = softmax(logits)`` and ``Y`` the one-hot labels, ``dloss/dlogits = (p - Y) / N``,
    so ``dW = x.T @ (p - Y) / N`` and ``db = sum over rows of (p - Y) / N``.
    """
    logits = x @ params["W"] + params["b"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = len(x)
    loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
    dlogits = p
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n
    return loss, {"W": x.T @ dlogits, "b": dlogits.sum(axis=0)}
# --8<-- [end:grad]


def accuracy(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` whose largest logit is the true class."""
    return float(((x @ params["W"] + params["b"]).argmax(axis=1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 steps instead of --steps (for CI)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = 100 if args.quick else args.steps

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=args.seed, stratify=digits.target
    )

    # --8<-- [start:loop]
    params = {"W": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)}
    optimizer = LTO(params, lr=args.lr)
    rng = np.random.default_rng(args.seed)
    for step in range(1, steps + 1):
        batch = rng.integers(0, len(x_train), size=args.batch_size)
        loss, grads = softmax_regression(params, x_train[batch], y_train[batch])
        optimizer.step(grads)  # updates params["W"] and params["b"] in place
        if step == steps // 2:
            optimizer.lr = args.lr / 10  # a step decay half-way; any schedule works the same way
        if step % (steps // 5) == 0:
            print(f"step {step:4d}: batch loss {loss:.4f}, test accuracy {accuracy(params, x_test, y_test):.3f}")
    # --8<-- [end:loop]
    print(f"final test accuracy: {accuracy(params, x_test, y_test):.3f} after {steps} steps")
    print(f"torch imported: {'torch' in sys.modules}")


if __name__ == "__main__":
    main()
