"""Same-budget comparison of the template's optimizer changes over autoresearch's baseline Muon.

    python bench/parity.py [--preset cpu|gpu] [--budget S] [--seeds N] [--variants a,b,...] [--corpus C]
                           [--cache DIR] [--compile-cache DIR] [--eval-tokens N] [--out DIR]

Each variant is the template with some of its optimizer switches set otherwise (NEWTON_SCHULZ,
NORMUON_BETA2, CAUTIOUS_WEIGHT_DECAY, below the constants block); everything else, the preset's
constants and the data order included, is the same. Every variant runs once per seed through
bench/throughput.py (both harness phases under the supervisor, as a trial runs), with the variants'
order rotated from seed to seed so that a slow spell of a shared machine does not land on one variant.
It prints, per variant, val_bpb (mean over seeds), its paired difference from the full template (mean and
standard error: negative = that variant is better), the same difference at equal steps (the share of it
that the runs' step counts explain, taken out with one slope fitted across the runs, its standard error a
jackknife over seeds: on a shared machine the load moves the steps a budget buys more than an optimizer
change moves val_bpb), optimizer steps and tokens/s; `--out` keeps each run's log and JSON and writes summary.json.

Only the standard library is imported, like bench/throughput.py, so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # also when loaded by path (tests): throughput.py is its sibling

from throughput import fail, load_preset  # noqa: E402

TEMPLATE_TRAIN = ROOT / "train_template" / "train.py"
THROUGHPUT = ROOT / "bench" / "throughput.py"

# What the template does: autoresearch's optimizer. Each other variant undoes one change, or all three.
TEMPLATE = {"NEWTON_SCHULZ": "polar_express", "NORMUON_BETA2": 0.95, "CAUTIOUS_WEIGHT_DECAY": True}
VARIANTS = {
    "template": {},
    "fixed-newton-schulz": {"NEWTON_SCHULZ": "fixed"},
    "no-normuon": {"NORMUON_BETA2": 0.0},
    "plain-weight-decay": {"CAUTIOUS_WEIGHT_DECAY": False},
    "none-of-the-three": {"NEWTON_SCHULZ": "fixed", "NORMUON_BETA2": 0.0, "CAUTIOUS_WEIGHT_DECAY": False},
}


def set_switches(source: str, switches: dict) -> str:
    """train.py with each `NAME = value` line of `switches` set to the new value, its comment kept."""
    for name, value in {**TEMPLATE, **switches}.items():
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        pattern = re.compile(rf"^({name}\s*=\s*)(\S+)(.*)$", re.MULTILINE)
        source, found = pattern.subn(lambda m, text=text: f"{m.group(1)}{text}{m.group(3)}", source, count=1)
        if not found:
            fail(f"train.py has no line '{name} = ...'; this benchmark compares the template's optimizer switches")
    return source


def run_variant(name: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    train_py = work / f"{name}.py"
    train_py.write_text(set_switches(TEMPLATE_TRAIN.read_text(), VARIANTS[name]))
    result, log = work / f"{name}-s{seed}.json", work / f"{name}-s{seed}.log"
    cmd = [sys.executable, str(THROUGHPUT), "--preset", args.preset, "--budget", str(args.budget),
           "--seed", str(seed), "--train-py", str(train_py), "--json", str(result)]
    for flag, value in (("--cache", args.cache), ("--corpus", args.corpus), ("--eval-tokens", args.eval_tokens),
                        ("--compile-cache", args.compile_cache)):
        if value is not None:
            cmd += [flag, str(value)]
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        fail(f"variant {name}, seed {seed} failed (exit code {proc.returncode}): {' | '.join(tail)}")
    run = json.loads(result.read_text())
    reported = run["reported"]
    return {"variant": name, "seed": seed, "val_bpb": run["eval"]["val_bpb"], "steps": reported["steps"],
            "tokens_per_second": reported["timed_tokens"] / reported["training_seconds"]}


def load_slope(runs: list[dict]) -> float | None:
    """d val_bpb / d ln(steps) with each seed's and each variant's own level taken out (least squares of
    val_bpb ~ seed + variant + slope * ln(steps)): on a shared machine the steps a run gets in its budget
    vary with the load, and its val_bpb with them."""
    x = [math.log(r["steps"]) for r in runs]
    y = [r["val_bpb"] for r in runs]
    for _ in range(100):  # alternating projections onto the two sets of group means (Frisch-Waugh-Lovell)
        for key in ("seed", "variant"):
            x, y = (demean(values, [r[key] for r in runs]) for values in (x, y))
    sxx = sum(v * v for v in x)
    return sum(a * b for a, b in zip(x, y, strict=True)) / sxx if sxx > 1e-12 else None


def demean(values: list[float], groups: list) -> list[float]:
    means = {g: statistics.fmean(v for v, h in zip(values, groups, strict=True) if h == g) for g in set(groups)}
    return [v - means[g] for v, g in zip(values, groups, strict=True)]


def mean_and_stderr(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def adjusted_difference(runs: list[dict], name: str) -> float | None:
    """Mean over seeds of (variant - template) val_bpb less what the slope says their step counts explain."""
    slope = load_slope(runs)
    base = {r["seed"]: r for r in runs if r["variant"] == "template"}
    diffs = [r["val_bpb"] - base[r["seed"]]["val_bpb"] - slope * math.log(r["steps"] / base[r["seed"]]["steps"])
             for r in runs if r["variant"] == name and r["seed"] in base] if slope is not None else []
    return statistics.fmean(diffs) if diffs else None


def adjusted_and_stderr(runs: list[dict], name: str) -> tuple[float | None, float | None]:
    """adjusted_difference and its jackknife standard error over seeds (the slope refitted without each
    seed in turn, so that its own uncertainty counts); no error below three seeds."""
    estimate = adjusted_difference(runs, name)
    seeds = sorted({r["seed"] for r in runs if r["variant"] == name})
    if estimate is None or len(seeds) < 3:
        return estimate, None
    leave_one_out = [adjusted_difference([r for r in runs if r["seed"] != seed], name) for seed in seeds]
    if any(v is None for v in leave_one_out):
        return estimate, None
    values = [v for v in leave_one_out if v is not None]
    mean, n = statistics.fmean(values), len(values)
    return estimate, math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in values))


def summarize(runs: list[dict], names: list[str]) -> list[dict]:
    """Per variant: mean val_bpb, steps and tokens/s, and the paired difference from the template's run of
    the same seed, as measured and with the steps' share taken out (load_slope): a variant's own cost per
    step shows in tokens/s and the measured difference, not in the adjusted one."""
    base = {r["seed"]: r for r in runs if r["variant"] == "template"}
    rows = []
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        diff, diff_stderr = mean_and_stderr([r["val_bpb"] - base[r["seed"]]["val_bpb"]
                                             for r in mine if r["seed"] in base])
        adjusted, adjusted_stderr = adjusted_and_stderr(runs, name)
        rows.append({
            "variant": name, "switches": VARIANTS[name], "seeds": len(mine),
            "val_bpb": statistics.fmean(r["val_bpb"] for r in mine),
            "diff_vs_template": diff, "diff_stderr": diff_stderr,
            "steps_adjusted_diff": adjusted, "steps_adjusted_stderr": adjusted_stderr,
            "steps": statistics.fmean(r["steps"] for r in mine),
            "tokens_per_second": statistics.fmean(r["tokens_per_second"] for r in mine),
        })
    return rows


def signed(value: float | None, stderr: float | None) -> str:
    if value is None:
        return ""
    return f"{value:+.4f}" + (f" +- {stderr:.4f}" if stderr is not None else "")


def print_table(rows: list[dict], preset: str, budget: float) -> None:
    print(f"\npreset '{preset}', {budget:g} s of training per run; difference = variant - template, paired by "
          "seed (negative: the variant is better); 'at equal steps' takes out the val_bpb that more or fewer "
          "steps in the budget explain (a shared machine's load)")
    print(f"{'variant':<22}{'seeds':>6}{'val_bpb':>10}{'difference':>22}{'at equal steps':>22}{'steps':>9}"
          f"{'tokens/s':>12}")
    for row in rows:
        own = row["variant"] == "template"
        measured = "" if own else signed(row["diff_vs_template"], row["diff_stderr"])
        adjusted = "" if own else signed(row["steps_adjusted_diff"], row["steps_adjusted_stderr"])
        print(f"{row['variant']:<22}{row['seeds']:>6}{row['val_bpb']:>10.4f}{measured:>22}{adjusted:>22}"
              f"{row['steps']:>9.1f}{row['tokens_per_second']:>12,.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="same-budget comparison of the template's optimizer switches")
    parser.add_argument("--preset", default="cpu", help="preset whose settings and constants are used (default cpu)")
    parser.add_argument("--budget", type=float, default=None, help="training seconds (default: the preset's)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant, seeds 0..N-1 (default 3)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: all; 'template' always runs)")
    parser.add_argument("--corpus", default=None,
                        help="corpus for the dataset (default: the offline stdlib, too small for a GPU run)")
    parser.add_argument("--cache", type=Path, default=None, help="dataset cache directory (default: arena's)")
    parser.add_argument("--compile-cache", type=Path, default=None,
                        help="TorchInductor/Triton cache directory shared by the runs (GPU)")
    parser.add_argument("--eval-tokens", type=int, default=None, help="validation tokens (default: the preset's)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs' logs and JSON, and summary.json, here")
    args = parser.parse_args(argv)
    names = ["template", *(n for n in args.variants.split(",") if n and n != "template")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        fail(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.seeds < 1:
        fail(f"--seeds must be at least 1, got {args.seeds}")
    preset = load_preset(args.preset)
    if args.budget is None:
        args.budget = float(preset["time_budget"])
    if args.budget <= 0:
        fail(f"--budget must be positive, got {args.budget}")

    with tempfile.TemporaryDirectory(prefix="arena-parity-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = []
        total = args.seeds * len(names)
        for seed in range(args.seeds):
            for name in names[seed % len(names):] + names[:seed % len(names)]:
                start = time.perf_counter()
                run = run_variant(name, seed, args, work)
                runs.append(run)
                print(f"[{len(runs)}/{total}] {name:<22} seed {seed}: val_bpb {run['val_bpb']:.4f}, "
                      f"{run['steps']} steps ({time.perf_counter() - start:.0f} s)", flush=True)
        rows = summarize(runs, names)
        print_table(rows, args.preset, args.budget)
        if args.out:
            (args.out / "summary.json").write_text(json.dumps(
                {"preset": args.preset, "budget": args.budget, "runs": runs, "variants": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
