"""Trial throughput with 1, 2, 4 ... workers: real trials through the real loop, on this machine's cores or GPUs.

    python bench/scaling.py [--workers 1,2] [--trials 4] [--preset cpu|gpu] [--gpus 0,1,2,3] [--budget S]
                            [--eval-tokens N] [--out bench-out/scaling]

For each worker count, a run of its own: the baseline alone (it runs before any other trial), then --trials
random-search trials on the workers, timed from the first of them starting to the last one recorded (the
batch rate, which counts the tail where some workers have no trial left), and the rate the workers give
while each has one (N x 3600 / the mean trial's seconds). On a CPU preset the cores are split between the
workers (each trial trains on its share: fewer steps, the same budget); with --gpus, worker counts take the
first N GPUs. Prints both rates and the busy rate's speed-up over one worker (the target is at least
0.9 x N); writes scaling.json and scaling.png under --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.loop import StopRule, make_backend, placements, run_loop  # noqa: E402
from agent.run import open_run  # noqa: E402
from sandbox import Placement, TrialRunner  # noqa: E402


def measure(runs: Path, workers: int, args: argparse.Namespace) -> dict[str, float]:
    given = {"name": f"w{workers}", "preset": args.preset, "method": "random", "budget": args.budget,
             "eval_tokens": args.eval_tokens, "workers": workers,
             "gpus": args.gpus.split(",")[:workers] if args.gpus else None}
    made: list[tuple[TrialRunner, list[Placement]]] = []
    run = open_run(runs, given, preflight=lambda settings, preset, space, method: made.append(
        (make_backend(settings, preset, space), placements(settings, preset))))
    backend, where = made[0]
    try:
        run_loop(run, backend, StopRule(trials=1), report=print, where=where)  # the baseline, alone
        start = time.monotonic()
        run_loop(run, backend, StopRule(trials=1 + args.trials), report=print, where=where)
        seconds = time.monotonic() - start
    finally:
        run.lock.release()
    later = run.ledger.records[1:]
    mean_seconds = sum(r.total_seconds for r in later) / len(later)
    return {"workers": workers, "seconds": seconds, "batch_trials_per_hour": len(later) * 3600 / seconds,
            "trials_per_hour": workers * 3600 / mean_seconds, "ok": sum(r.ok for r in later),
            "mean_trial_seconds": mean_seconds, "mean_steps": sum(r.steps or 0 for r in later) / len(later)}


def plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = [row["workers"] for row in rows]
    base = rows[0]["trials_per_hour"] / rows[0]["workers"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(workers, [row["trials_per_hour"] for row in rows], "o-", label="workers busy")
    ax.plot(workers, [row["batch_trials_per_hour"] for row in rows], "s-", label="batch, tail included")
    ax.plot(workers, [base * w for w in workers], "--", color="grey", label="linear")
    ax.plot(workers, [0.9 * base * w for w in workers], ":", color="grey", label="0.9 x linear (target)")
    ax.set_xlabel("workers")
    ax.set_ylabel("trials per hour")
    ax.set_xticks(workers)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    parser.add_argument("--trials", type=int, default=4, help="trials after the baseline, per worker count")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--gpus", help="GPUs to spread workers over (GPU preset)")
    parser.add_argument("--budget", type=float, default=10.0, help="training seconds per trial")
    parser.add_argument("--eval-tokens", type=int, default=16384, help="validation tokens per trial")
    parser.add_argument("--out", type=Path, default=Path("bench-out/scaling"))
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    runs = args.out / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # the bench's own runs, made anew each time
    rows = [measure(runs, workers, args) for workers in counts]
    one = rows[0]["trials_per_hour"] / rows[0]["workers"]
    print(f"\n{args.preset} preset, budget {args.budget:g} s, {args.trials} trials after the baseline per row")
    print(f"{'workers':>7s} {'busy/h':>8s} {'batch/h':>8s} {'speed-up':>9s} {'x N':>6s} {'trial s':>8s} "
          f"{'steps':>7s} {'ok':>4s}")
    for row in rows:
        speedup = row["trials_per_hour"] / one
        print(f"{row['workers']:7d} {row['trials_per_hour']:8.1f} {row['batch_trials_per_hour']:8.1f} "
              f"{speedup:9.2f} {speedup / row['workers']:6.2f} {row['mean_trial_seconds']:8.1f} "
              f"{row['mean_steps']:7.1f} {row['ok']:4d}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({"preset": args.preset, "budget": args.budget,
                                                       "rows": rows}, indent=2) + "\n")
    plot(rows, args.out / "scaling.png")
    print(f"wrote {args.out / 'scaling.json'} and {args.out / 'scaling.png'}")


if __name__ == "__main__":
    main()
