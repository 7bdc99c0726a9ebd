"""``lto bench knowledge``: a language model learning new facts task after task (continual
knowledge learning), optimizers side by side.

The facts are synthetic and generated offline from the seed: invented entity names, each with a
few relations (birthplace, job, pet, ...) to invented objects, some of them two words long. A
fact is rendered as one sentence per template of its relation; the first template is the bare
``entity relation object``, the others paraphrase it. Each task brings new entities and their
facts. A GPT-style decoder (:class:`lto_core.models.GPT`) learns the sentences by next-token
prediction, task after task, as continual knowledge learning does with real text (Jang et al.,
ICLR 2022; Seo, Lee & Yeo, 2024, built the LAMA-ckl benchmark for it).

After each task the model is asked every fact of every task: given ``entity relation``, a fact
is recalled when the argmax next token is right at every object position (teacher-forced, which
is the same as greedy decoding being exactly right). That fills the recall matrix ``R[i][j]``
(recall of task ``j``'s facts after training task ``i``), so ACC, BWT and FWT are GEM's
(:mod:`lto_core.metrics`). Also recorded: the perplexity of every task's sentences after each
task, the time per training iteration (forward, backward, penalty, step), and the peak memory of
training.

Within a seed every method starts from the same weights and sees the same batches.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lto_core.bench.common import (
    Method,
    Progress,
    format_mean_std,
    markdown_table,
    release_free_memory,
    rounded,
    run_benchmark,
    status_kib,
)
from lto_core.bench.plots import plot_knowledge
from lto_core.metrics import average_accuracy, backward_transfer, forward_transfer
from lto_core.models import GPT_SIZES, make_gpt

#: Scalars summarized over seeds, in table order.
METRICS = ("ACC", "BWT", "FWT", "perplexity", "ms_per_iteration", "peak_memory_mib", "seconds")

#: Token ids every vocabulary starts with: padding (never a target), sentence start, sentence end.
PAD, BOS, EOS = 0, 1, 2
#: The words of those ids.
SPECIAL_TOKENS = ("<pad>", "<bos>", ".")


@dataclass(frozen=True)
class Relation:
    """A relation: its name (a token of the recall prompt), its sentence templates (``{e}`` the
    entity, ``{o}`` the object, always last), and how many words its objects have."""

    name: str
    templates: tuple[str, ...]
    object_words: int


#: The relations facts are drawn from; the first template of each is the recall prompt's form.
RELATIONS = (
    Relation("birthplace", ("{e} birthplace {o}", "{e} was born in {o}", "the birthplace of {e} is {o}"), 1),
    Relation("job", ("{e} job {o}", "{e} works as a {o}", "the job of {e} is {o}"), 1),
    Relation("pet", ("{e} pet {o}", "{e} owns a {o}", "the pet of {e} is a {o}"), 1),
    Relation("language", ("{e} language {o}", "{e} speaks {o}", "the language of {e} is {o}"), 1),
    Relation("instrument", ("{e} instrument {o}", "{e} plays the {o}", "the instrument of {e} is the {o}"), 1),
    Relation("food", ("{e} food {o}", "{e} likes to eat {o}", "the favourite food of {e} is {o}"), 1),
    Relation("mentor", ("{e} mentor {o}", "{e} was taught by {o}", "the mentor of {e} is {o}"), 2),
    Relation("home", ("{e} home {o}", "{e} lives in {o}", "the home of {e} is {o}"), 2),
)
#: Candidate objects of a relation with one-word objects.
OBJECT_CHOICES = 16
#: Candidates for each word of a two-word object (so ``6 x 6`` objects).
OBJECT_WORD_CHOICES = 6
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class KnowledgeConfig:
    """What to run: tasks, new entities per task, relations (facts) per entity, model size
    (:data:`lto_core.models.GPT_SIZES`), training steps per task, seeds, batch size (sentences)
    and the device."""

    tasks: int = 5
    entities: int = 16
    relations: int = 4
    size: str = "small"
    iters: int = 300
    seeds: int = 2
    batch_size: int = 32
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.size not in GPT_SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {tuple(GPT_SIZES)}")
        for name in ("tasks", "entities", "iters", "seeds", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.relations <= len(RELATIONS):
            raise ValueError(f"relations must be between 1 and {len(RELATIONS)}, got {self.relations}")


@dataclass(frozen=True)
class KnowledgeTask:
    """One task's facts as token ids.

    Attributes:
        x_train: every sentence of every fact, ``[S, L]``, ``<bos> ... .`` padded with ``<pad>``
            (EWC's Fisher samples these).
        recall: each fact's recall sequence ``<bos> entity relation object .``, ``[F, L]``.
        object_mask: ``[F, L]``, true at the object tokens of ``recall``.
    """

    x_train: np.ndarray
    recall: np.ndarray
    object_mask: np.ndarray


@dataclass(frozen=True)
class KnowledgeStream:
    """Tasks in order, with the vocabulary (``vocab[id]`` is the word) and the longest sequence."""

    tasks: tuple[KnowledgeTask, ...]
    vocab: tuple[str, ...]
    context: int


def pseudo_words(rng: np.random.Generator, count: int, syllables: int, exclude: set[str]) -> list[str]:
    """``count`` distinct invented words of ``syllables`` consonant-vowel syllables, none in ``exclude``."""
    words: list[str] = []
    seen = set(exclude)
    while len(words) < count:
        word = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _template_words() -> list[str]:
    """The words of every template and relation name (not the ``{e}``/``{o}`` slots), sorted."""
    words = {r.name for r in RELATIONS}
    for relation in RELATIONS:
        for template in relation.templates:
            words.update(w for w in template.split() if w not in ("{e}", "{o}"))
    return sorted(words)


def _pad(sequences: list[list[int]], length: int) -> np.ndarray:
    """``sequences`` as one ``[N, length]`` int64 array, each padded on the right with ``<pad>``."""
    out = np.full((len(sequences), length), PAD, dtype=np.int64)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = sequence
    return out


def make_knowledge_stream(tasks: int, entities: int, relations: int, seed: int) -> KnowledgeStream:
    """Facts for ``tasks`` tasks of ``entities`` new entities each, every entity with ``relations``
    distinct relations drawn at random, each to an object drawn at random from its relation's
    candidates; all from ``seed`` alone."""
    rng = np.random.default_rng(seed)
    fixed = _template_words()
    names = pseudo_words(rng, tasks * entities, 3, set(fixed))
    objects: dict[str, list[tuple[str, ...]]] = {}
    taken = set(fixed) | set(names)
    for relation in RELATIONS:
        if relation.object_words == 1:
            objects[relation.name] = [(w,) for w in pseudo_words(rng, OBJECT_CHOICES, 2, taken)]
        else:
            first = pseudo_words(rng, OBJECT_WORD_CHOICES, 2, taken)
            second = pseudo_words(rng, OBJECT_WORD_CHOICES, 2, taken | set(first))
            objects[relation.name] = [(a, b) for a in first for b in second]
        taken |= {w for words in objects[relation.name] for w in words}
    vocab = (*SPECIAL_TOKENS, *fixed, *names, *sorted(taken - set(fixed) - set(names)))
    ids = {word: i for i, word in enumerate(vocab)}

    facts_per_task = []
    for t in range(tasks):
        facts = []
        for entity in names[t * entities : (t + 1) * entities]:
            for r in rng.choice(len(RELATIONS), size=relations, replace=False):
                relation = RELATIONS[r]
                choices = objects[relation.name]
                facts.append((entity, relation, choices[rng.integers(len(choices))]))
        facts_per_task.append(facts)

    def encode(text: str) -> list[int]:
        return [BOS, *(ids[w] for w in text.split()), EOS]

    rendered = [
        (
            [encode(template.format(e=e, o=" ".join(o))) for e, relation, o in facts for template in relation.templates],
            [encode(f"{e} {relation.name} {' '.join(o)}") for e, relation, o in facts],
            [len(o) for _, _, o in facts],
        )
        for facts in facts_per_task
    ]
    context = max(len(s) for sentences, recalls, _ in rendered for s in sentences + recalls)
    built = []
    for sentences, recalls, object_lengths in rendered:
        recall = _pad(recalls, context)
        mask = np.zeros_like(recall, dtype=bool)
        for row, (sequence, length) in enumerate(zip(recalls, object_lengths)):
            mask[row, len(sequence) - 1 - length : len(sequence) - 1] = True  # the object, before "."
        built.append(KnowledgeTask(_pad(sentences, context), recall, mask))
    return KnowledgeStream(tuple(built), vocab, context)


def next_token_loss(model: nn.Module, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting ``tokens[:, t+1]`` from ``tokens[:, :t+1]``, padding ignored:
    ``-(1/n) sum log p(x_{t+1} | x_{<=t})`` over the ``n`` non-padding targets (``reduction="sum"``: the sum)."""
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=PAD, reduction=reduction)


def sentence_log_likelihood(model: nn.Module, task: KnowledgeTask, n: int) -> torch.Tensor:
    """EWC's per-example log-likelihood for a language model: the mean log-probability of sentence
    ``n``'s tokens, ``(1/L) sum_t log p(x_{t+1} | x_{<=t})``, on the scale of the training loss."""
    device = next(model.parameters()).device
    return -next_token_loss(model, torch.from_numpy(task.x_train[n : n + 1]).to(device))


@torch.no_grad()
def recall(model: nn.Module, task: KnowledgeTask, chunk: int = 512) -> float:
    """Fraction of ``task``'s facts whose every object token is the model's argmax given what precedes it."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    recalled = 0
    for start in range(0, len(task.recall), chunk):
        tokens = torch.from_numpy(task.recall[start : start + chunk]).to(device)
        mask = torch.from_numpy(task.object_mask[start : start + chunk, 1:]).to(device)
        right = model(tokens[:, :-1]).argmax(dim=-1) == tokens[:, 1:]
        recalled += int((right | ~mask).all(dim=1).sum())
    model.train(was_training)
    return recalled / len(task.recall)


@torch.no_grad()
def perplexity(model: nn.Module, task: KnowledgeTask, chunk: int = 512) -> float:
    """``exp`` of the mean next-token cross-entropy over all of ``task``'s sentences (padding ignored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(task.x_train), chunk):
        tokens = torch.from_numpy(task.x_train[start : start + chunk]).to(device)
        total += float(next_token_loss(model, tokens, reduction="sum"))
        count += int((tokens[:, 1:] != PAD).sum())
    model.train(was_training)
    return math.exp(total / count)


class PeakMemory:
    """Peak memory of training beyond what was held when it started, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
    allocated at the start (torch's allocator only: an onnxruntime CUDA session allocates its own).
    CPU on Linux: the kernel's peak resident size ``VmHWM`` after resetting it (``5`` into
    ``/proc/self/clear_refs``), minus ``VmRSS`` at the start; freed heap pages are handed back first
    (``malloc_trim``) so a run does not hide its growth in an earlier run's leftovers. Elsewhere,
    or where ``/proc`` cannot be written: NaN.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.start = torch.cuda.memory_allocated(device)
        else:
            self.start = None
            if sys.platform.startswith("linux"):
                release_free_memory()
                try:
                    with open("/proc/self/clear_refs", "w") as clear:
                        clear.write("5")
                    self.start = status_kib("VmRSS") * 1024
                except OSError:  # a sandbox that hides /proc: no measurement rather than a wrong one
                    pass

    def peak_mib(self) -> float:
        """MiB above the start at the highest point since then."""
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        if self.start is None:
            return float("nan")
        return (status_kib("VmHWM") * 1024 - self.start) / 2**20


def warm_up(config: KnowledgeConfig, stream: KnowledgeStream) -> None:
    """One training step of a throwaway model with ``torch.optim.Adam``, so that one-time setup
    (torch's lazy initialization and imports, thread pools, the CUDA context) is not charged to the
    first method's time and memory."""
    model = make_gpt(config.size, len(stream.vocab), stream.context, seed=0, device=config.device)
    optimizer = torch.optim.Adam(model.parameters())
    next_token_loss(model, torch.from_numpy(stream.tasks[0].x_train[: config.batch_size]).to(config.device)).backward()
    optimizer.step()


def run_knowledge_once(config: KnowledgeConfig, method: Method, seed: int, stream: KnowledgeStream, progress: Progress | None = None) -> dict[str, Any]:
    """Train one fresh GPT through ``stream`` with ``method``; the record of that run.

    Keys: ``R`` (recall matrix), ``b`` (recall at initialization), ``ACC``/``BWT``/``FWT`` (GEM,
    from ``R``), ``P`` (perplexity of task ``j``'s sentences after task ``i``), ``perplexity`` (the
    geometric mean of the last row of ``P``), ``ms_per_iteration`` (mean time of a training
    iteration), ``seconds`` (training wall time, end-of-task work such as EWC's Fisher included,
    evaluations not), ``peak_memory_mib`` (:class:`PeakMemory`), ``parameters`` and ``losses``.
    """
    device = torch.device(config.device)
    model = make_gpt(config.size, len(stream.vocab), stream.context, seed, device)
    memory = PeakMemory(device)
    optimizer = method.make_optimizer(list(model.parameters()))
    regularizer = method.make_regularizer() if method.make_regularizer is not None else None
    sentences = [torch.from_numpy(task.x_train).to(device) for task in stream.tasks]
    rng = np.random.default_rng(seed)
    count = len(stream.tasks)
    R, P = np.zeros((count, count)), np.zeros((count, count))
    b = np.array([recall(model, task) for task in stream.tasks])
    losses: list[float] = []
    step_seconds = hook_seconds = 0.0
    for i, task in enumerate(stream.tasks):
        for _ in range(config.iters):
            index = torch.from_numpy(rng.integers(0, len(task.x_train), size=config.batch_size)).to(device)
            started = time.perf_counter()
            optimizer.zero_grad()
            loss = next_token_loss(model, sentences[i][index])
            if regularizer is not None:
                loss = loss + regularizer.penalty(model)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))  # on a GPU this waits for the step: the time is the step's
            step_seconds += time.perf_counter() - started
            if progress is not None:
                progress(1)
        R[i] = [recall(model, t) for t in stream.tasks]
        P[i] = [perplexity(model, t) for t in stream.tasks]
        if i < count - 1:
            started = time.perf_counter()
            if regularizer is not None:
                regularizer.on_task_end(model, task)
            if hasattr(optimizer, "task_boundary"):
                optimizer.task_boundary()
            hook_seconds += time.perf_counter() - started
    return {
        "R": [rounded(row) for row in R],
        "b": rounded(b),
        "ACC": average_accuracy(R),
        "BWT": backward_transfer(R),
        "FWT": forward_transfer(R, b),
        "P": [rounded(row, 3) for row in P],
        "perplexity": float(np.exp(np.log(P[-1]).mean())),
        "ms_per_iteration": 1000.0 * step_seconds / len(losses),
        "seconds": step_seconds + hook_seconds,
        "peak_memory_mib": memory.peak_mib(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "losses": rounded(losses),
    }


def knowledge_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """The markdown table: one row per optimizer, mean ± std over seeds."""
    rows = [
        [
            f"`{name}`",
            format_mean_std(stats["ACC"]),
            format_mean_std(stats["BWT"], signed=True),
            format_mean_std(stats["FWT"], signed=True),
            format_mean_std(stats["perplexity"], digits=2),
            format_mean_std(stats["ms_per_iteration"], digits=1),
            format_mean_std(stats["peak_memory_mib"], digits=1),
        ]
        for name, stats in summary.items()
    ]
    header = ["optimizer", "final recall (ACC)", "BWT", "FWT", "perplexity", "ms / iteration", "peak MiB"]
    return markdown_table(header, rows)


def run_knowledge(
    config: KnowledgeConfig,
    methods: dict[str, Method],
    out: str | Path,
    resume: bool = False,
    progress: Progress | None = None,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; write ``results.json``, ``results.md``, ``heatmaps.png`` and
    ``knowledge.png`` into ``out`` (see :func:`~lto_core.bench.common.run_benchmark`)."""

    def prepare(seed: int) -> KnowledgeStream:
        stream = make_knowledge_stream(config.tasks, config.entities, config.relations, seed)
        warm_up(config, stream)
        return stream

    def run_one(name: str, method: Method, seed: int, stream: KnowledgeStream) -> dict[str, Any]:
        return run_knowledge_once(config, method, seed, stream, progress)

    shape = GPT_SIZES[config.size]
    heading = (
        f"`lto bench knowledge`: {config.tasks} tasks x {config.entities} entities x {config.relations} relations, "
        f"GPT {config.size} ({shape.layers} layers, width {shape.dim}), {config.iters} steps per task, "
        f"batch {config.batch_size}, {config.device}, {config.seeds} seed(s); mean ± std over seeds"
    )
    return run_benchmark(
        "knowledge",
        asdict(config),
        methods,
        out,
        seeds=config.seeds,
        steps_per_run=config.tasks * config.iters,
        prepare=prepare,
        run_one=run_one,
        metrics=METRICS,
        table=knowledge_table,
        heading=heading,
        plot=plot_knowledge,
        resume=resume,
        progress=progress,
        notes=notes,
    )
