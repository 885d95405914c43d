"""`arena replay` and `arena compare` on recorded runs, on an autoresearch-style repository built with real
commits, and on a trials.jsonl in the paper's format.

The runs are made once for the module by the real loop (real git, ledger, notes, method state) on a backend
that trains nothing (tests/fake_runs.py): replay and compare read what the loop records, and real training adds
nothing to what they are tested for. Two methods (random search and TPE), two seeds each, three trials a run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import html
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import git
import numpy as np
import pytest

from agent.errors import ArenaError
from agent.ui import compare, replay
from agent.ui.compare import build_comparison
from agent.ui.history import read_jsonl
from agent.ui.sources import open_runs
from sandbox.outcome import failure_named
from tests.fake_runs import fake_run

SEEDS = (1, 2)


@pytest.fixture(scope="module")
def groups(tmp_path_factory, cache_root, stdlib_dataset) -> dict[str, list[Path]]:
    """{method: [run dir per seed]} for two methods."""
    runs = tmp_path_factory.mktemp("ui-runs")
    return {method: [fake_run(runs, cache_root, f"{method}-s{s}", 3, method=method, seed=s) for s in SEEDS]
            for method in ("random", "tpe")}


@pytest.fixture
def run_dir(groups) -> Path:
    return groups["random"][0]


def arena(*argv: str) -> int:
    """The subcommands as the CLI runs them (the same add_parser/func protocol agent/cli.py uses)."""
    parser = argparse.ArgumentParser(prog="arena")
    sub = parser.add_subparsers(dest="command", required=True)
    replay.add_parser(sub)
    compare.add_parser(sub)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def ledger(run: Path) -> list[dict]:
    return read_jsonl(run / "ledger.jsonl", [])


def outcome(record: dict) -> str:
    return record["status"] if record["status"] != "ok" else ("keep" if record["kept"] else "discard")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- replay of arena runs

def test_replay_shows_every_trial(run_dir, capsys):
    assert arena("replay", run_dir) == 0
    out = capsys.readouterr().out
    records = ledger(run_dir)
    for record in records:
        assert f"trial {record['trial']}" in out and record["description"] in out
        assert outcome(record) in out
    proposals = [r for r in records if r["kind"] == "proposal" and r["diff"]]
    assert proposals and out.count("--- a/train.py") == len(proposals)
    assert "@@ -" in out
    for line in proposals[0]["diff"].splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            assert line in out  # diff lines are printed whole, not wrapped
    assert "the baseline: train.py as the run started" in out


def test_replay_one_trial(run_dir, capsys):
    records = ledger(run_dir)
    assert arena("replay", run_dir, "--trial", "1") == 0
    out = capsys.readouterr().out
    assert records[1]["description"] in out and records[2]["description"] not in out
    assert out.count("--- a/train.py") == 1


def test_replay_unknown_trial_is_a_one_line_error(run_dir):
    with pytest.raises(ArenaError) as error:
        arena("replay", run_dir, "--trial", "9")
    assert "has no trial 9; its trials are 0-2" in one_line(error)


def test_replay_steps_on_a_terminal(run_dir, monkeypatch):
    """The stepping loop: enter, p, j N, a bad command, a bad jump, then q."""
    from rich.console import Console

    from agent.ui.sources import open_history

    history = open_history(run_dir)
    answers = iter(["", "n", "n", "p", "j 0", "x", "j 7", "q"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    console = Console(record=True, width=200)
    replay.step_through(history, console, 0)
    text = console.export_text()
    shown = [int(line.split()[1]) for line in text.splitlines() if line.startswith("trial ") and "───" in line]
    assert shown == [0, 1, 2, 1, 0]
    assert "already at the last trial" in text and "'x' is not a command" in text and "no trial 7" in text


def test_markdown_export(run_dir, tmp_path):
    out = tmp_path / "report.md"
    assert arena("replay", run_dir, "--export", "md", "--out", out) == 0
    text = out.read_text()
    records = ledger(run_dir)
    best = min((r for r in records if r["val_bpb"] is not None), key=lambda r: r["val_bpb"])
    summary = text.split("## Summary", 1)[1].split("## Trials", 1)[0]
    assert f"| trials | {len(records)} |" in summary
    assert f"| kept | {sum(r['kept'] for r in records)} |" in summary
    failures = [r for r in records if r["status"] != "ok"]
    assert f"| failures | {len(failures)} |" in summary
    for record in failures:
        assert f"| failures: {record['status']} |" in summary
    assert f"| best val_bpb | {best['val_bpb']:.6f} |" in summary and f"| best trial | {best['trial']} |" in summary
    for record in records:
        assert f"## Trial {record['trial']}: {record['description']}" in text
    assert text.count("```diff\n--- a/train.py") == sum(1 for r in records if r["diff"])


class TagChecker(HTMLParser):
    """Fails on a closing tag that does not match the innermost open one."""
    VOID: ClassVar[set[str]] = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, tag


def test_an_export_goes_to_a_pipe_and_a_fifo_no_one_reads_is_one_line(run_dir, tmp_path):
    read, write = os.pipe()
    with ThreadPoolExecutor(1) as reader, open(read, "rb") as pipe:
        received = reader.submit(pipe.read)  # as `arena replay ... --out /dev/stdout | less` reads it
        with contextlib.redirect_stdout(io.StringIO()):  # the path it prints
            assert arena("replay", run_dir, "--export", "md", "--out", f"/dev/fd/{write}") == 0
        os.close(write)
        assert received.result().startswith(b"# Replay of")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ArenaError, match="it is a FIFO no process reads; choose another --out"):  # it blocked
        arena("replay", run_dir, "--export", "md", "--out", tmp_path / "fifo")


def test_html_export(run_dir, tmp_path):
    out = tmp_path / "report.html"
    assert arena("replay", run_dir, "--export", "html", "--out", out) == 0
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    checker = TagChecker()
    checker.feed(text)
    assert checker.stack == []
    records = ledger(run_dir)
    assert text.count("<section") == len(records)
    for record in records:
        assert html.escape(record["description"]) in text
        for line in (record["diff"] or "").splitlines():
            assert html.escape(line) in text
    assert '<span class="add">+' in text and '<span class="del">-' in text


def test_llm_prompt_and_answer_are_replayed(run_dir, tmp_path, capsys):
    """An LLM trial's calls come from llm.jsonl (written here in the format the LLM client records, since
    no LLM method can run offline): replay shows prompt and answer, compare sums tokens and cost."""
    run = tmp_path / "llm-run"
    shutil.copytree(run_dir, run)
    call = {"trial": 1, "purpose": "propose", "call": 1, "model": "ollama_chat/qwen3:8b",
            "messages": [{"role": "system", "content": "You tune train.py."},
                         {"role": "user", "content": "Best so far: 4.46. Propose a diff."}],
            "response": "```diff\n-DEPTH = 3\n+DEPTH = 4\n```", "error": None, "prompt_tokens": 1200,
            "completion_tokens": 80, "cost_usd": 0.0125, "latency_s": 3.2, "attempts": 1, "time": 0}
    cut_off = {**call, "purpose": "repair", "call": 2, "prompt_tokens": 900, "completion_tokens": 50,
               "cost_usd": 0.0, "usage_estimated": True}  # no counts came with it: arena's estimate
    (run / "llm.jsonl").write_text(json.dumps(call) + "\n" + json.dumps(cut_off) + "\n")
    assert arena("replay", run, "--trial", "1") == 0
    out = capsys.readouterr().out
    assert "You tune train.py." in out and "Best so far: 4.46. Propose a diff." in out and "+DEPTH = 4" in out
    assert "1,200 + 80 tokens" in out and "about 1,200" not in out and "about 900 + 50 tokens" in out
    assert arena("replay", run, "--export", "md", "--out", tmp_path / "r.md") == 0
    assert "Best so far: 4.46" in (tmp_path / "r.md").read_text()
    assert arena("compare", run, "--out", tmp_path / "cmp") == 0
    group = json.loads((tmp_path / "cmp" / "summary.json").read_text())["groups"][0]
    assert group["llm_tokens"] == 1280 + 950 and group["llm_cost_usd"] == pytest.approx(0.0125)


def test_half_written_ledger_line_is_tolerated_and_left_alone(run_dir, tmp_path, capsys):
    run = tmp_path / "torn"
    shutil.copytree(run_dir, run)
    with open(run / "ledger.jsonl", "a") as f:
        f.write('{"trial": 3, "kind": "proposal", "val_b')
    before = (run / "ledger.jsonl").read_bytes()
    assert arena("replay", run) == 0
    captured = capsys.readouterr()
    assert "half-written last line" in captured.err and "trial 2" in captured.out and "trial 3" not in captured.out
    assert arena("compare", run, "--out", tmp_path / "cmp") == 0
    assert "half-written last line" in capsys.readouterr().err
    assert json.loads((tmp_path / "cmp" / "summary.json").read_text())["runs"][0]["trials"] == 3
    assert (run / "ledger.jsonl").read_bytes() == before


def test_a_run_is_found_by_its_name_under_runs_as_arena_run_makes_it(groups, tmp_path, monkeypatch):
    """`arena run --name demo` then `arena replay demo`: as `arena watch demo` takes it."""
    shutil.copytree(groups["random"][0], tmp_path / "runs" / "demo")
    monkeypatch.chdir(tmp_path)
    (run,) = open_runs(Path("demo"))
    assert len(run.trials) == 3
    with pytest.raises(ArenaError, match="a run's name or directory"):
        open_runs(Path("other"))


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArenaError) as error:
        arena("replay", tmp_path / "plain")
    assert "neither an arena run" in one_line(error)
    git.Repo.init(tmp_path / "bare-results")
    with pytest.raises(ArenaError) as error:
        arena("replay", tmp_path / "bare-results")
    assert one_line(error).startswith("no results.tsv in")
    with pytest.raises(ArenaError) as error:
        arena("compare", tmp_path / "missing")
    assert "does not exist" in one_line(error)


# ---------------------------------------------------------------------------- autoresearch repositories

TRAIN_PY = "DEPTH = 8\nLR = 0.04\n\ndef train():\n    return DEPTH * LR\n"


def autoresearch_repo(path: Path) -> dict[str, str]:
    """A repository run by autoresearch's protocol: every experiment is a commit; a discard or a crash is
    reset away; results.tsv (untracked) logs them all. Returns {experiment: full hash}."""
    repo = git.Repo.init(path, initial_branch="autoresearch/nov22")
    writer = repo.config_writer()
    writer.set_value("user", "name", "agent").set_value("user", "email", "agent@localhost").release()
    train = path / "train.py"
    shas = {}

    def experiment(name: str, old: str, new: str) -> str:
        train.write_text(train.read_text().replace(old, new))
        repo.index.add(["train.py"])
        shas[name] = repo.index.commit(name).hexsha
        return shas[name][:7]

    train.write_text(TRAIN_PY)
    repo.index.add(["train.py"])
    repo.index.commit("initial train.py")
    rows = ["baseline\t1.000000\t44.0\tkeep\tbaseline"]
    rows.append(f"{experiment('raise LR', 'LR = 0.04', 'LR = 0.06')}\t0.990000\t44.1\tkeep\traise LR to 0.06")
    rows.append(f"{experiment('deeper', 'DEPTH = 8', 'DEPTH = 12')}\t0.995000\t52.0\tdiscard\tdepth 12")
    repo.git.reset("--hard", "HEAD~1")
    rows.append(f"{experiment('huge', 'DEPTH = 8', 'DEPTH = 64')}\t0.000000\t0.0\tcrash\tdepth 64 (OOM)")
    repo.git.reset("--hard", "HEAD~1")
    rows.append(f"{experiment('warmup', 'return DEPTH * LR', 'return DEPTH * LR * 0.9')}\t0.985000\t44.2\tkeep"
                "\tscale the output")
    (path / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n" + "\n".join(rows) + "\n")
    return shas


def test_replay_autoresearch_repository(tmp_path, capsys):
    path = tmp_path / "autoresearch"
    shas = autoresearch_repo(path)
    assert arena("replay", path) == 0
    out = capsys.readouterr().out
    for description in ("baseline", "raise LR to 0.06", "depth 12", "depth 64 (OOM)", "scale the output"):
        assert description in out
    assert "+LR = 0.06" in out and "+    return DEPTH * LR * 0.9" in out  # kept commits, against their parents
    assert "+DEPTH = 12" in out and "not on branch autoresearch/nov22 (reset away)" in out  # still in the store
    history = open_runs(path)[0]
    assert [v.status for v in history.trials] == ["ok", "ok", "ok", "crash", "ok"]
    assert [v.kept for v in history.trials] == [True, True, False, False, True]
    assert history.trials[3].val_bpb is None and history.trials[1].commit == shas["raise LR"]

    repo = git.Repo(path)  # what a clone or a gc leaves: the reset-away commits are gone
    repo.git.reflog("expire", "--expire=now", "--all")
    repo.git.gc("--prune=now", "--quiet")
    assert arena("replay", path, "--export", "md", "--out", tmp_path / "r.md") == 0
    report = (tmp_path / "r.md").read_text()
    assert report.count("commit not in repository") == 2 and "+DEPTH = 12" not in report
    assert "+LR = 0.06" in report and "| failures: crash | 1 |" in report and "| best val_bpb | 0.985000 |" in report


def test_autoresearch_branch_option(tmp_path, capsys):
    path = tmp_path / "autoresearch"
    shas = autoresearch_repo(path)
    repo = git.Repo(path)
    repo.git.checkout("-b", "other", shas["raise LR"] + "~1")  # a branch without the experiments
    history = open_runs(path)[0]
    assert history.name == "autoresearch@other" and history.trials[1].diff_note.startswith("not on branch other")
    history = open_runs(path, branch="autoresearch/nov22")[0]
    assert history.trials[1].diff_note == "" and "+LR = 0.06" in history.trials[1].diff
    with pytest.raises(ArenaError) as error:
        arena("replay", path, "--branch", "nope")
    assert "no branch 'nope'" in one_line(error) and "autoresearch/nov22" in str(error.value)


# ---------------------------------------------------------------------------- compare

def test_compare_real_runs(groups, tmp_path, capsys):
    runs = [run for paths in groups.values() for run in paths]
    labels = list(groups)
    bests = {label: [min(r["val_bpb"] for r in ledger(run) if r["val_bpb"] is not None) for run in paths]
             for label, paths in groups.items()}
    target = max(max(values) for values in bests.values())  # every run reaches it
    out = tmp_path / "cmp"
    assert arena("compare", *runs, "--out", out, "--target", repr(target)) == 0  # exact: no rounding below a best
    console = capsys.readouterr().out
    for label in labels:
        assert label in console
    assert "Mann-Whitney U" in console and "n is small (2 vs 2 runs)" in console

    summary = json.loads((out / "summary.json").read_text())
    assert [g["group"] for g in summary["groups"]] == labels
    for group in summary["groups"]:
        values = bests[group["group"]]
        assert group["runs"] == 2 and group["best_mean"] == pytest.approx(sum(values) / 2)
        assert group["trials"] == 6 and group["target_reached"] == 2 and group["device_hours"] > 0
    test = summary["tests"][0]
    assert test["a"] == labels[0] and test["b"] == labels[1] and 0 < test["p_value"] <= 1
    assert test["ci_low"] <= test["mean_diff"] <= test["ci_high"]
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["group"] for row in rows] == labels and "failure_rate_over_budget" in rows[0]
    for name in ("convergence.png", "constants.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000

    comparison = build_comparison([history for run in runs for history in open_runs(run)], target, False)
    by_trial, by_hours = comparison.figures["convergence.png"].axes
    assert by_trial.get_xlabel() == "trial" and by_trial.get_ylabel() == "best val_bpb so far"
    assert by_hours.get_xlabel().startswith("cumulative training hours")
    for ax in (by_trial, by_hours):
        assert [line.get_label() for line in ax.lines] == [f"{label} (n=2)" for label in labels]  # a mean line each
        assert len(ax.collections) == 2  # and a min-max band each
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"{label} (n=2)" for label in labels]
    assert list(by_trial.lines[0].get_xdata()) == [0, 1, 2]

    constants = comparison.figures["constants.png"]
    panels = [ax for ax in constants.axes if ax.get_visible()]
    names = sorted(ledger(runs[0])[0]["config"])
    assert [ax.get_title() for ax in panels] == names
    for ax in panels:
        assert ax.get_xlabel() == "trial" and len(ax.lines) == 4  # one line per run, two runs per method
        assert len({line.get_color() for line in ax.lines}) == 2
    assert [t.get_text() for t in constants.legends[0].get_texts()] == labels


def paper_trials(path: Path) -> Path:
    lines = []
    for backend, offset in (("tpe", 0.0), ("cmaes", 0.02)):
        for seed in (0, 1):
            for trial in range(3):
                ok = not (backend == "cmaes" and trial == 1)
                lines.append({"trial_id": trial, "backend": backend, "config": {"MATRIX_LR": 0.01 * (trial + 1),
                              "WINDOW_PATTERN": "SSSL"}, "val_bpb": 1.0 - 0.01 * trial + offset + 0.001 * seed
                              if ok else None, "peak_memory_gb": 40.0, "wall_time_seconds": 360.0, "success": ok,
                              "error": None if ok else "GPU out-of-memory", "seed": seed,  # the runner's words
                              "timestamp": "2026-03-01T00:00:00"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_convergence_curve_never_rises_when_a_run_ends_first(tmp_path):
    """Two runs of one method: the better one ends after 2 trials, the other goes on to 5. A mean over only the
    runs still going rose when the better one ended; an ended run keeps its last best instead."""
    lines = []
    for seed, scores in ((0, [0.90, 0.80]), (1, [1.00, 0.99, 0.98, 0.97, 0.96])):
        for trial, score in enumerate(scores):
            lines.append({"trial_id": trial, "backend": "tpe", "config": {"MATRIX_LR": 0.01}, "val_bpb": score,
                          "peak_memory_gb": 40.0, "wall_time_seconds": 360.0, "success": True, "error": None,
                          "seed": seed, "timestamp": "2026-03-01T00:00:00"})
    (tmp_path / "trials.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    comparison = build_comparison(open_runs(tmp_path / "trials.jsonl"), None, False)
    for ax in comparison.figures["convergence.png"].axes:
        mean = np.asarray(ax.lines[0].get_ydata(), dtype=float)
        mean = mean[~np.isnan(mean)]
        assert len(mean) >= 2 and np.all(np.diff(mean) <= 1e-12), mean
    by_trial = comparison.figures["convergence.png"].axes[0]
    assert list(by_trial.lines[0].get_ydata()) == pytest.approx([0.95, 0.895, 0.89, 0.885, 0.88])


@pytest.mark.parametrize("error, status", [
    ("GPU out-of-memory", "oom"),  # the paper runner's words, on 1,400 of its trials
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "oom"),
    ("RuntimeError: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)", "oom"),  # arena's own words
    ("Timeout after 300.0s", "timeout"),
    ("loss is NaN at step 12", "nan"),
    ("RuntimeError: shape mismatch", "crash"),
    (None, "crash"),
])
def test_the_failure_an_imported_trial_had_is_read_from_its_error(error, status):
    assert failure_named(error) == status


def test_compare_imports_paper_trials(tmp_path, capsys):
    trials = paper_trials(tmp_path / "trials.jsonl")
    assert arena("compare", trials, "--out", tmp_path / "cmp", "--target", "0.995") == 0
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    tpe, cmaes = summary["groups"]
    assert (tpe["group"], tpe["runs"], tpe["trials"]) == ("tpe", 2, 6)
    assert tpe["best_mean"] == pytest.approx(0.9805) and cmaes["failure_rate_oom"] == pytest.approx(2 / 6)
    assert tpe["device_hours"] == pytest.approx(6 * 360 / 3600)
    assert tpe["target_reached"] == 2 and tpe["target_trials_mean"] == 2 and cmaes["target_reached"] == 0
    assert summary["tests"][0]["p_value"] == pytest.approx(1 / 3)  # 2 vs 2 runs, fully separated
    assert "tpe" in capsys.readouterr().out
    with pytest.raises(ArenaError) as error:
        arena("replay", trials)
    assert "holds 4 runs" in one_line(error)


def test_mixed_setups_are_refused_unless_allowed(groups, tmp_path, capsys):
    base = groups["random"][0]
    for name, change in (("other-data", {"dataset_fingerprint": "0123456789abcdef"}),
                         ("other-budget", {"settings": {"budget": 5.0}})):
        copy = tmp_path / name
        shutil.copytree(base, copy)
        info = json.loads((copy / "run.json").read_text())
        info["dataset_fingerprint"] = change.get("dataset_fingerprint", info["dataset_fingerprint"])
        info["settings"].update(change.get("settings", {}))
        (copy / "run.json").write_text(json.dumps(info))
        with pytest.raises(ArenaError) as error:
            arena("compare", base, copy, "--out", tmp_path / "cmp")
        message = one_line(error)
        assert "not measured alike" in message and "--allow-mixed" in message
        assert arena("compare", base, copy, "--out", tmp_path / "cmp", "--allow-mixed") == 0
        assert "WARNING: ranking runs measured differently" in capsys.readouterr().err
        assert json.loads((tmp_path / "cmp" / "summary.json").read_text())["mixed_setups"]


def test_compare_marks_runs_whose_trials_ran_unisolated(groups, tmp_path, capsys):
    isolated = groups["random"][0]
    assert {r["isolation"] for r in ledger(isolated)} == {"bwrap"}
    unisolated = tmp_path / "unisolated"
    shutil.copytree(groups["random"][1], unisolated)
    info = json.loads((unisolated / "run.json").read_text())
    info["settings"]["isolation"] = "none"
    (unisolated / "run.json").write_text(json.dumps(info))
    assert arena("compare", isolated, unisolated, "--out", tmp_path / "cmp") == 0
    out = capsys.readouterr()
    assert "[1 unisolated]" in out.out and "ran unisolated" in out.err and info["settings"]["name"] in out.err
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert [r["isolation"] for r in summary["runs"]] == ["bwrap", "none"]
    assert summary["groups"][0]["unisolated_runs"] == 1


def test_compare_warns_of_runs_that_share_a_seed(groups, tmp_path, capsys):
    """A copy of a run, or a rerun with the same seed, is no second seed: the spread would be made up."""
    twin = tmp_path / "twin"
    shutil.copytree(groups["random"][0], twin)
    assert arena("compare", groups["random"][0], twin, groups["random"][1], "--out", tmp_path / "cmp") == 0
    seed = json.loads((twin / "run.json").read_text())["settings"]["seed"]
    assert f"several runs share seed {seed}: they count as separate seeds" in capsys.readouterr().err
    assert arena("compare", *groups["random"], "--out", tmp_path / "cmp") == 0
    assert "share seed" not in capsys.readouterr().err


def test_single_runs_get_no_interval_and_cpu_runs_no_gpu_hours(groups, tmp_path, capsys):
    assert arena("compare", groups["random"][0], groups["tpe"][0], "--out", tmp_path / "cmp") == 0
    out = capsys.readouterr().out
    assert "CPU-h" in out and "GPU-h" not in out
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    test = summary["tests"][0]
    assert test["ci_low"] is None and test["ci_high"] is None and "one run on a side" in test["note"]
    assert {r["device"] for r in summary["runs"]} == {"cpu"}
