"""The command line as a user meets it: one error line for every bad input, help that names the choices,
progress where a build takes a while, and a quick start."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from agent import datasets
from agent.paths import read_text_file
from tests.conftest import ROOT, one_line_error, run_arena


@pytest.mark.parametrize("args, message", [
    (["run", "--trials", "abc"], "argument --trials: invalid int value: 'abc'; see `arena run --help`"),
    (["run", "--budget"], "argument --budget: expected one argument"),
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "the following arguments are required: command; see `arena --help`"),
    (["compare"], "the following arguments are required: RUN"),
    (["run", "--gpus", "0", "--trials", "1"], "--gpus applies to a GPU preset, and preset 'cpu' trains on the CPU"),
    (["train", "--gpus", "0"], "unrecognized arguments: --gpus 0; see `arena train --help`"),
    (["run", "--name", "..", "--trials", "1"], "--name '..' must be a plain directory name"),
    (["run", "--name", "", "--trials", "1"], "--name '' must be a plain directory name"),
    (["run", "--trials", "0"], "--trials must be at least 1, got 0"),
    # numbers argparse's types let through: each would have failed later, hung, or made a run that never resumes
    (["run", "--seed", "-1"], "--seed must be at least 0 and at most 9223372036854775807, got -1"),
    (["train", "--seed", "1" + "0" * 400], "--seed must be at least 0 and at most"),  # no float() overflow
    (["train", "--budget", "nan"], "--budget must be a finite number, got nan"),
    (["run", "--budget", "inf"], "--budget must be a finite number, got inf"),
    (["run", "--llm-timeout", "0"], "--llm-timeout must be more than 0 and at most 1000000, got 0.0"),
    (["run", "--temperature", "-5"], "--temperature must be at least 0, got -5.0"),
    (["run", "--noise-margin", "nan"], "--noise-margin must be a finite number, got nan"),
    (["run", "--hours", "nan"], "--hours must be a positive finite number, got nan"),
    (["run", "--mem-limit", "1e999g"], "memory size '1e999g' is not one"),
    (["prepare", "--shards", "0"], "--shards must be at least 1, got 0"),
    (["prepare", "--vocab-size", "0"], "vocab size 0 is too small"),
    (["compare", "--target", "nan", "r"], "argument --target: 'nan' is not a finite number"),
    # an empty value is no choice, not the current directory
    (["prepare", "--cache", ""], "argument --cache: an empty path"),
    (["prepare", "--corpus", ""], "--corpus is empty"),
    (["run", "--runs-dir", " "], "argument --runs-dir: an empty path"),
    # a name heads report lines and names files
    (["run", "--name", "a\nb"], "--name 'a\\nb' must be a plain directory name"),
    (["run", "--name", "x" * 300], "at most 255 bytes"),  # was a traceback (File name too long)
    (["run", "--name", "x" * 150], "at most 100"),
])
def test_a_bad_command_line_is_one_error_line(cache_root, args, message):
    proc = run_arena(*args, cache=cache_root)
    assert message in one_line_error(proc)
    assert proc.stderr.startswith("error: ") and proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("command, flag, message", [
    ("run", "--runs-dir", "the runs directory {path} is not a directory; pass another --runs-dir"),
    ("run", "--cache", "the dataset cache {path} is not a directory; pass another --cache"),
    ("prepare", "--cache", "the dataset cache {path} is not a directory; pass another --cache"),
])
def test_a_file_where_a_directory_goes_is_one_error_line(tmp_path, command, flag, message):
    """It was a traceback, after the corpus was read; and nothing is made of the run or the dataset."""
    path = tmp_path / "notes.txt"
    path.write_text("a file")
    extra = ["--name", "r", "--trials", "1", "--runs-dir", str(tmp_path / "runs")] if command == "run" else []
    if flag == "--runs-dir":
        extra = extra[:-2]
    proc = run_arena(command, *extra, flag, str(path), cache=tmp_path / "cache")
    assert message.format(path=path) in one_line_error(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("flag", ["--train-py", "--config"])
def test_a_file_that_is_not_small_utf8_text_is_one_error_line(tmp_path, flag):
    """Bytes that are not UTF-8 were a traceback, and a FIFO blocked the read for ever."""
    command = "train" if flag == "--train-py" else "run"
    binary, huge = tmp_path / "binary", tmp_path / "huge"
    binary.write_bytes(b"\x00\xff")
    huge.write_text("#" * (2 << 20))
    for path, message in ((tmp_path, "is not a file"), (binary, "is not UTF-8 text"), (huge, "is over 1 MiB"),
                          (tmp_path / "missing", "No such file or directory")):
        proc = run_arena(command, flag, str(path), cache=tmp_path / "cache")
        assert message in one_line_error(proc), proc.stderr


def test_a_pipe_is_read_and_a_fifo_no_one_writes_to_reads_as_empty(tmp_path):
    read, write = os.pipe()
    os.write(write, b"DEPTH = 4\n")
    os.close(write)
    assert read_text_file(Path(f"/dev/fd/{read}"), "--train-py", 1 << 20) == "DEPTH = 4\n"  # as from <(...)
    os.close(read)
    os.mkfifo(tmp_path / "fifo")
    assert read_text_file(tmp_path / "fifo", "--config", 1 << 20) == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_a_gpu_preset_without_cuda_is_refused_before_the_dataset_is_built(tmp_path):
    """The gpu preset's dataset (vocabulary 8192) took a minute to build, and stayed in the cache, before this."""
    proc = run_arena("run", "--name", "g", "--preset", "gpu", "--runs-dir", str(tmp_path / "runs"),
                     cache=tmp_path / "cache")
    assert "preset 'gpu' needs a CUDA GPU" in one_line_error(proc)
    assert list(tmp_path.iterdir()) == []


def test_help_names_the_methods_and_presets(cache_root):
    run_help = run_arena("run", "--help", cache=cache_root)
    assert run_help.returncode == 0 and "random, tpe, cmaes, centaur, llm, code" in " ".join(run_help.stdout.split())
    train_help = run_arena("train", "--help", cache=cache_root).stdout
    assert "{cpu,gpu}" in train_help


def test_the_command_line_starts_without_the_compare_libraries():
    code = ("import sys; from agent import cli; cli.build_parser(); "
            "print(sorted(m for m in ('scipy', 'matplotlib', 'litellm', 'optuna', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_a_dataset_build_off_a_terminal_prints_a_line_per_stage(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = sorted(Path(os.__file__).parent.glob("*.py"))[:80]  # real text: enough to learn 512 tokens
    for i, path in enumerate(stdlib):
        (corpus / f"doc{i}.txt").write_bytes(path.read_bytes())
    monkeypatch.setattr(datasets, "QUIET_SECONDS", 0.0)  # a real build, just small: every stage is shown
    out = io.StringIO()
    datasets.prepare_dataset(str(corpus), 512, cache_root=tmp_path / "cache", console=Console(file=out))
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["dataset: read corpus", "dataset: train tokenizer",
                                                       "dataset: tokenize train", "dataset: tokenize validation"]
