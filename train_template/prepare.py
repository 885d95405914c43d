"""The read-only data harness of a trial: the dataset reader, training batches and the metric.

Trials never edit this file; the sandbox takes it from the template and checks its hash.
It needs only numpy at import time and torch where the metric runs, so a trial container needs
nothing but torch and numpy. Datasets are built before any trial by arena (`arena prepare`,
agent/dataset_build.py); a trial reads these files of one:
    token_bytes.npy    exact UTF-8 byte length of every token id (0 for special tokens)
    train.bin          uint16 token stream of the training documents, each preceded by BOS
    val.bin            uint16 token stream of the validation documents, same layout
    meta.json          sizes, the corpus description and the dataset fingerprint
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

Progress = Callable[[str, float, float], None]  # (task, done, total)


class DataError(Exception):
    """A problem with the corpus or dataset that the user must fix; the message says how."""


def _no_progress(task: str, done: float, total: float) -> None:
    pass


# ---------------------------------------------------------------------------- reading a dataset

def read_meta(data_dir: Path | str) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"{data_dir} is not a prepared dataset (no meta.json); run `arena prepare` first")
    return json.loads(path.read_text())


def read_tokens(data_dir: Path | str, split: str) -> np.ndarray:
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise DataError(f"{path} is missing; run `arena prepare` again")
    return np.memmap(path, dtype=np.uint16, mode="r")


# ---------------------------------------------------------------------------- training batches

class TrainBatches:
    """Endless (inputs, targets) batches of `seq_len` tokens from train.bin.

    The stream is cut into non-overlapping windows; each epoch visits every window once in an
    order drawn from `seed`, so a run with the same seed sees the same data in the same order.
    """

    def __init__(self, data_dir: Path | str, seq_len: int, seed: int):
        self.tokens = read_tokens(data_dir, "train")
        self.seq_len = seq_len
        self.n_windows = (len(self.tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise DataError(f"training split has {len(self.tokens)} tokens, fewer than one sequence of {seq_len}")
        self.seed = seed
        self.epoch = 0
        self._order = np.empty(0, dtype=np.int64)
        self._pos = 0

    def next_starts(self, batch_size: int) -> np.ndarray:
        starts = []
        while len(starts) < batch_size:
            if self._pos >= len(self._order):
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = rng.permutation(self.n_windows) * self.seq_len
                self.epoch += 1
                self._pos = 0
            take = min(batch_size - len(starts), len(self._order) - self._pos)
            starts.extend(self._order[self._pos:self._pos + take])
            self._pos += take
        return np.asarray(starts)

    def next_batch(self, batch_size: int) -> np.ndarray:
        """A (batch_size, seq_len + 1) int64 array; inputs are [:, :-1], targets [:, 1:]."""
        starts = self.next_starts(batch_size)
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        return self.tokens[idx].astype(np.int64)


# ---------------------------------------------------------------------------- the metric

def validation_rows(data_dir: Path | str, seq_len: int, eval_tokens: int) -> np.ndarray:
    """The fixed validation set: the first `eval_tokens` targets of val.bin, as rows of seq_len + 1."""
    if eval_tokens % seq_len:
        raise DataError(f"eval tokens {eval_tokens} must be a multiple of the sequence length {seq_len}")
    tokens = read_tokens(data_dir, "val")
    if len(tokens) < eval_tokens + 1:
        raise DataError(f"validation split has {len(tokens):,} tokens but {eval_tokens:,} are evaluated; "
                        "prepare a larger corpus or lower --eval-tokens")
    rows = eval_tokens // seq_len
    idx = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return tokens[idx].astype(np.int64)


@dataclass
class BpbTally:
    """Running sums for bits per byte: nats of every counted target and the bytes those targets stand for."""
    nats: float = 0.0
    bytes: int = 0
    tokens: int = 0

    @property
    def bpb(self) -> float:
        return self.nats / (math.log(2) * self.bytes)


def score_logits(logits, targets, token_bytes, tally: BpbTally) -> None:
    """Add one batch: cross-entropy computed here in float64 (never by the model); special-token targets skipped."""
    import torch

    nbytes = token_bytes[targets]
    counted = nbytes > 0
    logp = torch.log_softmax(logits.double(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    tally.nats += float(nll[counted].sum())
    tally.bytes += int(nbytes.sum())
    tally.tokens += int(counted.sum())


def evaluate_bpb(forward, data_dir: Path | str, seq_len: int, eval_tokens: int, device: str = "cpu",
                 batch_rows: int = 8, progress: Progress = _no_progress, check=None) -> BpbTally:
    """val_bpb of `forward` (token ids (B, T) -> logits (B, T, V)) on the fixed validation set.

    `check(inputs, logits)`, when given, sees every batch before it is scored and raises to refuse it.
    """
    import torch

    rows = validation_rows(data_dir, seq_len, eval_tokens)
    token_bytes = torch.from_numpy(np.load(Path(data_dir) / "token_bytes.npy").astype(np.int64)).to(device)
    tally = BpbTally()
    with torch.no_grad():
        for start in range(0, len(rows), batch_rows):
            batch = torch.from_numpy(rows[start:start + batch_rows]).to(device)
            inputs = batch[:, :-1].clone()  # memory of their own: batch's also holds the last targets
            logits = forward(inputs)
            if tuple(logits.shape[:2]) != tuple(batch[:, 1:].shape) or logits.shape[-1] != len(token_bytes):
                raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected "
                                 f"({len(batch)}, {seq_len}, {len(token_bytes)})")
            if check is not None:
                check(inputs, logits)
            score_logits(logits, batch[:, 1:], token_bytes, tally)
            progress("evaluate", min(start + batch_rows, len(rows)), len(rows))
    return tally


if __name__ == "__main__":
    print("prepare.py is a library; run `arena prepare` to build a dataset.", file=sys.stderr)
    sys.exit(2)
