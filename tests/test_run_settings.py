"""Run settings declared once: every field of RunSettings is one flag of `arena run`, its help shows the
field's default, and a command line survives the trip through run.json unchanged."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

import pytest

from agent.cli import build_parser, given_options, read_config_file
from agent.errors import ArenaError
from agent.flags import add_flags, flag
from agent.run import RunSettings

SETTINGS = dataclasses.fields(RunSettings)


def subcommand(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def flags_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings}


def other_value(field: dataclasses.Field) -> tuple[str, object]:
    """A value of the field unlike its default: as typed on the command line, and as the setting holds it."""
    choices = field.metadata["choices"]
    if choices:
        choice = next(c for c in choices if c != field.default)
        return choice, choice
    hint = typing.get_type_hints(RunSettings)[field.name]
    if hint in (int, int | None):
        return "7", 7
    if hint in (float, float | None):
        return "0.25", 0.25
    if hint == list[str] | None:
        return "0, 1", ["0", "1"]
    return f"my-{field.name}", f"my-{field.name}"


def test_every_setting_is_exactly_one_flag_of_arena_run():
    flags = flags_of(subcommand("run"))
    not_settings = {"help", "trials", "hours", "cache", "config", "runs_dir", "no_tui"}
    assert set(flags) - not_settings == {f.name for f in SETTINGS}
    for field in SETTINGS:
        assert flags[field.name].option_strings == ["--" + field.name.replace("_", "-")]
        assert flags[field.name].default is None  # absent: as the run was started, or as its config file says


def test_help_shows_the_dataclass_defaults():
    flags = flags_of(subcommand("run"))
    for field in SETTINGS:
        if field.default not in (None, dataclasses.MISSING):
            assert flags[field.name].help.endswith(f"default: {field.default})"), field.name
    train = flags_of(subcommand("train"))
    assert train["seed"].default == 42 and train["isolation"].default == "bwrap"  # a command of one trial
    assert train["preset"].choices == ("cpu", "gpu")


def test_a_flag_is_built_from_its_field():
    @dataclasses.dataclass(frozen=True)
    class Toy:
        batch_size: int = flag(3, "rows per step")
        devices: list[str] | None = flag(None, "ids (default: all)", may_change=True)
        mode: str = flag("fast", "how", ("fast", "slow"), group="tuning")

    parser = argparse.ArgumentParser()
    add_flags(parser, Toy)
    assert "rows per step (default: 3)" in " ".join(parser.format_help().split())
    assert "how (one of: fast, slow; default: fast)" in " ".join(parser.format_help().split())
    assert "tuning:" in parser.format_help()
    args = parser.parse_args(["--batch-size", "5", "--devices", "2,3"])
    assert Toy(**vars(args)) == Toy(batch_size=5, devices=["2", "3"], mode="fast")
    with pytest.raises(SystemExit):  # argparse checks the choices of a flag with defaults
        parser.parse_args(["--mode", "medium"])


def test_a_command_line_survives_run_json():
    argv, expected = ["run"], {}
    for field in SETTINGS:
        text, value = other_value(field)
        argv += ["--" + field.name.replace("_", "-"), text]
        expected[field.name] = value
    settings = RunSettings(**given_options(build_parser().parse_args(argv)))
    assert dataclasses.asdict(settings) == expected
    stored = json.loads(json.dumps({"settings": dataclasses.asdict(settings)}))["settings"]  # as run.json holds it
    assert RunSettings(**stored) == settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1


def test_a_config_file_reads_text_as_the_command_line_does(tmp_path: Path):
    config = tmp_path / "run.toml"
    config.write_text('gpus = "0,1"\nseed = "3"\nmethod = "tpe"\n')
    assert read_config_file(config) == {"gpus": ["0", "1"], "seed": 3, "method": "tpe"}
    config.write_text('seed = "many"\n')
    with pytest.raises(ArenaError, match="seed = 'many' is not a valid int"):
        read_config_file(config)


@pytest.mark.parametrize("line, problem", [
    ('trials = "five"', "trials = 'five' is not a valid int"),
    ("trials = 2.5", "trials = 2.5 is not a whole number"),
    ('hours = "x"', "hours = 'x' is not a valid float"),
    ("corpus = 3", "corpus = 3 is not a string"),
    ("mem_limit = 8", "mem_limit = 8 is not a string"),
    ("gpus = 0", "gpus = 0 is not a list of strings"),
    ("confirm = true", "confirm = True is not a whole number"),
    ('gpus = ["0", 1]', "is not a list of strings"),
])
def test_a_config_value_of_the_wrong_type_is_one_line(tmp_path: Path, line, problem):
    """They used to pass through, to fail later with a traceback or to start a run nobody asked for."""
    config = tmp_path / "run.toml"
    config.write_text(line + "\n")
    with pytest.raises(ArenaError, match=problem):
        read_config_file(config)


def test_config_values_of_their_types_are_taken(tmp_path: Path):
    config = tmp_path / "run.toml"
    config.write_text('trials = 3\nhours = 2\nruns_dir = "elsewhere"\nbudget = 30\ngpus = ["0", "1"]\n'
                      "noise_margin = 0\n")
    assert read_config_file(config) == {"trials": 3, "hours": 2.0, "runs_dir": "elsewhere", "budget": 30.0,
                                        "gpus": ["0", "1"], "noise_margin": 0.0}


def test_a_value_outside_the_choices_is_refused_by_the_settings():
    with pytest.raises(ArenaError, match="unknown backend 'cloud'; choose one of: local, docker"):
        RunSettings(name="x", backend="cloud").validate()
