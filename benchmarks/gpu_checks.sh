#!/usr/bin/env bash
# Issue 8's GPU checks as one run on a lent device machine (an H100 or H200 with PyTorch installed):
# first correctness (the CUDA-graph step equals the eager one), then speed at batch 1024 and 32, then
# the host CPU's oneDNN and MKL products (bench_products.py).
#
# Here, once: the one package gradwell imports that the device image lacks, as a wheel:
#     echo /.whl/ >> .git/info/exclude
#     python -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl tomli-w
# Then with the device tool: run `bash benchmarks/gpu_checks.sh`, carry [".whl"], timeout 600.
# Logs come back under $OUT; copy the tables into BENCHMARKS.md with the card and the date.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/device.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_fastpath.py 2>&1 | tee "$OUT/fastpath.log"
for batch in 1024 32; do
    timeout 180 python3 benchmarks/bench_loop.py --device cuda --batch "$batch" --steps 300 --rounds 3 \
        --skip keras 2>&1 | tee "$OUT/bench_loop_$batch.log"
done
# the host CPU's own answer to fused_ops.ONEDNN_FROM, measured so far on AMD EPYC only
grep -m1 "model name" /proc/cpuinfo | tee "$OUT/cpu.txt"
timeout 150 python3 benchmarks/bench_products.py --rounds 3 --steps 100 2>&1 | tee "$OUT/bench_products.log"
