"""`arena compare RUN...`: runs grouped by method (and model), ranked on the best val_bpb of each run.

Reports per group the best val_bpb over seeds, failure rates by kind, compute, LLM tokens and cost and
the effort to reach --target; tests every pair of groups; writes summary.csv, summary.json and PNG plots.
Runs measured on different datasets, budgets or validation sets are refused unless --allow-mixed.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.errors import ArenaError
from agent.paths import finite_float, path_argument
from agent.ui import ParserT
from agent.ui.history import RunHistory
from agent.ui.render import print_warnings
from agent.ui.sources import open_runs

if TYPE_CHECKING:  # scipy and matplotlib take a second to import: only `arena compare` pays for them
    from matplotlib.figure import Figure

    from agent.ui.stats import GroupStats, GroupSummary, PairTest, RunStats


def add_parser(subparsers: argparse._SubParsersAction[ParserT]) -> None:
    p = subparsers.add_parser("compare", help="compare runs by method over seeds: best val_bpb, failures, compute, "
                              "LLM cost, significance tests, convergence plots")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories (runs/NAME), autoresearch "
                   "git repositories with results.tsv, or the paper's trials.jsonl files")
    p.add_argument("--out", type=path_argument, default=Path("compare-out"),
                   help="directory for summary.csv, summary.json and the plots (default ./compare-out)")
    p.add_argument("--target", type=finite_float, default=None,
                   help="a val_bpb to reach: report how many trials and hours each group needed")
    p.add_argument("--allow-mixed", action="store_true", help="rank runs with different datasets, budgets or "
                   "validation sets together anyway (with a warning; their val_bpb are not comparable)")
    p.set_defaults(func=cmd_compare)


@dataclass
class Comparison:
    runs: list[RunStats]
    groups: list[GroupStats]
    tests: list[PairTest]
    figures: dict[str, Figure]  # PNG file name -> figure
    mixed: str | None           # what differs between the runs, when --allow-mixed let it through
    target: float | None


def load_all(paths: list[Path]) -> list[RunHistory]:
    runs, seen = [], set()
    for path in paths:
        key = Path(path).expanduser().resolve()
        if key in seen:
            raise ArenaError(f"{path} is given twice; name each run once")
        seen.add(key)
        runs += open_runs(path)
    return runs


def setup_of(run: RunHistory) -> str:
    """What must match for two runs' val_bpb to be comparable."""
    budget = f"{run.budget:g} s" if run.budget is not None else "unknown"
    return (f"dataset {run.dataset_fingerprint or 'unknown'}, budget {budget}, "
            f"{run.eval_tokens or 'unknown'} validation tokens")


def mixed_setups(runs: list[RunHistory], allow_mixed: bool) -> str | None:
    setups: dict[str, list[str]] = {}
    for run in runs:
        setups.setdefault(setup_of(run), []).append(run.name)
    if len(setups) < 2:
        return None
    detail = "; ".join(f"{setup} ({', '.join(names)})" for setup, names in setups.items())
    if not allow_mixed:
        raise ArenaError(f"these runs were not measured alike: {detail}; their val_bpb cannot be ranked together — "
                         "compare runs made with the same dataset and budget, or pass --allow-mixed")
    return detail


def build_comparison(runs: list[RunHistory], target: float | None, allow_mixed: bool) -> Comparison:
    mixed = mixed_setups(runs, allow_mixed)
    from agent.ui.plots import constants_figure, convergence_figure
    from agent.ui.stats import group_runs, pairwise_tests, run_stats

    stats = [run_stats(run, target) for run in runs]
    groups = group_runs(stats)
    figures = {"convergence.png": convergence_figure(groups)}
    constants = constants_figure(groups)
    if constants is not None:
        figures["constants.png"] = constants
    return Comparison(stats, groups, pairwise_tests(groups), figures, mixed, target)


def _run_row(s: RunStats) -> dict[str, object]:
    return {"run": s.run.name, "path": str(s.run.path), "source": s.run.source, "group": s.run.group,
            "seed": s.run.seed, "isolation": s.run.isolation, "best_val_bpb": s.best, "trials": s.trials,
            "failures": dict(s.failures), "infeasible": s.infeasible,
            "device": s.run.device, "device_hours": s.total_hours, "llm_tokens": s.tokens,
            "llm_cost_usd": s.cost_usd,
            "target_trials": s.target_trials, "target_hours": s.target_hours}


def write_outputs(comparison: Comparison, out: Path) -> list[Path]:
    rows = [group.summary().row() for group in comparison.groups]
    summary = {"target": comparison.target, "mixed_setups": comparison.mixed, "groups": rows,
               "tests": [dataclasses.asdict(test) for test in comparison.tests],
               "runs": [_run_row(s) for s in comparison.runs]}
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for name, figure in comparison.figures.items():
            figure.savefig(out / name, dpi=100)
    except OSError as e:
        raise ArenaError(f"cannot write into {out}: {e.strerror}; choose another --out") from None
    return [out / "summary.csv", out / "summary.json", *(out / name for name in comparison.figures)]


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _failures(summary: GroupSummary) -> str:
    rates = [f"{kind} {rate:.0%}" for kind, rate in summary.failure_rates.items() if rate]
    refused = summary.infeasible_per_trial
    return (", ".join(rates) or "none") + (f"; {refused:.2f} infeasible per trial" if refused else "")


def _target(summary: GroupSummary) -> str:
    reached = f"{summary.target_reached}/{summary.runs}"
    if not summary.target_reached:
        return f"{reached} runs"
    return (f"{reached} runs, {_number(summary.target_trials_mean, '.1f')} trials, "
            f"{_number(summary.target_hours_mean, '.3f')} h")


def groups_table(comparison: Comparison) -> Table:
    table = Table(title="best val_bpb per run, over seeds", title_justify="left")
    on_gpu = any(s.run.device != "cpu" for s in comparison.runs)
    for column in ("group", "runs (seeds)", "best mean ± std", "median", "trials", "failures",
                   "GPU-h" if on_gpu else "CPU-h", "LLM tokens", "LLM $"):
        table.add_column(column)
    if comparison.target is not None:
        table.add_column(f"to reach {comparison.target:g}")
    for group in comparison.groups:
        row = group.summary()
        name = row.group + (f" [{row.unisolated_runs} unisolated]" if row.unisolated_runs else "")
        cells = [name, f"{row.runs} ({row.seeds})",
                 f"{_number(row.best_mean, '.6f')} ± {_number(row.best_std, '.6f')}",
                 _number(row.best_median, ".6f"), str(row.trials), _failures(row),
                 _number(row.device_hours, ".3f"), f"{row.llm_tokens:,}", f"{row.llm_cost_usd:.2f}"]
        if comparison.target is not None:
            cells.append(_target(row))
        table.add_row(*(Text(cell) for cell in cells))
    return table


def tests_table(tests: list[PairTest]) -> Table:
    table = Table(title="Mann-Whitney U (two-sided) on best val_bpb per run; bootstrap 95% CI of the mean "
                  "difference", title_justify="left")
    for column in ("a vs b", "n", "U", "p", "mean(a) - mean(b) [95% CI]"):
        table.add_column(column)
    for t in tests:
        diff = _number(t.mean_diff, "+.6f")
        if t.ci_low is not None and t.ci_high is not None:
            diff += f" [{t.ci_low:+.6f}, {t.ci_high:+.6f}]"
        table.add_row(Text(f"{t.a} vs {t.b}"), f"{t.n_a} vs {t.n_b}", _number(t.u, "g"), _number(t.p_value, ".3g"),
                      diff)
    return table


def cmd_compare(args: argparse.Namespace) -> int:
    runs = load_all(args.runs)
    # the runs of one trials.jsonl share its warnings: print each once
    print_warnings(list(dict.fromkeys(warning for run in runs for warning in run.warnings)))
    comparison = build_comparison(runs, args.target, args.allow_mixed)
    written = write_outputs(comparison, args.out)  # before any table, so a bad --out fails alone
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if comparison.mixed:
        err.print(Text(f"WARNING: ranking runs measured differently (--allow-mixed): {comparison.mixed}; "
                       "their val_bpb are not comparable", style="bold red"))
    unisolated = [s.run.name for s in comparison.runs if s.run.isolation == "none"]
    if unisolated:
        err.print(Text(f"WARNING: the trials of {', '.join(unisolated)} ran unisolated (--isolation none, or "
                       "made before runs were isolated): nothing kept them from touching their own score",
                       style="bold yellow"))
    for group in comparison.groups:
        repeated = sorted({seed for seed in group.seeds if seed is not None and group.seeds.count(seed) > 1})
        if repeated:  # a resumed copy or a rerun: its spread is not a spread over seeds
            err.print(Text(f"WARNING: in {group.label}, several runs share seed {', '.join(map(str, repeated))}: "
                           "they count as separate seeds in the statistics", style="bold yellow"))
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)  # piped: keep rows whole
    console.print(groups_table(comparison))
    if comparison.tests:
        console.print(tests_table(comparison.tests))
        for test in comparison.tests:
            if test.note:
                console.print(Text(f"{test.a} vs {test.b}: {test.note}", style="yellow"))
    else:
        console.print("one group only: nothing to test against", markup=False)
    for path in written:
        console.print(f"wrote {path}", markup=False)
    return 0
