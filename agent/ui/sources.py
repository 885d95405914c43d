"""Which reader a path needs: an arena run directory, an autoresearch repository, or a trials.jsonl file."""

from __future__ import annotations

from pathlib import Path

from agent.errors import ArenaError
from agent.ui.history import RunHistory, load_arena_run
from agent.ui.imports import RESULTS_FILE, load_autoresearch_repo, load_paper_trials

DEFAULT_RUNS = Path("runs")  # arena run's default --runs-dir


def open_runs(path: Path, branch: str | None = None) -> list[RunHistory]:
    """Every run recorded at `path` (a trials.jsonl file may hold several)."""
    path = Path(path).expanduser()
    if not path.exists() and len(path.parts) == 1 and (DEFAULT_RUNS / path / "run.json").exists():
        path = DEFAULT_RUNS / path  # a run's name, as `arena run --name` and `arena watch` take it
    if not path.exists():
        raise ArenaError(f"{path} does not exist; pass a run's name or directory (runs/NAME), an autoresearch git "
                         "repository or a trials.jsonl file")
    if path.is_file() and path.name == RESULTS_FILE:
        raise ArenaError(f"pass the repository that holds {path.name} ({path.parent}), not the file itself")
    if path.is_file():
        runs = load_paper_trials(path)
    elif (path / "run.json").exists():
        runs = [load_arena_run(path)]
    else:
        return [load_autoresearch_repo(path, branch)]
    if branch is not None:
        raise ArenaError(f"--branch applies to autoresearch repositories; {path} is not one, leave --branch out")
    return runs


def open_history(path: Path, branch: str | None = None) -> RunHistory:
    """The one run recorded at `path`."""
    runs = open_runs(path, branch)
    if len(runs) > 1:
        raise ArenaError(f"{path} holds {len(runs)} runs ({', '.join(run.name for run in runs)}); replay shows "
                         "one — split the file by backend and seed")
    return runs[0]
