"""Where a training step's GPU time goes: runs the template's real train(ctx) for a few steps under the
harness's own TrainContext and profiles two of them.

    python bench/profile_step.py --data DIR [--train-py FILE] [--steps 14] [--trace OUT.json.gz]

Prints the time to the first step (compile included), the steady-state step time, the top kernels
by GPU time, GPU time by kind of kernel and how busy the GPU was over the profiled steps. Set
TORCH_LOGS=graph_breaks,recompiles to also see what torch.compile did. Needs CUDA; stdlib + the
template's harness (torch, numpy, safetensors) only.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train_template"))

import harness  # noqa: E402
import torch  # noqa: E402

KINDS = [  # first match wins: substrings of kernel names, lower case
    ("attention (flex)", ("flex", "triton_tem")),  # inductor names its FlexAttention kernels triton_tem_*
    ("attention (cudnn)", ("cudnn", "sdpa")),  # cudnn_generated_..._sdpa_..._flash_...: before flash
    ("attention (flash)", ("flash",)),
    ("attention (mem-efficient)", ("efficient_attention", "cutlassf", "fmha")),  # fmha_cutlassF_*, fmha_cutlassB_*
    ("matmul", ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul")),
    ("optimizer (adam)", ("adam",)),
    ("triton fused", ("triton",)),
    ("copy/memset", ("memcpy", "memset", "copy")),
]


class ProfiledContext(harness.TrainContext):
    """The harness's context, stopping after `steps` optimizer steps and stepping a profiler each step."""

    def __init__(self, config, data_dir, steps, profiler):
        super().__init__(config, data_dir)
        self.total_steps = steps
        self.profiler = profiler
        self.stamps: list[float] = []

    def should_stop(self) -> bool:
        return self.steps >= self.total_steps

    def log_step(self, step, loss):
        super().log_step(step, loss)  # includes the loss.item() sync, so the clock reads finished work
        self.stamps.append(time.perf_counter())
        self.profiler.step()


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--train-py", type=Path, default=ROOT / "train_template" / "train.py")
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps in all; the last two are profiled")
    parser.add_argument("--trace", type=Path, default=None, help="write a Chrome trace of the profiled steps")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("profile_step: error: no CUDA GPU visible to torch", file=sys.stderr)
        return 2

    torch.backends.cuda.matmul.allow_tf32 = True  # as harness.run_train sets them
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    config = {"device": "cuda", "seed": 42, "seq_len": 2048, "time_budget": 1e9, "warmup_steps": 0}
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    schedule = torch.profiler.schedule(wait=args.steps - 3, warmup=1, active=2, repeat=1)
    module = harness.load_train_module(args.train_py)
    with torch.profiler.profile(activities=activities, schedule=schedule) as prof:
        ctx = ProfiledContext(config, args.data, args.steps, prof)
        ctx.start()
        start = time.perf_counter()
        module.train(ctx)
        torch.cuda.synchronize()
    stamps = [t - start for t in ctx.stamps]
    steady = [b - a for a, b in itertools.pairwise(stamps[2:-2])]  # unprofiled steps after compilation
    print(f"\nfirst step done at {stamps[0]:.1f} s (compile included); second at {stamps[1]:.1f} s")
    if steady:
        steady.sort()
        print(f"steady step: median {steady[len(steady) // 2] * 1e3:.1f} ms, min {steady[0] * 1e3:.1f} ms "
              f"over {len(steady)} steps; peak memory {torch.cuda.max_memory_allocated() / 1e9:.1f} GB")
    profiled_wall = stamps[-1] - stamps[-3]

    # kernels only: annotated regions (the profiler's step, the optimizer's step) are CUDA events as well,
    # each spanning the kernels inside it, which would count their time twice
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
              and not e.name.startswith("ProfilerStep") and not getattr(e, "is_user_annotation", False)]
    by_kind: dict[str, float] = collections.Counter()
    by_name: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    for e in events:
        us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        by_kind[kind_of(e.name)] += us
        by_name[e.name] += us
        counts[e.name] += 1
    busy = sum(by_kind.values()) / 1e6
    print(f"\nprofiled 2 steps: wall {profiled_wall * 1e3:.1f} ms, GPU kernel time {busy * 1e3:.1f} ms "
          f"({100 * busy / profiled_wall:.1f}% busy), {len(events)} kernels")
    print("\nGPU time by kind (ms over 2 steps):")
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<28} {us / 1e3:9.2f}  {100 * us / 1e6 / busy:5.1f}%")
    print(f"\ntop {args.top} kernels (ms over 2 steps, calls):")
    for name, us in by_name.most_common(args.top):
        print(f"  {us / 1e3:8.2f} {counts[name]:5d}  {name[:150]}")
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
