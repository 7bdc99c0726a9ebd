"""How much a per-problem choice of protection could gain over the best single hand-set rule.

A learned optimizer beats a fixed rule only where problems differ in how much protection they
want. This script measures that headroom on a meta-training family, before any meta-training:
it trains every drawn problem with each hand-set closed form in a small grid (gate slope
``beta``, pull ``rho``; ``0,0`` is Adam; see :func:`lto_core.step.protected_update`) and reports

* each setting's mean ACC and its paired difference from Adam (mean, standard error over
  problems and over population means);
* the best single setting (what a fixed rule tuned on the whole family gets);
* a cross-fitted per-shape choice: for each population (problems of one shape that differ in
  seed and learning rate) the setting best on half its problems, scored on the other half, and
  the reverse; its gain over the best single setting (scored the same way) is what knowing the
  problem's shape is worth, without the optimism of picking and scoring on the same runs;
* a cross-fitted per-kind choice (stream kind x scenario, chosen on the other populations of the
  kind): what a rule that sees only the kind of stream could get;
* each row's paired difference from Adam per kind.

``--baselines`` also trains every problem with hand-designed methods, as ``lto bench cl`` runs
them (``torch.optim.Adam`` plus a penalty, :func:`run_baseline`): ``online-ewc:1000`` is online EWC
at lambda 1000, ``ewc`` plain EWC at ``lto bench cl``'s default lambda, ``adam`` no penalty (the
same training as the ``0:0`` row, through this other path: its difference from that row is the
paths' float rounding). They become rows after the hand-set ones, compared with Adam and chosen
among like them. The file holds ``settings`` (the hand-set pairs), ``baselines`` (their names;
absent in files written without them) and one record per population whose ``acc`` and ``bwt``
are ``[row][problem]``, the hand-set rows first.

``--checkpoint PATH`` (repeatable) also trains every problem with a saved network (a meta-training
run's ``best.safetensors``), through the same path as the hand-set rows: whether a meta-trained
network chooses protection per kind on the family it trained on, against the rules it could
have chosen among. Its rows come after the hand-set ones, named by their path (file key
``checkpoints``, absent in files written without them), before the baselines.

``score --against 0:1`` (a setting ``beta:rho``, a checkpoint's path or a baseline's name) compares
the rows with that row instead of Adam, in the overall and the per-kind differences.

    python scripts/protection_headroom.py run --config configs/meta-train-population.json --populations 48 --out H.json
    python scripts/protection_headroom.py run --config configs/meta-train-population.json --settings 0:0,2:0,0:1 \
        --baselines adam,online-ewc,online-ewc:1,online-ewc:10000,ewc --out B.json
    python scripts/protection_headroom.py score H.json
    python scripts/protection_headroom.py run --config C.json --settings 0:0,0:1 --checkpoint runs/R/best.safetensors --out N.json
    python scripts/protection_headroom.py score B.json --against 0:1
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import torch

from lto_core.baselines import EWC, OnlineEWC
from lto_core.checkpoint import load_checkpoint
from lto_core.continual import run_stream
from lto_core.evaluation import hand_set_graph, parse_settings, run_population
from lto_core.families import ProblemSpec, build_problem
from lto_core.meta_train import MetaTrainConfig
from lto_core.metrics import average_accuracy, backward_transfer

#: Default ``(beta, rho)`` pairs: gate slope and pull strength of the hand-set network; the first is Adam.
SETTINGS = "0:0,1:0,2:0,4:0,8:0,0:1,2:1,8:1"
#: Seed offset of the drawn populations, away from meta-training's and validation's keys.
HEADROOM_KEY = 2_000_003
#: The penalty each ``--baselines`` name adds to ``torch.optim.Adam`` (``lto bench cl``'s names; ``adam``: none).
PENALTIES = {"adam": None, "ewc": EWC, "online-ewc": OnlineEWC}
#: ``lto bench cl --ewc-lambda``'s default: the lambda of ``ewc`` or ``online-ewc`` named without one.
EWC_LAMBDA = 100.0


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    config = MetaTrainConfig.from_dict(json.loads(open(args.config).read())) if args.config else MetaTrainConfig()
    family = config.validation_family if args.validation_family else config.family
    settings = _settings(args.settings)
    baselines = _baselines(args.baselines)
    networks = [_network(path) for path in args.checkpoint]
    if baselines and family.hidden_boundaries:
        raise SystemExit("--baselines needs told task boundaries (EWC consolidates at them), but this family hides them "
                         f"with probability {family.hidden_boundaries}")
    records = []
    start = time.time()
    for i in range(args.populations):
        specs = family.sample_population(np.random.default_rng([args.seed, HEADROOM_KEY, i]), args.size)
        rows = [run_population(hand_set_graph(config.network, beta, rho).eval(), specs) for beta, rho in settings]
        rows += [run_population(network, specs) for network in networks]
        rows += [[run_baseline(name, spec) for spec in specs] for name in baselines]
        accs = [[average_accuracy(R) for R in mats] for mats in rows]
        bwts = [[backward_transfer(R) for R in mats] for mats in rows]
        s = specs[0]
        records.append({"population": i, "data": s.data, "stream": s.stream, "scenario": s.scenario, "arch": s.arch,
                        "tasks": s.tasks, "steps_per_task": s.steps_per_task, "acc": accs, "bwt": bwts})
        print(f"{i:3d} {s.data:9s} {s.stream:8s} {s.scenario:6s} {s.arch:11s} T={s.tasks} n={s.steps_per_task:4d} "
              f"ACC by row {' '.join(f'{np.mean(a):.3f}' for a in accs)}  ({time.time() - start:.0f} s)", flush=True)
        with open(args.out, "w") as f:
            json.dump({"settings": settings, "checkpoints": args.checkpoint, "baselines": baselines, "records": records}, f)


def _settings(text: str) -> list[tuple[float, float]]:
    """``"beta:rho,..."`` -> pairs (:func:`~lto_core.evaluation.parse_settings`); the first must be
    Adam (``0:0``), which every row is compared with."""
    try:
        pairs = parse_settings(text)
    except ValueError as err:
        raise SystemExit(f"--settings: {err}") from None
    if not pairs or pairs[0] != (0.0, 0.0):
        raise SystemExit(f"--settings must start with Adam, 0:0 (got {text!r}): the rows are compared with it")
    return pairs


def _network(path: str):
    """The saved network at ``path``, ready to run; a missing or unreadable checkpoint stops the run
    before any problem trains."""
    try:
        return load_checkpoint(path)[0].eval()
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"--checkpoint {path}: {err}") from None


def _baselines(text: str) -> list[str]:
    """``"adam,online-ewc,ewc:10"`` -> ``["adam", "online-ewc:100", "ewc:10"]``: each name of
    :data:`PENALTIES` with its lambda written out (:data:`EWC_LAMBDA` when none is given)."""
    names = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        kind, _, lam = item.partition(":")
        if kind not in PENALTIES or (kind == "adam" and lam):
            raise SystemExit(f"--baselines: {item!r} is not adam, ewc[:LAMBDA] or online-ewc[:LAMBDA]")
        if kind == "adam":
            names.append(kind)
            continue
        try:
            value = float(lam or EWC_LAMBDA)
        except ValueError:
            value = -1.0
        if not 0.0 <= value < float("inf"):
            raise SystemExit(f"--baselines: {item!r} needs a lambda that is a finite number >= 0")
        names.append(f"{kind}:{value:g}")
    return names


def run_baseline(name: str, spec: ProblemSpec) -> np.ndarray:
    """The accuracy matrix of ``spec``'s problem trained by the baseline ``name`` (from
    :func:`_baselines`): ``torch.optim.Adam`` at the problem's learning rate plus the penalty of
    :data:`PENALTIES` at the name's lambda, as ``lto bench cl`` runs it (its Fisher estimated and
    anchor moved at every task end).

    The problem is :func:`run_population`'s: the same stream and initial weights
    (:func:`~lto_core.families.build_problem`), and the same batches, since
    :func:`~lto_core.continual.run_stream` draws them from the problem's seed in the order
    :meth:`~lto_core.population.Population.training_batch` does, blends included. ``adam`` is
    therefore that function's Adam (``0:0``) up to float rounding: the population's batched
    forward rounds differently, and Adam's step ``g / (|g| + eps)`` turns rounding in a gradient
    that is zero in exact arithmetic (an attention key bias) into a full-size step.
    """
    kind, _, lam = name.partition(":")
    stream, model = build_problem(spec)
    penalty = PENALTIES[kind](float(lam)) if PENALTIES[kind] else None
    result = run_stream(model, torch.optim.Adam(model.parameters(), lr=spec.lr), stream, spec.steps_per_task,
                        batch_size=spec.batch_size, seed=spec.seed, penalty=getattr(penalty, "penalty", None),
                        on_task_end=getattr(penalty, "on_task_end", None), blend=spec.blend_steps)
    return result.R


def score(args: argparse.Namespace) -> None:
    doc = json.loads(open(args.file).read())
    labels = [f"beta {b:g} rho {r:g}" for b, r in doc["settings"]] + _row_names(doc)[len(doc["settings"]):]
    ref = _row(doc, args.against)
    versus = "Adam" if args.against == "0:0" else args.against
    recs = doc["records"]
    acc = np.stack([np.array(r["acc"]) for r in recs])  # [pop, row, problem]
    bwt = np.stack([np.array(r["bwt"]) for r in recs])
    per_problem = acc.transpose(1, 0, 2).reshape(len(labels), -1)  # [row, all problems]
    n = per_problem.shape[1]
    print(f"{len(recs)} populations, {n} problems; ACC and BWT per row, paired difference from {versus} "
          "(+- SE over problems; [SE over population means], for problems of a population are alike):")
    for k, label in enumerate(labels):
        d = acc[:, k] - acc[:, ref]
        print(f"  {label:16s}: ACC {per_problem[k].mean():.4f}  BWT {bwt[:, k].mean():+.4f}  "
              f"vs {versus} {d.mean():+.4f} +- {_se(d.ravel()):.4f} [{_se(d.mean(1)):.4f}]")
    fixed = int(per_problem.mean(1).argmax())
    print(f"best single row: {labels[fixed]} (chosen on all problems: optimistic)")
    # Per shape, cross-fitted on halves of each population.
    half = acc.shape[2] // 2
    shape_gain = []
    for a in acc:
        x, y = a[:, :half], a[:, half:]
        chosen = 0.5 * (y[x.mean(1).argmax()].mean() + x[y.mean(1).argmax()].mean())
        shape_gain.append(chosen - a[fixed].mean())
    print(f"per-shape choice (cross-fitted halves) minus best single: {np.mean(shape_gain):+.4f} +- "
          f"{_se(np.array(shape_gain)):.4f} per population")
    # Per kind (stream x scenario), chosen on the other populations of the kind.
    kinds = defaultdict(list)
    for p, r in enumerate(recs):
        kinds[(r["stream"], r["scenario"])].append(p)
    kinds = dict(sorted(kinds.items()))
    kind_gain = []
    for members in kinds.values():
        for p in members:
            others = [q for q in members if q != p]
            if not others:
                continue
            k = int(acc[others].mean(axis=(0, 2)).argmax())
            kind_gain.append(acc[p, k].mean() - acc[p, fixed].mean())
    kind_gain = np.array(kind_gain)
    if len(kind_gain):
        print(f"per-kind choice (leave-one-population-out) minus best single: {kind_gain.mean():+.4f} +- "
              f"{_se(kind_gain):.4f} ({len(kind_gain)} populations in kinds seen twice)")
    print("best row per kind (all its populations):")
    for kind, members in kinds.items():
        means = acc[members].mean(axis=(0, 2))
        k = int(means.argmax())
        print(f"  {kind[0]:8s} {kind[1]:6s} ({len(members)} pops): {labels[k]} "
              f"ACC {means[k]:.4f}, Adam {means[0]:.4f}, best single {means[fixed]:.4f}")
    print(f"paired difference from {versus} per kind (mean +- SE over the kind's problems):")
    heads = [f"{stream}/{scenario} ({len(m)} pops)" for (stream, scenario), m in kinds.items()]
    width = max(map(len, heads))
    print(f"  {'':16s}" + "".join(f"  {h:>{width}s}" for h in heads))
    for k, label in ((k, label) for k, label in enumerate(labels) if k != ref):
        cells = [(acc[m, k] - acc[m, ref]).ravel() for m in kinds.values()]
        print(f"  {label:16s}" + "".join(f"  {f'{d.mean():+.3f} +- {_se(d):.3f}':>{width}s}" for d in cells))


def _row_names(doc: dict) -> list[str]:
    """A run's rows in the order of its records: hand-set ``beta:rho``, checkpoints' paths, baselines' names."""
    return [f"{b:g}:{r:g}" for b, r in doc["settings"]] + doc.get("checkpoints", []) + doc.get("baselines", [])


def _row(doc: dict, name: str) -> int:
    """The row of ``name`` in a run's file (:func:`_row_names`)."""
    keys = _row_names(doc)
    if name not in keys:
        raise SystemExit(f"--against: {name!r} is no row of this file; its rows are {', '.join(keys)}")
    return keys.index(name)


def _se(values: np.ndarray) -> float:
    """Standard error of the mean of ``values`` (``nan`` for fewer than two)."""
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="train every drawn problem with every hand-set setting")
    r.add_argument("--config", default=None, help="meta-training config JSON (its family is drawn)")
    r.add_argument("--validation-family", action="store_true", help="draw from the config's validation family instead")
    r.add_argument("--populations", type=int, default=48)
    r.add_argument("--size", type=int, default=4, help="problems per population (even: halves are cross-fitted)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--settings", default=SETTINGS, help="comma-separated beta:rho pairs, Adam (0:0) first")
    r.add_argument("--checkpoint", action="append", default=[], help="a saved network also run (repeatable)")
    r.add_argument("--baselines", default="", help="comma-separated hand-designed methods also run, adam, ewc[:LAMBDA] or "
                   f"online-ewc[:LAMBDA] (lambda {EWC_LAMBDA:g}, lto bench cl's default, when none is given)")
    r.add_argument("--out", required=True)
    s = sub.add_parser("score", help="summarize a run's file")
    s.add_argument("file")
    s.add_argument("--against", default="0:0", help="the row the others are compared with: beta:rho, a checkpoint's path or a baseline's name")
    args = parser.parse_args()
    run(args) if args.verb == "run" else score(args)


if __name__ == "__main__":
    main()
