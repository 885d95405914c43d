"""What LLM methods share: one client per run, the task text, and turning failures into recorded reasons."""

from __future__ import annotations

from pathlib import Path

from agent.errors import ArenaError
from agent.llm import LLMClient
from agent.presets import get_preset


def client_for(settings, run_dir: Path | None, method: str) -> LLMClient:
    """The run's LLM client; every call is logged to llm.jsonl and streamed to state/llm_stream.txt."""
    if not settings.model:
        raise ArenaError(f"method '{method}' needs a model: pass --model (e.g. ollama_chat/qwen3:8b, or "
                         "openai/NAME with --api-base http://host:port/v1)")
    replay = Path(settings.llm_replay).expanduser() / "llm.jsonl" if settings.llm_replay else None
    if replay is not None and not replay.exists():
        raise ArenaError(f"--llm-replay {settings.llm_replay} has no llm.jsonl; point it at a run directory")
    return LLMClient(settings.model, api_base=settings.api_base, temperature=settings.temperature,
                     max_tokens=settings.max_tokens, timeout=settings.llm_timeout, retries=settings.llm_retries,
                     log_path=run_dir / "llm.jsonl" if run_dir else None,
                     stream_path=run_dir / "state" / "llm_stream.txt" if run_dir else None,
                     replay_from=replay)


def task_facts(settings) -> dict[str, str]:
    """Budget, device and memory in words, for prompts."""
    preset = get_preset(settings.preset, time_budget=settings.budget, eval_tokens=settings.eval_tokens)
    device = "one NVIDIA GPU" if preset.device.startswith("cuda") else "CPU cores"
    if settings.backend == "docker" and settings.mem_limit:
        memory = f"the trial container is limited to {settings.mem_limit} of RAM"
    elif preset.device.startswith("cuda"):
        memory = "the GPU's memory; out-of-memory errors end the trial"
    else:
        memory = "the machine's RAM"
    return {"time_budget": f"{preset.time_budget:g}", "device": device, "memory": memory}
