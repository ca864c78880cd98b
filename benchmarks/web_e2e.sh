#!/usr/bin/env bash
# The browser end-to-end workflow (Testing/test_web_e2e.py) recorded as a benchmark: its step
# screenshots go to benchmarks/results/web/ and its figures to benchmarks/results/web_e2e.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_browser.sh
CROSSDOMAINSEG_RECORD_WEB=1 "${PYTHON:-.venv/bin/python}" -m pytest -q Testing/test_web_e2e.py -k browser
