"""The compile-time memory check (train_template/memory_check.py): which graphs it reads, what it counts, and that
it refuses a step that cannot fit before any kernel is built. Real Inductor compiles on the CPU; the trials that run
it inside each sandbox are in test_backend_conformance.py."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch._inductor.config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass

from train_template import memory_check

BATCH, WIDTH, HIDDEN = 512, 64, 1024
RELU_BYTES = BATCH * HIDDEN * 4  # what the backward pass of Linear -> ReLU -> Linear must keep, at the least

needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                               reason="Inductor compiles C++ on a CPU: no g++ (or $CXX)")


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))


@pytest.fixture
def fresh_inductor(monkeypatch):
    """No compile cache (a cached graph skips the passes) and the check's global settings undone afterwards."""
    monkeypatch.setattr(torch, "compile", torch.compile)
    with inductor_config.patch(fx_graph_cache=False, post_grad_custom_post_pass=None), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        torch._dynamo.reset()
        yield monkeypatch
        torch._dynamo.reset()


def test_the_limit_is_read_for_the_cpu_only_when_the_sandbox_sets_one(monkeypatch):
    monkeypatch.delenv(memory_check.MEMORY_LIMIT_ENV, raising=False)
    assert memory_check.free_bytes(torch.device("cpu")) is None
    monkeypatch.setenv(memory_check.MEMORY_LIMIT_ENV, str(64 << 30))
    free = memory_check.free_bytes(torch.device("cpu"))
    assert free is not None and 0 < free < 64 << 30  # the limit less this process's resident memory


@needs_cxx
@pytest.mark.slow  # cold Inductor compiles
def test_only_the_forward_of_a_training_step_is_counted(fresh_inductor):
    """Recorded on every graph Inductor compiles: the training forward's kept bytes (at least the ReLU output the
    backward needs, at most everything it returns), and nothing for its backward or for an inference graph."""
    seen: list[dict | None] = []

    class Recorder(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            seen.append(memory_check.kept_bytes(graph))

        def uuid(self) -> str:
            return "recorder"

    model, x = mlp(), torch.randn(BATCH, WIDTH)
    with inductor_config.patch(post_grad_custom_post_pass=Recorder()):
        torch.compile(model)(x).sum().backward()
        with torch.no_grad():
            torch.compile(mlp())(x)
    assert len(seen) == 3  # forward, backward, inference
    forward, backward, inference = seen
    assert forward is not None and set(forward) == {torch.device("cpu")}
    assert RELU_BYTES <= forward[torch.device("cpu")] <= RELU_BYTES + BATCH * (HIDDEN + 1) * 4
    assert backward is None and inference is None


def test_a_step_that_cannot_fit_is_refused_before_its_kernels_are_built(fresh_inductor):
    """With no C++ compiler at all, the refusal still comes: it is made before Inductor builds anything."""
    fresh_inductor.setenv(memory_check.MEMORY_LIMIT_ENV, "1")
    memory_check.install()
    with inductor_config.patch({"cpp.cxx": ("no-such-compiler",)}), pytest.raises(Exception) as caught:
        torch.compile(mlp())(torch.randn(BATCH, WIDTH)).sum().backward()
    message = str(caught.value)
    assert "OutOfMemoryError" in message and "arena's compile-time memory check" in message, message
    assert f"keeps {RELU_BYTES >> 20} MiB of activations" in message and "and 0 MiB are free on cpu" in message


@needs_cxx
@pytest.mark.slow  # a cold Inductor compile
def test_a_step_that_fits_compiles_and_trains_as_eager_does(fresh_inductor):
    fresh_inductor.setenv(memory_check.MEMORY_LIMIT_ENV, str(1 << 50))
    memory_check.install()
    x = torch.randn(BATCH, WIDTH)
    eager, compiled = mlp(), mlp()
    eager(x).sum().backward()
    torch.compile(compiled)(x).sum().backward()
    assert isinstance(inductor_config.post_grad_custom_post_pass, CustomGraphPass)
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


@needs_cxx
@pytest.mark.slow  # cold Inductor compiles
def test_a_dynamic_batch_is_checked_at_its_size_without_recompiling(fresh_inductor):
    """The check reads a dynamic size's hint without guarding on it: as many graphs serve four batch sizes as
    without the check (a guard would compile one per size); and a batch too big for the limit is still refused."""
    def graphs_for_four_batch_sizes() -> int:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model = torch.compile(mlp(), dynamic=True)
        for batch in (64, 96, 160, 224):
            model(torch.randn(batch, WIDTH)).sum().backward()
        return torch._dynamo.utils.counters["stats"]["unique_graphs"]

    unchecked = graphs_for_four_batch_sizes()
    fresh_inductor.setenv(memory_check.MEMORY_LIMIT_ENV, str(1 << 50))
    memory_check.install()
    assert graphs_for_four_batch_sizes() == unchecked < 4
    torch._dynamo.reset()
    fresh_inductor.setenv(memory_check.MEMORY_LIMIT_ENV, "1")
    with inductor_config.patch({"cpp.cxx": ("no-such-compiler",)}), pytest.raises(Exception) as caught:
        torch.compile(mlp(), dynamic=True)(torch.randn(BATCH, WIDTH)).sum().backward()
    assert f"keeps {RELU_BYTES >> 20} MiB of activations" in str(caught.value)
