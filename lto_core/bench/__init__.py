"""Benchmarks: continual-learning streams (``cl``), plain training (``train``), step speed
(``speed``) and a language model learning facts task after task (``knowledge``), with the
baselines side by side; the ``lto bench`` verbs are thin wrappers.

The runners take the optimizers as factories built by the caller (``lto_core`` never imports the
adapters), so any ``torch.optim.Optimizer`` can be benchmarked against any other.
"""

from lto_core.bench.cl import CLConfig, run_cl
from lto_core.bench.common import Method, Regularizer
from lto_core.bench.knowledge import KnowledgeConfig, run_knowledge
from lto_core.bench.speed import SpeedConfig, run_speed
from lto_core.bench.train import TrainConfig, run_train

__all__ = [
    "CLConfig",
    "KnowledgeConfig",
    "Method",
    "Regularizer",
    "SpeedConfig",
    "TrainConfig",
    "run_cl",
    "run_knowledge",
    "run_speed",
    "run_train",
]
