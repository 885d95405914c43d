"""A real Docker engine and a CPU trial image for the Docker tests, set up on the spot when missing.

`python -m tests.docker_env` does the same from a shell (CI calls it) and prints the image tag.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import numpy
import requests
import safetensors
import torch

BUILD_SCRIPT = Path(__file__).with_name("build_test_image.sh")
DOCKERD_LOG = Path(tempfile.gettempdir()) / "arena-dockerd.log"
ENGINE_START_SECONDS = 60
IMAGE_BUILD_SECONDS = 1800  # from scratch: debootstrap plus torch, a few minutes on a slow mirror


class EngineUnavailable(Exception):
    """No Docker engine could be reached or started; the message says why."""


def client_if_up() -> docker.DockerClient | None:
    try:
        client = docker.from_env()
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None


def apt_install(*packages: str) -> None:
    """Install Debian packages the tests need (a fresh machine has neither dockerd nor tmux)."""
    if os.geteuid() != 0:
        raise EngineUnavailable(f"{', '.join(packages)} missing and only root can install it; install it, "
                                "or set ARENA_SKIP_DOCKER=1 to skip the Docker tests")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise EngineUnavailable(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")


def start_dockerd() -> docker.DockerClient:
    """Start dockerd in the background; it outlives the tests, so later sessions find it running."""
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers and only root can start dockerd; start it, "
                                "or set ARENA_SKIP_DOCKER=1 to skip the Docker tests")
    with open(DOCKERD_LOG, "wb") as log:
        daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    deadline = time.monotonic() + ENGINE_START_SECONDS
    while time.monotonic() < deadline and daemon.poll() is None:
        client = client_if_up()
        if client:
            return client
        time.sleep(0.5)
    if daemon.poll() is None:
        daemon.kill()
        what = f"dockerd did not answer within {ENGINE_START_SECONDS} s"
    else:
        what = f"dockerd exited with code {daemon.returncode}"
    tail = DOCKERD_LOG.read_text(errors="replace").strip().splitlines()[-3:]
    raise EngineUnavailable(f"{what} (log {DOCKERD_LOG}): " + " | ".join(tail))


def ensure_engine() -> docker.DockerClient:
    client = client_if_up()
    if client:
        return client
    if shutil.which("dockerd") is None:
        apt_install("docker.io")
    return start_dockerd()


def trial_image_tag() -> str:
    """Named after the build recipe and the torch, numpy and safetensors it installs: a change to any builds anew."""
    recipe = BUILD_SCRIPT.read_bytes() + f"|{torch.__version__}|{numpy.__version__}|{safetensors.__version__}".encode()
    return f"arena-cpu-test:{hashlib.sha256(recipe).hexdigest()[:12]}"


def ensure_test_image() -> str:
    """Build the CPU trial image unless it exists; returns its tag."""
    tag = trial_image_tag()
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), tag, sys.executable], capture_output=True, text=True,
                          timeout=IMAGE_BUILD_SECONDS)
    if proc.returncode:
        raise EngineUnavailable(f"building the test image {tag} failed: {proc.stderr.strip()[-1500:]}")
    # the Docker tests run this tag: a build script that exits 0 without it would fail them all confusingly
    assert docker.from_env().images.list(name=tag), f"{BUILD_SCRIPT.name} exited 0 but made no image {tag}"
    return tag


if __name__ == "__main__":
    start = time.monotonic()
    try:
        ensure_engine()
        tag = ensure_test_image()
    except EngineUnavailable as e:
        sys.exit(f"error: {e}")
    print(f"Docker engine up, test image {tag} ready ({time.monotonic() - start:.0f} s)")
