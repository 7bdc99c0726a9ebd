"""Meta-training throughput: problems and inner steps per CPU-minute of ``tbptt_step`` on populations.

Draws ``--shapes`` problem shapes from a meta-training config's family (tasks and steps per task
fixed by ``--tasks``/``--steps``, so every shape costs the same number of inner steps), and for each
``--population`` size trains that many problems of each shape together with truncated
backpropagation, timing CPU time of this process only (so other load on the machine does not count).
One torch thread, as ``lto meta-train`` runs.

    python scripts/meta_train_throughput.py --config configs/meta-train-error-long.json --population 1,16,32
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lto_core.meta_train import MetaTrainConfig, start_graph, tbptt_step
from lto_core.population import Population


def measure(config: MetaTrainConfig, groups: list, size: int) -> dict:
    """CPU seconds of one ``tbptt_step`` per shape on ``size`` problems; rates over all shapes."""
    graph = start_graph(config)
    outer = torch.optim.Adam(graph.network.parameters(), lr=config.outer_lr)
    cpu, problems, steps = 0.0, 0, 0
    for specs in groups:
        population = Population(specs[:size])
        start = time.process_time()
        tbptt_step(graph, outer, population, config)
        cpu += time.process_time() - start
        problems += population.size
        steps += population.size * population.tasks * population.steps_per_task
    return {"population": size, "cpu_seconds": round(cpu, 1), "problems_per_cpu_minute": round(problems / cpu * 60, 1),
            "problem_steps_per_cpu_second": round(steps / cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="meta-training config JSON (default: MetaTrainConfig())")
    parser.add_argument("--population", default="1,16", help="comma-separated population sizes")
    parser.add_argument("--shapes", type=int, default=3, help="problem shapes drawn from the family")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="steps per task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = MetaTrainConfig.from_dict(json.loads(args.config.read_text())) if args.config else MetaTrainConfig()
    sizes = [int(v) for v in args.population.split(",")]
    family = replace(config.family, tasks=(args.tasks, args.tasks), steps_per_task=(args.steps, args.steps))
    groups = [family.sample_population(np.random.default_rng([args.seed, i]), max(sizes)) for i in range(args.shapes)]
    for specs in groups:
        print(f"shape: {specs[0].data} {specs[0].stream} {specs[0].scenario} {specs[0].arch} {specs[0].arch_sizes}", flush=True)
    for size in sizes:
        print(json.dumps(measure(config, groups, size)), flush=True)


if __name__ == "__main__":
    main()
