"""What LLM methods share: one client per run, the task text, and turning failures into recorded reasons."""

from __future__ import annotations

from pathlib import Path
from typing import NotRequired, TypedDict

from agent.llm import LLMClient, LLMError, Message, ModelUnavailable
from agent.methods.base import Context, LLMSettings, Proposal, TaskFacts
from agent.record import TrialRecord

SHOWN_CHARS = 2000  # of an answer cut off or too long, what a repair shows the model of it
REJECTED = "answer rejected: "  # how an unusable answer's reason begins in the ledger
LONGEST_SHOWN = 24_000  # an answer longer than this is shown by its start too (a whole train.py is ~20,000)


def shown(answer: str, cut_off: bool) -> str:
    """The answer as a repair shows it to the model: whole, or, cut off or too long, its start."""
    if not cut_off and len(answer) <= LONGEST_SHOWN:
        return answer
    return answer[:SHOWN_CHARS] + f"\n[... {len(answer) - SHOWN_CHARS:,} more characters not shown ...]"


class ConversationState(TypedDict):
    conversation: list[Message]
    llm_calls: NotRequired[int]  # logged when the state was taken (absent in journals from before it was kept)


def client_for(llm: LLMSettings, run_dir: Path | None) -> LLMClient:
    """The run's LLM client; every call is logged to llm.jsonl and streamed to state/llm_stream.txt."""
    return LLMClient(llm.model, api_base=llm.api_base, temperature=llm.temperature, max_tokens=llm.max_tokens,
                     timeout=llm.timeout, retries=llm.retries, log_path=run_dir / "llm.jsonl" if run_dir else None,
                     stream_path=run_dir / "state" / "llm_stream.txt" if run_dir else None, replay_from=llm.replay)


class ConversationMethod:
    """An LLM method that asks once per trial and, when the answer is rejected, asks again with the reason:
    the first prompt, the rejected answer and a repair note, so that no repair asks for more context than
    the one before it (an answer cut off or too long is shown by its start). Subclasses give the prompt,
    the parser and the repair note."""
    name = "llm-base"

    def __init__(self, llm: LLMSettings, task: TaskFacts, run_dir: Path | None):
        self.llm = llm
        self.task = task
        self.client = client_for(llm, run_dir)
        self.conversation: list[Message] = []  # the current trial's prompt and last answer, for repairs

    def prompt(self, ctx: Context) -> list[Message]:
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
        note = self.repair_note(reason.removeprefix(REJECTED))  # the note says it was rejected
        return self.ask(self.conversation + [{"role": "user", "content": note}], trial, "repair")

    def ask(self, messages: list[Message], trial: int, purpose: str) -> Proposal:
        """The model's proposal. A call that fails (after the client's retries) stops the run: an outage is
        no trial. An answer that cannot be used is a proposal marked invalid, which a repair may fix; so is
        a repair whose conversation no longer fits the model's context."""
        try:
            reply = self.client.complete(messages, purpose=purpose, trial=trial)
        except LLMError as e:
            if e.too_long and purpose == "repair":
                return Proposal(f"{self.name}: unusable answer", invalid=f"answer rejected, and its repair did not "
                                f"fit the model's context ({e})")
            raise ModelUnavailable(e, trial) from None
        cut_off = reply.cut_off()
        first_prompt = messages if purpose == "propose" else self.conversation[:-1]
        self.conversation = first_prompt + [{"role": "assistant", "content": shown(reply.text, cut_off is not None)}]
        try:
            if cut_off:
                raise ValueError(cut_off)
            return self.parse(reply.text)
        except ValueError as e:
            return Proposal(f"{self.name}: unusable answer", invalid=f"{REJECTED}{e}",
                            meta={"answer": reply.text})

    def observe(self, record: TrialRecord) -> None:
        pass  # the ledger is the memory: the history is shown afresh at each proposal

    def state(self) -> ConversationState:
        return {"conversation": self.conversation, "llm_calls": self.client.usage_totals()["calls"]}

    def restore(self, state: ConversationState) -> None:
        self.conversation = state["conversation"]
        self.client.used_through(state.get("llm_calls"))
