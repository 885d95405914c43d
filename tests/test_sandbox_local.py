"""The local backend beyond what every backend must do (test_backend_conformance.py): the harness's contract
on a real trial, and its one-line errors. The cheating trials it must withstand are in test_reward_hacks.py."""

from __future__ import annotations

import pytest

from sandbox import LocalBackend, SandboxError, Status
from tests.trial_helpers import cpu_template, make_spec, run, with_train


@pytest.mark.slow
def test_a_broken_contract_is_a_crash(stdlib_dataset):
    isolated = LocalBackend(isolation="bwrap")
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
