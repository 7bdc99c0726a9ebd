"""PNG figures of benchmark results (matplotlib, imported only when drawing).

Every figure is drawn from a ``results.json`` payload, so a saved result can be re-plotted, and
every curve is the mean over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Line styles cycled over optimizers, so curves that coincide (LTO's Adam-equivalent default
#: and Adam) stay visible on top of each other.
LINE_STYLES = ("-", "--", "-.", ":")


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_optimizer(payload: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by optimizer, in the order of ``payload["summary"]``."""
    return {name: [r for r in payload["records"] if r["optimizer"] == name] for name in payload["summary"]}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each run of ``window`` consecutive values: ``out[k] = mean(values[k : k + window])``."""
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def draw_heatmaps(payload: dict[str, Any], cell: str, title: str, path: Path) -> None:
    """Draw the mean matrix ``R`` of each optimizer side by side (``cell``: what ``R[i][j]`` is,
    the x label), each panel titled with its ACC and BWT, into ``path``."""
    plt = _pyplot()
    groups = _by_optimizer(payload)
    tasks = payload["config"]["tasks"]
    count = len(groups)
    fig, axes = plt.subplots(1, count, figsize=(3.2 * count + 0.8, 3.6), squeeze=False)
    for ax, (name, records) in zip(axes[0], groups.items()):
        R = np.mean([np.asarray(r["R"]) for r in records], axis=0)
        image = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis")
        if tasks <= 10:
            for i in range(tasks):
                for j in range(tasks):
                    ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if R[i, j] < 0.6 else "black")
        stats = payload["summary"][name]
        ax.set_title(f"{name}\nACC {stats['ACC']['mean']:.3f}  BWT {stats['BWT']['mean']:+.3f}", fontsize=9)
        ax.set_xlabel(cell)
        ax.set_xticks(range(tasks), [str(j + 1) for j in range(tasks)])
        ax.set_yticks(range(tasks), [str(i + 1) for i in range(tasks)])
    axes[0][0].set_ylabel("after training task i")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_cl(payload: dict[str, Any], out: Path) -> list[Path]:
    """Draw ``heatmaps.png`` (mean accuracy matrix ``R`` per optimizer, side by side),
    ``task_accuracy.png`` (test accuracy on each task over training, per optimizer) and
    ``loss.png`` (training loss, penalty included, moving average); return their paths."""
    plt = _pyplot()
    groups = _by_optimizer(payload)
    config = payload["config"]
    tasks, iters = config["tasks"], config["iters"]
    count = len(groups)
    paths = [out / "heatmaps.png", out / "task_accuracy.png", out / "loss.png"]

    title = f"R[i][j], mean over {config['seeds']} seed(s): {config['stream']} {config['data']}, {config['scenario']}-incremental"
    draw_heatmaps(payload, "accuracy on task j", title, paths[0])

    fig, axes = plt.subplots(1, count, figsize=(3.4 * count, 3.2), squeeze=False, sharey=True)
    for ax, (name, records) in zip(axes[0], groups.items()):
        steps = records[0]["curve"]["steps"]
        curve = np.mean([np.asarray(r["curve"]["accuracy"]) for r in records], axis=0)
        for j in range(tasks):
            ax.plot(steps, curve[:, j], label=f"task {j + 1}", linewidth=1.2)
        for i in range(1, tasks):
            ax.axvline(i * iters, color="grey", linewidth=0.6, linestyle="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(0.0, 1.02)
    axes[0][0].set_ylabel("test accuracy")
    if tasks <= 10:
        axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("accuracy on each task over training (dashed: task boundaries)", fontsize=10)
    fig.savefig(paths[1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    window = max(1, iters // 20)
    for k, (name, records) in enumerate(groups.items()):
        losses = np.mean([np.asarray(r["losses"]) for r in records], axis=0)
        smooth = moving_average(losses, window)
        ax.plot(np.arange(len(smooth)) + window, smooth, label=name, linewidth=1.2, linestyle=LINE_STYLES[k % len(LINE_STYLES)])
    for i in range(1, tasks):
        ax.axvline(i * iters, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss (moving average of {window})")
    ax.legend(fontsize=8)
    fig.savefig(paths[2], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_train(payload: dict[str, Any], out: Path) -> list[Path]:
    """Draw ``curves.png``: training loss (moving average) and test accuracy over steps, one line
    per optimizer (mean over seeds, shaded ± std when there are several); return its path."""
    plt = _pyplot()
    groups = _by_optimizer(payload)
    iters = payload["config"]["iters"]
    window = max(1, iters // 50)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, (name, records) in enumerate(groups.items()):
        style = LINE_STYLES[k % len(LINE_STYLES)]
        losses = np.array([moving_average(np.asarray(r["losses"]), window) for r in records])
        x = np.arange(losses.shape[1]) + window
        line = loss_ax.plot(x, losses.mean(axis=0), label=name, linewidth=1.2, linestyle=style)[0]
        accuracy = np.array([r["curve"]["test_accuracy"] for r in records])
        steps = records[0]["curve"]["steps"]
        acc_ax.plot(steps, accuracy.mean(axis=0), label=name, linewidth=1.2, linestyle=style, color=line.get_color())
        if len(records) > 1:
            for ax, xs, ys in ((loss_ax, x, losses), (acc_ax, steps, accuracy)):
                ax.fill_between(xs, ys.mean(axis=0) - ys.std(axis=0), ys.mean(axis=0) + ys.std(axis=0), alpha=0.2, color=line.get_color())
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel(f"training loss (moving average of {window})")
    loss_ax.set_yscale("log")
    acc_ax.set_xlabel("training step")
    acc_ax.set_ylabel("test accuracy")
    acc_ax.legend(fontsize=8)
    config = payload["config"]
    fig.suptitle(f"{config['data']}, {config['arch']}, mean over {config['seeds']} seed(s)", fontsize=10)
    path = out / "curves.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [path]


def plot_summary(payloads: list[dict[str, Any]], out: Path) -> Path:
    """Draw ACC and BWT of several ``lto bench cl`` runs in one figure, the PNG ``out``.

    One group of bars per run (its stream, data, scenario and model), one bar per optimizer
    (mean over seeds, with a ± one standard deviation whisker when there are several), ACC
    above and BWT below. Optimizers that a run did not include are left out of its group.
    Returns ``out``.
    """
    plt = _pyplot()
    names: list[str] = []
    for payload in payloads:
        names += [n for n in payload["summary"] if n not in names]
    labels = [
        f"{c['stream']} {c['data']}\n{c['scenario']}-incr., {c['arch']}\n{c['seeds']} seeds"
        for c in (p["config"] for p in payloads)
    ]
    width = 0.8 / len(names)
    # ACC above BWT, so the figure stays legible in a page's text column.
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 2.2 * len(payloads) + 2.0), 7.0))
    for ax, metric in zip(axes, ("ACC", "BWT")):
        for k, name in enumerate(names):
            xs, means, stds = [], [], []
            for i, payload in enumerate(payloads):
                if name in payload["summary"]:
                    stat = payload["summary"][name][metric]
                    xs.append(i + (k - (len(names) - 1) / 2) * width)
                    means.append(stat["mean"])
                    stds.append(stat["std"])
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=name, hatch="//" if name.startswith("lto") else None, edgecolor="black", linewidth=0.4)
        ax.set_xticks(range(len(payloads)), labels, fontsize=8)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(f"{metric} ({'final accuracy over all tasks, higher is better' if metric == 'ACC' else 'forgetting: closer to 0 is better'})", fontsize=9)
    axes[0].set_ylim(0.0, 1.0)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.95))
    handles, legend_labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="upper center", ncol=len(names), fontsize=10, frameon=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_knowledge(payload: dict[str, Any], out: Path) -> list[Path]:
    """Draw ``heatmaps.png`` (mean recall matrix per optimizer) and ``knowledge.png`` (final
    recall, BWT, perplexity and time per iteration per optimizer: bars of the mean over seeds,
    whiskers of ± std); return their paths."""
    plt = _pyplot()
    config = payload["config"]
    paths = [out / "heatmaps.png", out / "knowledge.png"]
    draw_heatmaps(payload, "recall of task j's facts", f"recall R[i][j], mean over {config['seeds']} seed(s): GPT {config['size']}", paths[0])
    panels = (
        ("ACC", "final recall (ACC), higher is better"),
        ("BWT", "BWT, below 0 is forgetting"),
        ("perplexity", "perplexity of all tasks at the end"),
        ("ms_per_iteration", "ms per training iteration"),
    )
    names = list(payload["summary"])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        means = [payload["summary"][n][key]["mean"] for n in names]
        stds = [payload["summary"][n][key]["std"] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=[f"C{k}" for k in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.axhline(0.0, color="grey", linewidth=0.6)
    fig.suptitle(
        f"lto bench knowledge: {config['tasks']} tasks, GPT {config['size']}, {config['device']}, mean ± std over {config['seeds']} seed(s)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths
