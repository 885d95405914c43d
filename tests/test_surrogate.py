"""The surrogate backend: reading trials (arena ledgers, the paper's trials.jsonl), fitting, the error it reports
against trials it never saw, and `arena run --backend surrogate` end to end.

The trials come from bench/landscape.py, a made-up landscape over the paper's 14 constants with a memory wall
(the paper's own trials are not available offline); `LandscapeBackend` answers a trial from the same landscape,
so that the loop writes real ledgers of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from agent.constants import read_constants
from agent.errors import ArenaError
from agent.presets import get_preset
from agent.space import load_space
from agent.surrogate.backend import memory_terms
from agent.surrogate.data import PAPER_CONSTANTS, paper_config, read_observations
from agent.surrogate.model import Surrogate
from bench.landscape import peak_memory_gb, trial, write_landscape
from sandbox.outcome import Outcome, Status
from tests.conftest import one_line_error
from tests.fake_runs import fake_run
from tests.run_helpers import arena_run, check_run_consistent

GPU = load_space("gpu")
GPU_TERMS = memory_terms(get_preset("gpu"))
PAPER_NAMES = ["DEPTH", "ASPECT_RATIO", "HEAD_DIM", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE", "EMBEDDING_LR",
               "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY", "WARMUP_RATIO", "WARMDOWN_RATIO",
               "FINAL_LR_FRAC", "WINDOW_PATTERN"]  # research/paper.md §1, the paper's search space


class LandscapeBackend:
    """Trials answered by the landscape itself, its noise drawn from a hash of the configuration."""
    isolation = "none"

    def placed(self, placement):
        return self

    def run(self, spec, on_log) -> Outcome:
        config = read_constants(spec.source)
        seed = int(hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8], 16)
        line = trial(0, config, GPU, np.random.default_rng(seed))
        if not line["success"]:
            status = Status.OOM if "out-of-memory" in line["error"] else Status.CRASH
            return Outcome(status, line["error"], train_wall_seconds=line["wall_time_seconds"])  # time to fail
        result = {"val_bpb": line["val_bpb"], "work_seconds": line["wall_time_seconds"], "outside_seconds": 0.0,
                  "ready_seconds": 0.0, "allowance_seconds": 0.0, "peak_memory_gb": line["peak_memory_gb"],
                  "host_memory_gb": 0.0, "gpu_memory_gb": line["peak_memory_gb"], "num_params": 0, "reported": {}}
        return Outcome(Status.OK, "ok", result)


@pytest.fixture(scope="module")
def landscape(tmp_path_factory) -> Path:
    return write_landscape(tmp_path_factory.mktemp("landscape") / "trials.jsonl", 800, seed=0)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory) -> list:
    """Trials drawn from the same landscape with another seed: none of them was fitted on."""
    path = write_landscape(tmp_path_factory.mktemp("unseen") / "trials.jsonl", 400, seed=1)
    return read_observations([path], GPU)


# ---------------------------------------------------------------------------- reading trials

def test_the_papers_constants_are_the_gpu_space_one_by_one():
    assert sorted(PAPER_CONSTANTS) == sorted(PAPER_NAMES)
    assert sorted(PAPER_CONSTANTS.values()) == sorted(GPU)
    for name in ("HEAD_DIM", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE"):  # the paper's runner snapped these
        assert GPU[PAPER_CONSTANTS[name]].kind == "pow2"
    assert GPU["WINDOW_PATTERN"].choices == ("SSSL", "SSLL", "SLSL", "LLLL", "SSSS", "LSSL")


def test_a_paper_config_is_read_as_its_runner_ran_it():
    config = {**dict(zip(PAPER_NAMES, [8, 64, 100, 48, 65536, 0.6, 0.004, 0.04, 0.5, 0.2, 0.0, 0.5, 0.0, "SSSL"],
                         strict=True))}
    ran = paper_config(config, Path("t.jsonl"), 1)
    assert ran["HEAD_DIM"] == 128 and ran["DEVICE_BATCH_SIZE"] == 64  # the nearest power of two (in log2)
    assert ran["TOTAL_BATCH_SIZE"] == 64 * 2048  # at least one device batch of 2048-token rows
    GPU.check(ran)
    with pytest.raises(ArenaError, match="constants the paper did not search: DROPOUT"):
        paper_config({**config, "DROPOUT": 0.1}, Path("t.jsonl"), 3)


def test_paper_trials_and_arena_ledgers_read_alike(landscape, tmp_path, cache_root):
    paper = read_observations([landscape], GPU)
    assert len(paper) == 800 and {o.status for o in paper} == {Status.OK, Status.OOM, Status.CRASH}
    assert all((o.val_bpb is not None) == (o.status is Status.OK) for o in paper)
    run = fake_run(tmp_path, cache_root, "lands", 12, runner=LandscapeBackend(), preset="gpu",
                   backend="surrogate", surrogate_data=[str(landscape)])
    ledger = read_observations([run], GPU)  # a run directory stands for its ledger
    assert len(ledger) == 12 and ledger[0].config == dict(get_preset("gpu").constants)  # the baseline
    recorded = [Status(json.loads(line)["status"]) for line in (run / "ledger.jsonl").read_text().splitlines()]
    assert [o.status for o in ledger] == [s for s in recorded if s is not Status.INFEASIBLE]  # those ran nothing
    ran = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    ran = [r for r in ran if r["status"] != "infeasible"]
    for observation, record in zip(ledger, ran, strict=True):  # a failure's cost is the time until it failed
        expected = record["training_seconds"] if record["status"] == "ok" else record["train_wall_seconds"]
        assert observation.training_seconds == pytest.approx(expected) and expected


@pytest.mark.parametrize("content, message", [
    ('{"name": "x"}\n', "neither an arena ledger"),
    ('{"trial_id": 0, "success": true, "val_bpb": 1.0}\n', "has no config object"),
    ("", "holds no trial"),
])
def test_unknown_or_empty_trial_files_are_one_line_errors(content, message, tmp_path):
    path = tmp_path / "trials.jsonl"
    path.write_text(content)
    with pytest.raises(ArenaError, match=message):
        read_observations([path], GPU)
    with pytest.raises(ArenaError, match="no trials at"):
        read_observations([tmp_path / "missing.jsonl"], GPU)


def test_trials_of_another_space_are_refused(landscape, tmp_path):
    with pytest.raises(ArenaError, match="outside the search space: DEPTH = 8 .*--preset"):  # the cpu space's range
        read_observations([landscape], load_space("cpu"))
    renamed = [{**line, "config": {("LAYERS" if k == "DEPTH" else k): v for k, v in line["config"].items()}}
               for line in map(json.loads, landscape.read_text().splitlines())]
    ledger = tmp_path / "ledger.jsonl"  # arena's format: names are not mapped, only checked
    ledger.write_text("".join(json.dumps({"trial": i, "kind": "proposal", "method": "random", "description": "",
                                          "status": "ok", "val_bpb": 1.0, "config": line["config"]}) + "\n"
                              for i, line in enumerate(renamed[:3])))
    with pytest.raises(ArenaError, match="do not match the search space .*missing DEPTH; unknown LAYERS"):
        read_observations([ledger], GPU)
    line = json.loads(landscape.read_text().splitlines()[0])
    line["config"]["DEPTH"] = 40
    (tmp_path / "far.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(ArenaError, match="outside the search space: DEPTH = 40"):
        read_observations([tmp_path / "far.jsonl"], GPU)


def test_a_few_trials_outside_the_space_are_left_out_and_said(landscape, tmp_path):
    """An LLM method of the paper wrote WINDOW_PATTERN = 'SSLSL' five times in 338 trials: its file still fits."""
    lines = landscape.read_text().splitlines()[:40]
    stray = json.loads(lines[0])
    stray["config"]["WINDOW_PATTERN"] = "SSLSL"
    path = tmp_path / "trials.jsonl"
    path.write_text("\n".join(lines + [json.dumps(stray)]) + "\n")
    notes: list[str] = []
    kept = read_observations([path], GPU, notes)
    assert len(kept) == 40 and all(o.config["WINDOW_PATTERN"] != "SSLSL" for o in kept)
    assert notes == [f"left out 1 of the 41 trials in {path}: outside the search space (e.g. WINDOW_PATTERN = "
                     "'SSLSL' is not one of ['SSSL', 'SSLL', 'SLSL', 'LLLL', 'SSSS', 'LSSL'])"]


def test_too_few_trials_to_fit_are_refused(landscape):
    with pytest.raises(ArenaError, match="at least 20 scored trials"):
        Surrogate(GPU, read_observations([landscape], GPU)[:30], GPU_TERMS)


# ---------------------------------------------------------------------------- the fit

def test_the_surrogate_reproduces_unseen_trials_within_its_reported_error(landscape, unseen):
    surrogate = Surrogate(GPU, read_observations([landscape], GPU), GPU_TERMS)
    quality = surrogate.quality
    assert quality.trials == 800 and abs(quality.held_out - 160) <= 1  # a fifth of the scored and of the failed
    assert 0 < quality.mae < 0.01 and quality.r2 > 0.5 and quality.failure_accuracy > 0.85
    assert quality.rank_correlation is not None
    # peak memory fitted on what it is made of: a forest alone misses the steps of the width by 6.8 GB here
    assert quality.memory_mae_gb is not None and quality.memory_mae_gb < 0.5
    predictions = surrogate.predict_many([o.config for o in unseen])
    scored = [(o.val_bpb, p.val_bpb) for o, p in zip(unseen, predictions, strict=True)
              if o.val_bpb is not None and p.val_bpb is not None]
    mae = float(np.mean([abs(a - b) for a, b in scored]))
    accuracy = np.mean([(o.status is Status.OK) == (p.status is Status.OK) for o, p in zip(unseen, predictions,
                                                                                           strict=True)])
    assert mae < 1.5 * quality.mae  # the held-out estimate holds for trials never seen
    memory = [(peak_memory_gb(o.config), p.peak_memory_gb) for o, p in zip(unseen, predictions, strict=True)
              if o.status is Status.OK and p.peak_memory_gb is not None]
    assert float(np.mean([abs(a - b) for a, b in memory])) < 2 * quality.memory_mae_gb + 0.05
    assert abs(accuracy - quality.failure_accuracy) < 0.08
    assert surrogate.predict(unseen[0].config) == surrogate.predict(unseen[0].config)  # the same answer each time


def test_only_trials_that_ran_to_the_end_teach_the_surrogate_peak_memory(landscape, unseen):
    """A failed trial's memory is where it stopped (an OOM's is about the device's size), not the peak its
    configuration needs: fitted on, it would bend the line through every configuration."""
    stopped = [dataclasses.replace(o, peak_memory_gb=80.0) if o.status is not Status.OK else o
               for o in read_observations([landscape], GPU)]
    surrogate = Surrogate(GPU, stopped, GPU_TERMS)
    assert surrogate.quality.memory_mae_gb is not None and surrogate.quality.memory_mae_gb < 0.5
    predictions = surrogate.predict_many([o.config for o in unseen if o.status is Status.OK])
    assert max(abs(peak_memory_gb(o.config) - (p.peak_memory_gb or 0.0))
               for o, p in zip([o for o in unseen if o.status is Status.OK], predictions, strict=True)) < 2.0


@pytest.mark.slow  # 150 trials through the loop
def test_a_surrogate_fitted_on_a_ledger_reproduces_it(landscape, unseen, tmp_path, cache_root):
    """The loop's own ledger, of a random search answered by the landscape, as the trials to fit."""
    run = fake_run(tmp_path, cache_root, "lands", 150, runner=LandscapeBackend(), preset="gpu",
                   backend="surrogate", surrogate_data=[str(landscape)])
    surrogate = Surrogate(GPU, read_observations([run], GPU), GPU_TERMS)
    quality = surrogate.quality
    assert quality.trials == 150 and abs(quality.held_out - 30) <= 1
    predictions = surrogate.predict_many([o.config for o in unseen])
    scored = [(o.val_bpb, p.val_bpb) for o, p in zip(unseen, predictions, strict=True)
              if o.val_bpb is not None and p.val_bpb is not None]
    assert float(np.mean([abs(a - b) for a, b in scored])) < 2 * quality.mae + 0.002


# ---------------------------------------------------------------------------- arena run --backend surrogate

SURROGATE = ["--preset", "gpu", "--backend", "surrogate"]


@pytest.mark.slow  # arena child processes, seconds each
def test_a_run_on_the_surrogate_is_a_run_like_any_other(landscape, tmp_path, cache_root):
    runs, data = tmp_path / "runs", tmp_path / "trials.jsonl"
    data.write_bytes(landscape.read_bytes())
    args = [*SURROGATE, "--surrogate-data", str(data), "--method", "tpe", "--name", "s"]
    proc = arena_run(runs, cache_root, *args, "--trials", "15")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "surrogate fitted on 800 trials" in proc.stderr and "held out: val_bpb MAE" in proc.stderr
    records = check_run_consistent(runs / "s", 15)
    assert {r["isolation"] for r in records} == {"surrogate"}
    assert all(r["val_bpb"] is not None for r in records if r["status"] == "ok")
    assert json.loads((runs / "s" / "run.json").read_text())["dataset_fingerprint"].startswith("surrogate-")
    for r in records:  # a trial counts the time the surrogate predicts, not the milliseconds it took here
        if r["status"] == "infeasible":  # refused by the memory model (on for a GPU preset): nothing ran
            assert r["train_wall_seconds"] == 0 and r["total_seconds"] < 5
            continue
        assert r["train_wall_seconds"] > 1 and 0 <= r["total_seconds"] - r["train_wall_seconds"] < 5
    hours = (sum(r["total_seconds"] for r in records) + 1) / 3600  # one second more than recorded
    again = arena_run(runs, cache_root, *args, "--hours", str(hours), "--workers", "2")  # resumed as any run is
    assert again.returncode == 0, again.stderr[-3000:]
    # both workers started a trial, then it stopped
    assert check_run_consistent(runs / "s", 17)[:len(records)] == records
    data.write_text(landscape.read_text().replace('"seed": 0', '"seed": 1'))  # other trials under the same name
    line = one_line_error(arena_run(runs, cache_root, *args, "--trials", "19"))
    assert "changed since run 's' started" in line


@pytest.mark.slow  # arena child processes, seconds each
@pytest.mark.parametrize("args, message", [
    (["--backend", "surrogate"], "--backend surrogate and --surrogate-data"),
    (["--surrogate-data", "x.jsonl"], "--backend surrogate and --surrogate-data"),
    ([*SURROGATE, "--surrogate-data", "LAND", "--method", "code", "--model", "openai/x"], "constants alone"),
    ([*SURROGATE, "--surrogate-data", "missing.jsonl"], "no trials at missing.jsonl"),
    (["--backend", "surrogate", "--surrogate-data", "LAND"], "outside the search space"),  # the cpu preset
    ([*SURROGATE, "--surrogate-data", "SMALL"], "at least 20 scored trials"),
])
def test_bad_surrogate_runs_are_one_line_errors_and_create_nothing(args, message, landscape, tmp_path, cache_root):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(landscape.read_text().splitlines(keepends=True)[:25]))
    args = [{"LAND": str(landscape), "SMALL": str(small)}.get(a, a) for a in args]
    line = one_line_error(arena_run(tmp_path / "runs", cache_root, "--name", "bad", *args))
    assert message in line
    assert not (tmp_path / "runs" / "bad").exists()
