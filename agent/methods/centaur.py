"""Centaur: CMA-ES proposes every trial; after a warm-up a share r of them goes to an LLM that sees
CMA-ES's state in the constants' own units, and its point replaces CMA-ES's candidate before the tell.

Differences from the paper's Centaur (Ferreira et al. 2026), each on purpose:
* the LLM share is exactly r over the run: trial i after warm-up is the LLM's when floor((i+1) r) >
  floor(i r), so after n trials it has had floor(n r) of them (the paper used every round(1/r)-th
  trial, which is 1/3 for r = 0.3 and every trial for r = 0.8);
* the prompt shows the mean, the spread of each constant and the strongest correlations in the
  constants' units (the paper showed sigma and C in Optuna's normalised space, and never the mean);
* an unusable LLM answer falls back to CMA-ES's own candidate and is recorded as such; so does a failed
  call, but three in a row stop the run (an outage should not quietly turn Centaur into CMA-ES; the count
  starts afresh when the model check at the start passes, else from the ledger), and a refused key or
  model stops it at once;
* failures reach CMA-ES as worst success + 0.05 (agent/methods/failure.py), not a fixed 100.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np

from agent.llm import LLMError, Message, ModelUnavailable
from agent.methods.base import (
    CentaurSettings,
    Config,
    Context,
    LLMSettings,
    Proposal,
    TaskFacts,
)
from agent.methods.cmaes_method import CMAES, CMAESState
from agent.methods.llm_base import client_for
from agent.methods.llm_fixed import parse_config
from agent.methods.prompts import (
    describe_space,
    format_config,
    format_value,
    history_section,
    json_answer_rules,
    task_section,
)
from agent.record import TrialRecord, first_run_with, has_constants
from agent.space import SearchSpace, SpaceError

FAILED_CALLS_TO_STOP = 3  # LLM calls failed in a row (each after the client's retries): the model is down
FAILED_CALL = "LLM call failed"  # how a fallback after a failed call begins its llm_error


class CentaurState(TypedDict):
    cma: CMAESState  # the search; whose turn a proposal is, the ledger says
    llm_calls: NotRequired[int]  # logged when the state was taken (absent in journals from before it was kept)


def failed_calls_in_a_row(records: list[TrialRecord]) -> int:
    """How many of the LLM's last turns in the ledger ended in a failed call."""
    count = 0
    for record in reversed(records):
        source = record.proposal_meta.get("source")
        if record.kind != "proposal" or source not in ("llm", "cmaes-fallback"):
            continue
        if not str(record.proposal_meta.get("llm_error", "")).startswith(FAILED_CALL):
            break
        count += 1
    return count


def is_llm_turn(index: int, ratio: Fraction) -> bool:
    """Whether the index-th proposal after warm-up (0-based) goes to the LLM; exact share `ratio`."""
    return index >= 0 and math.floor((index + 1) * ratio) > math.floor(index * ratio)


class Centaur:
    name = "centaur"
    fixed_space = True

    def __init__(self, space: SearchSpace, settings: CentaurSettings, llm: LLMSettings, task: TaskFacts,
                 run_dir: Path | None):
        self.space = space
        self.settings = settings
        self.llm = llm
        self.task = task
        self.ratio = Fraction(str(settings.ratio))
        self.cma = CMAES(space, settings.seed)
        self.client = client_for(llm, run_dir)
        self.failed_calls: int | None = None  # in a row; at FAILED_CALLS_TO_STOP the run stops. None: not yet
        # known, then read from the ledger (a resumed run whose model was not checked, a replay, goes on counting)

    def check_ready(self) -> None:
        if self.client.check_reachable():
            self.failed_calls = 0  # the model answers now: an earlier outage does not count against it

    def propose(self, ctx: Context) -> Proposal:
        # the ledger and the trials under way count, not a state
        made = sum(1 for record in ctx.records if record.kind == "proposal") + len(ctx.in_flight)
        if not is_llm_turn(made - self.settings.warmup, self.ratio):
            return self.labelled(self.cma.propose(ctx), "cmaes")
        candidate = self.cma.next_candidate()
        messages = self.prompt(ctx, candidate)
        if self.failed_calls is None:
            self.failed_calls = failed_calls_in_a_row(ctx.records)
        try:
            reply = self.client.complete(messages, purpose="propose", trial=ctx.trial)
        except LLMError as e:
            self.failed_calls += 1
            if e.refused or self.failed_calls >= FAILED_CALLS_TO_STOP:
                raise ModelUnavailable(e, ctx.trial) from None  # an outage or a refusal: stop, do not burn trials
            return self.labelled(self.cma.propose(ctx), "cmaes-fallback", llm_error=f"{FAILED_CALL}: {e}")
        self.failed_calls = 0
        try:
            cut_off = reply.cut_off()
            if cut_off:
                raise ValueError(cut_off)
            config = parse_config(reply.text, self.space, ctx.best.config)
            repeated = first_run_with(ctx.records, config)
            if repeated is not None:
                raise ValueError(f"the configuration repeats trial {repeated.trial}, which ran already")
            under_way = sorted(t for t, proposal in ctx.in_flight.items() if has_constants(proposal.config, config))
            if under_way:
                raise ValueError(f"the configuration repeats trial {under_way[0]}, which is under way")
            self.cma.replace_candidate(config)
        except (ValueError, SpaceError) as e:
            return self.labelled(self.cma.propose(ctx), "cmaes-fallback", llm_error=f"answer rejected: {e}",
                                 answer=reply.text)
        return self.labelled(self.cma.propose(ctx), "llm", answer=reply.text)

    def labelled(self, proposal: Proposal, source: str, **meta: str) -> Proposal:
        proposal.meta.update(source=source, **meta)
        proposal.description = f"centaur/{source}: {format_config(proposal.config)}"
        return proposal

    def cma_state_text(self, candidate: Config) -> str:
        cma = self.cma
        mean = cma.mean_config
        mean_unit = self.space.to_unit(mean)
        spread = np.sqrt(np.diag(cma.covariance))
        lines = [f"CMA-ES state (generation {cma.generation}, population {cma.population_size}, "
                 f"step size sigma {cma.sigma:.3g}; smaller sigma = a more focused search):",
                 "Mean and one-standard-deviation range of each constant:"]
        for i, param in enumerate(self.space.numeric):
            low = param.from_unit(float(np.clip(mean_unit[i] - spread[i], 0, 1)))
            high = param.from_unit(float(np.clip(mean_unit[i] + spread[i], 0, 1)))
            lines.append(f"- {param.name}: mean {format_value(mean[param.name])}, "
                         f"range {format_value(low)} to {format_value(high)}")
        for name, probabilities in cma.category_probabilities.items():
            lines.append(f"- {name}: " + ", ".join(f"{c} {p:.0%}" for c, p in probabilities.items()))
        correlations = cma.correlations(top=5)
        if correlations:
            lines.append("Strongest correlations between constants (positive: they rise together):")
            lines += [f"- {a} and {b}: {rho:+.2f}" for a, b, rho in correlations]
        lines.append("CMA-ES's own next candidate: " + format_config(candidate))
        return "\n".join(lines)

    def prompt(self, ctx: Context, candidate: Config) -> list[Message]:
        text = "\n\n".join([
            task_section(self.task),
            "Search space:\n" + describe_space(self.space),
            self.cma_state_text(candidate),
            history_section(ctx.records, self.llm.top_k, self.llm.last_n, in_flight=ctx.in_flight),
            *([memory] if (memory := ctx.memory()) else []),
            "Use the CMA-ES state as guidance: exploit near the mean when sigma is small, help it explore with "
            "your knowledge of transformer training when sigma is large, and steer away from regions that "
            "failed. Propose the next configuration. " + json_answer_rules(self.space),
        ])
        return [{"role": "system", "content": "You are an expert in tuning the training of small transformers, "
                 "working together with a CMA-ES optimizer."}, {"role": "user", "content": text}]

    def can_propose(self) -> bool:
        return self.cma.can_propose()

    def observe(self, record: TrialRecord) -> None:
        self.cma.observe(record)

    def state(self) -> CentaurState:
        return {"cma": self.cma.state(), "llm_calls": self.client.usage_totals()["calls"]}

    def restore(self, state: CentaurState) -> None:
        self.cma.restore(state["cma"])
        self.client.used_through(state.get("llm_calls"))
