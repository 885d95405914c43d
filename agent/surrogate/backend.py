"""`--backend surrogate`: a trial answered by a Surrogate instead of training, through the same loop.

The loop proposes, applies, commits, judges and records a surrogate trial as any other, so a method's run on
the surrogate is a run like the others (replay, compare, resume) that takes milliseconds a trial: methods can
be compared over many seeds in minutes. Only fixed-space methods can use it, since it knows a train.py by its
constants alone. Its trials are recorded with isolation "surrogate": no code of theirs ran. A trial's wall
time in the ledger (train_wall_seconds, which compare's hours add up) is the predicted time where the trials
it learnt from had one, so a method that fails fast spends less there too.
"""

from __future__ import annotations

from pathlib import Path

from agent.constants import read_constants
from agent.feasibility import Shape, terms
from agent.presets import Preset
from agent.space import SearchSpace
from agent.surrogate.data import read_observations
from agent.surrogate.model import MemoryTerms, Prediction, Quality, Surrogate
from sandbox.outcome import Outcome, Status, TrialResult
from sandbox.trial import LogSink, TrialSpec
from sandbox.workers import Placement


class SurrogateBackend:
    isolation = "surrogate"

    def __init__(self, surrogate: Surrogate, time_budget: float, notes: list[str] | None = None):
        self.surrogate = surrogate
        self.time_budget = time_budget
        self.notes = notes or []  # trials left out of the fit, and why (printed when a run starts)

    @property
    def quality(self) -> Quality:
        """How well it did on trials held out of its fit (printed when a run starts)."""
        return self.surrogate.quality

    @classmethod
    def fit(cls, paths: list[Path], space: SearchSpace, preset: Preset) -> SurrogateBackend:
        """Fitted with one seed whatever the run's: every run on the same trials meets the same surrogate."""
        notes: list[str] = []
        surrogate = Surrogate(space, read_observations(paths, space, notes), memory_terms(preset))
        return cls(surrogate, preset.time_budget, notes)

    def placed(self, placement: Placement) -> SurrogateBackend:
        return self  # a prediction runs on no device

    def run(self, spec: TrialSpec, on_log: LogSink) -> Outcome:
        prediction = self.surrogate.predict(read_constants(spec.source))
        on_log(f"surrogate: {describe(prediction)}\n")
        seconds = prediction.training_seconds or self.time_budget
        if prediction.status is not Status.OK or prediction.val_bpb is None:
            reason = (f"the surrogate predicts {prediction.status} (failure probability "
                      f"{prediction.failure_probability:.2f})")
            return Outcome(prediction.status, reason, log_tail=f"surrogate: {describe(prediction)}\n",
                           train_wall_seconds=prediction.training_seconds or 0.0)  # what such a failure cost
        memory = prediction.peak_memory_gb or 0.0
        result: TrialResult = {
            "val_bpb": prediction.val_bpb, "val_tokens": 0, "val_bytes": 0, "eval_tokens": 0, "num_params": 0,
            "dataset_fingerprint": "", "eval_seconds": 0.0, "work_seconds": seconds, "outside_seconds": 0.0,
            "ready_seconds": 0.0, "allowance_seconds": 0.0, "peak_memory_gb": memory, "host_memory_gb": 0.0,
            "gpu_memory_gb": prediction.peak_memory_gb, "reported": {"source": "surrogate"}}
        return Outcome(Status.OK, f"val_bpb {prediction.val_bpb:.6f} (surrogate)", result,
                       log_tail=f"surrogate: {describe(prediction)}\n", train_wall_seconds=seconds)


def memory_terms(preset: Preset) -> MemoryTerms:
    """A configuration's memory terms, its constants outside the space at the preset's values."""
    shape = Shape(preset.seq_len, preset.vocab_size, preset.device)
    return lambda config: terms({**preset.constants, **config}, shape)


def describe(prediction: Prediction) -> str:
    parts = [f"{prediction.status}", f"failure probability {prediction.failure_probability:.2f}"]
    if prediction.val_bpb is not None:
        parts.append(f"val_bpb {prediction.val_bpb:.6f}")
    if prediction.peak_memory_gb is not None:
        parts.append(f"peak memory {prediction.peak_memory_gb:.1f} GB")
    if prediction.training_seconds is not None:
        parts.append(f"training {prediction.training_seconds:.0f} s")
    return ", ".join(parts)
