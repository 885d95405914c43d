"""A run on disk: its settings, git repository, ledger and method state, and how it is resumed.

runs/<name>/
    lock            flock-ed by the one arena process working on the run; holds its pid
    run.json        settings, dataset fingerprint and harness hash (written at creation, and again while
                    no trial is recorded if the settings change)
    repo/           bare git repository: branch `best`, refs/trials/<n>, notes refs/notes/arena
    ledger.jsonl    one line per finished trial (the source of truth on resume)
    results.tsv     autoresearch's format, rebuilt from the ledger
    best_train.py   the current best train.py, for reading
    state/          journal.pkl: the method's state, the trials it observed, every trial in flight
    logs/           trial-<n>.log, the full output of each trial
    compile-cache/  written by the baseline's train phase only; each trial compiles on a private copy
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import socket
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from agent.constants import Value, render_constants
from agent.dataset_build import DEFAULT_VAL_FRACTION
from agent.datasets import prepare_dataset
from agent.errors import ArenaError
from agent.feasibility import Verdict
from agent.flags import check_bounds, check_choices, fits, flag, flag_metadata, type_name
from agent.judging import best_of
from agent.ledger import Ledger, fsync_write, results_tsv
from agent.methods import CODE_EDITING_METHODS, METHODS, Method, Proposal, make_method
from agent.paths import RUNS_REMEDY, make_dirs, require_writable_dir
from agent.presets import Preset, get_preset, load_presets
from agent.record import Kind, Repair
from agent.runlock import RunLock
from agent.space import SearchSpace, load_space
from agent.surrogate.data import SURROGATE_PREFIX, data_fingerprint
from agent.template import (
    EDITABLE_FILE,
    HARNESS_FILES,
    harness_hash,
    may_resume_with,
    template_dir,
)
from agent.workspace import BEST_BRANCH, RunRepo, trial_ref
from sandbox.local import ISOLATIONS
from sandbox.owners import left_behind, owner_tag
from sandbox.phases import memory_bytes
from train_template.prepare import read_meta

JOURNAL_FILE = "journal.pkl"
TEMPLATE_FILES = (EDITABLE_FILE, *HARNESS_FILES, "program.md", "space.toml")
BACKENDS = ("local", "docker", "surrogate")
EXECUTORS = ("local", "ray")
FEASIBILITY = ("auto", "on", "off")
LLM = "LLM methods (centaur, llm, code)"  # the help's heading for the flags only they read
MAX_SECONDS = 1_000_000  # of a time setting: 11 days; past it, a typo (or inf) that would never end


@dataclass(frozen=True)
class RunSettings:
    """What a run is: its settings, each declared once here and a flag of `arena run` (agent/flags.py). A
    resumed run must match its stored settings in every field but those that may_change."""
    name: str = field(metadata=flag_metadata("run name; an existing run of that name is resumed (default: "
                                             "METHOD-PRESET-sSEED)", may_change=True))
    method: str = flag("random", "search method", METHODS)
    preset: str = flag("cpu", "a trial's device, model size, evaluation and budget", load_presets())
    budget: float | None = flag(None, "training seconds per trial (default: the preset's)", above=0,
                                maximum=MAX_SECONDS)
    eval_tokens: int | None = flag(None, "validation tokens (default: the preset's)", minimum=1)
    startup_allowance: float | None = flag(None, "seconds a trial's training phase may spend outside the budget "
                                           "(start-up, compile) before it is over_budget (default: the preset's)",
                                           minimum=0, maximum=MAX_SECONDS)
    backend: str = flag("local", "where trials run", BACKENDS)
    executor: str = flag("local", "local: trials on this machine; ray: each trial a Ray task on a cluster (one GPU, "
                         "or one CPU on a CPU preset), run there by --backend", EXECUTORS, may_change=True)
    ray_address: str | None = flag(None, "the Ray cluster's address, HOST:PORT (default: RAY_ADDRESS, a cluster on "
                                   "this machine, or a new one)", may_change=True)
    isolation: str = flag("bwrap", "local backend: bwrap runs each phase in a bubblewrap sandbox; none runs trials "
                          "unisolated, only for code you trust, recorded in the run and marked by compare", ISOLATIONS)
    image: str | None = flag(None, "docker image for trials (docker backend)")
    gpus: list[str] | None = flag(None, "GPUs for trials, one worker each: ids as nvidia-smi numbers them, e.g. 0 or "
                                  "0,1,2,3", may_change=True)
    workers: int | None = flag(None, "trials run at once (default: one per --gpus id, else 1); on a CPU preset "
                               "the cores are split between them", may_change=True, minimum=1)
    seed: int = flag(42, "seed of the method and of every trial", minimum=0, maximum=2**63 - 1)  # torch's range
    noise_margin: float = flag(0.0, "keep only trials better than the best by more than this", minimum=0)
    confirm: int = flag(0, "re-run a would-be best with this many other seeds; keep it only if the mean still wins",
                       minimum=0)
    corpus: str = flag("stdlib", "'stdlib' (offline), a directory of .txt/.parquet files, or an http(s) URL of a "
                       ".parquet/.txt file; '{shard:05d}' in the URL expands to --shards files")
    shards: int = flag(1, "how many shards a '{shard}' URL expands to", minimum=1)
    text_column: str = flag("text", "parquet column that holds the text")
    val_fraction: float = flag(DEFAULT_VAL_FRACTION, "share of documents held out for validation, chosen by a hash "
                               "of each document")
    mem_limit: str | None = flag(None, "host memory a trial's processes may use together, e.g. 64g; past it the "
                                 "trial ends as oom (default: 32g on docker, none on the local backend)")
    feasibility: str = flag("auto", "fixed-space methods: refuse a configuration the memory model predicts will not "
                            "fit, without running it (auto: on for GPU presets)", FEASIBILITY)
    device_memory: float | None = flag(None, "GB a trial may use, the feasibility limit (default: the GPU's memory "
                                       "on a GPU preset, 80 on the surrogate, else --mem-limit or the host's)", above=0)
    surrogate_data: list[str] | None = flag(None, "surrogate backend: the trials it learns from, comma-separated: "
                                            "run directories, ledger.jsonl files, the paper's trials.jsonl")
    space: str | None = flag(None, "your own space.toml for fixed-space methods, copied into the run at creation "
                             "(default: the template's)")
    model: str | None = flag(None, "LiteLLM model, e.g. ollama_chat/qwen3:8b, hosted_vllm/ID, openai/ID with "
                             "--api-base, anthropic/claude-..., gemini/...", group=LLM)
    api_base: str | None = flag(None, "base URL of an OpenAI-compatible or local server", group=LLM, may_change=True)
    temperature: float = flag(0.7, "sampling temperature", group=LLM, minimum=0)
    max_tokens: int = flag(4096, "answer length cap", group=LLM, may_change=True, minimum=1)
    llm_timeout: float = flag(120.0, "seconds per LLM call", group=LLM, may_change=True, above=0,
                             maximum=MAX_SECONDS)
    llm_retries: int = flag(3, "retries on rate limits, 5xx, timeouts", group=LLM, may_change=True, minimum=0,
                            maximum=100)
    llm_ratio: float = flag(0.3, "Centaur: share of trials the LLM proposes after warm-up", group=LLM, minimum=0,
                            maximum=1)
    llm_warmup: int = flag(10, "Centaur: CMA-ES-only trials first", group=LLM, minimum=0)
    top_k: int = flag(5, "best trials shown to the LLM", group=LLM, minimum=0)
    last_n: int = flag(20, "recent trials shown to the LLM", group=LLM, minimum=0)
    repairs: int = flag(2, "code agent: repair attempts for a rejected diff", group=LLM, minimum=0)
    llm_replay: str | None = flag(None, "answer from this run's recorded llm.jsonl instead of calling the model",
                                  group=LLM, may_change=True)

    def validate(self) -> None:
        check_choices(self)
        check_bounds(RunSettings, vars(self))
        if self.backend == "docker" and self.isolation == "none":
            raise ArenaError("--isolation none applies to the local backend; Docker always isolates each phase")
        if self.backend == "docker" and not self.image:
            raise ArenaError("the docker backend needs --image; build one with `docker build -t arena-gpu .` (CUDA; "
                             "a CPU image: `bash tests/build_test_image.sh NAME`)")
        if self.image and self.backend != "docker":
            raise ArenaError(f"--image is the docker backend's; add --backend docker, or leave --image out to run "
                             f"on the {self.backend} backend")
        if (self.backend == "surrogate") != bool(self.surrogate_data):
            raise ArenaError("--backend surrogate and --surrogate-data FILE[,FILE...] go together: the surrogate "
                             "answers trials from the recorded trials it is given")
        if self.backend == "surrogate" and self.method in CODE_EDITING_METHODS:
            raise ArenaError(f"the surrogate knows a train.py by its constants alone, so method '{self.method}' "
                             "cannot run on it; choose a fixed-space method (random, tpe, cmaes, centaur, llm)")
        if self.ray_address and self.executor != "ray":
            raise ArenaError("--ray-address goes with --executor ray")
        if self.executor == "ray" and self.gpus:
            raise ArenaError("with --executor ray the cluster gives each trial its GPU; leave --gpus out (--workers "
                             "caps the trials under way)")
        if self.mem_limit is not None:
            memory_bytes(self.mem_limit)  # says what is wrong with it, in one line
        check_run_name(self.name)


MAX_NAME_CHARS = 100
NAME_MAX = 255  # bytes of a file name, on Linux's file systems


def check_run_name(name: str) -> None:
    """A plain directory name: '' or '..' would name the runs directory or its parent."""
    if not name or "/" in name or name.startswith(".") or len(os.fsencode(name)) > NAME_MAX:
        raise ArenaError(f"--name {name!r} must be a plain directory name: no '/', not starting with '.', at most "
                         f"{NAME_MAX} bytes")


def check_new_run_name(name: str) -> None:
    """A new run's name prints as itself: it heads every report line and names files (runs made before this
    rule keep theirs)."""
    if not name.isprintable() or name != name.strip() or len(name) > MAX_NAME_CHARS:
        raise ArenaError(f"--name {name!r} must be a plain directory name: printable characters, no spaces at "
                         f"either end, at most {MAX_NAME_CHARS}")


MAY_CHANGE_ON_RESUME = frozenset(f.name for f in dataclasses.fields(RunSettings) if f.metadata.get("may_change"))


class RunInfo(TypedDict):
    """run.json: what the run is, written once when it is created."""
    settings: dict[str, Any]   # RunSettings, as JSON
    dataset_fingerprint: str
    harness_hash: str
    created: str


@dataclass(frozen=True)
class Change:
    """What an accepted proposal runs: its diff of the parent, and its constants for a fixed-space method. The
    repeat check compares a new proposal with these, for the trials still under way."""
    diff: str
    config: dict[str, Value] | None


@dataclass
class Job:
    """A trial the loop has decided to run: its number, what it runs and on which commit. Journaled from
    the moment it exists until its ledger line is written, so a restart re-runs exactly these."""
    trial: int
    kind: Kind
    proposal: Proposal
    parent: str | None   # the commit the trial builds on (None for the baseline, which is commit 0)
    seed: int
    confirms: int | None = None
    propose_seconds: float = 0.0
    memory: Verdict | None = None  # the memory model's, decided once before it first ran (--feasibility on)
    repairs: tuple[Repair, ...] = ()  # attempts refused so far, so a resume does not start the count again
    accepted: Change | None = None  # what it runs, once its proposal passed every rule (journaled)


class Journal(TypedDict):
    """state/journal.pkl, replaced atomically after every proposal, repair and observation: the method's
    state, the trials it has observed (in the order it did), and the trials in flight."""
    observed: list[int]
    state: Any
    in_flight: dict[int, Job]


@dataclass
class Run:
    """An open run: everything the loop needs, reconciled with the ledger."""
    dir: Path
    settings: RunSettings
    preset: Preset
    space: SearchSpace
    data_dir: Path
    repo: RunRepo
    ledger: Ledger
    method: Method[Any]
    harness_hash: str  # the current harness's: run.json's, or one that template.may_resume_with accepts
    info: RunInfo
    lock: RunLock  # held for as long as this process works on the run
    observed: list[int] = field(default_factory=list)       # trials the method has observed, in that order
    in_flight: dict[int, Job] = field(default_factory=dict)  # jobs made whose ledger line is not written yet
    stop: dict[str, float] = field(default_factory=dict)  # this arena's --trials/--hours, for the views' ETA

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    def set_status(self, **fields: object) -> None:
        """state/status.json: what the loop is doing now, for `arena watch` and the live view, with the
        writer's pid and host so that a view can tell a run in progress from an arena that was killed."""
        status = {**fields, "stop": self.stop, "time": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
        fsync_write(self.state_dir / "status.json", json.dumps(status) + "\n")

    def log_path(self, trial: int) -> Path:
        return self.dir / "logs" / f"trial-{trial:05d}.log"

    def save_journal(self) -> None:
        journal: Journal = {"observed": self.observed, "state": self.method.state(), "in_flight": self.in_flight}
        _atomic_pickle(self.state_dir / JOURNAL_FILE, journal)

    def journal_job(self, job: Job) -> None:
        """A new job, or a proposal repaired: from now on a restart runs this job instead of asking again."""
        self.in_flight[job.trial] = job
        self.save_journal()

    def journal_observed(self, trial: int) -> None:
        """After the ledger line of `trial` and method.observe() on it."""
        self.observed.append(trial)
        self.in_flight.pop(trial, None)
        self.save_journal()

    def write_views(self, best_commit: str) -> None:
        """The human-facing files derived from the ledger and the repository."""
        fsync_write(self.dir / "results.tsv", results_tsv(self.ledger.records))
        fsync_write(self.dir / "best_train.py", self.repo.show(best_commit, EDITABLE_FILE))


def load_journal(path: Path) -> Journal:
    """The run's own journal (written by _atomic_pickle, never by a trial), checked for its keys."""
    advice = "delete it to let the run rebuild the method's state from the ledger"
    try:
        value = pickle.loads(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - damaged bytes can make unpickling raise nearly anything
        raise ArenaError(f"{path} is unreadable ({type(e).__name__}: {e}); {advice}") from None
    if not isinstance(value, dict) or not set(Journal.__annotations__) <= set(value):
        raise ArenaError(f"{path} is not arena's journal; {advice}")
    return value  # type: ignore[return-value]  # its keys checked just above


def _atomic_pickle(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# Settings added after runs were recorded without them: such a run resumes with the behaviour it had.
BEFORE_THEY_EXISTED = {"feasibility": "off"}


def merge_settings(stored: dict[str, Any], given: dict[str, Any]) -> RunSettings:
    """Settings of an existing run; a flag given now must agree with what the run was started with."""
    stored = {**BEFORE_THEY_EXISTED, **stored}
    for key, value in given.items():
        if value is None or key in MAY_CHANGE_ON_RESUME:
            continue
        if key in stored and stored[key] != value:
            was = "the default" if stored[key] is None else repr(stored[key])  # None: the preset's, or none
            raise ArenaError(f"run '{stored['name']}' was started with {key}={was}, not {value!r}; "
                             "resume it with the same settings or choose another --name")
    merged = {**stored, **{k: v for k, v in given.items() if v is not None and k in MAY_CHANGE_ON_RESUME}}
    return RunSettings(**merged)


Preflight = Callable[[RunSettings, Preset, SearchSpace, Method[Any]], None]


def no_preflight(settings: RunSettings, preset: Preset, space: SearchSpace, method: Method[Any]) -> None:
    pass


def open_run(runs_dir: Path, given: dict[str, Any], cache_root: Path | None = None,
             preflight: Preflight = no_preflight) -> Run:
    """Create the run named in `given`, or resume it; either way locked, reconciled and ready for the loop.

    Nothing on disk changes until every check has passed and `preflight` (the sandbox, the device, the
    model) returned: a refused run is left exactly as it was, and no run is created (what a killed arena
    left half-made of it is cleared first, and a run it was remaking comes back). While a run has no
    recorded trial its settings may still change (it is made anew with them).
    """
    check_run_name(given["name"])  # before it is a path: '' or '..' would name the runs directory or its parent
    run_dir = runs_dir / given["name"]
    require_writable_dir(runs_dir, "the runs directory", RUNS_REMEDY)
    lock = None
    if not run_dir.exists():
        clear_interrupted_creation(run_dir)  # an arena killed while it remade the run had put the run aside
    if not run_dir.exists():
        check_new_run_name(given["name"])
    if run_dir.exists():
        if not (run_dir / "run.json").exists():
            raise ArenaError(f"{run_dir} exists but is not a run (no run.json); choose another --name")
        lock = RunLock.take(run_dir)  # before anything of the run is read
    try:
        return _open_locked(run_dir, given, cache_root, preflight, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _open_locked(run_dir: Path, given: dict[str, Any], cache_root: Path | None, preflight: Preflight,
                 lock: RunLock | None) -> Run:
    info = read_run_info(run_dir) if lock is not None else None
    for folder in ("state", "logs"):
        if (run_dir / folder).exists() and not (run_dir / folder).is_dir():
            raise ArenaError(f"{run_dir / folder} is not a directory; move it out of the run, then run the same "
                             "command again")
    ledger = Ledger.read(run_dir / "ledger.jsonl")
    if info is not None:
        check_journal_covered(run_dir, ledger.trials)
    stored = info["settings"] if info is not None else {}
    if stored.get("image") and stored.get("backend") != "docker":  # recorded before that was refused: unused
        stored = {**stored, "image": None}
    asked = RunSettings(**{**stored, **{k: v for k, v in given.items() if v is not None}})
    asked.validate()  # a bad value is named as such, before a resume says it differs from the run's
    get_preset(asked.preset, time_budget=asked.budget, eval_tokens=asked.eval_tokens,
               startup_allowance=asked.startup_allowance)
    settings = merge_settings(stored, given) if info is not None and ledger.records else asked
    preset = get_preset(settings.preset, time_budget=settings.budget, eval_tokens=settings.eval_tokens,
                        startup_allowance=settings.startup_allowance)
    if settings.gpus and not preset.device.startswith("cuda"):
        raise ArenaError(f"--gpus applies to a GPU preset, and preset '{preset.name}' trains on the CPU; leave "
                         "--gpus out or choose --preset gpu")
    recorded = bool(ledger.records)
    space_file = run_dir / "space.toml" if recorded else (Path(settings.space).expanduser() if settings.space else None)
    space = load_space(settings.preset, space_file)
    probe = make_method(settings, space, None)  # an unknown method or missing model fails before any work
    preflight(settings, preset, space, probe)  # before the dataset: a build takes a minute, a GPU check a second
    if settings.surrogate_data:  # its trials read no dataset: the trials it learns from stand in for one
        data_dir, fingerprint = run_dir, data_fingerprint([Path(p).expanduser() for p in settings.surrogate_data])
    else:
        data_dir = prepare_dataset(settings.corpus, preset.vocab_size, val_fraction=settings.val_fraction,
                                   shards=settings.shards, column=settings.text_column, cache_root=cache_root)
        fingerprint = read_meta(data_dir)["fingerprint"]
    harness = harness_hash()
    if info is not None and recorded:
        check_unchanged(info, fingerprint, harness)
    keeps = info is not None and (recorded or (not changed(info["settings"], settings)
                                               and info["dataset_fingerprint"] == fingerprint
                                               and may_resume_with(info["harness_hash"], harness)))
    # every check passed: from here on the run may change
    if info is None or lock is None or not keeps:
        info, lock = create_run_dir(run_dir, settings, preset, fingerprint, space_file, lock)
    ledger.repair()
    for folder in ("state", "logs"):  # a run whose folders were deleted gets them back empty
        (run_dir / folder).mkdir(exist_ok=True)
    repo = RunRepo(run_dir / "repo")
    repo.clear_stale_locks()
    run = Run(run_dir, settings, preset, space, data_dir, repo, ledger, make_method(settings, space, run_dir),
              harness, info, lock)
    reconcile(run)
    return run


def read_run_info(run_dir: Path) -> RunInfo:
    """run.json, checked for what a resume reads of it; one line saying what to do when it is damaged."""
    path = run_dir / "run.json"
    damaged = "restore it from a backup, or start a new run under another --name"
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArenaError(f"{path} is unreadable ({e}); {damaged}") from None
    hints = typing.get_type_hints(RunSettings)
    if (not isinstance(info, dict) or not isinstance(info.get("settings"), dict)
            or not all(isinstance(info.get(key), str) for key in ("dataset_fingerprint", "harness_hash"))):
        raise ArenaError(f"{path} is not a run's run.json (settings, dataset_fingerprint, harness_hash); {damaged}")
    for key, value in info["settings"].items():
        if key not in hints:
            raise ArenaError(f"{path} holds a setting this arena does not know, {key!r}; finish the run with the "
                             f"arena version that started it, or {damaged}")
        if not fits(hints[key], value):
            raise ArenaError(f"{path}: setting {key} is {value!r}, not {type_name(hints[key])}; {damaged}")
    try:
        check_bounds(RunSettings, info["settings"])
    except ArenaError as e:  # a flag the user may not have given, and cannot change once trials are recorded
        raise ArenaError(f"{path} holds a value this arena refuses ({e}); finish the run with the arena version "
                         "that started it, or start a new run under another --name") from None
    return typing.cast(RunInfo, info)


def changed(stored: dict[str, Any], settings: RunSettings) -> bool:
    """Whether `settings` differ from a run's stored ones in anything a trial depends on."""
    current = dataclasses.asdict(settings)
    return any(stored.get(key) != current[key] for key in current if key not in MAY_CHANGE_ON_RESUME)


def check_unchanged(info: RunInfo, fingerprint: str, harness: str) -> None:
    """What a resume needs to be the same run: its dataset and its harness."""
    name = info["settings"]["name"]
    if info["dataset_fingerprint"] != fingerprint:
        what = "the surrogate's trial files" if fingerprint.startswith(SURROGATE_PREFIX) else "the corpus"
        raise ArenaError(f"the dataset changed since run '{name}' started (fingerprint "
                         f"{info['dataset_fingerprint']} then, {fingerprint} now); restore {what}, or finish it "
                         "with the arena version that started it, or start a new run")
    if not may_resume_with(info["harness_hash"], harness):
        raise ArenaError(f"the harness ({'/'.join(HARNESS_FILES)}) changed since run '{name}' started; "
                         "finish it with the arena version that started it or start a new run")


def check_journal_covered(run_dir: Path, recorded: set[int]) -> None:
    """The method observes a trial only once its ledger line is written: trials it observed that the ledger
    lacks (an emptied or deleted ledger too) are lost lines, not a fresh run."""
    journal_path = run_dir / "state" / JOURNAL_FILE
    if journal_path.exists():
        unrecorded = set(load_journal(journal_path)["observed"]) - recorded
        if unrecorded:
            raise ArenaError(f"the method in {journal_path} has observed trials the ledger does not hold "
                             f"({', '.join(map(str, sorted(unrecorded)))}); the ledger lost lines — restore it from "
                             f"a backup, or delete {journal_path.parent} to run those trials again")


def create_run_dir(run_dir: Path, settings: RunSettings, preset: Preset, fingerprint: str,
                   space_file: Path | None, held: RunLock | None) -> tuple[RunInfo, RunLock]:
    """Build the run in a scratch directory, locked, and rename it into place, so a kill leaves no half-made
    run. A run with no recorded trial (`held`: its lock) is replaced; its logs are kept."""
    clear_interrupted_creation(run_dir)
    scratch = run_dir.with_name(f".{run_dir.name}.creating-{owner_tag()}")
    shutil.rmtree(scratch, ignore_errors=True)
    make_dirs(scratch / "state", f"the runs directory {run_dir.parent}", RUNS_REMEDY)
    lock = RunLock.take(scratch)
    files = {name: (template_dir() / name).read_text() for name in TEMPLATE_FILES}
    files[EDITABLE_FILE] = render_constants(files[EDITABLE_FILE], preset.constants)
    if space_file is not None:
        files["space.toml"] = space_file.read_text()
    (scratch / "space.toml").write_text(files["space.toml"])
    repo = RunRepo.create(scratch / "repo", files, f"baseline: the template with preset '{preset.name}'",
                          {"Arena-Trial": 0, "Arena-Method": "baseline"})
    repo.git.update_ref(trial_ref(0), f"refs/heads/{BEST_BRANCH}")
    info: RunInfo = {"settings": dataclasses.asdict(settings), "dataset_fingerprint": fingerprint,
            "harness_hash": harness_hash(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    fsync_write(scratch / "run.json", json.dumps(info, indent=2) + "\n")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if held is not None:  # replace the empty run we hold: its logs (failed baselines) move over
        if (run_dir / "logs").is_dir():
            shutil.move(run_dir / "logs", scratch / "logs")
        old = run_dir.with_name(f".{run_dir.name}.replaced-{owner_tag()}")
        run_dir.rename(old)
        scratch.rename(run_dir)
        held.release()
        shutil.rmtree(old, ignore_errors=True)
        return info, lock
    try:
        scratch.rename(run_dir)
    except OSError:  # another arena created the same run a moment ago
        lock.release()
        shutil.rmtree(scratch, ignore_errors=True)
        raise ArenaError(f"run '{run_dir.name}' was created by another arena process just now; run the same "
                         "command again to resume it (once that process is done with it)") from None
    return info, lock


def clear_interrupted_creation(run_dir: Path) -> None:
    """Remove what arenas killed while they made or remade this run left; but a run that was being replaced
    comes back if the new one never took its place, and failed baselines' logs moved out of it go back."""
    parent, name = run_dir.parent, run_dir.name
    for left in left_behind(parent, f".{name}.replaced-"):
        if not run_dir.exists():
            with contextlib.suppress(OSError):
                left.rename(run_dir)
        shutil.rmtree(left, ignore_errors=True)  # nothing once it came back
    for left in left_behind(parent, f".{name}.creating-"):
        if (left / "logs").is_dir() and run_dir.is_dir() and not (run_dir / "logs").exists():
            with contextlib.suppress(OSError):
                (left / "logs").rename(run_dir / "logs")
        shutil.rmtree(left, ignore_errors=True)


def migrate_legacy_state(run: Run, best_commit: str) -> None:
    """A run from before journal.pkl kept state/method.pkl (the state after observing trial k) and
    state/pending.pkl (a proposal being run, and the state right after it): they become the journal, so a
    resume across the upgrade is exact too and asks no model twice. Anything unreadable is left to the
    replay from the ledger."""
    method_path, pending_path = run.state_dir / "method.pkl", run.state_dir / "pending.pkl"
    if (run.state_dir / JOURNAL_FILE).exists() or not (method_path.exists() or pending_path.exists()):
        return
    trials = [record.trial for record in run.ledger.records]  # in trial order, in those versions
    with contextlib.suppress(Exception):  # the old files are the run's own pickles; damaged ones are skipped
        saved = pickle.loads(method_path.read_bytes()) if method_path.exists() else None
        pending = pickle.loads(pending_path.read_bytes()) if pending_path.exists() else None
        if pending is not None and (saved is None or pending["trial"] > saved["observed_through"]):
            trial = pending["trial"]
            in_flight = {} if trial in run.ledger.trials else {
                trial: Job(trial, "proposal", pending["proposal"], best_commit, run.settings.seed)}
            journal: Journal = {"observed": [t for t in trials if t < trial], "state": pending["state"],
                                "in_flight": in_flight}
        elif saved is not None:
            journal = {"observed": [t for t in trials if t <= saved["observed_through"]], "state": saved["state"],
                       "in_flight": {}}
        _atomic_pickle(run.state_dir / JOURNAL_FILE, journal)
    method_path.unlink(missing_ok=True)
    pending_path.unlink(missing_ok=True)


def reconcile(run: Run) -> None:
    """Bring git and the method state in line with the ledger after any interruption."""
    records = run.ledger.records
    best_trial, _ = best_of(records)
    best_commit = run.repo.trial_commit(best_trial)
    if best_commit is None:
        raise ArenaError(f"the run repository lost refs/trials/{best_trial}; the run is damaged — restore it")
    if run.repo.best() != best_commit:
        run.repo.set_best(best_commit)  # killed between recording a keep and moving the branch
    recorded = run.ledger.trials
    migrate_legacy_state(run, best_commit)
    # The method state to start from is the journal's: taken after the last proposal, repair or
    # observation. An observation the kill cut off (between the ledger line and the journal) is replayed
    # from the ledger: observing is cheap and deterministic, proposing is not.
    journal_path = run.state_dir / JOURNAL_FILE
    if journal_path.exists():
        journal = load_journal(journal_path)
        run.method.restore(journal["state"])
        run.observed = list(journal["observed"])
        run.in_flight = {trial: job for trial, job in journal["in_flight"].items() if trial not in recorded}
    for trial in run.repo.trial_numbers():
        if trial != 0 and trial not in recorded:
            run.repo.drop_trial(trial)  # an interrupted trial: it runs again, from its journaled job if it has one
    seen = set(run.observed)
    missed = [record for record in records if record.trial not in seen]
    for record in missed:
        run.method.observe(record)
        run.observed.append(record.trial)
    if missed or journal_path.exists():
        run.save_journal()
    run.write_views(best_commit)
