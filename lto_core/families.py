"""Task families: distributions over continual-learning problems to meta-train and validate on.

A :class:`Family` says which datasets, stream kinds, scenarios, architectures and sizes, stream
lengths, steps per task and learning rates may be drawn, and how often a problem hides its task
boundaries from the optimizer or blends its tasks gradually; :meth:`Family.sample` draws one
:class:`ProblemSpec`, :meth:`Family.sample_population` a set of problems of one shape that
differ in seeds and learning rates (trained together, see :mod:`lto_core.population`), and
:func:`build_problem` turns a spec into a stream and a fresh model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import numpy as np
from torch import nn

from lto_core.data import Dataset, load_dataset
from lto_core.models import make_model
from lto_core.streams import Stream, make_stream
from lto_runtime.state import check_boundaries


@dataclass(frozen=True)
class ProblemSpec:
    """One continual-learning problem: data, stream, model and training length, and what the
    optimizer is told.

    ``boundaries`` is how the optimizer learns where tasks end: ``"manual"``, it is told
    (``task_boundary()`` at the end of every task); ``"auto"``, never (it runs with
    ``boundaries="auto"`` and detects shifts itself). ``blend_steps = N > 0`` makes the stream
    gradual: during the first ``N`` steps of every task after the first, each training example
    comes from the previous task with probability
    :func:`~lto_core.streams.previous_task_probability` ``(j, N)`` at step ``j``.
    Evaluation (the accuracy matrix, the meta-loss) always uses the true task ends.
    """

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
    boundaries: str = "manual"
    blend_steps: int = 0

    def __post_init__(self) -> None:
        check_boundaries(self.boundaries)
        if not 0 <= self.blend_steps < self.steps_per_task:
            raise ValueError(
                f"blend_steps must be >= 0 and smaller than steps_per_task ({self.steps_per_task}), got {self.blend_steps}: "
                "a blend into a task must end before the task does"
            )

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def shape_key(spec: ProblemSpec) -> tuple:
    """What problems trained together must share: everything but the seed and the learning rate
    (boundary mode and blend length included: the population is stepped and told as one)."""
    return (spec.data, spec.stream, spec.scenario, spec.arch, tuple(sorted(spec.arch_sizes.items())),
            spec.tasks, spec.steps_per_task, spec.batch_size, spec.boundaries, spec.blend_steps)


@dataclass(frozen=True)
class Family:
    """A distribution over :class:`ProblemSpec`; ranges are inclusive, ``lr`` is log-uniform.

    ``widths``/``depths`` size the MLPs, ``channels`` the CNNs, ``dims`` the transformers.

    ``hidden_boundaries`` is the probability that a problem hides its task boundaries (its
    optimizer runs with ``boundaries="auto"``), ``gradual`` the probability that its tasks blend
    into each other over a number of steps drawn from ``blend_steps`` (see :class:`ProblemSpec`).
    Both are drawn after everything else, and only when their probability is above 0, so a family
    that leaves them at 0 draws exactly the problems it drew before they existed.

    Raises:
        ValueError: a probability outside ``[0, 1]``, or a ``gradual`` family whose blends are not
            shorter than its shortest task.
    """

    data: tuple[str, ...] = ("digits", "gaussians", "teacher")
    streams: tuple[str, ...] = ("split", "permuted", "remapped")
    scenarios: tuple[str, ...] = ("task", "domain", "class")
    archs: tuple[str, ...] = ("mlp", "cnn", "transformer")
    tasks: tuple[int, int] = (3, 10)
    steps_per_task: tuple[int, int] = (200, 2000)
    lr: tuple[float, float] = (3e-4, 3e-3)
    batch_size: int = 32
    widths: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, int] = (1, 4)
    channels: tuple[int, ...] = (8, 16)
    dims: tuple[int, ...] = (16, 32)
    hidden_boundaries: float = 0.0
    gradual: float = 0.0
    blend_steps: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        for name in ("hidden_boundaries", "gradual"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {getattr(self, name)}")
        low, high = self.blend_steps
        if self.gradual and not 1 <= low <= high < self.steps_per_task[0]:
            raise ValueError(
                f"blend_steps {list(self.blend_steps)} must be a range 1 <= low <= high below the shortest task "
                f"(steps_per_task starts at {self.steps_per_task[0]}) when gradual is above 0"
            )

    def sample(self, rng: np.random.Generator) -> ProblemSpec:
        """Draw one problem; ``rng`` alone decides it."""
        data = str(rng.choice(self.data))
        stream = str(rng.choice(self.streams))
        arch = str(rng.choice(self.archs))
        if arch == "mlp":
            sizes = {"width": int(rng.choice(self.widths)), "depth": int(rng.integers(self.depths[0], self.depths[1] + 1))}
        elif arch == "cnn":
            sizes = {"channels": int(rng.choice(self.channels))}
        else:
            sizes = {"dim": int(rng.choice(self.dims))}
        spec = ProblemSpec(
            data=data,
            stream=stream,
            scenario=str(rng.choice(self.scenarios)),
            arch=arch,
            arch_sizes=sizes,
            tasks=int(rng.integers(self.tasks[0], self.tasks[1] + 1)),
            steps_per_task=int(rng.integers(self.steps_per_task[0], self.steps_per_task[1] + 1)),
            lr=self._sample_lr(rng),
            batch_size=self.batch_size,
            seed=int(rng.integers(0, 2**31 - 1)),
        )
        # After every other draw and only when asked for, so families without them draw as before.
        if self.hidden_boundaries and rng.random() < self.hidden_boundaries:
            spec = replace(spec, boundaries="auto")
        if self.gradual and rng.random() < self.gradual:
            spec = replace(spec, blend_steps=int(rng.integers(self.blend_steps[0], self.blend_steps[1] + 1)))
        return spec

    def sample_population(self, rng: np.random.Generator, size: int) -> list[ProblemSpec]:
        """``size`` problems of one drawn shape (:func:`shape_key`: boundary mode and blend
        included), each with its own seed and learning rate; ``rng`` alone decides them."""
        first = self.sample(rng)
        rest = [replace(first, lr=self._sample_lr(rng), seed=int(rng.integers(0, 2**31 - 1))) for _ in range(size - 1)]
        return [first, *rest]

    def _sample_lr(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.lr[0]), math.log(self.lr[1]))))

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
