#!/usr/bin/env bash
# The CUDA path, on a lent GPU machine (device tool), in under 5 minutes: the CUDA tests
# (Testing/test_cuda.py), then segmentation, click and training-step timings with their CPU
# twins (benchmarks/gpu_timings.py). The machine has python3 with torch, numpy and scipy but no
# MONAI, SimpleITK, nibabel or pydicom: benchmarks/gpu_wheels.sh downloads those as wheels into
# .whl/ here (git-ignored through .git/info/exclude), and the device call carries that folder:
#   device run: carry [".whl"], command "bash benchmarks/gpu_check.sh"
# Results go to $OUT (or build/gpu_check): gpu_timings.json and the test log; commit the
# cuda_* figures into benchmarks/results/ (inference_speed.json, clicks.json) from there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu_check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=SlicerCrossDomainSeg${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider Testing/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"
tests=${PIPESTATUS[0]}
timeout 120 python3 benchmarks/gpu_timings.py --out "$OUT/gpu_timings.json"
timings=$?
echo "test_cuda exit $tests, gpu_timings exit $timings"
[ "$tests" -eq 0 ] && [ "$timings" -eq 0 ]
