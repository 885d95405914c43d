from __future__ import annotations

import pytest

from agent.constants import (
    ConstantsError,
    parse_constants,
    read_constants,
    render_constants,
)
from agent.presets import load_presets
from agent.template import template_dir

TEMPLATE = (template_dir() / "train.py").read_text()
PAPER_NAMES = ["DEPTH", "ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE",
               "EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY", "WARMUP_RATIO",
               "WARMDOWN_RATIO", "FINAL_LR_FRAC"]


def test_template_block_holds_the_papers_fourteen_constants():
    values = read_constants(TEMPLATE)
    assert list(values) == PAPER_NAMES
    assert values["TOTAL_BATCH_SIZE"] == 2**19 and values["WINDOW_PATTERN"] == "SSSL"


def test_rendering_the_same_values_is_byte_identical():
    assert render_constants(TEMPLATE, read_constants(TEMPLATE)) == TEMPLATE


def test_round_trip_with_new_values_changes_only_those_values():
    new = {"DEPTH": 12, "MATRIX_LR": 0.0123456789, "WINDOW_PATTERN": "SLSL", "TOTAL_BATCH_SIZE": 2**17,
           "WARMUP_RATIO": 0.05}
    rendered = render_constants(TEMPLATE, new)
    assert read_constants(rendered) == {**read_constants(TEMPLATE), **new}
    assert "TOTAL_BATCH_SIZE = 2**17" in rendered  # powers of two keep their readable form
    old_lines, new_lines = TEMPLATE.splitlines(), rendered.splitlines()
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
    assert len(old_lines) == len(new_lines) and len(changed) == len(new)
    for i in changed:  # comments survive, in their column where the value leaves room
        assert old_lines[i].index("#") == new_lines[i].index("#") or len(new_lines[i]) > len(old_lines[i])
    assert render_constants(rendered, read_constants(TEMPLATE)) == TEMPLATE


def test_every_preset_renders_into_the_template():
    for preset in load_presets().values():
        assert set(preset.constants) == set(PAPER_NAMES)
        assert read_constants(render_constants(TEMPLATE, preset.constants)) == preset.constants


def test_positions_point_at_the_values():
    lines = TEMPLATE.splitlines()
    for const in parse_constants(TEMPLATE):
        assert lines[const.line][const.start:const.end] in (repr(const.value), "2**19", '"SSSL"', str(const.value))


@pytest.mark.parametrize("source, message", [
    ("DEPTH = 8\n", "exactly one constants block"),
    ("# ==== ARENA CONSTANTS BEGIN\nDEPTH = 8\n", "exactly one constants block"),
    ("# ==== ARENA CONSTANTS BEGIN\nDEPTH = int('8')\n# ==== ARENA CONSTANTS END\n", "line 2"),
    ("# ==== ARENA CONSTANTS BEGIN\nDEPTH = \n# ==== ARENA CONSTANTS END\n", "malformed"),
    ("# ==== ARENA CONSTANTS BEGIN\nDEPTH = 8\nDEPTH = 9\n# ==== ARENA CONSTANTS END\n", "set twice"),
    ("# ==== ARENA CONSTANTS BEGIN\nA, B = 1, 2\n# ==== ARENA CONSTANTS END\n", "NAME = literal"),
])
def test_malformed_blocks_are_one_line_errors(source, message):
    with pytest.raises(ConstantsError) as err:
        parse_constants(source)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_constant_is_refused():
    with pytest.raises(ConstantsError, match="no DROPOUT"):
        render_constants(TEMPLATE, {"DROPOUT": 0.1})
