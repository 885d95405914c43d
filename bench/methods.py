"""Fixed-space methods compared on a surrogate: best val_bpb so far after 50/100/300 trials over many seeds, how
often each failed, Mann-Whitney U between each pair, and what proposing and observing cost per trial; with
Optuna's own random, TPE and CMA-ES samplers, set up as the paper ran them, on the same surrogate as reference
rows.

    python bench/methods.py [--data FILE,... | --landscape near|far] [--methods random,tpe,cmaes] [--seeds 10]
                            [--trials 300] [--checkpoints 50,100,300] [--feasibility off,on] [--workers N]
                            [--out bench-out/methods] [--no-optuna]

Every arena method runs as an arena run on `--backend surrogate` (the real loop: commit, judge, ledger), one
run per seed, the runs spread over --workers processes; the surrogate is fitted once. --data takes what
`arena run --surrogate-data` takes (the paper's trials.jsonl, arena ledgers); without it the surrogate is
fitted on bench/landscape.py's made-up landscape (--landscape: its optimum near the baseline, the default, or far
from it and past the memory wall), whose figures say how methods behave on such a landscape,
not the paper's. Prints the tables and writes summary.json and methods.png (mean best-so-far, min-max band)
under --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.loop import StopRule, run_loop  # noqa: E402
from agent.presets import get_preset  # noqa: E402
from agent.run import open_run  # noqa: E402
from agent.space import Param, SearchSpace, load_space  # noqa: E402
from agent.surrogate.backend import SurrogateBackend  # noqa: E402
from agent.surrogate.data import nearest_pow2  # noqa: E402
from bench.landscape import MEMORY_GB, OPTIMA, peak_memory_gb, write_landscape  # noqa: E402
from sandbox.outcome import Status  # noqa: E402

OPTUNA = ("optuna-random", "optuna-tpe", "optuna-cmaes")
PAPER_FAILURE_VALUE = 100.0  # what the paper's runner told Optuna for a failed trial
BACKEND: SurrogateBackend | None = None  # fitted once in the parent; forked workers inherit it


FEASIBLE_SUFFIX = "+feasibility"


@dataclass
class Job:
    group: str
    seed: int
    trials: int
    preset: str
    data: list[str]
    runs_dir: Path
    landscape: bool = False  # the surrogate was fitted on bench/landscape.py: the truth is known


@dataclass
class Result:
    group: str
    seed: int
    values: list[float | None]            # val_bpb per trial that ran, None where it failed
    seconds: dict[int, float] = field(default_factory=dict)  # propose + observe, per trial number
    infeasible: int = 0                   # proposals refused by the memory model (not in values)
    fits: list[bool] | None = None        # on the landscape: whether each trial's config truly fits in memory


class Timed:
    """A method whose propose and observe are timed; everything else is the method's own."""

    def __init__(self, method: Any):
        self.method = method
        self.seconds: dict[int, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.method, name)

    def propose(self, ctx: Any) -> Any:
        start = time.perf_counter()
        proposal = self.method.propose(ctx)
        self.seconds[ctx.trial] = self.seconds.get(ctx.trial, 0.0) + time.perf_counter() - start
        return proposal

    def observe(self, record: Any) -> None:
        start = time.perf_counter()
        self.method.observe(record)
        self.seconds[record.trial] = self.seconds.get(record.trial, 0.0) + time.perf_counter() - start


def run_arena_method(job: Job) -> Result:
    assert BACKEND is not None
    method = job.group.removesuffix(FEASIBLE_SUFFIX)
    feasibility = "on" if job.group.endswith(FEASIBLE_SUFFIX) else "off"
    run = open_run(job.runs_dir, {"name": f"{job.group}-s{job.seed}", "preset": job.preset, "method": method,
                                  "seed": job.seed, "backend": "surrogate", "surrogate_data": job.data,
                                  "feasibility": feasibility})
    try:
        timed = Timed(run.method)
        run.method = timed
        run_loop(run, BACKEND, StopRule(trials=job.trials), report=lambda line: None)
    finally:
        run.lock.release()
    ran = [r for r in run.ledger.records if r.status is not Status.INFEASIBLE]
    values = [r.val_bpb if r.status is Status.OK else None for r in ran]
    fits = [fits_on_landscape(r.config or {}) for r in ran] if job.landscape else None
    return Result(job.group, job.seed, values, timed.seconds, len(run.ledger.records) - len(ran), fits)


def fits_on_landscape(config: dict[str, Any]) -> bool:
    """Whether the landscape itself (not the surrogate fitted on it) says the configuration fits in memory."""
    return peak_memory_gb(config) <= MEMORY_GB


def distribution(param: Param) -> Any:
    import optuna

    if param.kind == "categorical":
        return optuna.distributions.CategoricalDistribution(param.choices)
    low, high = param.bounds
    if param.kind == "float":
        return optuna.distributions.FloatDistribution(low, high, log=param.log)
    return optuna.distributions.IntDistribution(int(low), int(high), log=param.log or param.kind == "pow2")


def optuna_config(params: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """A sampled point as a trial runs it: pow2 constants snapped to the nearest power of two (as the paper's
    runner did with Optuna's log-int draws)."""
    return {name: (nearest_pow2(value) if space[name].kind == "pow2" else value) for name, value in params.items()}


def run_optuna(job: Job) -> Result:
    """An Optuna study on the surrogate, set up as Ferreira et al.'s runner set it up: the baseline first, then
    the sampler's points, a failure told as the value 100 (a COMPLETE trial), the samplers with Optuna 4.8's
    defaults, which the paper ran. Optuna 5 made TPE multivariate with the constant liar by default; the
    paper's TPE was univariate without it, so that is asked for by name."""
    import optuna

    assert BACKEND is not None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = BACKEND.surrogate.space
    samplers = {
        "optuna-random": lambda: optuna.samplers.RandomSampler(seed=job.seed),
        "optuna-tpe": lambda: optuna.samplers.TPESampler(seed=job.seed, multivariate=False, constant_liar=False),
        "optuna-cmaes": lambda: optuna.samplers.CmaEsSampler(seed=job.seed),
    }
    study = optuna.create_study(sampler=samplers[job.group]())
    study.enqueue_trial(dict(get_preset(job.preset).constants))
    distributions = {name: distribution(space[name]) for name in space}
    result = Result(job.group, job.seed, [], fits=[] if job.landscape else None)
    for number in range(job.trials):
        start = time.perf_counter()
        trial = study.ask(distributions)
        asked = time.perf_counter() - start
        config = optuna_config(trial.params, space)
        prediction = BACKEND.surrogate.predict(config)
        if result.fits is not None:
            result.fits.append(fits_on_landscape(config))
        start = time.perf_counter()
        study.tell(trial, PAPER_FAILURE_VALUE if prediction.val_bpb is None else prediction.val_bpb)
        result.seconds[number] = asked + time.perf_counter() - start
        result.values.append(prediction.val_bpb)
    return result


def run_job(job: Job) -> Result:
    return run_optuna(job) if job.group in OPTUNA else run_arena_method(job)


def best_so_far(values: list[float | None]) -> np.ndarray:
    best, curve = np.inf, []
    for value in values:
        best = min(best, value) if value is not None else best
        curve.append(best)
    return np.array(curve)


def summarise(results: list[Result], checkpoints: list[int]) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu

    groups: dict[str, list[Result]] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    rows = []
    finals: dict[str, list[float]] = {}
    for group, members in groups.items():
        curves = np.array([best_so_far(m.values) for m in members])
        row: dict[str, Any] = {"group": group, "seeds": len(members)}
        for c in checkpoints:
            at = curves[:, min(c, curves.shape[1]) - 1]
            row[f"best@{c}"] = {"mean": float(at.mean()), "std": float(at.std())}
        finals[group] = [float(v) for v in curves[:, -1]]
        row["failure_rate"] = float(np.mean([v is None for m in members for v in m.values[1:]]))
        row["infeasible_per_trial"] = sum(m.infeasible for m in members) / sum(len(m.values) for m in members)
        if all(m.fits is not None for m in members):  # the surrogate errs near the wall; methods find its errors
            truly = [[v if fit else None for v, fit in zip(m.values, m.fits or [], strict=True)] for m in members]
            finals_fitting = [float(best_so_far(t)[-1]) for t in truly]
            row["best_fitting"] = {"mean": float(np.mean(finals_fitting)), "std": float(np.std(finals_fitting))}
            row["true_failure_rate"] = float(np.mean([v is None for t in truly for v in t[1:]]))
        for t in (10, curves.shape[1] - 1):
            ms = [m.seconds[t] * 1000 for m in members if t in m.seconds]
            row[f"ms@{t}"] = float(np.median(ms)) if ms else None
        rows.append(row)
    tests = []
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            p = float(mannwhitneyu(finals[a], finals[b], alternative="two-sided").pvalue)
            tests.append({"a": a, "b": b, "mean_a": float(np.mean(finals[a])), "mean_b": float(np.mean(finals[b])),
                          "p_value": p})
    return {"groups": rows, "tests": tests, "checkpoints": checkpoints}


def print_tables(summary: dict[str, Any], quality_line: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))  # the tables, unwrapped, also in a log
    console.print(quality_line)
    table = Table(title="best val_bpb so far (mean ± std over seeds); failed trials; proposals refused as infeasible "
                        "per trial run; propose + observe milliseconds")
    table.add_column("method")
    table.add_column("seeds", justify="right")
    for c in summary["checkpoints"]:
        table.add_column(f"after {c}", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("infeasible", justify="right")
    ms_keys = [k for k in summary["groups"][0] if k.startswith("ms@")]
    for key in ms_keys:
        table.add_column(f"ms, trial {key[3:]}", justify="right")
    for row in summary["groups"]:
        cells = [f"{row[f'best@{c}']['mean']:.4f} ± {row[f'best@{c}']['std']:.4f}" for c in summary["checkpoints"]]
        ms = ["-" if row.get(k) is None else f"{row[k]:.1f}" for k in ms_keys]
        table.add_row(row["group"], str(row["seeds"]), *cells, f"{row['failure_rate']:.0%}",
                      f"{row['infeasible_per_trial']:.2f}", *ms)
    console.print(table)
    if all("best_fitting" in row for row in summary["groups"]):
        truth = Table(title="checked against the landscape itself: the best among trials that truly fit in memory, "
                            "and the share of trials that failed or would have run out of memory (the surrogate "
                            "errs near the memory wall, and a method can find its errors)")
        for name in ("method", "best that fits", "failed or would OOM"):
            truth.add_column(name, justify="left" if name == "method" else "right")
        for row in summary["groups"]:
            best = row["best_fitting"]
            truth.add_row(row["group"], f"{best['mean']:.4f} ± {best['std']:.4f}", f"{row['true_failure_rate']:.0%}")
        console.print(truth)
    tests = Table(title="Mann-Whitney U on the final best (two-sided)")
    for name in ("a", "b", "mean a", "mean b", "p"):
        tests.add_column(name)
    for t in summary["tests"]:
        tests.add_row(t["a"], t["b"], f"{t['mean_a']:.4f}", f"{t['mean_b']:.4f}", f"{t['p_value']:.3g}")
    console.print(tests)
    console.print(f"{seconds:.0f} s")


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    groups = sorted({r.group for r in results}, key=[r.group for r in results].index)
    for group in groups:
        curves = np.array([best_so_far(r.values) for r in results if r.group == group])
        x = np.arange(1, curves.shape[1] + 1)
        line, = ax.plot(x, curves.mean(axis=0), label=f"{group} (n={len(curves)})")
        ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("trial")
    ax.set_ylabel("best val_bpb so far (surrogate)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    global BACKEND
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="trials to fit the surrogate on, comma-separated (default: the landscape)")
    parser.add_argument("--landscape", choices=list(OPTIMA), default=None,
                        help="without --data: the made-up landscape's optimum, near the baseline (default) or far "
                             "from it")
    parser.add_argument("--preset", default="gpu")
    parser.add_argument("--methods", default="random,tpe,cmaes")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--checkpoints", default="50,100,300")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("bench-out/methods"))
    parser.add_argument("--feasibility", default="off,on",
                        help="run each arena method without (off) and with (on) the memory model, or one of them")
    parser.add_argument("--no-optuna", action="store_true", help="leave out Optuna's own samplers")
    args = parser.parse_args()
    if args.data and args.landscape:
        parser.error("--landscape picks the made-up landscape, and --data fits the surrogate on other trials: "
                     "give one of them")
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    runs_dir = args.out / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)  # the bench's own runs, made anew each time
    data = args.data.split(",") if args.data else [str(write_landscape(args.out / "landscape.jsonl", 2000,
                                                                     optimum=args.landscape or "near"))]
    preset = get_preset(args.preset)
    BACKEND = SurrogateBackend.fit([Path(p) for p in data], load_space(args.preset), preset)
    for note in BACKEND.notes:
        print(f"note: {note}")
    checkpoints = [c for c in map(int, args.checkpoints.split(",")) if c <= args.trials] or [args.trials]
    modes = args.feasibility.split(",")
    if not set(modes) <= {"on", "off"}:
        parser.error("--feasibility takes off, on or off,on")
    methods = [m for m in args.methods.split(",") if m]  # --methods "": Optuna's rows alone
    groups = ([m for m in methods if "off" in modes] + [m + FEASIBLE_SUFFIX for m in methods if "on" in modes]
              + ([] if args.no_optuna else list(OPTUNA)))
    jobs = [Job(group, seed, args.trials, args.preset, data, runs_dir, landscape=not args.data)
            for group in groups for seed in range(args.seeds)]
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        results = pool.map(run_job, jobs, chunksize=1)
    summary = summarise(results, checkpoints)
    summary["surrogate"] = BACKEND.quality.to_json()
    summary["data"] = data
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.out / "methods.png")
    print_tables(summary, BACKEND.quality.line(), time.time() - started)
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'methods.png'}")


if __name__ == "__main__":
    main()
