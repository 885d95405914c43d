"""Recorded runs replayed through the memory model: which of their trials it would have refused before they ran.

    python bench/feasibility.py RUN_OR_FILE [...] [--preset gpu] [--device-memory GB] [--out bench-out/feasibility]

Each argument is what `--surrogate-data` takes: an arena run directory or ledger.jsonl of a fixed-space method,
or the paper's results/<method>/seed_<k>/trials.jsonl. Within each run the trials are taken in the order they
ran; before each one the model is calibrated on the trials before it, as in a live run with `--feasibility on`,
and judges its configuration. A second pass keeps the model analytic (never calibrated). Runs are grouped by
method (the paper's results/<method>/ folder, or the method an arena ledger records).

This is an offline replay: it says which recorded trials would have been refused and what that would have
saved, not which trials a method would have proposed instead once told of the refusals (the surrogate bench,
bench/methods.py --feasibility off,on, measures that). Prints a table per pass and writes summary.json and
feasibility.png (predicted against measured peak memory, and the predictions for the trials that ran out of
memory) under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agent.feasibility import SURROGATE_GPU_GB, MemoryModel, Shape  # noqa: E402
from agent.jsonl import read_jsonl  # noqa: E402
from agent.presets import get_preset  # noqa: E402
from agent.space import load_space  # noqa: E402
from agent.surrogate.data import Observation, read_trials, trial_file  # noqa: E402
from sandbox.outcome import Status  # noqa: E402

PASSES = ("calibrated", "analytic")


@dataclass
class Tally:
    """One run (or a method's runs added up) under one pass of the model."""
    runs: int = 0
    trials: int = 0
    failed: int = 0             # recorded as anything but ok
    oom: int = 0
    refused_oom: int = 0        # ran out of memory, and the model would have refused it
    refused_other: int = 0      # failed otherwise (crash, timeout), refused
    refused_ok: int = 0         # ran to the end, refused: a trial lost
    best_refused: int = 0       # runs whose best trial would have been refused
    seconds_saved: float = 0.0  # device seconds of the refused failures
    seconds_lost: float = 0.0   # of the refused ok trials

    def add(self, other: Tally) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def row(self) -> list[str]:
        ran = self.trials - self.refused_oom - self.refused_other - self.refused_ok
        left = self.failed - self.refused_oom - self.refused_other
        return [str(self.runs), str(self.trials), pct(self.failed, self.trials), pct(self.oom, self.trials),
                pct(self.refused_oom, self.oom), pct(left, ran), pct(self.refused_ok, self.trials - self.failed),
                f"{self.best_refused}/{self.runs}", f"{self.seconds_saved / 3600:.1f}",
                f"{self.seconds_lost / 3600:.1f}"]


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def replay(trials: list[Observation], model: MemoryModel, calibrated: bool,
           points: list[tuple[float, float | None, str]]) -> Tally:
    """The tally of one run; appends (predicted GB, measured GB or None, status) per trial to `points`."""
    tally = Tally(runs=1, trials=len(trials))
    scored = [t for t in trials if t.status is Status.OK and t.val_bpb is not None]
    best = min(scored, key=lambda t: t.val_bpb or 0.0) if scored else None
    for number, trial in enumerate(trials):
        if calibrated:
            model.calibrate(trials[:number])
        verdict = model.verdict(trial.config)
        points.append((verdict.predicted_gb, trial.peak_memory_gb, str(trial.status)))
        failed = trial.status is not Status.OK
        tally.failed += failed
        tally.oom += trial.status is Status.OOM
        if not verdict.reason:
            continue
        seconds = trial.training_seconds or 0.0
        if trial.status is Status.OOM:
            tally.refused_oom += 1
        elif failed:
            tally.refused_other += 1
        else:
            tally.refused_ok += 1
            tally.best_refused += trial is best
        if failed:
            tally.seconds_saved += seconds
        else:
            tally.seconds_lost += seconds
    return tally


def group_of(path: Path) -> str:
    """The paper's results/<method>/seed_<k>/trials.jsonl -> <method>; an arena ledger -> the method of its
    proposals; anything else -> its folder's name."""
    path = trial_file(path)
    if path.parent.name.startswith("seed_"):
        return path.parent.parent.name
    methods = (record.get("method") for record in read_jsonl(path, "the trial file", warnings=[])
               if record.get("kind") == "proposal")
    return str(next(methods, None) or path.parent.name)


def plot(points: list[tuple[float, float | None, str]], limit_gb: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), width_ratios=(3, 2))
    measured = [(p, m) for p, m, status in points if status == "ok" and m]
    left.scatter([m for _, m in measured], [p for p, _ in measured], s=4, alpha=0.4)
    top = max([limit_gb * 1.3] + [p for p, _ in measured])
    left.plot([0, top], [0, top], color="grey", linewidth=0.8)
    left.axhline(limit_gb, color="red", linewidth=0.8, label=f"device memory ({limit_gb:.0f} GB)")
    left.set(xlabel="measured peak memory (GB)", ylabel="predicted before the trial ran (GB)",
             title="trials that ran to the end")
    left.legend()
    ran_out = [p for p, _, status in points if status == "oom"]
    if ran_out:
        right.hist(ran_out, bins=np.geomspace(min(ran_out), max(ran_out), 40), color="tab:red")
        right.set_xscale("log")
    right.axvline(limit_gb, color="black", linewidth=0.8)
    right.set(xlabel="predicted peak memory (GB)", ylabel="trials", title="trials that ran out of memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, ledger.jsonl or the paper's trials.jsonl")
    parser.add_argument("--preset", default="gpu", help="the preset the runs ran (its sequence length and vocabulary)")
    parser.add_argument("--device-memory", type=float, default=SURROGATE_GPU_GB,
                        help="GB of the device they ran on (default: the paper's 80 GB H100)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/feasibility"))
    args = parser.parse_args()
    preset, space = get_preset(args.preset), load_space(args.preset)
    shape = Shape(preset.seq_len, preset.vocab_size, preset.device)
    console = Console(width=max(Console().width, 150))  # the tables, unwrapped, also in a log
    notes: list[str] = []
    runs = [(group_of(path), read_trials(path, space, notes)) for path in args.runs]
    for note in notes:
        console.print(f"note: {note}", markup=False)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    points: list[tuple[float, float | None, str]] = []
    for name in PASSES:
        groups: dict[str, Tally] = {}
        for group, trials in runs:
            tally = replay(trials, MemoryModel(shape, args.device_memory, "device"), name == "calibrated",
                           points if name == "calibrated" else [])
            groups.setdefault(group, Tally(runs=0)).add(tally)
        table = Table(title=f"{name} memory model, limit {args.device_memory:.0f} GB: the recorded trials it refuses")
        for column in ("method", "runs", "trials", "failed", "oom", "oom refused", "failed of those run",
                       "ok refused", "best refused", "GPU h saved", "GPU h lost"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for group, tally in groups.items():
            table.add_row(group, *tally.row())
        console.print(table)
        summary[name] = {group: asdict(tally) for group, tally in groups.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(points, args.device_memory, args.out / "feasibility.png")
    console.print(f"wrote {args.out / 'summary.json'} and {args.out / 'feasibility.png'}", markup=False)


if __name__ == "__main__":
    main()
