"""Trials a surrogate learns from, read from arena's own ledgers or from the paper's released trials.jsonl.

Each becomes an `Observation`: the constants that ran and what came of them. Proposals whose train.py was
refused (invalid_patch) ran nothing and teach nothing; a code agent's run is refused whole, since its
train.py is more than its constants.

The paper (Ferreira et al. 2026) searched karpathy/autoresearch's 14 constants under their own names, which
are the names of the `gpu` preset's space (train_template/space.toml): PAPER_CONSTANTS says so, one by one.
Its runner rounded three of them to powers of two before a trial ran (`snap_to_power_of_2`), and raised the
total batch to at least one device batch of 2048-token rows; `paper_config` does the same to what a line
holds, so every configuration is one the trial actually trained.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ArenaError
from agent.jsonl import JsonObject, read_jsonl
from agent.methods import CODE_EDITING_METHODS
from agent.record import TrialRecord
from agent.space import SearchSpace, SpaceError
from sandbox.outcome import NOT_RUN, Status, failure_named

# the paper's name -> the name in space.toml's gpu space
PAPER_CONSTANTS: dict[str, str] = {
    "DEPTH": "DEPTH", "ASPECT_RATIO": "ASPECT_RATIO", "HEAD_DIM": "HEAD_DIM",
    "DEVICE_BATCH_SIZE": "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE": "TOTAL_BATCH_SIZE",
    "EMBEDDING_LR": "EMBEDDING_LR", "UNEMBEDDING_LR": "UNEMBEDDING_LR", "MATRIX_LR": "MATRIX_LR",
    "SCALAR_LR": "SCALAR_LR", "WEIGHT_DECAY": "WEIGHT_DECAY", "WARMUP_RATIO": "WARMUP_RATIO",
    "WARMDOWN_RATIO": "WARMDOWN_RATIO", "FINAL_LR_FRAC": "FINAL_LR_FRAC", "WINDOW_PATTERN": "WINDOW_PATTERN",
}
PAPER_POW2 = ("HEAD_DIM", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE")
PAPER_SEQ_LEN = 2048  # autoresearch's MAX_SEQ_LEN: a device batch is that many tokens per row
UNUSABLE = NOT_RUN  # ran nothing
SURROGATE_PREFIX = "surrogate-"  # of a surrogate run's fingerprint, which stands in for a dataset's


@dataclass(frozen=True)
class Observation:
    config: dict[str, Any]
    status: Status                       # ok, or the failure it ended in
    val_bpb: float | None                # ok trials only
    peak_memory_gb: float | None = None
    training_seconds: float | None = None  # its training time; for a failure, the time until it failed


def trial_file(path: Path) -> Path:
    """The file of trials a --surrogate-data path names: a run directory stands for its ledger."""
    path = path / "ledger.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise ArenaError(f"no trials at {path}; give a run directory, its ledger.jsonl or a trials.jsonl")
    return path


def data_fingerprint(paths: list[Path]) -> str:
    """What a surrogate run records in place of a dataset's fingerprint: a hash of the trials it learns from,
    so that a resume with other trials is refused like one with another dataset."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(trial_file(path).read_bytes()).digest())
    return SURROGATE_PREFIX + digest.hexdigest()[:16]


def read_observations(paths: list[Path], space: SearchSpace, notes: list[str] | None = None) -> list[Observation]:
    """Every usable trial in `paths` (run directories, ledger.jsonl files, the paper's trials.jsonl), each
    configuration checked against `space`. A file whose trials mostly lie outside the space was recorded on
    another one and is refused; a few outside it (an LLM method may step out of its bounds, as one of the
    paper's did) are left out, each file's with a line in `notes`."""
    if not paths:
        raise ArenaError("the surrogate backend needs trials to learn from: --surrogate-data FILE ...")
    observations = []
    for path in paths:
        found = read_trials(path, space, notes if notes is not None else [])
        if not found:
            raise ArenaError(f"{path} holds no trial with a configuration that ran; give a ledger.jsonl of a "
                             "fixed-space run or the paper's trials.jsonl")
        observations += found
    return observations


def read_trials(path: Path, space: SearchSpace, notes: list[str]) -> list[Observation]:
    """The usable trials of one file (or run directory), in the order they ran."""
    path = trial_file(path)
    records = read_jsonl(path, "the trial file", warnings=[])
    if not records:
        return []
    first = records[0]
    if "trial_id" in first and "success" in first:
        rows = [_paper_row(record, path, number) for number, record in enumerate(records, 1)]
    elif "trial" in first and "status" in first:
        if any(record.get("method") in CODE_EDITING_METHODS for record in records):
            raise ArenaError(f"{path} is a run of a code-editing method, whose trials are more than their constants; "
                             "fit the surrogate on fixed-space runs (random, tpe, cmaes, centaur, llm)")
        rows = [_ledger_row(record, path, number) for number, record in enumerate(records, 1)]
    else:
        raise ArenaError(f"{path} is neither an arena ledger (trial, status, config, val_bpb ...) nor the paper's "
                         "trials.jsonl (trial_id, config, val_bpb, success ...); check the file")
    usable = [row for row in rows if row is not None]
    outside = {}
    for number, row in enumerate(usable):
        _check_names(row.config, space, path)
        try:
            space.check(row.config)
        except SpaceError as e:
            outside[number] = str(e)
    if outside and len(outside) * 2 > len(usable):
        raise ArenaError(f"a configuration in {path} lies outside the search space: {next(iter(outside.values()))}; "
                         "fit on trials of the run's preset (--preset) and space (--space)")
    if outside:
        notes.append(f"left out {len(outside)} of the {len(usable)} trials in {path}: outside the search space "
                     f"(e.g. {next(iter(outside.values()))})")
    return [row for number, row in enumerate(usable) if number not in outside]


def _check_names(config: dict[str, Any], space: SearchSpace, path: Path) -> None:
    missing, extra = sorted(set(space) - set(config)), sorted(set(config) - set(space))
    if missing or extra:
        raise ArenaError(f"the constants in {path} do not match the search space ({len(space)} constants): "
                         + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                       f"unknown {', '.join(extra)}" if extra else "") if part)
                         + "; fit on trials of the same preset (--preset) or give the matching --space")


def _ledger_row(record: JsonObject, path: Path, number: int) -> Observation | None:
    try:
        trial = TrialRecord.from_json(record)
    except (TypeError, ValueError, KeyError) as e:
        raise ArenaError(f"{path} line {number} is not a trial record ({e}); check the file") from None
    if trial.status in UNUSABLE or trial.config is None:
        return None
    ok = trial.status is Status.OK
    return Observation(trial.config, trial.status, trial.val_bpb if ok else None, trial.peak_memory_gb,
                       trial.training_seconds if ok else trial.train_wall_seconds or None)


def _paper_row(record: JsonObject, path: Path, number: int) -> Observation | None:
    config = record.get("config")
    if not isinstance(config, dict):
        raise ArenaError(f"{path} line {number} has no config object; expected the paper's trials.jsonl")
    success = record.get("success") is True and _number(record.get("val_bpb")) is not None
    status = Status.OK if success else failure_named(record.get("error"))
    return Observation(paper_config(config, path, number), status,
                       _number(record.get("val_bpb")) if success else None,
                       _number(record.get("peak_memory_gb")), _number(record.get("wall_time_seconds")))


def paper_config(config: dict[str, Any], path: Path, number: int) -> dict[str, Any]:
    """A paper trial's configuration under space.toml's names, as its runner ran it."""
    unknown = sorted(set(config) - set(PAPER_CONSTANTS))
    if unknown:
        raise ArenaError(f"{path} line {number} has constants the paper did not search: {', '.join(unknown)}")
    mapped: dict[str, Any] = {PAPER_CONSTANTS[name]: value for name, value in config.items()}
    for name in PAPER_POW2:
        value = _number(mapped.get(name))
        if value is not None and value > 0:
            mapped[name] = nearest_pow2(value)
    device, total = mapped.get("DEVICE_BATCH_SIZE"), mapped.get("TOTAL_BATCH_SIZE")
    if isinstance(device, int) and isinstance(total, int):
        mapped["TOTAL_BATCH_SIZE"] = max(total, device * PAPER_SEQ_LEN)
    return mapped


def nearest_pow2(value: float) -> int:
    """The power of two nearest `value` on a log scale, as the paper's runner rounded its draws."""
    return int(2 ** round(math.log2(value)))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
