#!/usr/bin/env bash
# The GPU acceptance check, in one script for a CUDA machine (default budget 540 s: within 10 minutes on one GPU).
# Its parts, in the order of what matters, each with what is left of the budget:
#   1. ResNet-20 for the paper's full schedule (64k iterations, compiled) on the real CIFAR-10 JPEGs: its final test
#      error, after both learning-rate drops, and its wall time;
#   2. packed throughput: 1, 2, 4 and 8 ResNet-20 runs sharing the GPU (benchmarks/bench_packing.py);
#   3. the classic loop against the project's trainer (compiled with CUDA graphs, fused SGD), ResNet-20/56
#      (benchmarks/bench_train.py);
#   4. the GPU-marked tests (this package need not be installed);
#   5. with what is still left, the benchmark again with the trainer eager: what compile and CUDA graphs add.
# A part that reaches its limit is stopped (SIGTERM, SIGINT for pytest), writes what it has, and is reported as
# "stopped at N of M": never as a result, never as a failure. A part with too little time left does not start
# ("not run"). Exit status: 0 when every part completed or was stopped by the budget; 1 when a part failed; 2 for
# a usage error or no CUDA; 3 when the CIFAR-10 JPEG archive is missing (one loud line; the other parts still run,
# on the digits). summary.txt and summary.json (benchmarks/gpu_summary.py) say what each part came to.
#
# Usage: benchmarks/gpu_check.sh [--cpu-smoke] [--jpeg ARCHIVE] [--budget SECONDS] [--iterations N] [--skip-tests]
#                                [--skip-bench] [--skip-train] [--skip-packing]
#   --cpu-smoke   the same parts on CPU in about two minutes (CI runs it): ResNet-20 for 20 iterations on the
#                 digits, packing of 1 and 2 runs, a quick benchmark, the GPU tests collected (they skip)
#   --iterations  the full-schedule run's length (default: its schedule's, 64,000; 20 with --cpu-smoke)
# Environment:
#   PYTHON      interpreter (default: python3; torch must be installed; this package need not be: PYTHONPATH=src)
#   OUT         folder for logs and results (default build/gpu_check); at most 8 files are written there
#   CIFAR_JPEG  the CIFAR-10 JPEG archive (default .carry/cifar10-jpeg.tar.gz, else ../shared/data/cifar10-jpeg.tar.gz)
#   GPU_CHECK_BUDGET_S  total seconds (default 540)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

MODE=gpu
BUDGET=${GPU_CHECK_BUDGET_S:-540}
JPEG=${CIFAR_JPEG:-}
ITERATIONS=
RUN_TESTS=1 RUN_BENCH=1 RUN_TRAIN=1 RUN_PACKING=1
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) MODE=cpu ;;
        --jpeg) JPEG=$2; shift ;;
        --budget) BUDGET=$2; shift ;;
        --iterations) ITERATIONS=$2; shift ;;
        --skip-tests) RUN_TESTS=0 ;;
        --skip-bench) RUN_BENCH=0 ;;
        --skip-train) RUN_TRAIN=0 ;;
        --skip-packing) RUN_PACKING=0 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | grep '^#'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for number in "$BUDGET" ${ITERATIONS:+"$ITERATIONS"}; do
    [[ "$number" =~ ^[0-9]+$ ]] || { echo "not a whole number: $number (see --help)" >&2; exit 2; }
done

PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEST=${OUT:-build/gpu_check}
mkdir -p "$DEST"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# What comes back from $DEST (at most 8 files); the parts' JSON files stay in $WORK and go into summary.json.
SUMMARY=$DEST/summary.txt TRAIN_LOG=$DEST/train.log PACKING_LOG=$DEST/packing.log BENCH_LOG=$DEST/bench.log
TESTS_LOG=$DEST/gpu_tests.log HISTORY=$DEST/history.csv
PARTS=$WORK/parts.tsv RUN=$WORK/run
for file in "$SUMMARY" "$TRAIN_LOG" "$PACKING_LOG" "$BENCH_LOG" "$TESTS_LOG" "$PARTS"; do : >"$file"; done
rm -f "$HISTORY" "$DEST/summary.json"
START=$SECONDS
STATUS=0

if [ "$MODE" = gpu ]; then
    # Seconds kept for the summary at the end; seconds a stopped part gets to write what it has before SIGKILL; the
    # least a part is started with (CUDA start-up and a compile take half a minute).
    RESERVE_S=20 GRACE_S=20 MIN_PART_S=45
else
    RESERVE_S=10 GRACE_S=10 MIN_PART_S=15
fi

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - (SECONDS - START))); }
# record PART STATE EXIT SECONDS LIMIT NOTE: one line of $PARTS (gpu_summary.py says what the part came to).
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$PARTS"; }
# run_part PART LOG SIGNAL COMMAND...: COMMAND with what the budget has left (less RESERVE_S and GRACE_S), stopped
# with SIGNAL at that limit; its output appended to LOG; its state recorded. Returns COMMAND's exit status (124 when
# stopped by the budget), or 125 when it was not started.
run_part() {
    local part=$1 log=$2 sig=$3
    shift 3
    local limit=$(( $(left) - RESERVE_S - GRACE_S ))
    if [ $limit -lt $MIN_PART_S ]; then
        record "$part" "not run" 0 0 0 "only $(left) s of the budget left"
        say "$part: not run, only $(left) s of the budget left"
        return 125
    fi
    local began=$SECONDS
    timeout -s "$sig" -k "$GRACE_S" "$limit" "$@" >>"$log" 2>&1
    local rc=$? took=$((SECONDS - began))
    # timeout's 124: stopped at the limit; 137 after the limit: killed GRACE_S later (137 before it: killed by
    # something else, e.g. out of memory, a failure).
    if [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ $took -ge $limit ]; }; then
        record "$part" stopped $rc $took $limit "log $(basename "$log")"
        say "$part: stopped by the budget at its limit of $limit s, log $log"
    elif [ $rc -ne 0 ]; then
        record "$part" failed $rc $took $limit "log $(basename "$log")"
        say "$part: FAILED with exit status $rc in $took s, log $log"
        STATUS=1
    else
        record "$part" completed 0 $took $limit "log $(basename "$log")"
        say "$part: completed in $took s, log $log"
    fi
    return $rc
}

say "gpu_check ($MODE mode) at $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET} s, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>&1 | tee -a "$SUMMARY"
fi
if ! "$PY" - >>"$SUMMARY" 2>&1 <<EOF
import os, torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| available", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", "| cpus", os.cpu_count())
if "$MODE" == "gpu" and not torch.cuda.is_available():
    raise SystemExit("CUDA is not available: run with --cpu-smoke on a machine without a GPU")
EOF
then
    tail -n 3 "$SUMMARY"
    exit 2
fi
tail -n 1 "$SUMMARY"

if [ "$MODE" = gpu ]; then
    DEVICE=cuda SCHEDULE=cifar_paper
    TEST_TARGET=tests
    TRAIN_ARGS=()
    PACKING_ARGS=(--device auto --runs 1,2,4,8 --iterations 400)
    BENCH_ARGS=(--device cuda --rounds 3 --models resnet20,resnet56)
    if [ -z "$JPEG" ]; then
        for candidate in .carry/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
            [ -f "$candidate" ] && JPEG=$candidate && break
        done
    fi
    if [ -n "$JPEG" ] && [ -f "$JPEG" ]; then
        BENCH_ARGS+=(--jpeg "$JPEG")
        PREPARE=(prepare imagefolder --raw "$JPEG" --out "$WORK/data")
    elif [ $RUN_TRAIN = 1 ]; then
        say "MISSING DATA: no CIFAR-10 JPEG archive at '${JPEG:-.carry/cifar10-jpeg.tar.gz or ../shared/data/cifar10-jpeg.tar.gz}' (set CIFAR_JPEG or --jpeg): the full schedule cannot run; exit status 3"
        record "full schedule" "not run" 0 0 0 "no CIFAR-10 JPEG archive"
        RUN_TRAIN=0 STATUS=3
    fi
else
    DEVICE=cpu SCHEDULE=demo
    TEST_TARGET=tests/test_speed.py
    TRAIN_ARGS=(--set eval_every=10 --set "milestones=[10,15]" --set compile=off)
    PACKING_ARGS=(--device cpu --runs 1,2 --iterations 20)
    BENCH_ARGS=(--device cpu --quick --threads 1 --no-jpeg --rounds 1 --window 0.2 --train-images 640)
    ITERATIONS=${ITERATIONS:-20}
    PREPARE=(prepare digits --out "$WORK/data")
fi
if [ -z "$ITERATIONS" ]; then
    ITERATIONS=$("$PY" -c "from resnet_repro.settings import resolve_settings; print(resolve_settings('$SCHEDULE').iterations)") \
        || { say "error: cannot read the iterations of schedule $SCHEDULE"; exit 2; }
fi

# 1. The full schedule: the headline figure, so first, with all the budget it needs.
if [ $RUN_TRAIN = 1 ] && run_part "prepare data" "$TRAIN_LOG" TERM "$PY" -m resnet_repro.cli "${PREPARE[@]}"; then
    run_part "full schedule" "$TRAIN_LOG" TERM "$PY" -m resnet_repro.cli train --model resnet20 --data "$WORK/data" \
        --out "$RUN" --seed 0 --device "$DEVICE" --schedule "$SCHEDULE" --set "iterations=$ITERATIONS" \
        "${TRAIN_ARGS[@]}"
    grep -E "compiled and ran|^training " "$TRAIN_LOG" | sed 's/^/  /' | tee -a "$SUMMARY"
    [ -f "$RUN/history.csv" ] && cp "$RUN/history.csv" "$HISTORY"
fi

# 2. Packed throughput, on the data prepared above (the digits where there is none).
if [ $RUN_PACKING = 1 ]; then
    data=$WORK/data
    if [ ! -f "$data/meta.json" ]; then
        data=$WORK/digits
        "$PY" -m resnet_repro.cli prepare digits --out "$data" >>"$PACKING_LOG" 2>&1
    fi
    # Rounds start in the first half of the part's time (its --budget), so the last one started can end; what it
    # does not use goes to the benchmark.
    soft=$(( ($(left) - RESERVE_S - GRACE_S) / 2 ))
    run_part packing "$PACKING_LOG" TERM "$PY" benchmarks/bench_packing.py --data "$data" "${PACKING_ARGS[@]}" \
        --budget "$soft" --json "$WORK/packing.json"
    sed -n '/^| runs per GPU/,$p' "$PACKING_LOG" | tee -a "$SUMMARY"
fi

# 3. The benchmark: it measures a model uncompiled, or skips it, where compiling would overrun its --budget.
if [ $RUN_BENCH = 1 ]; then
    soft=$(( $(left) - RESERVE_S - GRACE_S - 10 ))
    run_part benchmark "$BENCH_LOG" TERM "$PY" benchmarks/bench_train.py "${BENCH_ARGS[@]}" --budget "$soft" \
        --json "$WORK/bench.json"
    sed -n '/^| model/,/^$/p' "$BENCH_LOG" | tee -a "$SUMMARY"
    grep -E "^(Device|Project runtime|Classic|Stopped):" "$BENCH_LOG" | tee -a "$SUMMARY"
fi

# 4. The GPU-marked tests (on CPU they are collected and skipped); SIGINT lets pytest print what it counted.
if [ $RUN_TESTS = 1 ]; then
    run_part "gpu tests" "$TESTS_LOG" INT "$PY" -m pytest -m gpu "$TEST_TARGET" -p no:cacheprovider \
        --continue-on-collection-errors
    grep -E "passed|failed|skipped|error" "$TESTS_LOG" | tail -n 1 | sed 's/^/  /' | tee -a "$SUMMARY"
fi

# 5. With what is still left, the same trainer eager (GPU only): what compile and CUDA graphs add over fused SGD.
if [ $RUN_BENCH = 1 ] && [ "$MODE" = gpu ]; then
    soft=$(( $(left) - RESERVE_S - GRACE_S - 10 ))
    echo "# --- the trainer eager" >>"$BENCH_LOG"
    run_part "benchmark, eager" "$BENCH_LOG" TERM "$PY" benchmarks/bench_train.py "${BENCH_ARGS[@]}" \
        --eager-models resnet20,resnet56 --budget "$soft" --json "$WORK/bench_eager.json"
fi

say "--- what each part came to"
"$PY" benchmarks/gpu_summary.py --json "$DEST/summary.json" --mode "$MODE" --status "$STATUS" \
    --seconds "$((SECONDS - START))" --budget "$BUDGET" --parts "$PARTS" --iterations "$ITERATIONS" \
    --history "$HISTORY" --checkpoint "$RUN/checkpoint.pt" --packing "$WORK/packing.json" \
    --bench "$WORK/bench.json" --bench-eager "$WORK/bench_eager.json" --tests-log "$TESTS_LOG" \
    | tee -a "$SUMMARY"
[ "${PIPESTATUS[0]}" -eq 0 ] || { say "error: the summary failed"; STATUS=1; }
say "gpu_check finished in $((SECONDS - START)) s, status $STATUS"
exit $STATUS
