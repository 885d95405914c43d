"""Figures for compare. Each function returns a matplotlib Figure (no pyplot state, so nothing needs a
display and tests can inspect axes, lines and legends before the PNG is written)."""

from __future__ import annotations

import math
import warnings

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from agent.ui.stats import GroupStats

HOURS_GRID = 200  # points at which runs with different trial timings are compared


def colours(groups: list[GroupStats]) -> dict[str, str]:
    return {group.label: f"C{index % 10}" for index, group in enumerate(groups)}


def _band(ax: Axes, x: np.ndarray, curves: np.ndarray, colour: str, label: str) -> None:
    """Mean across runs as a line, min-max across runs as a band; nan where no run has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns: before any run scored
        mean, low, high = np.nanmean(curves, 0), np.nanmin(curves, 0), np.nanmax(curves, 0)
    ax.plot(x, mean, color=colour, label=label, drawstyle="steps-post")  # best-so-far moves in steps
    ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0, step="post")


def _at_hours(grid: np.ndarray, hours: list[float], best_so_far: list[float]) -> np.ndarray:
    """A run's best-so-far at each grid time (a step function); nan before its first trial ends, its last best
    after its last (see by_trial)."""
    index = np.searchsorted(hours, grid, side="right") - 1
    return np.where(index >= 0, np.asarray(best_so_far)[np.clip(index, 0, None)], np.nan)


def convergence_figure(groups: list[GroupStats]) -> Figure:
    fig = Figure(figsize=(13, 5), layout="constrained")
    by_trial, by_hours = fig.subplots(1, 2)
    colour = colours(groups)
    for group in groups:
        label = f"{group.label} (n={len(group.runs)})"
        length = max(r.trials for r in group.runs)
        curves = np.full((len(group.runs), length), np.nan)
        for row, r in enumerate(group.runs):
            # a run that ended keeps its last best: a mean over only the runs still going rose whenever the
            # best of them ended first
            curves[row, :r.trials] = r.best_so_far
            curves[row, r.trials:] = r.best_so_far[-1] if r.trials else np.nan
        _band(by_trial, np.arange(length), curves, colour[group.label], label)
        timed = [(r.hours, r.best_so_far) for r in group.runs if r.hours]
        if timed:
            grid = np.linspace(0, max(hours[-1] for hours, _ in timed), HOURS_GRID)
            _band(by_hours, grid, np.array([_at_hours(grid, hours, best) for hours, best in timed]),
                  colour[group.label], label)
    by_trial.set(xlabel="trial", ylabel="best val_bpb so far",
                 title="convergence by trial (mean, min-max band; an ended run keeps its last best)")
    by_hours.set(xlabel="cumulative training hours (train + eval wall time)", ylabel="best val_bpb so far",
                 title="convergence by compute (mean, min-max band)")
    by_trial.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (by_trial, by_hours):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return fig


def _numeric(values: list[object]) -> tuple[list[float], list[str] | None]:
    """Numbers as they are; anything else (e.g. a window pattern) as positions in its sorted categories."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values):
        return numbers, None
    categories = sorted({str(v) for v in values})
    return [float(categories.index(str(v))) for v in values], categories


def constants_figure(groups: list[GroupStats]) -> Figure | None:
    """One panel per constant: its value at each trial, one line per run, coloured by group. None when no
    run recorded configs (code-editing sources without a constants block, autoresearch repositories)."""
    names = sorted({name for g in groups for r in g.runs for v in r.run.trials for name in (v.config or {})})
    if not names:
        return None
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    height = 2.8 * rows + 0.8
    fig = Figure(figsize=(4.2 * columns, height))
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    # a fixed layout: the constrained one costs seconds for a dozen panels
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.6 / height, top=1 - 0.9 / height, hspace=0.6, wspace=0.35)
    colour = colours(groups)
    for ax, name in zip(axes, names, strict=False):  # the last row may have panels to spare
        points = [(g.label, [(v.trial, v.config[name]) for v in r.run.trials if v.config and name in v.config])
                  for g in groups for r in g.runs]
        values, categories = _numeric([value for _, pts in points for _, value in pts])
        position = 0
        for label, pts in points:
            if pts:
                ys = values[position:position + len(pts)]
                ax.plot([t for t, _ in pts], ys, marker="o", markersize=3, color=colour[label], alpha=0.8)
                position += len(pts)
        if categories:
            ax.set_yticks(range(len(categories)), categories)
        elif min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")
        ax.set(title=name, xlabel="trial", ylabel="value")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(names):]:  # panels left over in the last row
        ax.set_visible(False)
    handles = [Line2D([], [], color=colour[g.label], marker="o", label=g.label) for g in groups]
    fig.legend(handles=handles, loc="upper center", ncols=min(len(groups), 4))
    return fig
