"""Evaluating a step function on whole continual-learning problems, without meta-gradients.

Meta-training keeps the network that scores best here (:func:`validate`), and the starting gate
strength and pull are chosen here (:func:`gate_sweep`). "Validation" in this module means ACC on held-out
problems; the ONNX parity check is :mod:`lto_export.validate`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from lto_core.families import Family, ProblemSpec
from lto_core.metrics import average_accuracy, backward_transfer
from lto_core.network import NetworkConfig
from lto_core.population import Population
from lto_core.step import StepGraph
from lto_core.unroll import UnrolledLTO

#: Seed offset of validation problems, far from the training iterations' keys.
VALIDATION_KEY = 1_000_003


def start_population(graph: StepGraph, population: Population) -> tuple[list[torch.Tensor], UnrolledLTO, list[np.random.Generator]]:
    """Fresh parameters (copies of the initial ones), an :class:`UnrolledLTO` over them and each
    problem's batch generator (from its seed).

    Problems that hide their boundaries get ``boundaries="auto"``: each detects its own task
    shifts, and its caller never calls ``task_boundary()`` (see :func:`run_population`)."""
    params = [p.clone() for p in population.initial]
    opt = UnrolledLTO(graph, [tuple(p.shape[1:]) for p in params], lr=population.lrs, copies=population.size,
                      boundaries=population.boundaries)
    return params, opt, [np.random.default_rng(s.seed) for s in population.specs]


def run_population(graph: StepGraph, specs: Sequence[ProblemSpec]) -> list[np.ndarray]:
    """Train fresh models through the streams of ``specs`` (one shape) with ``graph``; return each
    problem's accuracy matrix ``R`` (``R[i, j]``: accuracy on task ``j`` after task ``i``).

    The optimizer is told where each task ends only when the problems' ``boundaries`` are
    ``"manual"``; ``R`` is measured at the true task ends either way, and a gradual stream's
    batches blend each task into the next (:meth:`Population.training_batch`)."""
    return train_population(graph, specs)[0]


def train_population(graph: StepGraph, specs: Sequence[ProblemSpec]) -> tuple[list[np.ndarray], UnrolledLTO]:
    """:func:`run_population`, and the optimizer it trained with (its counters say, for example,
    how many boundaries each problem marked itself)."""
    population = Population(specs)
    params, opt, rngs = start_population(graph, population)
    tasks = population.tasks
    R = np.zeros((population.size, tasks, tasks))
    with torch.no_grad():
        for i in range(tasks):
            if i and population.boundaries == "manual":
                opt.task_boundary()
            for step in range(population.steps_per_task):
                x, y, source = population.training_batch(i, step, rngs, population.specs[0].batch_size)
                params = opt.step(params, population.grads(params, source, x, y))
            R[:, i] = np.stack([population.accuracies(params, j) for j in range(tasks)], axis=1)
    return list(R), opt


def validation_groups(family: Family, groups: int, size: int, seed: int) -> list[list[ProblemSpec]]:
    """The held-out validation problems of a run (fixed by the seed): ``groups`` populations of
    ``size`` problems of one shape each.

    Stratified: group ``i`` takes data source ``i mod |data|`` and stream kind
    ``(i div |data|) mod |streams|``, so every source and kind is validated evenly, and the last
    ``round(hidden_boundaries * groups)`` groups hide their boundaries (with ``groups`` a multiple
    of ``2 |data| |streams|`` and ``hidden_boundaries = 0.5``, every source and kind is validated
    told and hidden); the rest, a gradual blend included, is drawn from ``(seed, i)``.
    """
    hidden = round(family.hidden_boundaries * groups)
    drawn = replace(family, hidden_boundaries=0.0)
    out = []
    for i in range(groups):
        specs = drawn.sample_population(np.random.default_rng([seed, VALIDATION_KEY, i]), size)
        data = family.data[i % len(family.data)]
        stream = family.streams[(i // len(family.data)) % len(family.streams)]
        boundaries = "auto" if i >= groups - hidden else "manual"
        out.append([replace(s, data=data, stream=stream, boundaries=boundaries) for s in specs])
    return out


def validate(graph: StepGraph, groups: Sequence[Sequence[ProblemSpec]]) -> dict[str, float]:
    """Mean ACC and BWT of ``graph`` over the validation problems, each problem counting once."""
    mats = [R for specs in groups for R in run_population(graph, specs)]
    return {"acc": float(np.mean([average_accuracy(R) for R in mats])), "bwt": float(np.mean([backward_transfer(R) for R in mats]))}


def parse_settings(text: str) -> list[tuple[float, float]]:
    """Hand-set settings written ``"S,S:P,..."`` as ``(strength, pull)`` pairs (:func:`hand_set_graph`):
    ``S`` is ``(S, 0)``, a gate alone; ``S:P`` adds a pull. Empty items are skipped.

    Raises:
        ValueError: an item that is not ``S`` or ``S:P`` with numbers, naming the item.
    """
    pairs = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        try:
            numbers = [float(v) for v in item.split(":")]
        except ValueError:
            numbers = []
        if not 1 <= len(numbers) <= 2:
            raise ValueError(f"{item!r} is not STRENGTH or STRENGTH:PULL with numbers, such as 2 or 0:1")
        pairs.append((numbers[0], numbers[1] if len(numbers) == 2 else 0.0))
    return pairs


def hand_set_graph(network: NetworkConfig, strength: float, pull: float = 0.0, offset: float = 0.0) -> StepGraph:
    """A step whose network emits gate slope ``strength``, pull ``pull`` and gate offset ``offset``
    for every token (:meth:`TokenNetwork.init_importance_gate`; ``0, 0, 0`` is the zero head,
    exactly Adam); its encoder's weights come from torch's generator."""
    graph = StepGraph(network)
    graph.network.init_importance_gate(strength, pull, offset)
    return graph


def gate_sweep(settings: Sequence[tuple[float, float]], network: NetworkConfig,
               groups: Sequence[Sequence[ProblemSpec]]) -> dict[tuple[float, float], dict[str, float]]:
    """Validation ACC and BWT of importance-gated Adam with EWC's pull
    (:meth:`TokenNetwork.init_importance_gate`) at each ``(strength, pull)``: how meta-training's
    start (``gate_init``, ``pull_init``) is chosen, with no held-out data."""
    scores = {}
    for strength, pull in settings:
        scores[(float(strength), float(pull))] = validate(hand_set_graph(network, strength, pull).eval(), groups)
    return scores
