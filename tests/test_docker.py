"""The Docker backend against a real engine: real containers, the real harness, the real dataset.

The engine is started and the CPU trial image built by tests/docker_env.py when missing. Without an
engine these tests fail; ARENA_SKIP_DOCKER=1 skips them instead.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import textwrap

import docker
import pytest

from agent.constants import render_constants
from agent.errors import ArenaError
from agent.presets import get_preset
from agent.template import HARNESS_FILES, template_dir
from sandbox import Status, TrialSpec
from sandbox.docker import OWNER_LABEL, TRIAL_LABEL, DockerBackend, owner_id, remove_stale_containers
from tests import docker_env
from train_template import prepare

BUDGET = 5.0
EVAL_TOKENS = 4096  # 16 rows: enough to score, quick to run


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    if os.environ.get("ARENA_SKIP_DOCKER") == "1":
        pytest.skip("ARENA_SKIP_DOCKER=1")
    try:
        return docker_env.ensure_engine()
    except docker_env.EngineUnavailable as e:
        pytest.fail(f"no Docker engine for the Docker tests: {e}", pytrace=False)


@pytest.fixture(scope="session")
def trial_image(docker_client) -> str:
    try:
        return docker_env.ensure_test_image()
    except docker_env.EngineUnavailable as e:
        pytest.fail(str(e), pytrace=False)


def own_containers(client: docker.DockerClient) -> list:
    return client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_id()}"})


def cpu_template() -> str:
    return render_constants((template_dir() / "train.py").read_text(), get_preset("cpu").constants)


def with_train(body: str) -> str:
    """The cpu template with a later train(ctx) whose body is `body`, which replaces the template's."""
    return cpu_template() + "\n\ndef train(ctx):\n" + textwrap.indent(textwrap.dedent(body), "    ")


def run_trial(client, image, tmp_path, data_dir, source: str, budget: float = BUDGET, startup_allowance: float = 60,
              export_grace: float = 60, **backend_options):
    """Run `source` as train.py through a DockerBackend; checks that no container is left behind."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "train.py").write_text(source)
    preset = get_preset("cpu", time_budget=budget, eval_tokens=EVAL_TOKENS)
    spec = TrialSpec(tree=tree, data_dir=data_dir, harness_dir=template_dir(), harness_files=HARNESS_FILES,
                     config=preset.harness_config(seed=42), startup_allowance=startup_allowance,
                     eval_timeout=preset.eval_timeout, export_grace=export_grace)
    streamed: list[str] = []
    backend = DockerBackend(image, client=client, **{"mem_limit": "2g", **backend_options})
    outcome = backend.run(spec, on_log=streamed.append)
    assert own_containers(client) == []
    return outcome, "".join(streamed)


@pytest.mark.slow
def test_trial_runs_in_a_container(docker_client, trial_image, tmp_path, stdlib_dataset):
    outcome, streamed = run_trial(docker_client, trial_image, tmp_path, stdlib_dataset, cpu_template())
    assert outcome.status is Status.OK, outcome.reason + "\n" + outcome.log_tail
    assert math.isfinite(outcome.val_bpb) and outcome.val_bpb < math.log2(2048) * 1.5
    assert outcome.result["dataset_fingerprint"] == prepare.read_meta(stdlib_dataset)["fingerprint"]
    assert outcome.result["training_seconds"] >= BUDGET and outcome.result["steps"] > 0
    assert "step=0 " in streamed and "ARENA_RESULT " in streamed  # both phases reached on_log, line by line


@pytest.mark.slow
def test_trial_has_no_network(docker_client, trial_image, tmp_path, stdlib_dataset):
    outcome, _ = run_trial(docker_client, trial_image, tmp_path, stdlib_dataset, with_train("""
        import socket
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=5)
            print("PROBE connected")
        except OSError as e:
            print(f"PROBE connect failed: {e}")
        try:
            socket.getaddrinfo("pypi.org", 443)
            print("PROBE resolved")
        except OSError as e:
            print(f"PROBE resolve failed: {e}")
        print("PROBE interfaces", sorted(name for _, name in socket.if_nameindex()))
        raise RuntimeError("probe done")
    """))
    assert outcome.status is Status.CRASH, outcome.reason
    assert "PROBE connect failed" in outcome.log_tail and "PROBE resolve failed" in outcome.log_tail
    assert "PROBE interfaces ['lo']" in outcome.log_tail


@pytest.mark.slow
def test_train_phase_cannot_read_validation_data(docker_client, trial_image, tmp_path, stdlib_dataset):
    outcome, _ = run_trial(docker_client, trial_image, tmp_path, stdlib_dataset, with_train(f"""
        import os, sys
        data = sys.argv[sys.argv.index("--data") + 1]
        print("PROBE data files", sorted(os.listdir(data)))
        print("PROBE val.bin exists", os.path.exists(os.path.join(data, "val.bin")))
        print("PROBE host dataset visible", os.path.exists({str(stdlib_dataset)!r}))
        print("PROBE uid", os.getuid())
        try:
            open("train.py", "a")
            print("PROBE code writable")
        except OSError as e:
            print(f"PROBE code read-only: {{e}}")
        raise RuntimeError("probe done")
    """))
    assert outcome.status is Status.CRASH, outcome.reason
    log = outcome.log_tail
    assert "PROBE data files ['meta.json', 'train.bin']" in log
    assert "PROBE val.bin exists False" in log and "PROBE host dataset visible False" in log
    assert "PROBE uid 0" not in log and "PROBE code read-only" in log


@pytest.mark.slow
def test_compile_cache_is_shared_with_the_train_phase(docker_client, trial_image, tmp_path, stdlib_dataset):
    cache = tmp_path / "compile-cache"
    outcome, _ = run_trial(docker_client, trial_image, tmp_path, stdlib_dataset, with_train("""
        import os
        for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
            print("PROBE", name, os.environ[name])
        os.makedirs(os.environ["TORCHINDUCTOR_CACHE_DIR"], exist_ok=True)
        with open(os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "warm"), "w") as f:
            f.write("compiled once")
        raise RuntimeError("probe done")
    """), compile_cache=cache)
    assert "PROBE TORCHINDUCTOR_CACHE_DIR /cache/inductor" in outcome.log_tail, outcome.log_tail
    assert "PROBE TRITON_CACHE_DIR /cache/triton" in outcome.log_tail
    assert (cache / "inductor" / "warm").read_text() == "compiled once"  # on the host, for the next trial


@pytest.mark.slow
def test_memory_hog_is_oom(docker_client, trial_image, tmp_path, stdlib_dataset):
    outcome, _ = run_trial(docker_client, trial_image, tmp_path, stdlib_dataset, with_train("""
        hog = []
        while True:
            hog.append(b"x" * (64 << 20))  # written, so every page is really taken
    """), mem_limit="512m")
    assert outcome.status is Status.OOM, outcome.reason + "\n" + outcome.log_tail


@pytest.mark.slow
def test_crash_is_classified_with_its_traceback(docker_client, trial_image, tmp_path, stdlib_dataset):
    outcome, _ = run_trial(docker_client, trial_image, tmp_path, stdlib_dataset, with_train("""
        raise RuntimeError("boom from train.py")
    """))
    assert outcome.status is Status.CRASH
    assert "exited with code 1" in outcome.reason and "boom from train.py" in outcome.reason
    assert "Traceback (most recent call last)" in outcome.log_tail


@pytest.mark.slow
def test_runaway_loop_is_killed(docker_client, trial_image, tmp_path, stdlib_dataset):
    outcome, _ = run_trial(docker_client, trial_image, tmp_path, stdlib_dataset, with_train("""
        print("PROBE looping", flush=True)
        while True:
            pass
    """), budget=1, startup_allowance=1, export_grace=10)
    assert outcome.status is Status.TIMEOUT, outcome.reason
    assert 12 <= outcome.train_wall_seconds < 30
    assert "PROBE looping" in outcome.log_tail


@pytest.mark.slow
def test_stale_containers_are_removed(docker_client, trial_image):
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid now names an arena that is gone
    stale = docker_client.containers.create(trial_image, ["sleep", "300"], network_mode="none", labels={
        TRIAL_LABEL: "1", OWNER_LABEL: f"{socket.gethostname()}/{finished.pid}"})
    live = docker_client.containers.create(trial_image, ["sleep", "300"], network_mode="none", labels={
        TRIAL_LABEL: "1", OWNER_LABEL: owner_id()})
    try:
        stale.start()
        assert remove_stale_containers(docker_client) == 1
        with pytest.raises(docker.errors.NotFound):
            stale.reload()
        live.reload()  # this process's own trials are never stale
    finally:
        for container in (stale, live):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
    assert own_containers(docker_client) == []


def test_missing_image_is_a_one_line_error(docker_client):
    with pytest.raises(ArenaError, match=r"build it with `docker build -t arena-no-such-image:0 \.` or pass --image"):
        DockerBackend("arena-no-such-image:0", client=docker_client)


def test_unreachable_engine_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(ArenaError, match="start the Docker daemon or use --backend local"):
        DockerBackend("any-image")


def test_gpu_request_without_nvidia_runtime_is_a_one_line_error(docker_client, trial_image, tmp_path,
                                                                stdlib_dataset):
    if "nvidia" in docker_client.info().get("Runtimes", {}):
        pytest.skip("this engine has the NVIDIA runtime")
    with pytest.raises(ArenaError, match="GPUs 0 requested .* NVIDIA Container Toolkit"):
        run_trial(docker_client, trial_image, tmp_path, stdlib_dataset, cpu_template(), gpus=["0"])
    assert own_containers(docker_client) == []
