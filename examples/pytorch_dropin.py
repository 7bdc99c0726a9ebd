"""Swap ``torch.optim.Adam`` for lto's ``LTO`` in an ordinary PyTorch training loop.

Trains the same small MLP on scikit-learn's handwritten digits twice, from the same initial weights
and with the same batches: once with Adam, once with LTO. The loop, the learning-rate scheduler and
the checkpointing code are the same for both; only the line that builds the optimizer differs.

    python examples/pytorch_dropin.py            # 10 epochs
    python examples/pytorch_dropin.py --quick    # 2 epochs (what CI runs)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from lto_adapters.torch import LTO


def load_data(seed: int) -> tuple[torch.Tensor, ...]:
    """Digits as float32 pixels in [0, 1], 25% held out for testing."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return tuple(torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test))


def make_model(seed: int) -> nn.Module:
    """A 64-64-10 MLP; the same seed gives the same initial weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The only line of the training code that knows which optimizer it uses."""
    # --8<-- [start:swap]
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr)
    return LTO(params, lr=lr)  # was: torch.optim.Adam(params, lr=lr)
    # --8<-- [end:swap]


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of test digits classified correctly."""
    return float((model(x).argmax(dim=1) == y).float().mean())


def train(name: str, data, epochs: int, lr: float, batch_size: int, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """An ordinary loop: shuffle, zero_grad, backward, step; cosine learning-rate decay per epoch."""
    x_train, y_train, x_test, y_test = data
    model = make_model(seed)
    # --8<-- [start:loop]
    optimizer = make_optimizer(name, model.parameters(), lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=lr / 10)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in torch.randperm(len(x_train), generator=order).split(batch_size):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(batch), count + len(batch)
        scheduler.step()
        print(f"{name:<4} epoch {epoch + 1:2d}: train loss {total / count:.4f}, test accuracy {test_accuracy(model, x_test, y_test):.3f}")
    # --8<-- [end:loop]
    return model, optimizer


def resume_matches(model: nn.Module, optimizer: LTO, data, lr: float) -> bool:
    """Save model and optimizer, load both into fresh objects, and check the next step (parameters
    and optimizer state) agrees."""
    x_train, y_train = data[0][:32], data[1][:32]
    with tempfile.TemporaryDirectory() as tmp:
        # --8<-- [start:checkpoint]
        path = Path(tmp) / "checkpoint.pt"
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)

        saved = torch.load(path, weights_only=True)
        restored = make_model(seed=123)
        restored.load_state_dict(saved["model"])
        restored_optimizer = LTO(restored.parameters(), lr=lr)
        restored_optimizer.load_state_dict(saved["optimizer"])
        # --8<-- [end:checkpoint]
    for m, opt in ((model, optimizer), (restored, restored_optimizer)):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x_train), y_train).backward()
        opt.step()
    same_params = all(torch.equal(a, b) for a, b in zip(model.parameters(), restored.parameters()))
    states = optimizer.state_dict()["state"], restored_optimizer.state_dict()["state"]
    same_state = all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for a, b in zip(*(s.values() for s in states)) for k in a
    )
    return same_params and same_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs instead of --epochs (for CI)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    data = load_data(args.seed)

    adam_model, _ = train("Adam", data, epochs, args.lr, args.batch_size, args.seed)
    lto_model, lto_optimizer = train("LTO", data, epochs, args.lr, args.batch_size, args.seed)

    with torch.no_grad():
        gap = max(float((a - b).abs().max()) for a, b in zip(adam_model.parameters(), lto_model.parameters()))
    x_test, y_test = data[2], data[3]
    print(f"final test accuracy: Adam {test_accuracy(adam_model, x_test, y_test):.3f}, LTO {test_accuracy(lto_model, x_test, y_test):.3f}")
    print(f"largest difference between the two trained models' weights: {gap:.2e}")
    print(f"LTO resumed from a saved checkpoint takes the same next step: {resume_matches(lto_model, lto_optimizer, data, args.lr)}")


if __name__ == "__main__":
    main()
