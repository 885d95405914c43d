"""The benchmarks that CI can run, at a small size: bench/methods.py end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.run_helpers import ROOT


@pytest.mark.slow  # a surrogate fit and 80 surrogate trials in worker processes
def test_methods_bench_prints_and_writes_its_figures(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "bench/methods.py", "--methods", "random,cmaes", "--seeds", "2",
                           "--trials", "12", "--checkpoints", "5,12", "--feasibility", "off,on", "--workers", "2",
                           "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "surrogate fitted on 2000 trials" in proc.stdout and "Mann-Whitney U" in proc.stdout
    assert "checked against the landscape itself" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    groups = {row["group"]: row for row in summary["groups"]}
    assert list(groups) == ["random", "cmaes", "random+feasibility", "cmaes+feasibility", "optuna-random",
                            "optuna-tpe", "optuna-cmaes"]
    for row in groups.values():
        assert row["seeds"] == 2 and 0 <= row["failure_rate"] <= 1 and row["infeasible_per_trial"] >= 0
        assert row["true_failure_rate"] >= row["failure_rate"]  # what the surrogate calls an OOM is one
        assert row["best_fitting"]["mean"] >= row["best@12"]["mean"]  # a best that fits is no better
        assert row["best@12"]["mean"] <= row["best@5"]["mean"]  # best so far never gets worse
        assert row["ms@10"] is not None and row["ms@11"] is not None
    assert len(summary["tests"]) == 21 and all(0 < t["p_value"] <= 1 for t in summary["tests"])
    assert summary["surrogate"]["trials"] == 2000
    for seed in (0, 1):  # the arena methods' runs are real runs, ledger and all
        ledger = (out / "runs" / f"cmaes-s{seed}" / "ledger.jsonl").read_text().splitlines()
        assert len(ledger) == 12 and json.loads(ledger[0])["isolation"] == "surrogate"
    refused = 0
    for seed in (0, 1):  # with the memory model, 12 trials ran and the refused ones are recorded beside them
        statuses = [json.loads(line)["status"] for line in
                    (out / "runs" / f"random+feasibility-s{seed}" / "ledger.jsonl").read_text().splitlines()]
        assert len(statuses) - statuses.count("infeasible") == 12
        refused += statuses.count("infeasible")
    assert groups["random+feasibility"]["infeasible_per_trial"] == refused / 24
    assert (out / "methods.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow  # two real CPU trials
def test_overhead_bench_splits_a_trial_and_times_an_oom_verdict(tmp_path, cache_root):
    out = tmp_path / "overhead"
    proc = subprocess.run([sys.executable, "bench/overhead.py", "--trials", "1", "--budget", "2", "--eval-tokens",
                           "4096", "--oom", "--mem-limit", "1536m", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "ARENA_CACHE": str(cache_root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "staging + sandbox + torch import" in proc.stdout and "a trial that cannot fit" in proc.stdout
    summary = json.loads((out / "parts.json").read_text())
    assert summary["parts"]["staging + sandbox + torch import"]["baseline"] > 0  # the baseline, split
    assert summary["oom"]["status"] == "oom" and "memory limit" in summary["oom"]["reason"]
    assert summary["oom"]["seconds"] < 120  # the limit ended it, long before the trial's deadline
