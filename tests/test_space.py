from __future__ import annotations

import math

import numpy as np
import pytest

from agent.constants import read_constants
from agent.errors import ArenaError
from agent.presets import load_presets
from agent.space import Param, SearchSpace, SpaceError, load_space
from agent.template import template_dir

TEMPLATE_NAMES = list(read_constants((template_dir() / "train.py").read_text()))
PRESETS = ["cpu", "gpu"]


@pytest.fixture(params=PRESETS)
def space(request) -> SearchSpace:
    return load_space(request.param)


def test_each_preset_covers_the_template_constants_in_file_order(space):
    assert list(space) == TEMPLATE_NAMES
    assert [p.name for p in space.categorical] == ["WINDOW_PATTERN"]
    assert [p.name for p in space.numeric] == [n for n in TEMPLATE_NAMES if n != "WINDOW_PATTERN"]


@pytest.mark.parametrize("preset", PRESETS)
def test_starting_constants_lie_inside_the_space(preset):
    load_space(preset).check(load_presets()[preset].constants)


def test_gpu_space_is_the_papers():
    space = load_space("gpu")
    expected = {"DEPTH": ("int", 4, 24, False), "ASPECT_RATIO": ("int", 32, 128, False),
                "HEAD_DIM": ("pow2", 64, 256, False), "DEVICE_BATCH_SIZE": ("pow2", 32, 256, False),
                "TOTAL_BATCH_SIZE": ("pow2", 2**16, 2**21, False), "EMBEDDING_LR": ("float", 0.01, 2, True),
                "UNEMBEDDING_LR": ("float", 5e-4, 5e-2, True), "MATRIX_LR": ("float", 5e-3, 0.2, True),
                "SCALAR_LR": ("float", 0.05, 2, True), "WEIGHT_DECAY": ("float", 0, 0.5, False),
                "WARMUP_RATIO": ("float", 0, 0.3, False), "WARMDOWN_RATIO": ("float", 0.1, 0.8, False),
                "FINAL_LR_FRAC": ("float", 0, 0.2, False)}
    for name, (kind, low, high, log) in expected.items():
        param = space[name]
        assert (param.kind, param.low, param.high, param.log) == (kind, low, high, log), name
    assert space["WINDOW_PATTERN"].choices == ("SSSL", "SSLL", "SLSL", "LLLL", "SSSS", "LSSL")


def test_samples_stay_in_bounds_and_reach_both_ends(space):
    samples = [space.sample(np.random.default_rng(seed)) for seed in range(2000)]
    for config in samples:
        space.check(config)
        assert list(config) == list(space)
    for param in space.numeric:
        values = [config[param.name] for config in samples]
        if param.kind == "float":
            assert all(type(v) is float for v in values)
            units = [param.to_unit(v) for v in values]
            assert min(units) < 0.01 and max(units) > 0.99, param.name
        else:
            assert all(type(v) is int for v in values)
            assert min(values) == param.low and max(values) == param.high, param.name
        if param.kind == "pow2":
            assert all(v & (v - 1) == 0 for v in values)
    for param in space.categorical:
        assert {config[param.name] for config in samples} == set(param.choices)


def test_pow2_sampling_is_uniform_over_exponents():
    param = Param("HEAD_DIM", "pow2", 16, 256)
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(5000):
        value = param.sample(rng)
        counts[value] = counts.get(value, 0) + 1
    assert sorted(counts) == [16, 32, 64, 128, 256]
    assert all(800 < n < 1200 for n in counts.values())


def test_log_int_sampling_gives_the_end_points_their_share():
    param = Param("DEPTH", "int", 1, 4, log=True)
    rng = np.random.default_rng(1)
    values = [param.sample(rng) for _ in range(20000)]
    share = {v: values.count(v) / len(values) for v in range(1, 5)}
    width = math.log(4.5) - math.log(0.5)  # each int owns [v - 0.5, v + 0.5) in log space
    for v in range(1, 5):
        assert share[v] == pytest.approx((math.log(v + 0.5) - math.log(v - 0.5)) / width, abs=0.015)


def test_unit_round_trip(space):
    rng = np.random.default_rng(7)
    for _ in range(300):
        config = space.sample(rng)
        x = space.to_unit(config)
        assert x.shape == (len(space.numeric),) and np.all((x >= 0) & (x <= 1))
        back = space.from_unit(x)
        assert list(back) == [p.name for p in space.numeric]
        for param in space.numeric:
            if param.kind == "float":
                assert back[param.name] == pytest.approx(config[param.name], rel=1e-12, abs=1e-15)
            else:
                assert back[param.name] == config[param.name] and type(back[param.name]) is int


def test_from_unit_clips_rounds_and_hits_the_bounds(space):
    lows, highs = space.from_unit(np.zeros(len(space.numeric))), space.from_unit(np.ones(len(space.numeric)))
    assert lows == {p.name: p.low for p in space.numeric} and highs == {p.name: p.high for p in space.numeric}
    assert space.from_unit(np.full(len(space.numeric), -3.0)) == lows
    assert space.from_unit(np.full(len(space.numeric), 7.0)) == highs
    rng = np.random.default_rng(3)
    for _ in range(300):
        space.check(space.from_unit(rng.uniform(-0.2, 1.2, len(space.numeric))))


def test_unit_coordinates_follow_the_documented_scales():
    lr = Param("MATRIX_LR", "float", 0.005, 0.2, log=True)
    assert lr.from_unit(0.5) == pytest.approx(math.sqrt(0.005 * 0.2))
    assert lr.to_unit(math.sqrt(0.005 * 0.2)) == pytest.approx(0.5)
    batch = Param("TOTAL_BATCH_SIZE", "pow2", 2**16, 2**20)
    assert [batch.from_unit(u) for u in (0, 0.25, 0.5, 0.75, 1)] == [2**16, 2**17, 2**18, 2**19, 2**20]
    assert batch.from_unit(0.3) == 2**17 and batch.to_unit(2**18) == 0.5
    depth = Param("DEPTH", "int", 4, 24)
    assert depth.to_unit(14) == 0.5 and depth.from_unit(0.52) == 14
    decay = Param("WEIGHT_DECAY", "float", 0.0, 0.5)
    assert decay.from_unit(0.25) == 0.125


def test_from_unit_wants_one_coordinate_per_numeric_param(space):
    with pytest.raises(SpaceError, match=f"expected a point with {len(space.numeric)} coordinates"):
        space.from_unit([0.5])
    with pytest.raises(SpaceError, match="NaN"):
        space.from_unit(np.full(len(space.numeric), np.nan))


@pytest.mark.parametrize("config, message", [
    ({"DEPTH": 40}, "DEPTH = 40 is outside its range [4, 24]"),
    ({"DEPTH": 8.0}, "DEPTH must be an int"),
    ({"DEPTH": True}, "DEPTH must be an int"),
    ({"HEAD_DIM": 96}, "HEAD_DIM = 96 is not a power of two"),
    ({"HEAD_DIM": 512}, "HEAD_DIM = 512 is outside"),
    ({"MATRIX_LR": 0.5}, "MATRIX_LR = 0.5 is outside its range [0.005, 0.2]"),
    ({"MATRIX_LR": float("nan")}, "MATRIX_LR must be a finite number"),
    ({"MATRIX_LR": "0.04"}, "MATRIX_LR must be a finite number"),
    ({"WINDOW_PATTERN": "SSXL"}, "WINDOW_PATTERN = 'SSXL' is not one of"),
    ({"DROPOUT": 0.1}, "DROPOUT is not in the search space"),
    ({"DEPTH": 8, "MATRIX_LR": 1.0, "HEAD_DIM": 96}, "MATRIX_LR"),  # the first bad value is named
])
def test_check_names_the_first_bad_value(config, message):
    with pytest.raises(SpaceError) as err:
        load_space("gpu").check(config)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ArenaError)


def test_check_accepts_ints_for_floats_and_ignores_missing_names():
    load_space("gpu").check({"WARMUP_RATIO": 0, "EMBEDDING_LR": 1})


def test_to_unit_refuses_incomplete_or_out_of_bounds_configs():
    space = load_space("cpu")
    with pytest.raises(SpaceError, match="lacks DEPTH"):
        space.to_unit({})
    config = {**load_presets()["cpu"].constants, "DEPTH": 99}
    with pytest.raises(SpaceError, match="DEPTH = 99"):
        space.to_unit(config)


GOOD_DEPTH = '[cpu.DEPTH]\nkind = "int"\nlow = 2\nhigh = 6\n'


@pytest.mark.parametrize("text, message", [
    ('[cpu.DEPTH]\nkind = "integer"\nlow = 1\nhigh = 6\n', "unknown kind 'integer'; use one of int, float, pow2"),
    ('[cpu.DEPTH]\nlow = 1\nhigh = 6\n', "unknown kind None"),
    ('[cpu.DEPTH]\nkind = "int"\nlow = 6\nhigh = 6\n', "low (6) must be below high (6)"),
    ('[cpu.MATRIX_LR]\nkind = "float"\nlow = 0.0\nhigh = 0.2\nlog = true\n', "a log scale needs low > 0"),
    ('[cpu.MATRIX_LR]\nkind = "float"\nlow = 0.1\nhigh = 0.2\nlog = "yes"\n', "log must be true or false"),
    ('[cpu.HEAD_DIM]\nkind = "pow2"\nlow = 16\nhigh = 96\n', "high = 96 is not a power of two"),
    ('[cpu.HEAD_DIM]\nkind = "pow2"\nlow = 16\nhigh = 64\nlog = true\n', "unknown key 'log' for kind pow2"),
    ('[cpu.DEPTH]\nkind = "int"\nlow = 1\nhihg = 6\n', "unknown key 'hihg'"),
    ('[cpu.DEPTH]\nkind = "int"\nlow = 1\n', "kind int needs 'high'"),
    ('[cpu.DEPTH]\nkind = "int"\nlow = 1.5\nhigh = 6\n', "low of a int must be an integer"),
    ('[cpu.MATRIX_LR]\nkind = "float"\nlow = "a"\nhigh = 0.2\n', "low must be a number"),
    ('[cpu.WINDOW_PATTERN]\nkind = "categorical"\nchoices = []\n', "a categorical needs a non-empty list"),
    ('[cpu.WINDOW_PATTERN]\nkind = "categorical"\nchoices = ["SSSL", "SSSL"]\n', "listed twice"),
    ('[cpu.DROPOUT]\nkind = "float"\nlow = 0.0\nhigh = 0.5\n', "DROPOUT is not a constant of train.py"),
    ('[cpu]\nDEPTH = 3\n', "expected a table with kind"),
    ('[gpu.DEPTH]\nkind = "int"\nlow = 4\nhigh = 24\n', "has no [cpu] table"),
    ('', "has no [cpu] table"),
    ('[cpu.DEPTH\nkind = "int"\n', "is not valid TOML"),
])
def test_bad_space_files_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(SpaceError) as err:
        load_space("cpu", path)
    assert message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_missing_space_file_is_a_one_line_error(tmp_path):
    with pytest.raises(SpaceError, match="cannot read the search space file"):
        load_space("cpu", tmp_path / "absent.toml")


def test_a_small_valid_file_loads(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(GOOD_DEPTH + '[cpu.MATRIX_LR]\nkind = "float"\nlow = 1e-3\nhigh = 1\nlog = true\n')
    space = load_space("cpu", path)
    assert list(space) == ["DEPTH", "MATRIX_LR"]
    assert space["DEPTH"] == Param("DEPTH", "int", 2, 6) and space["MATRIX_LR"].high == 1.0
