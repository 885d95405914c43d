"""The `arena` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import signal
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at run time

import git
from rich.console import Console
from rich.markup import escape

from agent.constants import read_constants, render_constants
from agent.datasets import prepare_dataset
from agent.errors import ArenaError, Terminated, raise_terminated
from agent.feasibility import for_run
from agent.flags import add_flags, check_bounds, parse_texts
from agent.paths import path_argument, read_text_file
from agent.presets import Preset, get_preset, load_presets
from agent.run import RunSettings
from agent.template import HARNESS_FILES, harness_hash, template_dir
from sandbox.errors import SandboxError
from train_template.prepare import read_meta

if TYPE_CHECKING:
    from agent.methods import Method
    from agent.space import SearchSpace
    from sandbox import Placement, TrialRunner

console = Console(stderr=True, highlight=False, soft_wrap=True)  # errors stay on one line


DATA_SETTINGS = ("corpus", "shards", "text_column", "val_fraction")
MAX_TRAIN_PY_BYTES = 1 << 20  # the template is 24 KB; a file past this is a mistake
MAX_CONFIG_BYTES = 1 << 20


def add_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=path_argument, default=None,
                        help="dataset cache directory (default $ARENA_CACHE or ~/.cache/autoresearch-arena)")


def dataset_for(args: argparse.Namespace, vocab_size: int) -> Path:
    return prepare_dataset(args.corpus, vocab_size, val_fraction=args.val_fraction, shards=args.shards,
                           column=args.text_column, cache_root=args.cache, console=console)


def cmd_prepare(args: argparse.Namespace) -> int:
    check_bounds(RunSettings, vars(args))  # what argparse's types leave open: NaN, a shard count of 0, ...
    vocab_size = args.vocab_size if args.vocab_size is not None else get_preset(args.preset).vocab_size
    data_dir = dataset_for(args, vocab_size)
    meta = read_meta(data_dir)
    console.print(f"dataset {meta['fingerprint']}  corpus={meta['corpus']}  vocab={meta['vocab_size']}  "
                  f"train={meta['tokens']['train']:,} tokens  val={meta['tokens']['val']:,} tokens"
                  f"  validation from: {meta.get('validation_from', 'all documents')}", markup=False)
    print(data_dir)
    return 0


def require_device(preset: Preset) -> None:
    if preset.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ArenaError(f"preset '{preset.name}' needs a CUDA GPU, but torch sees none on this machine; "
                             "use --preset cpu or install a CUDA build of torch")


def train_source(path: Path | None, preset: Preset) -> str:
    """What `arena train` runs: the template with the preset's constants, or the user's file as written (a
    run's best_train.py, say), its constants block checked."""
    if path is None:
        return render_constants((template_dir() / "train.py").read_text(), preset.constants)
    source = read_text_file(path, "--train-py", MAX_TRAIN_PY_BYTES)
    read_constants(source)
    try:  # as arena run checks a proposal before it runs it
        compile(source, str(path), "exec")
    except (SyntaxError, ValueError) as e:
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        raise ArenaError(f"{path} does not compile{where}: {getattr(e, 'msg', None) or e}; fix it") from None
    return source


def cmd_train(args: argparse.Namespace) -> int:
    from sandbox import BudgetRule, LocalBackend, Status, TrialSpec
    from sandbox.outcome import summary

    check_bounds(RunSettings, vars(args))  # NaN or an endless budget, a negative seed, ...
    preset = get_preset(args.preset, time_budget=args.budget, eval_tokens=args.eval_tokens)
    require_device(preset)
    source = train_source(args.train_py, preset)
    # on a GPU preset, the first GPU, as arena run's one worker has it: the sandbox binds only the GPUs it is given
    backend = LocalBackend(isolation=args.isolation, gpus=["0"] if preset.device.startswith("cuda") else None)
    data_dir = dataset_for(args, preset.vocab_size)  # after the sandbox's checks: a build takes a while
    spec = TrialSpec(source=source, data_dir=data_dir, harness_dir=template_dir(), harness_files=HARNESS_FILES,
                     harness_hash=harness_hash(), config=preset.harness_config(args.seed),
                     budget=BudgetRule(preset.time_budget, preset.startup_allowance), eval_timeout=preset.eval_timeout)
    what = args.train_py or "the template"
    console.print(f"training {what} with preset '{preset.name}' ({preset.description}), "
                  f"budget {preset.time_budget:g} s, seed {args.seed}, isolation {backend.isolation}", markup=False)
    outcome = backend.run(spec, on_log=lambda line: print(line, end="", flush=True))
    result = {**(outcome.result or {}), "status": outcome.status.value, "seed": args.seed,
              "time_budget": preset.time_budget, "isolation": backend.isolation}
    print(summary(outcome) + "ARENA_RESULT " + json.dumps(result), flush=True)
    style = "green" if outcome.status is Status.OK else "red"
    console.print(f"[{style}]{outcome.status.value}[/]: {escape(outcome.reason)}")
    return 0 if outcome.status is Status.OK else 1


@dataclasses.dataclass
class RunExtent:
    """How long a run goes on and where it lives: not settings of the run, but a config file may give them."""
    trials: int | None = None
    hours: float | None = None
    runs_dir: str | None = None


SETTING_KEYS = {f.name for f in dataclasses.fields(RunSettings)}
RUN_KEYS = {f.name for f in dataclasses.fields(RunExtent)}


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML file; keys are the long flag names (dashes or underscores), and a string value is
    read as the flag's text would be."""
    try:
        raw = tomllib.loads(read_text_file(path, "config file", MAX_CONFIG_BYTES))
    except tomllib.TOMLDecodeError as e:
        raise ArenaError(f"config file {path} is not valid TOML ({e}); fix it") from None
    config = {key.replace("-", "_"): value for key, value in raw.items()}
    unknown = sorted(set(config) - SETTING_KEYS - RUN_KEYS)
    if unknown:
        raise ArenaError(f"config file {path} has unknown keys {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(SETTING_KEYS | RUN_KEYS))}")
    source = f"config file {path}"
    return {**parse_texts(RunSettings, {k: v for k, v in config.items() if k in SETTING_KEYS}, source),
            **parse_texts(RunExtent, {k: v for k, v in config.items() if k in RUN_KEYS}, source)}


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """What `arena run` was told: its config file, then its flags over it; what neither gives is left out."""
    given = read_config_file(args.config) if args.config else {}
    given.update({k: v for k, v in vars(args).items() if v is not None and k in SETTING_KEYS | RUN_KEYS})
    return given


def cmd_run(args: argparse.Namespace) -> int:
    from agent.judging import best_of
    from agent.loop import StopRule, final_status, make_backend, placements, run_loop
    from agent.methods import ModelBacked
    from agent.record import counted
    from agent.run import open_run
    from sandbox import Backend

    given = given_options(args)
    trials, hours = given.pop("trials", None), given.pop("hours", None)
    runs_dir = str(given.pop("runs_dir", "runs"))
    if not runs_dir.strip():  # from a config file (the flag's type refuses it): not the current directory
        raise ArenaError("runs_dir is empty; name a directory, or leave it out for ./runs")
    default_trials = trials is None and hours is None
    if default_trials:
        trials = 10
    if trials is not None and trials < 1:
        raise ArenaError(f"--trials must be at least 1, got {trials}")
    if hours is not None and not 0 < hours < math.inf:
        raise ArenaError(f"--hours must be a positive finite number, got {hours}")
    given.setdefault("name", f"{given.get('method', 'random')}-{given.get('preset', 'cpu')}-s{given.get('seed', 42)}")
    backends: list[TrialRunner] = []
    workers: list[Placement] = []

    def preflight(settings: RunSettings, preset: Preset, space: SearchSpace, method: Method[Any]) -> None:
        """Whatever can refuse the run, before anything of it is created or changed."""
        if settings.backend == "local" and settings.executor == "local":  # (Ray nodes have their own devices)
            require_device(preset)
        backends.append(make_backend(settings, preset, space))  # the sandbox works here, or the surrogate fits
        workers[:] = placements(settings, preset, backends[-1])  # the GPUs named exist, the cores suffice
        if isinstance(backends[-1], Backend):
            for placement in workers:  # and work in a sandbox
                backends[-1].check_placement(placement)
        for_run(settings, preset, space, workers)  # the device's memory is known, and fits the smallest config
        if isinstance(method, ModelBacked):
            method.check_ready()  # an unreachable model stops the run here, before any trial

    run = open_run(Path(runs_dir), given, cache_root=args.cache, preflight=preflight)
    backend = backends[-1]
    done = len(run.ledger)
    console.print(f"run '{run.settings.name}' in {run.dir}: method {run.settings.method}, preset "
                  f"{run.preset.name}, backend {run.settings.backend}"
                  + (f", {len(workers)} workers ({', '.join(p.label() for p in workers)})" if len(workers) > 1 else "")
                  + f", {done} trials recorded" + (", resuming" if done else ""), markup=False)
    quality = getattr(backend, "quality", None)
    if quality is not None:
        console.print(quality.line(), markup=False)
        for note in getattr(backend, "notes", []):
            console.print(f"note: {note}", markup=False)
    elif run.preset.probed_positions() < run.preset.seq_len - 1:
        console.print(f"note: with {run.preset.eval_tokens:,} validation tokens the causality probes cut at "
                      f"{run.preset.probed_positions()} of the {run.preset.seq_len - 1} positions where a model could "
                      "peek at the next token, so one that peeks at a few can pass; the preset's own --eval-tokens "
                      "covers them all", markup=False)
    if trials is not None and trials < counted(run.ledger.records):
        asked = f"the default of {trials} trials" if default_trials else f"--trials {trials}"
        console.print(f"note: the run has {counted(run.ledger.records)} trials already, more than {asked}: nothing "
                      "more to run", markup=False)
        trials = counted(run.ledger.records)  # the target the run reached stays the one it shows
    stop = StopRule(trials=trials, hours=hours)
    signal.signal(signal.SIGTERM, raise_terminated)
    if sys.stdout.isatty() and not args.no_tui:
        from agent.ui.live import live_view

        with live_view(run.dir, stop) as report, final_status(run):
            run_loop(run, backend, stop, report=report, where=workers)
    else:
        with final_status(run):
            run_loop(run, backend, stop, report=lambda line: console.print(line, markup=False), where=workers)
    best_trial, best_value = best_of(run.ledger.records)
    ran = counted(run.ledger.records)  # as --trials counts: infeasible proposals ran nothing
    refused = f" (+{len(run.ledger) - ran} infeasible, not run)" if len(run.ledger) > ran else ""
    console.print(f"done: {ran} trial{'s' * (ran != 1)}{refused}, best val_bpb {best_value:.6f} (trial {best_trial}); "
                  f"its train.py: {run.dir / 'best_train.py'}; history: git -C {run.dir / 'repo'} log best",
                  markup=False)
    return 0


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is an ArenaError: one `error:` line and exit code 2, as for any
    other bad input (argparse itself would print its usage block first)."""

    def error(self, message: str) -> NoReturn:
        raise ArenaError(f"{message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="arena", description="An arena for agents and optimizers that improve a "
                    "small language model's training script under a fixed time budget.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    presets = list(load_presets())

    p = sub.add_parser("prepare", help="build the tokenized dataset (cached by content)")
    add_flags(p, RunSettings, DATA_SETTINGS)
    add_cache_argument(p)
    p.add_argument("--preset", default="cpu", choices=presets, help="take the vocabulary size from this preset")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (overrides the preset's)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="run the training template once, unmodified, and print its result")
    add_flags(p, RunSettings, (*DATA_SETTINGS, "preset", "seed", "budget", "eval_tokens", "isolation"))
    add_cache_argument(p)
    p.add_argument("--train-py", type=path_argument, default=None, help="train this file instead of the template's")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run a search: trials proposed by a method, each a git commit, best kept")
    add_flags(p, RunSettings, with_defaults=False)  # an absent flag: as the run was started, or the config file
    p.add_argument("--trials", type=int, default=None, help="stop at this many trials, baseline included "
                   "(default 10)")
    p.add_argument("--hours", type=float, default=None, help="stop after this much trial time")
    add_cache_argument(p)
    p.add_argument("--config", type=path_argument, default=None, help="TOML file with any of these settings")
    p.add_argument("--runs-dir", type=path_argument, default=None, help="where runs live (default ./runs)")
    p.add_argument("--no-tui", action="store_true", help="plain progress lines instead of the live view")
    p.set_defaults(func=cmd_run)

    from agent.ui import compare, live, replay

    live.add_parser(sub)
    replay.add_parser(sub)
    compare.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    resume = ""  # what to do after an interruption
    try:
        args, unknown = build_parser().parse_known_args(argv)
        resume = "; run the same command to resume" if args.command == "run" else ""
        if unknown:  # argparse would name the top-level parser's help; the subcommand's lists what it takes
            raise ArenaError(f"unrecognized arguments: {' '.join(unknown)}; see `arena {args.command} --help`")
        command: Callable[[argparse.Namespace], int] = args.func
        return command(args)
    except (ArenaError, SandboxError) as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        return 2
    except git.GitCommandError as e:  # a run's repository that git itself refuses: say which command, and why
        said = re.search(r"(?:fatal|error): (.*)", str(e.stderr or ""))  # GitPython quotes git's stderr
        reason = said.group(1).strip(" '") if said else f"exit code {e.status}"
        console.print(f"[red]error:[/] git {escape(' '.join(map(str, e.command[1:3])))} failed in a run's "
                      f"repository ({escape(reason)}); check it with `git fsck` in runs/NAME/repo, then run the "
                      "same command again")
        return 2
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]{resume}")
        return 130
    except Terminated:
        console.print(f"[yellow]terminated (SIGTERM)[/]{resume}")
        return 143


if __name__ == "__main__":
    sys.exit(main())
