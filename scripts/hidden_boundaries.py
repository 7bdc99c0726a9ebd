"""How many task changes the shift detector finds in a meta-training run's hidden validation problems.

Meta-training validates on groups of problems; those that hide their task boundaries run with
``boundaries="auto"`` and are never told where a task ends (``hidden_boundaries`` in the config).
This trains each hidden group with the run's starting network (``gate_init``), exactly as
validation does, and prints, per problem, the task boundaries its optimizer marked itself out of
the stream's changes. A problem that marks none trains exactly as with Adam and gives
meta-training nothing to learn about task-free streams.

    python scripts/hidden_boundaries.py --config configs/meta-train-task-free.json
"""

from __future__ import annotations

import argparse
import json

import torch

from lto_core.evaluation import train_population
from lto_core.meta_train import MetaTrainConfig, start_graph
from lto_core.step import StepGraph


def found_boundaries(graph: StepGraph, specs: list) -> list[int]:
    """Train the problems of ``specs`` (one shape, boundaries hidden) through their streams, as
    validation does; the boundaries each problem's optimizer marked."""
    _, opt = train_population(graph, specs)
    # Tensors are laid out tensor by tensor, copy by copy: every tensor of a copy shares its count.
    return opt.counters.boundaries.reshape(-1, len(specs))[0].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a meta-training config (JSON), as for lto meta-train")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed, which draws its validation problems")
    args = parser.parse_args()
    with open(args.config) as f:
        config = MetaTrainConfig.from_dict(json.load(f))
    torch.manual_seed(args.seed)
    graph = start_graph(config)
    for group in config.validation_groups(args.seed):
        spec = group[0]
        if spec.boundaries != "auto":
            continue
        found = found_boundaries(graph, group)
        print(f"{spec.data} {spec.stream} {spec.scenario} {spec.arch}, {spec.tasks} tasks: "
              f"boundaries found per problem {found} (of {spec.tasks - 1} changes)")


if __name__ == "__main__":
    main()
