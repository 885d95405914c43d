"""Search methods by name, each built from the run's settings with only the settings it needs.

Each method is one module behind the Method protocol in base.py, imported when chosen (optuna, cmaes
and litellm take seconds to import; `arena watch` should not wait for them). Adding a method: its
module, and one builder below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ArenaError
from agent.methods.base import (
    CentaurSettings,
    Context,
    LLMSettings,
    Method,
    ModelBacked,
    Paced,
    Proposal,
    Repairable,
    TaskFacts,
)
from agent.presets import get_preset
from agent.space import SearchSpace

if TYPE_CHECKING:  # the methods' own modules are imported when chosen (see above)
    from agent.methods.centaur import CentaurState
    from agent.methods.cmaes_method import CMAESState
    from agent.methods.llm_base import ConversationState
    from agent.methods.tpe import TPEState
    from agent.run import RunSettings

Builder = Callable[["RunSettings", SearchSpace, "Path | None"], Method[Any]]


def llm_settings(settings: RunSettings) -> LLMSettings:
    if not settings.model:
        raise ArenaError(f"method '{settings.method}' needs a model: pass --model (e.g. ollama_chat/qwen3:8b, "
                         "or openai/NAME with --api-base http://host:port/v1)")
    replay = Path(settings.llm_replay).expanduser() / "llm.jsonl" if settings.llm_replay else None
    if replay is not None and not replay.exists():
        raise ArenaError(f"--llm-replay {settings.llm_replay} has no llm.jsonl; point it at a run directory")
    return LLMSettings(settings.model, api_base=settings.api_base, temperature=settings.temperature,
                       max_tokens=settings.max_tokens, timeout=settings.llm_timeout, retries=settings.llm_retries,
                       replay=replay, top_k=settings.top_k, last_n=settings.last_n)


def task_facts(settings: RunSettings) -> TaskFacts:
    """Budget, device and memory in words, for prompts."""
    preset = get_preset(settings.preset, time_budget=settings.budget, eval_tokens=settings.eval_tokens)
    gpu = preset.device.startswith("cuda")
    if settings.backend == "docker" and settings.mem_limit:
        memory = f"the trial container is limited to {settings.mem_limit} of RAM"
    elif gpu:
        memory = "the GPU's memory; out-of-memory errors end the trial"
    else:
        memory = "the machine's RAM"
    return TaskFacts(preset.time_budget, "one NVIDIA GPU" if gpu else "CPU cores", memory)


def _random(settings: RunSettings, space: SearchSpace, run_dir: Path | None) -> Method[None]:
    from agent.methods.random_search import RandomSearch
    return RandomSearch(space, settings.seed)


def _tpe(settings: RunSettings, space: SearchSpace, run_dir: Path | None) -> Method[TPEState]:
    from agent.methods.tpe import TPE
    return TPE(space, settings.seed, run_dir)


def _cmaes(settings: RunSettings, space: SearchSpace, run_dir: Path | None) -> Method[CMAESState]:
    from agent.methods.cmaes_method import CMAES
    return CMAES(space, settings.seed)


def _centaur(settings: RunSettings, space: SearchSpace, run_dir: Path | None) -> Method[CentaurState]:
    from agent.methods.centaur import Centaur
    if not 0 <= settings.llm_ratio <= 1:
        raise ArenaError(f"--llm-ratio must be between 0 and 1, got {settings.llm_ratio}")
    return Centaur(space, CentaurSettings(settings.seed, settings.llm_ratio, settings.llm_warmup),
                   llm_settings(settings), task_facts(settings), run_dir)


def _llm(settings: RunSettings, space: SearchSpace, run_dir: Path | None) -> Method[ConversationState]:
    from agent.methods.llm_fixed import LLMFixedSpace
    return LLMFixedSpace(space, llm_settings(settings), task_facts(settings), run_dir)


def _code(settings: RunSettings, space: SearchSpace, run_dir: Path | None) -> Method[ConversationState]:
    from agent.methods.code_agent import CodeAgent
    return CodeAgent(llm_settings(settings), task_facts(settings), run_dir)


METHODS: dict[str, Builder] = {"random": _random, "tpe": _tpe, "cmaes": _cmaes, "centaur": _centaur, "llm": _llm,
                               "code": _code}
# the methods whose `fixed_space` is False (known here without importing them; the conformance suite checks it)
CODE_EDITING_METHODS = frozenset({"code"})


def make_method(settings: RunSettings, space: SearchSpace, run_dir: Path | None) -> Method[Any]:
    """The method a run's settings name. `run_dir` is None for a dry check before the run exists."""
    if settings.method not in METHODS:
        raise ArenaError(f"unknown method '{settings.method}'; choose one of: {', '.join(METHODS)}")
    return METHODS[settings.method](settings, space, run_dir)


__all__ = ["CODE_EDITING_METHODS", "METHODS", "Context", "Method", "ModelBacked", "Paced", "Proposal",
           "Repairable", "make_method"]
