"""The compile-time memory check: a training step that cannot fit ends as out of memory before its kernels are
generated, not after.

torch.compile spends most of a cold start generating kernels (tens of seconds on a GPU), and a model whose
activations do not fit used to run out of memory only at its first step after that. Inductor splits the training
graph into a forward and a backward half before it generates anything, and the forward half's outputs are then
known by shape: the loss and every activation kept for the backward pass. They are all alive together when the
forward returns, so when their bytes exceed what is free on their device at that moment, no kernel can make the
step fit, and the check raises torch.OutOfMemoryError at once (the sandbox reads it as `oom`).

It is a lower bound on the step's memory: the forward's transient buffers, the gradients and any optimizer state
still to come are not counted, so it never rejects a step that fits. A step that passes it and still does not fit
runs out of memory at its first step, as before.

Why not one eager forward/backward before compiling: eager keeps more than the compiled graph (the template's
softcapped logits alone are several float32 copies of batch x seq_len x vocab, 8.6 GB each at the gpu preset's
shape, where the compiled graph fuses them), so an eager step that runs out of memory says nothing about the
compiled one.
"""

from __future__ import annotations

import functools
import os

import torch

MEMORY_LIMIT_ENV = "ARENA_MEMORY_LIMIT"  # bytes the phase may hold on the CPU, set by the sandbox
CHECK_VERSION = "1"  # part of the compile cache's key: graphs compiled under another check are not reused


def free_bytes(device: torch.device) -> int | None:
    """Bytes this process can still allocate on `device`, or None when nothing says."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    limit = os.environ.get(MEMORY_LIMIT_ENV, "")
    if device.type == "cpu" and limit.isdigit():
        return int(limit) - anonymous_resident_bytes()
    return None


def anonymous_resident_bytes() -> int:
    """This process's resident memory that no file backs: what a cgroup cannot reclaim. Counting less than
    everything the phase holds (file pages, other processes) can only overstate what is free."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value
    return sum(int(fields[name].split()[0]) * 1024 for name in ("RssAnon", "RssShmem") if name in fields)


def storage_bytes(value: object) -> tuple[object, torch.device, int] | None:
    """(storage key, device, bytes) of a traced tensor; None for anything else or a size not known."""
    if not isinstance(value, torch.Tensor):
        return None
    from torch.multiprocessing.reductions import StorageWeakRef

    size = value.untyped_storage().nbytes()
    if isinstance(size, torch.SymInt):  # a dynamic shape: this call's size, read without int(), which would
        size = getattr(size.node, "hint", None)  # guard on it and recompile the graph for every new size
    if not isinstance(size, int):
        return None  # left out: the bound stays a lower one
    return StorageWeakRef(value.untyped_storage()), value.device, size


def kept_bytes(graph: torch.fx.Graph) -> dict[torch.device, int] | None:
    """Per device, the bytes a training forward graph returns beyond its inputs (its loss and saved activations);
    None for any other graph: an inference graph's placeholders are named arg*, a backward's include tangents*."""
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    names = [node.name for node in placeholders]
    if not any(name.startswith("primals") for name in names) or any(name.startswith("tangents") for name in names):
        return None
    inputs = {found[0] for node in placeholders if (found := storage_bytes(node.meta.get("val")))}
    outputs: list[torch.fx.Node] = []
    for node in graph.nodes:
        if node.op == "output":
            torch.fx.node.map_arg(node.args, outputs.append)
    kept: dict[object, tuple[torch.device, int]] = {}
    for node in outputs:
        found = storage_bytes(node.meta.get("val"))
        if found and found[0] not in inputs:
            kept[found[0]] = found[1:]
    per_device: dict[torch.device, int] = {}
    for device, size in kept.values():
        per_device[device] = per_device.get(device, 0) + size
    return per_device


def check_fits(graph: torch.fx.Graph) -> None:
    for device, need in (kept_bytes(graph) or {}).items():
        free = free_bytes(device)
        if free is not None and need > free:
            raise torch.OutOfMemoryError(
                f"out of memory before compiling: one forward pass keeps {need / 2**20:,.0f} MiB of activations "
                f"for its backward pass and {max(free, 0) / 2**20:,.0f} MiB are free on {device} "
                "(arena's compile-time memory check)")


def install() -> None:
    """Make every later torch.compile call check its training graphs. Lazily: importing inductor costs about a
    second, which a trial that never compiles should not pay."""
    original = torch.compile

    @functools.wraps(original)
    def compile_checked(*args, **kwargs):
        try:
            from torch._inductor import config
            from torch._inductor.custom_graph_pass import CustomGraphPass
        except ImportError:  # a torch without custom graph passes compiles as it would, unchecked
            return original(*args, **kwargs)
        if config.post_grad_custom_post_pass is None:
            class MemoryCheck(CustomGraphPass):
                def __call__(self, graph: torch.fx.Graph) -> None:
                    check_fits(graph)

                def uuid(self) -> str:
                    return f"arena-memory-check-{CHECK_VERSION}"

            config.post_grad_custom_post_pass = MemoryCheck()
        return original(*args, **kwargs)

    torch.compile = compile_checked
