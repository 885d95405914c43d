"""The template, trained for real through `arena train`, and the command's errors on bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from agent.constants import render_constants
from agent.presets import get_preset
from agent.template import template_dir
from tests.conftest import import_file, one_line_error, run_arena
from train_template import prepare


def untrained_val_bpb(tmp_path, data_dir, preset) -> float:
    """val_bpb of the template's model at initialisation, scored by the same metric."""
    path = tmp_path / "train_untrained.py"
    path.write_text(render_constants((template_dir() / "train.py").read_text(), preset.constants))
    module = import_file("train_untrained", path)
    torch.manual_seed(0)
    model = module.GPT(module.build_config(prepare.read_meta(data_dir)["vocab_size"], preset.seq_len))
    model.init_weights()
    model.eval()
    return prepare.evaluate_bpb(model, data_dir, preset.seq_len, preset.eval_tokens, batch_rows=16).bpb


def result_of(stdout: str) -> dict:
    line = next(ln for ln in reversed(stdout.splitlines()) if ln.startswith("ARENA_RESULT "))
    return json.loads(line.removeprefix("ARENA_RESULT "))


@pytest.mark.slow
def test_template_trains_on_the_default_corpus(tmp_path, cache_root, stdlib_dataset, monkeypatch):
    # one thread: two OpenMP threads on two busy cores stall each other (4 steps instead of 60 beside one busy
    # process), and the steps asked for below are the test's, not the machine's
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    proc = run_arena("train", "--preset", "cpu", "--budget", "20", cache=cache_root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = result_of(proc.stdout)
    preset = get_preset("cpu")
    untrained = untrained_val_bpb(tmp_path, stdlib_dataset, preset)
    vocab = prepare.read_meta(stdlib_dataset)["vocab_size"]
    # at initialisation the head is nearly uniform: about log2(V) bits per token
    assert untrained == pytest.approx(math.log2(vocab) * result["val_tokens"] / result["val_bytes"], rel=0.02)
    # better than the same model untrained; by how much depends on how many steps the machine managed in
    # the budget (0.4-1.4 bits seen), so no fixed drop is asked for
    assert result["val_bpb"] < untrained, (result["val_bpb"], untrained)
    assert result["dataset_fingerprint"] == prepare.read_meta(stdlib_dataset)["fingerprint"]
    reported = result["reported"]  # the trial's own account: its clock ran out at the budget
    assert reported["training_seconds"] >= 20 and reported["steps"] > 5
    assert result["work_seconds"] >= reported["training_seconds"] and result["outside_seconds"] >= 0
    assert result["val_tokens"] < result["eval_tokens"] == preset.eval_tokens  # BOS targets not scored
    # autoresearch's human summary and the progress lines are there
    for key in ("val_bpb:", "training_seconds:", "outside_budget_s:", "allowance_s:", "peak_mem_mb:",
                "mfu_percent:", "total_tokens_M:", "num_steps:", "num_params_M:", "depth:"):
        assert any(line.startswith(key) for line in proc.stdout.splitlines()), key
    steps = [ln for ln in proc.stdout.splitlines() if ln.startswith("step=")]
    losses = [float(ln.split()[1].removeprefix("loss=")) for ln in steps]
    assert len(steps) == reported["steps"] and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert proc.stderr.strip().splitlines()[-1].startswith("ok: val_bpb")


def test_gpu_preset_without_cuda_is_refused(cache_root):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "needs a CUDA GPU" in one_line_error(run_arena("train", "--preset", "gpu", cache=cache_root))


def test_unknown_preset_is_refused(cache_root):
    line = one_line_error(run_arena("train", "--preset", "tpu", cache=cache_root))
    assert "invalid choice: 'tpu' (choose from 'cpu', 'gpu')" in line and "arena train --help" in line


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("# ==== ARENA CONSTANTS END ====\n", ""), "exactly one constants block"),
    (lambda s: s.replace("DEPTH = 8 ", "DEPTH = eight "), "constants block is malformed"),
    (lambda s: s.replace("def train(ctx", "def train ctx", 1), "does not compile (line "),  # ran as a crash before
])
def test_broken_constants_block_is_refused(tmp_path, cache_root, edit, message):
    bad = tmp_path / "train.py"
    bad.write_text(edit((template_dir() / "train.py").read_text()))
    assert message in one_line_error(run_arena("train", "--train-py", str(bad), cache=cache_root))


def test_a_given_train_py_runs_as_written_and_the_template_with_the_presets_constants(tmp_path):
    from agent.cli import train_source
    from agent.constants import read_constants

    cpu = get_preset("cpu")
    assert read_constants(train_source(None, cpu)) == dict(cpu.constants)
    mine = tmp_path / "best_train.py"
    mine.write_text(render_constants((template_dir() / "train.py").read_text(), {**cpu.constants, "DEPTH": 5}))
    assert train_source(mine, cpu) == mine.read_text()  # not the preset's DEPTH


def test_missing_train_py_is_refused(tmp_path, cache_root):
    line = one_line_error(run_arena("train", "--train-py", str(tmp_path / "nope.py"), cache=cache_root))
    assert "cannot read" in line and "--train-py" in line


@pytest.mark.parametrize("args, message", [
    (["--corpus", "/definitely/not/here"], "does not exist"),
    (["--vocab-size", "64"], "too small; use at least 512"),
    (["--shards", "0"], "--shards must be at least 1"),
])
def test_prepare_errors_are_one_line(cache_root, args, message):
    assert message in one_line_error(run_arena("prepare", *args, cache=cache_root))


def test_the_presets_probe_every_position_unless_fewer_rows_are_evaluated():
    assert get_preset("cpu").probed_positions() == 255 and get_preset("gpu").probed_positions() == 2047
    assert get_preset("cpu", eval_tokens=4096).probed_positions() == 16


def test_prepare_prints_the_dataset(cache_root, stdlib_dataset):
    proc = run_arena("prepare", cache=cache_root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(stdlib_dataset)
    assert prepare.read_meta(stdlib_dataset)["fingerprint"] in proc.stderr
    assert "validation from: test suites only" in proc.stderr  # the default corpus's split rule, said


def test_the_clock_starts_at_train_and_warm_up_counts_optimizer_steps(stdlib_dataset, monkeypatch):
    monkeypatch.syspath_prepend(str(template_dir()))
    import harness

    config = {**get_preset("cpu").harness_config(42), "warmup_steps": 2, "time_budget": 1000.0}
    ctx = harness.TrainContext(config, stdlib_dataset)
    batches = ctx.batches(4)
    assert ctx.training_seconds() == 0.0  # train() not called yet
    ctx.start()
    for step in range(2):
        for _ in range(3):  # micro-batches: the warm-up counts steps, not batches
            next(batches)
        assert ctx.training_seconds() == 0.0 and ctx.progress() == 0.0
        ctx.log_step(step, 5.0)
    next(batches)
    assert ctx.training_seconds() > 0.0 and ctx.timed_tokens == 4 * 256 and ctx.tokens == 7 * 4 * 256
