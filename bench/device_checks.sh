#!/usr/bin/env bash
# The GPU checks in one run (about 6 minutes on one GPU): the CUDA tests, then the training-step benchmark with AMP
# (images/s, phase split, peak memory per batch, the largest latent-r50 batch in 15 GiB) and dataset-wide prediction.
# Results go to $OUT (default ./device_results): pytest log, bench_train.json, bench_predict.json, and the logs.
#
#     bash bench/device_checks.sh            # after `pip install -e ".[dev]"`, with ../shared beside the repository
#
# Without an installed package it runs from the checkout. Only the CUDA tests' own file is collected, so the
# notebook tools (jupytext, papermill) and wandb need not be installed. NBSRC_SHARED=DIR points the published-weights
# test at a shared folder elsewhere (it needs DIR/weights/mobilenet0.25_Final.pth; without it that test skips).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-device_results}"
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
"$PY" -c "import nbsrc" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" >> "$OUT/gpu.txt" 2>&1
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda.py > "$OUT/pytest_gpu.log" 2>&1
echo "pytest -m gpu: rc=$?" | tee -a "$OUT/summary.txt"
timeout 300 "$PY" bench/bench_train.py --device cuda --steps 5 --warmup 2 --workers 4 --no-oracle \
    --json "$OUT/bench_train.json" > "$OUT/bench_train.log" 2>&1
echo "bench_train: rc=$?" | tee -a "$OUT/summary.txt"
timeout 120 "$PY" bench/bench_eval.py --predict latent-r18 mnet-biubug6 --device cuda --images 48 --batch-size 8 \
    --json "$OUT/bench_predict.json" > "$OUT/bench_predict.log" 2>&1
echo "bench_eval --predict: rc=$?" | tee -a "$OUT/summary.txt"
tail -n 30 "$OUT/bench_train.log" "$OUT/bench_predict.log" "$OUT/pytest_gpu.log"
