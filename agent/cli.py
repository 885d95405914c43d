"""The `arena` command line."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at run time

from rich.console import Console

from agent.constants import render_constants
from agent.datasets import prepare_dataset
from agent.errors import ArenaError
from agent.presets import Preset, get_preset, load_presets
from agent.template import HARNESS_FILES, template_dir
from train_template.prepare import DEFAULT_VAL_FRACTION, read_meta

console = Console(stderr=True, highlight=False, soft_wrap=True)  # errors stay on one line


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", default="stdlib",
                        help="'stdlib' (default, offline), a directory of .txt/.parquet files, or an http(s) URL "
                             "of a .parquet/.txt file; '{shard:05d}' in the URL expands to --shards files")
    parser.add_argument("--shards", type=int, default=1, help="how many shards a '{shard}' URL expands to")
    parser.add_argument("--text-column", default="text", help="parquet column that holds the text")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="share of documents held out for validation, chosen by a hash of each document")
    parser.add_argument("--cache", type=Path, default=None,
                        help="dataset cache directory (default $ARENA_CACHE or ~/.cache/autoresearch-arena)")


def dataset_for(args: argparse.Namespace, vocab_size: int) -> Path:
    if args.shards < 1:
        raise ArenaError(f"--shards must be at least 1, got {args.shards}")
    return prepare_dataset(args.corpus, vocab_size, val_fraction=args.val_fraction, shards=args.shards,
                           column=args.text_column, cache_root=args.cache, console=console)


def cmd_prepare(args: argparse.Namespace) -> int:
    vocab_size = args.vocab_size or get_preset(args.preset).vocab_size
    data_dir = dataset_for(args, vocab_size)
    meta = read_meta(data_dir)
    console.print(f"dataset {meta['fingerprint']}  corpus={meta['corpus']}  vocab={meta['vocab_size']}  "
                  f"train={meta['tokens']['train']:,} tokens  val={meta['tokens']['val']:,} tokens")
    print(data_dir)
    return 0


def require_device(preset: Preset) -> None:
    if preset.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ArenaError(f"preset '{preset.name}' needs a CUDA GPU, but torch sees none on this machine; "
                             "use --preset cpu or install a CUDA build of torch")


def cmd_train(args: argparse.Namespace) -> int:
    from sandbox import LocalBackend, Status, TrialSpec

    preset = get_preset(args.preset, time_budget=args.budget, eval_tokens=args.eval_tokens)
    require_device(preset)
    source_path = args.train_py or template_dir() / "train.py"
    try:
        source = source_path.read_text()
    except OSError as e:
        raise ArenaError(f"cannot read {source_path}: {e.strerror}; pass an existing file to --train-py") from None
    source = render_constants(source, preset.constants)
    data_dir = dataset_for(args, preset.vocab_size)
    with tempfile.TemporaryDirectory(prefix="arena-train-") as tree:
        (Path(tree) / "train.py").write_text(source)
        spec = TrialSpec(tree=Path(tree), data_dir=data_dir, harness_dir=template_dir(), harness_files=HARNESS_FILES,
                         config=preset.harness_config(args.seed), startup_allowance=preset.startup_allowance,
                         eval_timeout=preset.eval_timeout)
        console.print(f"training the template with preset '{preset.name}' ({preset.description}), "
                      f"budget {preset.time_budget:g} s, seed {args.seed}")
        outcome = LocalBackend().run(spec, on_log=lambda line: print(line, end="", flush=True))
    style = "green" if outcome.status is Status.OK else "red"
    console.print(f"[{style}]{outcome.status.value}[/]: {outcome.reason}")
    return 0 if outcome.status is Status.OK else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena", description="An arena for agents and optimizers that improve a "
                                     "small language model's training script under a fixed time budget.")
    sub = parser.add_subparsers(dest="command", required=True)
    presets = list(load_presets())

    p = sub.add_parser("prepare", help="build the tokenized dataset (cached by content)")
    add_data_arguments(p)
    p.add_argument("--preset", default="cpu", choices=presets, help="take the vocabulary size from this preset")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (overrides the preset's)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="run the training template once, unmodified, and print its result")
    add_data_arguments(p)
    p.add_argument("--preset", default="cpu", help=f"one of: {', '.join(presets)}")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--budget", type=float, default=None, help="training seconds (default: the preset's)")
    p.add_argument("--eval-tokens", type=int, default=None, help="validation tokens (default: the preset's)")
    p.add_argument("--train-py", type=Path, default=None, help="train this file instead of the template's")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ArenaError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
