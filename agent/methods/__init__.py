"""Search methods by name. Each is one module behind the Method protocol in base.py."""

from __future__ import annotations

from agent.errors import ArenaError
from agent.methods.base import Context, Method, Proposal
from agent.methods.random_search import RandomSearch
from agent.space import SearchSpace

METHODS = {"random": RandomSearch}


def make_method(name: str, space: SearchSpace, seed: int) -> Method:
    if name not in METHODS:
        raise ArenaError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name](space, seed)


__all__ = ["METHODS", "Context", "Method", "Proposal", "make_method"]
