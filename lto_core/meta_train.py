"""Meta-training the update network on populations of continual-learning problems.

Each iteration draws a population of same-shaped problems from a :class:`~lto_core.families.Family`
(:meth:`~lto_core.families.Family.sample_population`: one data source, stream kind, scenario,
architecture and length; each problem its own seed and learning rate), trains fresh models through
their streams together (:class:`~lto_core.population.Population`, the differentiable
:class:`~lto_core.unroll.UnrolledLTO`), and updates the network's weights with outer Adam on the
meta-loss

    L = sum_t w_t * mean_{j <= current task} ell_j(theta_t) / sum_t w_t,   w_t = t / steps_per_task,

averaged over the population, with query losses ``ell`` (cross-entropy, or the bounded soft error,
see :data:`~lto_core.population.QUERY_LOSSES`) of the current task and of every earlier one on fresh
training batches at query points ``t`` of the current task, all tasks weighted equally as in ACC:
the current task's term rewards learning, the earlier ones penalize forgetting
(stability-plasticity). The ramp ``w_t`` counts late points more: only end-of-task accuracy enters
ACC, and a truncation that sees the steep start of a task but not its plateau would otherwise buy
early speed with forgetting (the short-horizon bias of Wu et al., 2018).

That ramp still scores the whole learning curve of every task, so it pays for learning a task
sooner even where the task would be learned by its end anyway. ``meta_loss = "end"``
(:data:`META_LOSSES`) scores ACC's own point instead: the query losses of every task once, at the
end of the stream, ``L = mean_j ell_j(theta_end)``; learning faster then pays only where a task is
not learned by its end, and forgetting costs in full. It gives a meta-gradient only through the
last truncation, so only ES (whole streams) uses it.

A family may also hide a problem's task boundaries (``Family.hidden_boundaries``: its optimizer
runs with ``boundaries="auto"``, detects shifts itself and is never told) and make its stream
gradual (``Family.gradual``, ``Family.blend_steps``: each task blends into the next, see
:func:`~lto_core.streams.previous_task_probability`); the meta-loss follows the true tasks either
way. A hidden problem whose shifts are never detected trains exactly as with Adam (nothing is
consolidated, so the network never acts) and gives no meta-gradient.

Two estimators of the meta-gradient (``MetaTrainConfig.estimator``):

* ``"tbptt"``: truncated backpropagation through the updates, one outer step every ``truncation``
  inner steps; meta-gradients clipped by norm.
* ``"es"``: antithetic evolution strategies on the whole-stream meta-loss ``F`` (Salimans et al.,
  2017; unbiased for whole streams, unlike truncations, see Vicol, Metz & Sohl-Dickstein, 2021):
  ``g = mean_k (F(phi + sigma e_k) - F(phi - sigma e_k)) / (2 sigma) e_k`` over ``es_directions``
  Gaussian directions, both signs on the same problems and batches; one outer step per iteration.
  ``es_scope = "head"`` perturbs the output layer only (:data:`ES_SCOPES`).

Validation runs whole held-out problems without gradients (:mod:`lto_core.evaluation`) and keeps
the checkpoint with the best mean ACC.

Determinism: iteration ``i`` draws its problems, batches and directions from ``(seed, i)`` alone, so
a run that is interrupted and resumed (weights, outer Adam state and progress are checkpointed
atomically after every iteration, see :func:`meta_train`) continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from lto_core.checkpoint import load_checkpoint, save_checkpoint, write_atomically
from lto_core.evaluation import hand_set_graph, start_population, validate, validation_groups
from lto_core.families import Family, ProblemSpec
from lto_core.network import NetworkConfig
from lto_core.population import QUERY_LOSSES, Population
from lto_core.step import StepGraph

#: Meta-gradient estimators by config name (``MetaTrainConfig.estimator``).
ESTIMATORS = ("tbptt", "es")
#: What ES perturbs (``MetaTrainConfig.es_scope``): every weight of the network, or only its output
#: layer, which reads the residual stream (a linear image of the token features and window context
#: plus the encoder's additions) and so can make the coefficients any linear function of those
#: inputs: 51 numbers instead of about 2,000, which a few directions per iteration can search.
ES_SCOPES = ("all", "head")
#: Where the meta-loss queries (``MetaTrainConfig.meta_loss``): along every task, ramped, or once at
#: the end of the stream (module docstring).
META_LOSSES = ("ramp", "end")


@dataclass(frozen=True)
class MetaTrainConfig:
    """Everything that decides a meta-training run (with the seed)."""

    iterations: int = 200
    family: Family = field(default_factory=Family)
    #: Problems per iteration, all of one shape, trained together.
    population: int = 16
    #: Validation draws a data source and a stream kind that training never draws, and tasks
    #: longer than most training tasks: the optimizer must hold up beyond what it was meta-trained on.
    validation_family: Family = field(
        default_factory=lambda: Family(data=("hypercube",), streams=("rotated", "split", "permuted", "remapped"), tasks=(3, 6), steps_per_task=(500, 500))
    )
    #: Validation populations (shapes), stratified over the validation family's sources and stream kinds.
    validation_problems: int = 8
    #: Problems per validation population (same shape, own seeds and learning rates).
    validation_population: int = 4
    validate_every: int = 25
    estimator: str = "tbptt"
    truncation: int = 30
    #: Antithetic pairs of ES directions per iteration, and the perturbation's standard deviation.
    es_directions: int = 4
    es_sigma: float = 0.01
    es_scope: str = "all"
    query_every: int = 5
    query_batch: int = 64
    #: Query loss of the meta-objective, a key of :data:`QUERY_LOSSES`.
    query_loss: str = "ce"
    #: Where the meta-loss queries, a member of :data:`META_LOSSES`.
    meta_loss: str = "ramp"
    outer_lr: float = 5e-4
    clip: float = 1.0
    #: Initial gate strength (see :meth:`TokenNetwork.init_importance_gate`); 0 starts from Adam,
    #: 2 from the hand-set gate the packaged default was meta-trained from.
    gate_init: float = 2.0
    #: Initial pull toward the anchor (``rho``, see :meth:`TokenNetwork.init_importance_gate`); 0: none.
    pull_init: float = 0.0
    network: NetworkConfig = field(default_factory=NetworkConfig)

    def __post_init__(self) -> None:
        if self.query_loss not in QUERY_LOSSES:
            raise ValueError(f"query_loss {self.query_loss!r} is not one of {sorted(QUERY_LOSSES)}; set it in the config file")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator {self.estimator!r} is not one of {list(ESTIMATORS)}; set it in the config file")
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss {self.meta_loss!r} is not one of {list(META_LOSSES)}; set it in the config file")
        if self.meta_loss == "end" and self.estimator != "es":
            raise ValueError('meta_loss "end" scores only the stream\'s end, which truncated backpropagation reaches through its last truncation only; use estimator "es" with it')
        if self.es_scope not in ES_SCOPES:
            raise ValueError(f"es_scope {self.es_scope!r} is not one of {list(ES_SCOPES)}; set it in the config file")
        for name in ("population", "validation_population", "es_directions"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}; set it in the config file")

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> "MetaTrainConfig":
        """Inverse of :meth:`to_dict`; missing keys keep their defaults."""
        doc = dict(doc)
        for key in ("family", "validation_family"):
            if key in doc:
                doc[key] = Family.from_dict(doc[key])
        if "network" in doc:
            doc["network"] = NetworkConfig(**doc["network"])
        unknown = set(doc) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown meta-training config keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**doc)

    def validation_groups(self, seed: int) -> list[list[ProblemSpec]]:
        """The run's held-out validation problems (see :func:`lto_core.evaluation.validation_groups`)."""
        return validation_groups(self.validation_family, self.validation_problems, self.validation_population, seed)


def start_graph(config: MetaTrainConfig) -> StepGraph:
    """The network a run of ``config`` starts from (seed torch's generator first to fix the
    encoder's random weights): ``gate_init`` and ``pull_init`` set its output bias."""
    return hand_set_graph(config.network, config.gate_init, config.pull_init)


def unroll(graph: StepGraph, population: Population, config: MetaTrainConfig,
           on_truncation: Callable[[torch.Tensor], None] | None = None) -> float:
    """Train ``population`` through its whole streams with ``graph``; returns the mean meta-loss
    over truncations.

    Every ``truncation`` inner steps (and at each task's end) the truncation's meta-loss goes to
    ``on_truncation`` (a meta-gradient step) and the autograd history is cut. Problems that hide
    their boundaries are never told where a task ends (their optimizer detects shifts itself);
    the meta-loss still follows the true tasks.
    """
    params, opt, rngs = start_population(graph, population)
    query_rngs = [np.random.default_rng(s.seed + 1) for s in population.specs]
    batch = population.specs[0].batch_size
    steps = population.steps_per_task
    terms: list[torch.Tensor] = []
    weights: list[float] = []
    losses: list[float] = []
    for i in range(population.tasks):
        if i and population.boundaries == "manual":
            opt.task_boundary()
        for step in range(1, steps + 1):
            x, y, source = population.training_batch(i, step - 1, rngs, batch)
            params = opt.step(params, population.grads(params, source, x, y))
            if _queries(config.meta_loss, i == population.tasks - 1, step, steps, config.query_every):
                terms.append(_query_loss(population, params, i, query_rngs, config))
                weights.append(step / steps)
            if step % config.truncation == 0 or step == steps:
                if terms:
                    meta = (torch.stack(terms) * torch.tensor(weights)).sum() / sum(weights)
                    # Before the stream's first refresh the network has not acted (every step was Adam's),
                    # so the truncation carries no meta-gradient.
                    if on_truncation is not None and meta.requires_grad:
                        on_truncation(meta)
                    losses.append(float(meta.detach()))
                terms, weights = [], []
                params = [p.detach() for p in params]
                opt.detach_()
    return float(np.mean(losses))


def _queries(meta_loss: str, last_task: bool, step: int, steps: int, every: int) -> bool:
    """Whether the meta-loss queries after ``step`` (from 1) of a task of ``steps``: every
    ``every`` steps and at each task's end (``"ramp"``), or only at the last task's end (``"end"``)."""
    if meta_loss == "end":
        return last_task and step == steps
    return step % every == 0 or step == steps


def _query_loss(population: Population, params, current: int, rngs, config: MetaTrainConfig) -> torch.Tensor:
    """``mean_{j <= current} ell_j`` on fresh training batches, averaged over the population: every
    task seen so far counts equally, as in ACC, so the current task is one term among them."""
    terms = []
    for j in range(current + 1):
        x, y = population.batch(j, rngs, config.query_batch)
        terms.append(population.loss(params, j, x, y, config.query_loss))
    return torch.stack(terms).mean()


def tbptt_step(graph: StepGraph, outer: torch.optim.Optimizer, population: Population, config: MetaTrainConfig) -> float:
    """Meta-train on one population by truncated backpropagation: an outer step per truncation.
    Returns the mean meta-loss over the truncations."""

    def outer_step(meta: torch.Tensor) -> None:
        outer.zero_grad()
        meta.backward()
        nn.utils.clip_grad_norm_(graph.parameters(), config.clip)
        outer.step()

    return unroll(graph, population, config, outer_step)


def es_step(graph: StepGraph, outer: torch.optim.Optimizer, population: Population, config: MetaTrainConfig,
            rng: np.random.Generator) -> float:
    """Meta-train on one population by antithetic ES on the whole-stream meta-loss (module docstring):
    ``2 * es_directions`` whole runs without gradients, then one clipped outer step.
    Only the weights of ``config.es_scope`` are perturbed and stepped (:data:`ES_SCOPES`).
    Returns the mean meta-loss of the perturbed runs."""
    weights = list((graph.network.out if config.es_scope == "head" else graph.network).parameters())
    phi = nn.utils.parameters_to_vector(weights).detach()
    estimate = torch.zeros_like(phi)
    values = []
    with torch.no_grad():
        for _ in range(config.es_directions):
            direction = torch.from_numpy(rng.standard_normal(phi.numel()).astype(np.float32))
            pair = []
            for sign in (1.0, -1.0):
                nn.utils.vector_to_parameters(phi + sign * config.es_sigma * direction, weights)
                pair.append(unroll(graph, population, config))
            estimate += (pair[0] - pair[1]) / (2.0 * config.es_sigma * config.es_directions) * direction
            values += pair
        nn.utils.vector_to_parameters(phi, weights)
    outer.zero_grad()
    for w, g in zip(weights, _split_like(estimate, weights)):
        w.grad = g
    nn.utils.clip_grad_norm_(weights, config.clip)
    outer.step()
    return float(np.mean(values))


def _split_like(vector: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``vector`` cut into pieces shaped like ``tensors`` (the inverse of ``parameters_to_vector``)."""
    return [piece.reshape(t.shape) for piece, t in zip(vector.split([t.numel() for t in tensors]), tensors)]


# -- checkpoints of a run --------------------------------------------------------------------------


def _save_outer(outer: torch.optim.Optimizer, path: Path) -> None:
    sd = outer.state_dict()
    tensors = {f"{i}.{k}": v.detach().clone() for i, st in sd["state"].items() for k, v in st.items()}
    write_atomically(path.with_suffix(".safetensors"), save(tensors))
    write_atomically(path.with_suffix(".json"), json.dumps({"param_groups": sd["param_groups"], "state_keys": sorted(tensors)}).encode())


def _load_outer(outer: torch.optim.Optimizer, path: Path) -> None:
    tensors = load_file(str(path.with_suffix(".safetensors")))
    doc = json.loads(path.with_suffix(".json").read_text())
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    outer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})


@dataclass
class Progress:
    """What a run has done so far (``progress.json``)."""

    seed: int
    config: dict
    iteration: int = 0
    #: Problems trained through so far (``population`` per iteration).
    problems: int = 0
    best_acc: float = -1.0
    best_iteration: int = -1
    #: Validation of the zero-head network (exactly Adam) and of the starting network.
    baseline: dict = field(default_factory=dict)
    initial: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    seconds: float = 0.0
    #: The checkpoint set this record belongs to: weights ``NAME.*``, outer Adam state ``NAME-outer.*``.
    checkpoint: str = ""


def _save_run(out: Path, graph: StepGraph, outer: torch.optim.Optimizer, progress: Progress) -> None:
    """Checkpoint the run after an iteration so that an interrupt at any point resumes exactly.

    Weights and outer Adam state go to a new set named by the iteration; ``progress.json``, written
    after them, names that set; only then are older sets removed. Every file is replaced
    atomically, so ``progress.json`` always names a complete set of the iteration it records.
    ``last.*`` is a copy of the weights for users; resuming never reads it.
    """
    name = f"resume-{progress.iteration:06d}"
    partial = {"meta_trained": True, "partial": True, "iteration": progress.iteration}
    save_checkpoint(graph, out / name, partial)
    _save_outer(outer, out / f"{name}-outer")
    progress.checkpoint = name
    write_atomically(out / "progress.json", json.dumps(asdict(progress), indent=1).encode())
    for stale in out.glob("resume-*"):
        if stale.name.split(".")[0] not in (name, f"{name}-outer"):
            stale.unlink()
    save_checkpoint(graph, out / "last", partial)


def meta_train(
    out: str | Path,
    config: MetaTrainConfig = MetaTrainConfig(),
    seed: int = 0,
    minutes: float | None = None,
    resume: bool = False,
    command: str = "",
    on_iteration: Callable[[Progress, float], None] | None = None,
) -> Progress:
    """Run (or resume) meta-training into ``out``; returns the final :class:`Progress`.

    ``out`` receives, after every iteration, ``progress.json`` and the checkpoint set it names
    (``resume-NNNNNN.*``: weights, ``resume-NNNNNN-outer.*``: outer Adam state; older sets are
    removed), ``last.safetensors`` + ``last.json`` (the latest weights, an ordinary checkpoint),
    and ``best.safetensors`` + ``best.json`` (an ordinary checkpoint, with provenance) whenever
    validation improves. Each file is replaced atomically and ``progress.json`` is written after
    the set it names, so a run killed at any point resumes exactly (a replayed iteration rewrites
    ``best`` identically). ``minutes`` (wall time of this call, validations included) stops the run early,
    before an iteration that could end past it (:func:`out_of_time`), resumable with ``resume``.
    Validation of the zero-head network (exactly Adam) is the recorded ``baseline``, that of the
    starting network (see ``gate_init``, ``pull_init``) ``initial``; ``best`` is only written when meta-training
    beats the start.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    graph = start_graph(config)
    outer = torch.optim.Adam(graph.network.parameters(), lr=config.outer_lr)
    groups = config.validation_groups(seed)
    started = time.perf_counter()
    progress_path = out / "progress.json"
    if resume and progress_path.is_file():
        progress = Progress(**json.loads(progress_path.read_text()))
        if not progress.checkpoint:
            raise ValueError(f"{progress_path} names no checkpoint set: the run was written by an earlier lto, which this one cannot resume; use a new --out")
        # Compared as configs, so a run recorded before a field existed resumes when that field is at its default.
        if progress.seed != seed or MetaTrainConfig.from_dict(progress.config) != config:
            raise ValueError(f"{out} holds a run with another seed or config; use a new --out or the same settings")
        graph.load_state_dict(load_checkpoint(out / progress.checkpoint)[0].state_dict())
        _load_outer(outer, out / f"{progress.checkpoint}-outer")
    else:
        progress = Progress(seed=seed, config=json.loads(json.dumps(config.to_dict())))
        progress.baseline = validate(StepGraph(config.network), groups)
        progress.initial = validate(graph, groups)
        progress.best_acc = progress.initial["acc"]
    elapsed_before = progress.seconds
    longest = 0.0
    while progress.iteration < config.iterations:
        begun = time.perf_counter()
        if minutes is not None and out_of_time(begun - started, longest, minutes):
            break
        it = progress.iteration
        draw = np.random.default_rng([seed, it])
        population = Population(config.family.sample_population(draw, config.population))
        graph.train()
        if config.estimator == "es":
            meta_loss = es_step(graph, outer, population, config, draw)
        else:
            meta_loss = tbptt_step(graph, outer, population, config)
        progress.iteration += 1
        progress.problems += population.size
        record = {"iteration": progress.iteration, "problems": progress.problems, "meta_loss": meta_loss}
        if progress.iteration % config.validate_every == 0 or progress.iteration == config.iterations:
            scores = validate(graph.eval(), groups)
            record.update(val_acc=scores["acc"], val_bwt=scores["bwt"])
            if scores["acc"] > progress.best_acc:
                progress.best_acc, progress.best_iteration = scores["acc"], progress.iteration
                save_checkpoint(graph, out / "best", _provenance(progress, config, scores, command))
        progress.history.append(record)
        progress.seconds = elapsed_before + time.perf_counter() - started
        _save_run(out, graph, outer, progress)
        if on_iteration is not None:
            on_iteration(progress, meta_loss)
        longest = max(longest, time.perf_counter() - begun)
    return progress


def out_of_time(elapsed: float, longest: float, minutes: float) -> bool:
    """Whether a run ``elapsed`` seconds into a budget of ``minutes`` must stop before its next
    iteration: ``elapsed + longest > 60 minutes``, where ``longest`` is the longest iteration so
    far (its validation included). Drawn problems differ in size, so an iteration as long as the
    longest seen is the one to fit; one longer still can overrun."""
    return elapsed + longest > 60.0 * minutes


def _provenance(progress: Progress, config: MetaTrainConfig, scores: dict, command: str) -> dict:
    return {
        "meta_trained": True,
        "command": command,
        "data": list(config.family.data),
        "streams": list(config.family.streams),
        "archs": list(config.family.archs),
        "iteration": progress.iteration,
        "iterations": config.iterations,
        "seed": progress.seed,
        "minutes": round(progress.seconds / 60.0, 1),
        "date": _dt.date.today().isoformat(),
        "validation_acc": round(scores["acc"], 4),
        "validation_bwt": round(scores["bwt"], 4),
        "adam_validation_acc": round(progress.baseline["acc"], 4),
        "adam_validation_bwt": round(progress.baseline["bwt"], 4),
    }

