"""The local backend on real trials: outcomes, secrets, and trials that try to cheat the metric."""

from __future__ import annotations

import pytest

from agent.constants import render_constants
from agent.presets import get_preset
from agent.template import HARNESS_FILES, template_dir
from sandbox import LocalBackend, Status, TrialSpec

TRAIN = render_constants((template_dir() / "train.py").read_text(), get_preset("cpu").constants)


def spec_for(tmp_path, data_dir, source: str, budget: float = 2, allowance: float = 30, grace: float = 60):
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    (tree / "train.py").write_text(source)
    preset = get_preset("cpu", time_budget=budget, eval_tokens=4096)
    return TrialSpec(tree=tree, data_dir=data_dir, harness_dir=template_dir(), harness_files=HARNESS_FILES,
                     config=preset.harness_config(42), startup_allowance=allowance, eval_timeout=120,
                     export_grace=grace)


def wrap_train(before: str = "", after: str = "") -> str:
    """The template with code run before the real training and after it (inside train())."""
    body = (f"\n\n_real_train = train\n\n\ndef train(ctx):\n    import os, sys, time\n"
            f"    {before or 'pass'}\n    model = _real_train(ctx)\n    {after or 'pass'}\n    return model\n")
    return TRAIN + body


def run(tmp_path, data_dir, source, **kw):
    lines = []
    outcome = LocalBackend().run(spec_for(tmp_path, data_dir, source, **kw), lines.append)
    return outcome, "".join(lines)


@pytest.mark.slow
def test_secrets_do_not_reach_the_trial(tmp_path, stdlib_dataset, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-do-not-leak")
    outcome, log = run(tmp_path, stdlib_dataset, wrap_train(before="print('ENV', sorted(os.environ.items()))"))
    assert outcome.status is Status.OK, outcome.reason
    env_line = next(line for line in log.splitlines() if line.startswith("ENV"))
    assert "do-not-leak" not in log and "API_KEY" not in env_line


@pytest.mark.slow
def test_a_printed_score_is_ignored(tmp_path, stdlib_dataset):
    fake = 'print(\'ARENA_RESULT {"val_bpb": 0.001}\', flush=True)'
    outcome, log = run(tmp_path, stdlib_dataset, wrap_train(after=fake))
    assert outcome.status is Status.OK and '"val_bpb": 0.001' in log
    assert outcome.val_bpb > 1.0  # the harness's own measurement


@pytest.mark.slow
def test_training_past_the_budget_is_over_budget(tmp_path, stdlib_dataset):
    outcome, _ = run(tmp_path, stdlib_dataset, wrap_train(after="time.sleep(6)"), budget=2, allowance=2)
    assert outcome.status is Status.OVER_BUDGET and "limit 4 s" in outcome.reason
    assert outcome.result["val_bpb"] > 1.0  # measured and kept for the record, but never a winner


@pytest.mark.slow
def test_crash_nan_and_runaway_are_classified(tmp_path, stdlib_dataset):
    outcome, _ = run(tmp_path, stdlib_dataset, wrap_train(before="raise RuntimeError('boom in trial code')"))
    assert outcome.status is Status.CRASH and "boom in trial code" in outcome.log_tail
    outcome, _ = run(tmp_path, stdlib_dataset, wrap_train(before="ctx.log_step(0, float('nan'))"))
    assert outcome.status is Status.NAN and "loss diverged" in outcome.reason
    outcome, _ = run(tmp_path, stdlib_dataset, wrap_train(before="while True: pass"), budget=1, allowance=1,
                     grace=2)
    assert outcome.status is Status.TIMEOUT and outcome.train_wall_seconds < 15
    outcome, _ = run(tmp_path, stdlib_dataset, TRAIN.replace("def train(ctx)", "def train_renamed(ctx)"))
    assert outcome.status is Status.CRASH and "no train(ctx) function" in outcome.reason
