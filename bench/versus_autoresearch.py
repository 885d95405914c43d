"""The template against karpathy/autoresearch's own train.py, on the same GPU and data, side by side.

    python bench/versus_autoresearch.py --autoresearch PATH [--budget 300] [--preset gpu] [--seed 42]
                                        [--cache DIR] [--corpus C] [--eval-tokens N] [--compile-cache DIR]
                                        [--out DIR]

PATH is a checkout of karpathy/autoresearch (or its train.py); nothing of it is copied into this project.
Its train.py runs unchanged, as its own process, beside two stand-ins (bench/autoresearch_shim/): `kernels`,
whose FlashAttention-3 call becomes PyTorch's own attention (SDPA in torch's default order for full-context
layers, FlexAttention for sliding windows: nothing is downloaded), and `prepare`, which serves its five
imports from arena's dataset (the rows an arena trial of the same seed trains on, the validation rows arena
scores, arena's metric) with its time budget and sequence length from the preset. Then the template runs
with the preset's constants through bench/throughput.py, both harness phases as a trial runs them.

It prints, for each: steady-state tokens/s, MFU by autoresearch's formula (6 FLOPs per matmul weight and
12 x width x window per layer for attention, the template's estimate_flops too; autoresearch's first 11
steps and the template's first 10, the harness's warm-up, not timed), peak GPU memory
(max_memory_allocated), optimizer steps and val_bpb; then the template's ratio and the goals of issue 12:
at least 1.16x autoresearch's tokens/s, at least 42% MFU, peak memory no higher.
A train.py whose model shape differs from the preset's is named, since memory and MFU then compare
different models. `--out` keeps both logs and writes summary.json.

Only the standard library is imported here, like bench/throughput.py, so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # also when loaded by path (tests): throughput.py is its sibling

from throughput import fail, load_preset, prepare_dataset, require_cuda  # noqa: E402

from sandbox.outcome import peak_flops  # noqa: E402  (throughput put this checkout on the path)

SHIM = ROOT / "bench" / "autoresearch_shim"
THROUGHPUT = ROOT / "bench" / "throughput.py"
# autoresearch times its steps from the 12th (`if step > 10`, step counted from 0); the MFU line it prints
# divides step - 10 steps' FLOPs by that time, one step more than it timed
UNTIMED_STEPS = 11
SHAPE = ("DEPTH", "ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE")
GOAL_SPEED_UP = 1.16
GOAL_MFU = 42.0


def find_train_py(path: Path) -> Path:
    train_py = path / "train.py" if path.is_dir() else path
    if not train_py.is_file():
        fail(f"{path} is neither autoresearch's train.py nor a directory holding one; clone "
             "karpathy/autoresearch and pass its path")
    source = train_py.read_text(errors="replace")
    if "from prepare import" not in source or "get_kernel" not in source:
        fail(f"{train_py} does not import from prepare and `kernels` as autoresearch's train.py does; "
             "pass its train.py")
    return train_py


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Pow: operator.pow,
              ast.FloorDiv: operator.floordiv}


def _value(node: ast.expr):
    """A constant's value where it is a literal or integer arithmetic on literals (2**19); None otherwise."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(left, int) and isinstance(right, int):
            return _OPERATORS[type(node.op)](left, right)
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def module_constants(source: str) -> dict:
    """The train.py's top-level NAME = value assignments whose values are plain literals."""
    constants = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _value(node.value)
            if value is not None:
                constants[node.targets[0].id] = value
    return constants


def summary_block(text: str) -> dict[str, float]:
    """autoresearch's closing `name: number` lines and its FLOPs estimate, from its output."""
    found = {name: float(value) for name, value in re.findall(r"^(\w+):\s+(-?[\d.]+)\s*$", text, re.MULTILINE)}
    flops = re.search(r"Estimated FLOPs per token:\s*([\d.e+-]+)", text)
    if flops:
        found["flops_per_token"] = float(flops.group(1))
    return found


def run_reference(train_py: Path, data_dir: Path, preset: dict, args: argparse.Namespace, work: Path) -> dict:
    """autoresearch's train.py, unchanged, beside the stand-ins; its summary and the figures derived from it."""
    stage = work / "autoresearch"
    stage.mkdir(exist_ok=True)
    shutil.copy2(train_py, stage / "train.py")
    for name in ("kernels.py", "prepare.py"):
        shutil.copy2(SHIM / name, stage / name)
    shutil.copy2(ROOT / "train_template" / "prepare.py", stage / "arena_prepare.py")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(stage), os.environ.get("PYTHONPATH")])),
               ARENA_REFERENCE_DATA=str(data_dir), ARENA_REFERENCE_SEQ_LEN=str(preset["seq_len"]),
               ARENA_REFERENCE_BUDGET=str(args.budget), ARENA_REFERENCE_SEED=str(args.seed),
               ARENA_REFERENCE_EVAL_TOKENS=str(args.eval_tokens or preset["eval_tokens"]),
               ARENA_REFERENCE_DEVICE=preset["device"])
    if args.compile_cache:
        cache = (args.compile_cache / "autoresearch").resolve()
        env.update(TORCHINDUCTOR_CACHE_DIR=str(cache), TRITON_CACHE_DIR=str(cache / "triton"))
    print(f"autoresearch's {train_py}, budget {args.budget:g} s, in {stage}", flush=True)
    start = time.monotonic()
    log_path = work / "autoresearch.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=stage, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        # raw chunks: its progress line is rewritten in place with \r, so whole lines would come only at the end
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            log.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        code = proc.wait()
    if code != 0:
        fail(f"autoresearch's train.py exited with code {code}; see its output above ({log_path})")
    found = summary_block(log_path.read_text(errors="replace"))
    missing = [name for name in ("val_bpb", "training_seconds", "peak_vram_mb", "num_steps") if name not in found]
    if missing:
        fail(f"autoresearch's output lacks its summary line(s) {', '.join(missing)}; see {log_path}")
    constants = module_constants(train_py.read_text())
    batch = constants.get("TOTAL_BATCH_SIZE")
    timed_steps = found["num_steps"] - UNTIMED_STEPS
    timed = isinstance(batch, int) and found["training_seconds"] > 0
    rate = batch * timed_steps / found["training_seconds"] if timed else None
    return {"val_bpb": found["val_bpb"], "steps": int(found["num_steps"]), "tokens_per_second": rate,
            "flops_per_token": found.get("flops_per_token"), "peak_memory_gb": found["peak_vram_mb"] * 2**20 / 1e9,
            "training_seconds": found["training_seconds"], "wall_seconds": time.monotonic() - start,
            "summary": found, "constants": {name: constants.get(name) for name in SHAPE}}


def run_template(args: argparse.Namespace, work: Path) -> dict:
    """The template with the preset's constants, through bench/throughput.py."""
    result = work / "template.json"
    cmd = [sys.executable, str(THROUGHPUT), "--preset", args.preset, "--budget", str(args.budget),
           "--seed", str(args.seed), "--json", str(result)]
    for flag, value in (("--cache", args.cache), ("--corpus", args.corpus), ("--eval-tokens", args.eval_tokens),
                        ("--compile-cache", args.compile_cache and args.compile_cache / "template")):
        if value is not None:
            cmd += [flag, str(value)]
    start = time.monotonic()
    with open(work / "template.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = (work / "template.log").read_text(errors="replace").strip().splitlines()[-3:]
        fail(f"the template's run failed (exit code {proc.returncode}): {' | '.join(tail)}")
    run = json.loads(result.read_text())
    reported = run["reported"]
    return {"val_bpb": run["eval"]["val_bpb"], "steps": reported["steps"],
            "tokens_per_second": reported["timed_tokens"] / reported["training_seconds"],
            "flops_per_token": reported.get("flops_per_token"),
            "peak_flops": peak_flops(reported.get("device_name"), reported.get("peak_flops")),
            "device_name": reported.get("device_name"), "peak_memory_gb": reported["peak_memory_bytes"] / 1e9,
            "training_seconds": reported["training_seconds"], "wall_seconds": time.monotonic() - start}


def mfu(run: dict, peak_flops: float | None) -> float | None:
    if not (run["tokens_per_second"] and run["flops_per_token"] and peak_flops):
        return None
    return 100 * run["tokens_per_second"] * run["flops_per_token"] / peak_flops


def compare(reference: dict, template: dict) -> dict:
    """The side-by-side figures and each goal, met or not (None where a figure is missing)."""
    peak = template["peak_flops"]  # the same GPU: known by its name
    ref_mfu, own_mfu = mfu(reference, peak), mfu(template, peak)
    speed_up = (template["tokens_per_second"] / reference["tokens_per_second"]
                if reference["tokens_per_second"] else None)
    return {"device": template["device_name"], "peak_flops": peak,
            "autoresearch": {**reference, "mfu_percent": ref_mfu}, "template": {**template, "mfu_percent": own_mfu},
            "speed_up": speed_up,
            "goals": {
                f"tokens/s >= {GOAL_SPEED_UP}x autoresearch's": None if speed_up is None else speed_up >= GOAL_SPEED_UP,
                f"MFU >= {GOAL_MFU:g}%": None if own_mfu is None else own_mfu >= GOAL_MFU,
                "peak memory <= autoresearch's": template["peak_memory_gb"] <= reference["peak_memory_gb"]}}


def shape_differences(reference: dict, preset: dict) -> list[str]:
    return [f"{name} {reference['constants'][name]!r} (preset {preset['constants'][name]!r})" for name in SHAPE
            if name in preset["constants"] and reference["constants"].get(name) != preset["constants"][name]]


def print_comparison(result: dict, preset_name: str, budget: float, on_gpu: bool) -> None:
    ref, own = result["autoresearch"], result["template"]

    def number(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rows = [("tokens/s (steady state)", number(ref["tokens_per_second"], ",.0f"),
             number(own["tokens_per_second"], ",.0f")),
            ("MFU % (autoresearch's formula)", number(ref["mfu_percent"], ".1f"), number(own["mfu_percent"], ".1f")),
            ("peak memory GB", f"{ref['peak_memory_gb']:.1f}", f"{own['peak_memory_gb']:.1f}"),
            ("optimizer steps", str(ref["steps"]), str(own["steps"])),
            ("training seconds", f"{ref['training_seconds']:.1f}", f"{own['training_seconds']:.1f}"),
            ("val_bpb", f"{ref['val_bpb']:.4f}", f"{own['val_bpb']:.4f}"),
            ("process wall seconds", f"{ref['wall_seconds']:.0f}", f"{own['wall_seconds']:.0f}")]
    print(f"\n{result['device'] or 'unknown device'}, preset '{preset_name}', {budget:g} s of training each")
    print(f"{'':<32}{'autoresearch (SDPA)':>22}{'template':>14}")
    for name, a, b in rows:
        print(f"{name:<32}{a:>22}{b:>14}")
    if result["speed_up"] is not None:
        print(f"template / autoresearch tokens/s: {result['speed_up']:.3f}x")
    if on_gpu:
        for goal, met in result["goals"].items():
            print(f"goal {goal}: {'n/a' if met is None else 'met' if met else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the template against autoresearch's train.py on one GPU")
    parser.add_argument("--autoresearch", type=Path, required=True,
                        help="a checkout of karpathy/autoresearch, or its train.py")
    parser.add_argument("--budget", type=float, default=300, help="training seconds for each (default 300)")
    parser.add_argument("--preset", default="gpu", help="preset whose data, shape and constants are used (default gpu)")
    parser.add_argument("--seed", type=int, default=42, help="the data order both train on (default 42)")
    parser.add_argument("--cache", type=Path, default=None, help="dataset cache directory (default: arena's)")
    parser.add_argument("--corpus", default=None, help="corpus for the dataset (default: the offline stdlib)")
    parser.add_argument("--eval-tokens", type=int, default=None, help="validation tokens (default: the preset's)")
    parser.add_argument("--compile-cache", type=Path, default=None,
                        help="keep each one's TorchInductor cache under this directory, to measure warm starts")
    parser.add_argument("--out", type=Path, default=None, help="keep both logs and write summary.json here")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        fail(f"--budget must be positive, got {args.budget}")
    train_py = find_train_py(args.autoresearch)
    preset = load_preset(args.preset)
    if str(preset["device"]).startswith("cuda"):
        require_cuda()
    data_dir = prepare_dataset(args.cache, args.corpus or "stdlib", preset["vocab_size"])

    with tempfile.TemporaryDirectory(prefix="arena-versus-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        reference = run_reference(train_py, data_dir, preset, args, work)
        differences = shape_differences(reference, preset)
        if differences:
            print(f"note: autoresearch's train.py differs from the preset's shape: {', '.join(differences)}; "
                  "peak memory and MFU then compare different models", flush=True)
        print(f"\nthe template with preset '{args.preset}' (log: {work / 'template.log'})", flush=True)
        result = compare(reference, run_template(args, work))
        if args.out:
            (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print_comparison(result, args.preset, args.budget, str(preset["device"]).startswith("cuda"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
