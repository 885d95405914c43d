"""A run's own git repository: one commit per trial, the best branch, trial refs and result notes.

The repository is bare: commits are built with plumbing (hash-object, mktree, commit-tree) and refs
move with update-ref, each an atomic step, so a kill at any moment never leaves a dirty work tree or a
half-moved branch. `git log best` tells the story of improvements; `refs/trials/<n>` keeps every
trial, kept or not; `refs/notes/arena` holds each trial's result as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import git

from agent.errors import ArenaError
from agent.jsonl import JsonObject

BEST_BRANCH = "best"
LOCK_GRACE_S = 2.0  # git holds a ref's lock for milliseconds: one older than this belongs to no one
NOTES_REF = "refs/notes/arena"
IDENTITY = {"GIT_AUTHOR_NAME": "arena", "GIT_AUTHOR_EMAIL": "arena@localhost",
            "GIT_COMMITTER_NAME": "arena", "GIT_COMMITTER_EMAIL": "arena@localhost"}


def trial_ref(trial: int) -> str:
    return f"refs/trials/{trial}"


def commit_message(description: str, trailers: dict[str, object]) -> str:
    lines = [description.strip() or "(no description)", ""]
    lines += [f"{key}: {value}" for key, value in trailers.items()]
    return "\n".join(lines) + "\n"


def read_trailers(message: str) -> dict[str, str]:
    trailers = {}
    for line in message.strip().splitlines()[::-1]:
        key, sep, value = line.partition(": ")
        if not sep or not key.startswith("Arena-"):
            break
        trailers[key] = value
    return trailers


class RunRepo:
    def __init__(self, path: Path):
        try:
            self.repo = git.Repo(path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise ArenaError(f"{path} is not a git repository; the run directory is damaged — "
                             "restore it or start a new run with another --name") from None
        self.git = self.repo.git
        self.path = Path(path)

    def clear_stale_locks(self) -> None:
        """Delete the `*.lock` files a killed git left (git takes one beside every ref or file it changes and
        renames it into place; a kill -9 of arena's process group in between leaves it, and every later
        change of that ref fails). Only for the holder of the run's lock: no other writer can be at work."""
        for path in [path for path in self.path.rglob("*.lock") if path.is_file()]:
            # a git orphaned by a kill -9 of arena alone may still be at work: give it a moment to finish
            waited_enough = time.time() + LOCK_GRACE_S
            with contextlib.suppress(FileNotFoundError):
                while time.time() - path.stat().st_mtime < LOCK_GRACE_S and time.time() < waited_enough:
                    time.sleep(0.05)
            path.unlink(missing_ok=True)

    def _git_input(self, args: list[str], text: str) -> str:
        """A git command fed on stdin (GitPython wants a real file there, so call git directly)."""
        proc = subprocess.run(["git", *args], input=text.encode("utf-8"), cwd=self.path, capture_output=True,
                              env={**os.environ, **IDENTITY}, check=False)  # raised below as GitPython would
        if proc.returncode:
            raise git.GitCommandError(["git", *args], proc.returncode, proc.stderr)
        return proc.stdout.decode("utf-8").strip()

    @classmethod
    def create(cls, path: Path, files: dict[str, str], description: str, trailers: dict[str, object]) -> RunRepo:
        """A new bare repository whose first commit (on the best branch) holds `files`."""
        git.Repo.init(path, bare=True, initial_branch=BEST_BRANCH)
        repo = cls(path)
        tree = repo._tree(files)
        sha = repo._commit(tree, None, commit_message(description, trailers))
        repo.git.update_ref(f"refs/heads/{BEST_BRANCH}", sha)
        return repo

    def _blob(self, content: str) -> str:
        return self._git_input(["hash-object", "-w", "--stdin"], content)

    def _tree(self, files: dict[str, str]) -> str:
        entries = "".join(f"100644 blob {self._blob(text)}\t{name}\n" for name, text in sorted(files.items()))
        return self._git_input(["mktree"], entries)

    def _commit(self, tree: str, parent: str | None, message: str) -> str:
        args = ["commit-tree", tree] + (["-p", parent] if parent else [])
        return self._git_input(args, message)

    def files(self, rev: str) -> dict[str, str]:
        names = str(self.git.ls_tree("--name-only", rev)).splitlines()
        return {name: self.show(rev, name) for name in names}

    def show(self, rev: str, path: str) -> str:
        return str(self.git.show(f"{rev}:{path}", strip_newline_in_stdout=False))

    def commit_trial(self, trial: int, parent: str, changes: dict[str, str], description: str,
                     trailers: dict[str, object]) -> str:
        """Commit `changes` on top of `parent` and point refs/trials/<trial> at it; the branch does not move."""
        files = {**self.files(parent), **changes}
        sha = self._commit(self._tree(files), parent, commit_message(description, trailers))
        self.git.update_ref(trial_ref(trial), sha)
        return sha

    def trial_commit(self, trial: int) -> str | None:
        try:
            return str(self.git.rev_parse("--verify", "--quiet", trial_ref(trial)))
        except git.GitCommandError:
            return None

    def recorded_trial_commit(self, trial: int) -> str:
        """The commit of a trial the run has made; ArenaError when the repository has lost it."""
        sha = self.trial_commit(trial)
        if sha is None:
            raise ArenaError(f"{self.path} has no commit for trial {trial}; the run directory is damaged — "
                             "restore it or start a new run with another --name")
        return sha

    def trial_numbers(self) -> list[int]:
        refs = str(self.git.for_each_ref("--format=%(refname)", "refs/trials/")).splitlines()
        return sorted(int(ref.rsplit("/", 1)[1]) for ref in refs)

    def drop_trial(self, trial: int) -> None:
        """Forget an interrupted trial's commit so it can be run again."""
        sha = self.trial_commit(trial)
        if sha:
            self.git.update_ref("-d", trial_ref(trial))

    def best(self) -> str | None:
        """The best branch's commit; None when the branch is gone (a resume makes it again from the ledger)."""
        try:
            return str(self.git.rev_parse("--verify", "--quiet", f"refs/heads/{BEST_BRANCH}^{{commit}}"))
        except git.GitCommandError:
            return None

    def set_best(self, sha: str) -> None:
        self.git.update_ref(f"refs/heads/{BEST_BRANCH}", sha)

    def add_note(self, sha: str, result: JsonObject) -> None:
        self._git_input(["notes", f"--ref={NOTES_REF}", "add", "-f", "-F", "-", sha],
                        json.dumps(result, sort_keys=True) + "\n")

    def note(self, sha: str) -> JsonObject | None:
        try:
            note = json.loads(self.git.notes(f"--ref={NOTES_REF}", "show", sha))
        except git.GitCommandError:
            return None
        return note if isinstance(note, dict) else None

    def message(self, sha: str) -> str:
        message = self.repo.commit(sha).message  # bytes only when GitPython cannot decode it
        return message if isinstance(message, str) else message.decode("utf-8", errors="replace")

    def branch_log(self) -> list[str]:
        """Commits on the best branch, newest first."""
        return str(self.git.rev_list(BEST_BRANCH)).splitlines()

