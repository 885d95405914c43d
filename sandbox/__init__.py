"""Run one trial in isolation and say what happened."""

from sandbox.errors import SandboxError
from sandbox.local import LocalBackend
from sandbox.outcome import BudgetRule, Outcome, Status
from sandbox.trial import Backend, TrialRunner, TrialSpec

__all__ = ["Backend", "BudgetRule", "LocalBackend", "Outcome", "SandboxError", "Status", "TrialRunner", "TrialSpec"]
