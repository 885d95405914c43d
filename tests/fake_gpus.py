"""GPUs made up for a machine that has none: nvidia-smi's listing and the driver's /proc table, which
placement and the sandbox's device binding read."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox.bwrap import gpu_table
from sandbox.workers import nvidia_gpus


def fake_nvidia_smi(listing: str, tmp_path: Path, monkeypatch, request) -> None:
    """An nvidia-smi on PATH that prints `listing` (printf's escapes), and the host's GPU tables read anew."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:{os.environ['PATH']}")
    for cached in (nvidia_gpus, gpu_table):  # one listing per process: this test's own, none left for the next
        cached.cache_clear()
        request.addfinalizer(cached.cache_clear)


def fake_gpus(tmp_path: Path, monkeypatch, request) -> None:
    """Two GPUs as nvidia-smi and the driver's /proc list them, on a machine that has none."""
    fake_nvidia_smi("0, GPU-aaaa, 00000000:17:00.0, 81559\\n1, GPU-bbbb, 00000000:65:00.0, 81559\\n",
                    tmp_path, monkeypatch, request)
    proc = tmp_path / "proc-gpus"
    for bus, minor in (("0000:17:00.0", 0), ("0000:65:00.0", 1)):
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(f"Model: \t\t NVIDIA H100\nDevice Minor: \t {minor}\n")
    monkeypatch.setattr("sandbox.bwrap.PROC_GPUS", proc)
    assert [gpu.uuid for gpu in nvidia_gpus()] == ["GPU-aaaa", "GPU-bbbb"]  # what placement will read now
