"""Run one trial in isolation and say what happened."""

from sandbox.local import LocalBackend
from sandbox.outcome import Outcome, Status
from sandbox.trial import Backend, TrialSpec

__all__ = ["Backend", "LocalBackend", "Outcome", "Status", "TrialSpec"]
