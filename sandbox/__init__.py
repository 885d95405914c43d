"""Run one trial in isolation and say what happened."""

from sandbox.errors import SandboxError
from sandbox.local import LocalBackend
from sandbox.outcome import BudgetRule, Outcome, Status
from sandbox.trial import Backend, TrialRunner, TrialSpec
from sandbox.workers import LiveSandboxes, Placement

__all__ = ["Backend", "BudgetRule", "LiveSandboxes", "LocalBackend", "Outcome", "Placement", "SandboxError", "Status",
           "TrialRunner", "TrialSpec"]
