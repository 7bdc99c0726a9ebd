"""A population trains its problems together and exactly as each would train alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from lto_core.evaluation import run_population
from lto_core.families import Family
from lto_core.population import Population
from lto_core.step import StepGraph

FAMILY = Family(data=("digits",), streams=("split",), scenarios=("task",), tasks=(2, 2), steps_per_task=(15, 15), lr=(3e-3, 1e-2))


@pytest.mark.parametrize("arch", ["mlp", "cnn", "transformer"])
def test_each_problem_of_a_population_trains_as_it_would_alone(arch):
    specs = replace(FAMILY, archs=(arch,)).sample_population(np.random.default_rng(0), 3)
    assert len({s.seed for s in specs}) == 3 and len({s.lr for s in specs}) == 3
    graph = StepGraph()
    graph.network.init_importance_gate(2.0)
    together = run_population(graph, specs)
    alone = [run_population(graph, [s])[0] for s in specs]
    for R, R1 in zip(together, alone):
        np.testing.assert_array_equal(R, R1)
    # the problems really differ (own splits, weights and batches) and learn their tasks (chance: 0.2)
    assert not np.array_equal(together[0], together[1])
    assert all(R[0, 0] > 0.4 for R in together)


def test_gradients_are_each_problems_own():
    population = Population(FAMILY.sample_population(np.random.default_rng(1), 2))
    params = [p.clone() for p in population.initial]
    x, y = population.batch(0, [np.random.default_rng(s.seed) for s in population.specs], 8)
    grads = population.grads(params, 0, x, y)
    for p, stream in enumerate(population.streams):
        model = population.model
        with torch.no_grad():
            for (_, w), stacked in zip(model.named_parameters(), params):
                w.copy_(stacked[p])
        classes = list(stream.tasks[0].classes)
        logits = model(x[p])
        mask = torch.full((logits.shape[-1],), -1e9)
        mask[classes] = 0.0
        torch.nn.functional.cross_entropy(logits + mask, y[p]).backward()
        for (_, w), g in zip(model.named_parameters(), grads):
            torch.testing.assert_close(w.grad, g[p], rtol=1e-5, atol=1e-7)
            w.grad = None


def test_problems_of_different_shapes_are_refused():
    a, b = FAMILY.sample(np.random.default_rng(0)), FAMILY.sample(np.random.default_rng(1))
    with pytest.raises(ValueError, match="must share one shape"):
        Population([a, replace(b, steps_per_task=a.steps_per_task + 1)])
    with pytest.raises(ValueError, match="at least one problem spec"):
        Population([])
