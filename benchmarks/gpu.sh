#!/usr/bin/env bash
# The GPU checks, prepared as one short run for a machine with a CUDA GPU (about 5 minutes on one GPU).
# Needs python3 with torch (CUDA), transformers, safetensors, pytest, pyyaml, regex, tqdm; gaincell runs from src/.
# Writes its logs into ${OUT:-gpu-out}; record the figures in benchmarks/RESULTS.md.
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
status=0
$PY -m pytest -q tests/test_gpu.py 2>&1 | tee "$OUT/tests.txt" || status=1
$PY benchmarks/kernel.py --device cuda --repeats 10 --lengths 1024 4096 16384 --no-backward-above 4096 2>&1 | tee "$OUT/kernel.txt" || status=1
$PY benchmarks/model.py --device cuda --repeats 10 2>&1 | tee "$OUT/model.txt" || status=1
$PY benchmarks/train.py --device cuda --steps 20 2>&1 | tee "$OUT/train.txt" || status=1
$PY -m gaincell bench-gpu 2>&1 | tee "$OUT/bench_gpu.txt" || status=1
$PY -m gaincell bench-gpu --method corrected 2>&1 | tee -a "$OUT/bench_gpu.txt" || status=1
exit $status
