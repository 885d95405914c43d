"""Runs recorded outside the arena, read as RunHistory:

* a git repository run by karpathy/autoresearch's protocol: experiments are commits on a branch, a
  discarded or crashed one is reset away, and an untracked results.tsv in the work tree logs them all
  (commit, val_bpb, memory_gb, status keep|discard|crash, description);
* the paper's released trials.jsonl (Ferreira et al. 2026): one trial per line with trial_id, backend,
  config, val_bpb, peak_memory_gb, wall_time_seconds, success, error, seed, timestamp; one file may hold
  several backends and seeds, each of which becomes a run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import git

from agent.errors import ArenaError
from agent.jsonl import JsonObject
from agent.ui.history import RunHistory, TrialView, git_diff, read_jsonl
from sandbox.outcome import FAILURES, failure_named

RESULTS_FILE = "results.tsv"
PAPER_FIELDS = ("trial_id", "backend", "val_bpb", "success")
_KIND_PREFIX = re.compile(r"^\[(\w+)\]\s*")  # the arena's own results.tsv marks a failure's kind so


# ---------------------------------------------------------------------------- autoresearch repositories

def _branch_commits(repo: git.Repo, path: Path, branch: str | None) -> tuple[str, list[str]]:
    """The branch's name and the full hashes of every commit reachable from it."""
    rev = branch or "HEAD"
    try:
        commits = str(repo.git.rev_list(rev)).splitlines()
    except git.GitCommandError:
        if branch is None:
            raise ArenaError(f"{path} has no commits on its current branch; check out the experiment branch "
                             "or pass --branch") from None
        names = ", ".join(head.name for head in repo.heads) or "none"
        raise ArenaError(f"no branch '{branch}' in {path}; its branches: {names}") from None
    name = branch or str(repo.git.rev_parse("--abbrev-ref", "HEAD"))
    return name, commits


def _resolve(repo: git.Repo, short: str, branch: str, commits: list[str]) -> tuple[str | None, str]:
    """(full hash or None, note) for a results.tsv commit: on the branch, only in the object store, or gone."""
    matches = [sha for sha in commits if sha.startswith(short.lower())]
    if len(matches) == 1:
        return matches[0], ""
    if len(matches) > 1:
        return None, f"commit {short} is ambiguous on branch {branch}"
    try:  # a reset-away experiment stays in the object store until git gc prunes it
        sha = str(repo.git.rev_parse("--verify", "--quiet", f"{short}^{{commit}}"))
    except git.GitCommandError:
        return None, "commit not in repository"
    return sha, f"not on branch {branch} (reset away); diff read from the object store"


def _float(value: str) -> float | None:
    """A results.tsv number; autoresearch writes 0.000000 for a crash, which is no measurement."""
    number = float(value)
    return number if number > 0 else None


def _tsv_rows(path: Path, warnings: list[str]) -> list[list[str]]:
    lines = path.read_text(errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for index, line in enumerate(lines):
        if not line.strip() or (index == 0 and line.startswith("commit\t")):
            continue
        fields = [f.strip() for f in line.split("\t")]
        status = fields[3].lower() if len(fields) > 3 else ""
        try:
            valid = status in ("keep", "discard", "crash") and float(fields[1]) >= 0 and float(fields[2]) >= 0
        except ValueError:
            valid = False
        if valid:
            rows.append(fields[:4] + ["\t".join(fields[4:])])
        elif index == last:
            warnings.append(f"{path}: ignoring a half-written last line")
        else:
            raise ArenaError(f"{path} line {index + 1} is not 'commit<TAB>val_bpb<TAB>memory_gb<TAB>"
                             "keep|discard|crash<TAB>description'; fix that line")
    return rows


def _autoresearch_trial(number: int, row: list[str], repo: git.Repo, branch: str, commits: list[str]) -> TrialView:
    short, val_bpb, memory, status, description = row
    kind = "baseline" if number == 0 or short == "baseline" else "proposal"
    failure = "crash"
    marked = _KIND_PREFIX.match(description)
    if marked and marked.group(1) in FAILURES:
        failure, description = marked.group(1), description[marked.end():]
    if short == "baseline":
        sha, diff, note = None, "", "the baseline: train.py as the branch started"
    else:
        sha, note = _resolve(repo, short, branch, commits)
        diff = (git_diff(repo, None, sha) or "") if sha else ""
        if sha and kind == "baseline":
            diff, note = "", "the baseline: train.py as the branch started"
    return TrialView(trial=number, method="baseline" if kind == "baseline" else "autoresearch", kind=kind,
                     description=description, status="ok" if status != "crash" else failure,
                     val_bpb=_float(val_bpb) if status != "crash" else None, memory_gb=_float(memory),
                     kept=status == "keep", commit=sha or (short if short != "baseline" else None),
                     diff=diff, diff_note=note)


def load_autoresearch_repo(path: Path, branch: str | None = None) -> RunHistory:
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise ArenaError(f"{path} is neither an arena run (no run.json) nor a git repository; pass a run "
                         "directory (runs/NAME), an autoresearch repository or a trials.jsonl file") from None
    work_tree = repo.working_tree_dir
    if repo.bare or work_tree is None:  # GitPython gives a bare repository no work tree
        raise ArenaError(f"{path} is a bare git repository; autoresearch keeps results.tsv in a work tree — "
                         "pass the directory of a clone that has it")
    tsv = Path(work_tree) / RESULTS_FILE
    if not tsv.is_file():
        raise ArenaError(f"no {RESULTS_FILE} in {work_tree}: autoresearch logs its experiments there "
                         "(untracked); pass the repository the experiments ran in")
    branch_name, commits = _branch_commits(repo, path, branch)
    warnings: list[str] = []
    trials = [_autoresearch_trial(n, row, repo, branch_name, commits)
              for n, row in enumerate(_tsv_rows(tsv, warnings))]
    return RunHistory(name=f"{Path(work_tree).name}@{branch_name}", source="autoresearch",
                      path=path, method="autoresearch", trials=trials, warnings=warnings)


# ---------------------------------------------------------------------------- the paper's trials.jsonl

def _describe(config: dict[str, Any] | None) -> str:
    if not config:
        return "(no config)"
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _paper_run(path: Path, backend: str, seed: object, records: list[JsonObject], warnings: list[str]) -> RunHistory:
    records = sorted(records, key=lambda r: r["trial_id"])
    trials, best = [], None
    for record in records:
        ok = bool(record["success"]) and record.get("val_bpb") is not None
        value = float(record["val_bpb"]) if ok else None
        kept = value is not None and (best is None or value < best)  # what a keep-if-better loop would keep
        best = value if kept else best
        trials.append(TrialView(
            trial=record["trial_id"], method=backend, kind="proposal", description=_describe(record.get("config")),
            status="ok" if ok else str(failure_named(record.get("error"))), reason=str(record.get("error") or ""),
            val_bpb=value, memory_gb=record.get("peak_memory_gb"), wall_seconds=record.get("wall_time_seconds"),
            total_seconds=record.get("wall_time_seconds"), kept=kept, config=record.get("config"),
            diff_note="the paper's data holds configs, not diffs", seed=record.get("seed"),
            log_tail=str(record.get("error") or "")))
    name = f"{path.stem}:{backend}" + (f":s{seed}" if seed is not None else "")
    return RunHistory(name=name, source="paper", path=path, method=backend,
                      seed=seed if isinstance(seed, int) else None, trials=trials, warnings=warnings)


def load_paper_trials(path: Path) -> list[RunHistory]:
    """One run per (backend, seed) in the file, in the order they first appear."""
    warnings: list[str] = []
    groups: dict[tuple[str, object], list[JsonObject]] = {}
    for number, record in enumerate(read_jsonl(path, warnings), 1):
        missing = [name for name in PAPER_FIELDS if name not in record]
        if not missing and not isinstance(record["trial_id"], int):
            missing = ["an integer trial_id"]
        if missing:
            raise ArenaError(f"{path} record {number} lacks {', '.join(missing)}; expected the paper's trials.jsonl "
                             "(trial_id, backend, config, val_bpb, peak_memory_gb, wall_time_seconds, success, ...)")
        groups.setdefault((str(record["backend"]), record.get("seed")), []).append(record)
    if not groups:
        raise ArenaError(f"{path} holds no trials")
    return [_paper_run(path, backend, seed, records, warnings) for (backend, seed), records in groups.items()]
