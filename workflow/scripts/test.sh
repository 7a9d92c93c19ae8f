#!/usr/bin/env bash
# Install what the tests need and run the whole suite: `bash workflow/scripts/test.sh [pytest args]`.
# As root (CI) it also installs and starts a local SLURM cluster and builds the container images with podman;
# elsewhere those test groups skip themselves.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash workflow/scripts/setup_env.sh
if [[ $(id -u) == 0 ]] && command -v apt-get > /dev/null; then
    bash workflow/scripts/slurm_cluster.sh start
    bash containers/build.sh  # podman, a Debian base, both images (cached between runs); fails CI if broken
fi
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [[ $status == 5 ]]; then
    echo "error: pytest collected no tests" >&2
fi
exit $status
