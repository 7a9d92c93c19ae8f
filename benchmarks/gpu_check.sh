#!/usr/bin/env bash
# The GPU acceptance check, in one script for a CUDA machine (within 10 minutes on one GPU; default budget 540 s):
#   1. the GPU-marked tests;
#   2. ResNet-20 for the paper's full schedule (64k iterations, compiled) on real CIFAR-10 JPEGs, printing the final
#      test error and the wall time (stopped, with a checkpoint, if it would leave the later steps too little time);
#   3. packed throughput: 1, 2, 4 and 8 ResNet-20 runs sharing the GPU (benchmarks/bench_packing.py);
#   4. the benchmark with the time left: the classic loop vs the project's trainer (compiled with CUDA graphs and
#      fused SGD), ResNet-20/56 (benchmarks/bench_train.py), then the same trainer eager if time is left.
# Each step gets what is left of the budget; a step that overruns is stopped with SIGTERM (the trainer then saves a
# checkpoint and the benchmark prints what it measured) and the summary says so. Everything ends in one JSON file,
# summary.json, of the same shape in both modes.
#
# Usage: benchmarks/gpu_check.sh [--cpu-smoke] [--jpeg ARCHIVE] [--budget SECONDS] [--skip-tests] [--skip-bench]
#                                [--skip-train] [--skip-packing]
#   --cpu-smoke  the same steps on CPU in seconds (CI runs it): GPU tests are collected (and skip), a quick benchmark,
#                ResNet-20 for 20 iterations on the digits data, packing of 1 and 2 runs.
# Environment:
#   PYTHON      interpreter (default: python3; torch must be installed; this package need not be: PYTHONPATH=src)
#   OUT         folder for logs and results (default build/gpu_check); at most 8 files are written there
#   CIFAR_JPEG  the CIFAR-10 JPEG archive (default .carry/cifar10-jpeg.tar.gz, else ../shared/data/cifar10-jpeg.tar.gz)
#   GPU_CHECK_BUDGET_S  total seconds (default 540)
#   BENCH_RESERVE_S     seconds the full-schedule run leaves for packing and the benchmark (default 200 on GPU)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

MODE=gpu
BUDGET=${GPU_CHECK_BUDGET_S:-540}
JPEG=${CIFAR_JPEG:-}
RUN_TESTS=1 RUN_BENCH=1 RUN_TRAIN=1 RUN_PACKING=1
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) MODE=cpu ;;
        --jpeg) JPEG=$2; shift ;;
        --budget) BUDGET=$2; shift ;;
        --skip-tests) RUN_TESTS=0 ;;
        --skip-bench) RUN_BENCH=0 ;;
        --skip-train) RUN_TRAIN=0 ;;
        --skip-packing) RUN_PACKING=0 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | grep '^#'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEST=${OUT:-build/gpu_check}
mkdir -p "$DEST"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SUMMARY=$DEST/summary.txt
: >"$SUMMARY"
START=$SECONDS
STATUS=0

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - (SECONDS - START))); }
# run_step NAME LOG TIMEOUT COMMAND...: runs with a wall-clock limit, logs, records the exit status.
run_step() {
    local name=$1 log=$2 limit=$3
    shift 3
    local begun=$SECONDS
    timeout -s TERM -k 20 "$limit" "$@" >"$log" 2>&1
    local rc=$?
    local took=$((SECONDS - begun))
    if [ $rc -eq 124 ]; then
        say "$name: stopped at its limit of ${limit} s (exit $rc), log $log"
    else
        say "$name: exit $rc in ${took} s, log $log"
    fi
    [ $rc -eq 0 ] || STATUS=1
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
    DEVICE=cuda
    TEST_TARGET=tests
    BENCH_ARGS=(--device cuda --rounds 3 --models resnet20,resnet56)
    TRAIN_ARGS=(--schedule cifar_paper)
    PACKING_ARGS=(--device auto --runs 1,2,4,8 --iterations 400)
    if [ -z "$JPEG" ]; then
        for candidate in .carry/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
            [ -f "$candidate" ] && JPEG=$candidate && break
        done
    fi
    [ -n "$JPEG" ] && BENCH_ARGS+=(--jpeg "$JPEG")
else
    DEVICE=cpu
    TEST_TARGET=tests/test_speed.py
    BENCH_ARGS=(--device cpu --quick --threads 1 --no-jpeg --rounds 1 --window 0.2 --train-images 640)
    TRAIN_ARGS=(--schedule demo --set iterations=20 --set eval_every=10 --set "milestones=[10,15]")
    PACKING_ARGS=(--device cpu --runs 1,2 --iterations 20)
fi

# 1. GPU-marked tests (on CPU they are collected and skipped).
if [ $RUN_TESTS = 1 ]; then
    run_step "gpu tests" "$DEST/gpu_tests.log" $(( $(left) < 180 ? $(left) : 180 )) \
        "$PY" -m pytest -m gpu "$TEST_TARGET" -q -p no:cacheprovider --continue-on-collection-errors
    grep -E "passed|failed|skipped|error" "$DEST/gpu_tests.log" | tail -n 1 | sed 's/^/  /' | tee -a "$SUMMARY"
fi

# 2. ResNet-20, the paper's full schedule on CIFAR-10 JPEGs (digits, 20 iterations, in the CPU smoke mode). It runs
#    before the benchmark: it is the headline figure, and the benchmark adapts to the time left.
if [ $RUN_TRAIN = 1 ]; then
    DATA=$WORK/data RUN=$WORK/run
    if [ "$MODE" = gpu ]; then
        if [ -z "$JPEG" ] || [ ! -f "$JPEG" ]; then
            say "full schedule: skipped, no CIFAR-10 JPEG archive (set CIFAR_JPEG or copy it to .carry/)"
            PREPARE=()
        else
            PREPARE=(prepare imagefolder --raw "$JPEG" --out "$DATA")
        fi
    else
        PREPARE=(prepare digits --out "$DATA")
    fi
    if [ ${#PREPARE[@]} -eq 0 ]; then
        :
    elif [ "$(left)" -lt 60 ]; then
        say "full schedule: skipped, only $(left) s of the budget left"
    elif run_step "prepare data" "$DEST/train.log" "$(left)" "$PY" -m resnet_repro.cli "${PREPARE[@]}"; then
        mv "$DEST/train.log" "$WORK/prepare.log"
        began=$SECONDS
        # Leave the benchmark BENCH_RESERVE_S (a stopped run saves a checkpoint; the summary gives its iteration).
        limit=$(( $(left) - ${BENCH_RESERVE_S:-$([ "$MODE" = gpu ] && echo 200 || echo 0)} ))
        [ $limit -lt 30 ] && limit=30
        run_step "train resnet20" "$DEST/train.log" "$limit" \
            "$PY" -m resnet_repro.cli train --model resnet20 --data "$DATA" --out "$RUN" --seed 0 --device "$DEVICE" \
            "${TRAIN_ARGS[@]}"
        wall=$((SECONDS - began))
        cat "$WORK/prepare.log" >>"$DEST/train.log"
        grep -E "compiled and ran|^training " "$DEST/train.log" | sed 's/^/  /' | tee -a "$SUMMARY"
        if [ -f "$RUN/history.csv" ]; then
            cp "$RUN/history.csv" "$DEST/history.csv"
            "$PY" - "$RUN/history.csv" "$wall" <<'EOF' | tee -a "$SUMMARY"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
if rows:
    last = rows[-1]
    print(f"  final test error {float(last['test_error']):.4f} (test loss {float(last['test_loss']):.4f}) at "
          f"iteration {last['iteration']}; wall time {sys.argv[2]} s including start-up, compile and "
          f"{len(rows)} evaluations; last interval {last['images_per_s']} img/s")
else:
    print("  final test error: none (no evaluation was reached)")
EOF
        else
            say "  final test error: none (the run wrote no history)"
        fi
    fi
fi

# 3. Packed throughput on the data prepared above (or the digits, if step 2 did not prepare any).
if [ $RUN_PACKING = 1 ]; then
    if [ ! -f "$WORK/data/meta.json" ]; then
        "$PY" -m resnet_repro.cli prepare digits --out "$WORK/data" >/dev/null 2>&1
    fi
    packing_budget=$(( $(left) - $([ $RUN_BENCH = 1 ] && [ "$MODE" = gpu ] && echo 110 || echo 20) ))
    [ $packing_budget -lt 30 ] && packing_budget=30
    run_step "packing" "$WORK/packing.log" $((packing_budget + 60)) \
        "$PY" benchmarks/bench_packing.py --data "$WORK/data" "${PACKING_ARGS[@]}" --budget "$packing_budget" \
        --json "$DEST/packing.json"
    sed -n '/^| runs per GPU/,$p' "$WORK/packing.log" | tee -a "$SUMMARY"
fi

# 4. The benchmark with the time left (it measures a model uncompiled, or skips it, where compiling would overrun);
#    then, with what is still left, the same trainer eager: what compile and CUDA graphs add over fused SGD alone.
if [ $RUN_BENCH = 1 ]; then
    bench_budget=$(( $(left) - 30 ))
    [ $bench_budget -lt 30 ] && bench_budget=30
    run_step "benchmark" "$DEST/bench.log" $((bench_budget + 20)) \
        "$PY" benchmarks/bench_train.py "${BENCH_ARGS[@]}" --budget "$bench_budget" --json "$DEST/bench.json"
    sed -n '/^| model/,/^$/p' "$DEST/bench.log" | tee -a "$SUMMARY"
    grep -E "^(Device|Project runtime|Classic):" "$DEST/bench.log" | tee -a "$SUMMARY"
    if [ "$MODE" = gpu ] && [ "$(left)" -gt 60 ]; then
        run_step "benchmark, eager" "$WORK/bench_eager.log" $(( $(left) - 10 )) \
            "$PY" benchmarks/bench_train.py "${BENCH_ARGS[@]}" --eager-models resnet20,resnet56 \
            --budget $(( $(left) - 40 )) --json "$WORK/bench_eager.json"
        sed -n '/^| model/,/^$/p' "$WORK/bench_eager.log" | tee -a "$SUMMARY"
    fi
fi

# One JSON of everything above, the same shape in both modes (what a GPU session commits under benchmarks/results/).
"$PY" benchmarks/gpu_summary.py "$DEST" "$WORK" "$MODE" "$STATUS" "$((SECONDS - START))" | tee -a "$SUMMARY" \
    || STATUS=1
say "gpu_check finished in $((SECONDS - START)) s, status $STATUS"
exit $STATUS
