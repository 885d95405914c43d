"""Throughput benchmark of the training template on one CUDA GPU, measured exactly as a trial runs.

    python bench/throughput.py [--budget 300] [--cache DIR] [--compile-cache DIR] [--train-py FILE]
                               [--eval-tokens N]

It prepares the offline dataset (the running Python's standard library, BPE vocabulary from the
`gpu` preset) if the cache lacks it, renders the `gpu` preset's constants into train.py, stages
train.py beside the pristine harness files and runs the two phases as separate processes under the
sandbox's supervisor, as a trial runs (without the namespaces): `harness.py train` (train(ctx), then
the export) and `harness.py eval` (val_bpb of the exported model). Times and peak memory come from the
supervisor's ARENA_PHASE line, val_bpb from the eval phase's ARENA_EVAL line, tokens and steps from
what the train phase reports (train_stats.json).

Only the standard library is imported here, and from this checkout the dataset builder
(agent/dataset_build.py: numpy, tokenizers) and the ledger's tokens/s and MFU (sandbox/outcome.py), so it
runs on a bare GPU machine with torch, numpy, safetensors and tokenizers, without the arena package installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, installed or not
from sandbox.outcome import reported_mfu, reported_rate  # noqa: E402

TEMPLATE = ROOT / "train_template"
HARNESS_FILES = ("harness.py", "prepare.py", "exported.py", "memory_check.py")
SUPERVISOR = ROOT / "sandbox" / "supervisor.py"
EVAL_PREFIX = "ARENA_EVAL "
PHASE_PREFIX = "ARENA_PHASE "
BEGIN_MARKER = "# ==== ARENA CONSTANTS BEGIN"
END_MARKER = "# ==== ARENA CONSTANTS END"


def fail(message: str) -> None:
    """One line naming the script that was run, like argparse's own errors, and exit 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def require_cuda() -> None:
    # A subprocess keeps this process free of CUDA state and gives one clean line on a CPU-only torch.
    probe = subprocess.run([sys.executable, "-c", "import torch; print(int(torch.cuda.is_available()))"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        fail(f"cannot import torch ({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'no output'})")
    if probe.stdout.strip() != "1":
        fail("no CUDA GPU visible to torch; this benchmark measures the 'gpu' preset and needs one")


def load_preset(name: str) -> dict:
    presets = tomllib.loads((TEMPLATE / "presets.toml").read_text())
    if name not in presets:
        fail(f"unknown preset '{name}'; presets.toml has: {', '.join(presets)}")
    return presets[name]


def render_constants(source: str, constants: dict) -> str:
    """Set each NAME = value line of the constants block to the preset's value, keeping its comment.

    A small stand-in for agent.constants.render_constants, which this script cannot import.
    """
    lines = source.splitlines(keepends=True)
    try:
        begin = next(i for i, line in enumerate(lines) if line.startswith(BEGIN_MARKER))
        end = next(i for i, line in enumerate(lines) if line.startswith(END_MARKER))
    except StopIteration:
        fail("train.py has no ARENA CONSTANTS block")
    missing = set(constants)
    for i in range(begin + 1, end):
        match = re.match(r"^([A-Z_][A-Z0-9_]*)(\s*=\s*)(.*?)(\s+#.*)?(\n?)$", lines[i])
        if match and match.group(1) in constants:
            name, eq, _, comment, newline = match.groups()
            value = constants[name]
            text = json.dumps(value) if isinstance(value, str) else repr(value)
            lines[i] = f"{name}{eq}{text}{comment or ''}{newline}"
            missing.discard(name)
    if missing:
        fail(f"train.py's constants block lacks {', '.join(sorted(missing))}")
    return "".join(lines)


def prepare_dataset(cache: Path | None, corpus: str, vocab_size: int) -> Path:
    """The dataset a trial gets, from arena's own builder (cache None: $ARENA_CACHE or its default)."""
    from agent.dataset_build import build_dataset

    start = time.perf_counter()
    data_dir = build_dataset(corpus, cache, vocab_size=vocab_size)
    meta = json.loads((data_dir / "meta.json").read_text())
    print(f"dataset {data_dir} ({meta['tokens']['train']:,} train tokens, vocab {meta['vocab_size']}) "
          f"ready in {time.perf_counter() - start:.1f} s", flush=True)
    return data_dir


def run_phase(phase: str, workdir: Path, data_dir: Path, env: dict, deadline: float, log) -> tuple[dict, list[str]]:
    """Run one harness phase under the supervisor; stream its output; return (its ARENA_PHASE report, lines)."""
    harness = [sys.executable, "harness.py", phase, "--config", "run.json", "--data", str(data_dir), "--out", "out"]
    if phase == "eval":
        harness += ["--in", "out"]
    cmd = [sys.executable, str(SUPERVISOR), "--deadline", str(deadline), "--", *harness]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        log.write(line)
        # Every step line of the train phase would flood the terminal: show one in 20.
        if not line.startswith("step=") or int(line[5:].split(" ", 1)[0]) % 20 == 0:
            print(f"[{phase}] {line}", end="", flush=True)
    proc.wait()
    reports = [json.loads(line[len(PHASE_PREFIX):]) for line in lines if line.startswith(PHASE_PREFIX)]
    if proc.returncode or not reports:
        fail(f"the {phase} phase's supervisor failed (exit code {proc.returncode}); see the output above")
    return reports[-1], lines


def print_table(evaluation: dict, reported: dict, train: dict, budget: float, walls: dict) -> None:
    work = train["end"] - train["ready"]
    rate, mfu = reported_rate(reported), reported_mfu(reported)  # as the ledger counts them
    rows = [
        ("device", reported["device_name"]),
        ("tokens/s (steady state)", f"{rate:,.0f}" if rate else "n/a"),
        ("MFU %", "n/a" if mfu is None else f"{mfu:.1f}"),
        ("peak memory GB (trial's report)", f"{reported['peak_memory_bytes'] / 1e9:.1f}"),
        ("peak host memory GB (kernel)", f"{train['max_rss_kb'] * 1024 / 1e9:.1f}"),
        ("training seconds (trial's clock)", f"{reported['training_seconds']:.1f}"),
        ("trial code seconds (measured)", f"{work:.1f}"),
        ("outside the budget s", f"{work - budget:.1f}"),
        ("eval seconds", f"{evaluation['eval_seconds']:.1f}"),
        ("val_bpb", f"{evaluation['val_bpb']:.4f}"),
        ("optimizer steps", f"{reported['steps']}"),
        ("tokens trained", f"{reported['tokens']:,}"),
        ("train process wall s", f"{walls['train']:.1f}"),
        ("eval process wall s", f"{walls['eval']:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "-" * (width + 24))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("-" * (width + 24), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tokens/s, MFU, memory and val_bpb of the template on one GPU")
    parser.add_argument("--budget", type=float, default=300, help="training seconds (default 300, the preset's)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="dataset cache directory (default $ARENA_CACHE or ~/.cache/autoresearch-arena)")
    parser.add_argument("--compile-cache", type=Path, default=None,
                        help="TorchInductor/Triton cache directory; reuse one to measure a warm compile")
    parser.add_argument("--preset", default="gpu", help="preset whose settings and constants are used (default gpu)")
    parser.add_argument("--corpus", default="stdlib", help="corpus for the dataset (default: the offline stdlib)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="validation tokens (default: the preset's); for corpora whose validation split is smaller")
    parser.add_argument("--train-py", type=Path, default=TEMPLATE / "train.py",
                        help="the train.py to measure (default: the template's); the preset's constants are "
                             "rendered in")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the trial directory (logs, exported model, stats) here instead of a temp dir")
    parser.add_argument("--json", type=Path, default=None, help="also write the result and wall times here")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        fail(f"--budget must be positive, got {args.budget}")

    preset = load_preset(args.preset)
    if str(preset["device"]).startswith("cuda"):
        require_cuda()  # a cpu preset runs too: a quick check of the script itself
    data_dir = prepare_dataset(args.cache, args.corpus, preset["vocab_size"])

    config = {"device": preset["device"], "seed": args.seed, "seq_len": preset["seq_len"],
              "eval_tokens": args.eval_tokens or preset["eval_tokens"], "time_budget": float(args.budget),
              "warmup_steps": preset["warmup_steps"], "causality_probes": preset["causality_probes"]}
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    if args.compile_cache:
        args.compile_cache.mkdir(parents=True, exist_ok=True)
        env["TORCHINDUCTOR_CACHE_DIR"] = str(args.compile_cache.resolve())
        env["TRITON_CACHE_DIR"] = str(args.compile_cache.resolve() / "triton")

    with tempfile.TemporaryDirectory(prefix="arena-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "train.py").write_text(render_constants(args.train_py.read_text(), preset["constants"]))
        for name in HARNESS_FILES:
            shutil.copy2(TEMPLATE / name, workdir / name)
        (workdir / "run.json").write_text(json.dumps(config, indent=2) + "\n")
        (workdir / "out").mkdir(exist_ok=True)
        print(f"preset '{args.preset}', budget {args.budget:g} s, trial directory {workdir}", flush=True)

        walls = {}
        train_deadline = args.budget + preset["startup_allowance"] + 60
        with open(workdir / "log.txt", "w") as log:
            train, _ = run_phase("train", workdir, data_dir, env, train_deadline, log)
            walls["train"] = train["end"] or 0.0
            if train["exit_code"] != 0:
                fail(f"the train phase exited with code {train['exit_code']}; see the output above")
            reported = json.loads((workdir / "out" / "train_stats.json").read_text())
            evaluation_report, lines = run_phase("eval", workdir, data_dir, env, preset["eval_timeout"], log)
            walls["eval"] = evaluation_report["end"] or 0.0
            if evaluation_report["exit_code"] != 0:
                fail(f"the eval phase exited with code {evaluation_report['exit_code']}; see the output above")
    results = [json.loads(line[len(EVAL_PREFIX):]) for line in lines if line.startswith(EVAL_PREFIX)]
    if not results:
        fail("the eval phase printed no ARENA_EVAL line")
    print_table(results[-1], reported, train, args.budget, walls)
    if args.json:
        args.json.write_text(json.dumps({"eval": results[-1], "reported": reported, "train_phase": train,
                                         "wall_seconds": walls}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
