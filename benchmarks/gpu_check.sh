#!/usr/bin/env bash
# GPU check (under 8 minutes on one modern GPU): the paper's inference setting (batch 256, fp32) for EDT-S/2 and
# DiT-S/2, a bf16 row, and a 200-step EDT-S/2 training burst in bf16 on random latents. Prints tables; writes
# JSON beside them into ${OUT:-gpu_check}/.
# The paper reports EDT-S/2 5.5 and DiT-S/2 2.7 inference steps/s (batch 256, fp32, one L40).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

echo "== inference, batch 256, fp32 (paper setting) =="
python benchmarks/throughput.py --models EDT-S/2 DiT-S/2 --device cuda --dtype fp32 --batch-size 256 \
    --repeats 3 --steps 10 --train-steps 0 --json "$out/inference_fp32.json"
echo "== inference, batch 256, bf16 =="
python benchmarks/throughput.py --models EDT-S/2 DiT-S/2 --device cuda --dtype bf16 --batch-size 256 \
    --repeats 3 --steps 10 --train-steps 0 --json "$out/inference_bf16.json"
echo "== training, batch 256, bf16: EDT-S/2 with and without its masked pass, DiT-S/2 =="
python benchmarks/throughput.py --models EDT-S/2 DiT-S/2 --device cuda --dtype bf16 --batch-size 256 \
    --repeats 2 --steps 2 --train-steps 10 --json "$out/train_bf16.json"
echo "== 200-step EDT-S/2 training burst (edt-lab train, bf16, random latents) =="
python benchmarks/train_burst.py --steps 200 --batch-size 256 --json "$out/train_burst.json"
