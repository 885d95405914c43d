"""Search methods by name. Each is one module behind the Method protocol in base.py, imported when
chosen (optuna, cmaes and litellm take seconds to import; `arena watch` should not wait for them)."""

from __future__ import annotations

import importlib
from pathlib import Path

from agent.errors import ArenaError
from agent.methods.base import Context, Method, Proposal
from agent.space import SearchSpace

METHODS = {
    "random": "agent.methods.random_search:RandomSearch",
    "tpe": "agent.methods.tpe:TPE",
    "cmaes": "agent.methods.cmaes_method:CMAES",
    "centaur": "agent.methods.centaur:Centaur",
    "llm": "agent.methods.llm_fixed:LLMFixedSpace",
    "code": "agent.methods.code_agent:CodeAgent",
}


def make_method(settings, space: SearchSpace, run_dir: Path | None) -> Method:
    """The method a run's settings name. `run_dir` is None for a dry check before the run exists."""
    if settings.method not in METHODS:
        raise ArenaError(f"unknown method '{settings.method}'; choose one of: {', '.join(METHODS)}")
    module, _, cls = METHODS[settings.method].partition(":")
    return getattr(importlib.import_module(module), cls)(space, settings, run_dir)


__all__ = ["METHODS", "Context", "Method", "Proposal", "make_method"]
