# The GPU trial image for the Docker backend: CUDA PyTorch, numpy, safetensors and a C compiler, nothing
# of this project (each phase mounts its harness files, train.py and its data files read-only).
#
#   docker build -t arena-gpu .
#
# The backend (sandbox/docker.py) runs `python3 /trial/supervisor.py ... -- python3 harness.py train|eval ...`
# in a new container per phase: the supervisor starts as root with only the capabilities to change user
# and to kill, runs the harness as a non-root user, and ends the container at the phase's deadline. No
# network, and only the GPUs it is given; the host needs the NVIDIA Container Toolkit for those.
FROM pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime

# torch.compile's Triton backend builds a small C launcher per kernel; the runtime image has no compiler
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir numpy safetensors
# conda's package cache can hold another copy of the standard library: the backend would hide its test
# suites too (sandbox/hidden_stdlib.py), but no trial needs it, and without it the search is shorter
RUN rm -rf /opt/conda/pkgs

WORKDIR /trial
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
