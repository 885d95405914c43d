"""The benchmarks that CI can run, at a small size: bench/methods.py and the others end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import import_file
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


def test_the_far_landscape_has_its_optimum_away_from_the_baseline_and_past_the_memory_wall():
    import numpy as np

    from agent.presets import get_preset
    from agent.space import load_space
    from bench.landscape import MEMORY_GB, OPTIMA, peak_memory_gb

    space = load_space("gpu")
    baseline = space.to_unit(get_preset("gpu").constants)
    near, far = (np.array([OPTIMA[name][p.name] for p in space.numeric]) for name in ("near", "far"))
    assert np.abs(near - baseline).max() <= 0.3 and np.abs(far - baseline).min() >= 0.35
    assert peak_memory_gb(space.from_unit(near)) <= MEMORY_GB < peak_memory_gb(space.from_unit(far))


def test_feasibility_bench_replays_recorded_runs_through_the_memory_model(tmp_path):
    from bench.landscape import write_landscape

    runs = [write_landscape(_seed_dir(tmp_path, "landscape", seed) / "trials.jsonl", 150, seed=seed) for seed in (0, 1)]
    lines = [json.loads(line) for path in runs for line in path.read_text().splitlines()]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/feasibility.py", *map(str, runs), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "calibrated memory model, limit 80 GB" in proc.stdout and "analytic memory model" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    ooms = sum(line["error"] == "GPU out-of-memory" for line in lines)
    for tally in (summary["calibrated"]["landscape"], summary["analytic"]["landscape"]):
        assert tally["runs"] == 2 and tally["trials"] == 300 and tally["oom"] == ooms
        assert tally["failed"] == sum(not line["success"] for line in lines)
    calibrated, analytic = summary["calibrated"]["landscape"], summary["analytic"]["landscape"]
    # the landscape's memory has about the model's form: it refuses nearly every OOM and few good trials, and
    # calibration on the trials before each one does better than the analytic prior alone
    assert calibrated["refused_oom"] >= 0.9 * ooms and calibrated["refused_ok"] <= 0.05 * (300 - calibrated["failed"])
    assert calibrated["refused_oom"] >= analytic["refused_oom"] and calibrated["refused_ok"] <= analytic["refused_ok"]
    assert calibrated["seconds_saved"] > 0
    assert (out / "feasibility.png").read_bytes().startswith(b"\x89PNG")


def test_feasibility_bench_groups_runs_by_method(tmp_path):
    from bench.feasibility import group_of

    run = tmp_path / "my-run"
    run.mkdir()
    (run / "ledger.jsonl").write_text(json.dumps({"trial": 0, "kind": "baseline", "method": "baseline"}) + "\n"
                                      + json.dumps({"trial": 1, "kind": "proposal", "method": "cmaes"}) + "\n")
    assert group_of(run) == "cmaes"  # an arena run: the method of its proposals
    paper = _seed_dir(tmp_path, "smac", 2) / "trials.jsonl"
    paper.write_text(json.dumps({"trial_id": 0, "backend": "smac3"}) + "\n")
    assert group_of(paper) == "smac"  # the paper's layout: the folder above seed_<k>


def _seed_dir(root, method, seed):
    path = root / "results" / method / f"seed_{seed}"  # the paper's layout: the method is the folder's name
    path.mkdir(parents=True)
    return path


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
    assert summary["oom"]["before_compiling"] is False  # the cpu template does not compile: the limit ended it
    assert summary["oom"]["seconds"] < 120  # the limit ended it, long before the trial's deadline


@pytest.mark.slow  # four real CPU trainings of 2 s
def test_parity_bench_runs_the_template_and_a_variant_seed_by_seed(tmp_path, cache_root):
    out = tmp_path / "parity"
    proc = subprocess.run([sys.executable, "bench/parity.py", "--budget", "2", "--seeds", "2", "--variants",
                           "none-of-the-three", "--eval-tokens", "4096", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "ARENA_CACHE": str(cache_root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "paired by seed" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    # the order rotates from seed to seed, so a slow spell of the machine does not fall on one variant
    assert [(r["variant"], r["seed"]) for r in summary["runs"]] == [
        ("template", 0), ("none-of-the-three", 0), ("none-of-the-three", 1), ("template", 1)]
    template, variant = summary["variants"]
    assert template["diff_vs_template"] == 0 and variant["seeds"] == 2 and variant["diff_stderr"] is not None
    assert "at equal steps" in proc.stdout
    assert all(run["val_bpb"] > 0 and run["steps"] >= 1 for run in summary["runs"])
    # the bench's idea of the template is the template itself; the variant switches all three changes off
    assert (out / "template.py").read_text() == (ROOT / "train_template" / "train.py").read_text()
    changed = (out / "none-of-the-three.py").read_text()
    for line in ('NEWTON_SCHULZ = "fixed"', "NORMUON_BETA2 = 0.0", "CAUTIOUS_WEIGHT_DECAY = False"):
        assert f"\n{line}" in changed


def test_parity_takes_out_what_the_step_counts_explain():
    """Runs whose val_bpb falls with ln(steps) at one slope (a machine's load moving the steps) and a variant
    0.02 worse at equal steps: the adjusted difference is 0.02 exactly, the measured one is not."""
    parity = import_file("parity_bench", ROOT / "bench" / "parity.py")
    runs = []
    for seed, (steps_t, steps_v) in enumerate([(70, 60), (80, 85), (65, 75)]):
        base = 2.1 + 0.03 * seed
        runs.append({"variant": "template", "seed": seed, "steps": steps_t, "tokens_per_second": 1.0,
                     "val_bpb": base - 0.4 * math.log(steps_t)})
        runs.append({"variant": "no-normuon", "seed": seed, "steps": steps_v, "tokens_per_second": 1.0,
                     "val_bpb": base + 0.02 - 0.4 * math.log(steps_v)})
    assert parity.load_slope(runs) == pytest.approx(-0.4)
    template, variant = parity.summarize(runs, ["template", "no-normuon"])
    assert variant["steps_adjusted_diff"] == pytest.approx(0.02) and variant["steps_adjusted_stderr"] < 1e-9
    assert abs(variant["diff_vs_template"] - 0.02) > 0.005 and template["steps_adjusted_diff"] == 0


@pytest.mark.slow  # reads the standard library twice
def test_val_exposure_counts_a_readable_copy_and_not_a_hidden_one(tmp_path):
    """An edited copy of a validation document in a package is counted and named; the same copy inside a standard
    library's test suite (hidden from every sandbox) is not."""
    from agent.corpus import split, stdlib_documents

    _, val = split(stdlib_documents(), 0.1)
    text = max(val, key=lambda doc: len(doc.text)).text
    package = tmp_path / "site-packages" / "backport" / "tests"
    package.mkdir(parents=True)
    (package / "test_copy.py").write_text("# edited by the backport\n" + text)
    stdlib = tmp_path / "lib" / "python3.99"
    (stdlib / "test").mkdir(parents=True)
    (stdlib / "os.py").write_text("")
    (stdlib / "abc.py").write_text("")
    (stdlib / "test" / "test_hidden.py").write_text(text)
    out = subprocess.run([sys.executable, "bench/val_exposure.py", "--roots", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=True).stdout
    copied = next(line for line in out.splitlines() if line.strip().startswith("in such a file"))
    assert int(copied.split(":")[1].split("(")[0].replace(",", "")) > 0, out
    assert str(package / "test_copy.py") in out and "test_hidden.py" not in out


def test_the_profile_names_each_kind_of_attention_kernel():
    profile = import_file("profile_step_bench", ROOT / "bench" / "profile_step.py")
    kinds = {"cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128": "attention (cudnn)",
             "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>": "attention (flash)",
             "fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel)":
                 "attention (mem-efficient)",
             "triton_tem_fused_0": "attention (flex)",
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matmul",
             "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0": "triton fused"}
    assert {name: profile.kind_of(name) for name in kinds} == kinds
