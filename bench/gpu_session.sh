#!/usr/bin/env bash
# The GPU measurements still open in issue 12, in one command sized for a lent GPU session (about 10 minutes
# at the default budget on an H100/H200, a compile from cold included). It needs only what
# bench/throughput.py needs (torch with CUDA, numpy, safetensors, tokenizers, pyarrow); nothing is downloaded.
#
#   bash bench/gpu_session.sh OUT_DIR [AUTORESEARCH_CHECKOUT] [BUDGET_SECONDS]
#
# 1. the device and the torch, CUDA and cuDNN versions;
# 2. the template side by side with karpathy/autoresearch's train.py (bench/versus_autoresearch.py) when a
#    checkout is given, else the template alone (bench/throughput.py): tokens/s, MFU, peak memory, val_bpb,
#    and with them a check of the GPU export under the eval phase's rules and the 1e-5 causality tolerance
#    (and of its size pass: the eval log says "size pass: stopped at ..." if fake tensors could not run the GPU
#    graph to its end, which leaves the argument rules alone in charge);
# 3. where the GPU time of a step goes (bench/profile_step.py): which attention kernels ran (cuDNN, flash,
#    FlexAttention), matmuls, the optimizer.
# Each part's output is in OUT_DIR (one text file each); a part that fails does not stop the next.
set -uo pipefail

out=${1:?usage: bash bench/gpu_session.sh OUT_DIR [AUTORESEARCH_CHECKOUT] [BUDGET_SECONDS]}
autoresearch=${2:-}
budget=${3:-90}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TMPDIR:-/tmp}/arena-gpu-session-cache  # one dataset (the gpu preset's), for profile_step to find
mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)  # absolute: the parts run from the repository's root
if [ -n "$autoresearch" ]; then
    autoresearch=$(cd "$autoresearch" && pwd) || exit 2
fi
export PYTHONUNBUFFERED=1
cd "$root" || exit 1
python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else
            'error: no CUDA GPU visible to torch; this script measures the gpu preset')" || exit 2

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
                'cudnn', torch.backends.cudnn.version(), 'device', torch.cuda.get_device_name())"
} 2>&1 | tee "$out/device.txt"

if [ -n "$autoresearch" ]; then
    python3 bench/versus_autoresearch.py --autoresearch "$autoresearch" --budget "$budget" --cache "$cache" \
        --out "$out/versus" 2>&1 | tee "$out/versus.txt"
else
    python3 bench/throughput.py --budget "$budget" --cache "$cache" --json "$out/throughput.json" 2>&1 \
        | tee "$out/throughput.txt"
fi

grep -h "size pass: stopped" "$out"/versus.txt "$out"/throughput.txt 2>/dev/null | head -n 3 \
    || echo "the size pass ran the GPU graph to its end"

meta=$(grep -l '"vocab_size": 8192,' "$cache"/*/meta.json 2>/dev/null | head -n 1)  # the gpu preset's vocabulary
if [ -z "$meta" ]; then
    echo "no dataset of the gpu preset in $cache: the part above failed before building it" | tee "$out/profile.txt"
    exit 1
fi
python3 bench/profile_step.py --data "$(dirname "$meta")" --steps 14 2>&1 | tee "$out/profile.txt"
