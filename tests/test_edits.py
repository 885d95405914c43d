"""Answers that are not diffs: search/replace blocks and whole files, as small local models write them, read by
the code agent into a diff that applies to the train.py it showed."""

from __future__ import annotations

import pytest

from agent.constants import render_constants
from agent.edits import edited_source
from agent.patches import apply_diff
from agent.presets import get_preset
from agent.template import template_dir
from tests.llm_server import ScriptedLLMServer

SOURCE = render_constants((template_dir() / "train.py").read_text(), get_preset("cpu").constants)
REPEATED = next(line for line in SOURCE.splitlines(keepends=True) if line.strip()
                and SOURCE.splitlines(keepends=True).count(line) > 1)


def search_replace(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def test_search_replace_blocks_apply_in_order():
    answer = ("Longer warmdown, and wider attention.\n```python\n"
              + search_replace("WARMDOWN_RATIO = 0.5\n", "WARMDOWN_RATIO = 0.6\n")  # its comment left out
              + search_replace("ADAM_BETAS = (0.8, 0.95)  \n", "ADAM_BETAS = (0.85, 0.95)\n")  # trailing spaces
              + "```\n")
    edited, start = edited_source(answer, SOURCE)
    assert edited == SOURCE.replace("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6").replace(
        "ADAM_BETAS = (0.8, 0.95)", "ADAM_BETAS = (0.85, 0.95)")
    assert start == answer.index("<<<<<<<")  # the prose before the first block describes the change


def test_a_search_text_matches_from_the_start_of_a_line_only():
    """`SIZE = 2**12` is the end of TOTAL_BATCH_SIZE's line, not a line of its own: refused, not spliced in."""
    assert "\nTOTAL_BATCH_SIZE = 2**12  #" in SOURCE
    with pytest.raises(ValueError, match="is not in train.py"):
        edited_source(search_replace("SIZE = 2**12\n", "TOTAL_BATCH_SIZE = 2**13\n"), SOURCE)
    edited, _ = edited_source(search_replace("TOTAL_BATCH_SIZE = 2**12\n", "TOTAL_BATCH_SIZE = 2**13\n"), SOURCE)
    assert "\nTOTAL_BATCH_SIZE = 2**13  #" in edited


@pytest.mark.parametrize("search, reason", [
    ("WARMDOWN_RATIO = 0.7\n", "block 1 (starting 'WARMDOWN_RATIO = 0.7') is not in train.py"),
    ("\n", "searches for nothing"),
    (REPEATED, "is not in train.py, or is there more than once"),
])
def test_a_search_text_that_is_not_there_once_is_refused_with_its_block(search, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        edited_source(search_replace(search, "X = 1\n"), SOURCE)


def test_a_whole_file_in_a_code_block_is_the_new_source():
    new = SOURCE.replace("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6")
    answer = f"Here is the full file:\n```python\n{new}```\nDone."
    assert edited_source(answer, SOURCE) == (new, answer.index("```"))
    snippet = "```python\ndef train(ctx):\n    pass\n```"  # a fragment, not train.py: no answer of this kind
    assert edited_source(snippet, SOURCE) is None


def test_the_code_agent_turns_them_into_diffs_against_the_train_py_it_showed(tmp_path):
    from tests.test_llm_methods import context, llm_method

    whole = SOURCE.replace("lm_head.weight, std=0.001", "lm_head.weight, std=0.002")
    with ScriptedLLMServer() as server:
        server.script("<think>maybe</think>Longer warmdown.\n" + search_replace("WARMDOWN_RATIO = 0.5\n",
                                                                                "WARMDOWN_RATIO = 0.6\n"),
                      f"```python\n{whole}```", f"```python\n{SOURCE}```")
        agent = llm_method(server, tmp_path, "code")
        ctx = context()
        blocks, rewrite, same = (agent.propose(ctx) for _ in range(3))
    assert blocks.description == "Longer warmdown." and "WARMDOWN_RATIO = 0.6" in apply_diff(SOURCE, blocks.diff)
    assert rewrite.description.startswith("edit: ") and "std=0.002" in rewrite.description  # no prose: its edit
    assert apply_diff(SOURCE, rewrite.diff) == whole
    assert "is the one it was shown" in same.invalid
    agent.restore(agent.state())  # a resumed agent still knows the train.py its prompt showed
    assert agent.source == SOURCE


def test_an_answer_that_leaves_code_out_is_refused_however_it_is_written(tmp_path):
    """A whole file, a replacement or a diff with '# ... rest unchanged ...' (or a bare '...') in place of code
    would delete that code: the model is told what stands for left-out lines, not handed a crash later."""
    from tests.test_llm_methods import context, llm_method

    lines = SOURCE.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("def train(ctx"))
    shortened = "".join(lines[:start + 1]) + "    # ... rest of train() unchanged ...\n"
    assert "ARENA CONSTANTS END" in shortened
    diff = ("--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,2 @@\n"
            + "".join(" " + line for line in lines[:1]) + "-" + lines[1] + "-" + lines[2] + "+...\n")
    with ScriptedLLMServer() as server:
        server.script(f"Shorter.\n```python\n{shortened}```",
                      "Shorter.\n" + search_replace(lines[start], lines[start] + "    # existing code\n"),
                      f"Shorter.\n```diff\n{diff}```")
        agent = llm_method(server, tmp_path, "code")
        refused = [agent.propose(context()) for _ in range(3)]
    assert [p.invalid.split(" stands for")[0] for p in refused] == [
        "answer rejected: the change leaves code out ('# ... rest of train() unchanged ...'",
        "answer rejected: the change leaves code out ('# existing code'",
        "answer rejected: the change leaves code out ('...'"]


def test_a_search_replace_block_left_open_says_so():
    """Alone, or after whole blocks (an answer cut off in its second block would apply only its first)."""
    left_open = "<<<<<<< SEARCH\nWARMDOWN_RATIO = 0.5\n=======\nWARMDOWN_RATIO = 0.6\n"
    whole = search_replace("WARMUP_RATIO = 0.0\n", "WARMUP_RATIO = 0.1\n")
    for answer in (left_open, whole + left_open):
        with pytest.raises(ValueError, match="a search/replace block is not complete"):
            edited_source(answer, SOURCE)


@pytest.mark.parametrize("comment", ["# keep the learning rate unchanged", "# the rest of the blocks use GELU",
                                     "# weights as before", "# reuse the existing buffers"])
def test_a_comment_that_only_mentions_the_rest_is_no_elision(comment):
    from agent.edits import elided_line

    assert elided_line(f"+    {comment}\n", SOURCE) is None
