from __future__ import annotations

import random
import re

import numpy as np
import pytest

from agent.constants import read_constants, render_constants
from agent.patches import (
    InvalidPatch,
    PatchError,
    PatchRejected,
    apply_diff,
    check_train_py,
    config_diff,
    diff_stats,
    make_diff,
    render_config,
)
from agent.space import load_space
from agent.template import template_dir

TEMPLATE = (template_dir() / "train.py").read_text()

# A small train.py-shaped file whose every line the tests control.
SOURCE = '''"""A toy train.py."""

# ==== ARENA CONSTANTS BEGIN
DEPTH = 8                 # layers
MATRIX_LR = 0.04          # Muon
WINDOW_PATTERN = "SSSL"
# ==== ARENA CONSTANTS END ====

import math


def schedule(progress):
    if progress < 0.5:
        return 1.0
    return 1.0 - progress


class Model:
    def __init__(self, width):
        self.width = width
        self.scale = 1.0

    def forward(self, x):
        y = x * self.scale
        return y


def evaluate(model):
    total = 0.0
    for step in range(10):
        total += model.forward(step)
    return total


def evaluate_again(model):
    total = 0.0
    for step in range(10):
        total += model.forward(step)
    return total
'''


def replaced(text: str, old: str, new: str, count: int = 1) -> str:
    assert text.count(old) == count, old
    return text.replace(old, new)


def line_number(text: str, prefix: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if line.startswith(prefix))


SCALED = replaced(SOURCE, "self.scale = 1.0", "self.scale = 2.0")
TWO_CHANGES = replaced(SCALED, "def evaluate_again(model):\n    total = 0.0",
                       "def evaluate_again(model):\n    total = 1.0")


# ---------------------------------------------------------------------------- making and applying

def test_make_diff_has_train_py_headers_and_is_empty_without_change():
    diff = make_diff(SOURCE, SCALED)
    assert diff.startswith("--- a/train.py\n+++ b/train.py\n@@ -18,7 +18,7 @@")
    assert "-        self.scale = 1.0\n+        self.scale = 2.0\n" in diff
    assert make_diff(SOURCE, SOURCE) == ""
    assert make_diff(SOURCE, SCALED, path="other.py").startswith("--- a/other.py\n+++ b/other.py\n")


def test_exact_application():
    assert apply_diff(SOURCE, make_diff(SOURCE, TWO_CHANGES)) == TWO_CHANGES


def test_hunks_apply_at_an_offset():
    diff = make_diff(SOURCE, TWO_CHANGES)
    prefix = "# seven new lines\n" * 7
    assert apply_diff(prefix + SOURCE, diff) == prefix + TWO_CHANGES
    shifted = re.sub(r"^@@ -(\d+),(\d+) \+(\d+)", lambda m: f"@@ -{int(m[1]) + 40},{m[2]} +{m[3]}", diff,
                     flags=re.MULTILINE)
    assert apply_diff(SOURCE, shifted) == TWO_CHANGES


def test_the_occurrence_nearest_the_stated_line_wins():
    # the hunk's old lines occur in both evaluate functions; the header tells which one is meant
    new = SOURCE[:SOURCE.rindex("    return total")] + "    return total / 10\n"
    diff = "--- a/train.py\n+++ b/train.py\n@@ -38,3 +38,3 @@\n     for step in range(10):\n" \
           "         total += model.forward(step)\n-    return total\n+    return total / 10\n"
    assert apply_diff(SOURCE, diff) == new
    first = replaced(diff, "@@ -38,3 +38,3 @@", "@@ -30,3 +30,3 @@")
    assert apply_diff(SOURCE, first) == replaced(SOURCE, "    return total\n\n\n", "    return total / 10\n\n\n")


def test_a_hunk_found_in_several_places_far_from_its_header_is_refused():
    """Where the old lines occur twice and the header's line is near neither (models guess line numbers: the
    prompt has none), the nearest is a coin toss: the model is asked for more context instead."""
    diff = "--- a/train.py\n+++ b/train.py\n@@ -{},3 +{},3 @@\n     for step in range(10):\n" \
           "         total += model.forward(step)\n-    return total\n+    return total / 10\n"
    places = [i + 1 for i, line in enumerate(SOURCE.splitlines()) if line == "    for step in range(10):"]
    assert len(places) == 2
    for header in (1, 15):
        with pytest.raises(PatchError, match=f"at lines {places[0]}, {places[1]}, and its header's line"):
            apply_diff(SOURCE, diff.format(header, header))
    assert apply_diff(SOURCE, diff.format(places[1] + 5, places[1] + 5)).count("return total / 10") == 1


def test_an_unindented_context_line_that_lost_its_leading_space_is_context():
    """`def evaluate_again(model):` written without the space a context line starts with: a line of the file,
    so context, not the end of the hunk (which dropped the change after it)."""
    diff = make_diff(SOURCE, TWO_CHANGES).replace("\n def evaluate_again(model):", "\ndef evaluate_again(model):")
    assert "\ndef evaluate_again(model):" in diff
    assert apply_diff(SOURCE, diff) == TWO_CHANGES


def test_a_hunk_whose_only_context_is_blank_lines_applies():
    """make_diff writes a blank context line as ' ': it is context, not a separator after the hunk."""
    old, new = "\n\n\na\n", "z\n\n\n\na\n"
    assert apply_diff(old, make_diff(old, new)) == new


def test_a_hunk_of_added_lines_alone_is_refused():
    diff = "--- a/train.py\n+++ b/train.py\n@@ -12,0 +13,1 @@\n+EXTRA = 1\n"
    with pytest.raises(PatchError, match="only adds lines, with no unchanged line of train.py around them"):
        apply_diff(SOURCE, diff)


def test_whitespace_mangled_context_applies_and_keeps_the_files_text():
    diff = ("--- a/train.py\n+++ b/train.py\n@@ -18,4 +18,4 @@\n class  Model:   \n \tdef __init__(self,  width):\n"
            "         self.width = width\t\n-          self.scale = 1.0\n+        self.scale = 2.0\n")
    assert apply_diff(SOURCE, diff) == SCALED


def test_lost_indentation_is_given_back_to_added_lines():
    diff = ("--- a/train.py\n+++ b/train.py\n@@ -19,3 +19,3 @@\n def __init__(self, width):\n"
            "     self.width = width\n-    self.scale = 1.0\n+    self.scale = 2.0\n")
    assert apply_diff(SOURCE, diff) == SCALED


def test_blank_line_differences_are_ignored():
    missing_blank = ("--- a/train.py\n+++ b/train.py\n@@ -9,5 +9,5 @@\n import math\n def schedule(progress):\n"
                     "-    if progress < 0.5:\n+    if progress < 0.25:\n")
    expected = replaced(SOURCE, "progress < 0.5", "progress < 0.25")
    assert apply_diff(SOURCE, missing_blank) == expected
    extra_blank = ("--- a/train.py\n+++ b/train.py\n@@ -23,3 +23,3 @@\n     def forward(self, x):\n \n"
                   "-        y = x * self.scale\n+        y = x * self.scale * 2\n")
    assert apply_diff(SOURCE, extra_blank) == replaced(SOURCE, "y = x * self.scale", "y = x * self.scale * 2")


def test_wrong_or_missing_hunk_counts_do_not_matter():
    diff = make_diff(SOURCE, TWO_CHANGES)
    wrong = re.sub(r"^@@ -(\d+),\d+ \+(\d+),\d+ @@", r"@@ -\1,99 +\2,1 @@", diff, flags=re.MULTILINE)
    assert wrong != diff and apply_diff(SOURCE, wrong) == TWO_CHANGES
    no_numbers = re.sub(r"^@@ .* @@$", "@@ ... @@", diff, flags=re.MULTILINE)
    assert apply_diff(SOURCE, no_numbers) == TWO_CHANGES
    stripped_blank_context = diff.replace("\n \n", "\n\n")
    assert stripped_blank_context != diff and apply_diff(SOURCE, stripped_blank_context) == TWO_CHANGES
    assert apply_diff(SOURCE, diff.replace("\n \n", "\n\t \n")) == TWO_CHANGES


def test_fenced_diff_with_prose_around_it():
    diff = make_diff(SOURCE, TWO_CHANGES)
    answer = f"I will double the scale.\n\n```diff\n{diff}```\n\nThis should lower val_bpb - I hope.\n"
    assert apply_diff(SOURCE, answer) == TWO_CHANGES
    unfenced = f"Here is the patch:\n{diff}"
    assert apply_diff(SOURCE, unfenced) == TWO_CHANGES


def test_bare_hunks_are_taken_to_be_against_train_py():
    diff = make_diff(SOURCE, TWO_CHANGES)
    assert apply_diff(SOURCE, diff[diff.index("@@"):]) == TWO_CHANGES


@pytest.mark.parametrize("diff, message", [
    ("--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n", "changes prepare.py"),
    ("--- /dev/null\n+++ b/helper.py\n@@ -0,0 +1 @@\n+x = 1\n", "creates the new file b/helper.py"),
    ("diff --git a/helper.py b/helper.py\nnew file mode 100644\nindex 0000000..e69de29\n--- /dev/null\n"
     "+++ b/helper.py\n@@ -0,0 +1 @@\n+x = 1\n", "creates the new file"),
    ("--- a/train.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n", "deletes a/train.py"),
    ("diff --git a/train.py b/model.py\nsimilarity index 100%\nrename from train.py\nrename to model.py\n",
     "renames a/train.py to b/model.py"),
    ("diff --git a/train.py b/train.py\nindex 1234567..89abcde\nGIT binary patch\nliteral 3\nKcmZ?wf%\n",
     "binary patch"),
    ("Binary files a/train.py and b/train.py differ\n", "binary patch"),
    ("", "the diff is empty"),
    ("  \n\n", "the diff is empty"),
    ("I would raise the learning rate.", "no unified diff found"),
    ("--- a/train.py\n+++ b/train.py\n", "no @@ hunks"),
])
def test_diffs_that_are_not_edits_of_train_py_are_refused(diff, message):
    with pytest.raises(PatchError) as err:
        apply_diff(SOURCE, diff)
    assert message in err.value.reason and "\n" not in err.value.reason


def test_train_py_may_be_named_with_its_folder():
    """Models that know this repository write the template's own path, train_template/train.py."""
    diff = make_diff(SOURCE, SCALED).replace("a/train.py", "a/train_template/train.py").replace(
        "b/train.py", "b/train_template/train.py")
    assert apply_diff(SOURCE, diff) == SCALED
    with pytest.raises(PatchError, match="changes prepare_train.py"):
        apply_diff(SOURCE, diff.replace("train_template/train.py", "prepare_train.py"))


def test_a_second_file_in_the_diff_is_refused():
    other = "--- a/harness.py\n+++ b/harness.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    with pytest.raises(PatchError, match="changes harness.py"):
        apply_diff(SOURCE, make_diff(SOURCE, SCALED) + other)


def test_an_unplaceable_hunk_names_itself_its_bad_line_and_the_closest_lines():
    diff = make_diff(SOURCE, TWO_CHANGES).replace(" def evaluate_again(model):", " def evaluate_agian(model):")
    header = [line for line in diff.splitlines() if line.startswith("@@")][1]
    with pytest.raises(PatchError) as err:
        apply_diff(SOURCE, diff)
    reason = err.value.reason
    assert "\n" not in reason
    assert f"hunk 2 of 2 ({header})" in reason
    assert "'def evaluate_agian(model):'" in reason  # the old line that did not match
    line = line_number(SOURCE, "def evaluate_again")
    assert f"line {line} reads 'def evaluate_again(model):'" in reason  # the closest line of the file


def test_hunks_may_not_match_lines_an_earlier_hunk_added():
    diff = ("--- a/train.py\n+++ b/train.py\n@@ -3,1 +3,1 @@\n-import math\n+import cmath\n"
            "@@ -3,1 +3,1 @@\n-import cmath\n+import numpy\n")
    with pytest.raises(PatchError, match="hunk 2 of 2 .* only where an earlier hunk added lines"):
        apply_diff(SOURCE, diff)


def test_missing_final_newline_round_trips():
    old, new = "a\nb\nc", "a\nb\nc\nd\n"
    assert apply_diff(old, make_diff(old, new)) == new
    assert apply_diff(new, make_diff(new, old)) == old
    assert "\\ No newline at end of file" in make_diff(old, new)


def random_edit(lines: list[str], rng: random.Random) -> list[str]:
    lines = list(lines)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(lines) + 1)
        op = rng.choice(["insert", "delete", "replace", "duplicate"])
        text = f"x_{rng.randrange(10**6)} = {rng.random()!r}  # edit\n"
        if op == "insert":
            lines.insert(at, text)
        elif op == "duplicate":  # a copy of another line, so text repeats and only positions tell them apart
            lines.insert(at, rng.choice(lines))
        elif lines and at < len(lines):
            del lines[at:at + rng.randint(1, 4)]
            if op == "replace":
                lines.insert(at, text)
    return lines


def test_make_diff_then_apply_diff_reproduces_random_edits_of_the_template():
    original = TEMPLATE.splitlines(keepends=True)
    for seed in range(300):
        new = "".join(random_edit(original, random.Random(seed)))
        diff = make_diff(TEMPLATE, new)
        assert apply_diff(TEMPLATE, diff) == new, seed
        miscounted = re.sub(r"^@@ -(\d+),\d+ \+(\d+),\d+ @@", r"@@ -\1,1 +\2,99 @@", diff, flags=re.MULTILINE)
        assert apply_diff(TEMPLATE, miscounted) == new, seed
        if diff:
            stats = diff_stats(diff)
            body = [line for line in diff.splitlines() if not line.startswith(("---", "+++"))]
            assert stats["files"] == 1 and stats["hunks"] == sum(line.startswith("@@") for line in body)
            assert stats["added"] == sum(line.startswith("+") for line in body)
            assert stats["removed"] == sum(line.startswith("-") for line in body)


def test_diff_stats():
    assert diff_stats(make_diff(SOURCE, TWO_CHANGES)) == {"files": 1, "hunks": 2, "added": 2, "removed": 2}
    assert diff_stats("") == {"files": 0, "hunks": 0, "added": 0, "removed": 0}


def test_invalid_patches_share_a_base_with_a_reason():
    assert issubclass(PatchError, InvalidPatch) and issubclass(PatchRejected, InvalidPatch)
    error = PatchRejected("it broke")
    assert error.reason == str(error) == "it broke"


# ---------------------------------------------------------------------------- rules before running

def after_block(text: str) -> int:
    """Index of the first non-empty line after the constants block."""
    lines = text.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("# ==== ARENA CONSTANTS END"))
    return next(i for i in range(end + 1, len(lines)) if lines[i].strip())


def test_a_syntax_error_is_rejected_with_its_line():
    lines = TEMPLATE.splitlines(keepends=True)
    at = after_block(TEMPLATE)
    broken = "".join(lines[:at] + ["def broken(:\n"] + lines[at:])
    with pytest.raises(PatchRejected) as err:
        check_train_py(broken, TEMPLATE, fixed_space=False)
    assert f"does not compile: line {at + 1}:" in err.value.reason and "def broken(:" in err.value.reason


def test_a_broken_constants_block_is_rejected():
    lines = TEMPLATE.splitlines(keepends=True)
    depth = next(i for i, line in enumerate(lines) if line.startswith("DEPTH = "))
    broken = "".join(lines[:depth] + ["DEPTH = int('8')\n"] + lines[depth + 1:])
    with pytest.raises(PatchRejected, match=f"line {depth + 1} in the constants block is malformed"):
        check_train_py(broken, TEMPLATE, fixed_space=False)


def test_fixed_space_proposals_may_not_edit_outside_the_block():
    lines = TEMPLATE.splitlines(keepends=True)
    at = after_block(TEMPLATE)
    edited = "".join(lines[:at] + ["# a harmless comment\n"] + lines[at:])
    with pytest.raises(PatchRejected) as err:
        check_train_py(edited, TEMPLATE, fixed_space=True)
    assert f"line {at + 1} outside it" in err.value.reason and "a harmless comment" in err.value.reason
    check_train_py(edited, TEMPLATE, fixed_space=False)  # code agents may


def test_fixed_space_proposals_keep_the_constant_names():
    renamed = re.sub(r"^DEPTH = ", "N_LAYER = ", TEMPLATE, count=1, flags=re.MULTILINE)
    with pytest.raises(PatchRejected, match="removed: DEPTH; added: N_LAYER"):
        check_train_py(renamed, TEMPLATE, fixed_space=True)


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_fixed_space_values_must_lie_in_the_space(preset):
    space = load_space(preset)
    for seed in range(20):
        check_train_py(render_config(TEMPLATE, space.sample(np.random.default_rng(seed))), TEMPLATE, True, space)
    too_deep = render_config(TEMPLATE, {"DEPTH": 99})
    with pytest.raises(PatchRejected, match="outside the search space: DEPTH = 99 is outside its range"):
        check_train_py(too_deep, TEMPLATE, fixed_space=True, space=space)
    check_train_py(too_deep, TEMPLATE, fixed_space=False, space=space)  # code agents are not held to the space


def test_constants_outside_a_partial_space_stay_fixed(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text('[cpu.DEPTH]\nkind = "int"\nlow = 1\nhigh = 12\n')
    space = load_space("cpu", path)
    check_train_py(render_config(TEMPLATE, {"DEPTH": 5}), TEMPLATE, True, space)
    with pytest.raises(PatchRejected, match="MATRIX_LR is not in the search space"):
        check_train_py(render_config(TEMPLATE, {"MATRIX_LR": 0.01}), TEMPLATE, True, space)


def test_config_diff_changes_only_the_block_and_applies():
    config = {"DEPTH": 4, "MATRIX_LR": 0.02, "WINDOW_PATTERN": "SLSL"}
    rendered = render_config(TEMPLATE, config)
    assert rendered == render_constants(TEMPLATE, config)
    diff = config_diff(TEMPLATE, config)
    assert diff_stats(diff) == {"files": 1, "hunks": 1, "added": 3, "removed": 3}
    assert apply_diff(TEMPLATE, diff) == rendered
    assert read_constants(rendered) == {**read_constants(TEMPLATE), **config}
    check_train_py(rendered, TEMPLATE, fixed_space=True, space=load_space("gpu"))
    assert config_diff(TEMPLATE, read_constants(TEMPLATE)) == ""


@pytest.mark.parametrize("config, message", [({"DROPOUT": 0.1}, "has no DROPOUT"),
                                             ({"MATRIX_LR": float("inf")}, "non-finite")])
def test_a_config_that_cannot_be_written_is_rejected(config, message):
    with pytest.raises(PatchRejected, match=message):
        render_config(TEMPLATE, config)
