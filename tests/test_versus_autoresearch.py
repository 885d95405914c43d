"""bench/versus_autoresearch.py: its stand-ins for autoresearch's `kernels` and `prepare`, and the bench end to end.

autoresearch's own train.py needs CUDA (its first lines ask for the GPU's compute capability), so the end-to-end
test runs a small train.py written against the same interface on the CPU: what it checks is the bench's part
(staging the stand-ins, running it beside the template, reading its summary); the stand-ins are checked apart
against the attention they replace and the rows an arena trial trains on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import train_template.prepare as arena_prepare
from tests.conftest import import_file
from tests.run_helpers import ROOT

SHIM = ROOT / "bench" / "autoresearch_shim"


def reference_attention(q, k, v, left: int):
    """Softmax attention in float64 with FlashAttention-3's window (left, 0): query i sees keys i-left..i
    (all keys up to i when left < 0); (batch, time, heads, dim), keys and values shared by groups of heads."""
    T, heads, kv_heads = q.size(1), q.size(2), k.size(2)
    k, v = (t.repeat_interleave(heads // kv_heads, dim=2) for t in (k, v))
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) / math.sqrt(q.size(-1))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & ((i - j <= left) if left >= 0 else torch.ones(T, T, dtype=torch.bool))
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("bhij,bjhd->bihd", weights, v.double())


@pytest.mark.parametrize("left", [-1, 0, 3, 14, 15, 100])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_the_flash_attention_stand_in_attends_as_fa3_does(left, kv_heads):
    kernels = import_file("autoresearch_kernels", SHIM / "kernels.py")
    fa3 = kernels.get_kernel("varunneal/flash-attention-3").flash_attn_interface
    g = torch.Generator().manual_seed(left + 10 * kv_heads)
    q = torch.randn(2, 16, 4, 8, generator=g)
    k, v = (torch.randn(2, 16, kv_heads, 8, generator=g) for _ in range(2))
    out = fa3.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, left), rtol=1e-5, atol=1e-5)


def test_the_flash_attention_stand_in_refuses_what_it_does_not_do():
    kernels = import_file("autoresearch_kernels", SHIM / "kernels.py")
    q = torch.randn(1, 4, 2, 8)
    for kwargs in ({"causal": False}, {"causal": True, "window_size": (2, 2)}, {"causal": True, "softcap": 1.0}):
        with pytest.raises(NotImplementedError):
            kernels.flash_attn_func(q, q, q, **kwargs)


def test_the_prepare_stand_in_serves_an_arena_trials_rows_and_metric(stdlib_dataset, monkeypatch):
    seq_len, eval_tokens = 64, 4096
    for name, value in (("DATA", stdlib_dataset), ("SEQ_LEN", seq_len), ("BUDGET", 5), ("SEED", 7),
                        ("EVAL_TOKENS", eval_tokens), ("DEVICE", "cpu")):
        monkeypatch.setenv(f"ARENA_REFERENCE_{name}", str(value))
    monkeypatch.setitem(sys.modules, "arena_prepare", arena_prepare)
    prepare = import_file("autoresearch_prepare", SHIM / "prepare.py")
    assert seq_len == prepare.MAX_SEQ_LEN and prepare.TIME_BUDGET == 5.0
    tokenizer = prepare.Tokenizer.from_directory()
    meta = arena_prepare.read_meta(stdlib_dataset)
    assert (tokenizer.get_vocab_size(), tokenizer.get_bos_token_id()) == (meta["vocab_size"], meta["bos_id"])

    # the rows an arena trial of seed 7 trains on, in its order, as contiguous (inputs, targets) pairs
    loader = prepare.make_dataloader(tokenizer, 3, seq_len, "train")
    harness = arena_prepare.TrainBatches(stdlib_dataset, seq_len, 7)
    for _ in range(4):
        inputs, targets, epoch = next(loader)
        rows = torch.from_numpy(harness.next_batch(3))
        assert torch.equal(inputs, rows[:, :-1]) and torch.equal(targets, rows[:, 1:])
        assert inputs.is_contiguous() and targets.is_contiguous() and epoch == harness.epoch

    # scored by arena's metric on arena's validation rows: a model with a known distribution gets its bits per byte
    class Unigram(torch.nn.Module):
        def forward(self, idx, targets=None, reduction="mean"):
            return torch.zeros(*idx.shape, meta["vocab_size"])  # uniform: log2(vocab) bits per counted token

    tally = arena_prepare.evaluate_bpb(Unigram(), stdlib_dataset, seq_len, eval_tokens)
    assert prepare.evaluate_bpb(Unigram(), tokenizer, 3) == pytest.approx(
        tally.tokens * math.log2(meta["vocab_size"]) / tally.bytes, rel=1e-9)


# A train.py written against autoresearch's interface (its imports, its summary block), small enough for a CPU.
STAND_IN = '''
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import get_kernel
fa3 = get_kernel("kernels-community/flash-attn3").flash_attn_interface

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb

DEPTH = 1
TOTAL_BATCH_SIZE = 512
DEVICE_BATCH_SIZE = 2


class Model(nn.Module):
    def __init__(self, vocab, width=32, heads=2):
        super().__init__()
        self.heads = heads
        self.wte = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.window_sizes = [(MAX_SEQ_LEN // 2, 0)]

    def forward(self, idx, targets=None, reduction="mean"):
        x = self.wte(idx)
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).unbind(2)
        x = x + self.proj(fa3.flash_attn_func(q, k, v, causal=True, window_size=self.window_sizes[0]).reshape(B, T, C))
        logits = self.lm_head(x).float()
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction=reduction)

    def estimate_flops(self):
        return 6 * sum(p.numel() for n, p in self.named_parameters() if n != "wte.weight") + 12 * 32 * MAX_SEQ_LEN // 2


tokenizer = Tokenizer.from_directory()
model = Model(tokenizer.get_vocab_size())
print(f"Estimated FLOPs per token: {model.estimate_flops():e}")
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
step, total_training_time = 0, 0.0
while True:
    t0 = time.time()
    x, y, epoch = next(train_loader)
    loss = model(x, y)
    loss.backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    if step > 10:
        total_training_time += time.time() - t0
    step += 1
    if step > 10 and total_training_time >= TIME_BUDGET:
        break
model.eval()
val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"peak_vram_mb:     0.0")
print(f"mfu_percent:      0.00")
print(f"total_tokens_M:   {step * TOTAL_BATCH_SIZE / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"depth:            {DEPTH}")
'''


@pytest.mark.slow  # a small CPU training and a real CPU trial of the template, 2 s each
def test_versus_autoresearch_runs_its_train_py_beside_the_template(tmp_path, cache_root):
    checkout = tmp_path / "autoresearch"
    checkout.mkdir()
    (checkout / "train.py").write_text(STAND_IN)
    out = tmp_path / "versus"
    proc = subprocess.run([sys.executable, "bench/versus_autoresearch.py", "--autoresearch", str(checkout),
                           "--preset", "cpu", "--budget", "2", "--eval-tokens", "4096", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "ARENA_CACHE": str(cache_root)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "autoresearch (SDPA)" in proc.stdout and "template / autoresearch tokens/s:" in proc.stdout
    assert "differs from the preset's shape: DEPTH 1 (preset 3)" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    reference, template = summary["autoresearch"], summary["template"]
    assert reference["steps"] >= 12 and 0 < reference["val_bpb"] < 20
    # steady-state tokens/s: TOTAL_BATCH_SIZE per step that autoresearch timed, those after step 10
    assert reference["tokens_per_second"] == pytest.approx(
        512 * (reference["steps"] - 11) / reference["training_seconds"])
    assert template["steps"] >= 1 and template["tokens_per_second"] > 0
    assert summary["speed_up"] == pytest.approx(template["tokens_per_second"] / reference["tokens_per_second"])
    assert (out / "autoresearch.log").exists() and (out / "template.log").exists()


def test_versus_autoresearch_refuses_a_path_that_is_not_autoresearch(tmp_path):
    (tmp_path / "train.py").write_text("print('hello')\n")
    for path in (tmp_path / "missing", tmp_path):
        proc = subprocess.run([sys.executable, "bench/versus_autoresearch.py", "--autoresearch", str(path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "versus_autoresearch.py: error:" in lines[0], proc.stderr
