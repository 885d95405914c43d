"""The local backend on real trials, isolated (bubblewrap) and unisolated: outcomes and what is measured.
The cheating trials both backends must withstand are in test_reward_hacks.py."""

from __future__ import annotations

import pytest

from sandbox import LocalBackend, SandboxError, Status
from sandbox.outcome import summary
from tests.trial_helpers import cpu_template, make_spec, run, with_train


@pytest.fixture(scope="module")
def isolated() -> LocalBackend:
    return LocalBackend(isolation="bwrap")


@pytest.mark.slow
def test_the_template_trains_unisolated_too(stdlib_dataset):
    backend = LocalBackend(isolation="none")
    outcome, log = run(backend, make_spec(stdlib_dataset, cpu_template()))
    assert outcome.status is Status.OK, outcome.reason + outcome.log_tail
    assert backend.isolation == "none" and outcome.val_bpb > 1.0
    block = summary(outcome)
    assert block.startswith("---\nval_bpb:") and "training_seconds:" in block and "peak_mem_mb:" in block


@pytest.mark.slow
def test_crash_nan_runaway_and_contract_are_classified(isolated, stdlib_dataset):
    outcome, _ = run(isolated, make_spec(stdlib_dataset, with_train("raise RuntimeError('boom in trial code')")))
    assert outcome.status is Status.CRASH and "boom in trial code" in outcome.log_tail
    outcome, _ = run(isolated, make_spec(stdlib_dataset, with_train("ctx.log_step(0, float('nan'))")))
    assert outcome.status is Status.NAN and "loss diverged" in outcome.reason
    spec = make_spec(stdlib_dataset, with_train("while True: pass"), budget=1, cap=1, export_grace=2)
    outcome, _ = run(isolated, spec)  # killed at its deadline, however long the machine took to get there
    assert outcome.status is Status.TIMEOUT and outcome.train_wall_seconds >= spec.train_deadline
    outcome, _ = run(isolated, make_spec(stdlib_dataset, cpu_template().replace("def train(ctx)",
                                                                                "def train_renamed(ctx)")))
    assert outcome.status is Status.CRASH and "no train(ctx) function" in outcome.reason
    outcome, _ = run(isolated, make_spec(stdlib_dataset, with_train("""
        model = _template_train(ctx)
        model.forward = lambda idx: model.lm_head.weight[idx] if idx.sum() > 0 else None  # data-dependent
        return model
    """)))
    assert outcome.status is Status.CRASH and "cannot be exported with torch.export" in outcome.reason


def test_unknown_isolation_is_one_line():
    with pytest.raises(SandboxError, match="unknown isolation 'chroot'; choose one of: bwrap, none"):
        LocalBackend(isolation="chroot")


def test_a_changed_harness_stops_before_anything_runs(stdlib_dataset, tmp_path):
    spec = make_spec(stdlib_dataset, cpu_template())
    tampered = spec.__class__(**{**spec.__dict__, "harness_hash": "0" * 16})
    with pytest.raises(SandboxError, match=r"differ from this run's \(hash 0{16}\); reinstall"):
        LocalBackend(isolation="none").run(tampered, lambda line: None)
