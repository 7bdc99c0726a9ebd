"""How much a per-problem choice of protection could gain over the best single hand-set rule.

A learned optimizer beats a fixed rule only where problems differ in how much protection they
want. This script measures that headroom on a meta-training family, before any meta-training:
it trains every drawn problem with each hand-set closed form in a small grid (gate slope
``beta``, pull ``rho``; ``0,0`` is Adam; see :func:`lto_core.step.protected_update`) and reports

* each setting's mean ACC and its paired difference from Adam (mean, standard error);
* the best single setting (what a fixed rule tuned on the whole family gets);
* a cross-fitted per-shape choice: for each population (problems of one shape that differ in
  seed and learning rate) the setting best on half its problems, scored on the other half, and
  the reverse; its gain over the best single setting (scored the same way) is what knowing the
  problem's shape is worth, without the optimism of picking and scoring on the same runs;
* a cross-fitted per-kind choice (stream kind x scenario, chosen on the other populations of the
  kind): what a rule that sees only the kind of stream could get.

    python scripts/protection_headroom.py run --config configs/meta-train-population.json --populations 48 --out H.json
    python scripts/protection_headroom.py score H.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import torch

from lto_core.evaluation import hand_set_graph, parse_settings, run_population
from lto_core.meta_train import MetaTrainConfig
from lto_core.metrics import average_accuracy, backward_transfer

#: Default ``(beta, rho)`` pairs: gate slope and pull strength of the hand-set network; the first is Adam.
SETTINGS = "0:0,1:0,2:0,4:0,8:0,0:1,2:1,8:1"
#: Seed offset of the drawn populations, away from meta-training's and validation's keys.
HEADROOM_KEY = 2_000_003


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    config = MetaTrainConfig.from_dict(json.loads(open(args.config).read())) if args.config else MetaTrainConfig()
    family = config.validation_family if args.validation_family else config.family
    settings = _settings(args.settings)
    records = []
    start = time.time()
    for i in range(args.populations):
        specs = family.sample_population(np.random.default_rng([args.seed, HEADROOM_KEY, i]), args.size)
        accs, bwts = [], []
        for beta, rho in settings:
            mats = run_population(hand_set_graph(config.network, beta, rho).eval(), specs)
            accs.append([average_accuracy(R) for R in mats])
            bwts.append([backward_transfer(R) for R in mats])
        s = specs[0]
        records.append({"population": i, "data": s.data, "stream": s.stream, "scenario": s.scenario, "arch": s.arch,
                        "tasks": s.tasks, "steps_per_task": s.steps_per_task, "acc": accs, "bwt": bwts})
        print(f"{i:3d} {s.data:9s} {s.stream:8s} {s.scenario:6s} {s.arch:11s} T={s.tasks} n={s.steps_per_task:4d} "
              f"ACC by setting {' '.join(f'{np.mean(a):.3f}' for a in accs)}  ({time.time() - start:.0f} s)", flush=True)
        with open(args.out, "w") as f:
            json.dump({"settings": settings, "records": records}, f)


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


def score(args: argparse.Namespace) -> None:
    doc = json.loads(open(args.file).read())
    settings = [tuple(s) for s in doc["settings"]]
    recs = doc["records"]
    acc = np.stack([np.array(r["acc"]) for r in recs])  # [pop, setting, problem]
    bwt = np.stack([np.array(r["bwt"]) for r in recs])
    per_problem = acc.transpose(1, 0, 2).reshape(len(settings), -1)  # [setting, all problems]
    n = per_problem.shape[1]
    print(f"{len(recs)} populations, {n} problems; ACC and BWT per setting (beta, rho), paired difference from Adam:")
    for k, s in enumerate(settings):
        d = per_problem[k] - per_problem[0]
        print(f"  beta {s[0]:g} rho {s[1]:g}: ACC {per_problem[k].mean():.4f}  BWT {bwt[:, k].mean():+.4f}  "
              f"vs Adam {d.mean():+.4f} +- {d.std(ddof=1) / np.sqrt(n):.4f}")
    fixed = int(per_problem.mean(1).argmax())
    print(f"best single setting: beta {settings[fixed][0]:g} rho {settings[fixed][1]:g} (chosen on all problems: optimistic)")
    # Per shape, cross-fitted on halves of each population.
    half = acc.shape[2] // 2
    shape_gain = []
    for a in acc:
        x, y = a[:, :half], a[:, half:]
        chosen = 0.5 * (y[x.mean(1).argmax()].mean() + x[y.mean(1).argmax()].mean())
        shape_gain.append(chosen - a[fixed].mean())
    shape_gain = np.array(shape_gain)
    print(f"per-shape choice (cross-fitted halves) minus best single: {shape_gain.mean():+.4f} +- "
          f"{shape_gain.std(ddof=1) / np.sqrt(len(shape_gain)):.4f} per population")
    # Per kind (stream x scenario), chosen on the other populations of the kind.
    kinds = defaultdict(list)
    for p, r in enumerate(recs):
        kinds[(r["stream"], r["scenario"])].append(p)
    kind_gain = []
    for members in kinds.values():
        for p in members:
            others = [q for q in members if q != p]
            if not others:
                continue
            k = int(acc[others].mean(axis=(0, 2)).argmax())
            kind_gain.append(acc[p, k].mean() - acc[p, fixed].mean())
    kind_gain = np.array(kind_gain)
    print(f"per-kind choice (leave-one-population-out) minus best single: {kind_gain.mean():+.4f} +- "
          f"{kind_gain.std(ddof=1) / np.sqrt(len(kind_gain)):.4f} ({len(kind_gain)} populations in kinds seen twice)")
    print("best setting per kind (all its populations):")
    for kind, members in sorted(kinds.items()):
        means = acc[members].mean(axis=(0, 2))
        k = int(means.argmax())
        print(f"  {kind[0]:8s} {kind[1]:6s} ({len(members)} pops): beta {settings[k][0]:g} rho {settings[k][1]:g} "
              f"ACC {means[k]:.4f}, Adam {means[0]:.4f}, best single {means[fixed]:.4f}")


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
    r.add_argument("--out", required=True)
    s = sub.add_parser("score", help="summarize a run's file")
    s.add_argument("file")
    args = parser.parse_args()
    run(args) if args.verb == "run" else score(args)


if __name__ == "__main__":
    main()
