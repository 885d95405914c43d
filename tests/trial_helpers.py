"""Building and running single trials on a backend, for the sandbox tests."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

from agent.constants import render_constants
from agent.presets import get_preset
from agent.template import HARNESS_FILES, harness_hash, template_dir
from sandbox import Backend, BudgetRule, Outcome, TrialSpec

EVAL_TOKENS = 4096  # 16 rows: enough to score, quick to run
TINY_MODEL = """
import time

import torch
from torch import nn


class Uniform(nn.Module):  # zero logits for every token: exported and scored in seconds
    def __init__(self, vocab):
        super().__init__()
        self.logits = nn.Embedding(vocab, vocab)
        nn.init.zeros_(self.logits.weight)

    def forward(self, idx):
        return self.logits(idx)
"""
# seconds a trial may spend outside its budget (start-up, compile, export) before it is over budget: generous,
# as run_helpers.FAST's --startup-allowance, so that a busy machine makes a trial slower, not over budget
CAP = 300.0


def cpu_template() -> str:
    return render_constants((template_dir() / "train.py").read_text(), get_preset("cpu").constants)


def with_train(body: str, prelude: str = "") -> str:
    """The cpu template, then `prelude` at module level, then a train(ctx) whose body is `body`; the
    template's own train stays callable as _template_train(ctx)."""
    template = cpu_template()
    assert "\ndef train(ctx" in template, "the template has no train(ctx) for _template_train to keep"
    return (template + "\n\n_template_train = train\n\n" + textwrap.dedent(prelude) +
            "\n\ndef train(ctx):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n")


def tiny_train(body: str) -> str:
    """A train.py without the template: TINY_MODEL, then a train(ctx) whose body is `body`."""
    return TINY_MODEL + "\n\ndef train(ctx):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n"


def make_spec(data_dir: Path, source: str, budget: float = 2.0, cap: float = CAP,
              reference: tuple[float, float] | None = None, export_grace: float = 60.0,
              compile_cache: Path | None = None, trusted: bool = False, seed: int = 42) -> TrialSpec:
    preset = get_preset("cpu", time_budget=budget, eval_tokens=EVAL_TOKENS)
    return TrialSpec(source=source, data_dir=data_dir, harness_dir=template_dir(), harness_files=HARNESS_FILES,
                     harness_hash=harness_hash(), config=preset.harness_config(seed),
                     budget=BudgetRule(budget, cap, reference), eval_timeout=120, export_grace=export_grace,
                     compile_cache=compile_cache, trusted=trusted)


def run(backend: Backend, spec: TrialSpec) -> tuple[Outcome, str]:
    """(outcome, everything the trial printed, both phases)."""
    lines: list[str] = []
    outcome = backend.run(spec, lines.append)
    return outcome, "".join(lines)


def tree_digest(*roots: Path) -> dict[str, str]:
    """Every file under `roots` with its content hash, to show that nothing there changed."""
    digest = {}
    for root in roots:
        assert Path(root).is_dir(), f"{root} is not a directory: its digest would be empty and prove nothing"
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and not path.is_symlink():
                digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest
