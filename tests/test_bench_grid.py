"""``lto bench cl --grid``: every baseline also over its small grid, its best-of-grid reported beside its default."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lto_core.bench.cl import best_of_grid
from lto_export.bench_cli import CL_GRIDS
from lto_export.cli import main


def test_grid_runs_each_baselines_grid_and_reports_its_best_lto_untuned(tmp_path):
    args = ["bench", "cl", "--quick", "--iters", "8", "--seeds", "1", "--tasks", "2", "--optimizers", "adam,gated-adam,lto", "--grid",
            "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    names = set(doc["summary"])
    assert names == {"adam", "adam@lr=0.0003", "adam@lr=0.003", "gated-adam", *(f"gated-adam@gate_c={c:g}" for c in (0.5, 2, 4, 8)), "lto"}
    assert doc["config"]["optimizers"]["gated-adam@gate_c=8"]["gate_c"] == 8.0
    best = best_of_grid(doc["summary"])
    assert set(best) == {"adam", "gated-adam"}  # LTO has no grid: it runs untuned
    for name, (choice, grid) in best.items():
        runs = [n for n in names if n == name or n.startswith(name + "@")]
        assert doc["summary"][choice]["ACC"]["mean"] == max(doc["summary"][n]["ACC"]["mean"] for n in runs)
        assert grid.count(":") == len(runs)
    markdown = (tmp_path / "results.md").read_text()
    assert "Best of each method's grid" in markdown and f"`{best['gated-adam'][0]}`" in markdown
    # the main table shows each method at its settings only
    main_table = markdown.split("Best of")[0]
    assert "`adam@" not in main_table and "`lto`" in main_table


def test_every_grid_holds_its_methods_default():
    defaults = {"sgd_lr": 0.03, "lr": 1e-3, "ewc_lambda": 100.0, "si_c": 1.0, "gate_c": 1.0, "upgd_lr": 0.03}
    for setting, grid in CL_GRIDS.values():
        assert defaults[setting] in grid
