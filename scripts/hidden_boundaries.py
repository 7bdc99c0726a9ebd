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

from lto_core.evaluation import start_population
from lto_core.meta_train import MetaTrainConfig
from lto_core.population import Population
from lto_core.step import StepGraph


def found_boundaries(graph: StepGraph, population: Population) -> list[int]:
    """Train the problems of ``population`` (one shape, boundaries hidden) through their streams;
    the boundaries each problem's optimizer marked."""
    params, opt, rngs = start_population(graph, population)
    with torch.no_grad():
        for task in range(population.tasks):
            for step in range(population.steps_per_task):
                x, y, source = population.training_batch(task, step, rngs, population.specs[0].batch_size)
                params = opt.step(params, population.grads(params, source, x, y))
    # Tensors are laid out tensor by tensor, copy by copy: every tensor of a copy shares its count.
    return opt.counters.boundaries.reshape(-1, population.size)[0].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a meta-training config (JSON), as for lto meta-train")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed, which draws its validation problems")
    args = parser.parse_args()
    with open(args.config) as f:
        config = MetaTrainConfig.from_dict(json.load(f))
    torch.manual_seed(args.seed)
    graph = StepGraph(config.network)
    if config.gate_init:
        graph.network.init_importance_gate(config.gate_init)
    for group in config.validation_groups(args.seed):
        population = Population(group)
        if population.boundaries != "auto":
            continue
        spec = group[0]
        found = found_boundaries(graph, population)
        print(f"{spec.data} {spec.stream} {spec.scenario} {spec.arch}, {population.tasks} tasks: "
              f"boundaries found per problem {found} (of {population.tasks - 1} changes)")


if __name__ == "__main__":
    main()
