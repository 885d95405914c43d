"""Random search: every constant drawn independently from its range (log-uniform where the space says so)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.constants import Value
from agent.methods.base import Context, Proposal
from agent.record import TrialRecord
from agent.space import SearchSpace


def describe(config: Mapping[str, Value]) -> str:
    return " ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in config.items())


class RandomSearch:
    """Trial n draws from its own stream, seeded from (seed, n): no state to save, none to lose."""
    name = "random"
    fixed_space = True

    def __init__(self, space: SearchSpace, seed: int):
        self.space = space
        self.seed = seed

    def propose(self, ctx: Context) -> Proposal:
        config = self.space.sample(np.random.default_rng([self.seed, ctx.trial]))
        return Proposal(description=f"random: {describe(config)}", config=config)

    def observe(self, record: TrialRecord) -> None:
        pass  # random search learns nothing

    def state(self) -> None:
        return None

    def restore(self, state: None) -> None:
        pass
