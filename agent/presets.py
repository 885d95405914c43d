"""Named settings that fix a trial's sequence length, evaluation, budget and starting constants."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from agent.constants import Value
from agent.errors import ArenaError
from agent.template import template_dir


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    device: str
    vocab_size: int
    seq_len: int
    eval_tokens: int
    time_budget: float
    warmup_steps: int
    startup_allowance: float
    eval_timeout: float
    causality_probes: int  # per validation row; rows x probes >= seq_len - 1 probes every position once
    constants: dict[str, Value] = field(default_factory=dict)

    def probed_positions(self) -> int:
        """How many of the seq_len - 1 positions the eval phase's causality probes cut at (harness.py)."""
        return min(self.seq_len - 1, self.eval_tokens // self.seq_len * self.causality_probes)

    def harness_config(self, seed: int) -> dict[str, object]:
        """The run.json the harness reads: everything about a trial that the trial cannot change."""
        return {"device": self.device, "seed": seed, "seq_len": self.seq_len, "eval_tokens": self.eval_tokens,
                "time_budget": self.time_budget, "warmup_steps": self.warmup_steps,
                "causality_probes": self.causality_probes}


def load_presets() -> dict[str, Preset]:
    raw = tomllib.loads((template_dir() / "presets.toml").read_text())
    presets = {name: Preset(name=name, **fields) for name, fields in raw.items()}
    for preset in presets.values():
        if preset.causality_probes < 1:
            raise ArenaError(f"preset '{preset.name}' has causality_probes = {preset.causality_probes}; set at least 1 "
                             "in train_template/presets.toml")
    return presets


def get_preset(name: str, *, time_budget: float | None = None, eval_tokens: int | None = None,
               startup_allowance: float | None = None) -> Preset:
    presets = load_presets()
    if name not in presets:
        raise ArenaError(f"unknown preset '{name}'; choose one of: {', '.join(presets)}")
    preset = presets[name]
    changes = {}
    if time_budget is not None:
        if time_budget <= 0:
            raise ArenaError(f"--budget must be a positive number of seconds, got {time_budget}")
        changes["time_budget"] = float(time_budget)
    if eval_tokens is not None:
        if eval_tokens <= 0 or eval_tokens % preset.seq_len:
            raise ArenaError(f"--eval-tokens must be a positive multiple of the sequence length {preset.seq_len}")
        changes["eval_tokens"] = eval_tokens
    if startup_allowance is not None:
        if startup_allowance < 0:
            raise ArenaError(f"--startup-allowance must be zero or positive, got {startup_allowance}")
        changes["startup_allowance"] = float(startup_allowance)
    return Preset(**{**preset.__dict__, **changes}) if changes else preset
