"""Task families: distributions over continual-learning problems to meta-train and validate on.

A :class:`Family` says which datasets, stream kinds, scenarios, architectures, stream lengths,
steps per task and learning rates may be drawn; :meth:`Family.sample` draws one
:class:`ProblemSpec`, and :func:`build_problem` turns it into a stream and a fresh model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from torch import nn

from lto_core.data import Dataset, load_dataset
from lto_core.models import make_model
from lto_core.streams import Stream, make_stream


@dataclass(frozen=True)
class ProblemSpec:
    """One continual-learning problem: data, stream, model and training length."""

    data: str
    stream: str
    scenario: str
    arch: str
    arch_sizes: dict = field(default_factory=dict)
    tasks: int = 4
    steps_per_task: int = 100
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class Family:
    """A distribution over :class:`ProblemSpec`; ranges are inclusive, ``lr`` is log-uniform."""

    data: tuple[str, ...] = ("digits", "gaussians", "teacher")
    streams: tuple[str, ...] = ("split", "permuted", "remapped")
    scenarios: tuple[str, ...] = ("task", "domain")
    archs: tuple[str, ...] = ("mlp", "cnn", "transformer")
    tasks: tuple[int, int] = (3, 6)
    steps_per_task: tuple[int, int] = (40, 400)
    lr: tuple[float, float] = (3e-4, 3e-3)
    batch_size: int = 32

    def sample(self, rng: np.random.Generator) -> ProblemSpec:
        """Draw one problem; ``rng`` alone decides it."""
        data = str(rng.choice(self.data))
        stream = str(rng.choice(self.streams))
        arch = str(rng.choice(self.archs))
        if arch == "mlp":
            sizes = {"width": int(rng.choice([32, 64])), "depth": int(rng.integers(1, 4))}
        elif arch == "cnn":
            sizes = {"channels": int(rng.choice([8, 16]))}
        else:
            sizes = {"dim": int(rng.choice([16, 32]))}
        lr = float(math.exp(rng.uniform(math.log(self.lr[0]), math.log(self.lr[1]))))
        return ProblemSpec(
            data=data,
            stream=stream,
            scenario=str(rng.choice(self.scenarios)),
            arch=arch,
            arch_sizes=sizes,
            tasks=int(rng.integers(self.tasks[0], self.tasks[1] + 1)),
            steps_per_task=int(rng.integers(self.steps_per_task[0], self.steps_per_task[1] + 1)),
            lr=lr,
            batch_size=self.batch_size,
            seed=int(rng.integers(0, 2**31 - 1)),
        )

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> "Family":
        """Inverse of :meth:`to_dict` (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})


@lru_cache(maxsize=8)
def _dataset(name: str) -> Dataset:
    return load_dataset(name, seed=0)


def build_problem(spec: ProblemSpec) -> tuple[Stream, nn.Module]:
    """The stream and a freshly initialized model (weights from ``spec.seed``) of ``spec``."""
    data = _dataset(spec.data)
    stream = make_stream(data, spec.stream, spec.scenario, spec.tasks, seed=spec.seed)
    model = make_model(spec.arch, stream.input_shape, stream.num_outputs, seed=spec.seed, **spec.arch_sizes)
    return stream, model
