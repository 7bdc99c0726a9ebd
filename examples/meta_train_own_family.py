"""Meta-train your own optimizer on your own task family, then train with it.

A task family is a distribution over continual-learning problems: which data, which stream kinds
and scenarios, which architectures, how many tasks, how many steps per task, which learning
rates. Here the data is your own: a ``.npz`` file (``x_train, y_train, x_test, y_test``), made
for the example with scikit-learn's ``make_classification``, standing in for a data set of
yours. The script writes it, describes the family, meta-trains the update network on problems
drawn from it (keeping the checkpoint that validates best on held-out problems), and compares
the result with Adam on a fresh problem from the same family.

    python examples/meta_train_own_family.py --out-dir my_run            # 60 meta-iterations of 8 problems
    python examples/meta_train_own_family.py --out-dir my_run --quick    # 2 meta-iterations of 2 problems (CI)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import make_classification

from lto_adapters.torch import LTO
from lto_core.continual import run_stream
from lto_core.families import Family, build_problem
from lto_core.meta_train import MetaTrainConfig, meta_train


def write_own_data(path: Path, seed: int) -> Path:
    """A 6-class, 20-feature classification set saved as the ``.npz`` layout lto reads."""
    x, y = make_classification(
        n_samples=1500, n_features=20, n_informative=12, n_classes=6, n_clusters_per_class=2, random_state=seed
    )
    cut = 1200
    np.savez(path, x_train=x[:cut].astype(np.float32), y_train=y[:cut], x_test=x[cut:].astype(np.float32), y_test=y[cut:])
    return path


# --8<-- [start:family]
def my_family(data: str, quick: bool) -> tuple[Family, Family]:
    """The training family and a validation family of longer streams from the same data."""
    train = Family(
        data=(data,),
        streams=("split", "permuted"),
        scenarios=("task", "domain"),
        archs=("mlp",),
        widths=(32, 64),
        depths=(1, 2),
        tasks=(2, 3),
        steps_per_task=(10, 10) if quick else (30, 60),
        lr=(1e-3, 3e-3),
    )
    validation = Family(
        data=(data,),
        streams=("split", "permuted"),
        scenarios=("task", "domain"),
        archs=("mlp",),
        widths=(32, 64),
        depths=(1, 2),
        tasks=(3, 3),
        steps_per_task=(10, 10) if quick else (100, 100),
        lr=(1e-3, 1e-3),
    )
    return train, validation
# --8<-- [end:family]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 meta-iterations on tiny problems (for CI)")
    parser.add_argument("--out-dir", type=Path, default=None, help="run directory (default: a temporary folder)")
    parser.add_argument("--iterations", type=int, default=60, help="meta-training iterations (populations of problems)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the inner models are tiny: more threads only add overhead (as `lto meta-train --threads 1`)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out_dir or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        data = str(write_own_data(out / "my_data.npz", args.seed))
        family, validation = my_family(data, args.quick)
        # --8<-- [start:train]
        config = MetaTrainConfig(
            iterations=2 if args.quick else args.iterations,
            family=family,
            population=2 if args.quick else 8,  # problems of one shape trained together per iteration
            validation_family=validation,
            validation_problems=1 if args.quick else 3,
            validation_population=1 if args.quick else 4,
            validate_every=2 if args.quick else 10,
            truncation=10,
        )
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))  # for `lto meta-train --config`
        progress = meta_train(out / "run", config, seed=args.seed)
        # --8<-- [end:train]
        print(f"meta-trained {progress.iteration} iterations ({progress.problems} problems) in {progress.seconds:.0f} s")
        count = config.validation_problems * config.validation_population
        print(f"validation on {count} held-out problem(s), mean ACC / BWT:")
        print(f"  Adam                  {progress.baseline['acc']:.3f} {progress.baseline['bwt']:+.3f}")
        if progress.initial:
            print(f"  starting network      {progress.initial['acc']:.3f} {progress.initial['bwt']:+.3f}")
        for record in progress.history:
            if "val_acc" in record:
                print(f"  after iteration {record['iteration']:3d}   {record['val_acc']:.3f} {record['val_bwt']:+.3f}")
        if progress.best_iteration > 0:
            checkpoint = out / "run" / "best.safetensors"
            print(f"best checkpoint: iteration {progress.best_iteration} -> {checkpoint.name}")
        else:
            checkpoint = out / "run" / "last.safetensors"
            print(f"no validation beat the starting network, so there is no best.safetensors; using {checkpoint.name}")

        # --8<-- [start:use]
        spec = validation.sample(np.random.default_rng([args.seed, 777]))  # a problem no run has seen
        print(f"\nfresh problem: {spec.stream}, {spec.scenario}-incremental, {spec.tasks} tasks x {spec.steps_per_task} steps, lr {spec.lr:g}")
        print(f"{'optimizer':<14}{'ACC':>7}{'BWT':>8}")
        for name in ("Adam", "your optimizer"):
            stream, model = build_problem(spec)
            if name == "Adam":
                optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
            else:
                optimizer = LTO(model.parameters(), lr=spec.lr, backend="torch", checkpoint=checkpoint)
            result = run_stream(model, optimizer, stream, spec.steps_per_task, batch_size=spec.batch_size, seed=spec.seed)
            print(f"{name:<14}{result.acc:7.3f}{result.bwt:+8.3f}")
        # --8<-- [end:use]
        print(f"\nnext: lto export --checkpoint {checkpoint} --out my_optimizer.onnx")


if __name__ == "__main__":
    main()
