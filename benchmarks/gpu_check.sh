#!/usr/bin/env bash
# GPU check, under 4 minutes on one modern GPU: EDT-S/2 against DiT-S/2 and MDTv2-S/2 at batch 256
# in fp32 (the paper's setting), bf16, TF32 and bf16 with compiled blocks (SDPA, then flex attention); inference and
# training; peak memory; a profile of one bf16 forward (kernels launched, GPU busy share, the ops that take the time);
# last, with what the budget leaves, bf16 inference replayed as CUDA graphs (--sections bf16-graphs for its own run).
# Usage: bash benchmarks/gpu_check.sh [OUT.json] [gpu_check.py options] (default ${OUT:-gpu_check}/gpu_check.json).
# Progress is printed at once; each section has its own time limit; the JSON is rewritten after every measurement.
# The paper reports EDT-S/2 5.5 and DiT-S/2 2.7 inference steps/s (batch 256, fp32, one L40).
set -uo pipefail
cd "$(dirname "$0")/.."
json="${OUT:-gpu_check}/gpu_check.json"
if [[ $# -gt 0 && $1 != -* ]]; then json=$1; shift; fi
mkdir -p "$(dirname "$json")"
echo "gpu_check: $(date '+%F %T'), writing $json"
timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: no answer"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The script keeps its own 225 s budget; the outer limit only guards against the unforeseen.
timeout --signal=TERM --kill-after=5 235 python -u benchmarks/gpu_check.py --json "$json" "$@"
