"""Search methods by name. Each is one module behind the Method protocol in base.py."""

from __future__ import annotations

from pathlib import Path

from agent.errors import ArenaError
from agent.methods.base import Context, Method, Proposal
from agent.methods.centaur import Centaur
from agent.methods.cmaes_method import CMAES
from agent.methods.code_agent import CodeAgent
from agent.methods.llm_fixed import LLMFixedSpace
from agent.methods.random_search import RandomSearch
from agent.methods.tpe import TPE
from agent.space import SearchSpace

METHODS = {"random": RandomSearch, "tpe": TPE, "cmaes": CMAES, "llm": LLMFixedSpace, "code": CodeAgent,
           "centaur": Centaur}


def make_method(settings, space: SearchSpace, run_dir: Path | None) -> Method:
    """The method a run's settings name. `run_dir` is None for a dry check before the run exists."""
    if settings.method not in METHODS:
        raise ArenaError(f"unknown method '{settings.method}'; choose one of: {', '.join(METHODS)}")
    return METHODS[settings.method](space, settings, run_dir)


__all__ = ["METHODS", "Context", "Method", "Proposal", "make_method"]
