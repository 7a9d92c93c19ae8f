#!/usr/bin/env bash
# Install what the tests need and run the whole suite: `bash workflow/scripts/test.sh [pytest args]`.
# As root (CI) it also installs and starts a local SLURM cluster and builds the container images with podman;
# elsewhere those test groups skip themselves.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash workflow/scripts/setup_env.sh
if [[ $(id -u) == 0 ]] && command -v apt-get > /dev/null; then
    # The SLURM daemons this run starts are stopped when it ends, however it ends (failure, Ctrl-C); those that
    # were already running are left as they were.
    cluster_was=$(bash workflow/scripts/slurm_cluster.sh status 2>/dev/null || true)
    started=()
    for daemon in slurmd slurmctld munged; do
        grep -q "^$daemon: running" <<<"$cluster_was" || started+=("$daemon")
    done
    stop_cluster() {
        if ((${#started[@]})); then
            echo "test.sh: stopping the SLURM test cluster's ${started[*]} (started by this run)" >&2
            bash workflow/scripts/slurm_cluster.sh stop "${started[@]}" || true
        fi
    }
    trap stop_cluster EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    bash workflow/scripts/slurm_cluster.sh start
    bash containers/build.sh  # podman, a Debian base, both images (cached between runs); fails CI if broken
fi
set +e
# Two workers, a test file at a time each (tests/conftest.py): the SLURM tests, which mostly wait on the cluster,
# run beside the CPU-bound ones. TEST_WORKERS=0 runs everything in this process.
# Two test processes on two cores: one OpenMP thread each unless a step asks for more (Snakemake gives a job its
# rule's threads), and threads that sleep rather than spin while they wait, so neither process burns the cycles the
# other one needs.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
.venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
status=$?
set -e
if [[ $status == 5 ]]; then
    echo "error: pytest collected no tests" >&2
fi
exit $status
