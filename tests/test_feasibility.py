"""The memory-feasibility model: its analytic start against real training, its calibration on measured trials and
on out-of-memory ones, and `--feasibility` through the real loop (refused proposals recorded as infeasible, told to
the method, shown to an LLM, left out of --trials) with its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from agent.errors import ArenaError
from agent.feasibility import BASE_MARGIN, PRIORS, MemoryModel, Shape, terms
from agent.presets import get_preset
from agent.record import TrialRecord
from agent.space import load_space
from bench.landscape import write_landscape
from sandbox.outcome import Status
from tests.conftest import one_line_error
from tests.llm_server import ScriptedLLMServer
from tests.run_helpers import ROOT, arena_run, check_run_consistent

GPU = load_space("gpu")
GPU_PRESET, CPU_PRESET = get_preset("gpu"), get_preset("cpu")
GPU_SHAPE = Shape(GPU_PRESET.seq_len, GPU_PRESET.vocab_size, "cuda")


def measured(trial: int, config: dict, peak_gb: float | None, status: Status = Status.OK) -> TrialRecord:
    return TrialRecord(trial=trial, kind="proposal", method="random", description="", status=status,
                       config=config, peak_memory_gb=peak_gb, val_bpb=1.0 if status is Status.OK else None)


PEAK_SCRIPT = """
import importlib.util, json, sys, threading, time
import torch
spec = importlib.util.spec_from_file_location("train", sys.argv[1])
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
for name, value in json.loads(sys.argv[2]).items():
    setattr(train, name, value)
torch.set_num_threads(2)
T, V = int(sys.argv[3]), int(sys.argv[4])

def anonymous_bytes():  # the process's own memory, not the pages of torch's libraries (those come and go)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

peak, done = [anonymous_bytes()], threading.Event()
def sample():
    while not done.is_set():
        peak.append(max(peak[-1], anonymous_bytes()))
        time.sleep(0.001)
threading.Thread(target=sample, daemon=True).start()

class Ctx:  # what the harness offers train(ctx), with random tokens: two optimizer steps
    device, seed, vocab_size, seq_len, steps = "cpu", 0, V, T, 0
    def batches(self, rows):
        while True:
            x = torch.randint(0, V, (rows, T + 1))
            yield x[:, :-1], x[:, 1:]
    def progress(self):
        return 0.5
    def log_step(self, step, loss):
        self.steps += 1
    def should_stop(self):
        return self.steps >= 2

train.train(Ctx())
done.set()
print(max(peak[-1], anonymous_bytes()) / 1e9)
"""


def real_cpu_peak_gb(config: dict) -> float:
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(ROOT / "train_template" / "train.py"),
                           json.dumps(config), str(CPU_PRESET.seq_len), str(CPU_PRESET.vocab_size)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.split()[-1])


@pytest.mark.slow  # two real CPU trainings, seconds each
def test_the_analytic_model_predicts_what_real_cpu_training_adds():
    """What a bigger configuration adds to the peak of the process's own (anonymous) memory is what the model
    adds (the runtime's own memory, and the pages of torch's libraries a busy host keeps resident, vary between
    machines and moments; calibration learns that constant per run)."""
    small = dict(CPU_PRESET.constants)
    large = {**small, "DEPTH": 4, "ASPECT_RATIO": 64, "HEAD_DIM": 64, "DEVICE_BATCH_SIZE": 32}
    model = MemoryModel(Shape(CPU_PRESET.seq_len, CPU_PRESET.vocab_size, "cpu"), 100.0, "host memory")
    measured = real_cpu_peak_gb(large) - real_cpu_peak_gb(small)
    assert measured > 0.5  # the large one is more than twice the small one
    assert model.predict_gb(large) - model.predict_gb(small) == pytest.approx(measured, rel=0.3)


def test_calibration_learns_what_the_trials_measured():
    truth = np.array(PRIORS["cuda"]) * [1.3, 0.6, 1.5, 0.8]  # the device is not what the priors assumed
    rng = np.random.default_rng(0)
    configs = [GPU.sample(rng) for _ in range(230)]
    peaks = [float(terms(c, GPU_SHAPE) @ truth) / 1e9 * (1 + 0.02 * rng.standard_normal()) for c in configs]
    model = MemoryModel(GPU_SHAPE, 80.0, "GPU memory")
    assert "analytic (no trial has measured memory yet)" in model.describe()
    before = np.median([abs(model.predict_gb(c) / p - 1) for c, p in zip(configs[30:], peaks[30:], strict=True)])
    model.calibrate([measured(i, c, p) for i, (c, p) in enumerate(zip(configs[:30], peaks[:30], strict=True))])
    after = np.median([abs(model.predict_gb(c) / p - 1) for c, p in zip(configs[30:], peaks[30:], strict=True)])
    assert before > 0.15 and after < 0.05  # on 200 configurations it was not fitted on
    assert model.calibration.measured == 30 and BASE_MARGIN < model.calibration.margin < 0.15
    assert "calibrated on 30 measured trials" in model.describe()


def test_a_trial_that_ran_out_of_memory_below_the_limit_raises_the_model():
    model = MemoryModel(GPU_SHAPE, 80.0, "GPU memory")
    config = {**GPU_PRESET.constants, "DEVICE_BATCH_SIZE": 64}
    assert model.predict_gb(config) < 60 and model.refusal(config) is None
    model.calibrate([measured(1, config, None, Status.OOM)])
    assert model.predict_gb(config) >= 80 * 0.99 and "exceeds" in (model.refusal(config) or "")
    assert model.calibration.raised == 1 and "1 out-of-memory one" in model.describe()
    smaller = {**config, "DEVICE_BATCH_SIZE": 16}
    assert model.refusal(smaller) is None  # what is well below still runs


def calibrated_on_a_device(rng: np.random.Generator, free_gb: float = 80.0,
                           ) -> tuple[MemoryModel, list[TrialRecord], list[dict]]:
    """A model of an 80 GB device calibrated on 40 trials that fit in what is free of it, measured on a device
    unlike the priors (2% noise), and 200 more configurations of the space to judge it on."""
    truth = np.array(PRIORS["cuda"]) * [1.3, 0.6, 1.5, 0.8]
    configs = [GPU.sample(rng) for _ in range(1000)]
    peaks = [float(terms(c, GPU_SHAPE) @ truth) / 1e9 * (1 + 0.02 * rng.standard_normal()) for c in configs]
    fitting = [(c, p) for c, p in zip(configs, peaks, strict=True) if p < free_gb - 2]
    records = [measured(i, c, p) for i, (c, p) in enumerate(fitting[:40])]
    model = MemoryModel(GPU_SHAPE, 80.0, "GPU memory")
    model.calibrate(records)
    return model, records, configs[-200:]


def test_an_out_of_memory_trial_far_below_the_measured_trend_is_left_out():
    """An OOM at half the limit (a shared GPU, fragmentation, a leak) can only be held at the limit by bending
    the fit away from every measured trial: the model and its margin stay as the measured trials make them."""
    model, records, others = calibrated_on_a_device(np.random.default_rng(1))
    before, margin = [model.predict_gb(c) for c in others], model.calibration.margin
    half = next(c for c in others if 0.4 < model.predict_gb(c) / 80 < 0.6)
    model.calibrate([*records, measured(len(records), half, None, Status.OOM)])
    assert model.calibration.raised == 0 and model.calibration.unexplained == 1
    assert [model.predict_gb(c) for c in others] == pytest.approx(before)
    assert model.calibration.margin == pytest.approx(margin) and model.refusal(half) is None
    assert "1 out-of-memory trial left out, inconsistent with the measured peaks" in model.describe()


def test_an_out_of_memory_trial_just_above_the_measured_trend_still_raises_the_model():
    model, records, others = calibrated_on_a_device(np.random.default_rng(2))
    near = next(c for c in others if 0.93 < model.predict_gb(c) / 80 < 0.96)
    assert model.refusal(near) is None
    model.calibrate([*records, measured(len(records), near, None, Status.OOM)])
    assert model.calibration.raised == 1 and model.calibration.unexplained == 0
    assert model.refusal(near) is not None and "1 out-of-memory one" in model.describe()


def test_of_two_out_of_memory_trials_the_one_the_measured_trials_can_explain_raises_the_model():
    """One at a time, nearest the limit first: the fit rises for the OOM near the trend and leaves out the other."""
    model, records, others = calibrated_on_a_device(np.random.default_rng(3))
    near = next(c for c in others if 0.93 < model.predict_gb(c) / 80 < 0.96)
    half = next(c for c in others if 0.4 < model.predict_gb(c) / 80 < 0.6)
    for order in ((half, near), (near, half)):
        model.calibrate([*records, *(measured(len(records) + i, c, None, Status.OOM) for i, c in enumerate(order))])
        assert (model.calibration.raised, model.calibration.unexplained) == (1, 1)
        assert model.refusal(near) is not None and model.refusal(half) is None


def test_out_of_memory_trials_clustered_above_every_measured_one_set_a_ceiling():
    """On a device with 50 of its 80 GB free, every trial that ran measured less than that. One OOM above them
    could be a fluke and changes nothing; a second makes the lowest of them a ceiling: from it up nothing runs,
    below it the model's verdicts stand."""
    model, records, others = calibrated_on_a_device(np.random.default_rng(4), free_gb=50.0)
    highest = max(model.predict_gb(r.config) for r in records)
    over = sorted((c for c in others if 60 < model.predict_gb(c) < 75), key=model.predict_gb)[:2]
    below = next(c for c in others if highest < model.predict_gb(c) < model.predict_gb(over[0]))
    assert len(over) == 2 and model.refusal(below) is None
    model.calibrate([*records, measured(len(records), over[1], None, Status.OOM)])
    assert model.calibration.unexplained == 1 and model.calibration.ceiling_gb is None
    assert model.refusal(over[1]) is None
    model.calibrate([*records, *(measured(len(records) + i, c, None, Status.OOM) for i, c in enumerate(over))])
    assert model.calibration.unexplained == 2
    assert model.calibration.ceiling_gb == pytest.approx(model.predict_gb(over[0]))
    assert model.threshold_gb == model.calibration.ceiling_gb
    for config in over:
        assert "where 2 trials ran out of memory above every trial that measured its peak" in model.refusal(config)
    assert model.refusal(below) is None
    assert f"refused from {model.calibration.ceiling_gb:.1f} GB up" in model.describe()


def test_the_boundary_for_prompts_names_the_largest_values_that_fit():
    model = MemoryModel(GPU_SHAPE, 80.0, "GPU memory")
    text = model.boundary(GPU_PRESET.constants, GPU)
    largest = model.largest_fitting(GPU_PRESET.constants, GPU, "DEVICE_BATCH_SIZE")
    assert f"DEVICE_BATCH_SIZE <= {largest}" in text and "recorded as infeasible" in text
    assert model.refusal({**GPU_PRESET.constants, "DEVICE_BATCH_SIZE": largest}) is None
    assert model.refusal({**GPU_PRESET.constants, "DEVICE_BATCH_SIZE": largest * 2}) is not None


def test_a_device_too_small_for_any_configuration_is_one_line():
    with pytest.raises(ArenaError, match="even the smallest configuration of the space is predicted to need"):
        MemoryModel(GPU_SHAPE, 1.0, "GPU memory").check_space(GPU, GPU_PRESET.constants)
    MemoryModel(GPU_SHAPE, 80.0, "GPU memory").check_space(GPU, GPU_PRESET.constants)


def test_a_run_recorded_before_the_model_existed_resumes_without_it():
    from agent.run import merge_settings

    stored = {"name": "old", "preset": "gpu", "method": "cmaes"}  # run.json of a version without --feasibility
    assert merge_settings(stored, {"name": "old"}).feasibility == "off"
    with pytest.raises(ArenaError, match="was started with feasibility='off', not 'on'"):
        merge_settings(stored, {"name": "old", "feasibility": "on"})


# ---------------------------------------------------------------------------- through the loop

@pytest.fixture(scope="module")
def landscape(tmp_path_factory):
    return write_landscape(tmp_path_factory.mktemp("landscape") / "trials.jsonl", 800, seed=0)


SURROGATE = ["--preset", "gpu", "--backend", "surrogate"]


def config_answer(**changes) -> str:
    return "```json\n" + json.dumps({**GPU_PRESET.constants, **changes}) + "\n```"


@pytest.mark.slow  # arena child processes, seconds each
def test_an_infeasible_proposal_is_recorded_without_running_and_shown_to_the_llm(landscape, tmp_path, cache_root):
    runs = tmp_path / "runs"
    with ScriptedLLMServer() as server:
        server.script(config_answer(DEPTH=24, DEVICE_BATCH_SIZE=256),  # trial 1: far past 80 GB
                      config_answer(MATRIX_LR=0.05))                     # trial 2
        proc = arena_run(runs, cache_root, "--name", "f", *SURROGATE, "--surrogate-data", str(landscape),
                         "--method", "llm", "--model", "openai/test-model", "--api-base", server.api_base,
                         "--trials", "2")
        requests = list(server.requests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "feasibility: configurations predicted above 78.4 GB of the 80.0 GB memory of the paper's GPU" in proc.stderr
    records = check_run_consistent(runs / "f", 2)  # two trials ran; the refused one is recorded beside them
    assert [r["status"] for r in records] == ["ok", "infeasible", "ok"]
    assert "done: 2 trials (+1 infeasible, not run)" in proc.stderr  # as --trials counts
    refused = records[1]
    assert refused["commit"] is None and refused["config"]["DEPTH"] == 24 and refused["train_wall_seconds"] == 0
    assert refused["reason"].startswith("predicted peak memory") and "exceeds 78.4 GB" in refused["reason"]
    assert "DEPTH = 24" in refused["diff"]
    assert refused["predicted_memory_gb"] > 78.4 > records[2]["predicted_memory_gb"] > 0  # the model's estimate
    assert records[0]["predicted_memory_gb"] is None  # the baseline runs whatever the model says
    prompt = requests[-1]["messages"][1]["content"]  # the LLM saw the refusal and the boundary
    assert "trial 1:" in prompt and "infeasible" in prompt
    assert "Memory: configurations predicted above" in prompt and "DEVICE_BATCH_SIZE <=" in prompt
    assert "calibrated on 1 measured trial" in prompt  # the baseline's peak


@pytest.mark.slow  # arena child processes, seconds each
def test_cmaes_with_the_model_fails_less_and_resumes_to_the_same_verdicts(landscape, tmp_path, cache_root):
    runs = tmp_path / "runs"
    common = [*SURROGATE, "--surrogate-data", str(landscape), "--method", "cmaes", "--trials", "40"]
    statuses = {}
    for mode in ("on", "off"):
        proc = arena_run(runs, cache_root, "--name", mode, *common, "--feasibility", mode)
        assert proc.returncode == 0, proc.stderr[-3000:]
        statuses[mode] = [r["status"] for r in check_run_consistent(runs / mode, 40)]
    assert statuses["on"].count("oom") < statuses["off"].count("oom")
    assert statuses["on"].count("infeasible") > 0 and "infeasible" not in statuses["off"]
    compared = subprocess.run([sys.executable, "-m", "agent.cli", "compare", str(runs / "on"), str(runs / "off"),
                               "--out", str(tmp_path / "cmp")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "infeasible per trial" in compared.stdout  # counted apart from the failures
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    refused = statuses["on"].count("infeasible")
    by_name = {row["run"]: row for row in summary["runs"]}
    assert by_name["on"]["trials"] == by_name["off"]["trials"] == 40  # the trials that ran
    assert by_name["on"]["infeasible"] == refused and by_name["off"]["infeasible"] == 0
    group, = summary["groups"]  # one method: one group of two runs
    assert group["infeasible_per_trial"] == refused / 80
    assert "failure_rate_infeasible" not in group
    first = statuses["on"].index("infeasible")  # killed right after proposing it: the resumed run decides alike
    killed = arena_run(runs, cache_root, "--name", "k", *common, "--feasibility", "on",
                       env={"ARENA_CRASH_AT": f"proposed:{first}"})
    assert killed.returncode == -9
    resumed = arena_run(runs, cache_root, "--name", "k", *common, "--feasibility", "on")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = check_run_consistent(runs / "k", 40)
    original = [json.loads(line) for line in (runs / "on" / "ledger.jsonl").read_text().splitlines()]
    assert [(r["status"], r["config"]) for r in again] == [(r["status"], r["config"]) for r in original]


@pytest.mark.slow  # an arena child process, seconds
def test_an_out_of_memory_trial_the_measured_trials_cannot_explain_is_reported(landscape, tmp_path, cache_root):
    """A small configuration that ran out of memory (here the surrogate's data says it always does: a shared GPU)
    after five trials measured their peaks: the run says the model left it out, and goes on."""
    small = {**GPU_PRESET.constants, "DEPTH": 4, "DEVICE_BATCH_SIZE": 32}
    data = tmp_path / "trials.jsonl"
    ran_out = {"backend": "shared-gpu", "config": small, "seed": 0, "val_bpb": None, "peak_memory_gb": None,
               "wall_time_seconds": 30.0, "success": False, "error": "GPU out-of-memory"}
    data.write_text(landscape.read_text() + "".join(json.dumps({**ran_out, "trial_id": 800 + i}) + "\n"
                                                    for i in range(60)))
    runs = tmp_path / "runs"
    with ScriptedLLMServer() as server:
        server.script(*[config_answer(MATRIX_LR=lr) for lr in (0.03, 0.035, 0.045, 0.05, 0.055)],
                      "```json\n" + json.dumps(small) + "\n```", config_answer(MATRIX_LR=0.06))
        proc = arena_run(runs, cache_root, "--name", "s", *SURROGATE, "--surrogate-data", str(data),
                         "--method", "llm", "--model", "openai/test-model", "--api-base", server.api_base,
                         "--trials", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistent(runs / "s", 8)  # the baseline and seven proposals
    assert [r["status"] for r in records] == ["ok"] * 6 + ["oom", "ok"]
    assert ("calibrated on 6 measured trials; 1 out-of-memory trial left out, inconsistent with the measured peaks"
            in proc.stderr)
    assert records[-1]["predicted_memory_gb"] == pytest.approx(records[-3]["predicted_memory_gb"], rel=0.02)


@pytest.mark.slow  # arena child processes, seconds each
@pytest.mark.parametrize("args, message", [
    ([*SURROGATE, "--surrogate-data", "LAND", "--device-memory", "0.5"], "even the smallest configuration"),
    ([*SURROGATE, "--surrogate-data", "LAND", "--device-memory", "-3"], "--device-memory must be more than 0"),
    (["--mem-limit", "lots"], "memory size 'lots' is not one"),
    (["--feasibility", "maybe"], "unknown feasibility 'maybe'"),
])
def test_bad_feasibility_settings_are_one_line_errors(args, message, landscape, tmp_path, cache_root):
    args = [str(landscape) if a == "LAND" else a for a in args]
    line = one_line_error(arena_run(tmp_path / "runs", cache_root, "--name", "bad", *args))
    assert message in line
    assert not (tmp_path / "runs" / "bad").exists()
