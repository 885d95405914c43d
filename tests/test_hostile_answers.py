"""Answers written to break arena itself rather than to improve train.py (a red team's): each is read in time
linear in its size, refused with a reason, or kept as text every file and terminal can hold. The same answers
run through the real loop in tests/test_llm_methods.py."""

from __future__ import annotations

import pytest

from agent.edits import edited_source, elided_line, search_replace_blocks
from agent.ledger import Ledger
from agent.llm import MAX_ANSWER_CHARS, describe, json_objects
from agent.methods.base import Proposal
from agent.patches import PatchError, apply_diff, diff_stats
from agent.record import TrialRecord
from sandbox.outcome import Status
from tests.test_llm import raised_within

SOURCE = "x = 1\n"
# far above the microseconds these take now, and far below the minutes to hours they took: a hang fails, a busy
# machine does not
DEADLINE = 60


def within_deadline(work) -> object:
    """work(), which must end within DEADLINE seconds; its result."""
    result: list[object] = []
    raised = raised_within(lambda: result.append(work()), DEADLINE)
    assert raised is None, raised
    return result[0]


def refusal(work) -> str:
    raised = raised_within(work, DEADLINE)
    assert isinstance(raised, ValueError), f"the answer was not refused: {raised!r}"
    return str(raised)


def test_unclosed_search_blocks_of_the_largest_answer_are_read_in_one_pass():
    answer = ("<<<<<<< SEARCH\n=======\n" * MAX_ANSWER_CHARS)[:MAX_ANSWER_CHARS]  # took hours with a regex
    assert "not complete" in refusal(lambda: edited_source(answer, SOURCE))


def test_search_replace_blocks_are_read_as_written():
    answer = ("prose\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n"
              "<<<<<<< SEARCH\n=======\n======= \n>>>>>>> REPLACE")
    assert search_replace_blocks(answer) == [("x = 1\n", "x = 2\n", 6), ("", "======= \n", 57)]
    assert edited_source(answer.split("<<<<<<< SEARCH\n=======")[0], SOURCE) == ("x = 2\n", 6)


@pytest.mark.parametrize("line", ["#" + " " * (MAX_ANSWER_CHARS - 2) + "x", "# (" + " " * MAX_ANSWER_CHARS + "x"])
def test_a_line_of_blanks_is_no_elision_and_is_read_in_time(line):
    assert within_deadline(lambda: elided_line(f"+{line}\n", SOURCE)) is None


def test_a_description_of_blanks_is_read_in_time():
    assert within_deadline(lambda: describe("ok" + " " * MAX_ANSWER_CHARS + "x", "", "")).startswith("ok")


def test_json_nested_past_the_limit_behind_a_stray_quote_is_refused():
    answer = '"{"diff": "x", "WARMDOWN_RATIO": ' + "[" * 900 + "]" * 900 + "}"
    assert "deep" in refusal(lambda: json_objects(answer))


def test_a_hunk_count_of_thousands_of_digits_is_a_patch_error():
    diff = "--- a/train.py\n+++ b/train.py\n@@ -" + "9" * 5000 + " +1 @@\n-x = 1\n+x = 2\n"
    with pytest.raises(PatchError, match="cannot be parsed .a hunk header holds a number of thousands of digits"):
        apply_diff(SOURCE, diff)
    assert diff_stats(diff) is None


def test_a_description_is_one_printable_line_and_a_diff_holds_no_lone_surrogate():
    proposal = Proposal("nul\0 esc\x1b]0;title\x07\nnext line\u2028sep \ud800", diff="+x = '\ud800'\n")
    assert proposal.description == "nul\ufffd esc\ufffd]0;title\ufffd next line sep \ufffd"
    assert proposal.diff == "+x = '\ufffd'\n"
    assert len(Proposal("a" * 500).description) == 200


def test_the_ledger_keeps_a_configs_order(tmp_path):
    """A resumed run reads its records back: a config in the constants block's order, not sorted, so that its
    prompts are an uninterrupted run's."""
    config = {"DEPTH": 3, "ASPECT_RATIO": 32, "HEAD_DIM": 32}
    (tmp_path / "ledger.jsonl").touch()
    ledger = Ledger.read(tmp_path / "ledger.jsonl")
    ledger.append(TrialRecord(trial=0, kind="baseline", method="baseline", description="baseline",
                              status=Status.OK, val_bpb=3.0, config=config))
    assert list(Ledger.read(tmp_path / "ledger.jsonl").records[0].config) == list(config)
