"""The read-only trial harness: runs train.py's train(ctx), then scores the model it returns.

Two phases, two processes, so that the score is computed by code the trial cannot touch:

    python harness.py train --config run.json --data DIR --out OUT [--train-py train.py]
        imports train.py, calls train(ctx), exports the returned model with torch.export
        to OUT/model.pt2 and writes OUT/train_stats.json. Only train.bin is read.
    python harness.py eval --config run.json --data DIR --out OUT
        loads OUT/model.pt2 (a graph of tensor ops, no trial code), computes val_bpb on
        the fixed validation set with prepare.py's metric and prints the result.

run.json holds the preset's fixed settings: device, seed, seq_len, eval_tokens,
time_budget, warmup_batches, eval_batch_rows.

Exit codes: 0 ok, 1 the trial raised, 3 the loss diverged (NaN or exploding), 4 the model broke
the contract (not a module, wrong output shape, not exportable), 2 bad harness arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")

import numpy as np
import torch

import prepare

RESULT_PREFIX = "ARENA_RESULT "
EXIT_DIVERGED = 3
EXIT_CONTRACT = 4
DIVERGED_LOSS = 100.0  # a loss above this (or non-finite) ends the trial as diverged, like autoresearch
PEAK_BF16_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12,
                   "A10": 125e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


class LossDiverged(Exception):
    pass


class ContractError(Exception):
    pass


def peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class TrainContext:
    """What train(ctx) may use. The harness owns the clock and the data; the trial owns the rest.

    The training clock starts at the fetch of batch number `warmup_batches + 1`, so compilation
    in the first steps is free (as in autoresearch, which skips its first 10 steps); the whole
    train() call is timed too and reported, so free warm-up cannot hide work.
    """

    def __init__(self, config: dict, data_dir: Path):
        meta = prepare.read_meta(data_dir)
        self.device: str = config["device"]
        self.seed: int = config["seed"]
        self.seq_len: int = config["seq_len"]
        self.vocab_size: int = meta["vocab_size"]
        self.time_budget: float = float(config["time_budget"])
        self._warmup_batches: int = config["warmup_batches"]
        self._data = prepare.TrainBatches(data_dir, self.seq_len, self.seed)
        self._fetched = 0
        self.tokens = 0
        self.timed_tokens = 0  # tokens served after the clock started: the steady-state throughput
        self._clock_start: float | None = None
        self._last_log: tuple[float, int] | None = None
        self.steps = 0

    def batches(self, batch_size: int):
        """Endless (inputs, targets) pairs of shape (batch_size, seq_len), on ctx.device."""
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        cuda = self.device.startswith("cuda")
        while True:
            rows = torch.from_numpy(self._data.next_batch(batch_size))
            if cuda:
                rows = rows.pin_memory().to(self.device, non_blocking=True)
            self._fetched += 1
            self.tokens += batch_size * self.seq_len
            if self._fetched == self._warmup_batches + 1:
                self._clock_start = time.perf_counter()
            if self._clock_start is not None:
                self.timed_tokens += batch_size * self.seq_len
            yield rows[:, :-1], rows[:, 1:]

    def training_seconds(self) -> float:
        return 0.0 if self._clock_start is None else time.perf_counter() - self._clock_start

    def progress(self) -> float:
        """Fraction of the training budget used, in [0, 1]."""
        return min(1.0, self.training_seconds() / self.time_budget)

    def should_stop(self) -> bool:
        return self.training_seconds() >= self.time_budget

    def log_step(self, step: int, loss: float) -> None:
        """One progress line per optimizer step; ends the trial if the loss diverged."""
        self.steps = step + 1
        if not math.isfinite(loss) or loss > DIVERGED_LOSS:
            raise LossDiverged(f"loss diverged at step {step}: {loss}")
        now = time.perf_counter()
        rate = 0.0
        if self._last_log is not None and now > self._last_log[0]:
            rate = (self.tokens - self._last_log[1]) / (now - self._last_log[0])
        self._last_log = (now, self.tokens)
        mem = peak_memory_bytes(self.device) / 1e9
        print(f"step={step} loss={loss:.6f} progress={self.progress():.4f} tok_per_s={rate:.0f} "
              f"mem_gb={mem:.2f} train_s={self.training_seconds():.1f}", flush=True)


def load_train_module(path: Path):
    spec = importlib.util.spec_from_file_location("train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "train", None)):
        raise ContractError(f"{path.name} defines no train(ctx) function")
    return module


def autocast_for(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))


def export_model(model: torch.nn.Module, config: dict, out: Path) -> None:
    """Save the model as a torch.export program: a graph of tensor ops that runs without the trial's code."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper exports as its original module
    if not isinstance(model, torch.nn.Module):
        raise ContractError(f"train() returned {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    example = torch.zeros((2, config["seq_len"]), dtype=torch.long, device=config["device"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.no_grad(), autocast_for(config["device"]):
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:
        raise ContractError(f"the returned model cannot be exported with torch.export: {e}") from e
    torch.export.save(program, out / "model.pt2")


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in getattr(model, "_orig_mod", model).parameters())


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def run_train(config: dict, data_dir: Path, out: Path, train_py: Path) -> None:
    device = config["device"]
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(config["seed"])
    np.random.seed(config["seed"] % 2**32)
    module = load_train_module(train_py)
    ctx = TrainContext(config, data_dir)
    start = time.perf_counter()
    model = module.train(ctx)
    synchronize(device)
    training_seconds = ctx.training_seconds()
    train_call_seconds = time.perf_counter() - start
    peak = peak_memory_bytes(device)
    export_model(model, config, out)
    flops = getattr(getattr(model, "_orig_mod", model), "estimate_flops", None)
    flops_per_token = float(flops()) if callable(flops) else 6.0 * count_params(model)
    stats = {
        "training_seconds": training_seconds,
        "train_call_seconds": train_call_seconds,
        "tokens": ctx.tokens,
        "timed_tokens": ctx.timed_tokens,
        "steps": ctx.steps,
        "num_params": count_params(model),
        "flops_per_token": flops_per_token,
        "peak_memory_bytes": peak,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "peak_flops": peak_flops(device),
        "depth": getattr(module, "DEPTH", None),
    }
    (out / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n")


def run_eval(config: dict, data_dir: Path, out: Path) -> dict:
    device = config["device"]
    program = torch.export.load(out / "model.pt2")
    forward = program.module()
    stats = json.loads((out / "train_stats.json").read_text())
    meta = prepare.read_meta(data_dir)
    start = time.perf_counter()
    try:
        with autocast_for(device):
            tally = prepare.evaluate_bpb(forward, data_dir, config["seq_len"], config["eval_tokens"], device,
                                         batch_rows=config["eval_batch_rows"])
    except prepare.DataError:
        raise
    except Exception as e:
        raise ContractError(f"the exported model failed on the validation set: {e}") from e
    train_s = max(stats["training_seconds"], 1e-9)
    tokens_per_second = stats["timed_tokens"] / train_s
    mfu = None
    if stats["peak_flops"]:
        mfu = 100 * stats["flops_per_token"] * tokens_per_second / stats["peak_flops"]
    return {
        "val_bpb": tally.bpb,
        "val_tokens": tally.tokens,
        "val_bytes": tally.bytes,
        "training_seconds": stats["training_seconds"],
        "train_call_seconds": stats["train_call_seconds"],
        "eval_seconds": time.perf_counter() - start,
        "peak_memory_gb": stats["peak_memory_bytes"] / 1e9,
        "mfu_percent": mfu,
        "tokens": stats["tokens"],
        "tokens_per_second": tokens_per_second,
        "steps": stats["steps"],
        "num_params": stats["num_params"],
        "device_name": stats["device_name"],
        "dataset_fingerprint": meta["fingerprint"],
        "seed": config["seed"],
        "time_budget": config["time_budget"],
        "eval_tokens": config["eval_tokens"],
        "depth": stats["depth"],
    }


def print_summary(result: dict) -> None:
    mfu = result["mfu_percent"]
    print("---")
    print(f"val_bpb:          {result['val_bpb']:.6f}")
    print(f"training_seconds: {result['training_seconds']:.1f}")
    print(f"total_seconds:    {result['train_call_seconds'] + result['eval_seconds']:.1f}")
    print(f"peak_vram_mb:     {result['peak_memory_gb'] * 1e9 / 2**20:.1f}")
    print(f"mfu_percent:      {'n/a' if mfu is None else f'{mfu:.2f}'}")
    print(f"total_tokens_M:   {result['tokens'] / 1e6:.1f}")
    print(f"num_steps:        {result['steps']}")
    print(f"num_params_M:     {result['num_params'] / 1e6:.1f}")
    print(f"depth:            {result['depth']}")
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one trial phase")
    parser.add_argument("phase", choices=["train", "eval"])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-py", type=Path, default=Path("train.py"))
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        if args.phase == "train":
            run_train(config, args.data, args.out, args.train_py)
        else:
            print_summary(run_eval(config, args.data, args.out))
    except LossDiverged as e:
        print(f"ARENA_DIVERGED {e}", flush=True)
        return EXIT_DIVERGED
    except ContractError as e:
        print(f"ARENA_CONTRACT {e}", flush=True)
        return EXIT_CONTRACT
    except prepare.DataError as e:
        print(f"ARENA_DATA {e}", flush=True)
        return 2
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
