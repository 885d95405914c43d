"""Stands in for karpathy/autoresearch's prepare.py when bench/versus_autoresearch.py runs its train.py.

It gives train.py the five names it imports (MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader,
evaluate_bpb), served from arena's dataset instead of climbmix shards: the same training rows as an arena
trial of the same seed (random windows of train.bin, drawn by the harness's own TrainBatches) and the same
validation rows, scored by arena's own metric. The settings come from the environment the bench sets.
"""

from __future__ import annotations

import os
import sys

import arena_prepare  # train_template/prepare.py, copied in under this name by the bench
import torch

DATA_DIR = os.environ["ARENA_REFERENCE_DATA"]
MAX_SEQ_LEN = int(os.environ["ARENA_REFERENCE_SEQ_LEN"])
TIME_BUDGET = float(os.environ["ARENA_REFERENCE_BUDGET"])
EVAL_TOKENS = int(os.environ["ARENA_REFERENCE_EVAL_TOKENS"])
SEED = int(os.environ.get("ARENA_REFERENCE_SEED", "42"))
DEVICE = os.environ.get("ARENA_REFERENCE_DEVICE", "cuda")
EVAL_BATCH_ROWS = 8  # arena's eval batch: autoresearch reads its peak memory after evaluating, so a wider
                     # batch here could put the reference's peak above what its training step needs


class Tokenizer:
    """What train.py asks of its tokenizer: the vocabulary size and the BOS id; arena's data is tokenized already."""

    def __init__(self, meta: dict):
        self.meta = meta

    @classmethod
    def from_directory(cls, tokenizer_dir: str | None = None) -> Tokenizer:
        return cls(arena_prepare.read_meta(DATA_DIR))

    def get_vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def get_bos_token_id(self) -> int:
        return int(self.meta["bos_id"])


def build_masks_before_compiling(T: int) -> None:
    """Make FlexAttention's block masks for the model's sliding windows while nothing is being compiled.

    train.py calls make_dataloader after building and compiling its model but before its first step; its
    model (module attribute `model`) lists each layer's FA3 window as `window_sizes`. On the CPU the stand-in
    masks SDPA instead: nothing to build."""
    if not DEVICE.startswith("cuda"):
        return
    import kernels

    model = getattr(sys.modules["__main__"], "model", None)
    model = getattr(model, "_orig_mod", model)
    for left, _ in getattr(model, "window_sizes", ()):
        if 0 <= left < T - 1:
            kernels.sliding_window_mask(T, left, torch.device(DEVICE))


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, buffer_size: int = 1000):
    """Endless (inputs, targets, epoch) batches on the device, as autoresearch's loader yields them."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    build_masks_before_compiling(T)
    if split == "train":
        batches = arena_prepare.TrainBatches(DATA_DIR, T, SEED)
    else:
        rows = torch.from_numpy(arena_prepare.validation_rows(DATA_DIR, T, EVAL_TOKENS))
    pinned = DEVICE.startswith("cuda")
    start = 0
    while True:
        if split == "train":
            batch = torch.from_numpy(batches.next_batch(B))
            epoch = batches.epoch
        else:
            batch = rows[torch.arange(start, start + B) % len(rows)]
            start += B
            epoch = 1 + start // len(rows)
        pair = torch.stack([batch[:, :-1], batch[:, 1:]])  # contiguous: train.py may .view() its targets
        if pinned:
            pair = pair.pin_memory()
        inputs, targets = pair.to(DEVICE, non_blocking=pinned)
        yield inputs, targets, epoch


@torch.no_grad()
def evaluate_bpb(model, tokenizer: Tokenizer, batch_size: int) -> float:
    """val_bpb of `model` (ids -> logits when called without targets) by arena's metric on arena's validation rows."""
    tally = arena_prepare.evaluate_bpb(model, DATA_DIR, MAX_SEQ_LEN, EVAL_TOKENS, device=DEVICE,
                                       batch_rows=EVAL_BATCH_ROWS)
    return tally.bpb
