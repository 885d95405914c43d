"""Keep decisions: the noise margin, confirmation runs, and failures that can never win."""

from __future__ import annotations

from agent.loop import decide, judge
from agent.run import best_of


def test_only_a_clear_improvement_is_kept():
    assert judge("proposal", 0.99, 1.00, 0.0, 0) == (True, False)
    assert judge("proposal", 1.00, 1.00, 0.0, 0) == (False, False)  # a tie does not advance the branch
    assert judge("proposal", 0.995, 1.00, 0.01, 0) == (False, False)  # within the noise margin
    assert judge("proposal", 0.98, 1.00, 0.01, 0) == (True, False)
    assert judge("proposal", None, 1.00, 0.0, 0) == (False, False)  # oom, crash, over_budget, ... never win


def test_with_confirmation_a_winner_is_only_a_candidate():
    assert judge("proposal", 0.9, 1.0, 0.0, 2) == (False, True)
    assert judge("confirm", 0.5, 1.0, 0.0, 2) == (False, False)  # confirmation runs decide via decide()


def test_baseline_is_kept_when_it_ran():
    assert judge("baseline", 3.2, None, 0.0, 0) == (True, False)
    assert judge("baseline", None, None, 0.0, 0) == (False, False)


def test_confirmation_mean_must_still_win():
    assert decide([0.97, 0.98, 0.99], 1.0, 0.0) == {"kept": True, "mean_val_bpb": 0.98}
    assert decide([0.90, 1.05, 1.06], 1.0, 0.0)["kept"] is False  # one lucky seed is not enough
    assert decide([0.90, None], 1.0, 0.0) == {"kept": False, "mean_val_bpb": None}


def test_best_follows_keeps_and_confirmed_candidates():
    records = [
        {"trial": 0, "kept": True, "val_bpb": 3.0},
        {"trial": 1, "kept": False, "candidate": True, "val_bpb": 2.0},
        {"trial": 2, "kept": False, "confirms": 1, "val_bpb": 2.2, "decision": {"trial": 1, "kept": True,
                                                                                "mean_val_bpb": 2.1}},
        {"trial": 3, "kept": False, "val_bpb": 2.5},
    ]
    assert best_of(records) == (1, 2.1)
    records.append({"trial": 4, "kept": True, "val_bpb": 2.0})
    assert best_of(records) == (4, 2.0)
