"""Every backend the sandbox suites run on. Adding a backend means one module in sandbox/ and one line here."""

from __future__ import annotations

import functools

import docker
import pytest

from sandbox import Backend, LocalBackend
from sandbox.cgroup import PhaseCgroup
from sandbox.docker import OWNER_LABEL, DockerBackend
from sandbox.owners import owner_tag


def own_containers(client: docker.DockerClient) -> list:
    """The trial containers this process started and has not removed."""
    return client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_tag()}"})


def docker_backend(request: pytest.FixtureRequest, mem_limit: str = "3g") -> Backend:
    """On the CPU test image; once its tests are done, no container of theirs may be left."""
    client = request.getfixturevalue("docker_client")

    def no_container_left() -> None:
        assert own_containers(client) == [], "a trial container was left behind"

    request.addfinalizer(no_container_left)
    return DockerBackend(request.getfixturevalue("trial_image"), client=client, mem_limit=mem_limit)


BACKENDS = [
    pytest.param(lambda request: LocalBackend(isolation="bwrap"), id="bwrap"),
    pytest.param(lambda request: LocalBackend(isolation="none"), id="none"),
    pytest.param(docker_backend, id="docker", marks=pytest.mark.slow),  # real containers
]
MEMORY_LIMIT = "1536m"
LIMITED = [  # each with --mem-limit MEMORY_LIMIT
    pytest.param(lambda request: LocalBackend(isolation="bwrap", mem_limit=MEMORY_LIMIT), id="bwrap"),
    pytest.param(lambda request: LocalBackend(isolation="none", mem_limit=MEMORY_LIMIT), id="none"),
    pytest.param(lambda request: docker_backend(request, MEMORY_LIMIT), id="docker", marks=pytest.mark.slow),
]
CONFINED = [case for case in BACKENDS if case.id != "none"]  # "none" confines nothing: a cheat would win there


@functools.cache
def memory_cgroups() -> bool:
    """Whether arena may make a memory cgroup here (root, and a cgroup it may give children to)."""
    cgroup = PhaseCgroup.create(1 << 30, None)
    if cgroup is not None:
        cgroup.remove()
    return cgroup is not None


@functools.cache
def pids_cgroups() -> bool:
    """Whether arena may make a pids cgroup here."""
    cgroup = PhaseCgroup.create(None, 64)
    if cgroup is not None:
        cgroup.remove()
    return cgroup is not None
