"""Continual-learning streams: a dataset cut or transformed into a sequence of tasks.

* ``split``: each task holds a disjoint subset of the classes.
* ``permuted``: each task applies its own fixed permutation to the input features.
* ``rotated``: each task rotates images by its own angle (vectors: a circular shift).
* ``remapped``: each task relabels the classes with its own permutation.

Scenarios (van de Ven & Tolias, 2019) fix what the model is told and predicts:
``task``-incremental (the task's classes are known: logits outside them are masked),
``domain``-incremental (one shared head over the within-task labels), ``class``-incremental
(one head over all classes, no task identity).

A stream may also be *gradual*: each task blends into the next over its first steps, with the
share of the previous task's examples given by :func:`previous_task_probability`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lto_core.data import Dataset

#: Stream kinds :func:`make_stream` builds.
STREAMS = ("split", "permuted", "rotated", "remapped")
#: Scenarios: what the model is told (task identity or not) and which outputs it predicts.
SCENARIOS = ("task", "domain", "class")


@dataclass(frozen=True)
class Task:
    """One task of a stream; labels are already in the scenario's output space."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    #: Output units this task may use (task-incremental masking); ``None``: all of them.
    classes: tuple[int, ...] | None


@dataclass(frozen=True)
class Stream:
    """Tasks in order, with the number of output units the model needs."""

    name: str
    scenario: str
    tasks: tuple[Task, ...]
    num_outputs: int
    input_shape: tuple[int, ...]


def _rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate images ``[N, H, W]`` about their center (nearest neighbour); shift vectors circularly."""
    if x.ndim == 2:
        return np.roll(x, int(round(degrees / 360.0 * x.shape[1])), axis=1)
    _, h, w = x.shape
    theta = np.deg2rad(degrees)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    src_y = np.cos(theta) * (yy - cy) + np.sin(theta) * (xx - cx) + cy
    src_x = -np.sin(theta) * (yy - cy) + np.cos(theta) * (xx - cx) + cx
    sy, sx = np.rint(src_y).astype(int), np.rint(src_x).astype(int)
    inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
    out = np.full_like(x, x.min())
    out[:, inside] = x[:, sy[inside], sx[inside]]
    return out


def make_stream(data: Dataset, stream: str, scenario: str, tasks: int, seed: int = 0) -> Stream:
    """Build a stream of ``tasks`` tasks from ``data``.

    Raises:
        ValueError: unknown ``stream``/``scenario``, or a split with fewer classes than tasks.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; choose one of {STREAMS}")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {SCENARIOS}")
    rng = np.random.default_rng(seed)
    k = data.num_classes
    if stream == "split":
        if tasks > k:
            raise ValueError(f"a split stream of {tasks} tasks needs at least {tasks} classes; {data.name} has {k}")
        groups = np.array_split(rng.permutation(k), tasks)
        built = []
        for t, group in enumerate(groups):
            tr, te = np.isin(data.y_train, group), np.isin(data.y_test, group)
            built.append(_label_task(data.x_train[tr], data.y_train[tr], data.x_test[te], data.y_test[te], group, scenario))
        width = max(len(g) for g in groups)
        outputs = k if scenario in ("task", "class") else width
        return Stream(f"split-{data.name}", scenario, tuple(built), outputs, data.input_shape)
    built = []
    for t in range(tasks):
        x_train, x_test, y_train, y_test = data.x_train, data.x_test, data.y_train, data.y_test
        if stream == "permuted" and t > 0:
            perm = rng.permutation(int(np.prod(data.input_shape)))
            x_train = x_train.reshape(len(x_train), -1)[:, perm].reshape(x_train.shape)
            x_test = x_test.reshape(len(x_test), -1)[:, perm].reshape(x_test.shape)
        elif stream == "rotated" and t > 0:
            angle = float(rng.uniform(0.0, 180.0)) if tasks > 2 else 90.0
            x_train, x_test = _rotate(x_train, angle), _rotate(x_test, angle)
        elif stream == "remapped" and t > 0:
            relabel = rng.permutation(k)
            y_train, y_test = relabel[y_train], relabel[y_test]
        if scenario == "task":
            offset = t * k
            built.append(Task(x_train, y_train + offset, x_test, y_test + offset, tuple(range(offset, offset + k))))
        else:
            built.append(Task(x_train, y_train, x_test, y_test, None))
    outputs = k * tasks if scenario == "task" else k
    return Stream(f"{stream}-{data.name}", scenario, tuple(built), outputs, data.input_shape)


def previous_task_probability(step: int, blend: int) -> float:
    """The probability that a training example at ``step`` of a task (counted from 0) comes from
    the previous task, in a gradual stream whose tasks blend into each other over ``blend`` steps.

    A linear blend: ``1 - step / blend`` during the first ``blend`` steps of a task, 0 after them
    (``blend = 0``: tasks switch at once). At the first step of a task every example is still the
    previous task's; from step ``blend`` on none is. Meant for every task after the first (the
    first has no previous task).

    Raises:
        ValueError: ``step`` or ``blend`` is negative.

    Examples:
        >>> [previous_task_probability(j, 4) for j in range(6)]
        [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    if step < 0 or blend < 0:
        raise ValueError(f"step and blend must be >= 0, got step={step}, blend={blend}")
    return 1.0 - step / blend if step < blend else 0.0


def _label_task(x_tr, y_tr, x_te, y_te, group: np.ndarray, scenario: str) -> Task:
    """Labels of a split task in the scenario's output space."""
    if scenario == "domain":
        index = {int(c): i for i, c in enumerate(group)}
        return Task(x_tr, np.array([index[int(c)] for c in y_tr]), x_te, np.array([index[int(c)] for c in y_te]), None)
    classes = tuple(int(c) for c in sorted(group)) if scenario == "task" else None
    return Task(x_tr, y_tr, x_te, y_te, classes)
