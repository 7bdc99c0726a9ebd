"""Meta-training on tiny real problems: determinism, resume, checkpoints, config errors, the CLI."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lto_core.checkpoint import load_checkpoint, save_checkpoint
from lto_core.evaluation import gate_sweep, parse_settings, start_population, validate
from lto_core.families import Family, shape_key
from lto_core.meta_train import MetaTrainConfig, meta_train, out_of_time, start_graph, unroll
from lto_core.population import Population, soft_error
from lto_core.step import StepGraph
from lto_export.cli import main

TINY_FAMILY = {"data": ["digits"], "streams": ["split"], "scenarios": ["task"], "archs": ["mlp"], "tasks": [2, 2], "steps_per_task": [12, 12]}


def _config(**overrides) -> MetaTrainConfig:
    doc = {
        "iterations": 4,
        "family": TINY_FAMILY,
        "validation_family": {**TINY_FAMILY, "steps_per_task": [15, 15]},
        "population": 2,
        "validation_problems": 1,
        "validation_population": 2,
        "validate_every": 2,
        "truncation": 6,
        "query_every": 3,
        "query_batch": 16,
        **overrides,
    }
    return MetaTrainConfig.from_dict(json.loads(json.dumps(doc)))


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_same_seed_same_network_and_the_network_moves(tmp_path):
    config = _config()
    first = meta_train(tmp_path / "a", config, seed=3)
    second = meta_train(tmp_path / "b", config, seed=3)
    a, b = _weights(tmp_path / "a" / "last.safetensors"), _weights(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["meta_loss"] for h in first.history] == [h["meta_loss"] for h in second.history]
    assert first.iteration == 4 and len(first.history) == 4
    torch.manual_seed(3)  # meta_train's own start: seeded init, then the importance gate
    start = StepGraph(config.network)
    start.network.init_importance_gate(config.gate_init)
    assert any(not torch.equal(v, a[k]) for k, v in start.state_dict().items())


@pytest.mark.parametrize("estimator", ["tbptt", "es"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, estimator):
    config = _config(estimator=estimator, es_directions=1)
    meta_train(tmp_path / "whole", config, seed=1)

    class Interrupt(Exception):
        pass

    def stop_after_two(progress, _loss):
        if progress.iteration == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        meta_train(tmp_path / "cut", config, seed=1, on_iteration=stop_after_two)
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["iteration"] == 2
    resumed = meta_train(tmp_path / "cut", config, seed=1, resume=True)
    assert resumed.iteration == 4
    whole, cut = _weights(tmp_path / "whole" / "last.safetensors"), _weights(tmp_path / "cut" / "last.safetensors")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_minutes_stops_before_an_iteration_that_would_not_fit(tmp_path):
    assert not out_of_time(elapsed=50.0, longest=9.0, minutes=1.0)
    assert out_of_time(elapsed=50.0, longest=11.0, minutes=1.0)

    def slow(progress, _loss):  # iterations of over 2 s: a second one cannot fit in 3 s
        time.sleep(2.0)

    progress = meta_train(tmp_path / "run", _config(), seed=0, minutes=3.0 / 60.0, on_iteration=slow)
    assert progress.iteration == 1
    resumed = meta_train(tmp_path / "run", _config(), seed=0, resume=True)
    assert resumed.iteration == 4


def test_resume_refuses_another_seed_or_config(tmp_path):
    meta_train(tmp_path, _config(iterations=1), seed=0)
    with pytest.raises(ValueError, match="another seed or config"):
        meta_train(tmp_path, _config(iterations=1), seed=5, resume=True)
    with pytest.raises(ValueError, match="another seed or config"):
        meta_train(tmp_path, _config(iterations=1, outer_lr=1e-2), seed=0, resume=True)


def test_a_run_recorded_before_the_task_free_options_resumes(tmp_path):
    config = _config(iterations=2)
    meta_train(tmp_path, _config(iterations=1), seed=0)
    path = tmp_path / "progress.json"
    doc = json.loads(path.read_text())
    for family in ("family", "validation_family"):
        for key in ("hidden_boundaries", "gradual", "blend_steps"):
            del doc["config"][family][key]
    doc["config"]["iterations"] = 2
    path.write_text(json.dumps(doc))
    assert meta_train(tmp_path, config, seed=0, resume=True).iteration == 2
    with pytest.raises(ValueError, match="another seed or config"):
        meta_train(tmp_path, _config(iterations=2, family={**TINY_FAMILY, "hidden_boundaries": 0.5}), seed=0, resume=True)


def test_validation_records_baselines_and_best_checkpoint_carries_provenance(tmp_path):
    progress = meta_train(tmp_path, _config(outer_lr=1e-2), seed=0, command="lto meta-train --test")
    assert set(progress.baseline) == {"acc", "bwt"} and set(progress.initial) == {"acc", "bwt"}
    validated = [h for h in progress.history if "val_acc" in h]
    assert [h["iteration"] for h in validated] == [2, 4]
    assert progress.best_iteration in (2, 4) and progress.best_acc > progress.initial["acc"]
    graph, record = load_checkpoint(tmp_path / "best")
    assert record["meta_trained"] is True and record["command"] == "lto meta-train --test"
    assert record["seed"] == 0 and record["iteration"] == progress.best_iteration
    assert record["validation_acc"] == round(progress.best_acc, 4)
    assert record["adam_validation_acc"] == round(progress.baseline["acc"], 4)


def test_checkpoint_names_with_dots_keep_them(tmp_path):
    """``gate0.3`` and ``gate0.6`` are two checkpoints, not one file ``gate0.safetensors`` written twice;
    a checkpoint loads by its name, its ``.safetensors`` or its ``.json``."""
    from lto_core.evaluation import hand_set_graph

    for strength in (0.3, 0.6):
        written = save_checkpoint(hand_set_graph(MetaTrainConfig().network, strength), tmp_path / f"gate{strength}", {"meta_trained": False})
        assert written == tmp_path / f"gate{strength}.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate0.3.json", "gate0.3.safetensors", "gate0.6.json", "gate0.6.safetensors"]
    for name in ("gate0.6", "gate0.6.safetensors", "gate0.6.json"):
        assert load_checkpoint(tmp_path / name)[0].network.out.bias[1].item() == pytest.approx(0.6)


def test_no_best_checkpoint_unless_validation_beats_the_start(tmp_path):
    progress = meta_train(tmp_path, _config(outer_lr=0.0), seed=0)
    assert progress.best_iteration == -1
    assert not (tmp_path / "best.safetensors").exists()
    assert all(h["val_acc"] == progress.initial["acc"] for h in progress.history if "val_acc" in h)


def test_soft_error_is_the_expected_error_rate():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0], [-10.0, 10.0]])
    y = torch.tensor([0, 0, 0])
    # sampled-prediction error rates 0.5, ~0 and ~1
    assert soft_error(logits, y).item() == pytest.approx((0.5 + 0.0 + 1.0) / 3, abs=1e-6)


def test_error_objective_trains_and_differs_from_cross_entropy(tmp_path):
    ce = meta_train(tmp_path / "ce", _config(iterations=1, validate_every=5), seed=0)
    err = meta_train(tmp_path / "err", _config(iterations=1, validate_every=5, query_loss="error"), seed=0)
    assert 0.0 <= err.history[0]["meta_loss"] <= 1.0
    assert err.history[0]["meta_loss"] != ce.history[0]["meta_loss"]


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"query_loss": "mse"}, r"query_loss 'mse' is not one of \['ce', 'error'\]"),
        ({"iteratons": 3}, r"unknown meta-training config keys \['iteratons'\]"),
        ({"estimator": "pes"}, r"estimator 'pes' is not one of \['tbptt', 'es'\]"),
        ({"population": 0}, r"population must be at least 1, got 0"),
        ({"meta_loss": "area"}, r"meta_loss 'area' is not one of \['ramp', 'end'\]"),
        ({"meta_loss": "end"}, r'use estimator "es" with it'),
    ],
)
def test_bad_config_is_named(doc, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainConfig.from_dict(doc)


def test_cli_meta_train_writes_a_run_and_reports(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(_config(iterations=2).to_dict()))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["meta-train", "--out", str(out), "--config", str(config), "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "iterations 2/2" in result.output and "validation (held-out problems): Adam ACC" in result.output
    resume = json.loads((out / "progress.json").read_text())["checkpoint"]
    for name in ("last.safetensors", "last.json", f"{resume}.safetensors", f"{resume}-outer.safetensors"):
        assert (out / name).is_file()
    again = CliRunner().invoke(main, ["meta-train", "--out", str(out), "--config", str(config), "--seed", "2", "--resume"])
    assert again.exit_code == 0 and "iterations 2/2" in again.output
    assert Family.from_dict(json.loads((out / "progress.json").read_text())["config"]["family"]).archs == ("mlp",)


def _gate_sweep_cli(tmp_path, *args: str):
    """``lto gate-sweep --config`` (the tiny config of :func:`_config`) with ``args``: the config and the result."""
    config = _config()
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config.to_dict()))
    return config, CliRunner().invoke(main, ["gate-sweep", "--config", str(path), *args])


def test_gate_sweep_zero_is_adam_and_the_cli_names_the_best(tmp_path):
    config, result = _gate_sweep_cli(tmp_path, "--strengths", "0,4")
    assert result.exit_code == 0, result.output
    scores = gate_sweep([(0.0, 0.0), (4.0, 0.0)], config.network, config.validation_groups(0))
    adam = validate(StepGraph(config.network), config.validation_groups(0))  # zero head: exactly Adam
    assert scores[(0.0, 0.0)] == adam and scores[(4.0, 0.0)] != adam
    best = max(scores, key=lambda k: scores[k]["acc"])
    assert f"best: gate_init {best[0]:g} (ACC {scores[best]['acc']:.4f})" in result.output
    _, bad = _gate_sweep_cli(tmp_path, "--strengths", "0,x")
    assert bad.exit_code == 2 and "STRENGTH or STRENGTH:PULL" in bad.output and "'x'" in bad.output
    _, bad = _gate_sweep_cli(tmp_path, "--strengths", "0:1:2")
    assert bad.exit_code == 2 and "STRENGTH or STRENGTH:PULL" in bad.output


def test_gate_sweep_with_a_pull_validates_the_gate_plus_ewc_pull(tmp_path):
    """``S:P`` rows are the hand-set network with gate ``S`` and pull ``P``; the pull changes the
    trajectory (it acts after the first boundary) and the row is labelled as given."""
    config, result = _gate_sweep_cli(tmp_path, "--strengths", "0,0:1", "--seeds", "0")
    assert result.exit_code == 0, result.output
    scores = gate_sweep([(0.0, 0.0), (0.0, 1.0)], config.network, config.validation_groups(0))
    assert scores[(0.0, 1.0)] != scores[(0.0, 0.0)]
    row = next(line for line in result.output.splitlines() if line.strip().startswith("0:1 "))
    assert row.split()[1] == f"{scores[(0.0, 1.0)]['acc']:.4f}"


def test_settings_parse_gates_and_pulls_and_name_a_bad_item():
    assert parse_settings("0, 2,0:1,,8:0.5") == [(0.0, 0.0), (2.0, 0.0), (0.0, 1.0), (8.0, 0.5)]
    for bad in ("0,x", "1:2:3", "2:y"):
        with pytest.raises(ValueError, match="STRENGTH or STRENGTH:PULL"):
            parse_settings(bad)


def test_gate_sweep_over_seeds_shows_the_validation_noise(tmp_path):
    config, result = _gate_sweep_cli(tmp_path, "--strengths", "2", "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    accs = [gate_sweep([(2.0, 0.0)], config.network, config.validation_groups(seed))[(2.0, 0.0)]["acc"] for seed in (0, 1)]
    assert accs[0] != accs[1]  # other validation problems, other score: the noise the column shows
    row = next(line for line in result.output.splitlines() if line.strip().startswith("2 "))
    assert row.split()[1:3] == [f"{np.mean(accs):.4f}", f"{np.std(accs):.4f}"]
    assert row.split()[4:6] == ["+0.0000", "0.0000"]  # the first strength against itself


def test_gate_sweep_pairs_each_strength_with_the_first_on_the_same_draws(tmp_path):
    config, result = _gate_sweep_cli(tmp_path, "--strengths", "0,4", "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    runs = [gate_sweep([(0.0, 0.0), (4.0, 0.0)], config.network, config.validation_groups(seed)) for seed in (0, 1)]
    diffs = [run[(4.0, 0.0)]["acc"] - run[(0.0, 0.0)]["acc"] for run in runs]
    row = next(line for line in result.output.splitlines() if line.strip().startswith("4 "))
    assert row.split()[4:6] == [f"{np.mean(diffs):+.4f}", f"{np.std(diffs):.4f}"]


def test_gate_sweep_validates_a_checkpoint_beside_the_strengths(tmp_path):
    """A saved network is validated on the same draws and paired with the first strength: a
    checkpoint of the gate at strength 2 scores exactly what strength 2 does."""
    graph = StepGraph(_config().network)
    graph.network.init_importance_gate(2.0)
    weights = save_checkpoint(graph, tmp_path / "gate2", {"meta_trained": False, "note": "test"})
    _, result = _gate_sweep_cli(tmp_path, "--strengths", "0,2", "--checkpoint", str(weights), "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[1:-1]}
    assert rows[str(weights)] == rows["2"] and rows["0"][3:] == ["+0.0000", "0.0000"]
    _, missing = _gate_sweep_cli(tmp_path, "--checkpoint", str(tmp_path / "none.safetensors"))
    assert missing.exit_code == 2 and "none.safetensors" in missing.output


def test_validation_problems_cover_every_source_and_stream_kind():
    config = MetaTrainConfig()
    groups = config.validation_groups(seed=0)
    assert len(groups) == config.validation_problems == 8
    assert all(len(g) == config.validation_population and len({shape_key(s) for s in g}) == 1 for g in groups)
    assert len({s.seed for g in groups for s in g}) == 8 * config.validation_population
    assert {g[0].data for g in groups} == set(config.validation_family.data)
    assert {g[0].stream for g in groups} == set(config.validation_family.streams)
    assert groups == config.validation_groups(seed=0) and groups != config.validation_groups(seed=1)


def test_validation_draws_a_source_and_a_stream_kind_training_never_draws():
    config = MetaTrainConfig()
    assert not set(config.validation_family.data) & set(config.family.data)
    assert set(config.validation_family.streams) - set(config.family.streams)


def test_es_step_is_deterministic_and_moves_the_network(tmp_path):
    config = _config(iterations=1, estimator="es", es_directions=2, outer_lr=1e-2)
    first = meta_train(tmp_path / "a", config, seed=4)
    second = meta_train(tmp_path / "b", config, seed=4)
    a, b = _weights(tmp_path / "a" / "last.safetensors"), _weights(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.history[0]["meta_loss"] == second.history[0]["meta_loss"]
    assert first.problems == config.population
    torch.manual_seed(4)
    start = StepGraph(config.network)
    start.network.init_importance_gate(config.gate_init)
    assert any(not torch.equal(v, a[k]) for k, v in start.state_dict().items())


def test_end_meta_loss_is_every_tasks_query_loss_at_the_streams_end():
    """``meta_loss="end"``: one term, the mean over all tasks of the query loss after the last step,
    recomputed here from a plain run of the same problems with the same batches."""
    config = _config(estimator="es", meta_loss="end", query_loss="error")
    population = Population(config.family.sample_population(np.random.default_rng([0, 0]), 2))
    torch.manual_seed(0)
    graph = start_graph(config)
    with torch.no_grad():
        value = unroll(graph, population, config)
        params, opt, rngs = start_population(graph, population)
        for i in range(population.tasks):
            if i:
                opt.task_boundary()
            for step in range(population.steps_per_task):
                x, y, source = population.training_batch(i, step, rngs, 32)
                params = opt.step(params, population.grads(params, source, x, y))
        query = [np.random.default_rng(s.seed + 1) for s in population.specs]
        losses = [population.loss(params, j, *population.batch(j, query, config.query_batch), "error") for j in range(population.tasks)]
        ramp = unroll(graph, population, replace(config, meta_loss="ramp"))
    assert value == pytest.approx(float(torch.stack(losses).mean()), abs=1e-6)
    assert value != pytest.approx(ramp, abs=1e-4)


def test_es_on_the_end_meta_loss_moves_the_network(tmp_path):
    config = _config(iterations=1, estimator="es", meta_loss="end", es_directions=2, es_sigma=0.1, outer_lr=1e-2)
    progress = meta_train(tmp_path / "a", config, seed=4)
    assert 0.0 < progress.history[0]["meta_loss"]
    torch.manual_seed(4)
    assert any(not torch.equal(v, _weights(tmp_path / "a" / "last.safetensors")[k]) for k, v in start_graph(config).state_dict().items())


def test_es_head_scope_moves_only_the_output_layer(tmp_path):
    config = _config(iterations=1, estimator="es", es_directions=2, es_sigma=0.1, es_scope="head", outer_lr=1e-2)
    meta_train(tmp_path / "a", config, seed=4)
    a = _weights(tmp_path / "a" / "last.safetensors")
    torch.manual_seed(4)
    start = StepGraph(config.network)
    start.network.init_importance_gate(config.gate_init)
    moved = {k for k, v in start.state_dict().items() if not torch.equal(v, a[k])}
    assert moved and all(".out." in f".{k}" for k in moved), moved
    with pytest.raises(ValueError, match="es_scope 'tail' is not one of"):
        _config(es_scope="tail")


def test_meta_gradient_through_the_network_is_finite():
    """The meta-gradient reaches the network through its token summaries; padding tokens and a
    fresh anchor (zero drift) make some of them zero, where a plain square root has an infinite
    derivative and turned the meta-loss NaN. With a network whose output depends on its input,
    every gradient stays finite."""
    from lto_export.onnx_export import example_inputs
    from lto_runtime.format import INPUT_NAMES, OUTPUT_NAMES

    torch.manual_seed(0)
    graph = StepGraph()
    with torch.no_grad():
        graph.network.out.weight.normal_(0.0, 0.5)
    inputs = dict(zip(INPUT_NAMES, example_inputs(graph, windows=3, seed=0)))
    param = inputs["param"].clone().requires_grad_()
    inputs["param"], inputs["anchor"] = param, param.detach().clone()  # zero drift, as right after a boundary
    inputs["refresh_windows"] = torch.arange(3, dtype=torch.float32)  # the last window is half padding
    outputs = dict(zip(OUTPUT_NAMES, graph(*(inputs[n] for n in INPUT_NAMES))))
    (outputs["refreshed_coefficients"].sum() + outputs["update"].sum()).backward()
    assert torch.isfinite(param.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in graph.network.parameters() if p.grad is not None)
    assert any(p.grad.abs().sum() > 0 for p in graph.network.parameters() if p.grad is not None)
