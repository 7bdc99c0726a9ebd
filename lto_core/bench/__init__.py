"""Benchmarks: continual-learning streams (``cl``), plain training (``train``) and step speed
(``speed``), with the baselines side by side; the ``lto bench`` verbs are thin wrappers.

The runners take the optimizers as factories built by the caller (``lto_core`` never imports the
adapters), so any ``torch.optim.Optimizer`` can be benchmarked against any other.
"""

from lto_core.bench.cl import CLConfig, run_cl
from lto_core.bench.common import Method, Regularizer
from lto_core.bench.speed import SpeedConfig, run_speed
from lto_core.bench.train import TrainConfig, run_train

__all__ = ["CLConfig", "Method", "Regularizer", "SpeedConfig", "TrainConfig", "run_cl", "run_speed", "run_train"]
