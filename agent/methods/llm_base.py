"""What LLM methods share: one client per run, the task text, and turning failures into recorded reasons."""

from __future__ import annotations

from pathlib import Path

from agent.errors import ArenaError
from agent.llm import LLMClient, LLMError, ModelUnavailable
from agent.methods.base import Context, Proposal
from agent.presets import get_preset
from agent.record import TrialRecord


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


class ConversationMethod:
    """An LLM method that asks once per trial and, when the answer is rejected, continues the same
    conversation with the reason. Subclasses give the prompt, the parser and the repair note."""
    name = "llm-base"

    def __init__(self, settings, run_dir: Path | None):
        self.settings = settings
        self.client = client_for(settings, run_dir, self.name)
        self.facts = task_facts(settings)
        self.conversation: list[dict] = []  # the current trial's exchange, for repairs

    def prompt(self, ctx: Context) -> list[dict]:
        raise NotImplementedError

    def parse(self, text: str) -> Proposal:
        """The proposal in an answer; raises ValueError saying what is wrong with it."""
        raise NotImplementedError

    def repair_note(self, reason: str) -> str:
        raise NotImplementedError

    def check_ready(self) -> None:
        self.client.check_reachable()

    def propose(self, ctx: Context) -> Proposal:
        return self.ask(self.prompt(ctx), ctx.trial, "propose")

    def repair(self, proposal: Proposal, reason: str, trial: int) -> Proposal:
        return self.ask(self.conversation + [{"role": "user", "content": self.repair_note(reason)}], trial, "repair")

    def ask(self, messages: list[dict], trial: int, purpose: str) -> Proposal:
        """The model's proposal. A call that fails (after the client's retries) stops the run: an outage is
        no trial. An answer that cannot be used is a proposal marked invalid, which a repair may fix."""
        try:
            reply = self.client.complete(messages, purpose=purpose, trial=trial)
        except LLMError as e:
            raise ModelUnavailable(e, trial) from None
        self.conversation = messages + [{"role": "assistant", "content": reply.text}]
        try:
            cut_off = reply.cut_off(self.settings.max_tokens)
            if cut_off:
                raise ValueError(cut_off)
            return self.parse(reply.text)
        except ValueError as e:
            return Proposal(f"{self.name}: unusable answer", meta={"invalid": f"answer rejected: {e}",
                                                                 "answer": reply.text})

    def observe(self, record: TrialRecord) -> None:
        pass  # the ledger is the memory: the history is shown afresh at each proposal

    def state(self) -> object:
        return {"conversation": self.conversation}

    def restore(self, state: object) -> None:
        self.conversation = state["conversation"]
