"""Meta-training problems whose boundaries the optimizer is not told, and gradual streams."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lto_core import evaluation
from lto_core.evaluation import run_population, validation_groups
from lto_core.families import Family, ProblemSpec, shape_key
from lto_core.meta_train import MetaTrainConfig, unroll
from lto_core.population import Population
from lto_core.step import StepGraph
from lto_core.streams import previous_task_probability

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = Family(data=("digits",), streams=("split",), scenarios=("task",), archs=("mlp",), widths=(32,), depths=(1, 1),
               tasks=(3, 3), steps_per_task=(80, 80), lr=(3e-3, 1e-2))
OLD_FIELDS = ("data", "stream", "scenario", "arch", "arch_sizes", "tasks", "steps_per_task", "lr", "batch_size", "seed")


def _digest(specs) -> str:
    rows = [[repr(s.lr) if k == "lr" else getattr(s, k) for k in OLD_FIELDS] for s in specs]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def test_families_without_the_new_options_draw_exactly_what_they_drew_before():
    """Recorded from the code before hidden boundaries and blends existed (commit 3c409ef)."""
    assert Family().sample(np.random.default_rng(0)) == ProblemSpec(
        data="teacher", stream="permuted", scenario="task", arch="cnn", arch_sizes={"channels": 8}, tasks=3,
        steps_per_task=335, lr=0.0019516030758660366, batch_size=32, seed=35492826)
    assert _digest([s for i in range(20) for s in Family().sample_population(np.random.default_rng([0, i]), 4)]) == "f18ecbc461cfeee2"
    population = MetaTrainConfig.from_dict(json.loads((CONFIGS / "meta-train-population.json").read_text()))
    assert _digest([s for i in range(20) for s in population.family.sample_population(np.random.default_rng([0, i]), 8)]) == "38d98dd379103519"
    assert _digest([s for g in population.validation_groups(0) for s in g]) == "b9229dcb734ed5da"
    assert _digest([s for g in MetaTrainConfig().validation_groups(0) for s in g]) == "0a49eb6ea26c4548"
    draws = [s for i in range(20) for s in Family().sample_population(np.random.default_rng([0, i]), 4)]
    assert all(s.boundaries == "manual" and s.blend_steps == 0 for s in draws)


def test_previous_task_probability_is_a_linear_blend():
    assert [previous_task_probability(j, 4) for j in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert previous_task_probability(0, 0) == 0.0
    with pytest.raises(ValueError, match="must be >= 0"):
        previous_task_probability(-1, 4)


def test_a_population_shares_boundary_mode_and_blend_and_draws_both_mixes():
    family = replace(SMALL, hidden_boundaries=0.5, gradual=0.5, blend_steps=(10, 40))
    populations = [family.sample_population(np.random.default_rng([1, i]), 3) for i in range(40)]
    assert all(len({shape_key(s) for s in specs}) == 1 for specs in populations)
    kinds = {(specs[0].boundaries, specs[0].blend_steps > 0) for specs in populations}
    assert kinds == {("manual", False), ("manual", True), ("auto", False), ("auto", True)}
    assert all(10 <= s[0].blend_steps <= 40 for s in populations if s[0].blend_steps)
    told = populations[0][0]
    with pytest.raises(ValueError, match="must share one shape"):
        Population([told, replace(told, seed=told.seed + 1, boundaries="auto" if told.boundaries == "manual" else "manual")])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"hidden_boundaries": 1.5}, r"hidden_boundaries is a probability and must be in \[0, 1\], got 1.5"),
        ({"gradual": 0.5}, r"blend_steps \[0, 0\] must be a range 1 <= low <= high below the shortest task"),
        ({"gradual": 0.5, "blend_steps": (10, 80)}, r"below the shortest task \(steps_per_task starts at 80\)"),
    ],
)
def test_bad_family_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        replace(SMALL, **options)


def test_bad_problem_options_are_named():
    spec = SMALL.sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="Invalid boundaries: 'never'"):
        replace(spec, boundaries="never")
    with pytest.raises(ValueError, match=r"blend_steps must be >= 0 and smaller than steps_per_task \(80\), got 80"):
        replace(spec, blend_steps=80)


def _recording(monkeypatch) -> list:
    """Every UnrolledLTO that evaluation and meta-training build, counting its task_boundary() calls."""
    made = []

    class Recording(evaluation.UnrolledLTO):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.told = 0
            made.append(self)

        def task_boundary(self):
            self.told += 1
            super().task_boundary()

    monkeypatch.setattr(evaluation, "UnrolledLTO", Recording)
    return made


def test_hidden_problems_are_never_told_and_find_boundaries_themselves(monkeypatch):
    made = _recording(monkeypatch)
    graph = StepGraph()
    graph.network.init_importance_gate(2.0)
    told = SMALL.sample_population(np.random.default_rng(0), 3)
    hidden = [replace(s, boundaries="auto") for s in told]
    run_population(graph, told)
    run_population(graph, hidden)
    with_calls, without = made
    assert not with_calls.counters.auto and with_calls.told == 2
    assert (with_calls.counters.boundaries == 2).all()
    assert without.counters.auto and without.told == 0
    # counters are laid out tensor by tensor, copy by copy; all tensors of a problem share its detected boundaries
    found = without.counters.boundaries.reshape(-1, 3)
    assert (found == found[0]).all() and found.sum() > 0


def test_hidden_gradual_problems_train_together_exactly_as_alone():
    graph = StepGraph()
    graph.network.init_importance_gate(2.0)
    specs = [replace(s, boundaries="auto", blend_steps=30) for s in SMALL.sample_population(np.random.default_rng(0), 3)]
    together = run_population(graph, specs)
    for spec, R in zip(specs, together):
        np.testing.assert_array_equal(run_population(graph, [spec])[0], R)


def test_meta_training_on_hidden_problems_gets_a_meta_gradient_without_telling_them(monkeypatch):
    made = _recording(monkeypatch)
    torch.manual_seed(0)
    graph = StepGraph()
    graph.network.init_importance_gate(2.0)
    config = MetaTrainConfig(truncation=20, query_every=5, query_batch=16)
    population = Population([replace(s, boundaries="auto") for s in SMALL.sample_population(np.random.default_rng(0), 3)])
    grads = []

    def collect(meta: torch.Tensor) -> None:
        grads.append(torch.autograd.grad(meta, list(graph.network.parameters()), allow_unused=True))

    loss = unroll(graph, population, config, collect)
    assert np.isfinite(loss) and made[-1].told == 0 and made[-1].counters.boundaries.sum() > 0
    assert grads and any(g is not None and g.abs().sum() > 0 for gs in grads for g in gs)


def test_gradual_batches_blend_linearly_and_deterministically():
    spec = replace(SMALL.sample(np.random.default_rng(2)), blend_steps=10)
    population = Population([spec, replace(spec, seed=spec.seed + 1)])
    rngs = [np.random.default_rng(s.seed) for s in population.specs]
    rows = [{(x.tobytes(), int(y)) for x, y in zip(t.x_train, t.y_train)} for t in population.streams[0].tasks]
    shares = []
    for step in range(12):
        x, y, source = population.training_batch(1, step, rngs, 2000)
        if step >= 10:
            assert source == 1  # after the blend: plain batches of the current task
            continue
        assert source.shape == (2, 2000) and set(source.unique().tolist()) <= {0, 1}
        shares.append(float((source == 0).double().mean()))
        # every example is really from the task it is tagged with (problem 0's own split)
        assert all((xe.numpy().tobytes(), int(ye)) in rows[int(t)] for xe, ye, t in zip(x[0, :200], y[0, :200], source[0, :200]))
    np.testing.assert_allclose(shares, [1.0 - j / 10 for j in range(10)], atol=0.03)
    assert shares[0] == 1.0
    again = population.training_batch(1, 3, [np.random.default_rng(s.seed) for s in population.specs], 64)
    first = population.training_batch(1, 3, [np.random.default_rng(s.seed) for s in population.specs], 64)
    assert all(torch.equal(a, b) for a, b in zip(again, first))
    # the first task has no previous task: no blend
    assert population.training_batch(0, 0, rngs, 8)[2] == 0


def test_each_example_is_scored_under_its_own_tasks_mask():
    spec = replace(SMALL.sample(np.random.default_rng(3)), blend_steps=10)
    population = Population([spec])
    params = list(population.initial)
    x, y, source = population.training_batch(1, 5, [np.random.default_rng(0)], 32)
    assert 0 < int((source == 0).sum()) < 32
    model = population.model
    with torch.no_grad():
        for w, stacked in zip(model.parameters(), params):
            w.copy_(stacked[0])
        logits = model(x[0])
        mask = torch.full_like(logits, -1e9)
        for k, t in enumerate(source[0].tolist()):
            mask[k, list(population.streams[0].tasks[t].classes)] = 0.0
        expected = torch.nn.functional.cross_entropy(logits + mask, y[0])
    torch.testing.assert_close(population.loss(params, source, x, y), expected)


def test_validation_hides_the_boundaries_of_its_last_groups():
    family = replace(MetaTrainConfig().validation_family, hidden_boundaries=0.5)
    groups = validation_groups(family, 8, 2, seed=0)
    assert [g[0].boundaries for g in groups] == ["manual"] * 4 + ["auto"] * 4
    assert {g[0].stream for g in groups[:4]} == {g[0].stream for g in groups[4:]} == set(family.streams)
    # apart from the boundary mode, the same problems as a family that hides nothing
    plain = validation_groups(replace(family, hidden_boundaries=0.0), 8, 2, seed=0)
    assert [[replace(s, boundaries="manual") for s in g] for g in groups] == plain


def test_the_task_free_config_round_trips_and_mixes_hidden_and_gradual_problems():
    doc = json.loads((CONFIGS / "meta-train-task-free.json").read_text())
    config = MetaTrainConfig.from_dict(doc)
    assert MetaTrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.family.hidden_boundaries == 0.5 and config.family.gradual > 0 and config.family.blend_steps[0] >= 1
    assert 0 < config.validation_family.hidden_boundaries < 1
    groups = config.validation_groups(0)
    assert {g[0].boundaries for g in groups} == {"manual", "auto"}
    draws = [config.family.sample_population(np.random.default_rng([0, i]), 2)[0] for i in range(30)]
    assert {s.boundaries for s in draws} == {"manual", "auto"} and {s.blend_steps > 0 for s in draws} == {True, False}


def test_hidden_boundaries_script_counts_what_the_start_finds(tmp_path):
    """scripts/hidden_boundaries.py, in its own process: one line per hidden validation group, each
    problem's count of the boundaries it marked itself, never more than a few per change."""
    config = {
        "validation_family": {"data": ["digits"], "streams": ["split"], "scenarios": ["task"], "archs": ["mlp"],
                              "tasks": [2, 2], "steps_per_task": [120, 120], "hidden_boundaries": 0.5},
        "validation_problems": 4, "validation_population": 2, "gate_init": 2.0,
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    script = Path(__file__).resolve().parents[1] / "scripts" / "hidden_boundaries.py"
    result = subprocess.run([sys.executable, str(script), "--config", str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, result.stdout  # half of the 4 groups hide their boundaries
    for line in lines:
        match = re.fullmatch(r"digits split task mlp, 2 tasks: boundaries found per problem \[(\d+), (\d+)\] \(of 1 changes\)", line)
        assert match, line
        assert all(int(n) <= 3 for n in match.groups()), line
