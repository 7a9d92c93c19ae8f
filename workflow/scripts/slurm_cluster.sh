#!/usr/bin/env bash
# Start, stop or inspect a single-node SLURM *test* cluster on this machine.
#
#   workflow/scripts/slurm_cluster.sh start   # install what is missing, write config, start daemons,
#                                             # wait for an idle node (no-op if already up)
#   workflow/scripts/slurm_cluster.sh stop    # cancel all jobs, stop slurmd, slurmctld (and its slurmscriptd),
#                                             # leftover slurmstepd/job processes and munged; waits until they
#                                             # are gone (SIGKILL after 10 s). `stop DAEMON...` stops only those
#                                             # of slurmd, slurmctld, munged (jobs go with slurmd).
#   workflow/scripts/slurm_cluster.sh status  # exit 0 if all daemons run and the node is usable
#
# Meant for CI and for trying the SLURM profiles on a laptop or VM (Debian/Ubuntu, as root, no systemd
# or cgroups needed). It is NOT for real clusters: it writes /etc/slurm/slurm.conf and refuses to
# overwrite a slurm.conf that it did not write itself (set SLURM_TEST_CLUSTER_FORCE=1 to override).
#
# The node "localhost" gets all CPUs, ~90% of RAM and two fake GPUs (gres gpu:2 backed by
# character devices /dev/fakegpu0 and /dev/fakegpu1), so GPU requests (--gpus=1) are scheduled and
# jobs see CUDA_VISIBLE_DEVICES set by SLURM. No accounting database (use `slurm-status-command:
# squeue` with snakemake-executor-plugin-slurm, see workflow/profiles/slurm-ci).
#
# Environment knobs: SLURM_TEST_CLUSTER_GPUS (default 2), SLURM_TEST_CLUSTER_WAIT (seconds to wait
# for an idle node, default 60).
set -euo pipefail

readonly MARKER="# written by resnet-repro workflow/scripts/slurm_cluster.sh (single-node test cluster)"
readonly CONF_DIR=/etc/slurm
readonly RUN_DIR=/run/slurm
readonly LOG_DIR=/var/log/slurm
readonly CTLD_SPOOL=/var/spool/slurmctld
readonly SLURMD_SPOOL=/var/spool/slurmd
readonly CTLD_PID="$RUN_DIR/slurmctld.pid"
readonly SLURMD_PID="$RUN_DIR/slurmd.pid"
readonly MUNGE_PID=/run/munge/munged.pid
readonly NODE=localhost
readonly NGPUS="${SLURM_TEST_CLUSTER_GPUS:-2}"
readonly WAIT_S="${SLURM_TEST_CLUSTER_WAIT:-60}"
readonly PACKAGES=(slurmctld slurmd slurm-client munge)

log() { printf 'slurm_cluster: %s\n' "$*" >&2; }
die() { printf 'slurm_cluster: ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages, writes $CONF_DIR and starts daemons)"
}

# pid from a pid file if that process is alive, else empty
live_pid() {
    local f=$1 pid
    [[ -s $f ]] || return 1
    pid=$(tr -dc '0-9' <"$f")
    # /proc rather than kill -0, so that `status` also works for users other than root
    [[ -n $pid && -d /proc/$pid ]] && echo "$pid"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update only when the package lists do not know the packages (fresh image)
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        log "apt-get update"
        apt-get update -qq || die "apt-get update failed"
    fi
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        log "install failed; retrying after apt-get update"
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# Print slurm.conf for this machine (deterministic, so an unchanged machine gives an unchanged file).
render_slurm_conf() {
    local cpus mem_mb
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys these: the test runner sets them
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    cat <<EOF
$MARKER
ClusterName=resnetrepro
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits one credential lifetime before it may start again (default 120 s): short here, so the
# requeue tests do not idle; the main and backfill schedulers look every 2 s instead of every 60 s / 30 s.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=300
JobRequeue=1
KillWait=30
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

render_gres_conf() {
    echo "$MARKER"
    echo "NodeName=$NODE Name=gpu File=/dev/fakegpu[0-$((NGPUS - 1))]"
}

# Write $2 (content) to $1 if different; return 0 if the file changed.
write_if_changed() {
    local path=$1 content=$2
    if [[ -f $path ]] && [[ "$(cat "$path")" == "$content" ]]; then
        return 1
    fi
    if [[ -f $path ]] && ! grep -qF "$MARKER" "$path" && [[ ${SLURM_TEST_CLUSTER_FORCE:-0} != 1 ]]; then
        die "$path exists and was not written by this script; refusing to overwrite a real SLURM config" \
            "(set SLURM_TEST_CLUSTER_FORCE=1 to override)"
    fi
    printf '%s\n' "$content" >"$path"
    return 0
}

# Returns 0 if the config changed.
write_config() {
    local changed=1 i
    mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
    for ((i = 0; i < NGPUS; i++)); do
        if [[ ! -c /dev/fakegpu$i ]]; then
            rm -f "/dev/fakegpu$i"
            mknod -m 0666 "/dev/fakegpu$i" c 1 3 || die "mknod /dev/fakegpu$i failed (no CAP_MKNOD?)"
        fi
    done
    write_if_changed "$CONF_DIR/slurm.conf" "$(render_slurm_conf)" && changed=0
    write_if_changed "$CONF_DIR/gres.conf" "$(render_gres_conf)" && changed=0
    return $changed
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then return 0; fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    install -d -m 0755 /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        if command -v mungekey >/dev/null; then
            mungekey --create --force --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    # a stale socket/pid from a killed munged makes it refuse to start
    if ! live_pid "$MUNGE_PID" >/dev/null; then rm -f "$MUNGE_PID" /run/munge/munge.socket.2*; fi
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start (see /var/log/munge/munged.log)"
    local i
    for ((i = 0; i < 50; i++)); do munge_ok && return 0; sleep 0.1; done
    die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
}

start_slurmctld() {
    live_pid "$CTLD_PID" >/dev/null && return 0
    rm -f "$CTLD_PID"
    slurmctld || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log: $(tail -5 "$LOG_DIR/slurmctld.log" 2>/dev/null)"
    local i
    for ((i = 0; i < 100; i++)); do
        scontrol ping 2>/dev/null | grep -q 'is UP' && return 0
        live_pid "$CTLD_PID" >/dev/null || [[ $i -lt 20 ]] || break
        sleep 0.2
    done
    die "slurmctld does not answer; last log lines: $(tail -5 "$LOG_DIR/slurmctld.log" 2>/dev/null)"
}

start_slurmd() {
    live_pid "$SLURMD_PID" >/dev/null && return 0
    rm -f "$SLURMD_PID"
    slurmd -N "$NODE" || die "slurmd failed to start; see $LOG_DIR/slurmd.log: $(tail -5 "$LOG_DIR/slurmd.log" 2>/dev/null)"
}

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -1; }

wait_for_node() {
    local deadline=$((SECONDS + WAIT_S)) state="" resumed=0
    while ((SECONDS < deadline)); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing) return 0 ;;
            *drain* | down* | *fail*)
                if ((resumed == 0)); then
                    scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.5
    done
    die "node $NODE not usable after ${WAIT_S}s (state '${state:-unknown}'): $(scontrol show node "$NODE" 2>&1 | grep -i reason)
slurmd.log: $(tail -5 "$LOG_DIR/slurmd.log" 2>/dev/null)
slurmctld.log: $(tail -5 "$LOG_DIR/slurmctld.log" 2>/dev/null)"
}

all_running() {
    munge_ok && live_pid "$CTLD_PID" >/dev/null && live_pid "$SLURMD_PID" >/dev/null
}

# true while pid exists and is not a zombie
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != [ZX] ]]
}

# pids of the live processes named $1 (the kernel's comm, as in `ps -o comm`)
pids_named() {
    local d comm
    for d in /proc/[0-9]*; do
        comm=$(cat "$d/comm" 2>/dev/null) || continue
        [[ $comm == "$1" ]] && alive "${d#/proc/}" && echo "${d#/proc/}"
    done
    return 0
}

# pids of the live processes whose environment holds the line $1 (e.g. SLURM_CLUSTER_NAME=resnetrepro)
pids_with_env() {
    local d
    for d in /proc/[0-9]*; do
        [[ ${d#/proc/} == "$$" || ${d#/proc/} == "$BASHPID" ]] && continue
        tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qxF "$1" && alive "${d#/proc/}" && echo "${d#/proc/}"
    done
    return 0
}

# Up to 10 s for the pids given to exit; those still alive are left in the array `left`
wait_gone() {
    local pid i
    for ((i = 0; i < 100; i++)); do
        left=()
        for pid; do alive "$pid" && left+=("$pid"); done
        ((${#left[@]} == 0)) && return 0
        sleep 0.1
    done
}

# SIGTERM to the pids given, up to 10 s for them to exit, then SIGKILL and wait until they are gone
stop_pids() {
    local name=$1 left
    shift
    (($# == 0)) && return 0
    kill "$@" 2>/dev/null || true
    wait_gone "$@"
    if ((${#left[@]} > 0)); then
        log "$name (${left[*]}) ignored SIGTERM; killing"
        kill -9 "${left[@]}" 2>/dev/null || true
        wait_gone "$@"
        ((${#left[@]} == 0)) || log "WARNING: $name (${left[*]}) still there after SIGKILL"
    fi
    log "stopped $name ($*)"
}

# Stop the daemon with this pid file, and any other process of that name (a lost or stale pid file).
stop_pidfile() {
    local name=$1 f=$2 pid pids=()
    if pid=$(live_pid "$f"); then pids+=("$pid"); fi
    for pid in $(pids_named "$name"); do
        [[ " ${pids[*]} " == *" $pid "* ]] || pids+=("$pid")
    done
    stop_pids "$name" "${pids[@]}"
    rm -f "$f"
}

# Cancel every job (this is a test cluster: they are all test jobs) and wait until none runs: scancel, then
# SIGKILL to the jobs still there after 10 s (KillWait is 30 s), at most 30 s in all.
cancel_all_jobs() {
    live_pid "$CTLD_PID" >/dev/null && command -v squeue >/dev/null || return 0
    local jobs i
    jobs=$(squeue -h -o %i 2>/dev/null) || return 0
    [[ -n $jobs ]] || return 0
    log "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086  # one job id a word
    scancel $jobs 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        jobs=$(squeue -h -o %i 2>/dev/null) || return 0
        [[ -n $jobs ]] || return 0
        # shellcheck disable=SC2086
        if ((i == 20)); then scancel --full --signal=KILL $jobs 2>/dev/null || true; fi
        sleep 0.5
    done
    log "WARNING: jobs still in the queue: $(echo $jobs)"
}

# Job processes outlive slurmd: slurmstepd and whatever ran under it (they have SLURM_CLUSTER_NAME in their
# environment; proctrack/linuxproc loses those that got reparented away from the job's process tree).
stop_job_processes() {
    # shellcheck disable=SC2046  # pids, one a word
    stop_pids slurmstepd $(pids_named slurmstepd)
    # shellcheck disable=SC2046
    stop_pids "job processes" $(pids_with_env "SLURM_CLUSTER_NAME=$(cluster_name)")
}

cluster_name() { sed -n 's/^ClusterName=//p' "$CONF_DIR/slurm.conf" 2>/dev/null | head -1 | grep . || echo resnetrepro; }

cmd_stop() {
    need_root
    if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf" \
        && [[ ${SLURM_TEST_CLUSTER_FORCE:-0} != 1 ]]; then
        die "$CONF_DIR/slurm.conf was not written by this script; not stopping a real SLURM installation" \
            "(set SLURM_TEST_CLUSTER_FORCE=1 to override)"
    fi
    local daemons=("$@") d
    ((${#daemons[@]})) || daemons=(slurmd slurmctld munged)
    for d in "${daemons[@]}"; do
        [[ $d =~ ^(slurmd|slurmctld|munged)$ ]] || die "stop: unknown daemon '$d' (slurmd, slurmctld, munged)"
    done
    if [[ " ${daemons[*]} " == *" slurmd "* ]]; then
        cancel_all_jobs
        stop_pidfile slurmd "$SLURMD_PID"
        stop_job_processes
    fi
    if [[ " ${daemons[*]} " == *" slurmctld "* ]]; then
        stop_pidfile slurmctld "$CTLD_PID"
        # shellcheck disable=SC2046  # pids, one a word
        stop_pids slurmscriptd $(pids_named slurmscriptd)
    fi
    if [[ " ${daemons[*]} " == *" munged "* ]]; then
        stop_pidfile munged "$MUNGE_PID"
    fi
    return 0
}

cmd_start() {
    need_root
    install_packages
    local changed=1
    write_config && changed=0
    if ((changed == 0)) && { live_pid "$CTLD_PID" >/dev/null || live_pid "$SLURMD_PID" >/dev/null; }; then
        log "configuration changed; restarting slurmctld and slurmd"
        stop_pidfile slurmd "$SLURMD_PID"
        stop_pidfile slurmctld "$CTLD_PID"
    fi
    if all_running && [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; then
        log "already running"
        return 0
    fi
    start_munge
    start_slurmctld
    start_slurmd
    wait_for_node
    log "up: $(sinfo -h -N -o '%N %T cpus=%c mem=%m gres=%G')"
}

cmd_status() {
    local rc=0 pid
    if munge_ok; then echo "munged: running"; else echo "munged: not running"; rc=1; fi
    if pid=$(live_pid "$CTLD_PID"); then echo "slurmctld: running (pid $pid)"; else echo "slurmctld: not running"; rc=1; fi
    if pid=$(live_pid "$SLURMD_PID"); then echo "slurmd: running (pid $pid)"; else echo "slurmd: not running"; rc=1; fi
    if ((rc == 0)); then
        sinfo -N -o '%N %P %T cpus=%c mem=%m gres=%G' || rc=1
        [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]] || rc=1
    fi
    return $rc
}

case "${1:-}" in
    start) cmd_start ;;
    stop) shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
