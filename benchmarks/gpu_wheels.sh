#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.sh needs on the GPU machine (Python 3.12, x86-64, no network
# there), downloaded here into .whl/ at the versions pyproject.toml pins.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin() { grep -oE "\"$1==[^\"]+\"" pyproject.toml | tr -d '"'; }
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "$(pin monai)" "$(pin SimpleITK)" "$(pin nibabel)" "$(pin pydicom)"
