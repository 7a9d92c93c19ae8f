#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with everything the pipeline and the tests
# need, with the exact torch and torchvision of constraints.txt (pyproject.toml accepts a range, for machines with
# their own torch; an unconstrained install here could download several GB of another release).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
if [[ "${FRESH_VENV:-0}" == 1 ]]; then rm -rf .venv; fi
if [[ ! -x .venv/bin/python ]]; then
    # torch's CUDA build and its libraries take about 6 GiB in the venv, and pip unpacks beside it: say so now
    # rather than fail half-installed with "No space left on device".
    free_gib=$(( $(df -Pk . | awk 'NR == 2 {print $4}') / 1048576 ))
    if (( free_gib < ${MIN_FREE_GIB:-8} )); then
        echo "error: creating .venv needs about ${MIN_FREE_GIB:-8} GiB free on $(df -P . | awk 'NR == 2 {print $6}'); only ${free_gib} GiB are" >&2
        exit 1
    fi
fi
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install --quiet -e ".[render,pipeline,dev]" -c constraints.txt 2>&1 | grep -v "^WARNING: Location" || true
# pip's exit status is lost in the pipe above: check the result directly.
.venv/bin/python -c "import resnet_repro, torch, torchvision, snakemake, dvc, matplotlib, pytest" \
    || { echo "error: installing into .venv failed" >&2; exit 1; }
echo "environment ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
