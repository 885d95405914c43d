"""The read-only trial harness: runs train.py's train(ctx), then scores the model it returns.

Two phases, two processes, two sandboxes, so that the score is computed by code the trial cannot touch:

    python harness.py train --config run.json --data DIR --out OUT [--train-py train.py]
        installs the compile-time memory check (memory_check.py: a torch.compile'd step that cannot fit
        ends before its kernels are built), prints ARENA_READY before any trial code runs, imports
        train.py, calls train(ctx) and exports the returned model (exported.py: a JSON graph of
        allowlisted tensor operators and a safetensors weights file) to OUT. Only train.bin is read.
        OUT/train_stats.json holds what the trial's own process reports (steps, tokens, its clock):
        shown, never trusted.
    python harness.py eval --config run.json --data DIR --in MODEL_DIR --out OUT
        checks and loads the exported model (no pickle, no trial code), checks on every validation
        row that its logits are finite and causal (earlier positions unchanged when later tokens
        change), computes val_bpb with prepare.py's metric and prints one ARENA_EVAL line.

run.json holds the preset's fixed settings: device, seed, seq_len, eval_tokens, time_budget,
warmup_steps, causality_probes (per validation row). Time, memory and wall-clock limits are measured and
enforced outside, by the sandbox.

Exit codes: 0 ok, 1 the trial raised, 2 bad harness arguments or data, 3 the loss diverged (NaN or
exploding), 4 the model broke the contract (not a module, not exportable), 5 the exported model was
rejected by a check of the eval phase.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import secrets
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")

import numpy as np
import torch

import exported
import memory_check
import prepare

READY_LINE = "ARENA_READY"
RESULT_PREFIX = "ARENA_EVAL "  # the eval phase's one result line, read by the sandbox
EXIT_DATA = 2
EXIT_DIVERGED = 3
EXIT_CONTRACT = 4
EXIT_REJECTED = 5
DIVERGED_LOSS = 100.0  # a loss above this (or non-finite) ends the trial as diverged, like autoresearch
# nats: what an earlier position's log-probabilities may move when later tokens change. The probe runs the same
# shapes as the scored row, so an honest model's earlier positions come out the same to the last bit or within
# float32 rounding; a peek smaller than this gains under 1e-5 bits per byte.
CAUSALITY_TOLERANCE = 1e-5
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

    The clock starts when train() is called. The first `warmup_steps` optimizer steps (counted by
    log_step) are free, so compilation does not eat the budget (autoresearch skips its first 10
    steps): the clock stands still until they are done. All of this is advisory, for the trial's own
    schedule: the sandbox measures the whole phase from outside and judges the budget on that.
    """

    def __init__(self, config: dict, data_dir: Path):
        meta = prepare.read_meta(data_dir)
        self.device: str = config["device"]
        self.seed: int = config["seed"]
        self.seq_len: int = config["seq_len"]
        self.vocab_size: int = meta["vocab_size"]
        self.time_budget: float = float(config["time_budget"])
        self.warmup_steps: int = config["warmup_steps"]
        self._data = prepare.TrainBatches(data_dir, self.seq_len, self.seed)
        self.tokens = 0
        self.timed_tokens = 0  # tokens served while the clock ran: the steady-state throughput
        self._origin: float | None = None
        self._last_log: tuple[float, int] | None = None
        self.steps = 0

    def start(self) -> None:
        """Called by the harness right before train(ctx)."""
        self._origin = time.perf_counter()

    def batches(self, batch_size: int):
        """Endless (inputs, targets) pairs of shape (batch_size, seq_len), on ctx.device."""
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        cuda = self.device.startswith("cuda")
        while True:
            rows = torch.from_numpy(self._data.next_batch(batch_size))
            if cuda:
                rows = rows.pin_memory().to(self.device, non_blocking=True)
            self.tokens += batch_size * self.seq_len
            if self.steps >= self.warmup_steps:
                self.timed_tokens += batch_size * self.seq_len
            yield rows[:, :-1], rows[:, 1:]

    def training_seconds(self) -> float:
        if self._origin is None or self.steps < self.warmup_steps:
            return 0.0
        return time.perf_counter() - self._origin

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
        if self.steps == self.warmup_steps:
            self._origin = now  # the free warm-up ends here
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
    """Save the model as a graph of tensor operators plus weights: it runs without the trial's code."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper exports as its original module
    if not isinstance(model, torch.nn.Module):
        raise ContractError(f"train() returned {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    try:
        exported.save(model, config["seq_len"], config["device"], out, lambda: autocast_for(config["device"]))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ContractError(f"the returned model cannot be exported with torch.export ({first}); "
                            "keep forward() plain tensor code with no data-dependent Python") from e


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
    memory_check.install()  # a compiled step that cannot fit ends before its kernels are generated
    print(READY_LINE, flush=True)  # the sandbox's clock starts here: from now on, trial code runs
    module = load_train_module(train_py)
    ctx = TrainContext(config, data_dir)
    ctx.start()
    model = module.train(ctx)
    synchronize(device)
    reported = {  # the trial's own account; the sandbox measures time and memory itself
        "training_seconds": ctx.training_seconds(),
        "tokens": ctx.tokens,
        "timed_tokens": ctx.timed_tokens,
        "steps": ctx.steps,
        "peak_memory_bytes": peak_memory_bytes(device),
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "peak_flops": peak_flops(device),
        "depth": getattr(module, "DEPTH", None),
    }
    flops = getattr(getattr(model, "_orig_mod", model), "estimate_flops", None)
    export_model(model, config, out)
    if callable(flops):
        reported["flops_per_token"] = float(flops())
    (out / "train_stats.json").write_text(json.dumps(reported, indent=2) + "\n")


def probe_cuts(rows: int, seq_len: int, per_row: int, rng: np.random.Generator) -> np.ndarray:
    """Where each row's causality probes cut, shape (rows, per_row): positions in [0, seq_len - 2], drawn
    without replacement until every position has been drawn, so with rows x per_row >= seq_len - 1 every
    position is probed somewhere in the evaluation. A peek at the next token at position t is caught only by
    a probe cut at t, so independent draws would miss a model that peeks at a few fixed positions."""
    cuts = seq_len - 1
    slots = rows * per_row
    order = np.concatenate([rng.permutation(cuts) for _ in range(-(-slots // cuts))])[:slots]
    rng.shuffle(order)
    return order.reshape(rows, per_row)


def causality_check(forward, vocab_size: int, cuts: np.ndarray, rng: np.random.Generator):
    """A check for evaluate_bpb, which hands it one row at a time: finite logits, and for every cut p of
    that row (probe_cuts), logits at positions <= p unchanged when the tokens after p are replaced by random
    ones (cuts and tokens drawn from the OS, so no model can predict them)."""
    row_cuts = iter(cuts)

    def check(inputs: torch.Tensor, logits: torch.Tensor) -> None:
        if not bool(torch.isfinite(logits).all()):
            raise exported.Rejected("finite", "the model returned NaN or infinite logits")
        seq_len = inputs.size(1)
        for row in range(inputs.size(0)):
            for p in map(int, next(row_cuts)):
                probe = inputs[row:row + 1].clone()
                suffix = torch.from_numpy(rng.integers(0, vocab_size, seq_len - p - 1)).to(probe.device)
                suffix[0] = (probe[0, p + 1] + 1 + suffix[0] % (vocab_size - 1)) % vocab_size  # surely different
                probe[0, p + 1:] = suffix
                before = torch.log_softmax(logits[row, :p + 1].double(), dim=-1)
                after = torch.log_softmax(forward(probe)[0, :p + 1].double(), dim=-1)
                drift = float((before - after).abs().max())
                if not drift <= CAUSALITY_TOLERANCE:
                    print(f"causality probe: position {p}, largest change {drift:.3g} nats", flush=True)  # log only
                    # the verdict carries no number computed on validation data, which could carry some of it
                    raise exported.Rejected("causality", f"log-probabilities at positions up to {p} changed when "
                                                         "only later tokens changed: the model sees the future")
    return check


def run_eval(config: dict, data_dir: Path, model_dir: Path) -> dict:
    device = config["device"]
    start = time.perf_counter()
    model = exported.load(model_dir, device, config["seq_len"], lambda: autocast_for(device))
    meta = prepare.read_meta(data_dir)
    rng = np.random.default_rng(secrets.randbits(128))
    cuts = probe_cuts(config["eval_tokens"] // config["seq_len"], config["seq_len"], config["causality_probes"], rng)
    check = causality_check(model, meta["vocab_size"], cuts, rng)
    try:
        with autocast_for(device):
            tally = prepare.evaluate_bpb(model, data_dir, config["seq_len"], config["eval_tokens"], device,
                                         batch_rows=1, check=check)
    except (prepare.DataError, exported.Rejected):
        raise
    except Exception as e:
        # The verdict names no value: an error message computed on validation data could carry some of it.
        traceback.print_exc()
        raise ContractError("the exported model failed on the validation set (its traceback is in the trial log)") \
            from e
    return {
        "val_bpb": tally.bpb,
        "val_tokens": tally.tokens,
        "val_bytes": tally.bytes,
        "eval_tokens": config["eval_tokens"],
        "num_params": sum(t.numel() for t in model.buffers()),  # every tensor the exported model holds
        "dataset_fingerprint": meta["fingerprint"],
        "eval_seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one trial phase")
    parser.add_argument("phase", choices=["train", "eval"])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--in", dest="model_dir", type=Path, default=None, help="eval: the exported model")
    parser.add_argument("--train-py", type=Path, default=Path("train.py"))
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    try:
        if args.phase == "train":
            run_train(config, args.data, args.out, args.train_py)
        else:
            print(RESULT_PREFIX + json.dumps(run_eval(config, args.data, args.model_dir or args.out)), flush=True)
    except LossDiverged as e:
        print(f"ARENA_DIVERGED {e}", flush=True)
        return EXIT_DIVERGED
    except ContractError as e:
        print(f"ARENA_CONTRACT {e}", flush=True)
        return EXIT_CONTRACT
    except exported.Rejected as e:
        print(f"ARENA_REJECTED {e}", flush=True)
        return EXIT_REJECTED
    except prepare.DataError as e:
        print(f"ARENA_DATA {e}", flush=True)
        return EXIT_DATA
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
