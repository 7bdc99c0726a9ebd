"""Meta-training the update network by truncated backpropagation through continual streams.

Each iteration draws one continual-learning problem from a :class:`~lto_core.families.Family`
(data, stream, scenario, architecture, length, learning rate), trains a fresh model through it
with the differentiable :class:`~lto_core.unroll.UnrolledLTO`, and every ``truncation`` inner
steps updates the network's weights with outer Adam on the meta-loss

    L = sum_t w_t * mean_{j <= current task} ell_j(theta_t) / sum_t w_t,   w_t = t / steps_per_task,

query losses ``ell`` (cross-entropy, or the bounded soft error, see :data:`QUERY_LOSSES`) of the current task and of every earlier one on fresh training batches at
query points ``t`` of the current task, all tasks weighted equally as in ACC: the current task's
term rewards learning, the earlier ones penalize forgetting (stability-plasticity). The ramp
``w_t`` counts late points more: only end-of-task accuracy enters ACC, and a truncation that sees
the steep start of a task but not its plateau would otherwise buy early speed with forgetting
(the short-horizon bias of Wu et al., 2018). Meta-gradients are clipped by norm. Validation runs whole held-out
problems without gradients and keeps the checkpoint with the best mean ACC.

Determinism: iteration ``i`` draws its problem and batches from ``(seed, i)`` alone, so a run that
is interrupted and resumed (weights, outer Adam state and progress are checkpointed atomically
after every iteration, see :func:`meta_train`) continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from lto_core.checkpoint import load_checkpoint, save_checkpoint, write_atomically
from lto_core.continual import masked_logits
from lto_core.families import Family, ProblemSpec, build_problem
from lto_core.metrics import average_accuracy, backward_transfer
from lto_core.network import NetworkConfig
from lto_core.step import StepGraph
from lto_core.streams import Task
from lto_core.unroll import UnrolledLTO

def soft_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean(1 - softmax(logits)_y)``: the error rate of a prediction sampled from the softmax.

    Bounded in ``[0, 1]`` like the accuracy that ACC averages, so a forgotten task costs at most
    its lost accuracy; cross-entropy grows without bound as an old task's logits drift.
    """
    return 1.0 - logits.softmax(dim=-1).gather(1, y[:, None]).mean()


#: Meta-objective query losses by config name (``MetaTrainConfig.query_loss``).
QUERY_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": nn.functional.cross_entropy,
    "error": soft_error,
}

#: Seed offset of validation problems, far from the training iterations' keys.
VALIDATION_KEY = 1_000_003


@dataclass(frozen=True)
class MetaTrainConfig:
    """Everything that decides a meta-training run (with the seed)."""

    iterations: int = 200
    family: Family = field(default_factory=Family)
    #: Validation tasks are longer than most training tasks: the optimizer must hold up on lengths
    #: it was not meta-trained on (meta-overfitting to the unroll horizon is a known failure).
    #: Streams of 3 to 6 tasks: a fixed 3 favoured protection that longer streams pay for in plasticity.
    validation_family: Family = field(default_factory=lambda: Family(tasks=(3, 6), steps_per_task=(500, 500)))
    #: Whole 3x500-step problems; fewer made the keep-best choice noisy (4 swung by 0.17 ACC).
    validation_problems: int = 8
    validate_every: int = 25
    truncation: int = 30
    query_every: int = 5
    query_batch: int = 64
    #: Query loss of the meta-objective, a key of :data:`QUERY_LOSSES`.
    query_loss: str = "ce"
    outer_lr: float = 5e-4
    clip: float = 1.0
    #: Initial gate strength (see :meth:`TokenNetwork.init_importance_gate`); 0 starts from Adam,
    #: 2 from the hand-set gate the packaged default was meta-trained from.
    gate_init: float = 2.0
    network: NetworkConfig = field(default_factory=NetworkConfig)

    def __post_init__(self) -> None:
        if self.query_loss not in QUERY_LOSSES:
            raise ValueError(f"query_loss {self.query_loss!r} is not one of {sorted(QUERY_LOSSES)}; set it in the config file")

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


class _Inner:
    """A model's forward as a function of a list of parameter tensors."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]
        self.initial = [p.detach().clone() for p in model.parameters()]

    def loss(self, params: Sequence[torch.Tensor], task: Task, index: np.ndarray, kind: str = "ce") -> torch.Tensor:
        """``QUERY_LOSSES[kind]`` on the training examples ``index`` of ``task``."""
        x, y = torch.from_numpy(task.x_train[index]), torch.from_numpy(task.y_train[index])
        logits = torch.func.functional_call(self.model, dict(zip(self.names, params)), (x,))
        return QUERY_LOSSES[kind](masked_logits(logits, task.classes), y)

    @torch.no_grad()
    def accuracy(self, params: Sequence[torch.Tensor], task: Task) -> float:
        logits = torch.func.functional_call(self.model, dict(zip(self.names, params)), (torch.from_numpy(task.x_test),))
        return float((masked_logits(logits, task.classes).argmax(-1).numpy() == task.y_test).mean())


def _grads(inner: _Inner, params: list[torch.Tensor], task: Task, index: np.ndarray) -> tuple[float, list[torch.Tensor]]:
    """Training loss and its gradient w.r.t. ``params`` (constants for the meta-gradient)."""
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_() for p in params]
        loss = inner.loss(leaves, task, index)
        return float(loss.detach()), list(torch.autograd.grad(loss, leaves))


def _start_problem(graph: StepGraph, spec: ProblemSpec):
    """A problem's stream, its model as :class:`_Inner`, fresh parameters, an :class:`UnrolledLTO`
    over them and the batch generator (from ``spec.seed``)."""
    stream, model = build_problem(spec)
    inner = _Inner(model)
    params = [p.clone() for p in inner.initial]
    opt = UnrolledLTO(graph, [tuple(p.shape) for p in params], lr=spec.lr)
    rng = np.random.default_rng(spec.seed)
    return stream, inner, params, opt, rng


def run_problem(graph: StepGraph, spec: ProblemSpec) -> np.ndarray:
    """Train a fresh model through ``spec``'s stream with ``graph`` (no meta-gradient); return R."""
    stream, inner, params, opt, rng = _start_problem(graph, spec)
    R = np.zeros((spec.tasks, spec.tasks))
    with torch.no_grad():
        for i, task in enumerate(stream.tasks):
            if i:
                opt.task_boundary()
            for _ in range(spec.steps_per_task):
                _, grads = _grads(inner, params, task, rng.integers(0, len(task.x_train), spec.batch_size))
                params = opt.step(params, grads)
            R[i] = [inner.accuracy(params, t) for t in stream.tasks]
    return R


def meta_step_problem(graph: StepGraph, outer: torch.optim.Optimizer, spec: ProblemSpec, config: MetaTrainConfig) -> float:
    """Meta-train on one problem: truncated backpropagation through its whole stream.

    Returns the mean meta-loss over the problem's truncations.
    """
    stream, inner, params, opt, rng = _start_problem(graph, spec)
    query_rng = np.random.default_rng(spec.seed + 1)
    terms: list[torch.Tensor] = []
    weights: list[float] = []
    meta_losses: list[float] = []
    for i, task in enumerate(stream.tasks):
        if i:
            opt.task_boundary()
        for step in range(1, spec.steps_per_task + 1):
            _, grads = _grads(inner, params, task, rng.integers(0, len(task.x_train), spec.batch_size))
            params = opt.step(params, grads)
            if step % config.query_every == 0 or step == spec.steps_per_task:
                terms.append(_query_loss(inner, params, stream.tasks[: i + 1], query_rng, config))
                weights.append(step / spec.steps_per_task)
            if step % config.truncation == 0 or step == spec.steps_per_task:
                meta = (torch.stack(terms) * torch.tensor(weights)).sum() / sum(weights)
                # Before the stream's first refresh the network has not acted (every step was Adam's),
                # so the truncation carries no meta-gradient.
                if meta.requires_grad:
                    outer.zero_grad()
                    meta.backward()
                    nn.utils.clip_grad_norm_(graph.parameters(), config.clip)
                    outer.step()
                meta_losses.append(float(meta.detach()))
                terms, weights = [], []
                params = [p.detach() for p in params]
                opt.detach_()
    return float(np.mean(meta_losses))


def _query_loss(inner: _Inner, params, seen: Sequence[Task], rng: np.random.Generator, config: MetaTrainConfig) -> torch.Tensor:
    """``mean_{j <= current} ell_j`` on fresh training batches: every task seen so far counts
    equally, as in ACC, so the current task is one term among them."""
    batches = [rng.integers(0, len(t.x_train), config.query_batch) for t in seen]
    return torch.stack([inner.loss(params, t, b, config.query_loss) for t, b in zip(seen, batches)]).mean()


def validation_specs(config: MetaTrainConfig, seed: int) -> list[ProblemSpec]:
    """The held-out validation problems of a run (fixed by the seed).

    Stratified: problem ``i`` takes data source ``i mod |data|`` and stream kind
    ``(i div |data|) mod |streams|``, so every source and kind is validated evenly (free draws
    gave seed 0 sixteen problems without one digits problem); the rest is drawn from ``(seed, i)``.
    """
    family = config.validation_family
    specs = []
    for i in range(config.validation_problems):
        spec = family.sample(np.random.default_rng([seed, VALIDATION_KEY, i]))
        data = family.data[i % len(family.data)]
        stream = family.streams[(i // len(family.data)) % len(family.streams)]
        specs.append(replace(spec, data=data, stream=stream))
    return specs


def validate(graph: StepGraph, specs: Sequence[ProblemSpec]) -> dict[str, float]:
    """Mean ACC and BWT of ``graph`` over whole validation problems."""
    mats = [run_problem(graph, s) for s in specs]
    return {"acc": float(np.mean([average_accuracy(R) for R in mats])), "bwt": float(np.mean([backward_transfer(R) for R in mats]))}


def gate_sweep(strengths: Sequence[float], config: MetaTrainConfig = MetaTrainConfig(), seed: int = 0) -> dict[float, dict[str, float]]:
    """Validation ACC and BWT of importance-gated Adam (:meth:`TokenNetwork.init_importance_gate`)
    at each strength, on the validation problems of a run with ``config`` and ``seed``: how
    meta-training's starting strength (``gate_init``) is chosen, with no held-out data."""
    specs = validation_specs(config, seed)
    scores = {}
    for strength in strengths:
        graph = StepGraph(config.network)
        graph.network.init_importance_gate(strength)
        scores[float(strength)] = validate(graph.eval(), specs)
    return scores


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
    resumable with ``resume``.
    Validation of the zero-head network (exactly Adam) is the recorded ``baseline``, that of the
    starting network (see ``gate_init``) ``initial``; ``best`` is only written when meta-training
    beats the start.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    graph = StepGraph(config.network)
    if config.gate_init:
        graph.network.init_importance_gate(config.gate_init)
    outer = torch.optim.Adam(graph.network.parameters(), lr=config.outer_lr)
    specs = validation_specs(config, seed)
    started = time.perf_counter()
    progress_path = out / "progress.json"
    if resume and progress_path.is_file():
        progress = Progress(**json.loads(progress_path.read_text()))
        if not progress.checkpoint:
            raise ValueError(f"{progress_path} names no checkpoint set: the run was written by an earlier lto, which this one cannot resume; use a new --out")
        if progress.seed != seed or progress.config != json.loads(json.dumps(config.to_dict())):
            raise ValueError(f"{out} holds a run with another seed or config; use a new --out or the same settings")
        graph.load_state_dict(load_checkpoint(out / progress.checkpoint)[0].state_dict())
        _load_outer(outer, out / f"{progress.checkpoint}-outer")
    else:
        progress = Progress(seed=seed, config=json.loads(json.dumps(config.to_dict())))
        progress.baseline = validate(StepGraph(config.network), specs)
        progress.initial = validate(graph, specs)
        progress.best_acc = progress.initial["acc"]
    elapsed_before = progress.seconds
    while progress.iteration < config.iterations:
        if minutes is not None and (time.perf_counter() - started) / 60.0 >= minutes:
            break
        it = progress.iteration
        spec = config.family.sample(np.random.default_rng([seed, it]))
        graph.train()
        meta_loss = meta_step_problem(graph, outer, spec, config)
        progress.iteration += 1
        record = {"iteration": progress.iteration, "meta_loss": meta_loss}
        if progress.iteration % config.validate_every == 0 or progress.iteration == config.iterations:
            scores = validate(graph.eval(), specs)
            record.update(val_acc=scores["acc"], val_bwt=scores["bwt"])
            if scores["acc"] > progress.best_acc:
                progress.best_acc, progress.best_iteration = scores["acc"], progress.iteration
                save_checkpoint(graph, out / "best", _provenance(progress, config, scores, command))
        progress.history.append(record)
        progress.seconds = elapsed_before + time.perf_counter() - started
        _save_run(out, graph, outer, progress)
        if on_iteration is not None:
            on_iteration(progress, meta_loss)
    return progress


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

