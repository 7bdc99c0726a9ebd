"""Built-in, offline datasets and the loader for a user's own ``.npz`` file.

Nothing here downloads: ``digits`` ships inside scikit-learn, ``mnist1d`` is generated locally with
``mnist1d.data.make_dataset``, ``gaussians``, ``teacher`` and ``hypercube`` are synthetic, and ``PATH.npz`` is the user's file.
MNIST-family data is held out from meta-training; it only ever arrives through ``PATH.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """A classification dataset: inputs ``[N, *input_shape]`` float32, labels ``[N]`` int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(H, W)`` for images, ``(D,)`` for vectors."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """``max label + 1`` over train and test."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale by the training set's global mean and std (keeps images' spatial structure)."""
    mean, std = x_train.mean(), x_train.std() + 1e-8
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1.0 - test_fraction))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, 10 classes, 25% held out for test."""
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    x = raw.images.astype(np.float32)
    xtr, ytr, xte, yte = _split(x, raw.target.astype(np.int64), 0.25, seed)
    xtr, xte = _standardize(xtr, xte)
    return Dataset("digits", xtr, ytr, xte, yte)


def load_mnist1d(seed: int = 0, num_samples: int = 5000) -> Dataset:
    """MNIST-1D (Greydanus, 2020): 40-sample 1-D signals, 10 classes, generated locally.

    Raises:
        ModuleNotFoundError: the ``mnist1d`` package (the ``bench`` extra) is not installed; the
            message says how to install it.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] != "mnist1d":
            raise  # mnist1d is there but one of its own dependencies is not: that error names it
        raise ModuleNotFoundError(
            "mnist1d data needs the mnist1d package, which the bench extra installs: pip install 'lto[bench]' "
            "(or pip install mnist1d)",
            name="mnist1d",
        ) from None

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    raw = make_dataset(args)
    xtr, xte = _standardize(raw["x"].astype(np.float32), raw["x_test"].astype(np.float32))
    return Dataset("mnist1d", xtr, raw["y"].astype(np.int64), xte, raw["y_test"].astype(np.int64))


def gaussian_mixture(seed: int = 0, classes: int = 10, dim: int = 32, per_class: int = 200, spread: float = 1.5) -> Dataset:
    """Synthetic vectors: one Gaussian blob per class, centers ``spread`` apart on average."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, spread / np.sqrt(2.0), size=(classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    x = centers[y] + rng.normal(size=(len(y), dim))
    xtr, ytr, xte, yte = _split(x.astype(np.float32), y.astype(np.int64), 0.25, seed)
    xtr, xte = _standardize(xtr, xte)
    return Dataset("gaussians", xtr, ytr, xte, yte)


def teacher_dataset(seed: int = 0, classes: int = 10, dim: int = 32, samples: int = 2000, hidden: int = 64) -> Dataset:
    """Synthetic vectors labelled by a random teacher network: ``argmax(W2 tanh(W1 x))``, x ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(dim, hidden)) / np.sqrt(dim)
    w2 = rng.normal(size=(hidden, classes)) / np.sqrt(hidden)
    x = rng.normal(size=(samples, dim))
    y = np.tanh(x @ w1 * 2.0) @ w2
    xtr, ytr, xte, yte = _split(x.astype(np.float32), y.argmax(axis=1).astype(np.int64), 0.25, seed)
    return Dataset("teacher", xtr, ytr, xte, yte)


def hypercube_dataset(seed: int = 0, classes: int = 10, dim: int = 40, samples: int = 2400) -> Dataset:
    """Synthetic vectors from scikit-learn's ``make_classification``: two Gaussian clusters per class
    on the vertices of a 16-dimensional hypercube, plus 8 redundant (linear combinations) and 16
    noise features. Unlike ``gaussians`` a class is not one blob, and unlike ``teacher`` the classes
    are not carved by a network: meta-training validates on it and never trains on it.
    """
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=samples, n_features=dim, n_informative=16, n_redundant=8, n_classes=classes,
        n_clusters_per_class=2, class_sep=1.5, random_state=seed,
    )
    xtr, ytr, xte, yte = _split(x.astype(np.float32), y.astype(np.int64), 0.25, seed)
    xtr, xte = _standardize(xtr, xte)
    return Dataset("hypercube", xtr, ytr, xte, yte)


def load_npz(path: str | Path) -> Dataset:
    """A user's local ``.npz`` with ``x_train, y_train, x_test, y_test`` (images or vectors).

    Images may be ``[N, H, W]`` or ``[N, H, W, 1]``; integer pixels are scaled; inputs are
    standardized by the training set's mean and std.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a key is missing or shapes do not agree; the message says which.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found (expected a local .npz with x_train, y_train, x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as raw:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in raw.files]
            if missing:
                raise ValueError(f"data file {path} lacks {missing}; it needs x_train, y_train, x_test, y_test (has {raw.files})")
            x_train, x_test = raw["x_train"], raw["x_test"]
            y_train, y_test = raw["y_train"].reshape(-1), raw["y_test"].reshape(-1)
    except ValueError as err:
        if str(err).startswith(f"data file {path}"):
            raise
        raise ValueError(f"data file {path} is not a readable .npz of plain numeric arrays ({type(err).__name__}); "
                         "save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"data file {path} is not a readable .npz ({type(err).__name__}); "
                         "save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)") from None
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"data file {path}: x and y lengths differ ({len(x_train)}/{len(y_train)} train, {len(x_test)}/{len(y_test)} test)")
    if x_train.shape[1:] != x_test.shape[1:] or x_train.ndim < 2:
        raise ValueError(f"data file {path}: x_train {x_train.shape} and x_test {x_test.shape} must be [N, ...] with the same example shape")
    if not (np.issubdtype(y_train.dtype, np.integer) and np.issubdtype(y_test.dtype, np.integer)):
        raise ValueError(f"data file {path}: labels must be integers, got {y_train.dtype} and {y_test.dtype}")
    if x_train.ndim == 4 and x_train.shape[-1] == 1:
        x_train, x_test = x_train[..., 0], x_test[..., 0]
    xtr, xte = _standardize(x_train.astype(np.float32), x_test.astype(np.float32))
    return Dataset(path.stem, xtr, y_train.astype(np.int64), xte, y_test.astype(np.int64))


#: Built-in dataset names for ``--data``.
BUILTIN = ("digits", "mnist1d", "gaussians", "teacher", "hypercube")


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """``digits``, ``mnist1d``, ``gaussians``, ``teacher``, ``hypercube`` or a path to a ``.npz`` file."""
    if name == "digits":
        return load_digits(seed)
    if name == "mnist1d":
        return load_mnist1d(seed)
    if name == "gaussians":
        return gaussian_mixture(seed)
    if name == "teacher":
        return teacher_dataset(seed)
    if name == "hypercube":
        return hypercube_dataset(seed)
    if name.endswith(".npz") or Path(name).exists():
        return load_npz(name)
    raise ValueError(f"unknown data {name!r}; use one of {BUILTIN} or a path to a local .npz file")
