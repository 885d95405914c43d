"""Will a fixed-space configuration fit in memory? A peak-memory model shared by every fixed-space method.

Ferreira et al. 2026 found that failures, mostly out-of-memory trials, decide which optimizer wins: random
search wasted over half its trials on them. A fixed-space method only edits the constants block of the
template, so its trial's peak memory follows from the constants:

    peak bytes ~ a * parameters                   weights, gradients, AdamW/Muon state (fp32)
               + b * tokens * width * depth       activations kept for the backward pass, per micro-batch
               + c * tokens * vocab               logits, their soft-cap and the loss's gradient (fp32)
               + d                                the runtime itself (CUDA context, torch's own memory)

with tokens = DEVICE_BATCH_SIZE * seq_len. The coefficients start at analytic values (PRIORS: bytes per
element, for bf16 autocast on the GPU and fp32 on the CPU) and are calibrated on every trial of the run that
measured its peak memory: a least-squares fit of multipliers on the priors, in relative error, pulled
towards 1 so that a few similar trials cannot swing it, and raised where a trial ran out of memory that
the model said would fit, unless (once MIN_FOR_MARGIN trials measured their peak) that would make it miss
them: an OOM far below what they say is left out (a shared device, fragmentation, a leak). Left-out OOMs
that cluster above every configuration that ran (CEILING_OOMS of them) say that less memory is free than the
device has: the lowest of them becomes a ceiling. A configuration predicted above the device's memory, less a
margin that grows with the fit's error, or at the ceiling or above, is `infeasible`: the loop records it
without running it (0 device seconds) and the method is told it failed. The model is computed from the ledger
alone, so a resumed run refuses exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from agent.errors import ArenaError
from agent.methods import CODE_EDITING_METHODS
from agent.presets import Preset
from agent.space import Param, SearchSpace
from sandbox.docker import DEFAULT_MEM_LIMIT
from sandbox.outcome import Status
from sandbox.phases import memory_bytes
from sandbox.workers import Placement, gpu_memory_gb

if TYPE_CHECKING:
    from agent.run import RunSettings

GB = 1e9
TERMS = ("parameters", "layer activations", "logits", "runtime")
# Bytes per unit of each term: 16 bytes of fp32 weight, gradient and optimizer state per parameter. On the GPU,
# bf16 activations (~15 values per channel per layer) and fp32 logits, scaled so that the gpu preset's template
# comes to the 55 GB the README measured on an H100 (autoresearch's train.py: 45 GB at that shape). On the CPU,
# eager fp32 (~30 values per channel per layer), fitted to the peak resident memory of six configurations of
# the cpu space, 0.44 to 3.4 GB, within 7% (attention, fused there too, adds no term of its own).
PRIORS = {
    "cuda": (16.0, 30.0, 10.0, 1.5 * GB),
    "cpu": (16.0, 120.0, 12.0, 0.4 * GB),
}
PULL = 0.3            # weight of the prior against each measured trial, in relative error
MULTIPLIER_BOUNDS = (0.05, 20.0)
BASE_MARGIN = 0.02    # refused above (1 - margin) of the device's memory: allocator fragmentation, noise
MAX_MARGIN = 0.25
OOM_WEIGHTS = (3.0, 30.0, 300.0)  # how firmly successive refits hold an OOM'd configuration at the limit
RAISE_TOLERANCE = 0.05  # how much more (90th percentile relative error) the fit may miss measured peaks for OOMs
MIN_FOR_MARGIN = 5    # measured trials before the fit's own error widens the margin
CEILING_OOMS = 2      # left-out OOMs above every measured trial that make the lowest of them a ceiling (one is a fluke)
VALUE_GATE_CHANNELS = 32


class Measured(Protocol):
    """What calibration reads of a trial: a ledger's TrialRecord, or a recorded trial (surrogate data)."""
    @property
    def config(self) -> dict[str, Any] | None: ...
    @property
    def status(self) -> Status: ...
    @property
    def peak_memory_gb(self) -> float | None: ...


def measured_peak(trial: Measured) -> float | None:
    """The peak memory of a trial that ran to the end; a failed one's is where it stopped, not its peak."""
    peak = trial.peak_memory_gb
    return peak if trial.status is Status.OK and peak is not None and peak > 0 else None


@dataclass(frozen=True)
class Shape:
    """What the preset fixes: the sequence length, the vocabulary and the device kind."""
    seq_len: int
    vocab_size: int
    device: str  # "cuda" or "cpu"


def terms(config: Mapping[str, Any], shape: Shape) -> NDArray[np.float64]:
    """The model's terms for a configuration of the template's constants (see the module's formula)."""
    depth, head_dim = int(config["DEPTH"]), int(config["HEAD_DIM"])
    width = math.ceil(depth * int(config["ASPECT_RATIO"]) / head_dim) * head_dim
    heads = width // head_dim
    value_layers = (depth + 1) // 2  # alternate layers, the last included (train.py's has_value_embedding)
    params = (shape.vocab_size * width * (2 + value_layers) + depth * 12 * width ** 2
              + value_layers * VALUE_GATE_CHANNELS * heads + 2 * depth)
    tokens = int(config["DEVICE_BATCH_SIZE"]) * shape.seq_len
    return np.array([params, tokens * width * depth, tokens * shape.vocab_size, 1.0])


@dataclass(frozen=True)
class Verdict:
    """The memory model on one proposal, decided before it runs."""
    predicted_gb: float
    threshold_gb: float  # the most it may need: the device's memory less the margin
    reason: str          # why it is infeasible; "" when it fits


@dataclass(frozen=True)
class Calibration:
    multipliers: tuple[float, ...]  # on each prior coefficient
    measured: int                   # trials with a measured peak it was fitted on
    raised: int                     # trials that ran out of memory below the limit it was raised for
    unexplained: int                # trials that ran out below it, left out: raising would miss the measured peaks
    margin: float                   # share of the limit kept free
    ceiling_gb: float | None = None  # the lowest of a cluster of those above every measured trial: refused from it up
    ceiling_trials: int = 0          # how many that cluster has


@dataclass(frozen=True)
class Peaks:
    """The trials that measured their peak memory: their terms (one row each) and peaks in bytes."""
    terms: NDArray[np.float64]
    peaks: NDArray[np.float64]


class MemoryModel:
    """Predicts a configuration's peak memory and refuses what cannot fit in `limit_gb`."""

    def __init__(self, shape: Shape, limit_gb: float, source: str):
        self.shape = shape
        self.limit_gb = limit_gb
        self.source = source  # where the limit came from, for messages
        self.prior: NDArray[np.float64] = np.array(PRIORS["cuda" if shape.device.startswith("cuda") else "cpu"])
        self.calibration = Calibration((1.0,) * len(TERMS), 0, 0, 0, BASE_MARGIN)

    @property
    def coefficients(self) -> NDArray[np.float64]:
        multipliers: NDArray[np.float64] = np.array(self.calibration.multipliers)
        return self.prior * multipliers

    def predict_gb(self, config: Mapping[str, Any]) -> float:
        return float(terms(config, self.shape) @ self.coefficients) / GB

    @property
    def threshold_gb(self) -> float:
        """The most a configuration may be predicted to need (at the ceiling itself it is refused)."""
        return min(self.limit_gb * (1 - self.calibration.margin), self.calibration.ceiling_gb or math.inf)

    def verdict(self, config: Mapping[str, Any]) -> Verdict:
        predicted, threshold, ceiling = self.predict_gb(config), self.threshold_gb, self.calibration.ceiling_gb
        if ceiling is not None and predicted >= ceiling:
            reason = (f"predicted peak memory {predicted:.1f} GB is at or above {ceiling:.1f} GB, where "
                      f"{self.ceiling_note()}; not run")
        elif predicted > threshold:
            reason = (f"predicted peak memory {predicted:.1f} GB exceeds {threshold:.1f} GB "
                      f"({1 - self.calibration.margin:.0%} of the {self.limit_gb:.1f} GB {self.source}); not run")
        else:
            reason = ""
        return Verdict(predicted, threshold, reason)

    def ceiling_note(self) -> str:
        return (f"{self.calibration.ceiling_trials} trials ran out of memory above every trial that measured its peak "
                "(less memory is free than the device has?)")

    def refusal(self, config: Mapping[str, Any]) -> str | None:
        """Why `config` is infeasible, or None when it is predicted to fit."""
        return self.verdict(config).reason or None

    def calibrate(self, records: Iterable[Measured]) -> None:
        """Refit the multipliers on every trial with a configuration: measured peaks of those that ran to the
        end, and the limit as a lower bound for those that ran out of memory where the fit can take it."""
        records = list(records)
        pairs = [(terms(r.config, self.shape), peak * GB) for r in records
                 if r.config and (peak := measured_peak(r)) is not None]
        measured = Peaks(np.array([x for x, _ in pairs]).reshape(-1, len(TERMS)), np.array([y for _, y in pairs]))
        ran_out = [terms(r.config, self.shape) for r in records if r.status is Status.OOM and r.config]
        multipliers = self._fit(measured, [], 1.0)
        # An OOM far below what the measured trials say (a shared device, fragmentation, a leak; on the surrogate
        # its classifier's error) can only be held at the limit by bending the fit away from every measured
        # trial: it is left out rather than allowed to do that.
        tolerance = self._error(measured, multipliers) + RAISE_TOLERANCE
        raised: list[int] = []  # of ran_out
        left_out: set[int] = set()
        while below := [i for i, x in enumerate(ran_out)
                        if i not in left_out and i not in raised and self._fits(x, multipliers)]:
            together = self._raise(measured, [ran_out[i] for i in raised + below])
            if self._error(measured, together) <= tolerance:
                raised, multipliers = raised + below, together
                continue
            # one at a time, the nearest the limit (the likeliest real) first
            for i in sorted(below, key=lambda j: -float(ran_out[j] @ (self.prior * multipliers))):
                if not self._fits(ran_out[i], multipliers):
                    continue  # raised far enough by another
                alone = self._raise(measured, [ran_out[j] for j in raised + [i]])
                if self._error(measured, alone) <= tolerance:
                    raised, multipliers = raised + [i], alone
                else:
                    left_out.add(i)
        margin = BASE_MARGIN
        if len(measured.peaks) >= MIN_FOR_MARGIN:  # how far the fit falls short of what trials measured
            shortfalls = np.maximum(0.0, measured.peaks / (measured.terms @ (self.prior * multipliers)) - 1)
            margin = min(MAX_MARGIN, BASE_MARGIN + float(np.quantile(shortfalls, 0.9)))
        unexplained = [i for i in left_out if self._fits(ran_out[i], multipliers)]  # not those a later raise lifted
        # Where several ran out above every configuration that ran, the device has less free than its size says
        coefficients = self.prior * multipliers
        highest = float(np.max(measured.terms @ coefficients, initial=0.0))
        above = sorted(float(ran_out[i] @ coefficients) for i in unexplained if ran_out[i] @ coefficients > highest)
        ceiling = above[0] / GB if len(above) >= CEILING_OOMS else None
        self.calibration = Calibration(tuple(float(m) for m in multipliers), len(measured.peaks), len(raised),
                                       len(unexplained), margin, ceiling, len(above) if ceiling else 0)

    def _fits(self, x: NDArray[np.float64], multipliers: NDArray[np.float64]) -> bool:
        return float(x @ (self.prior * multipliers)) < self.limit_gb * GB

    def _raise(self, measured: Peaks, ran_out: list[NDArray[np.float64]]) -> NDArray[np.float64]:
        """The fit that asks, ever more firmly, for the limit at least on each of `ran_out`."""
        weights = iter(OOM_WEIGHTS)
        multipliers = self._fit(measured, ran_out, next(weights))
        for weight in weights:
            if not any(self._fits(x, multipliers) for x in ran_out):
                break
            multipliers = self._fit(measured, ran_out, weight)
        return multipliers

    def _error(self, measured: Peaks, multipliers: NDArray[np.float64]) -> float:
        """How far the fit misses the measured peaks: the 90th percentile of the relative error (0 while there are
        too few to say)."""
        if len(measured.peaks) < MIN_FOR_MARGIN:
            return 0.0
        predicted = measured.terms @ (self.prior * multipliers)
        return float(np.quantile(np.abs(predicted / measured.peaks - 1), 0.9))

    def _fit(self, measured: Peaks, lower_bounds: list[NDArray[np.float64]], weight: float) -> NDArray[np.float64]:
        """Multipliers on the priors: relative least squares on the measured peaks and (with `weight`) the raised
        OOMs at the limit, each row divided by its target, plus PULL * (m - 1) for every multiplier."""
        from scipy.optimize import lsq_linear  # not at import: `arena --help` starts without scipy

        n = len(TERMS)
        if not len(measured.peaks) and not lower_bounds:
            return np.ones(n)
        bounds = np.array(lower_bounds).reshape(-1, n)
        a = np.vstack([measured.terms * self.prior / measured.peaks[:, None],
                       weight * bounds * self.prior / (self.limit_gb * GB), PULL * np.eye(n)])
        b = np.concatenate([np.ones(len(measured.peaks)), np.full(len(bounds), weight), np.full(n, PULL)])
        return np.asarray(lsq_linear(a, b, bounds=MULTIPLIER_BOUNDS).x, dtype=np.float64)

    def describe(self, hint: str = " (--device-memory GB to change it)") -> str:
        """One line: the limit and how the model was calibrated."""
        c = self.calibration
        fitted = (f"calibrated on {c.measured} measured trial{'s' * (c.measured != 1)}"
                  + (f" and {c.raised} out-of-memory one{'s' * (c.raised != 1)}" if c.raised else "")
                  if c.measured or c.raised else "analytic (no trial has measured memory yet)")
        if c.unexplained:
            fitted += (f"; {c.unexplained} out-of-memory trial{'s' * (c.unexplained != 1)} left out, inconsistent "
                       "with the measured peaks (a shared device, fragmentation or a leak?)")
        if c.ceiling_gb is not None:
            fitted += f"; refused from {c.ceiling_gb:.1f} GB up, where {self.ceiling_note()}"
        return (f"feasibility: configurations predicted above {self.threshold_gb:.1f} GB of the "
                f"{self.limit_gb:.1f} GB {self.source} are not run{hint}; the memory model is {fitted}")

    def boundary(self, config: Mapping[str, Any], space: SearchSpace) -> str:
        """For LLM prompts: the limit, the prediction for `config`, and how far its memory-bound constants
        can go with the rest of it unchanged."""
        lines = [f"Memory: {self.describe(hint='').removeprefix('feasibility: ')}.",
                 f"The current best is predicted at {self.predict_gb(config):.1f} GB. With its other constants "
                 "unchanged, the largest values predicted to fit are:"]
        for name in ("DEVICE_BATCH_SIZE", "DEPTH", "ASPECT_RATIO"):
            if name in space:
                largest = self.largest_fitting(config, space, name)
                lines.append(f"  {name} <= {largest}" if largest is not None else f"  {name}: no value fits")
        lines.append("A configuration predicted not to fit is recorded as infeasible without running, and counts "
                     "as a failure.")
        return "\n".join(lines)

    def largest_fitting(self, config: Mapping[str, Any], space: SearchSpace, name: str) -> Any:
        """The largest value of the integer constant `name` that fits, the others as in `config` (None: none)."""
        fitting = [v for v in discrete_values(space[name]) if self.refusal({**config, name: v}) is None]
        return max(fitting, default=None)

    def check_space(self, space: SearchSpace, defaults: Mapping[str, Any]) -> None:
        """Raise ArenaError when not even the smallest configuration of the space is predicted to fit."""
        smallest = dict(defaults)
        for name in ("DEPTH", "ASPECT_RATIO", "DEVICE_BATCH_SIZE"):
            if name in space:
                smallest[name] = min(discrete_values(space[name]))
        head_dims = discrete_values(space["HEAD_DIM"]) if "HEAD_DIM" in space else [defaults["HEAD_DIM"]]
        predicted = min(self.predict_gb({**smallest, "HEAD_DIM": head_dim}) for head_dim in head_dims)
        if predicted > self.threshold_gb:
            raise ArenaError(f"even the smallest configuration of the space is predicted to need {predicted:.1f} GB "
                             f"and the {self.source} allows {self.threshold_gb:.1f} GB; use a device with more "
                             "memory, --device-memory GB if the detected size is wrong, or --feasibility off")


def discrete_values(param: Param) -> list[Any]:
    """Every value an int, pow2 or categorical constant can take (a float's two bounds)."""
    if param.kind == "categorical":
        return list(param.choices)
    low, high = param.bounds
    if param.kind == "int":
        return list(range(int(low), int(high) + 1))
    if param.kind == "pow2":
        return [2 ** k for k in range(int(low).bit_length() - 1, int(high).bit_length())]
    return [low, high]


SURROGATE_GPU_GB = 80.0  # the paper's trials ran on 80 GB H100s


def for_run(settings: RunSettings, preset: Preset, space: SearchSpace,
            where: list[Placement]) -> tuple[MemoryModel | None, str]:
    """The run's memory model (None when off) and a line saying what it does. Raises ArenaError or SandboxError,
    in one line, when it is on and the device's memory cannot be told or fits nothing of the space."""
    on = settings.feasibility == "on" or (settings.feasibility == "auto" and preset.device.startswith("cuda"))
    if not on:
        return None, ""
    if settings.method in CODE_EDITING_METHODS:
        return None, (f"feasibility: off, method '{settings.method}' edits code and the memory model knows a "
                      "train.py by its constants alone")
    limit, source = device_limit(settings, preset, where)
    if limit is None:
        return None, f"feasibility: off, {source}"
    model = MemoryModel(Shape(preset.seq_len, preset.vocab_size, preset.device), limit, source)
    model.check_space(space, preset.constants)
    return model, model.describe()


def device_limit(settings: RunSettings, preset: Preset, where: list[Placement]) -> tuple[float | None, str]:
    """(GB a trial may use, what that is), or (None, why it is not known)."""
    if settings.device_memory is not None:
        return settings.device_memory, "memory given by --device-memory"
    if settings.backend == "surrogate":
        return SURROGATE_GPU_GB, "memory of the paper's GPU"
    if preset.device.startswith("cuda"):
        gpus = sorted({gpu for placement in where for gpu in placement.gpus or ()})
        if not gpus:
            return None, "the GPUs of a Ray cluster are not known here; give --device-memory GB to turn it on"
        return gpu_memory_gb(gpus), "GPU memory"
    if settings.mem_limit is not None:
        return memory_bytes(settings.mem_limit) / GB, "memory limit (--mem-limit)"
    if settings.backend == "docker":
        return memory_bytes(DEFAULT_MEM_LIMIT) / GB, "container memory limit"
    return host_memory_gb() / max(1, len(where)), "host memory" + (" per worker" if len(where) > 1 else "")


def host_memory_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GB
    raise ArenaError("/proc/meminfo does not say how much memory this host has; give it with --device-memory GB")
