#!/usr/bin/env bash
# The offline demo, end to end: install, then every stage on the bundled digits data, then the HTML report.
# `bash workflow/scripts/demo.sh` (a few minutes on 2 CPU cores; no internet beyond the package index).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash workflow/scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
snakemake demo --cores "${CORES:-2}"
snakemake demo --cores 1 --report results/demo/report.html
echo "demo done: results/digits/ (runs), results/demo/ (figures, tables), results/demo/report.html"
