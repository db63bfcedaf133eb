"""Plots a person would rather look at than read: a run's learning curves, a sweep's metric by parameter."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: trials and CI have no display
import matplotlib.pyplot as plt


def learning_curves(history: dict[str, list[tuple[int, float]]], path: Path, title: str = "") -> Path | None:
    """One panel per metric family (loss, then each val/ metric), train and val on a shared step axis."""
    series = {k: v for k, v in history.items() if v}
    if not series:
        return None
    names = sorted({k.split("/", 1)[-1] for k in series})
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for key, points in sorted(series.items()):
            if key.split("/", 1)[-1] == name:
                steps, values = zip(*sorted(points), strict=True)
                ax.plot(steps, values, label=key.split("/", 1)[0], marker="." if len(points) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_by_param(rows: list[dict], metric: str, params: list[str], path: Path) -> Path | None:
    """A scatter of the sweep's metric against each hyperparameter (log axis for spans over two decades)."""
    points = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not points or not params:
        return None
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.2), squeeze=False)
    for ax, param in zip(axes[0], params, strict=True):
        xs = [r.get(param) for r in points]
        ys = [r[metric] for r in points]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, ys)
            positive = [x for x in xs if x > 0]
            if len(positive) == len(xs) and max(xs) / min(xs) > 100:
                ax.set_xscale("log")
        else:
            labels = sorted({str(x) for x in xs})
            ax.scatter([labels.index(str(x)) for x in xs], ys)
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
